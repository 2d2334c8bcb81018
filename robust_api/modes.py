"""The certification modes, one registry read by the engine, replay, the planner and the CLI.

A mode is one object that knows, for a run's parameters:
  - which samples it wants: `selection_size` (separate selection samples) and `looks` (the estimation sample
    counts after which it tries to decide; the last look is the budget);
  - its record in the query log: `log_extra` (the `mode`, `alpha`, the planned `n0` / `n` of fixed-N modes and,
    for sequential, the plan), which is also what replay reads back (`options_from_log`; the planned counts
    let replay tell a complete image from one whose run was killed mid-image);
  - how to certify from labels: `certify(options, sigma, samples)` -> Verdict. Pure, no I/O: the engine
    calls it online after each look and replay calls it offline, on the same labels, so the two agree;
  - its worst-case bill for the planner: `calls_per_image`.

Guarantees (see robust_api.smoothing and robust_api.sequential for the proofs): "fixed" is Cohen et al.'s
CERTIFY (candidate from N0 selection samples, bound from N independent estimation samples); "clean" takes the
clean image's label as the candidate (chosen independently of the noise) and saves the N0 calls; "sequential"
spends alpha over a fixed schedule of looks, so any stopping time keeps P(wrong certificate) <= alpha.
Adding a mode = one class here with its tests; nothing else lists the modes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from robust_api import smoothing
from robust_api.errors import ConfigError, LogError
from robust_api.results import ABSTAIN

__all__ = ["CertifyParams", "Mode", "ModeOptions", "Samples", "Verdict", "MODES", "get_mode", "mode_names"]


@dataclass(frozen=True)
class CertifyParams:
    """What a certification run needs. `n0` is used by "fixed" only (the other modes take the clean-image
    label as the candidate); `max_queries` / `target_radius` by "sequential" only. ConfigError when invalid."""

    sigma: float
    n0: int = 20
    n: int = 100
    alpha: float = 0.001
    mode: str = "fixed"
    seed: int = 0
    max_queries: int | None = None
    target_radius: float | None = None

    def __post_init__(self) -> None:
        mode = get_mode(self.mode)
        if not self.sigma > 0:
            raise ConfigError("sigma must be > 0")
        if not 0 < self.alpha < 1:
            raise ConfigError("alpha must be in (0, 1)")
        mode.check(self)


@dataclass(frozen=True)
class Samples:
    """The labels one certification sees: the clean image's label (None when not queried) and the selection
    and estimation labels in sample-index order."""

    clean_label: str | None
    selection: Sequence[str] = ()
    estimation: Sequence[str] = ()


@dataclass(frozen=True)
class ModeOptions:
    """What a mode's certify needs besides sigma and labels: alpha and, for sequential, the logged plan."""

    alpha: float
    plan: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Verdict:
    """A mode's decision on some labels.

    `label` is the certified class or ABSTAIN (radius 0.0); `complete` is False when the labels ended before the
    mode could decide (a sequential run cut short: no certificate, and online the engine draws more); `alpha`
    is the level the certificate holds at; `n_estimation_used` counts the estimation samples the decision used;
    `missing` says which labels were lacking when the mode abstained for want of them.
    """

    label: str | int
    radius: float
    p_lower: float | None
    counts_selection: dict[str, int]
    counts_estimation: dict[str, int]
    n_estimation_used: int
    alpha: float
    complete: bool = True
    reason: str = ""
    missing: str = ""  # why the labels could not support a certificate (abstained for lack of samples)
    extra: dict[str, Any] = field(default_factory=dict)


class Mode:
    """One certification mode (see the module docstring for the contract of each method)."""

    name: str = ""
    uses_selection: bool = False  # certifies from separate selection samples
    fixed_n: bool = True  # the sample count is fixed in advance (so a log may be recounted with fewer samples)

    def check(self, params: CertifyParams) -> None:
        if params.n < 1:
            raise ConfigError("n must be >= 1")
        if params.n0 < 0:
            raise ConfigError("n0 must be >= 0")

    def selection_size(self, params: CertifyParams) -> int:
        return 0

    def looks(self, params: CertifyParams) -> tuple[int, ...]:
        return (params.n,)

    def log_extra(self, params: CertifyParams) -> dict[str, Any]:
        return {"mode": self.name, "alpha": params.alpha}

    def options(self, params: CertifyParams) -> ModeOptions:
        """The certify options of an online run (what `options_from_log` reads back from `log_extra`)."""
        extra = self.log_extra(params)
        return ModeOptions(params.alpha, extra.get("plan"))

    def options_from_log(self, alpha: float, plan: Mapping[str, Any] | None) -> ModeOptions:
        """Replay's options: `alpha` chosen by the user (fixed-N modes may be recounted at any alpha)."""
        return ModeOptions(alpha, plan)

    def certify(self, options: ModeOptions, sigma: float, samples: Samples) -> Verdict:
        raise NotImplementedError

    def calls_per_image(self, n: int, n0: int = 20) -> int:
        """Provider calls per image (worst case for budgeted modes), the clean query included."""
        return 1 + n


