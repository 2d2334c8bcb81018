"""Bad images and bad logs through the `robust-api` command line (the library-level tables are in
tests/test_images.py and tests/query_logs/): each ends in one clear line naming the file (and line) and exit 2,
never a traceback and never a paid call, or in a documented conversion/handling that the run then shows."""
from __future__ import annotations

import io
import json
import pickle
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robust_api import cli
from robust_api.providers.emulator.aws import AwsEmulator
from robust_api.providers.emulator.base import EMULATOR_KEY
from robust_api.errors import LogError
from robust_api.query_logs import QueryLogWriter, QueryRecord, read_log

AWS_MIN_SIDE, AWS_MAX_SIDE, AWS_MAX_BYTES = 80, 10_000, 5_242_880


class Receiver:
    """The emulated provider's labeller: records the size and pixels of every picture it was sent."""

    def __init__(self) -> None:
        self.received: list[tuple[tuple[int, int], np.ndarray]] = []
        self._lock = threading.Lock()

    def __call__(self, image: Image.Image):
        pixels = np.asarray(image.convert("RGB"))
        with self._lock:
            self.received.append((image.size, pixels))
        return [("bright", 0.9), ("dark", 0.6)] if pixels.mean() >= 128 else [("dark", 0.9), ("bright", 0.6)]


@pytest.fixture(scope="module")
def aws():
    """One AWS emulator for the module, reached through the real boto3 adapter with --endpoint."""
    receiver = Receiver()
    emulator = AwsEmulator(labeller=receiver)
    with pytest.MonkeyPatch.context() as mp, emulator.running() as url:
        mp.setenv("AWS_ACCESS_KEY_ID", EMULATOR_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", "emulator-secret")
        mp.setenv("AWS_REGION", "us-east-1")
        yield emulator, receiver, url


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def certify(capsys, url: str, *paths, log: Path | None = None, extra: tuple[str, ...] = ()):
    args = ["certify", *paths, "--api", "aws", "--endpoint", url, "--n0", "1", "--n", "2", "--alpha", "0.3",
            "--rate", "1000", "--no-table", *extra]
    if log is not None:
        args += ["--log", str(log)]
    return run_cli(capsys, *args)


def one_error_line(code: int, err: str) -> str:
    assert code == cli.EXIT_USER_ERROR, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robust-api: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- image files ------------------------------------------------------------------------------------


def _save(image: Image.Image, path: Path, fmt: str, **kw) -> Path:
    image.save(path, fmt, **kw)
    return path


def _photo(w: int = 96, h: int = 96, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).uniform(0, 1, (h, w, 3)) * 255).astype(np.uint8))


def png_header_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR for a huge picture, with a tiny body: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def make_truncated_png(tmp: Path) -> Path:
    data = io.BytesIO()
    _photo().save(data, "PNG")
    (tmp / "cut.png").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    return tmp / "cut.png"


