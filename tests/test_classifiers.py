"""The offline pretrained ImageNet classifiers: one loader, loaded once, real predictions, unique readable names."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from robust_api import classifiers as C
from robust_api.errors import ConfigError

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite_pytorch")


@pytest.fixture(scope="module")
def classifier() -> C.TorchClassifier:
    return C.imagenet_classifier()


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)())


def test_names_are_unique_readable_and_follow_the_documented_rule():
    names = C.imagenet_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[281] == "tabby cat"  # "tabby, tabby cat": the synonym that extends the first one
    assert names[282] == "tiger cat" and names[285] == "Egyptian cat"  # WordNet casing kept
    assert names[4] == "hammerhead shark"
    assert names[0] == "tench"  # "tench, Tinca tinca": no extension, first synonym
    assert (names[134], names[517]) == ("crane (bird)", "crane (machine)")
    assert all(n == n.strip() and "," not in n and "\t" not in n for n in names)


def test_probabilities_sum_to_one_per_image(classifier):
    probs = classifier.probabilities([photo("coffee"), photo("chelsea")])
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_batch_equals_one_by_one(classifier):
    images = [photo("coffee"), photo("chelsea"), photo("astronaut")]
    batched = C.classify_batch(images, top_k=3)
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


def test_torch_classifier_wraps_any_module_and_checks_output_width():
    class MeanColour(torch.nn.Module):
        def forward(self, x):  # logits = mean R, G, B: the most intense channel wins
            return x.mean(dim=(2, 3)) * 10

    clf = C.TorchClassifier(MeanColour(), ["red", "green", "blue"])
    red = Image.new("RGB", (8, 8), (250, 0, 0))
    blue = Image.new("RGB", (16, 4), (0, 0, 250))  # different size: run in its own sub-batch
    out = clf.classify_batch([red, blue], top_k=1)
    assert [o[0][0] for o in out] == ["red", "blue"]
    bad = C.TorchClassifier(MeanColour(), ["a", "b"])
    with pytest.raises(ConfigError, match="expected"):
        bad.classify_batch([red])
    with pytest.raises(ConfigError, match="unique"):
        C.TorchClassifier(MeanColour(), ["a", "a", "b"])


def test_missing_demo_extra_is_a_config_error_naming_the_install(monkeypatch):
    # A None entry in sys.modules makes the import fail exactly as an uninstalled package does.
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ConfigError, match=r"robust-api\[demo\]"):
        C._require("efficientnet_lite_pytorch")


def test_one_loader_reads_the_weights_once_and_hands_out_independent_copies(classifier):
    C.efficientnet_lite(0)
    before = C._pretrained.cache_info()
    a, b = C.efficientnet_lite(0), C.efficientnet_lite(0)
    after = C._pretrained.cache_info()
    assert after.misses == before.misses and after.hits >= before.hits + 2  # no second read of the wheel
    assert a is not b and a is not classifier.module
    first_a, first_b = next(a.parameters()), next(b.parameters())
    assert torch.equal(first_a, first_b) and first_a.data_ptr() != first_b.data_ptr()
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    with torch.no_grad():
        first_a.add_(1.0)  # one caller changing its copy leaves the others alone
    assert not torch.equal(first_a, first_b)
    assert C.imagenet_classifier() is classifier  # the labeller itself is built once


def test_classifier_version_names_the_weight_file(classifier):
    assert classifier.model_version == C.weights_version(0) == "efficientnet-lite0-57934424"


def test_the_surrogate_is_the_same_pretrained_network(classifier):
    from robust_api.denoisers.surrogates import load_surrogate

    surrogate = load_surrogate("efficientnet-lite0")
    shared = dict(classifier.module.state_dict())
    for name, tensor in surrogate.model.state_dict().items():
        assert torch.equal(tensor, shared[name]), name


def test_unknown_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="efficientnet-lite7"):
        C.efficientnet_lite(7)


def test_classifiers_import_neither_providers_nor_denoisers():
    import subprocess

    code = (
        "import sys, robust_api.classifiers; "
        "bad = [m for m in sys.modules if m.startswith(('robust_api.providers', 'robust_api.denoisers'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
