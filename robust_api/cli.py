"""The `robust-api` command line: certify, replay, import-legacy, plan, emulate, report, denoiser, classifier,
demo.

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
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

import typer

from robust_api.errors import ConfigError, RobustAPIError

if TYPE_CHECKING:
    from rich.console import Console

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
    """A rich console bound to the current stdout/stderr (so test capture and pipes work). On a terminal, long
    lines wrap at word boundaries to its width; into a file or a pipe nothing is wrapped (the reader's viewer
    wraps, and a line stays one line for grep)."""
    from rich.console import Console

    file = sys.stderr if stderr else sys.stdout
    terminal = bool(getattr(file, "isatty", lambda: False)())
    return Console(file=file, highlight=False, soft_wrap=not terminal)


class TextTable:
    """A table that reads well anywhere: columns aligned with two spaces between them and a dashed rule under
    the header, one line per row, never wrapped inside a cell. Into a file or a pipe (CI logs, `| less`) every
    cell is printed whole; on a terminal the table fits its width: the widest text columns are shortened with
    an ellipsis first, numbers never are.

    `columns` are (header, "left" | "right"); rows are lists of strings. Print it with `console().print(...)`.
    """

    MIN_TEXT = 6  # a text column is never shortened below this (or its header, if shorter)

    def __init__(self, columns: Sequence[tuple[str, str]], title: str | None = None) -> None:
        self.columns = [(str(name), justify) for name, justify in columns]
        self.title = title
        self.rows: list[list[str]] = []

    def add_row(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cell(s) for {len(self.columns)} column(s)")
        self.rows.append([str(c) for c in cells])

    def widths(self, max_width: int | None = None) -> list[int]:
        """Column widths: each column's longest cell, then (given max_width) the widest text columns shortened
        one character at a time until the table fits or none can shrink further."""
        widths = [max([len(name)] + [len(row[i]) for row in self.rows]) for i, (name, _) in enumerate(self.columns)]
        if max_width is None:
            return widths
        floor = [min(w, max(self.MIN_TEXT, len(name))) if justify == "left" else w
                 for w, (name, justify) in zip(widths, self.columns)]
        excess = sum(widths) + 2 * (len(widths) - 1) - max_width
        while excess > 0:
            shrinkable = [i for i, w in enumerate(widths) if w > floor[i]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: (widths[i], -i))
            widths[widest] -= 1
            excess -= 1
        return widths

    def lines(self, max_width: int | None = None) -> list[str]:
        """The header, the rule and one line per row (no title), fitted to max_width when given."""
        widths = self.widths(max_width)

        def fit(cell: str, width: int) -> str:
            return cell if len(cell) <= width else cell[: max(0, width - 1)] + "…"

        def line(cells: Sequence[str]) -> str:
            parts = [fit(c, w).rjust(w) if justify == "right" else fit(c, w).ljust(w)
                     for c, w, (_, justify) in zip(cells, widths, self.columns)]
            return "  ".join(parts).rstrip()

        return [line([name for name, _ in self.columns]), "  ".join("-" * w for w in widths)] + [
            line(row) for row in self.rows]

    def __rich_console__(self, console: "Console", options):  # the rich render protocol
        from rich.text import Text

        terminal = console.is_terminal
        if self.title:
            yield Text(self.title, style="bold" if terminal else "", end="\n")
        for i, text in enumerate(self.lines(options.max_width if terminal else None)):
            yield Text(text, style="bold" if terminal and i == 0 else "", no_wrap=True, overflow="ignore", end="\n")


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


def certificate_table(certificates: Sequence["Certificate"], title: str = "Certificates") -> TextTable:
    """One row per certificate: image, clean label, certified label, radius, p_lower, samples, correct. The
    sigma column is left out (and named in the title) when every certificate has the same sigma."""
    sigmas = sorted({cert.sigma for cert in certificates})
    one_sigma = len(sigmas) == 1
    columns = [("#", "right"), ("image", "left")] + ([] if one_sigma else [("sigma", "right")]) + [
        ("clean", "left"), ("certified", "left"), ("radius", "right"), ("pA_lower", "right"), ("n0/n", "right"),
        ("ok", "left")]
    table = TextTable(columns, title=f"{title} (sigma {sigmas[0]:g})" if one_sigma else title)
    for i, cert in enumerate(certificates):
        n0 = sum(cert.counts_selection.values())
        n = sum(cert.counts_estimation.values())
        cells = [str(i), _short_image(cert.name or cert.image)] + ([] if one_sigma else [f"{cert.sigma:g}"])
        table.add_row(
            *cells,
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
        table = TextTable([("radius", "right"), ("certified accuracy", "right")],
                          title=f"Certified accuracy (sigma {sigma:g})")
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
    mode: str = typer.Option("auto", "--mode", help="auto (as logged), fixed, clean or sequential."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write Cohen-format results TSV here."),
    table: bool = typer.Option(True, "--table/--no-table", help="Print the per-image certificate table."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="Processes reading large logs (default: one per core)."
    ),
) -> None:
    """Recount certificates from query logs without paying for a single call."""
    from robust_api.replay import default_workers, replay

    certificates = replay(
        logs, rule=decision, alpha=alpha, n0=n0, n=n, sigma=sigma, mode=mode, workers=workers or default_workers()
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


API_HELP = "Provider: azure, google, aws, clarifai or local."


def _knobs(latency_ms: float, jitter_ms: float, rate: Optional[float], burst: int, p_throttle: float, p_5xx: float,
           p_timeout: float, p_malformed: float, p_reset: float, retry_after: Optional[float], timeout_hang_s: float,
           quota: Optional[int], api_key: Optional[str], seed: int):
    from robust_api.providers.emulator.base import EmulatorKnobs
    from robust_api.providers.wire import EMULATOR_KEY

    for name, p in (("--p-throttle", p_throttle), ("--p-5xx", p_5xx), ("--p-timeout", p_timeout),
                    ("--p-malformed", p_malformed), ("--p-reset", p_reset)):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")
    return EmulatorKnobs(
        latency_ms=latency_ms, latency_jitter_ms=jitter_ms, rate_per_s=rate, burst=burst, p_throttle=p_throttle,
        p_server_error=p_5xx, p_timeout=p_timeout, p_malformed=p_malformed, p_reset=p_reset,
        retry_after_s=retry_after, timeout_hang_s=timeout_hang_s, daily_quota=quota,
        api_key=EMULATOR_KEY if api_key is None else (api_key or None), seed=seed,
    )


def _provider_options(api: str, azure_api_version: Optional[str], min_confidence: Optional[float],
                      model: Optional[str] = None) -> dict:
    options: dict = {}
    if model is not None:
        if api != "local":
            raise ConfigError("--model applies to --api local only")
        options["model"] = model
    if azure_api_version is not None:
        if api != "azure":
            raise ConfigError("--azure-api-version applies to --api azure only")
        options["api_version"] = azure_api_version
    if min_confidence is not None:
        if api != "aws":
            raise ConfigError("--min-confidence applies to --api aws only")
        options["min_confidence"] = min_confidence
    return options


def _images(paths: Sequence[Path], skip: int = 1, max_images: Optional[int] = None) -> tuple[list, list]:
    """The images to certify and their true labels (an ImageFolder image's class, else None): files as given,
    folders expanded in data-set order, then every `skip`-th, at most `max_images` (robust_api.datasets)."""
    from robust_api.datasets import image_arguments
    from robust_api.images import load_image

    chosen = image_arguments(paths, skip=skip, max=max_images)
    names = [f"{f.class_name}/{f.path.name}" if f.class_name is not None else None for f in chosen]
    return [load_image(f.path, name=name) for f, name in zip(chosen, names)], [f.class_name for f in chosen]


@app.command("certify")
def certify_command(
    images: List[Path] = typer.Argument(..., metavar="IMAGES...", help="Image files or folders to certify; an "
                                        "ImageFolder folder (one subfolder per class) gives each image its true class."),
    skip: int = typer.Option(1, "--skip", min=1, help="Certify every K-th image of the list (0, K, 2K, ...), "
                             "like certify.py --skip."),
    max_images: Optional[int] = typer.Option(None, "--max", min=1, help="Certify at most this many (after --skip)."),
    api: str = typer.Option(..., "--api", help=API_HELP),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Provider URL override (e.g. an emulator)."),
    emulator: bool = typer.Option(False, "--emulator", help="Start the provider's emulator in-process (dry run, no credentials)."),
    sigma: float = typer.Option(0.25, "--sigma", help="Gaussian noise level (pixels in [0, 1])."),
    n0: int = typer.Option(20, "--n0", help="Selection samples (fixed mode)."),
    n: int = typer.Option(100, "--n", help="Estimation samples (fixed and clean modes)."),
    alpha: float = typer.Option(0.001, "--alpha", help="Failure probability of each certificate."),
    mode: str = typer.Option("fixed", "--mode", help="fixed (Cohen: N0 + N), clean (candidate = clean label, N), "
                             "or sequential (rounds, early stop; budget --max-queries)."),
    max_queries: Optional[int] = typer.Option(None, "--max-queries", help="Sequential budget per image (default n0 + n)."),
    target_radius: Optional[float] = typer.Option(None, "--target-radius", help="Sequential: stop once this radius is certified."),
    denoiser: Optional[str] = typer.Option(None, "--denoiser", help="Shipped denoiser name, ffdnet-color, tv (TV, weight 0.6*sigma), tv:W, diffusion:PATH (a pretrained DDPM), or checkpoint path."),
    log: Optional[Path] = typer.Option(None, "--log", help="JSONL query log: appended to, and read as a cache (rerun pays nothing logged)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write Cohen-format results TSV here."),
    decision: str = typer.Option("top1", "--decision", help=DECISION_HELP),
    concurrency: int = typer.Option(16, "--concurrency", min=1, help="Provider calls in flight at once."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Requests per second (default: the provider's documented default)."),
    max_attempts: int = typer.Option(6, "--max-attempts", min=1, help="Attempts per sample before giving up."),
    timeout_s: float = typer.Option(60.0, "--timeout", help="Per-call timeout in seconds."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (same seed = same noisy copies = cache hits)."),
    azure_api_version: Optional[str] = typer.Option(None, "--azure-api-version", help="Azure: 4.0 (default) or 3.2."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="AWS: MinConfidence (0-100) sent with each call."),
    emu_p_throttle: float = typer.Option(0.0, "--emu-p-throttle", help="With --emulator: probability of a throttling reply."),
    emu_p_5xx: float = typer.Option(0.0, "--emu-p-5xx", help="With --emulator: probability of a 5xx reply."),
    emu_p_timeout: float = typer.Option(0.0, "--emu-p-timeout", help="With --emulator: probability of a hang."),
    emu_p_malformed: float = typer.Option(0.0, "--emu-p-malformed", help="With --emulator: probability of a malformed body."),
    emu_p_reset: float = typer.Option(0.0, "--emu-p-reset", help="With --emulator: probability of a connection reset."),
    emu_latency_ms: float = typer.Option(0.0, "--emu-latency-ms", help="With --emulator: added latency."),
    table: bool = typer.Option(True, "--table/--no-table", help="Print the per-image certificate table."),
    backend: str = typer.Option("local", "--backend", help="local (this process) or ray (images sharded over Ray "
                                "workers; same certificates and log; needs the ray extra: pip install robust-api\\[ray])."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, "
                                              "else an embedded local instance)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray workers (default: one per cluster CPU, "
                                          "at most one per image)."),
    model: Optional[str] = typer.Option(None, "--model", help="With --api local: efficientnet-lite0 (default), a "
                                        "classifier checkpoint (.pt, robust-api classifier train) or "
                                        "'package.module:attribute'."),
    full_access: bool = typer.Option(False, "--full-access", help="With --api local: batched denoiser + model on "
                                     "the noisy copies, one count record per range of 1000 samples instead of a "
                                     "record per call (for N = 10^4-10^5)."),
) -> None:
    """Certify images against a provider: noise -> denoise -> query -> log -> certificate."""
    from robust_api.engine import CertifyParams
    from robust_api.run import RunConfig

    if emulator and endpoint:
        raise ConfigError("give --emulator or --endpoint, not both")
    params = CertifyParams(sigma=sigma, n0=n0, n=n, alpha=alpha, mode=mode, seed=seed,
                           max_queries=max_queries, target_radius=target_radius)
    knobs = None
    if emulator:
        knobs = _knobs(emu_latency_ms, 0.0, None, 1, emu_p_throttle, emu_p_5xx, emu_p_timeout, emu_p_malformed,
                       emu_p_reset, 1.0, min(5.0, timeout_s), None, None, seed)
    config = RunConfig(
        api=api, params=params, endpoint=endpoint, emulator=emulator, emulator_knobs=knobs, denoiser=denoiser,
        log=log, out=out, decision=decision, concurrency=concurrency, rate_per_s=rate, max_attempts=max_attempts,
        timeout_s=timeout_s, provider_options=_provider_options(api, azure_api_version, min_confidence, model),
        backend=backend, ray_address=ray_address, workers=workers, full_access=full_access,
    )
    if backend == "local" and (ray_address is not None or workers is not None):
        raise ConfigError("--ray-address and --workers apply to --backend ray")
    loaded, true_labels = _images(images, skip, max_images)
    result = _run_with_progress(loaded, config)
    if any(label is not None for label in true_labels):  # correct = certified class is the true class
        from robust_api.results import with_true_labels

        with_true_labels(result.certificates, true_labels)
        if out is not None:
            _write_tsv(out, result.certificates)
    out_console = console()
    if table:
        out_console.print(certificate_table(result.certificates))
    print_summary(result.certificates, out_console)
    out_console.print(_run_line(result))
    if out is not None:
        out_console.print(f"wrote {len(result.certificates)} result(s) to {out}")


def _run_line(result) -> str:
    s = result.stats
    retries = ", ".join(f"{k} {v}" for k, v in sorted(s.retries.items())) or "none"
    failures = ", ".join(f"{k} {v}" for k, v in sorted(s.failures.items())) or "none"
    return (f"billable calls {s.billable_calls} (~${result.cost_usd:.2f}), cache hits {s.cache_hits}, "
            f"requests {s.requests}, retries: {retries}, failures: {failures}")


def progress_text(done: int, total: int, calls: int, cache_hits: int, samples_per_s: float | None = None,
                  eta_s: float | None = None) -> str:
    """The one wording of progress, for every command: images finished, calls paid, answers found in the log;
    with a rate, samples per second (paid and cached) and the time left at the images' pace so far."""
    text = f"images done {done}/{total} · calls paid {calls} · cache hits {cache_hits}"
    if samples_per_s is not None:
        text += f" · {samples_per_s:,.0f} samples/s"
    if eta_s is not None:
        text += f" · ETA {_duration(eta_s)}"
    return text


def _run_with_progress(images: list, config):
    """run_certification with a live progress line on stderr when it is a terminal (nothing otherwise: piped
    stderr carries only warnings and errors). Images finish in any order (they are certified concurrently), so
    the line counts finished images and the run's calls so far; both only grow."""
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn

    from robust_api.run import run_certification

    err = console(stderr=True)
    total = len(images)
    if not err.is_terminal:
        return run_certification(images, config)

    started = time.monotonic()

    def info(done: int, stats) -> str:
        elapsed = time.monotonic() - started
        samples = stats.billable_calls + stats.cache_hits
        rate = samples / elapsed if elapsed > 1.0 and samples else None
        eta = elapsed / done * (total - done) if done else None
        retries = sum(stats.retries.values())
        text = progress_text(done, total, stats.billable_calls, stats.cache_hits, rate, eta)
        return text + (f" · retries {retries}" if retries else "")

    live: dict = {"done": 0, "stats": None}

    class LiveInfo(ProgressColumn):  # re-rendered at every refresh: samples/s moves between finished images
        def render(self, task) -> str:
            stats = live["stats"]
            return progress_text(0, total, 0, 0) if stats is None else info(live["done"], stats)

    with Progress(
        TextColumn("[bold]certify[/]"), BarColumn(), TimeElapsedColumn(), LiveInfo(), console=err, transient=True,
    ) as progress:
        task = progress.add_task("certify", total=total)

        def update(event, stats, done) -> None:
            live.update(done=done, stats=stats)
            progress.update(task, completed=done)

        return run_certification(images, config, progress=update)


@app.command("emulate")
def emulate_command(
    name: str = typer.Argument(..., metavar="NAME", help="azure, google, aws or clarifai."),
    port: int = typer.Option(0, "--port", help="Port on 127.0.0.1 (0 = any free port)."),
    latency_ms: float = typer.Option(0.0, "--latency-ms", help="Mean added latency per request."),
    jitter_ms: float = typer.Option(0.0, "--jitter-ms", help="Uniform +/- jitter around the latency."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Token-bucket rate limit (requests/s); excess gets the provider's throttling error."),
    burst: int = typer.Option(1, "--burst", min=1, help="Token-bucket size."),
    p_throttle: float = typer.Option(0.0, "--p-throttle", help="Probability of a throttling reply."),
    p_5xx: float = typer.Option(0.0, "--p-5xx", help="Probability of a 5xx reply."),
    p_timeout: float = typer.Option(0.0, "--p-timeout", help="Probability of a hang, then a dropped connection."),
    p_malformed: float = typer.Option(0.0, "--p-malformed", help="Probability of an unparsable body."),
    p_reset: float = typer.Option(0.0, "--p-reset", help="Probability of a connection reset."),
    retry_after: Optional[float] = typer.Option(1.0, "--retry-after", help="Retry-After seconds on throttling/503 (where the provider sends it)."),
    timeout_hang_s: float = typer.Option(30.0, "--hang-s", help="How long a timeout fault hangs."),
    quota: Optional[int] = typer.Option(None, "--quota", help="Requests before the provider's quota-exhausted error."),
    api_key: Optional[str] = typer.Option(None, "--key", help="Credential to accept (default: the emulator key 'emulator-key'; '' accepts any)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the fault draws."),
) -> None:
    """Serve a provider's wire-accurate emulator (backed by the offline ImageNet classifier) until Ctrl-C."""
    from robust_api.providers.emulator import serve

    knobs = _knobs(latency_ms, jitter_ms, rate, burst, p_throttle, p_5xx, p_timeout, p_malformed, p_reset,
                   retry_after, timeout_hang_s, quota, api_key, seed)

    def ready(url: str) -> None:
        console().print(f"{name} emulator listening on {url} (Ctrl-C to stop)")
        sys.stdout.flush()

    try:
        serve(name, port, knobs, on_ready=ready)
    except OSError as exc:
        raise ConfigError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None


@app.command("plan")
def plan_command(
    sigma: float = typer.Option(..., "--sigma", help="Noise level."),
    radius: Optional[float] = typer.Option(None, "--radius", help="Target L2 radius: minimum calls to reach it."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Estimation calls per image: maximum radius reachable."),
    alpha: float = typer.Option(0.001, "--alpha", help="Failure probability."),
    agreement: float = typer.Option(1.0, "--agreement", help="Fraction of noisy samples agreeing with the candidate (1 = all)."),
    api: Optional[str] = typer.Option(None, "--api", help="Price and rate of this provider (default: all four)."),
    images: int = typer.Option(1, "--images", min=1, help="Number of images (for cost and time)."),
    mode: str = typer.Option("fixed", "--mode", help="fixed adds N0 selection calls; clean/sequential do not."),
    n0: int = typer.Option(20, "--n0", help="Selection calls in fixed mode."),
) -> None:
    """Calls needed for a radius, or radius reachable with a budget, with cost (list prices) and time at the rate limit."""
    from rich.table import Table

    from robust_api import planner
    from robust_api.providers import CLOUD_PROVIDER_NAMES, provider_class

    if (radius is None) == (budget is None):
        raise ConfigError("give exactly one of --radius or --budget")
    try:
        if radius is not None:
            n = planner.min_calls_for_radius(radius, sigma, alpha, agreement)
            if n is None:
                raise ConfigError(f"radius {radius:g} is out of reach at sigma {sigma:g}, alpha {alpha:g}, agreement {agreement:g}")
            headline = f"minimum estimation calls for radius {radius:g}: {n}"
        else:
            n = budget
            best = planner.max_radius_for_budget(budget, sigma, alpha, agreement)
            headline = (f"maximum radius with {budget} estimation calls: "
                        + ("none (abstains: p_A lower bound < 0.5)" if best is None else f"{best:.3f}"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    calls = planner.calls_per_image(n, mode, n0)
    out = console()
    out.print(f"{headline}  (sigma {sigma:g}, alpha {alpha:g}, agreement {agreement:g})")
    out.print(f"calls per image in {mode} mode: {calls} (incl. 1 clean query{'' if mode != 'fixed' else f' and N0={n0}'})")
    table = Table(title=f"Cost for {images} image(s)", title_justify="left")
    for col in ("provider", "USD / 1000", "price as of", "default rate /s", "cost USD", "time at rate"):
        table.add_column(col, justify="right" if col != "provider" else "left")
    for name in [api] if api else CLOUD_PROVIDER_NAMES:
        try:
            cls = provider_class(name)
        except ConfigError:
            continue
        seconds = planner.seconds_at_rate(calls, cls.default_rate_per_s, images)
        table.add_row(name, f"{cls.pricing.usd_per_1000:.2f}", cls.pricing.as_of, f"{cls.default_rate_per_s:g}",
                      f"{planner.cost_usd(calls, cls.pricing.usd_per_1000, images):.2f}", _duration(seconds))
    out.print(table)
    out.print("Prices are list prices read on the date shown; check your contract. Rates are the documented defaults; "
              "paid tiers differ (--rate on certify).")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@app.command("demo")
def demo_command(
    out_dir: Path = typer.Option(Path("demo-output"), "--out-dir", help="Where logs, results and pictures go."),
    api: str = typer.Option("aws", "--api", help="Which provider's emulator to certify against."),
    sigma: float = typer.Option(0.25, "--sigma", help="Noise level."),
    alpha: float = typer.Option(0.001, "--alpha", help="Failure probability of each certificate."),
    mode: str = typer.Option("sequential", "--mode", help="sequential (stop early; default), fixed or clean."),
    n0: int = typer.Option(20, "--n0", help="Selection samples of the fixed protocol."),
    n: int = typer.Option(100, "--n", help="Estimation samples of the fixed protocol."),
    max_queries: Optional[int] = typer.Option(None, "--max-queries", help="Sequential budget per image (default n0 + n)."),
    target_radius: Optional[float] = typer.Option(None, "--target-radius", help="Sequential: stop once this radius is certified (default 1.2 x sigma)."),
    count: int = typer.Option(4, "--images", min=1, help="How many bundled photos."),
) -> None:
    """Certify bundled real photos against a local emulator, without and with the shipped denoiser; replay the
    logs offline and draw the certified accuracy and example pictures."""
    import time

    from robust_api.demo import (
        check_count,
        demo_params,
        describe_denoiser,
        pick_denoiser,
        run_demo,
        settings_tag,
        write_pictures,
    )

    check_count(count)
    out = console()
    params = demo_params(sigma=sigma, alpha=alpha, mode=mode, n0=n0, n=n, max_queries=max_queries,
                         target_radius=target_radius)
    denoiser = pick_denoiser(sigma)
    runs = (f"first without a denoiser, then with the shipped denoiser {describe_denoiser(denoiser)}" if denoiser
            else f"without a denoiser (none ships for sigma {sigma:g})")
    say = _sayer(out)
    photos = f"{count} real photo{'s' if count != 1 else ''}"
    say(f"{PROG} demo: {photos}, certified through the {_SDKS.get(api, api + ' SDK')} against a local emulator "
        f"(no credentials, no network): {runs}.")
    say(f"  {_demo_protocol(params)} the fixed protocol (1 clean + N0 {params.n0} + N {params.n}) pays "
        f"{_fixed_calls(params)} calls per photo.")
    out.print("")

    def on_run(label: str) -> None:
        out.print(f"certifying, {label}:")

    def progress(run: str, done: int, total: int, calls: int, hits: int) -> None:
        out.print("  " + progress_text(done, total, calls, hits))

    start = time.perf_counter()
    result = run_demo(out_dir, api=api, params=params, count=count, progress=progress, on_run=on_run)
    certify_s = time.perf_counter() - start
    out.print("")
    out.print(_demo_table(result))
    out.print("")
    out.print(_demo_accuracy(result))
    out.print("")
    paid = sum(run.billable_calls for run in result.runs)
    hits = sum(run.cache_hits for run in result.runs)
    say(f"certified in {certify_s:.0f} s: calls paid {paid}, cache hits {hits} (the fixed protocol would pay "
        f"{result.fixed_calls}).")
    certs = sum(len(run.certificates) for run in result.runs)
    if result.replay_ok:
        say(f"replay: the offline replay of the logs reproduced every certificate ({certs}/{certs}) and the "
            "results TSVs byte for byte.")
    else:
        bad = [run.label for run in result.runs if not (run.replay_matches and run.tsv_matches)]
        say(f"replay: MISMATCH between the online run and its offline replay ({', '.join(bad)}).")
    pictures = write_pictures(result, out_dir)
    out.print(f"pictures: {pictures['plot']}  (certified accuracy vs L2 radius)")
    out.print(f"          {pictures['examples']}  (clean / noisy / denoised)")
    logs = out_dir / f"{api}-{settings_tag(params)}-*.jsonl"
    say(f"logs and results: {out_dir}/ (a rerun pays nothing twice; to recount offline: `{PROG} replay {logs}`)")
    if not result.replay_ok:
        raise SystemExit(EXIT_INTERNAL_ERROR)


_SDKS = {"aws": "AWS Rekognition SDK (boto3)", "azure": "Azure AI Vision SDK", "google": "Google Cloud Vision SDK",
         "clarifai": "Clarifai gRPC SDK"}


def _sayer(out: "Console"):
    """print(text) as a paragraph wrapped to 79 columns (continuation lines indented), so it reads the same on a
    terminal and in a file."""
    import textwrap

    def say(text: str) -> None:
        indent = text[: len(text) - len(text.lstrip(" "))]
        out.print(textwrap.fill(text.strip(), width=79, initial_indent=indent, subsequent_indent="  ",
                                break_on_hyphens=False), markup=False)

    return say


def _demo_protocol(params) -> str:
    if params.mode == "sequential":
        return (f"Sigma {params.sigma:g}, alpha {params.alpha:g}. Sequential mode: a photo stops as soon as radius "
                f"{params.target_radius:g} is certified or out of reach, after at most 1 + {params.max_queries} "
                "calls;")
    extra = f"N0 {params.n0} + " if params.mode == "fixed" else ""
    return (f"Sigma {params.sigma:g}, alpha {params.alpha:g}. {params.mode.capitalize()} mode: 1 clean + {extra}N "
            f"{params.n} calls per photo;")


def _fixed_calls(params) -> int:
    from robust_api.planner import calls_per_image

    return calls_per_image(params.n, "fixed", params.n0)


def _demo_cell(cert: "Certificate") -> str:
    if cert.label is None:
        return "abstain"
    radius = f"{cert.radius_l2:.3f}"
    return radius if cert.correct else f"{radius} ({cert.label})"


def _demo_table(result) -> TextTable:
    """One row per photo: its clean label, then each run's certified radius and the calls it took."""
    columns = [("photo", "left"), ("clean label", "left")]
    for run in result.runs:
        columns += [("no denoiser" if run.denoiser is None else "denoiser", "right"), ("calls", "right")]
    table = TextTable(columns, title="Certified L2 radius of each photo's clean label (abstain = no certificate)")
    for i, (name, _) in enumerate(result.images):
        first = result.runs[0].certificates[i]
        cells = [name, first.clean_label or "-"]
        for run in result.runs:
            cert = run.certificates[i]
            cells += [_demo_cell(cert), str(cert.calls_paid + cert.cache_hits)]
        table.add_row(*cells)
    return table


def _demo_accuracy(result) -> TextTable:
    """Certified accuracy of each run at radii 0, 0.1, ... (up to the largest certified radius)."""
    from robust_api.results import certified_accuracy

    every = [c for run in result.runs for c in run.certificates]
    radii = [r for r in summary_radii(every) if r <= max(0.3, max((c.radius_l2 for c in every), default=0.0))]
    table = TextTable([("certified accuracy", "left")] + [(f"r={r:g}", "right") for r in radii])
    for run in result.runs:
        accuracy = certified_accuracy(run.certificates, radii)
        label = "no denoiser" if run.denoiser is None else "denoiser"
        table.add_row(label, *(f"{100 * accuracy[r]:.0f}%" for r in radii))
    return table


@app.command("report")
def report_command(
    results: List[Path] = typer.Argument(..., metavar="RESULTS.tsv...", help="Cohen-format results TSVs (ours or other tools')."),
    labels: Optional[str] = typer.Option(None, "--labels", help='Run names, comma-separated (default: file names).'),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write certified accuracy vs L2 radius (PNG) here."),
    table: Optional[Path] = typer.Option(None, "--table", help="Write the markdown table at fixed radii here."),
    radii: Optional[str] = typer.Option(None, "--radii", help="Radii for the table, comma-separated (default 0,0.1,0.25,0.5,0.75,1)."),
    title: Optional[str] = typer.Option(None, "--title", help="Plot title."),
    reference: Optional[List[str]] = typer.Option(
        None, "--reference",
        help="Published rows to put beside ours: salman2020-cifar10, or a TSV (label, then radii) (repeatable)."),
) -> None:
    """Certified accuracy vs radius: several runs overlaid in a plot, plus a table at fixed radii."""
    from robust_api.report import report

    radius_list = None
    if radii:
        try:
            radius_list = [float(r) for r in radii.split(",") if r.strip()]
        except ValueError:
            raise ConfigError(f"--radii must be comma-separated numbers, got {radii!r}") from None
    text = report(results, labels=labels, plot=plot, table=table, radii=radius_list, title=title,
                  references=reference or ())
    out = console()
    out.print(text, markup=False, highlight=False)
    for what, path in (("plot", plot), ("table", table)):
        if path is not None:
            out.print(f"wrote {what} to {path}")


DENOISER_HELP = "Train, evaluate and list denoisers."
_denoiser_mounted: str | None = None  # None, "placeholder" or "real"


def mount_denoiser_app(args: Sequence[str]) -> None:
    """Add the `denoiser` group: the real one (which imports torch) only when the command line asks for it,
    otherwise a placeholder that lists it in --help, so every other command starts without torch. A later
    call in the same process that asks for it replaces the placeholder (tests and notebooks call main often)."""
    global _denoiser_mounted
    positional = [a for a in args if not a.startswith("-")]
    wants = "real" if positional[:1] == ["denoiser"] else "placeholder"
    if _denoiser_mounted == "real" or _denoiser_mounted == wants:
        return
    app.registered_groups[:] = [group for group in app.registered_groups if group.name != "denoiser"]
    _denoiser_mounted = wants
    if wants == "real":
        from robust_api.denoisers.cli import denoiser_app
    else:
        denoiser_app = typer.Typer(help=DENOISER_HELP)

        @denoiser_app.callback(invoke_without_command=True)
        def _placeholder() -> None:
            """Train, evaluate and list denoisers."""

    app.add_typer(denoiser_app, name="denoiser", help=DENOISER_HELP)


from robust_api.classifier_cli import CLASSIFIER_HELP, classifier_app  # noqa: E402  (typer only; torch inside)

app.add_typer(classifier_app, name="classifier", help=CLASSIFIER_HELP)


# -- entry point ------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point: run the app; user errors -> one line + exit 2, crashes -> one line + exit 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        mount_denoiser_app(args)
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
