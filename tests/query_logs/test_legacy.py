"""Import of the reference implementation's pickle logs, and the restricted unpickler that guards it."""
from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict

import pytest

from robust_api.errors import ConfigError, LogError
from robust_api.query_logs import (
    RestrictedUnpickler,
    import_legacy,
    legacy_records,
    load_legacy_pickle,
    normalize_response,
    read_log,
)


def google_response(*labels: tuple[str, float]) -> OrderedDict:
    return OrderedDict(labels)


def azure_response(*labels: tuple[str, float]) -> list:
    return [{"name": n, "confidence": c} for n, c in labels]


def aws_response(*labels: tuple[str, float]) -> list:
    return [{"Name": n, "Confidence": c, "Instances": [], "Parents": []} for n, c in labels]


def clarifai_response(*labels: tuple[str, float]) -> dict:
    concepts = [{"id": f"ai_{i}", "name": n, "value": v, "app_id": "main"} for i, (n, v) in enumerate(labels)]
    return {"status": {"code": 10000, "description": "Ok"}, "outputs": [{"id": "o1", "data": {"concepts": concepts}}]}


MAKERS = {"google": google_response, "azure": azure_response, "aws": aws_response, "clarifai": clarifai_response}


def write_pickle(path, clean, pred, protocol=pickle.HIGHEST_PROTOCOL) -> None:
    path.write_bytes(pickle.dumps({"ground_truth": [clean], "pred": pred}, protocol=protocol))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/robust_api_should_never_exist",))


def test_pickle_with_os_system_is_refused_and_never_executed(tmp_path):
    marker = "/tmp/robust_api_should_never_exist"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "pred_hist_0.pkl"
    path.write_bytes(pickle.dumps({"ground_truth": [_Exploit()], "pred": []}))
    with pytest.raises(LogError) as err:
        load_legacy_pickle(path)
    assert str(path) in str(err.value)
    assert f"refusing to unpickle {os.system.__module__}.system" in str(err.value)
    assert "legacy logs may contain only builtin containers" in str(err.value)
    assert not os.path.exists(marker)


def test_handcrafted_global_opcode_is_refused(tmp_path):
    path = tmp_path / "pred_hist_1.pkl"
    # protocol-0 program: GLOBAL os.system, then call it with ("true",) -- refused at GLOBAL
    path.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(LogError, match=r"refusing to unpickle os\.system"):
        load_legacy_pickle(path)
    for module, name in [("builtins", "eval"), ("builtins", "getattr"), ("subprocess", "Popen"), ("numpy", "ndarray")]:
        with pytest.raises(LogError, match=f"refusing to unpickle {module}.{name}"):
            RestrictedUnpickler(io.BytesIO(b""), "x").find_class(module, name)


def test_builtin_containers_and_ordered_dict_are_allowed_in_every_protocol(tmp_path):
    value = {"a": [1, 2.5, "x", None, True], "b": (1, 2), "c": {3}, "d": frozenset({4}), "o": OrderedDict(z=1, a=2)}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        loaded = load_legacy_pickle(path)
        assert loaded == value and list(loaded["o"]) == ["z", "a"]


def test_python2_style_builtin_names_are_mapped():
    up = RestrictedUnpickler(io.BytesIO(b""), "x")
    assert up.find_class("__builtin__", "unicode") is str
    assert up.find_class("__builtin__", "set") is set


def test_corrupt_and_non_pickle_files_are_log_errors(tmp_path):
    bad = tmp_path / "pred_hist_0.pkl"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(LogError, match="not a readable pickle"):
        load_legacy_pickle(bad)
    truncated = tmp_path / "pred_hist_1.pkl"
    truncated.write_bytes(pickle.dumps({"pred": [1, 2, 3]})[:-5])
    with pytest.raises(LogError, match="not a readable pickle"):
        load_legacy_pickle(truncated)
    with pytest.raises(LogError, match="is a directory"):
        load_legacy_pickle(tmp_path)


