"""Certificates judged against the true class when it is known, else against the provider's clean label."""
from __future__ import annotations

import pytest

from robust_api.results import Certificate, read_results_tsv, with_true_labels, write_results_tsv


def cert(label, clean_label="tabby cat", true_label=None) -> Certificate:
    return Certificate(image="x", label=label, radius_l2=0.3, sigma=0.25, alpha=0.001, clean_label=clean_label,
                       true_label=true_label)


def test_a_known_true_class_decides_correctness_instead_of_the_clean_label():
    assert cert("cat", clean_label="dog", true_label="cat").correct
    assert not cert("dog", clean_label="dog", true_label="cat").correct
    assert cert("tabby cat").correct  # no true class: the clean label is the reference, as before
    assert not cert(None, true_label="cat").correct  # abstained


def test_the_tsv_label_column_holds_the_true_class_when_known(tmp_path):
    certs = with_true_labels([cert("cat", "dog"), cert("tabby cat")], ["cat", None])
    path = tmp_path / "r.tsv"
    write_results_tsv(path, certs)
    rows = read_results_tsv(path)
    assert [(r["label"], r["correct"]) for r in rows] == [("cat", "1"), ("tabby cat", "1")]
    with pytest.raises(ValueError):
        with_true_labels(certs, ["cat"])
