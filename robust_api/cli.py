"""The `robust-api` command line: replay logs, import legacy logs (and, added by the lead, certify and friends).

Adding a command: write a function decorated with `@app.command("name")` (or `app.add_typer(sub, name=...)`
for a group), import heavy modules (torch, providers, engine) inside the function so start-up stays fast,
raise RobustAPIError subclasses for anything the user can fix, and print with `console()` and the shared
helpers `certificate_table()` / `print_summary()`. `main()` turns RobustAPIError into one line
`robust-api: error: ...` with exit code 2; any other exception into one line with exit code 1
(`robust-api --debug ...` shows the traceback). Usage errors keep typer's own message and exit code 2.
"""
from __future__ import annotations

import logging
import math
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence

import typer

from robust_api.errors import ConfigError, RobustAPIError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from robust_api.results import Certificate

PROG = "robust-api"
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name=PROG,
    help="Certified L2 robustness for image-labelling APIs and local models (denoised smoothing).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # main() prints one line instead of a traceback
)

DECISION_HELP = 'Decision rule: "top1", "vocab:PATH" (JSON {class: [synonyms]}) or "present:LABEL[:THRESHOLD]".'


# -- shared helpers (used by every command) ---------------------------------------------------------


def console(stderr: bool = False) -> "Console":
    """A rich console bound to the current stdout/stderr (so test capture and pipes work)."""
    from rich.console import Console

    return Console(file=sys.stderr if stderr else sys.stdout, highlight=False, soft_wrap=False)


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{PROG}: {record.levelname.lower()}: {text}"


