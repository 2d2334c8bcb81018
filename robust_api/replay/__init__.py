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

Layout: `grouping` (records -> groups, in input order), `reading` (streaming and parallel reading of logs),
`recount` (each group through its mode's certify, as online), `reference` (the reference's offline facade).
"""
from __future__ import annotations

from robust_api.decision import resolve_rule
from robust_api.replay.grouping import Collector, GroupKey, GroupSamples
from robust_api.replay.reading import default_workers
from robust_api.replay.recount import ReplayOptions, certify_group, replay, replay_records
from robust_api.replay.reference import certify_responses, count_responses, predict_responses

__all__ = [
    "Collector", "GroupKey", "GroupSamples", "ReplayOptions", "certify_group", "certify_responses", "count_responses",
    "default_workers", "predict_responses", "replay", "replay_records", "resolve_rule",
]
