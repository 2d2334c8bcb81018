"""Raw provider response -> one class label: response parsing, deterministic ranking and decision rules.

A decision rule is part of the base classifier that randomized smoothing wraps, so it must be a fixed,
deterministic function of the response: the same response always gives the same label, whatever order the
provider listed its labels in. Rules are callables `rule(response, provider=None) -> str` with a `.name`.

Classes every rule shares: NO_LABEL ("none") for a response with no labels at all (the reference used
"None"), OTHER ("other") for labels outside a user's vocabulary.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from robust_api.errors import ConfigError, ResponseFormatError

NO_LABEL = "none"
OTHER = "other"

__all__ = [
    "NO_LABEL",
    "OTHER",
    "ScoredLabel",
    "DecisionRule",
    "parse_labels",
    "rank_labels",
    "Top1",
    "Vocabulary",
    "LabelPresent",
    "rule_from_spec",
    "decide",
]


@dataclass(frozen=True)
class ScoredLabel:
    """One label of a response: `name` case-folded with whitespace collapsed, `score` in [0, 1], and the
    names of its ancestors when the provider reports them (AWS `Parents`), normalised the same way."""

    name: str
    score: float
    parents: tuple[str, ...] = ()


class DecisionRule(Protocol):
    name: str

    def __call__(self, response: Mapping[str, Any], provider: str | None = None) -> str: ...


# -- parsing -------------------------------------------------------------------------------------------

# Top-level key of each shape -> (list path below it, name field, score field, score scale, missing score ok).
# Google and Clarifai send protobuf JSON, which omits fields holding their default value (a score of 0.0, an
# empty list), so for them a missing score means 0.0 and a missing list means "no labels".
_SHAPES: dict[str, tuple[tuple[str, ...], str, str, float, bool]] = {
    "tags": ((), "name", "confidence", 1.0, False),  # Azure v3.2
    "tagsResult": (("values",), "name", "confidence", 1.0, False),  # Azure 4.0
    "labelAnnotations": ((), "description", "score", 1.0, True),  # Google
    "Labels": ((), "Name", "Confidence", 100.0, False),  # AWS (0-100)
    "outputs": ((), "name", "value", 1.0, True),  # Clarifai: outputs[0].data.concepts (handled below)
    "predictions": ((), "label", "score", 1.0, False),  # the local provider
}
_PROVIDER_KEYS = {
    "azure": ("tags", "tagsResult"),
    "google": ("labelAnnotations",),
    "aws": ("Labels",),
    "clarifai": ("outputs",),
    "local": ("predictions",),
}
_CLARIFAI_OK = 10000


def _normalise_name(raw: object, where: str) -> str:
    if not isinstance(raw, str):
        raise ResponseFormatError(f"{where}: label name is missing or not a string")
    name = " ".join(raw.split()).casefold()
    if not name:
        raise ResponseFormatError(f"{where}: label name is empty")
    return name


def _normalise_score(raw: object, scale: float, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ResponseFormatError(f"{where}: score is not a number")
    try:
        score = float(raw) / scale
    except OverflowError:
        raise ResponseFormatError(f"{where}: score is out of range") from None
    if not (math.isfinite(score) and 0.0 <= score <= 1.0):
        raise ResponseFormatError(f"{where}: score is not a finite number in [0, {scale:g}]")
    return score


def _as_list(value: object, where: str) -> list:
    if value is None:  # JSON null: no labels
        return []
    if not isinstance(value, list):
        raise ResponseFormatError(f"{where} is not a list")
    return value


def _as_mapping(value: object, where: str) -> Mapping:
    # `type(...) is dict` first: JSON decodes to dicts, and the ABC check is the slow path of replay.
    if type(value) is not dict and not isinstance(value, Mapping):
        raise ResponseFormatError(f"{where} is not an object")
    return value


def _label_entries(response: Mapping, key: str) -> list:
    """The list of label objects under `key`, following the shape's path (Clarifai: outputs[0].data.concepts)."""
    value = response[key]
    if key == "outputs":
        outputs = _as_list(value, "outputs")
        if not outputs:
            return []
        first = _as_mapping(outputs[0], "outputs[0]")
        status = first.get("status")
        if status is not None:
            code = _as_mapping(status, "outputs[0].status").get("code", _CLARIFAI_OK)
            if code != _CLARIFAI_OK:
                raise ResponseFormatError(f"outputs[0] carries a failure status (code {code!r}), not labels")
        data = first.get("data")
        if data is None:
            return []
        return _as_list(_as_mapping(data, "outputs[0].data").get("concepts"), "outputs[0].data.concepts")
    path, _, _, _, _ = _SHAPES[key]
    where = key
    for step in path:
        if value is None:
            return []
        value = _as_mapping(value, where).get(step)
        where = f"{where}.{step}"
    return _as_list(value, where)


