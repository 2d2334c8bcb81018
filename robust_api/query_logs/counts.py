"""Count records: the label counts of a range of samples, logged by full-access certification.

A model you hold (`--api local --full-access`) labels 10^4-10^5 noisy copies per image; logging each response
would make the log larger than the images. Instead one record per (image, phase, index range [start, stop))
holds the labels' counts. It is a versioned record kind of its own in the same JSONL log:

    {"kind": "counts", "counts_version": 1, "run", "image", "provider", "model_version", "settings", "sigma",
     "denoiser", "seed", "phase", "start", "stop", "counts": {label: n}, "decision", "seconds", "ts", "extra"}

`counts` sum to stop - start. The labels were decided at write time by the rule named in `decision` (there are
no responses to re-decide from). The cache semantics are those of sample records: a range whose key (provider,
settings, image, sigma, denoiser, seed, phase, start, stop) is logged is never computed again, and
`CountIndex.cover` finds the logged ranges that tile a requested range, so a killed run resumes from the ranges
it has. Readers of sample records (`read_log`) skip count lines; `read_count_records` reads only them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

from robust_api.errors import LogError
from robust_api.query_logs.schema import PHASES, settings_key
from robust_api.query_logs.store import _open_for_reading

COUNTS_KIND = "counts"
COUNTS_VERSION = 1

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class RangeKey(NamedTuple):
    """What identifies one counted range of samples (the clean phase normalises sigma, denoiser, seed)."""

    provider: str
    settings: str
    image: str
    sigma: float
    denoiser: str | None
    seed: int | None
    phase: str
    decision: str  # the labels were decided by this rule: counts under another rule are other samples
    start: int
    stop: int

    def group(self) -> tuple:
        """The key without the range: every range of one image's phase shares it."""
        return self[:8]


def range_key(provider: str, settings: Mapping[str, Any] | str | None, image: str, sigma: float,
              denoiser: Mapping[str, Any] | str | None, seed: int | None, phase: str, decision: str, start: int,
              stop: int) -> RangeKey:
    skey = settings if isinstance(settings, str) else settings_key(settings)
    sha = denoiser.get("sha256") if isinstance(denoiser, Mapping) else denoiser
    if phase == "clean":
        return RangeKey(provider, skey, image, 0.0, None, None, phase, decision, start, stop)
    return RangeKey(provider, skey, image, float(sigma), sha, seed, phase, decision, start, stop)


@dataclass(slots=True, kw_only=True)
class CountRecord:
    """Label counts of samples [start, stop) of one image's phase (see the module docstring)."""

    run: str
    image: str
    provider: str
    model_version: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    sigma: float
    denoiser: dict[str, Any] | None = None
    seed: int | None = None
    phase: str
    start: int
    stop: int
    counts: dict[str, int]
    decision: str = "top1"
    seconds: float = 0.0
    ts: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.stop - self.start

    def key(self) -> RangeKey:
        return range_key(self.provider, self.settings, self.image, self.sigma, self.denoiser, self.seed, self.phase,
                         self.decision, self.start, self.stop)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": COUNTS_KIND, "counts_version": COUNTS_VERSION, "run": self.run, "image": self.image,
            "provider": self.provider, "model_version": self.model_version, "settings": self.settings,
            "sigma": self.sigma, "denoiser": self.denoiser, "seed": self.seed, "phase": self.phase,
            "start": self.start, "stop": self.stop, "counts": self.counts, "decision": self.decision,
            "seconds": self.seconds, "ts": self.ts, "extra": self.extra,
        }

    def to_json_line(self) -> str:
        try:
            return _compact.encode(self.to_dict()) + "\n"
        except (TypeError, ValueError) as exc:
            raise LogError("<record>", None, f"count record is not JSON-serialisable: {exc}") from None

    @classmethod
    def from_dict(cls, d: Any, path: str | Path = "<memory>", line: int | None = None) -> "CountRecord":
        """Validate a decoded count line; LogError naming path and line on any problem."""
        def bad(why: str) -> LogError:
            return LogError(path, line, f"count record: {why}")

        if not isinstance(d, dict) or d.get("kind") != COUNTS_KIND:
            raise bad("not a count record")
        if d.get("counts_version") != COUNTS_VERSION:
            raise bad(f"unknown counts_version {d.get('counts_version')!r} (this robust-api reads {COUNTS_VERSION})")
        try:
            start, stop, counts = d["start"], d["stop"], d["counts"]
            phase, sigma = d["phase"], d["sigma"]
            if not (type(start) is int and type(stop) is int and 0 <= start < stop):
                raise bad(f"range [{start!r}, {stop!r}) is not 0 <= start < stop")
            if phase not in PHASES:
                raise bad(f"unknown phase {phase!r}")
            if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
                raise bad(f"sigma {sigma!r} is not a number >= 0")
            if not isinstance(counts, dict) or not all(isinstance(k, str) and type(v) is int and v >= 0
                                                       for k, v in counts.items()):
                raise bad("counts must map labels to counts >= 0")
            if sum(counts.values()) != stop - start:
                raise bad(f"counts sum to {sum(counts.values())}, the range holds {stop - start} samples")
            for name in ("run", "image", "provider"):
                if not isinstance(d[name], str):
                    raise bad(f"{name} must be a string")
            return cls(run=d["run"], image=d["image"], provider=d["provider"], model_version=d.get("model_version"),
                       settings=dict(d.get("settings") or {}), sigma=float(sigma), denoiser=d.get("denoiser"),
                       seed=d.get("seed"), phase=phase, start=start, stop=stop, counts=dict(counts),
                       decision=str(d.get("decision", "top1")), seconds=float(d.get("seconds") or 0.0),
                       ts=d.get("ts"), extra=dict(d.get("extra") or {}))
        except KeyError as exc:
            raise bad(f"missing field {exc.args[0]!r}") from None


