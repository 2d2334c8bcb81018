"""Provider adapters (one file each) and the registry that builds them by name: the one list of provider names.

Adapters import their SDK lazily: `make_provider("aws")` needs only boto3 (`pip install 'robust-api[aws]'`).
Each adapter declares its own wire facts (`limits`, `max_batch`, pricing); the constants adapters share with the
emulators (the emulator credential, Retry-After) live in `robust_api.providers.wire`. This package never
imports the emulators: `robust_api.providers.emulator.emulator_class(name)` finds a provider's emulator.
"""
from __future__ import annotations

import importlib
from typing import Any

from robust_api.errors import ConfigError
from robust_api.providers.base import Provider

# name -> (module under robust_api.providers, adapter class, pip extra, speaks HTTP to a remote service)
_REGISTRY: dict[str, tuple[str, str, str, bool]] = {
    "azure": ("azure", "AzureProvider", "azure", True),
    "google": ("google", "GoogleProvider", "google", True),
    "aws": ("aws", "AWSProvider", "aws", True),
    "clarifai": ("clarifai", "ClarifaiProvider", "clarifai", True),
    "local": ("local", "LocalProvider", "demo", False),
}

PROVIDER_NAMES: tuple[str, ...] = tuple(_REGISTRY)
# The cloud APIs: each has a wire format, hence an emulator; "local" runs in-process.
CLOUD_PROVIDER_NAMES: tuple[str, ...] = tuple(name for name, entry in _REGISTRY.items() if entry[3])


def check_provider_name(name: str) -> str:
    """`name` if it is a known provider, else ConfigError listing the known ones."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDER_NAMES)}")
    return name


def provider_class(name: str) -> type[Provider]:
    """The adapter class for a provider name; ConfigError naming the pip extra when its SDK is missing."""
    module, cls, extra, _ = _REGISTRY[check_provider_name(name)]
    try:
        mod = importlib.import_module(f"robust_api.providers.{module}")
    except ImportError as exc:
        raise ConfigError(
            f"the {name} provider needs its SDK ({exc.name}): pip install 'robust-api[{extra}]'"
        ) from None
    return getattr(mod, cls)


def make_provider(name: str, endpoint: str | None = None, **options: Any) -> Provider:
    """Build an adapter: credentials come from the SDK's usual environment/config; `endpoint` overrides the URL."""
    cls = provider_class(name)
    if endpoint is not None:
        options["endpoint"] = endpoint
    return cls(**options)


def provider_for_emulator(name: str, url: str, **options: Any) -> Provider:
    """An adapter pointed at a local emulator, with the emulator's dummy credential (no real keys needed)."""
    return provider_class(name).for_emulator(url, **options)


__all__ = [
    "CLOUD_PROVIDER_NAMES",
    "PROVIDER_NAMES",
    "Provider",
    "check_provider_name",
    "make_provider",
    "provider_class",
    "provider_for_emulator",
]
