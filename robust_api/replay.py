"""Offline replay: recount certificates from logged responses without paying for a single query.

Records are grouped into one certification per (provider, settings, image, sigma, denoiser, seed):
  - the same image logged under a different sigma, denoiser or seed is a *separate* group (a separate
    certificate), never pooled, because samples drawn under different noise are different experiments;
  - a clean-image record belongs to (provider, settings, image) and serves every group of that image (the
    clean query sees no noise, seed or denoiser; the engine's cache key shares it the same way);
  - a sample index repeated within a group (same phase) keeps the first record in file order; the rest are
    counted in `extra["duplicates"]` and reported by a warning -- pooling them would count a sample twice;
  - a group whose responses come from several provider model versions is still certified (the smoothed
    classifier is then a mixture), with the versions in `extra["model_versions"]` and a warning.
Labels are re-decided from each raw response by the chosen rule (the logged `label` is informational).

Modes: "auto" (default) replays each group the way the log says it was certified (extra["mode"]; logs that
do not say, such as legacy imports, are "fixed"); "fixed" (Cohen: candidate from selection samples), "clean"
(candidate = clean-image label) and "sequential" (the logged plan of looks, re-run over the labels in index
order) force one. Validity: a fixed-mode certificate is valid when the number of samples was fixed in
advance; replaying with mode "fixed" a log whose sample count was chosen by looking at the data (a
sequential run) is not, which is why "auto" follows the log.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from robust_api.errors import ConfigError, LogError, ResponseFormatError
from robust_api.query_logs.legacy import normalize_response
from robust_api.query_logs.schema import QueryRecord, settings_key
from robust_api.query_logs.store import count_lines_before, read_log_range, split_log
from robust_api.results import ABSTAIN, Certificate

log = logging.getLogger(__name__)

Rule = Callable[..., str]


def resolve_rule(rule: str | Rule | None) -> Rule:
    """A decision rule from a spec ("top1", "vocab:PATH", "present:LABEL[:T]") or a callable; None -> top1."""
    from robust_api.decision import rule_from_spec

    if rule is None:
        return rule_from_spec("top1")
    if isinstance(rule, str):
        return rule_from_spec(rule)
    if not callable(rule):
        raise ConfigError(f"a decision rule must be a spec string or a callable, got {type(rule).__name__}")
    return rule


# -- grouping ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupKey:
    """What one certificate is about: one image under one noise level, denoiser, seed and provider setting."""

    provider: str
    settings: str  # canonical JSON (schema.settings_key)
    image: str
    sigma: float
    denoiser: str | None  # sha256 of the denoiser weights
    seed: int | None


@dataclass
class GroupSamples:
    """The decided samples of one group: index -> (label, latency_ms) per phase, first record of an index wins."""

    key: GroupKey
    denoiser: dict[str, Any] | None
    selection: dict[int, tuple[str, float | None]] = field(default_factory=dict)
    estimation: dict[int, tuple[str, float | None]] = field(default_factory=dict)
    duplicates: int = 0
    model_versions: set[str] = field(default_factory=set)
    clean_label: str | None = None
    source: str = ""
    logged_mode: str | None = None  # extra["mode"] of the first record that named one
    plan: dict[str, Any] | None = None  # extra["plan"] of the first sequential record


_UNKNOWN_VERSION = "unknown"


class _Collector:
    """Streams records into groups; keeps only labels, never the raw responses (10^6 responses fit in RAM).

    Collectors of consecutive pieces of the logs merge in file order (merge()), so parallel reading gives
    the same groups, order, duplicates and first-record-wins choices as one sequential pass. It logs
    nothing itself; finish() reports, so worker processes stay silent.
    """

    def __init__(self, rule: Rule | None, sigma: float | None) -> None:
        self.rule = rule
        self.sigma = sigma
        self.groups: dict[tuple, GroupSamples] = {}
        self.clean: dict[tuple[str, str, str], str] = {}
        self.clean_conflicts: dict[tuple[str, str, str], str] = {}  # key -> first disagreeing label
        self.sigmas_seen: set[float] = set()
        self.torn: list[tuple[str, int, int, str]] = []  # (path, line, bytes, reason) of skipped torn lines
        self._settings_cache: dict[str, str] = {}
        self._labels: dict[str, str] = {}  # one string object per label: less memory, smaller pickles

    def _settings_key(self, settings: dict) -> str:
        if not settings:
            return "{}"
        # repr is cheaper than canonical JSON and identical for identical dicts; cache the canonical form
        raw = repr(settings)
        cached = self._settings_cache.get(raw)
        if cached is None:
            cached = self._settings_cache[raw] = settings_key(settings)
        return cached

    def on_torn(self, path: str, line: int, nbytes: int, reason: str) -> None:
        self.torn.append((path, line, nbytes, reason))

    def add_records(self, records: Iterable[QueryRecord], source: str) -> None:
        rule = self.rule
        assert rule is not None
        groups = self.groups
        labels = self._labels
        want_sigma = self.sigma
        sigmas_seen = self.sigmas_seen
        for record in records:
            provider = record.provider
            skey = self._settings_key(record.settings)
            try:
                label = rule(record.response, provider)
            except (ResponseFormatError, ConfigError) as exc:
                raise LogError(
                    source, None, f"{record.phase} sample {record.index} of image {record.image[:16]}: {exc}"
                ) from None
            label = labels.setdefault(label, label)
            phase = record.phase
            if phase == "clean":
                self._add_clean((provider, skey, record.image), label)
                continue
            sigma = record.sigma
            if sigma not in sigmas_seen:
                sigmas_seen.add(sigma)
            if want_sigma is not None and not math.isclose(sigma, want_sigma, rel_tol=1e-9, abs_tol=1e-12):
                continue
            denoiser = record.denoiser
            gkey = (provider, skey, record.image, sigma, denoiser["sha256"] if denoiser else None, record.seed)
            group = groups.get(gkey)
            if group is None:
                group = groups[gkey] = GroupSamples(GroupKey(*gkey), denoiser, source=source)
            samples = group.selection if phase == "selection" else group.estimation
            index = record.index
            if index in samples:
                group.duplicates += 1
                continue
            samples[index] = (label, record.latency_ms)
            if group.logged_mode is None or (group.plan is None and phase == "estimation"):
                extra = record.extra
                if extra:
                    group.logged_mode = group.logged_mode or extra.get("mode")
                    if group.plan is None and extra.get("plan") is not None:
                        group.plan = extra["plan"]
            version = record.model_version or _UNKNOWN_VERSION
            if version not in group.model_versions:
                group.model_versions.add(version)

    def _add_clean(self, ckey: tuple[str, str, str], label: str) -> None:
        seen = self.clean.get(ckey)
        if seen is None:
            self.clean[ckey] = label
        elif seen != label and ckey not in self.clean_conflicts:
            self.clean_conflicts[ckey] = label

    def merge(self, later: "_Collector") -> None:
        """Fold in the collector of the next piece of the logs (records that come after all of ours)."""
        for gkey, theirs in later.groups.items():
            mine = self.groups.get(gkey)
            if mine is None:
                self.groups[gkey] = theirs
                continue
            for ours, new in ((mine.selection, theirs.selection), (mine.estimation, theirs.estimation)):
                for index, sample in new.items():
                    if index in ours:
                        mine.duplicates += 1
                    else:
                        ours[index] = sample
            mine.duplicates += theirs.duplicates
            mine.logged_mode = mine.logged_mode or theirs.logged_mode
            mine.plan = mine.plan if mine.plan is not None else theirs.plan
            mine.model_versions |= theirs.model_versions
        for ckey, label in later.clean.items():
            self._add_clean(ckey, label)
        for ckey, label in later.clean_conflicts.items():
            self.clean_conflicts.setdefault(ckey, label)
        self.sigmas_seen |= later.sigmas_seen
        self.torn.extend(later.torn)

    def finish(self) -> list[GroupSamples]:
        for path, line, nbytes, reason in self.torn:
            log.warning("%s:%d: skipping torn final line (%d bytes; an interrupted write): %s", path, line, nbytes, reason)
        for (_, _, image), other in self.clean_conflicts.items():
            first = self.clean[(_, _, image)]
            log.warning("image %s: clean responses disagree (%r, then %r); using the first", image[:16], first, other)
        if self.sigma is not None and not self.groups and self.sigmas_seen:
            shown = ", ".join(f"{s:g}" for s in sorted(self.sigmas_seen))
            raise ConfigError(f"no samples with sigma {self.sigma:g}; the logs hold sigma {shown}")
        out = list(self.groups.values())
        for group in out:
            k = group.key
            group.clean_label = self.clean.get((k.provider, k.settings, k.image))
            if group.duplicates:
                log.warning(
                    "image %s (sigma %g): %d duplicated sample index(es) ignored; the first record of each is used",
                    k.image[:16], k.sigma, group.duplicates,
                )
            if len(group.model_versions) > 1:
                log.warning(
                    "image %s (sigma %g): responses from several model versions mixed: %s",
                    k.image[:16], k.sigma, ", ".join(sorted(group.model_versions)),
                )
        return out


# -- parallel reading -------------------------------------------------------------------------------

# Pieces of about this size are read by worker processes; smaller logs are read in-process.
PARALLEL_PIECE_BYTES = 32 << 20

_worker_rule: Rule | None = None
_worker_sigma: float | None = None


def _worker_init(rule: Rule, sigma: float | None) -> None:
    global _worker_rule, _worker_sigma
    _worker_rule, _worker_sigma = rule, sigma


def _worker_scan(task: tuple[str, int, int | None]) -> tuple[str, Any]:
    """Collect one byte range of one log in a worker; a LogError comes back as data (it does not pickle)."""
    path, start, end = task
    collector = _Collector(_worker_rule, _worker_sigma)
    try:
        collector.add_records(read_log_range(path, start, end, on_torn=collector.on_torn), path)
    except LogError as exc:
        return "log_error", (exc.path, exc.line, exc.reason)
    collector.rule = None
    collector._settings_cache.clear()
    collector._labels.clear()
    return "ok", collector


def _fork_context():
    import multiprocessing
    import threading

    # fork shares the rule (any callable) with the workers without pickling it. Forking a process that runs
    # other threads can deadlock the child on a lock held at fork time, so then read in-process instead.
    if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        log.debug("reading query logs in-process (fork unavailable or other threads running)")
        return None
    return multiprocessing.get_context("fork")


def default_workers() -> int:
    """Worker processes the CLI uses for large logs: one per core, at most 8."""
    import os

    return max(1, min(8, os.cpu_count() or 1))


def _collect(paths: Sequence[str | Path], rule: Rule, sigma: float | None, workers: int) -> _Collector:
    """Read and decide every record; large logs are cut into pieces read by `workers` processes."""
    collector = _Collector(rule, sigma)
    ctx = _fork_context() if workers > 1 else None
    tasks: list[tuple[str, int, int | None]] = []
    for path in paths:
        p = Path(path)
        size = p.stat().st_size if p.is_file() else 0
        if ctx is None or size < 2 * PARALLEL_PIECE_BYTES:
            tasks.append((str(path), 0, None))
        else:
            pieces = max(workers, size // PARALLEL_PIECE_BYTES)
            tasks.extend((str(path), a, b) for a, b in split_log(p, int(pieces)))
    if ctx is None or len(tasks) == len(paths):
        for path, _, _ in tasks:
            collector.add_records(read_log_range(path, on_torn=collector.on_torn), path)
        return collector

    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(rule, sigma))
    try:
        futures = [pool.submit(_worker_scan, task) for task in tasks]
        for (path, start, _), future in zip(tasks, futures):  # merged in file order: first record wins
            status, payload = future.result()
            if status == "log_error":
                err_path, line, reason = payload
                if line is not None and start:  # line numbers are relative to the piece
                    line += count_lines_before(path, start)
                raise LogError(err_path, line, reason)
            if start:
                payload.torn = [(p, ln + count_lines_before(p, start), nb, r) for p, ln, nb, r in payload.torn]
            collector.merge(payload)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return collector


# -- certification ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayOptions:
    alpha: float = 0.001
    n0: int | None = None  # None: every logged selection sample
    n: int | None = None  # None: every logged estimation sample
    mode: str = "fixed"
    rule_name: str = "top1"


def _first(samples: Mapping[int, tuple[str, float | None]], limit: int | None, what: str, group: GroupSamples):
    indices = sorted(samples)
    if limit is not None:
        if len(indices) < limit:
            k = group.key
            raise ConfigError(
                f"image {k.image[:16]} (sigma {k.sigma:g}): only {len(indices)} {what} samples logged, "
                f"{limit} requested"
            )
        indices = indices[:limit]
    return [samples[i] for i in indices]


def _count(samples: Sequence[tuple[str, float | None]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label, _ in samples:
        counts[label] = counts.get(label, 0) + 1
    return counts


def _certify_fixed(group: GroupSamples, opts: ReplayOptions) -> Certificate:
    """Cohen's CERTIFY: candidate from the selection samples, bound from the independent estimation samples."""
    from robust_api import smoothing

    selection = _first(group.selection, opts.n0, "selection", group)
    estimation = _first(group.estimation, opts.n, "estimation", group)
    if not selection or not estimation:
        log.warning(
            "image %s (sigma %g): %d selection / %d estimation samples; abstaining",
            group.key.image[:16], group.key.sigma, len(selection), len(estimation),
        )
    counts_selection, counts_estimation = _count(selection), _count(estimation)
    n_est = len(estimation)
    p_lower = None
    if counts_selection and n_est:
        candidate = smoothing.top_label(counts_selection)
        certified, radius, p_lower = _certify_count(counts_estimation.get(candidate, 0), n_est, group.key.sigma, opts.alpha)
        label: str | int = candidate if certified else ABSTAIN
    else:
        label, radius = smoothing.certify(counts_selection, counts_estimation, group.key.sigma, opts.alpha)
    return _certificate(group, opts, label, radius, p_lower, counts_selection, counts_estimation, selection + estimation)


