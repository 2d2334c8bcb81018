"""Count records (full access): validated round trip, a reader of their own, skipped by the sample readers,
and range covers that reuse what is logged and name the gaps."""
from __future__ import annotations

import json

import pytest

from robust_api.errors import LogError
from robust_api.query_logs import QueryLogWriter, QueryRecord, read_log
from robust_api.query_logs.counts import CountIndex, CountRecord, read_count_records


def record(start: int, stop: int, phase: str = "estimation", **kw) -> CountRecord:
    n = stop - start
    return CountRecord(run="r", image="i" * 64, provider="local", settings={"model": "m"}, sigma=0.25,
                       denoiser={"name": "d", "sha256": "s"}, seed=0, phase=phase, start=start, stop=stop,
                       counts=kw.pop("counts", {"cat": n - n // 3, "dog": n // 3}), **kw)


def test_round_trip_and_validation():
    r = record(0, 30, extra={"position": 2})
    back = CountRecord.from_dict(json.loads(r.to_json_line()))
    assert back == r and back.key() == r.key()
    bad = json.loads(r.to_json_line())
    for change, message in [({"counts": {"cat": 29}}, "sum to 29"), ({"counts_version": 9}, "unknown counts_version"),
                            ({"start": 30}, "0 <= start < stop"), ({"phase": "other"}, "unknown phase")]:
        with pytest.raises(LogError, match=message):
            CountRecord.from_dict({**bad, **change}, "log.jsonl", 3)


def test_sample_readers_skip_count_lines_and_the_count_reader_reads_only_them(tmp_path):
    log = tmp_path / "q.jsonl"
    sample = QueryRecord(run="r", image="img", provider="aws", sigma=0.25, index=0, phase="estimation",
                         response={"Labels": []})
    with QueryLogWriter(log) as writer:
        writer.write(record(0, 10))
        writer.write(sample)
        writer.write(record(10, 20))
    assert list(read_log(log)) == [sample]
    assert [(r.start, r.stop) for r in read_count_records(log)] == [(0, 10), (10, 20)]
    with open(log, "ab") as fh:  # a torn count line at the end: skipped by both readers, repaired on append
        fh.write(record(20, 30).to_json_line().encode()[:40])
    assert list(read_log(log)) == [sample] and len(list(read_count_records(log))) == 2
    with QueryLogWriter(log) as writer:
        writer.write(record(20, 30))
    assert [(r.start, r.stop) for r in read_count_records(log)] == [(0, 10), (10, 20), (20, 30)]


def test_cover_reuses_logged_ranges_and_cuts_gaps_on_the_grid():
    index = CountIndex()
    for a, b in [(0, 100), (100, 200), (300, 400), (400, 450)]:
        index.add(record(a, b))
    group = record(0, 1).key().group()
    pieces = [(a, b, found is not None) for a, b, found in index.cover(group, 0, 500, range(0, 500, 100))]
    assert pieces == [(0, 100, True), (100, 200, True), (200, 300, False), (300, 400, True), (400, 450, True),
                      (450, 500, False)]
    # a logged range reaching past the request is not used; the request is cut at the grid instead
    assert [(a, b, f is not None) for a, b, f in index.cover(group, 0, 150, [0, 100])] == [(0, 100, True), (100, 150, False)]
    assert index.add(record(0, 100)) is False and len(index) == 4
