"""The offline ImageNet labeller: real pretrained predictions, unique readable names, ancestor chains."""
from __future__ import annotations

import collections
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from robust_api.errors import ConfigError
from robust_api.providers.emulator import labeller as L

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def classifier() -> L.TorchClassifier:
    return L.imagenet_classifier()


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)())


def test_names_are_unique_readable_and_follow_the_documented_rule():
    names = L.imagenet_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[281] == "tabby cat"  # "tabby, tabby cat": the synonym that extends the first one
    assert names[282] == "tiger cat" and names[285] == "Egyptian cat"  # WordNet casing kept
    assert names[4] == "hammerhead shark"
    assert names[0] == "tench"  # "tench, Tinca tinca": no extension, first synonym
    assert (names[134], names[517]) == ("crane (bird)", "crane (machine)")
    assert all(n == n.strip() and "," not in n and "\t" not in n for n in names)


def test_cat_photo_is_labelled_a_cat_with_softmax_probabilities(classifier):
    labels = L.default_labeller()(photo("chelsea"))
    assert labels[0][0] in {"tabby cat", "tiger cat", "Egyptian cat"}
    scores = [s for _, s in labels]
    assert scores == sorted(scores, reverse=True)
    assert 0.0 < sum(scores) <= 1.0 + 1e-6
    assert len(labels) == L.DEFAULT_TOP_K


def test_probabilities_sum_to_one_per_image(classifier):
    probs = classifier.probabilities([photo("coffee"), photo("chelsea")])
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_batch_equals_one_by_one(classifier):
    images = [photo("coffee"), photo("chelsea"), photo("astronaut")]
    batched = L.classify_batch(images, top_k=3)
    single = [classifier(im, top_k=3) for im in images]
    for b, s in zip(batched, single):
        assert [n for n, _ in b] == [n for n, _ in s]
        np.testing.assert_allclose([p for _, p in b], [p for _, p in s], rtol=1e-4, atol=1e-6)
    assert batched[0][0][0] == "espresso"


def test_greyscale_and_rgba_inputs_are_converted(classifier):
    grey = Image.fromarray(skimage_data.camera())
    rgba = photo("chelsea").convert("RGBA")
    out = classifier.classify_batch([grey, rgba], top_k=2)
    assert len(out) == 2 and all(len(x) == 2 for x in out)


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


def test_torch_classifier_wraps_any_module_and_checks_output_width():
    class MeanColour(torch.nn.Module):
        def forward(self, x):  # logits = mean R, G, B: the most intense channel wins
            return x.mean(dim=(2, 3)) * 10

    clf = L.TorchClassifier(MeanColour(), ["red", "green", "blue"])
    red = Image.new("RGB", (8, 8), (250, 0, 0))
    blue = Image.new("RGB", (16, 4), (0, 0, 250))  # different size: run in its own sub-batch
    out = clf.classify_batch([red, blue], top_k=1)
    assert [o[0][0] for o in out] == ["red", "blue"]
    bad = L.TorchClassifier(MeanColour(), ["a", "b"])
    with pytest.raises(ConfigError, match="expected"):
        bad.classify_batch([red])
    with pytest.raises(ConfigError, match="unique"):
        L.TorchClassifier(MeanColour(), ["a", "a", "b"])


def test_missing_demo_extra_is_a_config_error_naming_the_install(monkeypatch):
    # A None entry in sys.modules makes the import fail exactly as an uninstalled package does.
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ConfigError, match=r"robust-api\[demo\]"):
        L._require("efficientnet_lite_pytorch")