def _shape_key(response: Mapping, provider: str | None) -> str | None:
    if provider is not None:
        try:
            candidates = _PROVIDER_KEYS[provider]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown provider {provider!r}; choose one of {', '.join(_PROVIDER_KEYS)}") from None
        present = [k for k in candidates if k in response]
        foreign = [k for k in _SHAPES if k in response and k not in candidates]
        if not present and foreign:
            raise ResponseFormatError(f"a {provider} response cannot carry {foreign[0]!r}")
    else:
        present = [k for k in _SHAPES if k in response]
    if len(present) > 1:
        raise ResponseFormatError(f"ambiguous response: it carries both {present[0]!r} and {present[1]!r}")
    return present[0] if present else None


def parse_labels(response: Mapping[str, Any], provider: str | None = None) -> list[ScoredLabel]:
    """The labels of one raw response, ranked by `rank_labels` (best first); [] when it carries none.

    Reads the six documented shapes (Azure v3.2 `tags`, Azure 4.0 `tagsResult.values`, Google
    `labelAnnotations`, AWS `Labels` with Confidence 0-100, Clarifai `outputs[0].data.concepts`, local
    `predictions`); `provider` (optional) restricts it to that provider's shapes. A name occurring twice keeps
    its highest score. Raises ResponseFormatError -- and nothing else -- for a non-mapping response, a
    provider error body, or a label entry without a string name or with a score that is not a number in range.
    """
    scanned = _scan(response, provider)
    if scanned is None:
        return _reference_parse_labels(response, provider)
    return _ranked(scanned)


def _reference_parse_labels(response: Mapping[str, Any], provider: str | None = None) -> list[ScoredLabel]:
    """parse_labels, written for clarity rather than speed: the specification the fast path (`_scan`) must
    match exactly. The rules fall back to it for anything the fast path does not handle (including every
    malformed response, so errors and their messages come from here), and the tests compare against it."""
    if type(response) is not dict and not isinstance(response, Mapping):
        raise ResponseFormatError(f"a response must be a JSON object, got {type(response).__name__}")
    error = response.get("error")
    if error:
        raise ResponseFormatError("the response is a provider error body, not labels")
    key = _shape_key(response, provider)
    if key is None:
        return []
    _, name_field, score_field, scale, score_optional = _SHAPES[key]
    best: dict[str, ScoredLabel] = {}
    for i, entry in enumerate(_label_entries(response, key)):
        where = f"{key}[{i}]"
        entry = _as_mapping(entry, where)
        name = _normalise_name(entry.get(name_field), where)
        raw_score = entry.get(score_field, 0.0 if score_optional else None)
        score = _normalise_score(raw_score, scale, where)
        parents: tuple[str, ...] = ()
        if key == "Labels" and entry.get("Parents") is not None:
            parents = tuple(
                _normalise_name(_as_mapping(p, f"{where}.Parents[{j}]").get("Name"), f"{where}.Parents[{j}]")
                for j, p in enumerate(_as_list(entry.get("Parents"), f"{where}.Parents"))
            )
        seen = best.get(name)
        if seen is None or score > seen.score:
            best[name] = ScoredLabel(name, score, parents if seen is None else tuple(dict.fromkeys(seen.parents + parents)))
        elif score == seen.score and parents:
            best[name] = ScoredLabel(name, score, tuple(dict.fromkeys(seen.parents + parents)))
    return rank_labels(best.values())


def rank_labels(labels: Iterable[ScoredLabel]) -> list[ScoredLabel]:
    """Labels best first: higher score first; among exactly equal scores, a label that another equal-score
    label lists as its ancestor goes after the non-ancestors (AWS reports Transportation, Vehicle and Car all
    at 99.0259: Car wins), then lexicographically smallest (case-folded) name first. Input order never matters.
    """
    labels = list(labels)
    by_score: dict[float, set[str]] = {}
    for label in labels:
        by_score.setdefault(label.score, set()).update(label.parents)
    return sorted(labels, key=lambda lab: (-lab.score, lab.name in by_score[lab.score], lab.name))


