"""The emulators' labeller: the shared ImageNet classifier's top-k and the hand-written ancestor chains.
(The classifier itself is tested in tests/test_classifiers.py.)"""
from __future__ import annotations

import collections

import pytest
from PIL import Image

from robust_api import classifiers
from robust_api.providers.emulator import labeller as L

skimage_data = pytest.importorskip("skimage.data")


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)())


def test_cat_photo_is_labelled_a_cat_with_softmax_probabilities():
    labels = L.default_labeller()(photo("chelsea"))
    assert labels[0][0] in {"tabby cat", "tiger cat", "Egyptian cat"}
    scores = [s for _, s in labels]
    assert scores == sorted(scores, reverse=True)
    assert 0.0 < sum(scores) <= 1.0 + 1e-6
    assert len(labels) == L.DEFAULT_TOP_K


def test_ancestors_like_rekognition_parents():
    assert L.ancestors_of("tabby cat") == ["cat", "feline", "carnivore", "mammal", "animal"]
    assert L.ancestors_of("sports car") == ["car", "motor vehicle", "vehicle"]
    assert L.ancestors_of("golden retriever")[:2] == ["dog", "canine"]
    assert L.ancestors_of("espresso") == ["beverage"]
    assert L.ancestors_of("not a class") == []
    assert L.ancestors_of("web site") == []  # documented: not every class has a group


def test_ancestor_table_is_disjoint_and_never_reuses_a_class_name():
    counts = collections.Counter(i for g in L._ANCESTOR_TABLE for i in g.indices)
    assert max(counts.values()) == 1
    assert all(0 <= i < 1000 for i in counts)
    ancestor_names = {a for g in L._ANCESTOR_TABLE for a in g.chain}
    assert not ancestor_names & set(L.imagenet_names())
    for g in L._ANCESTOR_TABLE:
        assert len(set(g.chain)) == len(g.chain)


def test_labeller_builds_on_the_one_shared_classifier():
    assert L.default_labeller().model_version == classifiers.imagenet_classifier().model_version
    # names older callers import from here are the classifiers module's own objects, not copies
    for name in ("TorchClassifier", "imagenet_classifier", "imagenet_names", "classify_batch", "DEFAULT_TOP_K"):
        assert getattr(L, name) is getattr(classifiers, name)
