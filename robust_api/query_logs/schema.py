"""The versioned query-log record (one JSON line per provider call) and the cache key of a sample.

A record holds what is needed to recount a certificate without paying again: the raw provider response
and everything that identifies the sample. It never holds credentials or image bytes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from robust_api.errors import LogError

SCHEMA_VERSION = 1
PHASES = ("clean", "selection", "estimation")

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True)
_canonical = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)


class SampleKey(NamedTuple):
    """What identifies one paid query: a sample with this key that is in the log is never requested again."""

    provider: str
    settings: str  # canonical JSON of the provider's model settings (settings_key())
    image: str
    sigma: float
    denoiser: str | None  # sha256 of the denoiser weights, or None
    seed: int | None
    index: int
    phase: str


def settings_key(settings: Mapping[str, Any] | None) -> str:
    """Canonical JSON of provider settings (sorted keys, compact), so equal settings give equal keys."""
    if not settings:
        return "{}"
    try:
        return _canonical.encode(settings)
    except (TypeError, ValueError) as exc:
        raise LogError("<settings>", None, f"provider settings are not JSON-serialisable: {exc}") from None


def _denoiser_sha(denoiser: Mapping[str, Any] | str | None) -> str | None:
    if denoiser is None:
        return None
    if isinstance(denoiser, str):
        return denoiser
    return denoiser.get("sha256")


def sample_key(
    provider: str,
    settings: Mapping[str, Any] | str | None,
    image: str,
    sigma: float,
    denoiser: Mapping[str, Any] | str | None,
    seed: int | None,
    index: int,
    phase: str,
) -> SampleKey:
    """The cache key the engine looks up before paying for a sample.

    `settings` is the settings dict (or an already computed settings_key()); `denoiser` is the record's
    {"name", "sha256"} dict, a sha256 string, or None. The clean query sees neither noise nor denoiser, so
    for phase "clean" sigma, denoiser and seed are normalised (0.0, None, None): one clean response per
    (provider, settings, image) serves every sigma, denoiser and seed.
    """
    skey = settings if isinstance(settings, str) else settings_key(settings)
    if phase == "clean":
        return SampleKey(provider, skey, image, 0.0, None, None, index, phase)
    return SampleKey(provider, skey, image, float(sigma), _denoiser_sha(denoiser), seed, index, phase)


@dataclass(slots=True, kw_only=True)
class QueryRecord:
    """One provider call as logged (schema version 1).

    `image` is the sha256 of the clean image (or "legacy:<name>" for imported logs); `response` is the raw
    provider JSON as received; `label` is the decision at write time (informational only: replay
    re-decides from `response`); `ts` is Unix time in seconds; `extra` is free-form, never secret.
    """

    schema: int = SCHEMA_VERSION
    run: str
    image: str
    provider: str
    model_version: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    sigma: float
    denoiser: dict[str, Any] | None = None
    seed: int | None = None
    index: int
    phase: str
    response: dict[str, Any]
    label: str | None = None
    latency_ms: float | None = None
    attempts: int = 1
    ts: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> SampleKey:
        """This record's cache key (see sample_key())."""
        return sample_key(
            self.provider, self.settings, self.image, self.sigma, self.denoiser, self.seed, self.index, self.phase
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "run": self.run,
            "image": self.image,
            "provider": self.provider,
            "model_version": self.model_version,
            "settings": self.settings,
            "sigma": self.sigma,
            "denoiser": self.denoiser,
            "seed": self.seed,
            "index": self.index,
            "phase": self.phase,
            "response": self.response,
            "label": self.label,
            "latency_ms": self.latency_ms,
            "attempts": self.attempts,
            "ts": self.ts,
            "extra": self.extra,
        }

    def to_json_line(self) -> str:
        """One JSON line terminated by "\\n"; raises LogError if a field is not JSON-serialisable."""
        try:
            return _compact.encode(self.to_dict()) + "\n"
        except (TypeError, ValueError) as exc:
            raise LogError("<record>", None, f"record is not JSON-serialisable: {exc}") from None

    @classmethod
    def from_dict(cls, d: Any, path: str | Path = "<memory>", line: int | None = None) -> "QueryRecord":
        """Validate a decoded JSON object; raises LogError naming `path` and `line` on any problem.

        Required: schema, run, image, provider, sigma, index, phase, response. The others may be absent
        (defaults: model_version/denoiser/seed/label/latency_ms/ts None, settings/extra {}, attempts 1).
        Unknown keys are ignored, so a later minor addition does not break old readers.
        """
        if type(d) is not dict:
            raise LogError(path, line, f"expected a JSON object, got {_json_type(d)}")
        schema = d.get("schema", _MISSING)
        if schema is not SCHEMA_VERSION:
            if schema is _MISSING:
                raise LogError(path, line, "missing field 'schema'")
            if type(schema) is not int:
                raise LogError(path, line, f"field 'schema' must be an integer, got {_json_type(schema)}")
            if schema != SCHEMA_VERSION:
                raise LogError(
                    path, line, f"schema version {schema} is not supported (this robust-api reads {SCHEMA_VERSION})"
                )
        try:
            run = d["run"]
            image = d["image"]
            provider = d["provider"]
            sigma = d["sigma"]
            index = d["index"]
            phase = d["phase"]
            response = d["response"]
        except KeyError as exc:
            raise LogError(path, line, f"missing field {exc.args[0]!r}") from None
        get = d.get
        model_version = get("model_version")
        settings = get("settings")
        denoiser = get("denoiser")
        seed = get("seed")
        label = get("label")
        latency_ms = get("latency_ms")
        attempts = get("attempts", 1)
        ts = get("ts")
        extra = get("extra")
        # One combined test on the common path; the slow path below names the offending field.
        if not (
            type(run) is str
            and type(image) is str
            and type(provider) is str
            and (type(sigma) is float or type(sigma) is int)
            and type(index) is int
            and type(phase) is str
            and phase in _PHASE_SET
            and type(response) is dict
            and (model_version is None or type(model_version) is str)
            and (settings is None or type(settings) is dict)
            and (denoiser is None or _denoiser_ok(denoiser))
            and (seed is None or type(seed) is int)
            and (label is None or type(label) is str)
            and (latency_ms is None or type(latency_ms) is float or type(latency_ms) is int)
            and type(attempts) is int
            and (ts is None or type(ts) is float or type(ts) is int)
            and (extra is None or type(extra) is dict)
            and index >= 0
            and sigma >= 0
            and math.isfinite(sigma)
        ):
            _explain(d, path, line)
        return cls(
            schema=SCHEMA_VERSION,
            run=run,
            image=image,
            provider=provider,
            model_version=model_version,
            settings=settings if settings is not None else {},
            sigma=float(sigma),
            denoiser=denoiser,
            seed=seed,
            index=index,
            phase=phase,
            response=response,
            label=label,
            latency_ms=latency_ms,
            attempts=attempts,
            ts=ts,
            extra=extra if extra is not None else {},
        )