@functools.lru_cache(maxsize=1 << 16)
def _certify_count(k: int, n: int, sigma: float, alpha: float) -> tuple[bool, float, float]:
    """smoothing.certify for a candidate with k of n estimation votes -> (certified, radius, p_lower).

    CERTIFY depends on the counts only through (k, n), so images with equal (k, n) share one beta quantile
    computation (10,000 images at n = 100 need at most 101).
    """
    from robust_api import smoothing

    votes = {"candidate": k, "rest": n - k} if n > k else {"candidate": k}
    label, radius = smoothing.certify({"candidate": 1}, votes, sigma, alpha)
    return label != ABSTAIN, float(radius), smoothing.lower_confidence_bound(k, n, alpha)


# mode name -> certifier(group, options) -> Certificate. Add "clean" / "sequential" here.
def _certify_clean(group: GroupSamples, opts: ReplayOptions) -> Certificate:
    """Clean-image selection: the candidate is the clean image's label, chosen independently of the noise."""

    estimation = _first(group.estimation, opts.n, "estimation", group)
    counts_estimation = _count(estimation)
    if group.clean_label is None or not estimation:
        log.warning("image %s (sigma %g): no clean label or no estimation samples; abstaining",
                    group.key.image[:16], group.key.sigma)
        return _certificate(group, opts, ABSTAIN, 0.0, None, {}, counts_estimation, estimation)
    candidate = group.clean_label
    certified, radius, p_lower = _certify_count(counts_estimation.get(candidate, 0), len(estimation), group.key.sigma, opts.alpha)
    label: str | int = candidate if certified else ABSTAIN
    # same arithmetic as smoothing.certify_with_candidate (memoised per (k, n))
    return _certificate(group, opts, label, radius, p_lower, {}, counts_estimation, estimation)


