"""LogIndex: O(1) "already paid for?" lookups for resume and caching."""
from __future__ import annotations

from robust_api.query_logs import LogIndex, QueryLogWriter, QueryRecord, sample_key


def rec(index: int, phase: str = "selection", label: str | None = None) -> QueryRecord:
    return QueryRecord(
        run="r", image="img", provider="azure", sigma=0.5, seed=3, index=index, phase=phase,
        response={"tags": [{"name": "dog", "confidence": 0.8}]}, label=label,
    )


def test_logged_samples_are_members_and_others_are_not(tmp_path):
    path = tmp_path / "log.jsonl"
    with QueryLogWriter(path) as w:
        for i in range(10):
            w.write(rec(i))
    index = LogIndex.from_logs([path])
    assert len(index) == 10
    assert sample_key("azure", {}, "img", 0.5, None, 3, 4, "selection") in index
    assert sample_key("azure", {}, "img", 0.5, None, 3, 10, "selection") not in index
    assert sample_key("azure", {}, "img", 0.5, None, 3, 4, "estimation") not in index
    assert sample_key("azure", {}, "img", 0.25, None, 3, 4, "selection") not in index
    assert index.get(rec(4).key()).index == 4


def test_missing_log_is_an_empty_index(tmp_path):
    index = LogIndex.from_logs(tmp_path / "not-yet.jsonl")
    assert len(index) == 0 and rec(0).key() not in index


def test_first_record_of_a_duplicated_key_wins():
    index = LogIndex()
    assert index.add(rec(0, label="first"))
    assert not index.add(rec(0, label="second"))
    assert index.get(rec(0).key()).label == "first" and index.duplicates == 1 and len(index) == 1


def test_lookup_cost_does_not_grow_with_log_size():
    import time

    index = LogIndex()
    for i in range(50_000):
        index.add(rec(i))
    probe = [rec(i).key() for i in range(0, 50_000, 50)]
    t0 = time.perf_counter()
    for _ in range(20):
        for k in probe:
            assert k in index
    per_lookup = (time.perf_counter() - t0) / (20 * len(probe))
    assert per_lookup < 20e-6  # a hash lookup, not a scan of 50k records