class FixedMode(Mode):
    """Cohen et al.'s CERTIFY: candidate = top label of N0 selection samples, bound from N estimation samples."""

    name = "fixed"
    uses_selection = True

    def check(self, params: CertifyParams) -> None:
        super().check(params)
        if params.n0 < 1:
            raise ConfigError("n must be >= 1 and n0 >= 1 in fixed mode")

    def selection_size(self, params: CertifyParams) -> int:
        return params.n0

    def log_extra(self, params: CertifyParams) -> dict[str, Any]:
        # the planned sample counts: replay certifies a run killed mid-image only on a complete plan
        return {"mode": self.name, "alpha": params.alpha, "n0": params.n0, "n": params.n}

    def certify(self, options: ModeOptions, sigma: float, samples: Samples) -> Verdict:
        counts_selection = smoothing.count_labels(samples.selection)
        counts_estimation = smoothing.count_labels(samples.estimation)
        n = len(samples.estimation)
        if not counts_selection or not n:
            label, radius = smoothing.certify(counts_selection, counts_estimation, sigma, options.alpha)
            return Verdict(label, radius, None, counts_selection, counts_estimation, n, options.alpha,
                           missing=f"{len(samples.selection)} selection / {n} estimation samples")
        candidate = smoothing.top_label(counts_selection)
        label, radius, p_lower = _certify_candidate(candidate, counts_estimation, n, sigma, options.alpha)
        return Verdict(label, radius, p_lower, counts_selection, counts_estimation, n, options.alpha)

    def calls_per_image(self, n: int, n0: int = 20) -> int:
        return 1 + n0 + n


class CleanMode(Mode):
    """Clean-image selection: the candidate is the provider's label on the clean image (saves the N0 calls)."""

    name = "clean"

    def log_extra(self, params: CertifyParams) -> dict[str, Any]:
        return {"mode": self.name, "alpha": params.alpha, "n": params.n}

    def certify(self, options: ModeOptions, sigma: float, samples: Samples) -> Verdict:
        counts_estimation = smoothing.count_labels(samples.estimation)
        n = len(samples.estimation)
        if samples.clean_label is None or not n:
            return Verdict(ABSTAIN, 0.0, None, {}, counts_estimation, n, options.alpha,
                           missing="no clean label or no estimation samples")
        label, radius, p_lower = _certify_candidate(samples.clean_label, counts_estimation, n, sigma, options.alpha)
        return Verdict(label, radius, p_lower, {}, counts_estimation, n, options.alpha)


class SequentialMode(Mode):
    """Rounds of estimation samples with early stopping; alpha spent over the plan's looks (robust_api.sequential)."""

    name = "sequential"
    fixed_n = False

    def plan(self, params: CertifyParams):
        """The plan of looks: budget `max_queries` (default n0 + n, what fixed mode spends). ConfigError if invalid."""
        from robust_api.sequential import SequentialPlan

        budget = params.max_queries if params.max_queries is not None else params.n0 + params.n
        try:
            return SequentialPlan(budget, params.alpha, params.sigma, params.target_radius)
        except ValueError as exc:
            raise ConfigError(f"sequential plan: {exc}") from None

    def check(self, params: CertifyParams) -> None:
        super().check(params)
        self.plan(params)

    def looks(self, params: CertifyParams) -> tuple[int, ...]:
        return tuple(self.plan(params).looks)

    def log_extra(self, params: CertifyParams) -> dict[str, Any]:
        return {"mode": self.name, "alpha": params.alpha, "plan": self.plan(params).to_dict()}

    def options_from_log(self, alpha: float, plan: Mapping[str, Any] | None) -> ModeOptions:
        # the alpha is the plan's, as spent online: a sequential log cannot be recounted at another level
        return ModeOptions(float(plan["alpha"]) if isinstance(plan, Mapping) and "alpha" in plan else alpha, plan)

    def certify(self, options: ModeOptions, sigma: float, samples: Samples) -> Verdict:
        """Re-run the plan over the estimation labels in index order: the online stop and certificate exactly.
        ConfigError without a plan, ValueError for an unreadable one."""
        from robust_api.sequential import SequentialPlan, certify_sequential

        if options.plan is None:
            raise ConfigError("no sequential plan in the log; replay it with --mode fixed or clean, "
                              "or log it with --mode sequential")
        try:
            plan = SequentialPlan.from_dict(options.plan)
        except (ValueError, KeyError, TypeError) as exc:
            raise LogError(None, None, f"unreadable sequential plan: {exc}") from None
        if samples.clean_label is None:
            return Verdict(ABSTAIN, 0.0, None, {}, {}, 0, plan.alpha, missing="no clean label",
                           extra={"plan": plan.to_dict()})
        outcome = certify_sequential(plan, samples.clean_label, samples.estimation)
        label, radius = outcome.as_tuple()
        return Verdict(label, radius, outcome.decision.p_lower, {}, outcome.counts, outcome.n_used, plan.alpha,
                       complete=outcome.complete, reason=outcome.decision.reason, extra={"plan": plan.to_dict()})

    def calls_per_image(self, n: int, n0: int = 20) -> int:
        return 1 + n  # n is the budget (max_queries) here


def _certify_candidate(candidate: str, counts_estimation: Mapping[str, int], n: int, sigma: float, alpha: float):
    """(label or ABSTAIN, radius, p_lower) for a candidate fixed independently of the estimation samples."""
    label, radius = smoothing.certify_with_candidate(candidate, counts_estimation, sigma, alpha)
    return label, radius, smoothing.lower_confidence_bound(counts_estimation.get(candidate, 0), n, alpha)


MODES: dict[str, Mode] = {m.name: m for m in (FixedMode(), CleanMode(), SequentialMode())}


def mode_names() -> tuple[str, ...]:
    return tuple(MODES)


def get_mode(name: str) -> Mode:
    """The mode called `name`; ConfigError listing the known ones otherwise."""
    try:
        return MODES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown mode {name!r}; choose one of {', '.join(MODES)}") from None