class _Missing:
    pass


_MISSING = _Missing()
_PHASE_SET = frozenset(PHASES)


def _denoiser_ok(denoiser: Any) -> bool:
    return (
        type(denoiser) is dict
        and type(denoiser.get("sha256")) is str
        and type(denoiser.get("name", "")) is str
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_number(v: Any) -> bool:
    return type(v) is float or type(v) is int


_CHECKS: tuple[tuple[str, str, Any], ...] = (
    ("run", "a string", lambda v: type(v) is str),
    ("image", "a string", lambda v: type(v) is str),
    ("provider", "a string", lambda v: type(v) is str),
    ("sigma", "a finite number >= 0", lambda v: _is_number(v) and v >= 0 and math.isfinite(v)),
    ("index", "an integer >= 0", lambda v: type(v) is int and v >= 0),
    ("phase", "one of " + "/".join(PHASES), lambda v: type(v) is str and v in _PHASE_SET),
    ("response", "a JSON object", lambda v: type(v) is dict),
    ("model_version", "a string or null", lambda v: v is None or type(v) is str),
    ("settings", "an object or null", lambda v: v is None or type(v) is dict),
    ("denoiser", 'null or {"name": string, "sha256": string}', lambda v: v is None or _denoiser_ok(v)),
    ("seed", "an integer or null", lambda v: v is None or type(v) is int),
    ("label", "a string or null", lambda v: v is None or type(v) is str),
    ("latency_ms", "a number or null", lambda v: v is None or _is_number(v)),
    ("attempts", "an integer", lambda v: type(v) is int),
    ("ts", "a number or null", lambda v: v is None or _is_number(v)),
    ("extra", "an object or null", lambda v: v is None or type(v) is dict),
)
_DEFAULTS = {"attempts": 1}


def _explain(d: dict, path: str | Path, line: int | None) -> None:
    for name, expected, ok in _CHECKS:
        value = d.get(name, _DEFAULTS.get(name))
        if not ok(value):
            shown = repr(value) if name == "phase" and type(value) is str else _json_type(value)
            raise LogError(path, line, f"field {name!r} must be {expected}, got {shown}")
    raise LogError(path, line, "invalid record")  # unreachable unless the two checks above disagree