def _certify_sequential(group: GroupSamples, opts: ReplayOptions) -> Certificate:
    """Re-run the logged plan of looks over the estimation labels in index order: the online stop and
    certificate exactly (alpha is the plan's, as spent online)."""
    from robust_api.sequential import SequentialPlan, certify_sequential

    k = group.key
    if group.plan is None:
        raise ConfigError(
            f"image {k.image[:16]} (sigma {k.sigma:g}): no sequential plan in the log; "
            "replay it with --mode fixed or clean, or log it with --mode sequential"
        )
    try:
        plan = SequentialPlan.from_dict(group.plan)
    except (ValueError, KeyError, TypeError) as exc:
        raise LogError(group.source, None, f"image {k.image[:16]}: unreadable sequential plan: {exc}") from None
    indices = sorted(group.estimation)
    labels = [group.estimation[i][0] for i in indices]
    if group.clean_label is None:
        log.warning("image %s (sigma %g): no clean label; abstaining", k.image[:16], k.sigma)
        outcome = None
    else:
        outcome = certify_sequential(plan, group.clean_label, labels)
        if not outcome.complete:
            log.warning("image %s (sigma %g): the log ends before the plan decided (%d samples); abstaining",
                        k.image[:16], k.sigma, outcome.n_used)
    used = [group.estimation[i] for i in indices[: outcome.n_used]] if outcome else []
    label, radius = outcome.as_tuple() if outcome else (ABSTAIN, 0.0)
    p_lower = outcome.decision.p_lower if outcome else None
    seq_opts = ReplayOptions(plan.alpha, opts.n0, opts.n, "sequential", opts.rule_name)
    return _certificate(group, seq_opts, label, radius, p_lower, {}, outcome.counts if outcome else {}, used)


