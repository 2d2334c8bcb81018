"""`robust-api replay` and `robust-api import-legacy`: output, results TSV, and one-line errors (never a traceback)."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest

import robust_api.replay
from robust_api.cli import main
from robust_api.query_logs import QueryLogWriter, QueryRecord
from robust_api.results import TSV_HEADER, read_results_tsv


def azure(label: str) -> dict:
    return {"tags": [{"name": label, "confidence": 0.9}, {"name": "indoor", "confidence": 0.3}]}


def write_log(path, images=("img-a", "img-b"), n0=10, n=100, sigma=0.25) -> None:
    with QueryLogWriter(path, fsync=False) as w:
        for k, image in enumerate(images):
            est_cat = 100 if k == 0 else 52  # the first image certifies, the second abstains
            w.write(QueryRecord(run="r", image=image, provider="azure", sigma=sigma, index=0, phase="clean",
                                response=azure("Cat")))
            for i in range(n0):
                w.write(QueryRecord(run="r", image=image, provider="azure", sigma=sigma, index=i, phase="selection",
                                    response=azure("Cat")))
            for i in range(n):
                label = "Cat" if i < est_cat * n // 100 else "Dog"
                w.write(QueryRecord(run="r", image=image, provider="azure", sigma=sigma, index=i,
                                    phase="estimation", response=azure(label)))


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, expected_code: int = 2) -> str:
    assert code == expected_code
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_replay_prints_certificates_summary_and_writes_cohen_tsv(tmp_path, capsys):
    log = tmp_path / "run.jsonl"
    write_log(log)
    out = tmp_path / "results.tsv"
    code, stdout, stderr = run_cli(capsys, "replay", str(log), "--alpha", "0.001", "--out", str(out))
    assert code == 0 and stderr == ""
    assert "img-a" in stdout and "abstain" in stdout
    assert "2 image(s), 1 certified, 1 abstained" in stdout
    assert "50.0%" in stdout  # certified accuracy at radius 0: one of two images
    assert out.read_text().splitlines()[0] == "\t".join(TSV_HEADER) == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    rows = read_results_tsv(out)
    assert [(r["idx"], r["label"], r["predict"], r["correct"]) for r in rows] == [
        ("0", "cat", "cat", "1"), ("1", "cat", "-1", "0")
    ]
    assert float(rows[0]["radius"]) == pytest.approx(0.25 * 1.5005, abs=2e-3) and float(rows[1]["radius"]) == 0.0


def test_replay_options_limit_samples_and_filter_sigma(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_log(a, images=("img-a",), sigma=0.25)
    write_log(b, images=("img-a",), sigma=0.5)
    out = tmp_path / "r.tsv"
    code, stdout, _ = run_cli(capsys, "replay", str(a), str(b), "--n0", "5", "--n", "50", "--no-table",
                              "--sigma", "0.5", "-o", str(out))
    assert code == 0 and "sigma 0.5: 1 image(s)" in stdout and "sigma 0.25" not in stdout
    assert len(read_results_tsv(out)) == 1
    code, stdout, _ = run_cli(capsys, "replay", str(a), str(b), "--no-table", "--decision", "present:dog")
    assert code == 0 and "sigma 0.25: 1 image(s)" in stdout and "sigma 0.5: 1 image(s)" in stdout


def test_import_legacy_then_replay_matches_native_replay(tmp_path, capsys):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for i, est_cat in enumerate((100, 52)):
        clean = [{"name": "Cat", "confidence": 0.9}]
        pred = [[{"name": "Cat", "confidence": 0.9}, {"name": "indoor", "confidence": 0.3}]] * 10
        pred += [[{"name": "Cat" if j < est_cat else "Dog", "confidence": 0.9},
                  {"name": "indoor", "confidence": 0.3}] for j in range(100)]
        (legacy / f"pred_hist_{i}.pkl").write_bytes(pickle.dumps({"ground_truth": [clean], "pred": pred}))
    imported = tmp_path / "imported.jsonl"
    code, stdout, _ = run_cli(capsys, "import-legacy", str(legacy), "--api", "azure", "--n0", "10",
                              "--sigma", "0.25", "-o", str(imported))
    assert code == 0 and "imported 2 file(s), 222 record(s)" in stdout
    native = tmp_path / "native.jsonl"
    write_log(native, images=("legacy:pred_hist_0", "legacy:pred_hist_1"))
    out_legacy, out_native = tmp_path / "l.tsv", tmp_path / "n.tsv"
    assert run_cli(capsys, "replay", str(imported), "-o", str(out_legacy))[0] == 0
    assert run_cli(capsys, "replay", str(native), "-o", str(out_native))[0] == 0
    assert out_legacy.read_text() == out_native.read_text()


def test_torn_final_line_warns_on_one_line_and_still_succeeds(tmp_path, capsys):
    log = tmp_path / "run.jsonl"
    write_log(log)
    with open(log, "ab") as fh:
        fh.write(b'{"schema":1,"run":"r","ima')
    code, _, stderr = run_cli(capsys, "replay", str(log), "--no-table")
    assert code == 0
    assert stderr.startswith("robust-api: warning: ") and "torn final line" in stderr
    assert len(stderr.strip().splitlines()) == 1


def _corrupt_middle(path):
    write_log(path)
    lines = path.read_text().splitlines(keepends=True)
    lines[5] = lines[5][:40] + "\n"
    path.write_text("".join(lines))


def _unknown_schema(path):
    write_log(path)
    lines = path.read_text().splitlines(keepends=True)
    d = json.loads(lines[3])
    d["schema"] = 3
    lines[3] = json.dumps(d) + "\n"
    path.write_text("".join(lines))


def _missing_field(path):
    write_log(path)
    lines = path.read_text().splitlines(keepends=True)
    d = json.loads(lines[0])
    del d["image"]
    lines[0] = json.dumps(d) + "\n"
    path.write_text("".join(lines))


@pytest.mark.parametrize(
    "prepare,args,expected",
    [
        (None, ["replay", "{tmp}/missing.jsonl"], "missing.jsonl: no such query log"),
        (None, ["replay", "{tmp}"], "is a directory"),
        (lambda p: p.write_bytes(b""), ["replay", "{log}"], "the logs hold no selection or estimation samples"),
        (_corrupt_middle, ["replay", "{log}"], "run.jsonl:6: not valid JSON"),
        (_unknown_schema, ["replay", "{log}"], "run.jsonl:4: schema version 3 is not supported (this robust-api reads 1)"),
        (_missing_field, ["replay", "{log}"], "run.jsonl:1: missing field 'image'"),
        (write_log, ["replay", "{log}", "--decision", "top7"], "unknown decision rule 'top7'"),
        (write_log, ["replay", "{log}", "--decision", "vocab:{tmp}/none.json"], "cannot read vocabulary file"),
        (write_log, ["replay", "{log}", "--n0", "11"], "only 10 selection samples logged, 11 requested"),
        (write_log, ["replay", "{log}", "--sigma", "0.7"], "no samples with sigma 0.7"),
        (write_log, ["replay", "{log}", "--alpha", "2"], "alpha must be in (0, 1)"),
        (write_log, ["replay", "{log}", "-o", "{tmp}/no/such/dir/r.tsv"], "cannot write results"),
        (None, ["import-legacy", "{tmp}", "--api", "aws", "--n0", "1", "--sigma", "0.25", "-o", "{tmp}/o.jsonl"],
         "no pred_hist_<i>.pkl files"),
        (None, ["import-legacy", "{tmp}", "--api", "bing", "--n0", "1", "--sigma", "0.25", "-o", "{tmp}/o.jsonl"],
         "--api must be one of"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys, prepare, args, expected):
    log = tmp_path / "run.jsonl"
    if prepare is not None:
        prepare(log)
    argv = [a.format(tmp=tmp_path, log=log) for a in args]
    code, _, stderr = run_cli(capsys, *argv)
    line = assert_one_line_error(code, stderr)
    assert line.startswith("robust-api: error: ") and expected in line, line


def test_refused_legacy_pickle_is_one_line_and_never_executed(tmp_path, capsys):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    marker = tmp_path / "pwned"
    (legacy / "pred_hist_0.pkl").write_bytes(
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    )
    code, _, stderr = run_cli(capsys, "import-legacy", str(legacy), "--api", "aws", "--n0", "1", "--sigma", "0.25",
                              "-o", str(tmp_path / "o.jsonl"))
    line = assert_one_line_error(code, stderr)
    assert "refusing to unpickle os.system" in line and "pred_hist_0.pkl" in line
    assert not marker.exists()


def test_unexpected_exception_is_one_line_exit_1_and_debug_shows_traceback(tmp_path, capsys, monkeypatch):
    log = tmp_path / "run.jsonl"
    write_log(log)

    def broken(*a, **k):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(robust_api.replay, "replay", broken)
    code, _, stderr = run_cli(capsys, "replay", str(log))
    line = assert_one_line_error(code, stderr, expected_code=1)
    assert line == "robust-api: internal error: RuntimeError: boom second line (run with --debug for the traceback)"
    code, _, stderr = run_cli(capsys, "--debug", "replay", str(log))
    assert code == 1 and "Traceback" in stderr and "RuntimeError: boom" in stderr


def test_usage_errors_keep_typer_message_and_exit_2(capsys):
    code, _, stderr = run_cli(capsys, "replay")
    assert code == 2 and "Missing argument" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cli(capsys, "replay", "x.jsonl", "--n0", "many")
    assert code == 2 and "Traceback" not in stderr


def test_console_entry_point_in_a_fresh_process_is_light_and_quiet(tmp_path):
    code = (
        "import sys; import robust_api.cli as c; "
        "assert 'torch' not in sys.modules and 'scipy' not in sys.modules, 'heavy import at CLI start-up'; "
        "c.main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "replay", str(tmp_path / "missing.jsonl")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"robust-api: error: {tmp_path / 'missing.jsonl'}: no such query log"]
    assert proc.stdout == ""