def _setup_logging(debug: bool) -> None:
    """Library warnings (torn log tails, duplicates, mixed model versions) go to stderr as one line each."""
    logger = logging.getLogger("robust_api")
    for handler in list(logger.handlers):
        if getattr(handler, "_robust_api_cli", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._robust_api_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_OneLineFormatter("%(name)s: %(message)s" if debug else "%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    logger.propagate = False


def _fmt_label(label: Optional[str]) -> str:
    return "abstain" if label is None else label


def certificate_table(certificates: Sequence["Certificate"], title: str = "Certificates") -> "Table":
    """One row per certificate: image, clean label, certified label, radius, p_lower, samples, correct."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("image", overflow="fold", min_width=8)
    table.add_column("sigma", justify="right", no_wrap=True)
    table.add_column("clean", overflow="fold")
    table.add_column("certified", overflow="fold")
    table.add_column("radius", justify="right", no_wrap=True)
    table.add_column("pA_lower", justify="right", no_wrap=True)
    table.add_column("n0/n", justify="right", no_wrap=True)
    table.add_column("ok", justify="center", no_wrap=True)
    for i, cert in enumerate(certificates):
        n0 = sum(cert.counts_selection.values())
        n = sum(cert.counts_estimation.values())
        table.add_row(
            str(i),
            _short_image(cert.name or cert.image),
            f"{cert.sigma:g}",
            cert.clean_label if cert.clean_label is not None else "-",
            _fmt_label(cert.label),
            f"{cert.radius_l2:.3f}",
            "-" if cert.p_lower is None else f"{cert.p_lower:.4f}",
            f"{n0}/{n}",
            "yes" if cert.correct else "no",
        )
    return table


def _short_image(name: str) -> str:
    # sha256 ids are unreadable at full length; 16 hex digits are still unique in practice
    if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
        return name[:16]
    return name


def summary_radii(certificates: Sequence["Certificate"], step: float = 0.1, max_points: int = 51) -> list[float]:
    """Radii 0, step, 2*step, ... up to the largest certified radius (at least 0.5, at most max_points)."""
    largest = max((c.radius_l2 for c in certificates), default=0.0)
    top = max(0.5, largest)
    count = min(max_points, int(math.floor(top / step + 1e-9)) + 1)
    return [round(i * step, 10) for i in range(count)]


def print_summary(certificates: Sequence["Certificate"], out: "Console | None" = None) -> None:
    """Certified accuracy at radii 0, 0.1, ... (correct = certified class equals the clean label), per sigma."""
    from rich.table import Table

    from robust_api.results import certified_accuracy

    out = out or console()
    by_sigma: dict[float, list] = {}
    for cert in certificates:
        by_sigma.setdefault(cert.sigma, []).append(cert)
    for sigma, certs in sorted(by_sigma.items()):
        certified = sum(1 for c in certs if c.label is not None)
        with_clean = sum(1 for c in certs if c.clean_label is not None)
        out.print(
            f"sigma {sigma:g}: {len(certs)} image(s), {certified} certified, {len(certs) - certified} abstained"
            + ("" if with_clean == len(certs) else f", {len(certs) - with_clean} without a clean label (counted wrong)")
        )
        accuracy = certified_accuracy(certs, summary_radii(certs))
        table = Table(title=f"Certified accuracy (sigma {sigma:g})", title_justify="left")
        table.add_column("radius", justify="right")
        table.add_column("certified accuracy", justify="right")
        for radius, value in accuracy.items():
            table.add_row(f"{radius:.1f}", f"{100 * value:.1f}%")
        out.print(table)


def _write_tsv(path: Path, certificates: Sequence["Certificate"]) -> None:
    from robust_api.results import write_results_tsv

    try:
        write_results_tsv(path, certificates)
    except OSError as exc:
        raise ConfigError(f"cannot write results to {path}: {exc.strerror or exc}") from None


# -- root options ---------------------------------------------------------------------------------


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show debug logging and full tracebacks."),
) -> None:
    _setup_logging(debug)


# -- commands ------------------------------------------------------------------------------------


@app.command("replay")
def replay_command(
    logs: List[Path] = typer.Argument(..., metavar="LOG.jsonl", help="JSONL query logs to recount (one or more)."),
    sigma: Optional[float] = typer.Option(
        None, "--sigma", help="Only replay samples logged at this noise level (default: every sigma, separately)."
    ),
    n0: Optional[int] = typer.Option(None, "--n0", help="Selection samples per image (first by index; default all)."),
    n: Optional[int] = typer.Option(None, "--n", help="Estimation samples per image (first by index; default all)."),
    alpha: float = typer.Option(0.001, "--alpha", help="Failure probability of each certificate."),
    decision: str = typer.Option("top1", "--decision", help=DECISION_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write Cohen-format results TSV here."),
    table: bool = typer.Option(True, "--table/--no-table", help="Print the per-image certificate table."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="Processes reading large logs (default: one per core)."
    ),
) -> None:
    """Recount certificates from query logs without paying for a single call."""
    from robust_api.replay import default_workers, replay

    certificates = replay(
        logs, rule=decision, alpha=alpha, n0=n0, n=n, sigma=sigma, workers=workers or default_workers()
    )
    if not certificates:
        raise ConfigError("the logs hold no selection or estimation samples to certify")
    out_console = console()
    if table:
        out_console.print(certificate_table(certificates))
    print_summary(certificates, out_console)
    if out is not None:
        _write_tsv(out, certificates)
        out_console.print(f"wrote {len(certificates)} result(s) to {out}")


@app.command("import-legacy")
def import_legacy_command(
    directory: Path = typer.Argument(..., metavar="DIR", help="Directory of reference logs pred_hist_<i>.pkl."),
    api: str = typer.Option(..., "--api", help="Provider the logs came from: azure, google, aws or clarifai."),
    n0: int = typer.Option(..., "--n0", help="How many of each file's noisy responses were selection samples."),
    sigma: float = typer.Option(..., "--sigma", help="Noise level the logs were made with."),
    out: Path = typer.Option(..., "--out", "-o", metavar="OUT.jsonl", help="JSONL log to write."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed to record (the reference did not log one)."),
    append: bool = typer.Option(False, "--append", help="Add to an existing OUT instead of refusing."),
) -> None:
    """Convert the reference implementation's pickle logs into a JSONL query log (restricted unpickler)."""
    from robust_api.query_logs.legacy import import_legacy

    summary = import_legacy(directory, api, n0=n0, sigma=sigma, out=out, seed=seed, append=append)
    console().print(
        f"imported {summary.files} file(s), {summary.records} record(s) -> {summary.out}\n"
        f"next: {PROG} replay {summary.out}"
    )


# -- entry point ------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point: run the app; user errors -> one line + exit 2, crashes -> one line + exit 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name=PROG)
    except SystemExit:
        raise
    except RobustAPIError as exc:
        if debug:
            traceback.print_exc(file=sys.stderr)
        print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as exc:  # a bug, not a user error: still one line unless --debug
        if debug:
            traceback.print_exc(file=sys.stderr)
        hint = "" if debug else " (run with --debug for the traceback)"
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(str(exc))}{hint}", file=sys.stderr)
        raise SystemExit(EXIT_INTERNAL_ERROR) from None


if __name__ == "__main__":
    main()
