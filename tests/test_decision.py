"""Decision rules: every provider shape, deterministic ties, case folding, empty responses, malformed input."""
from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robust_api.decision import (
    NO_LABEL,
    OTHER,
    LabelPresent,
    ScoredLabel,
    Top1,
    Vocabulary,
    decide,
    parse_labels,
    rule_from_spec,
)
from robust_api.errors import ConfigError, ResponseFormatError

AZURE_V32 = {
    "tags": [{"name": "grass", "confidence": 0.91}, {"name": "Cat", "confidence": 0.998}, {"name": "indoor", "confidence": 0.5}],
    "requestId": "r-1",
    "modelVersion": "2021-05-01",
}
AZURE_V40 = {
    "modelVersion": "2023-10-01",
    "tagsResult": {"values": [{"name": "outdoor", "confidence": 0.7}, {"name": " Dog ", "confidence": 0.95}]},
}
GOOGLE = {
    "labelAnnotations": [
        {"mid": "/m/01", "description": "Whiskers", "score": 0.88, "topicality": 0.88},
        {"mid": "/m/02", "description": "Cat", "score": 0.97, "topicality": 0.97},
    ]
}
# AWS reports every ancestor of a detected label at exactly the label's confidence.
AWS = {
    "Labels": [
        {"Name": "Transportation", "Confidence": 99.02592468261719, "Parents": []},
        {"Name": "Vehicle", "Confidence": 99.02592468261719, "Parents": [{"Name": "Transportation"}]},
        {"Name": "Automobile", "Confidence": 99.02592468261719, "Parents": [{"Name": "Vehicle"}, {"Name": "Transportation"}]},
        {"Name": "Car", "Confidence": 99.02592468261719, "Parents": [{"Name": "Vehicle"}, {"Name": "Transportation"}]},
        {"Name": "Wheel", "Confidence": 91.5, "Parents": [{"Name": "Machine"}]},
    ],
    "LabelModelVersion": "3.0",
}
CLARIFAI = {
    "status": {"code": 10000, "description": "Ok"},
    "outputs": [
        {
            "status": {"code": 10000},
            "data": {"concepts": [{"id": "ai_1", "name": "no person", "value": 0.97}, {"id": "ai_2", "name": "Coffee", "value": 0.99}]},
        }
    ],
}
LOCAL = {"predictions": [{"label": "tabby", "score": 0.6}, {"label": "Egyptian cat", "score": 0.3}], "modelVersion": "x"}


@pytest.mark.parametrize(
    "response, provider, top",
    [
        (AZURE_V32, "azure", "cat"),
        (AZURE_V40, "azure", "dog"),
        (GOOGLE, "google", "cat"),
        (AWS, "aws", "automobile"),
        (CLARIFAI, "clarifai", "coffee"),
        (LOCAL, "local", "tabby"),
    ],
)
def test_top1_reads_each_provider_shape_with_and_without_provider_hint(response, provider, top):
    assert Top1()(response, provider) == top
    assert Top1()(response) == top
    assert decide(response, provider=provider) == top


def test_scores_are_normalised_and_names_case_folded():
    aws = parse_labels(AWS, "aws")
    assert all(0.0 <= s.score <= 1.0 for s in aws)
    assert aws[0].score == pytest.approx(0.9902592468261719)
    assert parse_labels(AZURE_V40)[0] == ScoredLabel("dog", 0.95)
    assert [s.name for s in parse_labels(LOCAL)] == ["tabby", "egyptian cat"]


def test_aws_equal_confidence_ancestors_never_win_the_tie():
    ranked = parse_labels(AWS, "aws")
    # Car and Automobile are siblings (both leaves): smallest name first; their ancestors come after them.
    assert [s.name for s in ranked[:4]] == ["automobile", "car", "transportation", "vehicle"]
    only_chain = {"Labels": [entry for entry in AWS["Labels"] if entry["Name"] != "Automobile"]}
    assert Top1()(only_chain, "aws") == "car"


def test_tie_break_does_not_depend_on_the_order_the_provider_sent():
    entries = list(AWS["Labels"])
    rng = random.Random(7)
    for _ in range(20):
        rng.shuffle(entries)
        assert Top1()({"Labels": entries}, "aws") == "automobile"
    tied = [{"name": n, "confidence": 0.8} for n in ("zebra", "Apple", "mango")]
    for _ in range(10):
        rng.shuffle(tied)
        assert Top1()({"tags": tied}) == "apple"


