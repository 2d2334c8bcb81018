"""robust_api.report: certified-accuracy curves, overlaid plots and tables from Cohen-format results TSVs."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from robust_api.errors import ConfigError, LogError
from robust_api.report import (
    DEFAULT_RADII,
    ResultRow,
    Run,
    certified_accuracy_curve,
    load_runs,
    plot_runs,
    read_rows,
    report,
    table_markdown,
)
from robust_api.results import Certificate, read_results_tsv, write_results_tsv

DATA = Path(__file__).parent / "data" / "report"
LOCUSLAB = DATA / "locuslab_certify.tsv"
HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


def _tsv(path: Path, rows: list[tuple], header: str = HEADER) -> Path:
    path.write_text(header + "".join("\t".join(str(c) for c in row) + "\n" for row in rows), encoding="utf-8")
    return path


def _cert(i: int, label: str | None, clean: str | None, radius: float) -> Certificate:
    return Certificate(image=f"img{i}", label=label, radius_l2=radius if label else 0.0, sigma=0.25, alpha=0.001,
                       clean_label=clean, seconds=0.5 + i)


# -- curves ------------------------------------------------------------------------------------------------


def test_curve_counts_correct_rows_with_radius_at_least_r_on_a_locuslab_certify_file():
    rows = read_rows(LOCUSLAB)
    assert len(rows) == 10
    # correct radii: 0.566 0.785 0.117 1.13 0.25 0.0412 0.5; the wrong row (0.253) and abstentions never count
    assert certified_accuracy_curve(rows, DEFAULT_RADII) == pytest.approx([0.7, 0.6, 0.5, 0.4, 0.2, 0.1])
    # r equal to a certified radius still counts it (radius >= r); just above it does not
    assert certified_accuracy_curve(rows, [0.5, 0.5000001, 1.13, 1.14, 5.0]) == pytest.approx([0.4, 0.3, 0.1, 0.0, 0.0])


def test_curve_keeps_the_order_of_the_radii_given():
    rows = read_rows(LOCUSLAB)
    assert certified_accuracy_curve(rows, [1.0, 0.0, 0.25]) == pytest.approx([0.1, 0.7, 0.5])


def test_curve_accepts_read_results_tsv_mappings_and_certificates(tmp_path):
    mappings = read_results_tsv(LOCUSLAB)
    assert certified_accuracy_curve(mappings, DEFAULT_RADII) == pytest.approx([0.7, 0.6, 0.5, 0.4, 0.2, 0.1])
    certs = [_cert(0, "cat", "cat", 0.3), _cert(1, "dog", "cat", 0.9), _cert(2, None, "cat", 0.0), _cert(3, "cat", "cat", 0.1)]
    assert certified_accuracy_curve(certs, [0.0, 0.1, 0.2, 0.3, 0.4]) == pytest.approx([0.5, 0.5, 0.25, 0.25, 0.0])


def test_curve_of_no_rows_is_zero_and_bad_radii_are_config_errors():
    assert certified_accuracy_curve([], [0.0, 0.5]) == [0.0, 0.0]
    for radii in ([], [-0.1], [float("nan")], [float("inf")]):
        with pytest.raises(ConfigError):
            certified_accuracy_curve([ResultRow(0.1, True)], radii)


# -- reading ours and others' -----------------------------------------------------------------------------


def test_our_results_tsv_round_trips_through_the_report(tmp_path):
    certs = [
        _cert(0, "tabby cat", "tabby cat", 0.61),
        _cert(1, "coffee mug", "espresso", 0.40),  # certified but wrong
        _cert(2, None, "daisy", 0.0),  # abstained
        _cert(3, "daisy", "daisy", 0.12),
        _cert(4, "daisy", None, 0.8),  # no clean label: counted wrong
    ]
    path = tmp_path / "ours.tsv"
    write_results_tsv(path, certs)
    assert path.read_text().splitlines()[0] == HEADER.rstrip("\n")
    rows = read_rows(path)
    assert [r.correct for r in rows] == [c.correct for c in certs]
    assert [r.radius for r in rows] == pytest.approx([c.radius_l2 for c in certs])
    assert rows[2].fields["predict"] == "-1" and rows[0].fields["label"] == "tabby cat"
    radii = [0.0, 0.1, 0.5, 0.7]
    assert certified_accuracy_curve(rows, radii) == pytest.approx(certified_accuracy_curve(certs, radii))
    assert certified_accuracy_curve(rows, radii) == pytest.approx([0.4, 0.4, 0.2, 0.0])


def test_extra_columns_crlf_blank_lines_bom_and_boolean_correct_are_tolerated(tmp_path):
    path = tmp_path / "other_tool.tsv"
    text = (
        "\ufeffidx\tlabel\tpredict\tradius\tcorrect\ttime\tpA_lower\r\n"
        "0\t1\t1\t0.5\tTrue\t1.0\t0.97\r\n"
        "\r\n"
        "1\t2\t2\t0.25\t1.0\t1.0\t0.84\r\n"
        "2\t2\t3\t0.9\tFalse\t1.0\t0.99\r\n"
    )
    path.write_bytes(text.encode("utf-8"))
    rows = read_rows(path)
    assert [(r.radius, r.correct) for r in rows] == [(0.5, True), (0.25, True), (0.9, False)]
    assert rows[0].fields["pA_lower"] == "0.97"
    assert certified_accuracy_curve(rows, [0.0, 0.3]) == pytest.approx([2 / 3, 1 / 3])


def test_columns_in_another_order_are_found_by_name(tmp_path):
    path = _tsv(tmp_path / "reordered.tsv", [(0.75, 1, "a"), (0.2, 0, "b")], header="radius\tcorrect\tidx\n")
    assert certified_accuracy_curve(read_rows(path), [0.5]) == [0.5]


@pytest.mark.parametrize(
    "content, line, words",
    [
        ("", None, "is empty"),
        ("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0\n", 1, "missing column(s) radius"),
        ("idx,label,predict,radius,correct,time\n0,1,1,0.5,1,0\n", 1, "not tab-separated"),
        (HEADER, None, "no result rows"),
        (HEADER + "0\t1\t1\t0.5\t1\t0\n1\t1\t1\tbig\t1\t0\n", 3, "radius 'big' is not a number"),
        (HEADER + "0\t1\t1\tnan\t1\t0\n", 2, "NaN"),
        (HEADER + "0\t1\t1\t0.5\t2\t0\n", 2, "correct '2' is not 0 or 1"),
        (HEADER + "0\t1\t1\t0.5\t1\t0\n1\t1\t1\n", 3, "has 3 field(s)"),
    ],
)
def test_malformed_results_files_raise_log_errors_naming_file_and_line(tmp_path, content, line, words):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LogError) as err:
        read_rows(path)
    assert err.value.path == str(path) and err.value.line == line
    assert words in str(err.value)


def test_missing_directory_and_binary_files_raise_log_errors(tmp_path):
    with pytest.raises(LogError, match="cannot open"):
        read_rows(tmp_path / "nope.tsv")
    with pytest.raises(LogError, match="is a directory"):
        read_rows(tmp_path)
    png = tmp_path / "plot.tsv"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00")
    with pytest.raises(LogError, match="not UTF-8"):
        read_rows(png)


# -- runs, labels, table -----------------------------------------------------------------------------------


def _three_runs(tmp_path: Path) -> list[Path]:
    """Figure 6's three curves in miniature: no denoiser < MSE < Stab+MSE (10 images each)."""
    runs = {
        "none.tsv": [0.0, 0.0, 0.0, 0.05, 0.12, None, None, None, None, None],
        "mse.tsv": [0.1, 0.2, 0.26, 0.3, 0.45, 0.6, None, None, None, None],
        "stab_mse.tsv": [0.15, 0.3, 0.4, 0.5, 0.55, 0.7, 0.8, 0.95, None, None],
    }
    paths = []
    for name, radii in runs.items():
        rows = [(i, 1, 1 if r is not None else -1, r or 0.0, int(r is not None and r > 0), 0.1) for i, r in enumerate(radii)]
        paths.append(_tsv(tmp_path / name, rows))
    return paths


