"""Certificates recounted from grouped samples: each group through its mode's `certify` (robust_api.modes), the
same function the engine calls online on the same labels, and `results.certificate_from_verdict`."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping

from robust_api.decision import resolve_rule
from robust_api.errors import ConfigError, LogError
from robust_api.modes import MODES, Samples, get_mode
from robust_api.query_logs.schema import QueryRecord
from robust_api.replay.grouping import Collector, GroupSamples, Rule
from robust_api.replay.planned import usable_count, warn_incomplete
from robust_api.replay.reading import collect
from robust_api.results import Certificate, certificate_from_verdict

log = logging.getLogger("robust_api.replay")

REPLAY_MODES = ("auto", *MODES)


@dataclass(frozen=True)
class ReplayOptions:
    alpha: float = 0.001
    n0: int | None = None  # None: every logged selection sample
    n: int | None = None  # None: every logged estimation sample
    mode: str = "auto"
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


def _mode_name(group: GroupSamples, opts: ReplayOptions) -> str:
    if opts.mode != "auto":
        return opts.mode
    return group.logged_mode if group.logged_mode in MODES else "fixed"


def planned_options(group: GroupSamples, opts: ReplayOptions) -> ReplayOptions | None:
    """`opts` with n0 / n set to the planned counts the log fills (replay.planned), or None when the group's
    run stopped before any of its plans was complete (warned). Options the user gave, logs without planned
    counts and sequential groups are left as they are."""
    mode = get_mode(_mode_name(group, opts))
    if not mode.fixed_n:
        return opts
    sizes = {}
    for phase, field_name, samples in (("selection", "n0", group.selection), ("estimation", "n", group.estimation)):
        planned = group.planned.get(phase)
        if getattr(opts, field_name) is not None or not planned or (phase == "selection" and not mode.uses_selection):
            continue
        usable = usable_count(planned, len(samples))
        if usable is None:
            warn_incomplete(group.key.image, group.key.sigma, len(samples), planned, phase)
            return None
        sizes[field_name] = usable
    return replace(opts, **sizes) if sizes else opts


def certify_group(group: GroupSamples, opts: ReplayOptions) -> Certificate:
    """One group's certificate in `opts.mode` ("auto": the mode the log says, fixed for logs that do not say).

    Fixed-N modes use the first n0 / n samples by index (ConfigError if fewer are logged; None: all); a
    sequential group re-runs its logged plan over every estimation sample in index order, at the plan's alpha.
    """
    k = group.key
    name = _mode_name(group, opts)
    mode = get_mode(name)
    selection = _first(group.selection, opts.n0, "selection", group) if mode.uses_selection else []
    estimation = _first(group.estimation, opts.n if mode.fixed_n else None, "estimation", group)
    samples = Samples(group.clean_label, [label for label, _ in selection], [label for label, _ in estimation])
    try:
        verdict = mode.certify(mode.options_from_log(opts.alpha, group.plan), k.sigma, samples)
    except LogError as exc:
        raise LogError(group.source, None, f"image {k.image[:16]}: {exc.reason}") from None
    except (ConfigError, ValueError) as exc:  # e.g. no plan logged, sigma 0 logged for noisy samples
        raise ConfigError(f"image {k.image[:16]} (sigma {k.sigma:g}): {exc}") from None
    if not verdict.complete:
        log.warning("image %s (sigma %g): the log ends before the plan decided (%d samples); abstaining",
                    k.image[:16], k.sigma, verdict.n_estimation_used)
    elif verdict.missing:
        log.warning("image %s (sigma %g): %s; abstaining", k.image[:16], k.sigma, verdict.missing)
    used = selection + estimation[: verdict.n_estimation_used]
    extra = {
        "mode": name, "alpha": verdict.alpha, "provider": k.provider, "decision": opts.rule_name, "sigma": k.sigma,
        "seed": k.seed, "denoiser": group.denoiser, "settings": k.settings, "source": "replay",
    }
    if group.duplicates:
        extra["duplicates"] = group.duplicates
    if len(group.model_versions) > 1:
        extra["model_versions"] = sorted(group.model_versions)
    return certificate_from_verdict(
        verdict, image=k.image, name=k.image, sigma=k.sigma, mode=name, clean_label=group.clean_label,
        calls_paid=0, cache_hits=len(used),
        # provider time of the samples used (from the log), so the TSV "time" column is deterministic
        seconds=sum(latency for _, latency in used if latency is not None) / 1000.0, extra=extra,
    )


def _check_options(alpha: float, n0: int | None, n: int | None, mode: str, sigma: float | None) -> None:
    if mode not in REPLAY_MODES:
        raise ConfigError(f"unknown replay mode {mode!r}; choose one of {', '.join(REPLAY_MODES)}")
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
    """Certificates from query-log records, one per group (robust_api.replay.grouping), in input order.

    n0 / n use the first n0 selection / n estimation samples by index (ConfigError if fewer are logged);
    None uses the largest sample count a run planned that the log fills (replay.planned: a group whose run
    was killed before it had its planned samples is left out, with a warning), or all samples when the log
    names no plan. sigma (optional) keeps only the groups logged at that sigma. Raises ConfigError for bad
    options, LogError for a response the rule cannot read.
    """
    _check_options(alpha, n0, n, mode, sigma)
    rule = resolve_rule(rule)
    collector = Collector(rule, sigma)
    collector.add_records(records, source)
    return _recount(collector, rule, alpha, n0, n, mode)


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
    """Certificates from JSONL query logs (see replay_records); the logs are read as a stream. Count records
    of full-access runs are certified too (replay.counts), after the per-sample groups.

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
    from robust_api.replay.counts import counted_certificates

    # Full-access count records (if any) follow the per-sample certificates; n0 / n apply to samples only.
    return (_recount(collect(paths, rule, sigma, max(1, int(workers))), rule, alpha, n0, n, mode)
            + counted_certificates(paths, alpha=alpha, sigma=sigma, mode=mode))


def _recount(collector: Collector, rule: Rule, alpha: float, n0: int | None, n: int | None, mode: str) -> list[Certificate]:
    opts = ReplayOptions(alpha, n0, n, mode, getattr(rule, "name", "custom"))
    out = []
    for group in collector.finish():
        planned = planned_options(group, opts)
        if planned is not None:
            out.append(certify_group(group, planned))
    return out