# -- fast path -----------------------------------------------------------------------------------------
# Replay decides 10^6+ responses, and building a ScoredLabel per label dominated its cost. `_scan` reads
# the common, well-formed case into plain lists, with label names normalised once per distinct raw name
# (providers repeat a small vocabulary). Whenever it meets anything else -- a malformed entry, a duplicated
# name (whose parents merge in an order-dependent way), a non-dict container, an int too large for a float
# -- it returns None and the caller runs the reference path, which gives the result or raises the error.
# tests/test_decision.py checks that the two agree on generated responses of every shape.

_NAME_CACHE: dict[str, str] = {}
_NAME_CACHE_MAX = 1 << 16  # distinct raw names kept; cleared when full (a bound, not an LRU: rarely hit)

# key -> (name field, score field, scale, value of a missing score, label list directly under the key?)
_FAST_SHAPES: dict[str, tuple[str, str, float, float | None, bool]] = {
    key: (name_field, score_field, scale, 0.0 if optional else None, not path and key != "outputs")
    for key, (path, name_field, score_field, scale, optional) in _SHAPES.items()
}
_SINGLE_KEY = {provider: keys[0] for provider, keys in _PROVIDER_KEYS.items() if len(keys) == 1}

# (names, scores, parents or None when the shape has none), index-aligned, in the provider's order
_Scanned = tuple[list[str], list[float], list[tuple[str, ...]] | None]


def _scan(response: Any, provider: Any) -> _Scanned | None:
    """The labels of a well-formed response (names unique, as ScoredLabel fields); None -> use the
    reference path. Raises only what the reference raises at the same point: ConfigError for an unknown
    provider, ResponseFormatError for a bad shape or container (both from the reference's own helpers)."""
    if type(response) is not dict or response.get("error"):
        return None
    key = _SINGLE_KEY.get(provider) if type(provider) is str else None
    if key is None or key not in response:
        key = _shape_key(response, provider)
        if key is None:
            return [], [], None
    name_field, score_field, scale, default, direct = _FAST_SHAPES[key]
    entries = response[key]
    if not direct or type(entries) is not list:
        entries = _label_entries(response, key)
    cache_get = _NAME_CACHE.get
    names: list[str] = []
    scores: list[float] = []
    add_name, add_score = names.append, scores.append
    parents_of: list[tuple[str, ...]] | None = [] if key == "Labels" else None
    try:
        for entry in entries:
            if type(entry) is not dict:
                return None
            raw = entry.get(name_field)
            name = cache_get(raw)  # TypeError for an unhashable name: reference path
            if name is None:
                name = _cache_name(raw)
                if name is None:
                    return None
            raw = entry.get(score_field, default)
            kind = type(raw)
            if kind is float:
                score = raw / scale
            elif kind is int:
                score = float(raw) / scale  # OverflowError: reference path
            else:
                return None
            if not 0.0 <= score <= 1.0:  # also rejects nan and inf
                return None
            add_name(name)
            add_score(score)
            if parents_of is not None:
                raw = entry.get("Parents")
                if not raw:
                    if raw is not None and type(raw) is not list:  # e.g. {} or "": the reference refuses it
                        return None
                    parents_of.append(())
                    continue
                if type(raw) is not list:
                    return None
                found = []
                for parent in raw:
                    if type(parent) is not dict:
                        return None
                    parent_raw = parent.get("Name")
                    parent_name = cache_get(parent_raw)
                    if parent_name is None:
                        parent_name = _cache_name(parent_raw)
                        if parent_name is None:
                            return None
                    found.append(parent_name)
                parents_of.append(tuple(found))
    except (TypeError, OverflowError):
        return None
    if len(set(names)) != len(names):
        return None
    return names, scores, parents_of


def _cache_name(raw: object) -> str | None:
    """The normalised form of a raw label name (remembered), or None when the reference would refuse it."""
    if type(raw) is not str:
        return None
    name = " ".join(raw.split()).casefold()
    if not name:
        return None
    if len(_NAME_CACHE) >= _NAME_CACHE_MAX:
        _NAME_CACHE.clear()
    _NAME_CACHE[raw] = name
    return name