def test_index_zero_is_never_trusted_for_unsorted_responses():
    google = {"labelAnnotations": [{"description": "Sky", "score": 0.5}, {"description": "Rocket", "score": 0.93}]}
    assert Top1()(google, "google") == "rocket"
    assert Top1()(AZURE_V32) == "cat"


def test_duplicate_names_keep_their_best_score():
    resp = {"tags": [{"name": "Cat", "confidence": 0.4}, {"name": "cat", "confidence": 0.9}, {"name": "dog", "confidence": 0.8}]}
    assert parse_labels(resp) == [ScoredLabel("cat", 0.9), ScoredLabel("dog", 0.8)]


@pytest.mark.parametrize(
    "response, provider",
    [
        ({}, None),
        ({}, "google"),  # Google omits labelAnnotations when it finds none
        ({"tags": []}, "azure"),
        ({"tagsResult": {"values": []}}, "azure"),
        ({"tagsResult": {}}, "azure"),
        ({"labelAnnotations": []}, "google"),
        ({"Labels": [], "LabelModelVersion": "3.0"}, "aws"),
        ({"outputs": []}, "clarifai"),
        ({"outputs": [{"status": {"code": 10000}, "data": {}}]}, "clarifai"),
        ({"outputs": [{"data": {"concepts": []}}]}, "clarifai"),
        ({"predictions": [], "modelVersion": "m"}, "local"),
        ({"tags": None}, None),
        ({"requestId": "abc", "metadata": {"width": 3}}, None),
    ],
)
def test_label_less_responses_are_their_own_class(response, provider):
    assert parse_labels(response, provider) == []
    assert Top1()(response, provider) == NO_LABEL
    assert Vocabulary({"cat": ["kitten"]})(response, provider) == NO_LABEL


@pytest.mark.parametrize(
    "response",
    [
        [],
        "cat",
        None,
        {"tags": [{"confidence": 0.9}]},  # no name
        {"tags": [{"name": 3, "confidence": 0.9}]},
        {"tags": [{"name": "  ", "confidence": 0.9}]},
        {"tags": [{"name": "cat", "confidence": "0.9"}]},
        {"tags": [{"name": "cat", "confidence": float("nan")}]},
        {"tags": [{"name": "cat", "confidence": True}]},
        {"tags": [{"name": "cat", "confidence": 1.5}]},
        {"tags": [{"name": "cat"}]},  # Azure always sends a confidence
        {"Labels": [{"Name": "Car", "Confidence": 101.0}]},
        {"Labels": [{"Name": "Car", "Confidence": 90.0, "Parents": [{"Nom": "x"}]}]},
        {"tags": {"name": "cat"}},
        {"tags": ["cat"]},
        {"outputs": [{"status": {"code": 11005, "description": "throttled"}}]},
        {"error": {"code": 3, "message": "Bad image data."}},
        {"tags": [], "labelAnnotations": []},
        {"predictions": [{"label": "cat", "score": 10**400}]},
    ],
)
def test_malformed_responses_raise_response_format_error(response):
    with pytest.raises(ResponseFormatError):
        parse_labels(response)
    with pytest.raises(ResponseFormatError):
        Top1()(response)


def test_a_response_of_another_provider_is_refused():
    with pytest.raises(ResponseFormatError):
        parse_labels(GOOGLE, "aws")


def test_unknown_provider_is_a_config_error():
    with pytest.raises(ConfigError):
        parse_labels(GOOGLE, "bing")


def test_protobuf_json_omitting_a_zero_score_reads_as_zero():
    resp = {"labelAnnotations": [{"description": "Cat"}, {"description": "Dog", "score": 0.2}]}
    assert Top1()(resp, "google") == "dog"


# -- vocabulary ----------------------------------------------------------------------------------------


def test_vocabulary_maps_the_best_ranked_mapped_label_and_sends_the_rest_to_other():
    vocab = Vocabulary({"feline": ["cat", "Tabby  Cat", "kitten"], "canine": ["dog", "puppy"]})
    assert vocab(AZURE_V32) == "feline"  # "cat" outranks "grass"
    assert vocab(AZURE_V40) == "canine"
    assert vocab({"tags": [{"name": "grass", "confidence": 0.99}, {"name": "tabby cat", "confidence": 0.4}]}) == "feline"
    assert vocab({"tags": [{"name": "grass", "confidence": 0.99}]}) == OTHER
    assert Vocabulary({"feline": ["cat"]}, other="unknown")({"tags": [{"name": "sky", "confidence": 1}]}) == "unknown"
    assert vocab({}) == NO_LABEL