def test_runs_are_labelled_by_file_stem_or_by_the_labels_given(tmp_path):
    paths = _three_runs(tmp_path)
    assert [r.label for r in load_runs(paths)] == ["none", "mse", "stab_mse"]
    runs = load_runs(paths, ["no denoiser", "MSE", "Stab+MSE"])
    assert [r.label for r in runs] == ["no denoiser", "MSE", "Stab+MSE"]
    assert [r.label for r in load_runs(paths, "no denoiser, MSE,Stab+MSE")] == ["no denoiser", "MSE", "Stab+MSE"]
    assert runs[2].curve([0.0, 0.5]) == pytest.approx([0.8, 0.5])


def test_same_file_names_in_different_directories_get_distinct_labels(tmp_path):
    for d in ("sigma0.25", "sigma0.5"):
        (tmp_path / d).mkdir()
        _tsv(tmp_path / d / "results.tsv", [(0, 1, 1, 0.3, 1, 0)])
    runs = load_runs([tmp_path / "sigma0.25" / "results.tsv", tmp_path / "sigma0.5" / "results.tsv"])
    assert [r.label for r in runs] == ["sigma0.25/results", "sigma0.5/results"]


def test_label_count_mismatch_and_no_files_are_config_errors(tmp_path):
    paths = _three_runs(tmp_path)
    with pytest.raises(ConfigError, match="2 label"):
        load_runs(paths, ["a", "b"])
    with pytest.raises(ConfigError, match="no results files"):
        load_runs([])


