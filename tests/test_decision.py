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


def test_an_ancestor_loses_the_tie_even_when_its_name_sorts_first():
    labels = [{"Name": "Animal", "Confidence": 97.5, "Parents": []},
              {"Name": "Pet", "Confidence": 97.5, "Parents": [{"Name": "Animal"}]},
              {"Name": "Cat", "Confidence": 97.5, "Parents": [{"Name": "Pet"}, {"Name": "Animal"}]},
              {"Name": "Aardvark", "Confidence": 50.0, "Parents": [{"Name": "Animal"}]}]
    for order in (labels, labels[::-1]):
        assert Top1()({"Labels": order}, "aws") == "cat"
        assert [s.name for s in parse_labels({"Labels": order})] == ["cat", "animal", "pet", "aardvark"]
        assert Vocabulary({"mammal": ["animal", "cat"]})({"Labels": order}) == "mammal"
    assert Vocabulary({"animals": ["animal"], "pets": ["pet"]})({"Labels": labels}) == "animals"


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


# -- fast path == reference path -------------------------------------------------------------------------
# The rules and parse_labels read well-formed responses through a fast scan and fall back to the reference
# implementation for anything else; both must give the same labels, rankings and errors on every shape.

from robust_api import decision as decision_module  # noqa: E402

_NAMES = ["Cat", "Car", "Vehicle", "Transportation", "Automobile", "Dog", "hot  dog", "ß", "Sky", "Zebra",
          "apple", "Wheel", "Machine", "Pet", "Mammal", "Animal", "Plant", "Tree", "Grass", "Outdoors"]
_VARIANTS = [str, str.lower, str.upper, lambda n: f" {n} ", lambda n: n.replace(" ", "\t ")]
_BAD = [None, 3, "", "   ", True, [], {}, "0.9", float("nan"), float("inf"), -1.0, 101.0, 10**400]
_SHAPES = {  # shape -> (provider, wrap(entries), name field, score field, scale, score may be omitted)
    "azure_v32": ("azure", lambda e: {"tags": e, "modelVersion": "2021-05-01"}, "name", "confidence", 1, False),
    "azure_v40": ("azure", lambda e: {"tagsResult": {"values": e}}, "name", "confidence", 1, False),
    "google": ("google", lambda e: {"labelAnnotations": e}, "description", "score", 1, True),
    "aws": ("aws", lambda e: {"Labels": e, "LabelModelVersion": "3.0"}, "Name", "Confidence", 100, False),
    "clarifai": ("clarifai", lambda e: {"outputs": [{"status": {"code": 10000}, "data": {"concepts": e}}]},
                 "name", "value", 1, True),
    "local": ("local", lambda e: {"predictions": e, "modelVersion": "m"}, "label", "score", 1, False),
}


@st.composite
def _responses(draw):
    """A response of one of the six shapes: unsorted, mixed casing/whitespace, frequent exact score ties
    (AWS ancestors at their child's score), omitted protobuf zero scores, int scores, sometimes a
    duplicated name, sometimes one malformed value somewhere; with the right, no, or a wrong provider hint."""
    shape = draw(st.sampled_from(sorted(_SHAPES)))
    provider, wrap, name_field, score_field, scale, optional = _SHAPES[shape]
    names = draw(st.lists(st.sampled_from(_NAMES), unique=True, max_size=8))
    if names and draw(st.integers(0, 5)) == 0:  # the same name twice, maybe cased differently
        names.insert(draw(st.integers(0, len(names))), draw(st.sampled_from(names)))
    tie_scores = draw(st.lists(st.floats(0, 1), min_size=1, max_size=2))
    scores = [draw(st.sampled_from(tie_scores) | st.sampled_from(tie_scores) | st.floats(0, 1) | st.sampled_from([0, 1]))
              for _ in names]
    entries = []
    for name, score in zip(names, scores):
        entry = {name_field: draw(st.sampled_from(_VARIANTS))(name)}
        if not (optional and draw(st.integers(0, 5)) == 0):  # protobuf JSON omits a zero score
            entry[score_field] = score * scale if isinstance(score, float) else score * int(scale)
        if provider == "aws" and draw(st.integers(0, 3)):
            # AWS lists ancestors at their child's exact score: mostly pick parents among the tied names
            tied = [other for other, s in zip(names, scores) if s == score and other != name]
            pool = tied if tied and draw(st.integers(0, 3)) else names + ["Animal", "Vehicle"]
            parents = draw(st.lists(st.sampled_from(pool), max_size=3))
            entry["Parents"] = [{"Name": p} for p in parents] if draw(st.integers(0, 7)) else draw(st.sampled_from([None, []]))
        entry["extra"] = [1, {"x": None}]
        entries.append(entry)
    if entries and draw(st.integers(0, 4)) == 0:
        target = draw(st.sampled_from(_TARGETS))
        entries = _spoil(entries, draw(st.integers(0, len(entries) - 1)), target, draw(st.sampled_from(_BAD)),
                         name_field, score_field)
    response = wrap(entries)
    hint = draw(st.sampled_from([None, provider, provider, provider, "google" if provider != "google" else "aws"]))
    return response, hint


_TARGETS = ["list", "entry", "name", "score", "no score", "parents", "[parent]", "parent name", "parent key"]


def _spoil(entries, i, target, value, name_field, score_field):
    """`entries` with one malformed value put at `target` of entry i."""
    if target == "list":
        return value
    entries = [dict(e) for e in entries]
    if target == "entry":
        entries[i] = value
    elif target == "name":
        entries[i][name_field] = value
    elif target == "score":
        entries[i][score_field] = value
    elif target == "no score":
        entries[i].pop(score_field, None)
    else:
        entries[i]["Parents"] = {"parents": value, "[parent]": [value], "parent name": [{"Name": value}],
                                 "parent key": [{"Nom": value}]}[target]
    return entries