def test_vocabulary_class_name_is_its_own_synonym_and_ties_use_the_ranking():
    vocab = Vocabulary({"car": [], "transportation": ["vehicle"]})
    assert vocab(AWS, "aws") == "car"  # car beats its tied ancestors


def test_vocabulary_from_file(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"feline": ["cat"], "canine": ["dog"]}))
    vocab = Vocabulary.from_file(path)
    assert vocab(GOOGLE) == "feline"
    assert vocab.name == f"vocab:{path}"
    spec_rule = rule_from_spec(f"vocab:{path}")
    assert spec_rule(AZURE_V40) == "canine"


@pytest.mark.parametrize(
    "content",
    ["not json", "[1, 2]", '{"cat": "kitten"}', '{"cat": [1]}', '{"a": ["x"], "b": ["X"]}', "{}", '{"None": ["empty"]}'],
)
def test_bad_vocabulary_file_is_a_config_error_naming_it(tmp_path, content):
    path = tmp_path / "bad-vocab.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="bad-vocab.json"):
        Vocabulary.from_file(path)


def test_missing_vocabulary_file_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.json"):
        rule_from_spec(f"vocab:{tmp_path / 'nowhere.json'}")


# -- label present -------------------------------------------------------------------------------------


def test_label_present_answers_both_sides():
    rule = LabelPresent("Cat", threshold=0.9)
    assert rule(AZURE_V32) == "cat"
    assert rule(GOOGLE, "google") == "cat"
    assert rule({"tags": [{"name": "cat", "confidence": 0.89}]}) == "not cat"
    assert rule(AWS, "aws") == "not cat"
    assert rule({}) == "not cat"  # binary by design: no labels means "not labelled cat"
    assert LabelPresent("cat", 0.0)({"tags": [{"name": "cat", "confidence": 0.0}]}) == "cat"


@pytest.mark.parametrize("label, threshold", [("", 0.5), ("cat", 1.5), ("cat", -0.1), ("cat", float("nan"))])
def test_label_present_rejects_bad_settings(label, threshold):
    with pytest.raises(ConfigError):
        LabelPresent(label, threshold)


def test_rule_specs():
    assert isinstance(rule_from_spec("top1"), Top1) and rule_from_spec("top1").name == "top1"
    rule = rule_from_spec("present:hot dog:0.7")
    assert (rule.label, rule.threshold) == ("hot dog", 0.7)
    assert rule_from_spec("present:cat").threshold == 0.5
    assert rule_from_spec("present:a:b").label == "a:b"
    for bad in ["", "top2", "vocab:", "present:", "present:cat:1.5", "top1:x"]:
        with pytest.raises(ConfigError):
            rule_from_spec(bad)


# -- fuzz: the only error a response can cause is ResponseFormatError ------------------------------------

json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
shape_keys = st.sampled_from(["tags", "tagsResult", "labelAnnotations", "Labels", "outputs", "predictions", "error"])
field_names = st.sampled_from(
    ["name", "confidence", "description", "score", "Name", "Confidence", "Parents", "value", "label", "values",
     "data", "concepts", "status", "code"]
)
shaped_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(field_names, inner, max_size=4),
    max_leaves=25,
)
shaped_responses = st.dictionaries(shape_keys, shaped_values, max_size=2)


def _only_format_errors(response, provider):
    for rule in (Top1(), Vocabulary({"cat": ["kitten"]}), LabelPresent("cat")):
        try:
            label = rule(response, provider)
        except ResponseFormatError:
            continue
        assert isinstance(label, str) and label


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from([None, "azure", "google", "aws", "clarifai", "local"]))
def test_arbitrary_json_only_ever_raises_response_format_error(response, provider):
    _only_format_errors(response, provider)


@settings(max_examples=400, deadline=None)
@given(shaped_responses, st.sampled_from([None, "azure", "google", "aws", "clarifai", "local"]))
def test_shape_like_garbage_only_ever_raises_response_format_error(response, provider):
    _only_format_errors(response, provider)
