"""Local servers that speak each provider's wire format (for tests, dry runs and the demo).

`robust-api emulate NAME --port P [knobs]` serves one until interrupted; `serve(...)` is the same from Python.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from robust_api.providers.emulator.base import EMULATOR_KEY, Emulator, EmulatorKnobs, EmulatorStats

__all__ = ["EMULATOR_KEY", "Emulator", "EmulatorKnobs", "EmulatorStats", "serve"]


def serve(name: str, port: int = 0, knobs: EmulatorKnobs | None = None, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve provider `name`'s emulator on 127.0.0.1:port until cancelled (Ctrl-C); on_ready(url) once listening."""
    from robust_api.providers import emulator_class

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
