"""How many logged samples a replayed fixed-N certificate uses: the run's planned count, never a killed run's rest.

Fixed-N runs log their planned `n0` / `n` with every record (modes.Mode.log_extra). A run killed mid-image
leaves fewer samples than it planned; certifying on them would print a certificate the run never made (at a
smaller N than the one stated). So replay uses, per phase, the largest planned count the log fills — a log
extended by a later run with a larger N still replays at the earlier N until the larger one is complete — and
reports an image whose every plan is unfilled as incomplete (resume it by rerunning its certify command).
Logs without planned counts (older versions, legacy imports) keep every logged sample, as before.
"""
from __future__ import annotations

import logging
from typing import Any, Collection, Mapping

__all__ = ["PLANNED_KEYS", "planned_count", "usable_count", "warn_incomplete"]

log = logging.getLogger("robust_api.replay")

PLANNED_KEYS = {"selection": "n0", "estimation": "n"}  # phase -> the `extra` key of its planned sample count


def planned_count(extra: Mapping[str, Any] | None, phase: str) -> int | None:
    """The planned sample count a record of `phase` carries in its `extra`: a positive int, else None (absent,
    another phase, bool or junk)."""
    value = extra.get(PLANNED_KEYS.get(phase, "")) if extra else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def usable_count(planned: Collection[int], available: int, ends: Collection[int] | None = None) -> int | None:
    """The number of samples to certify on, given the planned counts logged for a phase.

    `available`: how many samples (from index 0, without gaps) the log holds; `ends`: for count records, the
    sample counts at which a logged range ends (a range's counts cannot be split), None when every count is
    possible. No plans logged: `available` (every sample). Otherwise the largest plan <= available that ends
    on a range end, or None when the log fills none of them (the image is incomplete).
    """
    if not planned:
        return available
    filled = [p for p in planned if p <= available and (ends is None or p in ends)]
    return max(filled) if filled else None


def warn_incomplete(image: str, sigma: float, available: int, planned: Collection[int], phase: str) -> None:
    """The warning for a group left out because its run stopped before any planned count was logged."""
    log.warning("image %s (sigma %g): %d of the %s %s samples its run planned are in the log (a run stopped "
                "mid-image); not certified: rerun its certify command to complete it", image[:16], sigma, available,
                " or ".join(f"{p:,}" for p in sorted(planned)), phase)
