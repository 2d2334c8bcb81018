"""Provider adapters (one file each) and the registry that builds them by name.

Adapters import their SDK lazily: `make_provider("aws")` needs only boto3 (`pip install 'robust-api[aws]'`).
"""
from __future__ import annotations

import importlib
from typing import Any

from robust_api.errors import ConfigError
from robust_api.providers.base import PROVIDER_NAMES, Provider

# name -> (module, adapter class, emulator class or None, pip extra)
_REGISTRY: dict[str, tuple[str, str, str | None, str]] = {
    "azure": ("azure", "AzureProvider", "AzureEmulator", "azure"),
    "google": ("google", "GoogleProvider", "GoogleEmulator", "google"),
    "aws": ("aws", "AWSProvider", "AwsEmulator", "aws"),
    "clarifai": ("clarifai", "ClarifaiProvider", "ClarifaiEmulator", "clarifai"),
    "local": ("local", "LocalProvider", None, "demo"),
}


def _check_name(name: str) -> tuple[str, str, str | None, str]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDER_NAMES)}") from None


def provider_class(name: str) -> type[Provider]:
    """The adapter class for a provider name; ConfigError naming the pip extra when its SDK is missing."""
    module, cls, _, extra = _check_name(name)
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


def emulator_class(name: str):
    """The emulator class for a cloud provider (none for 'local', which runs in-process)."""
    _, _, emulator, _ = _check_name(name)
    if emulator is None:
        raise ConfigError(f"the {name} provider runs in-process and has no emulator")
    mod = importlib.import_module(f"robust_api.providers.emulator.{name}")
    return getattr(mod, emulator)


def provider_for_emulator(name: str, url: str, **options: Any) -> Provider:
    """An adapter pointed at a local emulator, with the emulator's dummy credential (no real keys needed)."""
    return provider_class(name).for_emulator(url, **options)
