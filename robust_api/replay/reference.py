"""The reference implementation's offline facade: predict(logs) and certify(logs, noise_sd, N0, N, alpha) over
lists of raw responses (the reference's reduced shapes, native shapes, or our QueryRecords)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from robust_api import smoothing
from robust_api.decision import resolve_rule
from robust_api.errors import ConfigError, ResponseFormatError
from robust_api.query_logs.legacy import normalize_response
from robust_api.query_logs.schema import QueryRecord
from robust_api.replay.grouping import Rule


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
    return smoothing.count_labels(_labels_of(responses, resolve_rule(rule), provider))


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
    counts = count_responses(responses, rule, provider)
    if not counts:
        raise ConfigError("predict needs at least one response")
    return smoothing.smoothed_prediction(counts, alpha), counts


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
    if N0 < 1 or N < 1:
        raise ConfigError(f"N0 and N must be >= 1, got N0={N0}, N={N}")
    responses = list(responses)
    if len(responses) < N0 + N:
        raise ConfigError(f"certify needs N0 + N = {N0 + N} responses, got {len(responses)}")
    labels = _labels_of(responses[: N0 + N], resolve_rule(rule), provider)
    counts_selection = smoothing.count_labels(labels[:N0])
    counts_estimation = smoothing.count_labels(labels[N0:])
    try:
        return smoothing.certify(counts_selection, counts_estimation, noise_sd, alpha)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