def labels_of(records: Iterable[CountRecord]) -> list[str]:
    """The labels of consecutive ranges as one list in range order (within a range, by label: only the counts are
    known), what a mode's certify reads as the samples' labels; exact at every range boundary."""
    out: list[str] = []
    for record in records:
        for label, count in sorted(record.counts.items()):
            out += [label] * count
    return out


def is_count_line(obj: Any) -> bool:
    return type(obj) is dict and obj.get("kind") == COUNTS_KIND


def read_count_records(path: str | Path) -> Iterator[CountRecord]:
    """The count records of one JSONL log in file order (sample records are skipped). A torn final line is
    skipped (the writer repairs it on the next append); any other bad count line raises LogError."""
    name = str(path)
    with _open_for_reading(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            if b'"kind"' not in raw:
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                if raw.endswith(b"\n"):
                    raise LogError(name, lineno, "not valid JSON") from None
                return  # torn tail
            if is_count_line(obj):
                yield CountRecord.from_dict(obj, name, lineno)


class CountIndex:
    """Logged ranges by key; `cover` tiles a requested range with logged ranges and names the gaps."""

    def __init__(self) -> None:
        self._records: dict[RangeKey, CountRecord] = {}
        self._starts: dict[tuple, dict[int, CountRecord]] = {}

    @classmethod
    def from_logs(cls, paths: Iterable[str | Path]) -> "CountIndex":
        index = cls()
        for path in paths:
            if Path(path).exists():
                for record in read_count_records(path):
                    index.add(record)
        return index

    def add(self, record: CountRecord) -> bool:
        key = record.key()
        if key in self._records:
            return False
        self._records[key] = record
        starts = self._starts.setdefault(key.group(), {})
        if record.start not in starts or starts[record.start].stop > record.stop:
            starts[record.start] = record  # the shortest range at a start tiles the most requests
        return True

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> Iterator[CountRecord]:
        return iter(self._records.values())

    def for_image(self, image: str) -> list[CountRecord]:
        return [r for r in self._records.values() if r.image == image]

    def cover(self, group: tuple, start: int, stop: int, boundaries: Iterable[int] = ()) -> list[tuple[int, int, CountRecord | None]]:
        """[start, stop) as consecutive pieces (a, b, record or None): logged ranges where one starts at a and
        ends by stop, gaps (None) elsewhere, cut at every boundary in `boundaries` and at the next logged start."""
        starts = self._starts.get(group, {})
        cuts = sorted({b for b in boundaries if start < b < stop} | {s for s in starts if start < s < stop} | {stop})
        pieces: list[tuple[int, int, CountRecord | None]] = []
        a = start
        while a < stop:
            found = starts.get(a)
            if found is not None and found.stop <= stop:
                pieces.append((a, found.stop, found))
                a = found.stop
                continue
            b = next(c for c in cuts if c > a)
            pieces.append((a, b, None))
            a = b
        return pieces
