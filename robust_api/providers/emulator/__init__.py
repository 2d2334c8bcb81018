"""Local servers that speak each provider's wire format (for tests, dry runs and the demo).

`robust-api emulate NAME --port P [knobs]` serves one until interrupted; `serve(...)` is the same from Python.
`emulator_class(name)` is the emulator of a cloud provider; the production registry (robust_api.providers)
knows nothing of emulators, so this map is theirs alone.
"""
from __future__ import annotations

import asyncio
import importlib
from typing import Callable

from robust_api.errors import ConfigError
from robust_api.providers import CLOUD_PROVIDER_NAMES, check_provider_name
from robust_api.providers.emulator.base import EMULATOR_KEY, Emulator, EmulatorKnobs, EmulatorStats

# provider name -> emulator class in robust_api.providers.emulator.<name> (one per cloud provider; checked in tests)
_EMULATORS: dict[str, str] = {
    "azure": "AzureEmulator",
    "google": "GoogleEmulator",
    "aws": "AwsEmulator",
    "clarifai": "ClarifaiEmulator",
}

__all__ = ["EMULATOR_KEY", "Emulator", "EmulatorKnobs", "EmulatorStats", "emulator_class", "serve"]


def emulator_class(name: str) -> type[Emulator]:
    """The emulator class for a cloud provider; ConfigError for unknown names and for 'local' (in-process)."""
    check_provider_name(name)
    if name not in _EMULATORS:
        reason = "runs in-process and has no emulator" if name not in CLOUD_PROVIDER_NAMES else "has no emulator"
        raise ConfigError(f"the {name} provider {reason}")
    module = importlib.import_module(f"robust_api.providers.emulator.{name}")
    return getattr(module, _EMULATORS[name])


def serve(name: str, port: int = 0, knobs: EmulatorKnobs | None = None, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve provider `name`'s emulator on 127.0.0.1:port until cancelled (Ctrl-C); on_ready(url) once listening."""
    emulator = emulator_class(name)(knobs=knobs)

    async def main() -> None:
        url = await emulator.start(port)
        if on_ready is not None:
            on_ready(url)
        try:
            await asyncio.Event().wait()
        finally:
            await emulator.stop()

    asyncio.run(main())
