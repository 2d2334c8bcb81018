"""Load, validate, convert and encode images so every upload stays inside its provider's limits.

`load_image` turns a path, encoded bytes, a PIL image or a numpy array into float32 HWC RGB in [0, 1] with
a content hash, recording every conversion it made; bad input raises ImageError naming the image.
`encode_for` turns uint8 pixels into PNG/JPEG bytes that fit an `ImageLimits` (the adapter's own `limits`,
passed in), recording every resize or re-encode. Both are deterministic: the same input gives the same
pixels, hash and bytes.

Documented conversions (each is recorded in `notes`):
- EXIF orientation is applied (the picture is shown upright, as viewers and the cloud APIs show it).
- Alpha (RGBA, LA, palette or colour-key transparency) is composited on white: rgb*a + 1*(1-a).
- Greyscale is repeated into three channels; palette, CMYK (naive, no ICC profile), YCbCr, LAB, HSV and
  1-bit images are converted with Pillow to RGB.
- 16-bit greyscale is scaled v / 65535 at full precision. 16-bit RGB(A) PNGs are reduced by Pillow's decoder
  to their high byte (v >> 8, within one 8-bit step of v * 255 / 65535, never clipped); this is noted.
- Animated images (GIF, APNG, WebP) use their first frame.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from robust_api.errors import ImageError
# Limits belong to the adapters (each declares `limits` on its class); this module only obeys them.
from robust_api.providers.limits import MAX_IMAGE_PIXELS, ImageLimits, MiB

JPEG_QUALITIES = (95, 90, 85, 80, 70, 60, 50)
# Noisy samples barely compress: zlib level 1 is ~2x faster than 6 and at most ~6% larger on clean photos.
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A validated image: `array` float32 HWC RGB in [0, 1]; `sha256` of its content (see `pixel_sha256`);
    `name` for messages and results; `notes` the conversions applied while loading."""

    array: np.ndarray
    sha256: str
    name: str
    notes: tuple[str, ...] = ()

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])


@dataclass(frozen=True)
class EncodedImage:
    """Bytes ready to upload: `format` "PNG" or "JPEG", final pixel size, and what was done to fit the limits."""

    data: bytes
    format: str
    width: int
    height: int
    notes: tuple[str, ...] = ()


# -------------------------------------------------------------------------------------------------------
# Quantisation and hashing
# -------------------------------------------------------------------------------------------------------