def _certify_auto(group: GroupSamples, opts: ReplayOptions) -> Certificate:
    """The mode the log says the group was certified with (fixed for logs that do not say, e.g. legacy)."""
    mode = group.logged_mode if group.logged_mode in ("fixed", "clean", "sequential") else "fixed"
    return _CERTIFIERS[mode](group, ReplayOptions(opts.alpha, opts.n0, opts.n, mode, opts.rule_name))


_CERTIFIERS: dict[str, Callable[[GroupSamples, ReplayOptions], Certificate]] = {
    "fixed": _certify_fixed,
    "clean": _certify_clean,
    "sequential": _certify_sequential,
    "auto": _certify_auto,
}


def _certificate(group, opts, label, radius, p_lower, counts_selection, counts_estimation, used) -> Certificate:
    k = group.key
    extra: dict[str, Any] = {
        "mode": opts.mode,
        "alpha": opts.alpha,
        "provider": k.provider,
        "decision": opts.rule_name,
        "sigma": k.sigma,
        "seed": k.seed,
        "denoiser": group.denoiser,
        "settings": k.settings,
        "source": "replay",
    }
    if group.duplicates:
        extra["duplicates"] = group.duplicates
    if len(group.model_versions) > 1:
        extra["model_versions"] = sorted(group.model_versions)
    return Certificate(
        image=k.image,
        name=k.image,
        label=None if label == ABSTAIN else label,
        radius_l2=float(radius),
        sigma=k.sigma,
        alpha=opts.alpha,
        mode=opts.mode,
        clean_label=group.clean_label,
        p_lower=p_lower,
        counts_selection=counts_selection,
        counts_estimation=counts_estimation,
        calls_paid=0,
        cache_hits=len(used),
        # provider time of the samples used (from the log), so the TSV "time" column is deterministic
        seconds=sum(latency for _, latency in used if latency is not None) / 1000.0,
        extra=extra,
    )