def make_truncated_jpeg(tmp: Path) -> Path:
    data = io.BytesIO()
    _photo().save(data, "JPEG", quality=90)
    (tmp / "cut.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    return tmp / "cut.jpg"


def make_text(tmp: Path) -> Path:
    (tmp / "notes.png").write_text("this is not a picture\n")
    return tmp / "notes.png"


def make_empty(tmp: Path) -> Path:
    (tmp / "empty.jpg").write_bytes(b"")
    return tmp / "empty.jpg"


def make_directory(tmp: Path) -> Path:
    (tmp / "photos.png").mkdir()
    return tmp / "photos.png"


def make_bomb(tmp: Path) -> Path:
    (tmp / "bomb.png").write_bytes(png_header_claiming(60_000, 60_000))
    return tmp / "bomb.png"


ERROR_CASES = {
    "truncated_png": (make_truncated_png, "truncated"),
    "truncated_jpeg": (make_truncated_jpeg, "truncated"),
    "not_an_image": (make_text, "not an image"),
    "zero_bytes": (make_empty, "empty file"),
    "directory": (make_directory, "is a directory"),
    "missing_file": (lambda tmp: tmp / "nowhere.png", "no such file"),
    "decompression_bomb": (make_bomb, "decompression bomb"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_unusable_image_is_one_line_naming_the_file_and_costs_nothing(case, aws, tmp_path, capsys):
    emulator, _, url = aws
    make, expected = ERROR_CASES[case]
    bad = make(tmp_path)
    good = _save(_photo(), tmp_path / "good.png", "PNG")
    requests_before = emulator.stats.requests
    code, out, err = certify(capsys, url, good, bad, log=tmp_path / "run.jsonl")
    line = one_error_line(code, err)
    assert bad.name in line and expected in line, line
    # Images are all loaded before the first call: a bad file among good ones costs nothing.
    assert emulator.stats.requests == requests_before
    assert "certified" not in out


# Conversions: (builder, check(received clean picture size, its pixels, the log records)).


def _cmyk(tmp):
    return _save(_photo().convert("CMYK"), tmp / "cmyk.jpg", "JPEG", quality=95)


def _png16(tmp):
    grey = (np.linspace(0, 65535, 96 * 96).reshape(96, 96)).astype(np.uint16)
    return _save(Image.fromarray(grey), tmp / "deep.png", "PNG")


def _palette(tmp):
    return _save(_photo().convert("P", palette=Image.ADAPTIVE, colors=16), tmp / "palette.png", "PNG")


def _rgba_transparent(tmp):
    rgba = np.zeros((96, 96, 4), dtype=np.uint8)  # fully transparent black: composited on white
    return _save(Image.fromarray(rgba, "RGBA"), tmp / "clear.png", "PNG")


def _grey(tmp):
    return _save(_photo().convert("L"), tmp / "grey.png", "PNG")


def _one_bit(tmp):
    return _save(_photo().convert("1"), tmp / "bits.png", "PNG")


def _exif_rotated(tmp):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return _save(_photo(160, 100), tmp / "rotated.jpg", "JPEG", exif=exif.tobytes(), quality=95)


def _one_pixel(tmp):
    return _save(Image.new("RGB", (1, 1), (200, 30, 30)), tmp / "dot.png", "PNG")


def _below_minimum(tmp):
    return _save(_photo(50, 40), tmp / "small.png", "PNG")


def _above_byte_limit(tmp):
    return _save(_photo(1400, 1400, seed=3), tmp / "heavy.png", "PNG")


def _above_max_side(tmp):
    return _save(Image.new("RGB", (12_000, 100), (90, 160, 220)), tmp / "panorama.png", "PNG")


def _animated_gif(tmp):
    frames = [Image.new("RGB", (96, 96), colour) for colour in ((255, 255, 255), (0, 0, 0), (0, 0, 0))]
    frames[0].save(tmp / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return tmp / "anim.gif"


def _encoding_notes(records) -> list[str]:
    return [note for r in records for note in r.extra.get("encoding", [])]


CONVERSION_CASES = {
    "cmyk_jpeg": (_cmyk, lambda size, px, recs: size == (96, 96)),
    "png_16bit_grey": (_png16, lambda size, px, recs: (px[..., 0] == px[..., 2]).all() and px.max() == 255),
    "palette_png": (_palette, lambda size, px, recs: size == (96, 96) and len(np.unique(px.reshape(-1, 3), axis=0)) <= 16),
    "rgba_transparent": (_rgba_transparent, lambda size, px, recs: (px == 255).all()),
    "greyscale_png": (_grey, lambda size, px, recs: (px[..., 0] == px[..., 1]).all()),
    "one_bit_png": (_one_bit, lambda size, px, recs: set(np.unique(px)) <= {0, 255}),
    "exif_rotated_jpeg": (_exif_rotated, lambda size, px, recs: size == (100, 160)),  # upright: portrait
    "one_by_one": (_one_pixel, lambda size, px, recs: size == (AWS_MIN_SIDE, AWS_MIN_SIDE)
                   and (px == (200, 30, 30)).all() and any("upscaled" in n for n in _encoding_notes(recs))),
    "below_provider_minimum": (_below_minimum, lambda size, px, recs: size == (100, 80)
                               and any("upscaled" in n for n in _encoding_notes(recs))),
    "above_provider_byte_limit": (_above_byte_limit, lambda size, px, recs: len(recs) == 4
                                  and all(r.extra.get("encoding") for r in recs)
                                  and any("JPEG" in n for n in _encoding_notes(recs))),
    "above_provider_max_side": (_above_max_side, lambda size, px, recs: max(size) == AWS_MAX_SIDE
                                and any("downscaled" in n for n in _encoding_notes(recs))),
    "animated_gif": (_animated_gif, lambda size, px, recs: (px == 255).all()),  # the first (white) frame
}


@pytest.mark.parametrize("case", list(CONVERSION_CASES))
def test_unusual_image_is_converted_as_documented_and_certified(case, aws, tmp_path, capsys):
    emulator, receiver, url = aws
    make, check = CONVERSION_CASES[case]
    path = make(tmp_path)
    log = tmp_path / "run.jsonl"
    receiver.received.clear()
    code, out, err = certify(capsys, url, path, log=log)
    assert code == 0, err
    assert "Traceback" not in err and "sigma 0.25: 1 image(s)" in out
    records = list(read_log(log))
    assert len(records) == 1 + 1 + 2 and len(receiver.received) == 4
    clean = next(r for r in records if r.phase == "clean")
    # The clean query is sent first and alone, so the first picture received is the clean one.
    size, pixels = receiver.received[0]
    assert check(size, pixels, records), (case, size, clean.extra)


def test_byte_limit_case_is_really_above_the_limit(tmp_path):
    assert _above_byte_limit(tmp_path).stat().st_size > AWS_MAX_BYTES


# -- query logs ---------------------------------------------------------------------------------------


def azure(label: str) -> dict:
    return {"tags": [{"name": label, "confidence": 0.9}, {"name": "indoor", "confidence": 0.3}]}


def records(image="img-a", sigma=0.25, denoiser=None, model_version=None, n0=5, n=20, label="cat"):
    common = dict(run="r", image=image, provider="azure", sigma=sigma, denoiser=denoiser, model_version=model_version)
    out = [QueryRecord(index=0, phase="clean", response=azure(label), **common)]
    out += [QueryRecord(index=i, phase="selection", response=azure(label), **common) for i in range(n0)]
    out += [QueryRecord(index=i, phase="estimation", response=azure(label), **common) for i in range(n)]
    return out


def write(path: Path, recs) -> Path:
    with QueryLogWriter(path, fsync=False) as writer:
        for record in recs:
            writer.write(record)
    return path


def test_mixed_sigma_within_one_image_replays_as_separate_certificates(tmp_path, capsys):
    log = write(tmp_path / "run.jsonl", records(sigma=0.25) + records(sigma=0.5, label="dog")[1:])
    code, out, err = run_cli(capsys, "replay", log, "--no-table", "--out", tmp_path / "r.tsv")
    assert code == 0 and err == ""
    assert "sigma 0.25: 1 image(s), 1 certified" in out and "sigma 0.5: 1 image(s), 1 certified" in out
    assert len((tmp_path / "r.tsv").read_text().splitlines()) == 1 + 2


def test_mixed_denoiser_within_one_image_replays_as_separate_certificates(tmp_path, capsys):
    denoiser = {"name": "dncnn", "sha256": "ab" * 32}
    log = write(tmp_path / "run.jsonl", records() + records(denoiser=denoiser)[1:])
    code, out, err = run_cli(capsys, "replay", log, "--no-table", "--out", tmp_path / "r.tsv")
    assert code == 0 and err == ""
    assert "sigma 0.25: 2 image(s), 2 certified" in out
    assert len((tmp_path / "r.tsv").read_text().splitlines()) == 1 + 2


def test_duplicated_sample_index_is_counted_once_with_a_one_line_warning(tmp_path, capsys):
    dup = records(label="dog")[3:6]  # selection indices 2-4 again, with another answer
    log = write(tmp_path / "run.jsonl", records() + dup)
    code, out, err = run_cli(capsys, "replay", log, "--no-table", "--out", tmp_path / "r.tsv")
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robust-api: warning: ") and "3 duplicated sample index" in lines[0]
    assert "the first record of each is used" in lines[0] and "certified" in out


def test_two_model_versions_in_one_image_warn_on_one_line(tmp_path, capsys):
    recs = records(model_version="v1")
    recs.append(QueryRecord(run="r", image="img-a", provider="azure", sigma=0.25, index=20, phase="estimation",
                            response=azure("cat"), model_version="v2"))
    log = write(tmp_path / "run.jsonl", recs)
    code, out, err = run_cli(capsys, "replay", log, "--no-table")
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "several model versions" in lines[0] and "v1, v2" in lines[0]


# The cache a certify run reads is a log too: a bad one stops the run before any call is paid.


def _corrupt_middle(path: Path) -> str:
    write(path, records())
    lines = path.read_text().splitlines(keepends=True)
    lines[4] = lines[4][:30] + "\n"
    path.write_text("".join(lines))
    return f"{path.name}:5: not valid JSON"


def _unknown_schema(path: Path) -> str:
    write(path, records())
    lines = path.read_text().splitlines(keepends=True)
    row = json.loads(lines[2])
    row["schema"] = 9
    lines[2] = json.dumps(row) + "\n"
    path.write_text("".join(lines))
    return f"{path.name}:3: schema version 9 is not supported"


def _missing_field(path: Path) -> str:
    write(path, records())
    lines = path.read_text().splitlines(keepends=True)
    row = json.loads(lines[1])
    del row["phase"]
    lines[1] = json.dumps(row) + "\n"
    path.write_text("".join(lines))
    return f"{path.name}:2: missing field 'phase'"


def _legacy_pickle(path: Path) -> str:
    path.write_bytes(pickle.dumps([{"tags": []}], protocol=2))
    return f"{path.name}:1: not valid JSON"


def _directory(path: Path) -> str:
    path.mkdir()
    return f"{path.name}: is a directory"


BAD_CACHES = {"corrupt_middle_line": _corrupt_middle, "unknown_schema": _unknown_schema,
              "missing_field": _missing_field, "legacy_pickle_as_log": _legacy_pickle, "directory": _directory}


@pytest.mark.parametrize("case", list(BAD_CACHES))
def test_certify_with_a_bad_log_stops_before_paying_naming_file_and_line(case, aws, tmp_path, capsys):
    emulator, _, url = aws
    log = tmp_path / "run.jsonl"
    expected = BAD_CACHES[case](log)
    before = log.read_bytes() if log.is_file() else None
    image = _save(_photo(), tmp_path / "photo.png", "PNG")
    requests_before = emulator.stats.requests
    code, out, err = certify(capsys, url, image, log=log)
    line = one_error_line(code, err)
    assert expected in line, line
    assert emulator.stats.requests == requests_before
    if before is not None:
        assert log.read_bytes() == before  # the log is left as it was


def test_certify_resumes_over_a_torn_final_line_and_an_empty_log(aws, tmp_path, capsys):
    emulator, _, url = aws
    image = _save(_photo(), tmp_path / "photo.png", "PNG")
    log = tmp_path / "run.jsonl"
    log.write_bytes(b"")  # empty: a fresh run
    code, _, err = certify(capsys, url, image, log=log)
    assert code == 0, err
    assert len(list(read_log(log))) == 4
    with open(log, "ab") as fh:
        fh.write(b'{"schema": 1, "run": "x", "ima')  # a crash mid-write
    requests_before = emulator.stats.requests
    code, out, err = certify(capsys, url, image, log=log, extra=("--n", "3"))
    assert code == 0
    assert "torn final line" in err and all(line.startswith("robust-api: warning: ") for line in err.strip().splitlines())
    assert emulator.stats.requests - requests_before == 1  # only the new estimation sample
    assert len(list(read_log(log))) == 5 and b"ima\n" not in log.read_bytes()


def test_a_file_that_is_not_a_log_is_never_truncated_as_a_torn_tail(tmp_path, capsys):
    """A legacy pickle (no newline at all) handed over as a JSONL log: an error naming file and line, the file
    untouched by the reader, the writer and the CLI alike, and its globals never resolved."""
    marker = tmp_path / "pwned"
    legacy = tmp_path / "pred_hist_0.pkl"
    legacy.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    plain = tmp_path / "old.pkl"
    plain.write_bytes(pickle.dumps({"responses": [1, 2, 3]}, protocol=4))
    for path in (legacy, plain):
        before = path.read_bytes()
        with pytest.raises(LogError, match=rf"{path.name}:\d+: "):
            list(read_log(path))
        with pytest.raises(LogError, match=rf"{path.name}:\d+: not a query log record"):
            QueryLogWriter(path)
        code, _, err = run_cli(capsys, "replay", path)
        line = one_error_line(code, err)
        assert path.name in line and "not valid JSON" in line, line
        assert path.read_bytes() == before
    assert not marker.exists()
