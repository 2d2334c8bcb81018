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

    small, large = LogIndex(), LogIndex()
    for i in range(200):
        small.add(rec(i))
    for i in range(20_000):
        large.add(rec(i))
    probe = [rec(i).key() for i in range(0, 200, 2)]

    def cpu_per_lookup(index: LogIndex) -> float:
        t0 = time.process_time()  # CPU time: robust to other jobs on a shared machine
        for _ in range(200):
            for k in probe:
                assert k in index
        return (time.process_time() - t0) / (200 * len(probe))

    cpu_per_lookup(large)  # warm up
    # a hash lookup: 100x more records must not cost anywhere near 100x more per lookup
    assert cpu_per_lookup(large) < 5 * cpu_per_lookup(small) + 2e-6
