"""Certified accuracy vs L2 radius from Cohen-format results TSVs: curves, overlaid plots, markdown tables.

Reads our results (`robust_api.results.write_results_tsv`) and other randomized-smoothing tools' certify
output (e.g. locuslab/smoothing): tab-separated, header with at least `radius` and `correct`; other columns
are kept but ignored. Certified accuracy at r is the fraction of rows with correct == 1 and radius >= r
(abstentions are written as radius 0, correct 0, so they count as wrong everywhere).

matplotlib is needed only for plots (`pip install 'robust-api[notebooks]'`); it is imported lazily and used
through its object API (Figure + Agg canvas), so plotting never changes a notebook's or script's backend.
"""
from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from robust_api.errors import ConfigError, LogError

__all__ = [
    "DEFAULT_RADII",
    "ResultRow",
    "Run",
    "read_rows",
    "certified_accuracy_curve",
    "load_runs",
    "figure_runs",
    "plot_runs",
    "table_markdown",
    "report",
    "PublishedRow",
    "PUBLISHED",
    "load_reference",
]

DEFAULT_RADII: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)

_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


@dataclass(frozen=True)
class ResultRow:
    """One certified image: `radius` (L2, 0.0 when abstained) and whether the certified class is correct.
    `fields` keeps the row's other columns as read (idx, label, predict, time, or a tool's extras)."""

    radius: float
    correct: bool
    fields: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass
class Run:
    """One results table under a display label (a legend entry / table row)."""

    label: str
    rows: list[ResultRow]
    path: Path | None = None

    @classmethod
    def from_certificates(cls, label: str, certificates: Iterable[Any]) -> "Run":
        """A run from Certificate objects (e.g. straight from `replay` or `certify_many`, no TSV needed)."""
        rows = [
            ResultRow(float(c.radius_l2) if c.label is not None else 0.0, bool(c.correct), {"image": str(c.image)})
            for c in certificates
        ]
        return cls(label, rows)

    def curve(self, radii: Iterable[float]) -> list[float]:
        return certified_accuracy_curve(self.rows, radii)


@dataclass(frozen=True)
class PublishedRow:
    """A published result to put beside ours: certified accuracy (a fraction) at the radii the publication
    reports, nothing in between (a table row and plot markers, never a curve)."""

    label: str
    points: Mapping[float, float]
    source: str = ""


_SALMAN2020 = ("Salman et al. 2020, Denoised Smoothing, CIFAR-10 table: ResNet-110, N = 10,000, "
               "best sigma of {0.12, 0.25, 0.5, 1.0} per radius")
# the publications' numbers, by the name `--reference` takes; radii -> certified accuracy
PUBLISHED: dict[str, tuple[PublishedRow, ...]] = {
    "salman2020-cifar10": tuple(
        PublishedRow(label, dict(zip((0.25, 0.5, 0.75, 1.0), values)), _SALMAN2020)
        for label, values in (
            ("no denoiser", (0.07, 0.03, 0.00, 0.00)),
            ("Stab+MSE, query access", (0.45, 0.20, 0.15, 0.13)),
            ("Stab+MSE, full access", (0.56, 0.41, 0.28, 0.19)),
            ("Gaussian-trained classifier (Cohen et al.)", (0.59, 0.45, 0.31, 0.21)),
        )
    ),
}


# -- reading ---------------------------------------------------------------------------------------------


def _parse_correct(raw: str | None) -> bool | None:
    if raw is None:
        return None
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    try:  # "1.0" / "0.0" from tools that write floats
        value = float(text)
    except ValueError:
        return None
    return True if value == 1.0 else False if value == 0.0 else None