_HIERARCHY = {"Cat": ["Pet", "Mammal"], "Dog": ["Pet", "Mammal"], "Pet": ["Animal"], "Mammal": ["Animal"],
              "Aardvark": ["Mammal"], "Car": ["Vehicle"], "Automobile": ["Vehicle"], "Vehicle": ["Transportation"],
              "Wheel": ["Machine"], "Bee": ["Insect"], "Insect": ["Animal"]}


@st.composite
def _aws_hierarchies(draw):
    """AWS DetectLabels bodies as AWS builds them: each detected label followed by all its ancestors at
    exactly its confidence (so ancestors tie with their descendants), listed in any order."""
    leaves = draw(st.lists(st.sampled_from(sorted(_HIERARCHY)), unique=True, min_size=1, max_size=4))
    levels = draw(st.lists(st.floats(50, 100), min_size=1, max_size=2))
    entries: dict[str, dict] = {}
    for leaf in leaves:
        confidence = draw(st.sampled_from(levels))
        todo = [leaf]
        while todo:
            name = todo.pop()
            parents = _HIERARCHY.get(name, [])
            if name not in entries or entries[name]["Confidence"] < confidence:
                entries[name] = {"Name": name, "Confidence": confidence, "Parents": [{"Name": p} for p in parents]}
            todo.extend(parents)
    order = draw(st.permutations(list(entries.values())))
    return {"Labels": order, "LabelModelVersion": "3.0"}


@settings(max_examples=300, deadline=None)
@given(_aws_hierarchies(), st.sampled_from([None, "aws"]))
def test_fast_path_equals_the_reference_on_aws_ancestor_ties(response, provider):
    _assert_fast_equals_reference(response, provider)
    assert decision_module._scan(response, provider) is not None
    top = max(e["Confidence"] for e in response["Labels"])
    tied = [e for e in response["Labels"] if e["Confidence"] == top]
    ancestors = {p["Name"].casefold() for e in tied for p in e["Parents"]}
    winner = Top1()(response, provider)
    assert winner in {e["Name"].casefold() for e in tied} - ancestors  # a tied ancestor never wins


def _outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except (ResponseFormatError, ConfigError) as exc:
        return type(exc).__name__, str(exc)


_VOCAB = Vocabulary({"feline": ["cat", "ss"], "vehicle": ["car", "automobile"], "transportation": [], "sky": []})
_RULES = [Top1(), _VOCAB, LabelPresent("cat", 0.0), LabelPresent("car", 0.5), LabelPresent("hot dog", 0.99)]


def _assert_fast_equals_reference(response, provider):
    for rule in _RULES:
        assert _outcome(rule, response, provider) == _outcome(rule._reference, response, provider), rule
    assert _outcome(parse_labels, response, provider) == _outcome(
        decision_module._reference_parse_labels, response, provider
    )


@settings(max_examples=500, deadline=None)
@given(_responses())
def test_fast_path_equals_the_reference_on_every_shape(case):
    _assert_fast_equals_reference(*case)


def test_fast_path_equals_the_reference_for_every_malformed_value_in_every_place():
    base = [("Cat", 0.9, ["Animal"]), ("Animal", 0.9, []), ("Sky", 0.4, [])]
    for provider, wrap, name_field, score_field, scale, _ in _SHAPES.values():
        entries = [{name_field: n, score_field: s * scale, "Parents": [{"Name": p} for p in ps]} for n, s, ps in base]
        for target in _TARGETS:
            for value in _BAD:
                for i in range(len(entries)):
                    response = wrap(_spoil(entries, i, target, value, name_field, score_field))
                    _assert_fast_equals_reference(response, provider)
                    _assert_fast_equals_reference(response, None)


@settings(max_examples=150, deadline=None)
@given(shaped_responses, st.sampled_from([None, "azure", "google", "aws", "clarifai", "local"]))
def test_fast_path_equals_the_reference_on_shape_like_garbage(response, provider):
    _assert_fast_equals_reference(response, provider)


@pytest.mark.parametrize("response, provider", [(AZURE_V32, "azure"), (AZURE_V40, None), (GOOGLE, "google"),
                                                (AWS, "aws"), (CLARIFAI, "clarifai"), (LOCAL, "local")])
def test_well_formed_responses_take_the_fast_path(response, provider):
    scanned = decision_module._scan(response, provider)
    assert scanned is not None and scanned[0]
    _assert_fast_equals_reference(response, provider)


def test_duplicated_names_take_the_reference_path_and_merge_parents_as_it_does():
    # The reference keeps the best score and merges parents in the provider's order; the fast path defers.
    resp = {"Labels": [{"Name": "Car", "Confidence": 50.0, "Parents": [{"Name": "Cat"}]},
                       {"Name": "car", "Confidence": 90.0},
                       {"Name": "Cat", "Confidence": 90.0}]}
    assert decision_module._scan(resp, "aws") is None
    assert Top1()(resp, "aws") == "car"  # cat is car's (merged) parent at the tied score
    _assert_fast_equals_reference(resp, "aws")


def test_name_cache_is_bounded_and_does_not_change_results(monkeypatch):
    monkeypatch.setattr(decision_module, "_NAME_CACHE_MAX", 4)
    monkeypatch.setattr(decision_module, "_NAME_CACHE", {})
    for i in range(20):
        resp = {"tags": [{"name": f"Label {i} ", "confidence": 0.5}, {"name": f"label {i + 1}", "confidence": 0.5}]}
        assert Top1()(resp) == min(f"label {i}", f"label {i + 1}")
        assert len(decision_module._NAME_CACHE) <= 4