def _best_index(scanned: _Scanned, candidates: Iterable[int]) -> int:
    """The index of the best-ranked label among `candidates` (non-empty indices into `scanned`), in
    rank_labels' order: highest score, then not an ancestor of an equal-score label, then smallest name."""
    names, scores, parents_of = scanned
    candidates = list(candidates)
    top = max(scores[i] for i in candidates)
    tied = [i for i in candidates if scores[i] == top]
    if len(tied) == 1:
        return tied[0]
    ancestors: set[str] = set()
    if parents_of is not None:
        for parents, score in zip(parents_of, scores):
            if score == top:
                ancestors.update(parents)
    return min(tied, key=lambda i: (names[i] in ancestors, names[i]))


def _ranked(scanned: _Scanned) -> list[ScoredLabel]:
    """rank_labels for a scan."""
    names, scores, parents_of = scanned
    parents_of = parents_of if parents_of is not None else [()] * len(names)
    by_score: dict[float, set[str]] = {}
    for score, parents in zip(scores, parents_of):
        by_score.setdefault(score, set()).update(parents)
    order = sorted(range(len(names)), key=lambda i: (-scores[i], names[i] in by_score[scores[i]], names[i]))
    return [ScoredLabel(names[i], scores[i], parents_of[i]) for i in order]


# -- rules ---------------------------------------------------------------------------------------------


class Top1:
    """The best-ranked label (see `rank_labels`: highest score; ties -> not an ancestor, then smallest name);
    NO_LABEL when the response has none. Never trusts the provider's order."""

    name = "top1"

    def __call__(self, response: Mapping[str, Any], provider: str | None = None) -> str:
        scanned = _scan(response, provider)
        if scanned is None:
            return self._reference(response, provider)
        names, scores, _ = scanned
        if not names:
            return NO_LABEL
        top = max(scores)
        if scores.count(top) == 1:  # the common case: a unique top score
            return names[scores.index(top)]
        return names[_best_index(scanned, range(len(names)))]

    def _reference(self, response: Mapping[str, Any], provider: str | None = None) -> str:
        ranked = _reference_parse_labels(response, provider)
        return ranked[0].name if ranked else NO_LABEL

    def __repr__(self) -> str:
        return "Top1()"


class Vocabulary:
    """Map raw labels onto a user's class set: the class of the best-ranked label that has one; OTHER (or
    `other`) when labels exist but none maps; NO_LABEL when the response has no labels.

    `mapping` is {class: [synonym, ...]}; each class name is also its own synonym; names and synonyms are
    matched case-folded with whitespace collapsed. A synonym listed under two classes, a class named NO_LABEL,
    or an empty mapping raises ConfigError.
    """

    def __init__(self, mapping: Mapping[str, Iterable[str]], other: str = OTHER, *, name: str = "vocab") -> None:
        if not isinstance(mapping, Mapping) or not mapping:
            raise ConfigError("a vocabulary needs a non-empty {class: [synonyms]} mapping")
        if not isinstance(other, str) or not other.strip():
            raise ConfigError("the vocabulary's 'other' class must be a non-empty string")
        self.other = other
        self.name = name
        self.classes: tuple[str, ...] = tuple(mapping)
        self._class_of: dict[str, str] = {}
        for cls, synonyms in mapping.items():
            if not isinstance(cls, str) or not cls.strip():
                raise ConfigError(f"vocabulary class names must be non-empty strings, got {cls!r}")
            if " ".join(cls.split()).casefold() == NO_LABEL:
                raise ConfigError(f"{cls!r} is reserved for responses without labels; rename that class")
            if isinstance(synonyms, str) or not isinstance(synonyms, Iterable):
                raise ConfigError(f"vocabulary class {cls!r}: synonyms must be a list of strings")
            for synonym in (cls, *synonyms):
                if not isinstance(synonym, str) or not synonym.strip():
                    raise ConfigError(f"vocabulary class {cls!r}: synonym {synonym!r} is not a non-empty string")
                key = " ".join(synonym.split()).casefold()
                if self._class_of.setdefault(key, cls) != cls:
                    raise ConfigError(f"synonym {synonym!r} maps to both {self._class_of[key]!r} and {cls!r}")

    @classmethod
    def from_file(cls, path: str | Path, other: str = OTHER) -> "Vocabulary":
        """Read a vocabulary from a JSON file holding one object {"class": ["synonym", ...], ...}, e.g.
        {"cat": ["kitten", "tabby cat"], "dog": ["puppy", "hound"]}. Raises ConfigError naming the file
        when it is missing, not JSON, or not of that form."""
        try:
            mapping = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read vocabulary file ({exc.strerror or exc})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: vocabulary file is not valid JSON ({exc})") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, list) for v in mapping.values()):
            raise ConfigError(f'{path}: a vocabulary file must hold one JSON object {{"class": ["synonym", ...]}}')
        try:
            return cls(mapping, other, name=f"vocab:{path}")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def __call__(self, response: Mapping[str, Any], provider: str | None = None) -> str:
        scanned = _scan(response, provider)
        if scanned is None:
            return self._reference(response, provider)
        names = scanned[0]
        if not names:
            return NO_LABEL
        class_of = self._class_of
        mapped = [i for i, name in enumerate(names) if name in class_of]
        if not mapped:
            return self.other
        return class_of[names[_best_index(scanned, mapped)]]

    def _reference(self, response: Mapping[str, Any], provider: str | None = None) -> str:
        ranked = _reference_parse_labels(response, provider)
        if not ranked:
            return NO_LABEL
        for label in ranked:
            cls = self._class_of.get(label.name)
            if cls is not None:
                return cls
        return self.other

    def __repr__(self) -> str:
        return f"Vocabulary(<{len(self.classes)} classes>, other={self.other!r}, name={self.name!r})"