def read_rows(path: str | Path) -> list[ResultRow]:
    """The rows of one Cohen-format results TSV. LogError (naming file and line) when the file cannot be read,
    is empty, lacks a `radius` or `correct` column, or has a row whose radius is not a number or whose
    correct is not 0/1 (true/false also accepted). Blank lines are skipped; extra columns are kept."""
    path = Path(path)
    if path.is_dir():
        raise LogError(path, None, "is a directory, not a results TSV")
    try:
        fh = open(path, newline="", encoding="utf-8-sig")  # -sig: tolerate a BOM from spreadsheet exports
    except OSError as exc:
        raise LogError(path, None, f"cannot open results file: {exc.strerror or exc}") from None
    rows: list[ResultRow] = []
    with fh:
        reader = csv.reader(fh, delimiter="\t")
        try:
            header = next((r for r in reader if any(cell.strip() for cell in r)), None)
            if header is None:
                raise LogError(path, None, "is empty (expected a header `idx\tlabel\tpredict\tradius\tcorrect\ttime`)")
            names = [h.strip() for h in header]
            missing = [c for c in ("radius", "correct") if c not in names]
            if missing:
                hint = " (the file is not tab-separated)" if len(names) == 1 and "," in names[0] else ""
                raise LogError(
                    path, reader.line_num,
                    f"not a Cohen-format results TSV: missing column(s) {', '.join(missing)}{hint}",
                )
            radius_col, correct_col = names.index("radius"), names.index("correct")
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue
                line = reader.line_num
                if len(cells) <= max(radius_col, correct_col):
                    raise LogError(path, line, f"has {len(cells)} field(s), the header has {len(names)}")
                try:
                    radius = float(cells[radius_col])
                except ValueError:
                    raise LogError(path, line, f"radius {cells[radius_col]!r} is not a number") from None
                if math.isnan(radius):
                    raise LogError(path, line, "radius is NaN")
                correct = _parse_correct(cells[correct_col])
                if correct is None:
                    raise LogError(path, line, f"correct {cells[correct_col]!r} is not 0 or 1")
                extras = {n: c for n, c in zip(names, cells) if n not in ("radius", "correct")}
                rows.append(ResultRow(radius, correct, extras))
        except UnicodeDecodeError:
            raise LogError(path, reader.line_num + 1, "is not UTF-8 text (not a results TSV?)") from None
        except csv.Error as exc:
            raise LogError(path, reader.line_num, f"unreadable TSV: {exc}") from None
    if not rows:
        raise LogError(path, None, "has a header but no result rows")
    return rows


def _radius_correct(row: Any) -> tuple[float, bool]:
    if isinstance(row, ResultRow):
        return row.radius, row.correct
    if isinstance(row, Mapping):  # rows of robust_api.results.read_results_tsv
        correct = _parse_correct(str(row["correct"]))
        if correct is None:
            raise ConfigError(f"correct {row['correct']!r} is not 0 or 1")
        return float(row["radius"]), correct
    if hasattr(row, "radius_l2") and hasattr(row, "correct"):  # a Certificate
        return (float(row.radius_l2) if row.label is not None else 0.0), bool(row.correct)
    raise ConfigError(f"cannot read a radius and correctness from a {type(row).__name__}")


def _check_radii(radii: Iterable[float] | None) -> list[float]:
    values = list(DEFAULT_RADII if radii is None else radii)
    if not values:
        raise ConfigError("give at least one radius")
    for r in values:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r < 0:
            raise ConfigError(f"radii must be finite numbers >= 0, got {r!r}")
    return [float(r) for r in values]


def certified_accuracy_curve(rows: Sequence[Any], radii: Iterable[float]) -> list[float]:
    """Certified accuracy at each radius, in the order given: fraction of rows with correct == 1 and
    radius >= r. Rows are ResultRows, read_results_tsv mappings or Certificates; 0.0 for no rows."""
    radii = _check_radii(radii)
    pairs = [_radius_correct(row) for row in rows]
    if not pairs:
        return [0.0 for _ in radii]
    certified = sorted(radius for radius, correct in pairs if correct)
    total = len(pairs)
    # rows with radius >= r = everything from the first position where radius >= r
    return [(len(certified) - bisect.bisect_left(certified, r)) / total for r in radii]


def _default_labels(paths: Sequence[Path]) -> list[str]:
    labels = [p.stem for p in paths]
    if len(set(labels)) < len(labels):  # same file names in different directories: add the directory
        labels = [f"{p.parent.name}/{p.stem}" if p.parent.name else str(p) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [str(p) for p in paths]
    return labels


def _as_paths(paths: Iterable[str | Path] | str | Path) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = [Path(p) for p in paths]
    if not out:
        raise ConfigError("no results files given")
    return out


def _as_labels(labels: Sequence[str] | str | None, count: int) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str):  # the CLI may pass "no denoiser,MSE,Stab+MSE"
        labels = [part.strip() for part in labels.split(",")]
    labels = [str(label) for label in labels]
    if len(labels) != count:
        raise ConfigError(f"{len(labels)} label(s) for {count} results file(s); give one label per file")
    return labels


