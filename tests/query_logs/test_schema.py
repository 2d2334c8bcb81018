"""QueryRecord validation and the sample cache key."""
from __future__ import annotations

import json

import pytest

from robust_api.errors import LogError
from robust_api.query_logs import SCHEMA_VERSION, QueryRecord, SampleKey, sample_key, settings_key


def make_record(**overrides) -> QueryRecord:
    fields = dict(
        run="run-1", image="ab" * 32, provider="aws", model_version="3.0", settings={"MaxLabels": 10},
        sigma=0.25, denoiser={"name": "dncnn", "sha256": "cd" * 32}, seed=7, index=3, phase="estimation",
        response={"Labels": [{"Name": "Cat", "Confidence": 99.1}]}, label="cat", latency_ms=12.5, attempts=2,
        ts=1700000000.5, extra={"note": "x"},
    )
    fields.update(overrides)
    return QueryRecord(**fields)


def test_json_line_round_trips_every_field():
    record = make_record()
    line = record.to_json_line()
    assert line.endswith("\n") and line.count("\n") == 1
    assert QueryRecord.from_dict(json.loads(line)) == record
    assert json.loads(line)["schema"] == SCHEMA_VERSION == 1


def test_optional_fields_take_documented_defaults():
    d = {"schema": 1, "run": "r", "image": "i", "provider": "google", "sigma": 0.5, "index": 0,
         "phase": "clean", "response": {}}
    record = QueryRecord.from_dict(d)
    assert record.settings == {} and record.extra == {} and record.attempts == 1
    assert record.denoiser is None and record.seed is None and record.model_version is None


@pytest.mark.parametrize("missing", ["schema", "run", "image", "provider", "sigma", "index", "phase", "response"])
def test_missing_required_field_names_file_line_and_field(missing):
    d = json.loads(make_record().to_json_line())
    del d[missing]
    with pytest.raises(LogError) as err:
        QueryRecord.from_dict(d, "runs/a.jsonl", 17)
    assert err.value.path == "runs/a.jsonl" and err.value.line == 17
    assert repr(missing) in str(err.value) and str(err.value).startswith("runs/a.jsonl:17: ")


@pytest.mark.parametrize(
    "field,value",
    [
        ("index", "3"), ("index", -1), ("index", True), ("index", 1.0), ("sigma", "0.25"), ("sigma", -0.1),
        ("sigma", float("nan")), ("phase", "warmup"), ("phase", ["clean"]), ("response", [1, 2]),
        ("seed", 1.5), ("denoiser", {"name": "dncnn"}), ("denoiser", "abc"), ("settings", []),
        ("attempts", None), ("label", 5), ("extra", "x"), ("run", None), ("model_version", 3),
    ],
)
def test_ill_typed_field_is_named(field, value):
    d = json.loads(make_record().to_json_line())
    d[field] = value
    with pytest.raises(LogError) as err:
        QueryRecord.from_dict(d, "x.jsonl", 2)
    assert f"field {field!r}" in str(err.value) and err.value.line == 2


def test_unknown_schema_version_is_rejected_clearly():
    d = json.loads(make_record().to_json_line())
    d["schema"] = 2
    with pytest.raises(LogError, match=r"x.jsonl:4: schema version 2 is not supported \(this robust-api reads 1\)"):
        QueryRecord.from_dict(d, "x.jsonl", 4)


def test_non_object_line_is_rejected():
    with pytest.raises(LogError, match="expected a JSON object, got array"):
        QueryRecord.from_dict([1], "x.jsonl", 1)


def test_unknown_keys_are_ignored_for_forward_compatibility():
    d = json.loads(make_record().to_json_line())
    d["added_later"] = {"x": 1}
    assert QueryRecord.from_dict(d) == make_record()


def test_key_identifies_sample_and_settings_are_canonical():
    a = make_record(settings={"b": 1, "a": 2})
    b = make_record(settings={"a": 2, "b": 1}, label="other", latency_ms=1.0, run="another-run")
    assert a.key() == b.key()  # run/label/latency are not part of what was paid for
    assert isinstance(a.key(), SampleKey) and hash(a.key()) == hash(b.key())
    assert a.key().settings == settings_key({"a": 2, "b": 1}) == '{"a":2,"b":1}'
    for change in (dict(index=4), dict(phase="selection"), dict(sigma=0.5), dict(seed=8), dict(provider="google"),
                   dict(denoiser=None), dict(image="ff" * 32), dict(settings={"MaxLabels": 5})):
        assert make_record(**change).key() != a.key(), change


def test_sample_key_matches_record_key_for_engine_lookups():
    r = make_record()
    assert sample_key(r.provider, r.settings, r.image, r.sigma, r.denoiser, r.seed, r.index, r.phase) == r.key()
    assert sample_key(r.provider, settings_key(r.settings), r.image, 0.25, "cd" * 32, 7, 3, "estimation") == r.key()


def test_clean_key_is_shared_across_sigma_denoiser_and_seed():
    a = make_record(phase="clean", index=0, sigma=0.25, seed=1)
    b = make_record(phase="clean", index=0, sigma=0.5, seed=2, denoiser=None)
    assert a.key() == b.key()


def test_record_holds_no_image_bytes_or_credentials_fields():
    names = set(make_record().to_dict())
    assert not names & {"image_bytes", "content", "key", "api_key", "token", "credentials"}