def _check_options(alpha: float, n0: int | None, n: int | None, mode: str, sigma: float | None) -> None:
    if mode not in _CERTIFIERS:
        raise ConfigError(f"unknown replay mode {mode!r}; choose one of {', '.join(_CERTIFIERS)}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
    if n0 is not None and n0 < 1:
        raise ConfigError(f"n0 must be >= 1, got {n0}")
    if n is not None and n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"sigma must be > 0, got {sigma}")


def replay_records(
    records: Iterable[QueryRecord],
    *,
    rule: str | Rule | None = None,
    alpha: float = 0.001,
    n0: int | None = None,
    n: int | None = None,
    sigma: float | None = None,
    mode: str = "auto",
    source: str = "<records>",
) -> list[Certificate]:
    """Certificates from query-log records, one per group (see the module docstring), in first-seen order.

    n0 / n use the first n0 selection / n estimation samples by index (ConfigError if fewer are logged);
    None uses all. sigma (optional) keeps only the groups logged at that sigma. Raises ConfigError for bad
    options, LogError for a response the rule cannot read.
    """
    _check_options(alpha, n0, n, mode, sigma)
    rule = resolve_rule(rule)
    collector = _Collector(rule, sigma)
    collector.add_records(records, source)
    return _certify_groups(collector.finish(), ReplayOptions(alpha, n0, n, mode, getattr(rule, "name", "custom")))