def test_table_lists_each_run_at_each_radius_and_bolds_the_best(tmp_path):
    runs = load_runs(_three_runs(tmp_path), ["no denoiser", "MSE", "Stab+MSE"])
    table = table_markdown(runs, [0.0, 0.25, 0.5])
    lines = table.strip().splitlines()
    assert lines[0] == "| run | images | r = 0 | r = 0.25 | r = 0.5 |"
    assert lines[1].startswith("| --- | ---: |")
    assert lines[2] == "| no denoiser | 10 | 20.0% | 0.0% | 0.0% |"
    assert lines[3] == "| MSE | 10 | 60.0% | 40.0% | 10.0% |"
    assert lines[4] == "| Stab+MSE | 10 | **80.0%** | **70.0%** | **50.0%** |"
    default = table_markdown(runs).splitlines()[0]
    assert default == "| run | images | r = 0 | r = 0.1 | r = 0.25 | r = 0.5 | r = 0.75 | r = 1 |"


# -- plots -------------------------------------------------------------------------------------------------


def test_several_runs_overlaid_make_a_png_that_decodes(tmp_path):
    runs = load_runs(_three_runs(tmp_path), ["no denoiser", "MSE", "Stab+MSE"])
    runs.append(load_runs([LOCUSLAB], ["locuslab certify"])[0])
    out = plot_runs(runs, tmp_path / "curves.png", title="sigma = 0.25")
    with Image.open(out) as img:
        img.load()
        assert img.format == "PNG"
        width, height = img.size
        assert 600 <= width <= 2000 and 400 <= height <= 1500
        # not a blank canvas: the curves and legend put many distinct colours on it
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50


def test_a_run_from_certificates_plots_without_a_tsv(tmp_path):
    run = Run.from_certificates("replayed", [_cert(0, "cat", "cat", 0.3), _cert(1, None, "cat", 0.0)])
    assert run.curve([0.0, 0.3, 0.31]) == pytest.approx([0.5, 0.5, 0.0])
    assert plot_runs([run], tmp_path / "one.png").stat().st_size > 1000


def test_unwritable_plot_path_and_empty_run_list_are_config_errors(tmp_path):
    runs = load_runs([LOCUSLAB])
    with pytest.raises(ConfigError, match="cannot write plot"):
        plot_runs(runs, tmp_path / "missing-dir" / "x.png")
    with pytest.raises(ConfigError, match="no runs"):
        plot_runs([], tmp_path / "x.png")


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ConfigError, match=r"pip install 'robust-api\[notebooks\]'"):
        plot_runs(load_runs([LOCUSLAB]), tmp_path / "x.png")
    # tables need no matplotlib
    assert "locuslab_certify" in report([LOCUSLAB])


# -- report(), the CLI's entry point -----------------------------------------------------------------------


def test_report_writes_plot_and_table_and_returns_the_table(tmp_path):
    paths = _three_runs(tmp_path)
    png, md = tmp_path / "out.png", tmp_path / "out.md"
    text = report(paths, labels=["no denoiser", "MSE", "Stab+MSE"], plot=png, table=md, radii=[0, 0.5])
    assert md.read_text() == text
    assert "| Stab+MSE | 10 | **80.0%** | **50.0%** |" in text
    with Image.open(png) as img:
        assert img.size[0] > 0


