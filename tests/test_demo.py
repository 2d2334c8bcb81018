"""The newcomer's path: `scripts/setup.sh` says clearly what is wrong, and `robust-api demo` certifies real photos
through the AWS SDK against the emulator, replays its logs to the same certificates, draws both pictures, and
prints tables and progress that read well in a file."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from robust_api.cli import TextTable, main, progress_text

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.slow
def test_tiny_demo_certifies_replays_and_draws(tmp_path, capsys):
    out_dir = tmp_path / "demo-output"
    code, out, err = run_cli(capsys, "demo", "--out-dir", str(out_dir), "--images", "2", "--n0", "5", "--n", "15")
    assert code in (0, None), out + err
    assert err == ""

    # the replay line: every certificate of both runs (2 photos x 2 runs) came back from the logs
    assert "replay: the offline replay of the logs reproduced every certificate (4/4)" in " ".join(out.split())
    for run in ("no-denoiser", "ffdnet64-s0.25-stab"):
        tag = f"aws-sequential-q20-r0.3-a0.001-{run}"  # sequential budget n0 + n = 20, target 1.2 sigma
        online, replayed = out_dir / f"{tag}.tsv", out_dir / f"{tag}.replayed.tsv"
        assert online.read_bytes() == replayed.read_bytes()

    # both pictures exist, are PNGs, and their paths are printed
    for name in ("certified_accuracy.png", "examples.png"):
        path = out_dir / name
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
        assert str(path) in out

    # progress: one line per finished image, counts over the whole demo that only grow
    progress = re.findall(r"images done (\d+)/(\d+) · calls paid (\d+) · cache hits (\d+)", out)
    assert [int(done) for done, *_ in progress] == [1, 2, 3, 4]
    assert {int(total) for _, total, *_ in progress} == {4}
    calls = [int(c) for _, _, c, _ in progress]
    assert calls == sorted(calls) and calls[-1] > 0
    assert "the fixed protocol" in out

    # the results table: one line per photo, never wrapped inside a cell (output is not a terminal here)
    lines = out.splitlines()
    for photo in ("chelsea#1", "coffee#0"):
        row = next(line for line in lines if line.startswith(photo))
        assert len(row.split()) >= 6, row  # photo, clean label, then radius and calls for each run

    # a rerun pays nothing: every sample is in the logs
    code, out, _ = run_cli(capsys, "demo", "--out-dir", str(out_dir), "--images", "2", "--n0", "5", "--n", "15")
    assert code in (0, None)
    assert "calls paid 0," in " ".join(out.split())


def test_text_table_is_plain_in_a_file_and_fits_a_terminal():
    table = TextTable([("photo", "left"), ("clean label", "left"), ("radius", "right")], title="Results")
    table.add_row("a-photo-with-a-rather-long-name", "Egyptian cat", "0.300")
    table.add_row("b", "espresso", "abstain")

    plain = table.lines()
    assert plain[0].split() == ["photo", "clean", "label", "radius"]
    assert "a-photo-with-a-rather-long-name  Egyptian cat    0.300" in plain[2]
    assert len({len(line) for line in plain[:3]}) == 1  # aligned columns

    fitted = table.lines(max_width=30)
    assert all(len(line) <= 30 for line in fitted)
    assert "0.300" in fitted[2] and "abstain" in fitted[3]  # numbers are never shortened
    assert "…" in fitted[2]

    # through rich: a file gets every cell whole, a narrow terminal gets the fitted table
    import io

    buffer = io.StringIO()
    Console(file=buffer, width=20, soft_wrap=True).print(table)
    assert "a-photo-with-a-rather-long-name" in buffer.getvalue()
    buffer = io.StringIO()
    Console(file=buffer, width=32, force_terminal=True, color_system=None).print(table)
    assert all(len(line) <= 32 for line in buffer.getvalue().splitlines())


def test_progress_text_wording():
    assert progress_text(3, 8, 120, 5) == "images done 3/8 · calls paid 120 · cache hits 5"


# -- scripts/setup.sh: a clear message before anything is installed ----------------------------------------


def _setup_copy(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _setup(repo: Path, python: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], env={"PATH": "/usr/bin:/bin", "PYTHON": python},
                          capture_output=True, text=True, timeout=60, check=False)


def test_setup_refuses_an_old_python_in_one_line(tmp_path):
    repo = _setup_copy(tmp_path)
    fake = tmp_path / "python3.8"
    fake.write_text("#!/bin/sh\necho 3.8.18\n")  # answers the version query like Python 3.8 would
    fake.chmod(0o755)
    result = _setup(repo, str(fake))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        (f"setup: error: robust-api needs Python >= 3.10, but {fake} is Python 3.8.18; install a newer Python and "
         "rerun with PYTHON=/path/to/python3.10 (or newer)")
    ]
    assert not (repo / ".venv").exists()


def test_setup_names_a_missing_interpreter(tmp_path):
    result = _setup(_setup_copy(tmp_path), "no-such-python3")
    assert result.returncode == 1
    assert result.stderr.strip() == ("setup: error: no 'no-such-python3' found: install Python >= 3.10, "
                                     "or set PYTHON=/path/to/python3")