def load_runs(paths: Iterable[str | Path] | str | Path, labels: Sequence[str] | str | None = None) -> list[Run]:
    """One Run per results file, labelled by `labels` (one per file; a comma-separated string is split) or
    by file stem. ConfigError for no files or a label count mismatch; LogError for unreadable files."""
    paths = _as_paths(paths)
    names = _as_labels(labels, len(paths)) or _default_labels(paths)
    return [Run(name, read_rows(path), path) for name, path in zip(names, paths)]


def load_reference(spec: str | Path) -> list[PublishedRow]:
    """Published rows by name (a key of PUBLISHED, e.g. "salman2020-cifar10") or from a TSV file whose header
    is `label` then radii (`label\t0.25\t0.5`) and whose rows are a label then certified accuracies as fractions
    in [0, 1] (a blank or `-` cell: not reported). ConfigError for an unknown name that is no file; LogError
    (naming file and line) for a malformed file."""
    if str(spec) in PUBLISHED:
        return list(PUBLISHED[str(spec)])
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--reference {spec!r} is neither a known publication ({', '.join(sorted(PUBLISHED))}) "
                          "nor a TSV file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LogError(path, None, f"cannot read reference table: {exc}") from None
    numbered = [(i, line.split("\t")) for i, line in enumerate(lines, 1) if line.strip()]
    if not numbered or numbered[0][1][0].strip() != "label" or len(numbered[0][1]) < 2:
        raise LogError(path, numbered[0][0] if numbered else None,
                       "a reference table starts with a header `label<TAB>radius<TAB>radius...`")
    try:
        radii = _check_radii([float(cell) for cell in numbered[0][1][1:]])
    except (ValueError, ConfigError):
        raise LogError(path, numbered[0][0], "header radii must be numbers >= 0") from None
    rows = []
    for line, cells in numbered[1:]:
        if len(cells) != len(radii) + 1:
            raise LogError(path, line, f"has {len(cells)} field(s), the header has {len(radii) + 1}")
        points = {}
        for r, cell in zip(radii, cells[1:]):
            if cell.strip() in ("", "-"):
                continue
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not 0.0 <= value <= 1.0:
                raise LogError(path, line, f"certified accuracy {cell!r} is not a fraction in [0, 1]")
            points[r] = value
        rows.append(PublishedRow(cells[0].strip(), points, str(path)))
    if not rows:
        raise LogError(path, None, "has a header but no rows")
    return rows


# -- plots -----------------------------------------------------------------------------------------------


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import PercentFormatter
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'robust-api[notebooks]'") from None
    return Figure, FigureCanvasAgg, PercentFormatter


_LINESTYLES = ("-", (0, (5, 2)), (0, (5, 2, 1, 2)), (0, (1, 1.5)))  # solid, dashed, dash-dot, dotted


def _x_limit(runs: Sequence[Run]) -> float:
    finite = [row.radius for run in runs for row in run.rows if row.correct and math.isfinite(row.radius)]
    largest = max(finite, default=0.0)
    # round up to the next 0.25 so the last step is visible and ticks land on round numbers
    return max(0.5, math.ceil(largest * 1.05 / 0.25) * 0.25)


def _steps(run: Run, x_max: float) -> tuple[list[float], list[float]]:
    """Exact breakpoints of the (right-continuous, decreasing) curve for a 'steps-pre' line."""
    certified = sorted({min(row.radius, x_max) for row in run.rows if row.correct and row.radius >= 0})
    xs = [0.0] + [r for r in certified if r > 0.0] + [x_max]
    ys = [100.0 * v for v in certified_accuracy_curve(run.rows, xs[:-1])]
    # beyond the largest radius nothing is certified (unless radii were clipped at x_max)
    ys.append(100.0 * certified_accuracy_curve(run.rows, [x_max])[0] if certified and certified[-1] >= x_max else 0.0)
    return xs, ys


