"""What a provider accepts for one image, as data. Each adapter declares its own `limits` on its class;
`robust_api.images.encode_for(pixels, limits)` keeps every upload inside them.

Only the type and the pure constants a limit is written with live here, so the engine can read an adapter's
limits without the adapters knowing anything about the engine.
"""
from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
# Decompression-bomb guard: 40 Mpixel (a float32 RGB copy is ~0.5 GB, and every noisy sample is one more).
# The engine's image loader refuses more; the in-process local provider declares the same bound.
MAX_IMAGE_PIXELS = 40_000_000


@dataclass(frozen=True)
class ImageLimits:
    """What a provider accepts for one image. `max_bytes` is inclusive: len(data) <= max_bytes. Where a
    provider says "under"/"larger than", the adapter moves the bound one unit inward."""

    max_bytes: int
    min_side_px: int = 1
    max_side_px: int = 16_000
    formats: tuple[str, ...] = ("JPEG", "PNG")
    max_pixels: int | None = None


__all__ = ["MAX_IMAGE_PIXELS", "MiB", "ImageLimits"]