def from_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] as v / 255 (the exact inverse of `to_uint8` on the 8-bit grid)."""
    return pixels.astype(np.float32) / np.float32(255.0)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] -> uint8 by round-to-nearest, halves rounded up: floor(x * 255 + 0.5).

    Values outside [0, 1] are clipped first (noise is clipped upstream; this makes the function total).
    NaN or infinity raises ImageError. `to_uint8(from_uint8(u)) == u` for every uint8 array u.
    """
    x = np.asarray(pixels)
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise ImageError(f"to_uint8 expects float pixels in [0, 1], got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ImageError("pixels contain NaN or infinity")
    scaled = np.floor(np.clip(x, 0.0, 1.0) * x.dtype.type(255.0) + x.dtype.type(0.5))
    return scaled.astype(np.uint8)


def pixel_sha256(array: np.ndarray) -> str:
    """Content hash of float32 HWC pixels: sha256 of f"{h}x{w}:" + the uint8 RGB bytes when the pixels lie
    exactly on the 8-bit grid (so one picture hashes the same whichever file format it came in), else of
    f"{h}x{w}:f32:" + the float32 bytes (16-bit sources and arbitrary float arrays)."""
    h, w = array.shape[:2]
    quantised = to_uint8(array)
    if np.array_equal(from_uint8(quantised), array):
        payload = f"{h}x{w}:".encode() + np.ascontiguousarray(quantised).tobytes()
    else:
        payload = f"{h}x{w}:f32:".encode() + np.ascontiguousarray(array, dtype=np.float32).tobytes()
    return hashlib.sha256(payload).hexdigest()


# -------------------------------------------------------------------------------------------------------
# Loading
# -------------------------------------------------------------------------------------------------------


def load_image(src: Any, *, name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> LoadedImage:
    """Load `src` — a path (str/Path), encoded bytes, a PIL image, or a numpy array (HW or HWC with 1/3/4
    channels; uint8, uint16 (v / 65535) or float in [0, 1]) — as float32 HWC RGB in [0, 1].

    Raises ImageError naming the image for: missing file, directory, empty file, not an image, truncated or
    corrupt data, more than `max_pixels` pixels (decompression bomb), NaN/inf or out-of-range values, or an
    unsupported shape/dtype. Conversions applied are listed in `notes` (module docstring).
    """
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        label = name or path.name or str(path)
        data = _read_file(path)
        array, notes = _decode(data, str(path), max_pixels)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        array, notes = _decode(bytes(src), label, max_pixels)
    elif isinstance(src, Image.Image):
        label = name or (Path(getattr(src, "filename", "") or "").name or "<PIL image>")
        array, notes = _from_pil(src, label, max_pixels, source_bytes=None)
    elif isinstance(src, np.ndarray):
        label = name or f"<array {'x'.join(map(str, src.shape))}>"
        array, notes = _from_array(src, label, max_pixels)
    else:
        raise ImageError(
            f"{name or type(src).__name__}: unsupported image source {type(src).__name__}; "
            "pass a path, bytes, a PIL image or a numpy array"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    array.setflags(write=False)  # shared by every noisy copy; nobody may change the clean image
    return LoadedImage(array=array, sha256=pixel_sha256(array), name=label, notes=tuple(notes))


def decode_rgb(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Encoded bytes -> 8-bit RGB PIL image with the same conversions as `load_image`; ImageError if undecodable."""
    array, _ = _decode(bytes(data), "<bytes>", max_pixels)
    return Image.fromarray(to_uint8(array), mode="RGB")


def _read_file(path: Path) -> bytes:
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    return data


def _decode(data: bytes, label: str, max_pixels: int) -> tuple[np.ndarray, list[str]]:
    if not data:
        raise ImageError(f"{label}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own, lower pixel limit applies below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{label}: image too large, refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (unrecognised format)") from None
    except Exception as exc:  # Pillow raises many types for damaged headers
        raise ImageError(f"{label}: corrupt image header ({type(exc).__name__}: {exc})") from None
    return _from_pil(image, label, max_pixels, source_bytes=data)


def _check_pixels(width: int, height: int, label: str, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"{label}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{label}: {width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(refused as a possible decompression bomb; downscale it or raise max_pixels)"
        )


def _png_bit_depth(data: bytes | None) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None for other data."""
    if data is None or len(data) < 29 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def _from_pil(image: Image.Image, label: str, max_pixels: int, source_bytes: bytes | None) -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    _check_pixels(image.width, image.height, label, max_pixels)
    try:
        frames = int(getattr(image, "n_frames", 1))
    except Exception as exc:  # counting frames reads the whole file: a truncated GIF fails here
        raise ImageError(f"{label}: truncated or corrupt image data ({exc or type(exc).__name__})") from None
    if frames > 1:
        image.seek(0)
        notes.append(f"animated {image.format or 'image'} with {frames} frames: used the first frame")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Exception as exc:  # truncated or corrupt pixel data
        detail = str(exc) or type(exc).__name__
        raise ImageError(f"{label}: truncated or corrupt image data ({detail})") from None

    orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        notes.append(f"applied EXIF orientation {orientation} (image now upright, {image.width}x{image.height})")

    depth = _png_bit_depth(source_bytes)
    if depth is not None and depth[0] == 16 and depth[1] in (2, 4, 6):
        notes.append("16-bit PNG with colour or alpha: reduced to 8 bits per channel by the decoder (v >> 8)")

    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image).astype(np.float64)
        if mode == "I" and (values.min() < 0 or values.max() > 65535):
            raise ImageError(f"{label}: 32-bit integer image with values outside 0..65535; convert it first")
        grey = (values / 65535.0).astype(np.float32)
        notes.append("16-bit greyscale scaled to [0, 1] (v / 65535) and repeated into RGB")
        return np.repeat(grey[:, :, None], 3, axis=2), notes
    if mode == "F":
        grey = np.asarray(image, dtype=np.float32)
        if not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > 1:
            raise ImageError(f"{label}: floating-point image must have finite values in [0, 1]")
        notes.append("float greyscale repeated into RGB")
        return np.repeat(grey[:, :, None], 3, axis=2), notes

    if mode in ("P", "PA"):
        notes.append("palette image expanded to RGB")
        image = image.convert("RGBA" if (mode == "PA" or "transparency" in image.info) else "RGB")
    elif "transparency" in image.info and mode in ("L", "RGB"):
        image = image.convert("LA" if mode == "L" else "RGBA")
        notes.append("colour-key transparency turned into alpha")
    elif mode == "1":
        image = image.convert("L")
        notes.append("1-bit image expanded to greyscale")
    elif mode == "CMYK":
        image = image.convert("RGB")
        notes.append("CMYK converted to RGB (Pillow's conversion, no ICC profile)")
    elif mode not in ("L", "LA", "RGB", "RGBA", "La", "RGBa"):
        try:
            image = image.convert("RGB")
        except Exception as exc:
            raise ImageError(f"{label}: cannot convert mode {mode} to RGB ({exc})") from None
        notes.append(f"{mode} converted to RGB")

    if image.mode in ("La", "RGBa"):  # premultiplied alpha: un-premultiply through Pillow
        image = image.convert("LA" if image.mode == "La" else "RGBA")
    pixels = from_uint8(np.asarray(image))
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return _finish_channels(pixels, label, notes), notes


def _finish_channels(pixels: np.ndarray, label: str, notes: list[str]) -> np.ndarray:
    """HWC float with 1-4 channels -> HWC RGB: alpha composited on white, greyscale repeated."""
    channels = pixels.shape[2]
    if channels in (2, 4):
        alpha = pixels[:, :, -1:]
        colour = pixels[:, :, :-1]
        if np.all(alpha == 1.0):
            notes.append("dropped a fully opaque alpha channel")
            pixels = colour
        else:
            pixels = colour * alpha + (1.0 - alpha)  # composite on white
            notes.append("alpha composited on white")
        channels -= 1
    if channels == 1:
        notes.append("greyscale repeated into RGB")
        pixels = np.repeat(pixels, 3, axis=2)
    elif channels != 3:
        raise ImageError(f"{label}: {channels} channels; expected 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA)")
    return pixels.astype(np.float32, copy=False)


def _from_array(src: np.ndarray, label: str, max_pixels: int) -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    if src.ndim == 2:
        src = src[:, :, None]
    if src.ndim != 3:
        raise ImageError(f"{label}: array must be HW or HWC, got {src.ndim} dimensions")
    if src.shape[2] not in (1, 2, 3, 4):
        hint = " (looks channels-first: transpose to HWC)" if src.shape[0] in (1, 3, 4) else ""
        raise ImageError(f"{label}: array has {src.shape[2]} channels in the last axis{hint}")
    _check_pixels(int(src.shape[1]), int(src.shape[0]), label, max_pixels)
    if src.dtype == np.uint8:
        pixels = from_uint8(src)
    elif src.dtype == np.uint16:
        pixels = (src.astype(np.float64) / 65535.0).astype(np.float32)
        notes.append("uint16 array scaled to [0, 1] (v / 65535)")
    elif np.issubdtype(src.dtype, np.floating):
        if not np.isfinite(src).all():
            raise ImageError(f"{label}: array contains NaN or infinity")
        low, high = float(src.min()), float(src.max())
        if low < 0.0 or high > 1.0:
            hint = " (divide 0..255 data by 255)" if high <= 255.0 and low >= 0.0 else ""
            raise ImageError(f"{label}: float pixel values must lie in [0, 1], got [{low:g}, {high:g}]{hint}")
        pixels = src.astype(np.float32)
    else:
        raise ImageError(f"{label}: unsupported array dtype {src.dtype}; use uint8, uint16 or float in [0, 1]")
    return _finish_channels(pixels, label, notes), notes


# -------------------------------------------------------------------------------------------------------
# Encoding within provider limits
# -------------------------------------------------------------------------------------------------------


def _fmt_bytes(n: int) -> str:
    return f"{n / MiB:.3g} MB" if n >= MiB // 2 else f"{n / 1024:.3g} KB"


def _format_notes(prefer: str, order: Sequence[str], fmt: str, quality: int, max_bytes: int) -> list[str]:
    """What the log should say about the chosen encoding; nothing when it is the preferred default."""
    if prefer not in order:
        suffix = f" q={quality}" if fmt == "JPEG" else ""
        return [f"encoded {fmt}{suffix} ({prefer} not accepted by the provider)"]
    if fmt == "JPEG" and (prefer != "JPEG" or quality != JPEG_QUALITIES[0]):
        return [f"re-encoded JPEG q={quality} to fit {_fmt_bytes(max_bytes)}"]
    if fmt != prefer:
        return [f"encoded {fmt} to fit {_fmt_bytes(max_bytes)}"]
    return []


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if fmt == "PNG":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buffer.getvalue()


def _fit_bytes(image: Image.Image, order: Sequence[str], max_bytes: int) -> tuple[bytes | None, str, int, int]:
    """First encoding in `order` (PNG once, JPEG down the quality ladder) within max_bytes.
    Returns (data or None, format, quality, size of the smallest attempt)."""
    smallest = math.inf
    for fmt in order:
        for quality in (0,) if fmt == "PNG" else JPEG_QUALITIES:
            data = _encode(image, fmt, quality)
            if len(data) <= max_bytes:
                return data, fmt, quality, len(data)
            smallest = min(smallest, len(data))
    return None, "", 0, int(smallest)


def encode_for(pixels: np.ndarray, limits: ImageLimits, prefer: str = "PNG") -> EncodedImage:
    """Encode uint8 HWC RGB (or HW grey) pixels as PNG or JPEG bytes within `limits`, deterministically.

    - Smaller side below `limits.min_side_px`: upscaled by the smallest integer factor k that reaches it,
      nearest neighbour (each pixel becomes a k x k block, so no new pixel values are invented).
    - Larger side above `max_side_px` or more than `max_pixels`: downscaled (Lanczos) to fit.
    - Bytes: `prefer` format if it fits `max_bytes`, else JPEG at qualities 95, 90, ... 50, else downscale and
      retry. Sizes in notes are width x height. ImageError if the limits cannot all be met.
    """
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ImageError(f"encode_for expects uint8 pixels (use to_uint8), got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ImageError(f"encode_for expects HxWx3 RGB or HxW grey pixels, got shape {array.shape}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    prefer = prefer.upper()
    writable = [f for f in (prefer, "PNG", "JPEG") if f in ("PNG", "JPEG") and f in limits.formats]
    order = list(dict.fromkeys(writable))
    if not order:
        raise ImageError(f"the provider accepts none of PNG/JPEG (accepts {', '.join(limits.formats)})")

    notes: list[str] = []
    height, width = array.shape[:2]
    image_pixels = array

    short = min(height, width)
    if short < limits.min_side_px:
        factor = math.ceil(limits.min_side_px / short)
        if max(height, width) * factor > limits.max_side_px:
            raise ImageError(
                f"{width}x{height} cannot be upscaled to the {limits.min_side_px} px minimum side without "
                f"exceeding the {limits.max_side_px} px maximum"
            )
        image_pixels = np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)
        notes.append(
            f"upscaled {width}x{height}->{width * factor}x{height * factor} (nearest, x{factor}) "
            f"to reach the {limits.min_side_px} px minimum side"
        )
    image = Image.fromarray(np.ascontiguousarray(image_pixels), mode="RGB")

    scale = 1.0
    if max(image.size) > limits.max_side_px:
        scale = limits.max_side_px / max(image.size)
    if limits.max_pixels is not None and image.width * image.height > limits.max_pixels:
        scale = min(scale, math.sqrt(limits.max_pixels / (image.width * image.height)))
    if scale < 1.0:
        image = _downscale(image, scale, limits, notes, "to fit the provider's size limits")

    for _ in range(24):
        data, fmt, quality, smallest = _fit_bytes(image, order, limits.max_bytes)
        if data is not None:
            notes.extend(_format_notes(prefer, order, fmt, quality, limits.max_bytes))
            return EncodedImage(data=data, format=fmt, width=image.width, height=image.height, notes=tuple(notes))
        # Bytes scale roughly with pixel count: shrink by the square root of the overshoot, with a margin.
        image = _downscale(
            image, min(0.9, 0.95 * math.sqrt(limits.max_bytes / smallest)), limits, notes,
            f"to fit {_fmt_bytes(limits.max_bytes)}",
        )
    raise ImageError(f"could not encode the image within {_fmt_bytes(limits.max_bytes)}")


def _downscale(image: Image.Image, scale: float, limits: ImageLimits, notes: list[str], why: str) -> Image.Image:
    new_w = max(1, math.floor(image.width * scale))
    new_h = max(1, math.floor(image.height * scale))
    if min(new_w, new_h) < limits.min_side_px:
        raise ImageError(
            f"{image.width}x{image.height} cannot be downscaled {why} without going below the "
            f"{limits.min_side_px} px minimum side"
        )
    notes.append(f"downscaled {image.width}x{image.height}->{new_w}x{new_h} {why}")
    return image.resize((new_w, new_h), Image.Resampling.LANCZOS)


__all__ = [
    "MAX_IMAGE_PIXELS",
    "ImageLimits",
    "EncodedImage",
    "LoadedImage",
    "decode_rgb",
    "encode_for",
    "from_uint8",
    "load_image",
    "pixel_sha256",
    "to_uint8",
]