def figure_runs(runs: Sequence[Run], title: str | None = None, references: Sequence[PublishedRow] = ()):
    """A matplotlib Figure with every run's certified-accuracy curve overlaid (x: L2 radius, y: %), and each
    published row as markers at its radii (hollow, dotted, in the legend as "(published)")."""
    if not runs:
        raise ConfigError("nothing to plot: no runs")
    Figure, FigureCanvasAgg, PercentFormatter = _matplotlib()
    fig = Figure(figsize=(7.0, 4.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x_max = max([_x_limit(runs)] + [r for ref in references for r in ref.points])
    for i, run in enumerate(runs):
        xs, ys = _steps(run, x_max)
        # a different dash pattern per run keeps curves that coincide (common for small runs) all visible
        ax.plot(
            xs, ys, drawstyle="steps-pre", linewidth=2.0, linestyle=_LINESTYLES[i % len(_LINESTYLES)],
            color=f"C{i % 10}", label=f"{run.label} ({len(run.rows)} image{'s' if len(run.rows) != 1 else ''})",
        )
    for j, ref in enumerate(references, start=len(runs)):
        xs = sorted(ref.points)
        ax.plot(xs, [100.0 * ref.points[r] for r in xs], linestyle=":", marker="o", markerfacecolor="none",
                color=f"C{j % 10}", label=f"{ref.label} (published)")
    ax.set_xlim(0.0, x_max)
    ax.set_ylim(-1.5, 102.0)  # a curve at 0 % stays visible above the axis line
    ax.yaxis.set_major_formatter(PercentFormatter(100.0, decimals=0))
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("Certified accuracy")
    ax.set_title(title or "Certified accuracy vs L2 radius")
    ax.grid(True, which="major", alpha=0.4)
    ax.minorticks_on()
    ax.grid(True, which="minor", alpha=0.15)
    ax.legend(loc="upper right", frameon=True, fontsize="small" if references else None)
    return fig


def plot_runs(runs: Sequence[Run], out_png: str | Path, title: str | None = None,
              references: Sequence[PublishedRow] = ()) -> Path:
    """Write the overlaid curves of `runs` (and published markers) to a PNG at `out_png`; returns the path.
    ConfigError when matplotlib is missing, there is nothing to plot, or the file cannot be written."""
    fig = figure_runs(runs, title, references)
    out = Path(out_png)
    try:
        fig.savefig(out, format="png")
    except OSError as exc:
        raise ConfigError(f"cannot write plot to {out}: {exc.strerror or exc}") from None
    return out


# -- tables ----------------------------------------------------------------------------------------------


def _fmt_radius(r: float) -> str:
    return f"{r:g}"


def table_markdown(runs: Sequence[Run], radii: Iterable[float] | None = None,
                   references: Sequence[PublishedRow] = ()) -> str:
    """A markdown table: one row per run (label, images, certified accuracy in % at each radius); the best
    value of each column is bold when there are several runs. radii default to DEFAULT_RADII. Published rows
    follow, marked "published" in the images column, with "–" at radii they do not report."""
    radii = _check_radii(radii)
    if not runs:
        raise ConfigError("nothing to tabulate: no runs")
    curves = [run.curve(radii) for run in runs]
    header = ["run", "images"] + [f"r = {_fmt_radius(r)}" for r in radii]
    lines = [
        "| " + " | ".join(header) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in radii) + " |",
    ]
    best = [max(curve[j] for curve in curves) for j in range(len(radii))]
    for run, curve in zip(runs, curves):
        cells = []
        for j, value in enumerate(curve):
            text = f"{100 * value:.1f}%"
            cells.append(f"**{text}**" if len(runs) > 1 and value == best[j] and value > 0 else text)
        label = run.label.replace("|", "\\|")
        lines.append(f"| {label} | {len(run.rows)} | " + " | ".join(cells) + " |")
    for ref in references:
        cells = [f"{100 * ref.points[r]:.1f}%" if r in ref.points else "–" for r in radii]
        lines.append(f"| {ref.label.replace('|', chr(92) + '|')} | published | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- the CLI's entry point -------------------------------------------------------------------------------


def report(
    paths: Iterable[str | Path] | str | Path,
    labels: Sequence[str] | str | None = None,
    plot: str | Path | None = None,
    table: str | Path | None = None,
    radii: Iterable[float] | None = None,
    title: str | None = None,
    references: Iterable[str | Path] = (),
) -> str:
    """Load results TSVs (and published rows: `load_reference` names or files), write the overlaid plot to
    `plot` (PNG) and the markdown table to `table` when given, and return the table. Errors: ConfigError (no
    files, label count, radii, unknown reference, matplotlib missing, unwritable output), LogError (missing or
    malformed results or reference file). Inputs are all read before anything is written."""
    radii = _check_radii(radii)
    runs = load_runs(paths, labels)
    published = [row for spec in references for row in load_reference(spec)]
    text = table_markdown(runs, radii, published)
    if plot is not None:
        plot_runs(runs, plot, title, published)
    if table is not None:
        try:
            Path(table).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write table to {table}: {exc.strerror or exc}") from None
    return text
