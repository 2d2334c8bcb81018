"""Bad and unusual images: each one a clear ImageError or a correct, documented (noted) conversion."""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from robust_api import images as I
from robust_api.errors import ImageError
from robust_api.providers.aws import AWS_LIMITS, AWSProvider
from robust_api.providers.azure import AZURE_V4_LIMITS, AZURE_V32_LIMITS, AzureProvider
from robust_api.providers.base import ImageLimits
from robust_api.providers.clarifai import CLARIFAI_LIMITS, ClarifaiProvider
from robust_api.providers.google import GOOGLE_LIMITS, GoogleProvider
from robust_api.providers.local import LOCAL_LIMITS, LocalProvider

RNG = np.random.default_rng(1234)
NOISE_100 = RNG.integers(0, 256, (100, 120, 3), dtype=np.uint8)


def png_bytes(width: int, height: int, depth: int, colour_type: int, rows: bytes, *, compress: bool = True) -> bytes:
    """A minimal PNG writer (filter type 0 on every row) for what Pillow cannot write: 16-bit RGB, bomb headers."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    idat = zlib.compress(rows) if compress else rows
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def save(image: Image.Image, path: Path, fmt: str, **kw: Any) -> Path:
    image.save(path, format=fmt, **kw)
    return path


def encoded(array: np.ndarray, fmt: str, **kw: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ----------------------------------------------------------------------------------------------------------
# The table: each case builds its input in tmp_path and states its promise
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    make: Callable[[Path], Any]
    error: str | None = None  # regex the ImageError must match (it must also name the file)
    check: Callable[[I.LoadedImage], None] | None = None
    load_kw: dict | None = None


def make_truncated_png(tmp: Path) -> Path:
    data = encoded(NOISE_100, "PNG")
    (tmp / "cut.png").write_bytes(data[: len(data) // 2])
    return tmp / "cut.png"


def make_truncated_jpeg(tmp: Path) -> Path:
    data = encoded(NOISE_100, "JPEG", quality=90)
    (tmp / "cut.jpg").write_bytes(data[: len(data) // 2])
    return tmp / "cut.jpg"


def make_text(tmp: Path) -> Path:
    (tmp / "notes.png").write_text("this is not an image\n")
    return tmp / "notes.png"


def make_empty(tmp: Path) -> Path:
    (tmp / "empty.jpg").write_bytes(b"")
    return tmp / "empty.jpg"


def make_dir(tmp: Path) -> Path:
    (tmp / "folder.png").mkdir()
    return tmp / "folder.png"


def make_cmyk(tmp: Path) -> Path:
    return save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp / "cmyk.jpg", "JPEG", quality=100)


def check_cmyk(img: I.LoadedImage) -> None:  # C=0 M=Y=255 K=0 is pure red
    np.testing.assert_allclose(img.array.reshape(-1, 3).mean(0), [1.0, 0.0, 0.0], atol=3 / 255)
    assert any("CMYK" in n for n in img.notes)


GREY16 = np.array([[0, 255, 256, 1000], [30000, 40000, 65000, 65535]], dtype=np.uint16)


def make_png16_grey(tmp: Path) -> Path:
    return save(Image.fromarray(GREY16), tmp / "grey16.png", "PNG")


def check_png16_grey(img: I.LoadedImage) -> None:
    expected = (GREY16 / 65535.0).astype(np.float32)
    for c in range(3):  # full 16-bit precision, nothing clipped at 255
        np.testing.assert_array_equal(img.array[:, :, c], expected)
    assert img.array.max() == 1.0 and img.array[0, 3, 0] < 0.02
    assert any("16-bit" in n for n in img.notes)


RGB16 = np.array([[[65535, 0, 0x80FF], [0x7F80, 1000, 50000]]], dtype=np.uint16)


def make_png16_rgb(tmp: Path) -> Path:
    rows = b"".join(b"\x00" + RGB16[y].astype(">u2").tobytes() for y in range(RGB16.shape[0]))
    path = tmp / "rgb16.png"
    path.write_bytes(png_bytes(2, 1, 16, 2, rows))
    return path


def check_png16_rgb(img: I.LoadedImage) -> None:  # scaled (never clipped), within one 8-bit step
    np.testing.assert_allclose(img.array, RGB16 / 65535.0, atol=1 / 255 + 1e-6)
    assert any("16-bit" in n for n in img.notes)


PALETTE = [(255, 0, 0), (0, 128, 255), (10, 20, 30)]


def make_palette(tmp: Path) -> Path:
    image = Image.new("P", (6, 3))
    image.putpalette([v for rgb in PALETTE for v in rgb] + [0] * (768 - 9))
    image.putdata([0, 1, 2] * 6)
    return save(image, tmp / "palette.png", "PNG")


def check_palette(img: I.LoadedImage) -> None:
    flat = (img.array.reshape(-1, 3) * 255).round().astype(int)
    assert [tuple(p) for p in flat[:3]] == PALETTE
    assert any("palette" in n for n in img.notes)


def make_palette_transparent(tmp: Path) -> Path:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0)
    return save(image, tmp / "ptrans.png", "PNG", transparency=0)


def check_palette_transparent(img: I.LoadedImage) -> None:
    np.testing.assert_array_equal(img.array[0, 0], [1, 1, 1])  # transparent index -> white
    np.testing.assert_array_equal(img.array[1, 1], [0, 0, 1])


def make_rgba(tmp: Path) -> Path:
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 0] = 255
    pixels[..., 3] = 128
    pixels[0, 0] = (0, 0, 255, 255)  # one opaque blue pixel
    pixels[0, 1] = (0, 255, 0, 0)  # one fully transparent pixel
    return save(Image.fromarray(pixels, "RGBA"), tmp / "rgba.png", "PNG")


def check_rgba(img: I.LoadedImage) -> None:
    a = np.float32(128) / np.float32(255)
    np.testing.assert_allclose(img.array[2, 2], [1.0, 1 - a, 1 - a], atol=1e-6)  # red at 50% over white
    np.testing.assert_array_equal(img.array[0, 0], [0, 0, 1])
    np.testing.assert_array_equal(img.array[0, 1], [1, 1, 1])
    assert "alpha composited on white" in img.notes


def make_grey(tmp: Path) -> Path:
    return save(Image.fromarray(np.full((5, 7), 77, np.uint8)), tmp / "grey.png", "PNG")


def check_grey(img: I.LoadedImage) -> None:
    assert img.array.shape == (5, 7, 3)
    assert np.all(img.array == np.float32(77) / np.float32(255))
    rgb_same = I.load_image(np.full((5, 7, 3), 77, np.uint8))
    assert img.sha256 == rgb_same.sha256  # the same picture hashes the same whatever it came in


def make_exif_rotated(tmp: Path) -> Path:
    # Stored 40 wide x 20 high: left half red, right half blue; orientation 6 = "rotate 90 deg clockwise to view".
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(Image.fromarray(stored), tmp / "rotated.jpg", "JPEG", quality=95, exif=exif.tobytes())


def check_exif_rotated(img: I.LoadedImage) -> None:
    assert (img.height, img.width) == (40, 20)  # upright: portrait
    top, bottom = img.array[:18].reshape(-1, 3).mean(0), img.array[22:].reshape(-1, 3).mean(0)
    np.testing.assert_allclose(top, [1, 0, 0], atol=0.06)  # the stored left edge is now on top
    np.testing.assert_allclose(bottom, [0, 0, 1], atol=0.06)
    assert any("EXIF orientation 6" in n for n in img.notes)


def make_one_pixel(tmp: Path) -> Path:
    return save(Image.new("RGB", (1, 1), (12, 34, 56)), tmp / "dot.png", "PNG")


def check_one_pixel(img: I.LoadedImage) -> None:
    assert img.array.shape == (1, 1, 3) and img.notes == ()
    out = I.encode_for(I.to_uint8(img.array), AWS_LIMITS)
    assert (out.width, out.height) == (80, 80)
    assert np.all(decode(out.data) == (12, 34, 56))
    assert out.notes == ("upscaled 1x1->80x80 (nearest, x80) to reach the 80 px minimum side",)


def make_bomb_header(tmp: Path) -> Path:
    # 30000 x 30000 RGB claimed in the header, a few bytes of data: must be refused before decoding.
    path = tmp / "bomb.png"
    path.write_bytes(png_bytes(30_000, 30_000, 8, 2, zlib.compress(b"\x00" * 1000), compress=False))
    return path


def make_pillow_bomb(tmp: Path) -> Path:
    # 20000 x 20000 = 400 Mpixel: beyond Pillow's own hard limit, which raises inside Image.open.
    path = tmp / "pillow_bomb.png"
    path.write_bytes(png_bytes(20_000, 20_000, 8, 0, zlib.compress(b"\x00" * 1000), compress=False))
    return path


def make_real_big(tmp: Path) -> Path:
    return save(Image.new("L", (1000, 600)), tmp / "big.png", "PNG")


def make_animated_gif(tmp: Path) -> Path:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return tmp / "anim.gif"


def check_animated_gif(img: I.LoadedImage) -> None:
    assert np.all(img.array == np.array([1, 0, 0], np.float32))
    assert any("3 frames" in n and "first frame" in n for n in img.notes)


def make_one_bit(tmp: Path) -> Path:
    image = Image.new("1", (4, 2), 0)
    image.putpixel((1, 0), 1)
    return save(image, tmp / "bits.png", "PNG")


def check_one_bit(img: I.LoadedImage) -> None:
    assert img.array[0, 1].tolist() == [1, 1, 1] and img.array[0, 0].tolist() == [0, 0, 0]


CASES = [
    Case("truncated_png", make_truncated_png, error="truncated"),
    Case("truncated_jpeg", make_truncated_jpeg, error="truncated"),
    Case("not_an_image", make_text, error="not an image"),
    Case("zero_bytes", make_empty, error=r"empty file \(0 bytes\)"),
    Case("directory", make_dir, error="is a directory"),
    Case("missing_file", lambda tmp: tmp / "nowhere.png", error="no such file"),
    Case("cmyk_jpeg", make_cmyk, check=check_cmyk),
    Case("png_16bit_grey", make_png16_grey, check=check_png16_grey),
    Case("png_16bit_rgb", make_png16_rgb, check=check_png16_rgb),
    Case("palette_png", make_palette, check=check_palette),
    Case("palette_png_transparency", make_palette_transparent, check=check_palette_transparent),
    Case("rgba_png", make_rgba, check=check_rgba),
    Case("greyscale_png", make_grey, check=check_grey),
    Case("exif_rotated_jpeg", make_exif_rotated, check=check_exif_rotated),
    Case("one_by_one", make_one_pixel, check=check_one_pixel),
    Case("bomb_header", make_bomb_header, error="decompression bomb"),
    Case("bomb_beyond_pillow_limit", make_pillow_bomb, error="decompression bomb"),
    Case("over_max_pixels", make_real_big, error="600,000 pixels exceeds", load_kw={"max_pixels": 500_000}),
    Case("animated_gif", make_animated_gif, check=check_animated_gif),
    Case("one_bit", make_one_bit, check=check_one_bit),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_or_unusual_image_file(case: Case, tmp_path: Path) -> None:
    src = case.make(tmp_path)
    if case.error is not None:
        with pytest.raises(ImageError, match=case.error) as info:
            I.load_image(src, **(case.load_kw or {}))
        assert Path(src).name in str(info.value)  # the message names the file
    else:
        img = I.load_image(src, **(case.load_kw or {}))
        assert img.array.dtype == np.float32 and img.array.ndim == 3 and img.array.shape[2] == 3
        assert 0.0 <= img.array.min() and img.array.max() <= 1.0
        assert img.name == Path(src).name
        case.check(img)


# ----------------------------------------------------------------------------------------------------------
# Arrays
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 3), 2.0), r"\[0, 1\].*divide 0..255 data by 255"),
        (np.full((4, 4, 3), -0.5), r"\[0, 1\]"),
        (np.zeros((3, 32, 32), np.float32), "channels-first"),
        (np.zeros((4, 4, 3), np.int64), "dtype"),
        (np.zeros((2, 2, 2, 3), np.uint8), "HW or HWC"),
        (np.broadcast_to(np.uint8(0), (20_000, 20_000, 3)), "decompression bomb"),  # no memory allocated
    ],
    ids=["nan", "0_255_floats", "negative", "chw", "int64", "4d", "huge"],
)
def test_bad_arrays_raise_clear_errors(array: np.ndarray, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        I.load_image(array)


def test_array_forms_load_to_the_same_picture_and_hash() -> None:
    u8 = NOISE_100
    as_float = u8 / 255.0  # float64 on the 8-bit grid
    from_png = I.load_image(encoded(u8, "PNG"))
    from_bmp = I.load_image(encoded(u8, "BMP"))
    for other in (I.load_image(u8), I.load_image(as_float), from_bmp, I.load_image(Image.fromarray(u8))):
        np.testing.assert_array_equal(other.array, from_png.array)
        assert other.sha256 == from_png.sha256
    grey = I.load_image(u8[:, :, 0])
    assert grey.array.shape == (100, 120, 3)


def test_hash_covers_shape_and_full_precision() -> None:
    flat = np.zeros((2, 6, 3), np.uint8)
    assert I.load_image(flat).sha256 != I.load_image(flat.reshape(6, 2, 3)).sha256
    off_grid = np.full((4, 4, 3), 0.3, np.float32)  # 0.3 * 255 = 76.5: not an 8-bit value
    nearby = np.full((4, 4, 3), 0.3001, np.float32)
    assert I.load_image(off_grid).sha256 != I.load_image(nearby).sha256
    assert I.load_image(off_grid).sha256 == I.load_image(off_grid.copy()).sha256


def test_loaded_pixels_are_read_only() -> None:
    img = I.load_image(NOISE_100)
    with pytest.raises(ValueError):
        img.array[0, 0, 0] = 0.5


def test_unsupported_source_type() -> None:
    with pytest.raises(ImageError, match="unsupported image source"):
        I.load_image(12345)


def test_decode_rgb_returns_8bit_rgb_or_image_error() -> None:
    image = I.decode_rgb(encoded(NOISE_100, "PNG"))
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), NOISE_100)
    with pytest.raises(ImageError):
        I.decode_rgb(b"GIF89a garbage")


# ----------------------------------------------------------------------------------------------------------
# Quantisation
# ----------------------------------------------------------------------------------------------------------


def test_to_uint8_rounds_to_nearest_and_inverts_from_uint8() -> None:
    every = np.arange(256, dtype=np.uint8)
    assert np.array_equal(I.to_uint8(I.from_uint8(every)), every)
    assert np.array_equal(I.to_uint8(I.from_uint8(every).astype(np.float64)), every)
    x = np.array([0.0, 1.0, -0.1, 1.2, 0.4 / 255, 0.6 / 255, 254.4 / 255, 254.6 / 255])
    assert I.to_uint8(x).tolist() == [0, 255, 0, 255, 0, 1, 254, 255]
    with pytest.raises(ImageError, match="NaN"):
        I.to_uint8(np.array([0.5, np.nan]))


# ----------------------------------------------------------------------------------------------------------
# Encoding within provider limits
# ----------------------------------------------------------------------------------------------------------


def test_below_provider_minimum_is_upscaled_exactly_and_noted() -> None:
    tiny = NOISE_100[:32, :32]
    for limits, factor in ((AWS_LIMITS, 3), (AZURE_V32_LIMITS, 2)):
        out = I.encode_for(tiny, limits)
        side = 32 * factor
        assert (out.width, out.height, out.format) == (side, side, "PNG")
        assert min(out.width, out.height) >= limits.min_side_px
        # nearest-neighbour replication: every pixel becomes a factor x factor block, no new values
        assert np.array_equal(decode(out.data), np.kron(tiny, np.ones((factor, factor, 1), np.uint8)))
        assert out.notes == (
            f"upscaled 32x32->{side}x{side} (nearest, x{factor}) to reach the {limits.min_side_px} px minimum side",
        )


def test_within_limits_is_lossless_png_with_no_notes() -> None:
    out = I.encode_for(NOISE_100, AWS_LIMITS)
    assert out.format == "PNG" and out.notes == () and (out.width, out.height) == (120, 100)
    assert np.array_equal(decode(out.data), NOISE_100)


def test_above_aws_byte_limit_is_reencoded_jpeg_and_noted() -> None:
    noise = np.random.default_rng(7).integers(0, 256, (1400, 1400, 3), dtype=np.uint8)  # PNG ~5.9 MB
    out = I.encode_for(noise, AWS_LIMITS)
    assert out.format == "JPEG" and len(out.data) <= AWS_LIMITS.max_bytes
    assert (out.width, out.height) == (1400, 1400)
    assert out.notes == ("re-encoded JPEG q=95 to fit 5 MB",)
    assert decode(out.data).shape == (1400, 1400, 3)


def test_far_above_byte_limit_is_downscaled_then_fits_and_both_steps_are_noted() -> None:
    limits = ImageLimits(max_bytes=60_000, min_side_px=10, formats=("PNG", "JPEG"))
    noise = np.random.default_rng(8).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    out = I.encode_for(noise, limits)
    assert len(out.data) <= 60_000 and out.width < 400
    assert out.notes[0].startswith("downscaled 400x400->")
    assert out.notes[-1].startswith("re-encoded JPEG q=")
    assert Image.open(io.BytesIO(out.data)).size == (out.width, out.height)


def test_above_max_side_is_downscaled_keeping_aspect() -> None:
    limits = ImageLimits(max_bytes=10 * I.MiB, max_side_px=50, formats=("PNG",))
    out = I.encode_for(NOISE_100, limits)
    assert (out.width, out.height) == (50, 41)
    assert out.notes == ("downscaled 120x100->50x41 to fit the provider's size limits",)


def test_unsatisfiable_limits_raise() -> None:
    with pytest.raises(ImageError, match="minimum side"):
        I.encode_for(np.zeros((1, 500, 3), np.uint8), AWS_LIMITS)  # 80x taller would be 40000 px wide
    with pytest.raises(ImageError, match="none of PNG/JPEG"):
        I.encode_for(NOISE_100, ImageLimits(max_bytes=10**6, formats=("WEBP",)))
    with pytest.raises(ImageError, match="uint8"):
        I.encode_for(NOISE_100 / 255.0, AWS_LIMITS)


def test_jpeg_only_provider_and_prefer_jpeg() -> None:
    out = I.encode_for(NOISE_100, ImageLimits(max_bytes=10**7, formats=("JPEG",)))
    assert out.format == "JPEG" and out.notes == ("encoded JPEG q=95 (PNG not accepted by the provider)",)
    out = I.encode_for(NOISE_100, AWS_LIMITS, prefer="JPEG")
    assert out.format == "JPEG" and out.notes == ()


def test_encoding_is_deterministic() -> None:
    noise = np.random.default_rng(9).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    limits = ImageLimits(max_bytes=80_000, min_side_px=10, formats=("PNG", "JPEG"))
    first, second = I.encode_for(noise, limits), I.encode_for(noise.copy(), limits)
    assert first == second
    assert I.encode_for(noise[:20, :20], AWS_LIMITS).data == I.encode_for(noise[:20, :20], AWS_LIMITS).data


def test_provider_limit_constants_match_the_reference_notes() -> None:
    assert AWS_LIMITS.max_bytes == 5_242_880 and AWS_LIMITS.min_side_px == 80
    assert AWS_LIMITS.formats == ("JPEG", "PNG") and AWS_LIMITS.max_side_px == 10_000
    assert AZURE_V32_LIMITS.max_bytes < 4 * I.MiB and AZURE_V32_LIMITS.min_side_px == 51
    assert AZURE_V4_LIMITS.max_bytes < 20 * I.MiB
    assert GOOGLE_LIMITS.max_bytes * 4 / 3 < 10 * I.MiB  # one image's base64 fits a 10 MB request
    assert CLARIFAI_LIMITS.max_pixels == 85_000_000
    for limits in (AWS_LIMITS, AZURE_V32_LIMITS, AZURE_V4_LIMITS, GOOGLE_LIMITS, CLARIFAI_LIMITS,
                   LOCAL_LIMITS):
        assert "PNG" in limits.formats and "JPEG" in limits.formats


def test_each_adapter_declares_its_own_limits_and_images_holds_none() -> None:
    # Adapters own their wire facts: the limits are class attributes of the adapter; images.py only obeys them.
    assert AWSProvider.limits is AWS_LIMITS and GoogleProvider.limits is GOOGLE_LIMITS
    assert ClarifaiProvider.limits is CLARIFAI_LIMITS and LocalProvider.limits is LOCAL_LIMITS
    assert AzureProvider.limits_by_version == {"3.2": AZURE_V32_LIMITS, "4.0": AZURE_V4_LIMITS}
    assert AzureProvider.limits is AZURE_V32_LIMITS  # the stricter set, until an instance picks its version
    assert LOCAL_LIMITS.max_pixels == I.MAX_IMAGE_PIXELS
    assert not [name for name in vars(I) if name.endswith("_LIMITS")]