class LabelPresent:
    """Binary rule: returns `label` when the response carries `label` (case-folded) with score >= threshold,
    else f"not {label}". Deliberately binary: a response without labels is "not {label}" (not NO_LABEL), so a
    user can certify "this image is (not) labelled X". Raises ConfigError for an empty label or a threshold
    outside [0, 1]."""

    def __init__(self, label: str, threshold: float = 0.5) -> None:
        if not isinstance(label, str) or not label.strip():
            raise ConfigError("label_present needs a non-empty label")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"label_present threshold must be in [0, 1], got {threshold!r}")
        self.label = " ".join(label.split()).casefold()
        self.threshold = float(threshold)
        self.name = f"present:{self.label}:{self.threshold:g}"
        self.absent = f"not {self.label}"

    def __call__(self, response: Mapping[str, Any], provider: str | None = None) -> str:
        scanned = _scan(response, provider)
        if scanned is None:
            return self._reference(response, provider)
        names, scores, _ = scanned
        try:  # names are unique, so the ranking does not matter here
            i = names.index(self.label)
        except ValueError:
            return self.absent
        return self.label if scores[i] >= self.threshold else self.absent

    def _reference(self, response: Mapping[str, Any], provider: str | None = None) -> str:
        for scored in _reference_parse_labels(response, provider):
            if scored.name == self.label and scored.score >= self.threshold:
                return self.label
        return self.absent

    def __repr__(self) -> str:
        return f"LabelPresent({self.label!r}, threshold={self.threshold:g})"


def rule_from_spec(spec: str) -> Callable[..., str]:
    """Build a rule from its text form: "top1", "vocab:PATH" (see Vocabulary.from_file) or
    "present:LABEL[:THRESHOLD]" (threshold defaults to 0.5). Raises ConfigError for anything else."""
    if not isinstance(spec, str):
        raise ConfigError(f"a decision rule spec must be a string, got {type(spec).__name__}")
    kind, _, arg = spec.strip().partition(":")
    kind = kind.casefold()
    if kind == "top1" and not arg:
        return Top1()
    if kind in ("vocab", "vocabulary") and arg:
        return Vocabulary.from_file(arg)
    if kind in ("present", "label_present") and arg:
        label, sep, threshold = arg.rpartition(":")
        if sep:
            try:
                return LabelPresent(label, float(threshold))
            except ValueError:
                pass  # the last ':' belongs to the label itself
        return LabelPresent(arg)
    raise ConfigError(f"unknown decision rule {spec!r}; use top1, vocab:PATH or present:LABEL[:THRESHOLD]")


def decide(response: Mapping[str, Any], rule: Callable[..., str] | None = None, provider: str | None = None) -> str:
    """The label `rule` (default Top1) gives `response`; raises ResponseFormatError for a malformed response."""
    return (rule or Top1())(response, provider)


def resolve_rule(rule: "str | Callable[..., str] | None") -> Callable[..., str]:
    """A decision rule from a spec ("top1", "vocab:PATH", "present:LABEL[:T]") or a callable; None -> top1."""
    if rule is None:
        return rule_from_spec("top1")
    if isinstance(rule, str):
        return rule_from_spec(rule)
    if not callable(rule):
        raise ConfigError(f"a decision rule must be a spec string or a callable, got {type(rule).__name__}")
    return rule