def test_report_reads_every_input_before_writing_anything(tmp_path):
    bad = _tsv(tmp_path / "bad.tsv", [(0, 1, 1, "oops", 1, 0)])
    png, md = tmp_path / "out.png", tmp_path / "out.md"
    with pytest.raises(LogError, match="bad.tsv:2"):
        report([LOCUSLAB, bad], plot=png, table=md)
    assert not png.exists() and not md.exists()
    with pytest.raises(ConfigError, match="radii"):
        report([LOCUSLAB], radii=[0.5, -1])


def test_plot_handles_all_abstained_runs_and_infinite_radii(tmp_path):
    abstained = _tsv(tmp_path / "abstained.tsv", [(i, 1, -1, 0.0, 0, 0.1) for i in range(3)])
    unbounded = _tsv(tmp_path / "unbounded.tsv", [(0, 1, 1, "inf", 1, 0.1), (1, 1, 1, 0.4, 1, 0.1)])
    runs = load_runs([abstained, unbounded])
    assert runs[0].curve([0.0]) == [0.0]
    assert runs[1].curve([0.0, 0.5, 1e9]) == pytest.approx([1.0, 0.5, 0.5])
    with Image.open(plot_runs(runs, tmp_path / "edge.png")) as img:
        img.load()
        assert img.size[0] > 0


# -- published rows beside ours ----------------------------------------------------------------------------


def test_the_papers_cifar10_rows_follow_ours_with_dashes_where_it_reports_nothing(tmp_path):
    from robust_api.report import PUBLISHED

    text = report(_three_runs(tmp_path), labels=["a", "b", "c"], radii=[0, 0.25, 1.0],
                  references=["salman2020-cifar10"])
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 3 + len(PUBLISHED["salman2020-cifar10"])
    assert lines[5] == "| no denoiser | published | – | 7.0% | 0.0% |"
    assert lines[7] == "| Stab+MSE, full access | published | – | 56.0% | 19.0% |"


def test_a_reference_tsv_is_read_and_bad_ones_name_file_and_line(tmp_path):
    from robust_api.report import load_reference

    good = tmp_path / "ref.tsv"
    good.write_text("label\t0.25\t0.5\nmine, published\t0.5\t-\n", encoding="utf-8")
    (row,) = load_reference(good)
    assert row.label == "mine, published" and dict(row.points) == {0.25: 0.5}
    assert "| mine, published | published | 50.0% | – |" in report(_three_runs(tmp_path), radii=[0.25, 0.5],
                                                                    references=[good])
    bad = tmp_path / "bad.tsv"
    bad.write_text("label\t0.25\nrow\t56\n", encoding="utf-8")
    with pytest.raises(LogError, match=r"bad.tsv.*2.*not a fraction"):
        load_reference(bad)
    with pytest.raises(ConfigError, match="salman2020-cifar10"):
        load_reference(tmp_path / "missing.tsv")


def test_published_markers_are_drawn_on_the_plot(tmp_path):
    runs = load_runs(_three_runs(tmp_path))
    from robust_api.report import figure_runs, load_reference

    fig = figure_runs(runs, references=load_reference("salman2020-cifar10"))
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[3:] == [f"{r.label} (published)" for r in load_reference("salman2020-cifar10")]
    assert fig.axes[0].get_xlim()[1] >= 1.0  # the paper's r = 1 points are inside the axes


def test_the_report_command_puts_the_papers_rows_beside_ours(tmp_path, capsys):
    from robust_api import cli

    paths = _three_runs(tmp_path)
    with pytest.raises(SystemExit) as done:
        cli.main(["report", *map(str, paths), "--radii", "0.25", "--reference", "salman2020-cifar10",
                  "--table", str(tmp_path / "t.md")])
    out = capsys.readouterr().out
    assert (done.value.code or 0) == 0
    assert "| Stab+MSE, query access | published | 45.0% |" in out
    assert (tmp_path / "t.md").read_text().count("| published |") == 4
    with pytest.raises(SystemExit) as done:
        cli.main(["report", str(paths[0]), "--reference", "nope-2020"])
    assert done.value.code != 0 and "salman2020-cifar10" in capsys.readouterr().err
