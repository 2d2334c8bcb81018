"""Certificates recounted from count records (full access, robust_api.query_logs.counts), no model run.

Count records are grouped like samples: one certification per (provider, settings, image, sigma, denoiser,
seed, decision rule), the clean range shared by every group of (provider, settings, image, decision rule). Each phase's ranges are taken in
index order from 0 while they are contiguous (a gap ends them, with a warning), up to the largest planned
count they fill (replay.planned: an image whose run was killed before its plan was complete is not certified); the
labels are the logged counts (decided at run time by the rule named in the records, as there are no responses
to re-decide). Each group goes through its mode's `certify` (modes), as online, and the certificate's time is
the logged seconds of the ranges it used, so the TSV equals the online one. Groups come in input order: runs
in the order they first appear, then the logged position, then first appearance.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from robust_api.errors import ConfigError, LogError
from robust_api.modes import MODES, Samples, get_mode
from robust_api.query_logs.counts import CountRecord, labels_of, read_count_records
from robust_api.replay.planned import planned_count, usable_count, warn_incomplete
from robust_api.results import Certificate, certificate_from_verdict

log = logging.getLogger("robust_api.replay")

__all__ = ["counted_certificates", "certify_counted_records"]



def counted_certificates(paths: Iterable[str | Path], *, alpha: float = 0.001, sigma: float | None = None,
                         mode: str = "auto") -> list[Certificate]:
    """Certificates from the count records of the logs (none when they hold none). LogError for corrupt count
    lines, ConfigError for a group its mode cannot certify."""
    records = [r for path in paths if Path(path).exists() for r in read_count_records(path)]
    return certify_counted_records(records, alpha=alpha, sigma=sigma, mode=mode)


def certify_counted_records(records: Iterable[CountRecord], *, alpha: float = 0.001, sigma: float | None = None,
                            mode: str = "auto") -> list[Certificate]:
    clean: dict[tuple, CountRecord] = {}
    groups: dict[tuple, dict] = {}
    runs: dict[str, int] = {}
    for order, record in enumerate(records):
        runs.setdefault(record.run, len(runs))
        key = record.key()
        if record.phase == "clean":
            clean.setdefault((key.provider, key.settings, key.image, key.decision), record)
            continue
        if sigma is not None and abs(record.sigma - sigma) > 1e-12:
            continue
        gk = (key.provider, key.settings, key.image, key.sigma, key.denoiser, key.seed, key.decision)
        group = groups.get(gk)
        if group is None:
            group = groups[gk] = {"first": order, "run": runs[record.run], "position": record.extra.get("position"),
                                  "extra": record.extra, "denoiser": record.denoiser, "selection": {}, "estimation": {},
                                  "planned": {"selection": set(), "estimation": set()}}
        group[record.phase].setdefault(record.start, record)
        planned = planned_count(record.extra, record.phase)
        if planned is not None:
            group["planned"][record.phase].add(planned)

    def order(item) -> tuple:
        _, g = item
        position = g["position"] if isinstance(g["position"], int) else float("inf")
        return (g["run"], position, g["first"])

    out = []
    for gk, group in sorted(groups.items(), key=order):
        certificate = _certify(gk, group, clean.get((*gk[:3], gk[6])), alpha, mode)
        if certificate is not None:
            out.append(certificate)
    return out


def _planned_ranges(ranges: list[CountRecord], planned: set[int], what: str, image: str, sig: float) -> list[CountRecord] | None:
    """The contiguous ranges up to the largest planned count they fill (replay.planned); None (warned) when the
    run stopped before any plan was complete; all of them when the records name no plan."""
    available = ranges[-1].stop if ranges else 0
    usable = usable_count(planned, available, {r.stop for r in ranges} | {0})
    if usable is None:
        warn_incomplete(image, sig, available, planned, what)
        return None
    return [r for r in ranges if r.stop <= usable]


def _contiguous(ranges: dict[int, CountRecord], what: str, image: str) -> list[CountRecord]:
    out, at = [], 0
    while at in ranges:
        out.append(ranges[at])
        at = ranges[at].stop
    if len(out) < len(ranges):
        log.warning("image %s: %s ranges stop at sample %d (a gap, e.g. a run killed mid-image); the rest is unused",
                    image[:16], what, at)
    return out


def _certify(gk: tuple, group: dict, clean: CountRecord | None, alpha: float, mode_name: str) -> Certificate | None:
    provider, settings, image, sig, _, seed, decision = gk
    name = mode_name
    if name == "auto":
        name = group["extra"].get("mode") if group["extra"].get("mode") in MODES else "fixed"
    mode = get_mode(name)
    selection = _contiguous(group["selection"], "selection", image) if mode.uses_selection else []
    estimation = _contiguous(group["estimation"], "estimation", image)
    if mode.fixed_n:
        if mode.uses_selection:
            selection = _planned_ranges(selection, group["planned"]["selection"], "selection", image, sig)
        estimation = _planned_ranges(estimation, group["planned"]["estimation"], "estimation", image, sig)
        if selection is None or estimation is None:
            return None
    clean_label = labels_of([clean])[0] if clean is not None else None
    samples = Samples(clean_label, labels_of(selection), labels_of(estimation))
    try:
        verdict = mode.certify(mode.options_from_log(alpha, group["extra"].get("plan")), sig, samples)
    except LogError as exc:
        raise LogError("<count records>", None, f"image {image[:16]}: {exc.reason}") from None
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"image {image[:16]} (sigma {sig:g}): {exc}") from None
    if not verdict.complete:
        log.warning("image %s (sigma %g): the counts end before the plan decided; abstaining", image[:16], sig)
    used = selection + [r for r in estimation if r.stop <= verdict.n_estimation_used]
    extra = {"mode": name, "alpha": verdict.alpha, "provider": provider, "sigma": sig, "seed": seed,
             "denoiser": group["denoiser"], "decision": decision, "source": "replay", "full_access": True}
    return certificate_from_verdict(
        verdict, image=image, name=image, sigma=sig, mode=name, clean_label=clean_label, calls_paid=0,
        cache_hits=sum(r.n for r in used), seconds=round(sum(r.seconds for r in used), 4), extra=extra,
    )
