"""Grouping query-log records into certifications (one group per provider, settings, image, sigma, denoiser,
seed), streaming, keeping only decided labels; pieces of a log collected apart merge in file order.

Groups come out in input order: by the run that first logged them (runs in order of first appearance), then by
the input position the engine logged with each image (`extra["position"]`), then in order of first appearance
(logs without positions, such as legacy imports). An image whose first run logged only its clean query counts
as that run's, when the clean record was logged under the group's sigma, denoiser and seed.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from robust_api.errors import ConfigError, LogError, ResponseFormatError
from robust_api.query_logs.schema import QueryRecord, settings_key
from robust_api.replay.planned import planned_count

log = logging.getLogger("robust_api.replay")

Rule = Callable[..., str]


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
    origin: tuple[str, float] = ("", math.inf)  # (run, input position) of the group's first record
    planned: dict[str, set[int]] = field(default_factory=dict)  # phase -> the n0 / n the records' runs planned


_UNKNOWN_VERSION = "unknown"


class Collector:
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
        self.runs: dict[str, None] = {}  # run ids in order of first appearance
        # (provider, settings, image) -> (run, position, sigma, denoiser sha256, seed) of the first clean record
        self.clean_origin: dict[tuple[str, str, str], tuple[str, float, float, str | None, int | None]] = {}

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
            if record.run not in self.runs:
                self.runs[record.run] = None
            if phase == "clean":
                ckey = (provider, skey, record.image)
                if ckey not in self.clean_origin:
                    den = record.denoiser
                    self.clean_origin[ckey] = (record.run, _position(record), record.sigma,
                                               den["sha256"] if den else None, record.seed)
                self._add_clean(ckey, label)
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
                group = groups[gkey] = GroupSamples(GroupKey(*gkey), denoiser, source=source,
                                                    origin=(record.run, _position(record)))
            samples = group.selection if phase == "selection" else group.estimation
            index = record.index
            if index in samples:
                group.duplicates += 1
                continue
            samples[index] = (label, record.latency_ms)
            extra = record.extra
            planned = planned_count(extra, phase)
            if planned is not None:
                group.planned.setdefault(phase, set()).add(planned)
            if group.logged_mode is None or (group.plan is None and phase == "estimation"):
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

    def merge(self, later: "Collector") -> None:
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
            for phase, counts in theirs.planned.items():
                mine.planned.setdefault(phase, set()).update(counts)
        for ckey, label in later.clean.items():
            self._add_clean(ckey, label)
        for ckey, label in later.clean_conflicts.items():
            self.clean_conflicts.setdefault(ckey, label)
        self.sigmas_seen |= later.sigmas_seen
        self.torn.extend(later.torn)
        for run in later.runs:
            self.runs.setdefault(run, None)
        for ckey, origin in later.clean_origin.items():
            self.clean_origin.setdefault(ckey, origin)

    def finish(self) -> list[GroupSamples]:
        for path, line, nbytes, reason in self.torn:
            log.warning("%s:%d: skipping torn final line (%d bytes; an interrupted write): %s", path, line, nbytes, reason)
        for (_, _, image), other in self.clean_conflicts.items():
            first = self.clean[(_, _, image)]
            log.warning("image %s: clean responses disagree (%r, then %r); using the first", image[:16], first, other)
        if self.sigma is not None and not self.groups and self.sigmas_seen:
            shown = ", ".join(f"{s:g}" for s in sorted(self.sigmas_seen))
            raise ConfigError(f"no samples with sigma {self.sigma:g}; the logs hold sigma {shown}")
        out = self._in_input_order(list(self.groups.values()))
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

    def _in_input_order(self, groups: list[GroupSamples]) -> list[GroupSamples]:
        """Groups by (run of first appearance, input position, first appearance); see the module docstring."""
        rank = {run: i for i, run in enumerate(self.runs)}

        def origin(group: GroupSamples) -> tuple[int, float]:
            run, position = group.origin
            best = (rank.get(run, len(rank)), position)
            k = group.key
            clean = self.clean_origin.get((k.provider, k.settings, k.image))
            if clean is not None and clean[2:] == (k.sigma, k.denoiser, k.seed):
                best = min(best, (rank.get(clean[0], len(rank)), clean[1]))
            return best

        order = sorted(range(len(groups)), key=lambda i: (*origin(groups[i]), i))
        return [groups[i] for i in order]


def _position(record: QueryRecord) -> float:
    """The input position the engine logged with the record (inf when absent: legacy logs, older versions)."""
    position = record.extra.get("position") if record.extra else None
    return float(position) if isinstance(position, int) and not isinstance(position, bool) else math.inf