def replay(
    paths: Iterable[str | Path] | str | Path,
    *,
    rule: str | Rule | None = None,
    alpha: float = 0.001,
    n0: int | None = None,
    n: int | None = None,
    sigma: float | None = None,
    mode: str = "auto",
    workers: int = 1,
) -> list[Certificate]:
    """Certificates from JSONL query logs (see replay_records); the logs are read as a stream.

    workers > 1 reads logs larger than 64 MB in that many forked processes (same result as one pass; the
    CLI uses one per core). Raises LogError for unreadable or corrupt logs (naming file and line),
    ConfigError for bad options.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ConfigError("no query logs given")
    _check_options(alpha, n0, n, mode, sigma)
    rule = resolve_rule(rule)
    collector = _collect(paths, rule, sigma, max(1, int(workers)))
    return _certify_groups(collector.finish(), ReplayOptions(alpha, n0, n, mode, getattr(rule, "name", "custom")))


def _certify_groups(groups: list[GroupSamples], opts: ReplayOptions) -> list[Certificate]:
    certifier = _CERTIFIERS[opts.mode]
    out = []
    for group in groups:
        try:
            out.append(certifier(group, opts))
        except ValueError as exc:  # e.g. sigma 0 logged for noisy samples
            raise ConfigError(f"image {group.key.image[:16]} (sigma {group.key.sigma:g}): {exc}") from None
    return out


# -- the reference's offline facade -------------------------------------------------------------------


def _labels_of(responses: Iterable[Any], rule: Rule, provider: str | None) -> list[str]:
    labels = []
    for position, response in enumerate(responses):
        if isinstance(response, Mapping) and "schema" in response and "response" in response:
            response = QueryRecord.from_dict(response, "<records>", position + 1)  # a JSONL record as a dict
        if isinstance(response, QueryRecord):
            labels.append(rule(response.response, provider or response.provider))
            continue
        if provider is not None and provider != "local":
            response = normalize_response(response, provider, f"<response {position}>")
        elif not isinstance(response, Mapping):
            raise ConfigError("reference-shaped responses (lists/mappings) need the provider name")
        try:
            labels.append(rule(response, provider))
        except ResponseFormatError as exc:
            raise ResponseFormatError(f"response {position}: {exc}") from None
    return labels


def count_responses(responses: Iterable[Any], rule: str | Rule | None = None, provider: str | None = None) -> dict[str, int]:
    """Label counts of raw responses (reference shapes, native shapes or QueryRecords) under `rule`."""
    return _count([(label, None) for label in _labels_of(responses, resolve_rule(rule), provider)])


def predict_responses(
    responses: Sequence[Any],
    rule: str | Rule | None = None,
    provider: str | None = None,
    alpha: float | None = None,
) -> tuple[str | int, dict[str, int]]:
    """The reference's offline predict(logs) -> (majority_class, distribution).

    Without alpha the majority class is smoothing.top_label (ties -> smallest label); with alpha it is
    smoothing.predict (ABSTAIN = -1 unless a binomial test of the top two counts rejects at level alpha).
    Raises ConfigError for an empty list.
    """
    from robust_api import smoothing

    counts = count_responses(responses, rule, provider)
    if not counts:
        raise ConfigError("predict needs at least one response")
    label = smoothing.top_label(counts) if alpha is None else smoothing.predict(counts, alpha)
    return label, counts


def certify_responses(
    responses: Sequence[Any],
    noise_sd: float,
    N0: int,
    N: int,
    alpha: float,
    rule: str | Rule | None = None,
    provider: str | None = None,
) -> tuple[str | int, float]:
    """The reference's offline certify(logs, noise_sd, N0, N, alpha) -> (class, radius); abstain is (-1, 0.0).

    `responses` are in the reference's order: N0 selection responses, then N estimation responses (any
    beyond N0 + N are ignored; the reference counted them but still divided by N). Responses may be in the
    reference's reduced shapes (converted as legacy import does), native shapes, or QueryRecords.
    With top1 the result equals the reference whenever each response's top score is unique and listed
    first and the selection majority is unique (labels are case-folded). ConfigError if too few responses.
    """
    from robust_api import smoothing

    if N0 < 1 or N < 1:
        raise ConfigError(f"N0 and N must be >= 1, got N0={N0}, N={N}")
    responses = list(responses)
    if len(responses) < N0 + N:
        raise ConfigError(f"certify needs N0 + N = {N0 + N} responses, got {len(responses)}")
    labels = _labels_of(responses[: N0 + N], resolve_rule(rule), provider)
    counts_selection = _count([(label, None) for label in labels[:N0]])
    counts_estimation = _count([(label, None) for label in labels[N0:]])
    try:
        return smoothing.certify(counts_selection, counts_estimation, noise_sd, alpha)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
