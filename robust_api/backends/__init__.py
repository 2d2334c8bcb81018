"""Where a session's images are certified: `local` (this process, one asyncio loop) or `ray` (sharded over Ray
actors, see `ray_backend`). Both give the same certificates, rows and log records for the same seed.
"""
from __future__ import annotations

from robust_api.errors import ConfigError

BACKENDS = ("local", "ray")


def check_backend(name: str) -> str:
    """`name` if it is a known backend; ConfigError naming the choices otherwise."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return name


__all__ = ["BACKENDS", "check_backend"]