@pytest.mark.parametrize("provider", ["google", "azure", "aws", "clarifai"])
def test_each_provider_converts_to_its_native_shape(tmp_path, provider):
    make = MAKERS[provider]
    clean = make(("Cat", 0.97), ("Pet", 0.9))
    pred = [make(("Cat", 0.8), ("Dog", 0.1)) for _ in range(3)] + [make(("Dog", 0.7))] + [make()]
    path = tmp_path / "pred_hist_7.pkl"
    write_pickle(path, clean, pred)
    records = legacy_records(path, provider, n0=2, sigma=0.25)
    assert [(r.phase, r.index) for r in records] == [
        ("clean", 0), ("selection", 0), ("selection", 1), ("estimation", 0), ("estimation", 1), ("estimation", 2)
    ]
    assert all(r.image == "legacy:pred_hist_7" and r.sigma == 0.25 and r.seed is None and r.provider == provider
               for r in records)
    native = records[0].response
    if provider == "google":
        assert native == {"labelAnnotations": [{"description": "Cat", "score": 0.97}, {"description": "Pet", "score": 0.9}]}
        assert records[-1].response == {"labelAnnotations": []}
    elif provider == "azure":
        assert native == {"tags": [{"name": "Cat", "confidence": 0.97}, {"name": "Pet", "confidence": 0.9}]}
        assert records[-1].response == {"tags": []}
    elif provider == "aws":
        assert native["Labels"][0] == {"Name": "Cat", "Confidence": 0.97, "Instances": [], "Parents": []}
        assert records[-1].response == {"Labels": []}
    else:
        assert native == clean
    assert records[4].extra == {"legacy_file": "pred_hist_7.pkl", "legacy_field": "pred[3]"}


def test_google_mapping_order_is_kept():
    response = OrderedDict([("zebra", 0.5), ("apple", 0.9)])
    assert [a["description"] for a in normalize_response(response, "google")["labelAnnotations"]] == ["zebra", "apple"]


def test_native_shapes_pass_unchanged():
    assert normalize_response({"tags": []}, "azure") == {"tags": []}
    assert normalize_response({"Labels": [{"Name": "x", "Confidence": 1.0}]}, "aws")["Labels"][0]["Name"] == "x"
    assert normalize_response({"labelAnnotations": []}, "google") == {"labelAnnotations": []}
    assert normalize_response(None, "aws") == {"Labels": []}


def test_malformed_legacy_responses_are_log_errors(tmp_path):
    with pytest.raises(LogError, match="google response is not a mapping"):
        normalize_response({"Cat": "high"}, "google", "f.pkl")
    with pytest.raises(LogError, match="lacks a string 'Name'"):
        normalize_response([{"name": "cat"}], "aws", "f.pkl")
    with pytest.raises(LogError, match="not a azure response"):
        normalize_response("cat", "azure", "f.pkl")
    with pytest.raises(ConfigError):
        normalize_response({}, "local")


def test_file_structure_problems_name_the_file(tmp_path):
    path = tmp_path / "pred_hist_0.pkl"
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(LogError, match="expected a dict"):
        legacy_records(path, "aws", 1, 0.25)
    write_pickle(path, aws_response(("a", 1.0)), [aws_response(("a", 1.0))])
    with pytest.raises(LogError, match="fewer than --n0 5"):
        legacy_records(path, "aws", 5, 0.25)


def test_import_directory_orders_files_numerically_and_writes_jsonl(tmp_path):
    src = tmp_path / "logs"
    src.mkdir()
    for i in (10, 2, 0):
        write_pickle(src / f"pred_hist_{i}.pkl", azure_response(("cat", 0.9)), [azure_response(("cat", 0.9))] * 4)
    (src / "README.txt").write_text("not a log")
    out = tmp_path / "out.jsonl"
    summary = import_legacy(src, "azure", n0=1, sigma=0.5, out=out)
    assert summary.files == 3 and summary.records == 15
    records = list(read_log(out))
    assert [r.image for r in records][::5] == ["legacy:pred_hist_0", "legacy:pred_hist_2", "legacy:pred_hist_10"]
    with pytest.raises(ConfigError, match="already exists"):
        import_legacy(src, "azure", n0=1, sigma=0.5, out=out)
    import_legacy(src, "azure", n0=1, sigma=0.5, out=out, append=True)
    assert len(list(read_log(out))) == 30


def test_refused_file_leaves_output_untouched(tmp_path):
    src = tmp_path / "logs"
    src.mkdir()
    write_pickle(src / "pred_hist_0.pkl", aws_response(("cat", 99.0)), [aws_response(("cat", 99.0))] * 2)
    (src / "pred_hist_1.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    out = tmp_path / "out.jsonl"
    with pytest.raises(LogError, match="pred_hist_1.pkl: refusing to unpickle os.system"):
        import_legacy(src, "aws", n0=1, sigma=0.25, out=out)
    assert not out.exists() or out.stat().st_size == 0


def test_import_argument_errors(tmp_path):
    with pytest.raises(LogError, match="not a directory"):
        import_legacy(tmp_path / "nope", "aws", 1, 0.25, tmp_path / "o.jsonl")
    with pytest.raises(LogError, match="no pred_hist"):
        import_legacy(tmp_path, "aws", 1, 0.25, tmp_path / "o.jsonl")
    with pytest.raises(ConfigError, match="--api"):
        import_legacy(tmp_path, "bing", 1, 0.25, tmp_path / "o.jsonl")
    with pytest.raises(ConfigError, match="--sigma"):
        import_legacy(tmp_path, "aws", 1, 0.0, tmp_path / "o.jsonl")

