"""Result objects (Certificate, Prediction) and Cohen-format results TSV I/O.

The TSV header is exactly Cohen et al.'s `idx	label	predict	radius	correct	time`, so tables written here
are read by other randomized-smoothing tools and `robust-api report` reads theirs.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from robust_api.errors import LogError

ABSTAIN = -1  # the reference implementation's abstain class; kept for its tuple-returning signatures

TSV_HEADER = ("idx", "label", "predict", "radius", "correct", "time")


@dataclass
class Certificate:
    """A certified prediction for one image.

    `label` is the certified class, or None when the smoothed classifier abstains (then `radius_l2` is 0.0).
    With probability >= 1 - alpha over the noise, `label` is the smoothed classifier's prediction everywhere
    within L2 distance `radius_l2` of the image. `clean_label` is the provider's label on the clean image
    (None when it was not queried). `true_label` is the image's known class (an ImageFolder image's subfolder),
    None when unknown. `correct` compares the certified label with the true label when it is known (Cohen et al.'s
    CIFAR/ImageNet tables), else with the clean label (the paper's API experiments, where the API's own clean
    answer is the reference).
    """

    image: str  # sha256 of the clean image (or a legacy id)
    label: str | None
    radius_l2: float
    sigma: float
    alpha: float
    mode: str = "fixed"
    name: str = ""  # path or caller-supplied name
    clean_label: str | None = None
    p_lower: float | None = None
    counts_selection: dict[str, int] = field(default_factory=dict)
    counts_estimation: dict[str, int] = field(default_factory=dict)
    calls_paid: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    true_label: str | None = None

    @property
    def abstained(self) -> bool:
        return self.label is None

    @property
    def correct(self) -> bool:
        reference = self.true_label if self.true_label is not None else self.clean_label
        return self.label is not None and reference is not None and self.label == reference

    def as_tuple(self) -> tuple[Any, float]:
        """The reference's (majority_class, radius) with abstain as (-1, 0.0)."""
        return (ABSTAIN, 0.0) if self.label is None else (self.label, self.radius_l2)


def certificate_from_verdict(
    verdict: Any,
    *,
    image: str,
    name: str,
    sigma: float,
    mode: str,
    clean_label: str | None,
    calls_paid: int = 0,
    cache_hits: int = 0,
    seconds: float = 0.0,
    extra: Mapping[str, Any] | None = None,
) -> Certificate:
    """The one place a Certificate is built: from a mode's Verdict (robust_api.modes) and where it came from.
    The certificate's alpha is the verdict's (a sequential plan's alpha, whatever was asked)."""
    return Certificate(
        image=image,
        name=name,
        label=None if verdict.label == ABSTAIN else verdict.label,
        radius_l2=float(verdict.radius),
        sigma=sigma,
        alpha=verdict.alpha,
        mode=mode,
        clean_label=clean_label,
        p_lower=verdict.p_lower,
        counts_selection=dict(verdict.counts_selection),
        counts_estimation=dict(verdict.counts_estimation),
        calls_paid=calls_paid,
        cache_hits=cache_hits,
        seconds=seconds,
        extra={**(extra or {}), **verdict.extra},
    )


@dataclass
class Prediction:
    """A smoothed prediction (no radius): `label` is None when the binomial test abstains."""

    label: str | None
    counts: dict[str, int]
    alpha: float
    image: str = ""
    name: str = ""

    def as_tuple(self) -> tuple[Any, dict[str, int]]:
        return (ABSTAIN if self.label is None else self.label, dict(self.counts))


def write_results_tsv(path: str | Path, certificates: Iterable[Certificate]) -> None:
    """Write Cohen-format results: idx, label (the true label when known, else the clean label), predict
    (-1 = abstain), radius, correct (0/1), time."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(TSV_HEADER)
        for idx, cert in enumerate(certificates):
            writer.writerow(
                [
                    idx,
                    _reference_label(cert),
                    ABSTAIN if cert.label is None else cert.label,
                    f"{cert.radius_l2:.6g}",
                    int(cert.correct),
                    f"{cert.seconds:.4f}",
                ]
            )


def _reference_label(cert: Certificate) -> str:
    if cert.true_label is not None:
        return cert.true_label
    return cert.clean_label if cert.clean_label is not None else ""


def with_true_labels(certificates: list[Certificate], true_labels: Sequence[str | None]) -> list[Certificate]:
    """Set each certificate's `true_label` from the list in the same order (None leaves it unknown)."""
    if len(certificates) != len(true_labels):
        raise ValueError(f"{len(certificates)} certificates but {len(true_labels)} true labels")
    for cert, truth in zip(certificates, true_labels):
        cert.true_label = truth
    return certificates


def read_results_tsv(path: str | Path) -> list[Mapping[str, str]]:
    """Read a Cohen-format TSV (ours or another tool's); raises LogError naming file and line when malformed."""
    path = Path(path)
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise LogError(path, None, f"cannot open results file: {exc.strerror}") from exc
    with fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = {"radius", "correct"} - set(reader.fieldnames or ())
        if missing:
            raise LogError(path, 1, f"not a Cohen-format results TSV: missing column(s) {sorted(missing)}")
        rows = []
        for lineno, row in enumerate(reader, start=2):
            try:
                float(row["radius"]), int(float(row["correct"]))
            except (TypeError, ValueError):
                raise LogError(path, lineno, "radius/correct are not numbers") from None
            rows.append(row)
        return rows


def certified_accuracy(certificates: Iterable[Certificate], radii: Iterable[float]) -> dict[float, float]:
    """Fraction of images certified correct with radius >= r, for each r (the paper's certified accuracy)."""
    certs = list(certificates)
    out = {}
    for r in radii:
        ok = sum(1 for c in certs if c.correct and c.radius_l2 >= r)
        out[r] = ok / len(certs) if certs else 0.0
    return out
