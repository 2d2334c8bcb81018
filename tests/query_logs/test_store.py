"""Append-only writer and strict reader: torn tails, corrupt lines, bad files, fuzzing."""
from __future__ import annotations

import json
import logging
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robust_api.errors import LogError
from robust_api.query_logs import QueryLogWriter, QueryRecord, read_log, read_logs


def rec(index: int, phase: str = "estimation", image: str = "img") -> QueryRecord:
    return QueryRecord(
        run="r", image=image, provider="google", sigma=0.25, index=index, phase=phase,
        response={"labelAnnotations": [{"description": "Cat", "score": 0.9}]},
    )


def write_lines(path, records, tail: bytes = b"") -> None:
    path.write_bytes(b"".join(r.to_json_line().encode() for r in records) + tail)


def test_written_records_read_back_in_order(tmp_path):
    path = tmp_path / "log.jsonl"
    with QueryLogWriter(path) as w:
        for i in range(5):
            w.write(rec(i))
        assert w.records_written == 5
    assert [r.index for r in read_log(path)] == [0, 1, 2, 3, 4]


def test_write_is_on_disk_when_it_returns(tmp_path):
    path = tmp_path / "log.jsonl"
    w = QueryLogWriter(path)
    w.write(rec(0))
    # read through an independent handle before close: the engine counts the sample at this point
    assert [r.index for r in read_log(path)] == [0]
    w.close()


def test_torn_final_line_is_skipped_with_warning(tmp_path, caplog):
    path = tmp_path / "log.jsonl"
    full = rec(2).to_json_line().encode()
    write_lines(path, [rec(0), rec(1)], tail=full[: len(full) // 2])
    with caplog.at_level(logging.WARNING):
        assert [r.index for r in read_log(path)] == [0, 1]
    assert "torn final line" in caplog.text and "log.jsonl:3" in caplog.text


def test_complete_final_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "log.jsonl"
    write_lines(path, [rec(0)], tail=rec(1).to_json_line().rstrip("\n").encode())
    assert [r.index for r in read_log(path)] == [0, 1]


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = [rec(0).to_json_line(), '{"schema": 1, "run": \n', rec(2).to_json_line()]
    path.write_text("".join(lines))
    with pytest.raises(LogError) as err:
        list(read_log(path))
    assert err.value.line == 2 and err.value.path == str(path) and "not valid JSON" in str(err.value)


def test_corrupt_final_line_with_newline_is_an_error_not_a_torn_write(tmp_path):
    path = tmp_path / "log.jsonl"
    write_lines(path, [rec(0)], tail=b"garbage\n")
    with pytest.raises(LogError, match=r":2: not valid JSON"):
        list(read_log(path))


def test_unknown_schema_in_log(tmp_path):
    path = tmp_path / "log.jsonl"
    d = json.loads(rec(0).to_json_line())
    d["schema"] = 9
    path.write_text(rec(0).to_json_line() + json.dumps(d) + "\n")
    with pytest.raises(LogError, match=r"log.jsonl:2: schema version 9 is not supported \(this robust-api reads 1\)"):
        list(read_log(path))


def test_missing_field_in_log(tmp_path):
    path = tmp_path / "log.jsonl"
    d = json.loads(rec(0).to_json_line())
    del d["phase"]
    path.write_text(json.dumps(d) + "\n")
    with pytest.raises(LogError, match=r"log.jsonl:1: missing field 'phase'"):
        list(read_log(path))


def test_empty_file_yields_nothing_and_blank_lines_are_skipped(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert list(read_log(empty)) == []
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n" + rec(0).to_json_line() + "  \n")
    assert [r.index for r in read_log(blank)] == [0]


def test_directory_and_missing_file_are_log_errors(tmp_path):
    with pytest.raises(LogError, match="is a directory"):
        list(read_log(tmp_path))
    with pytest.raises(LogError, match="no such query log"):
        list(read_log(tmp_path / "nope.jsonl"))
    with pytest.raises(LogError, match="is a directory"):
        QueryLogWriter(tmp_path)


def test_read_logs_chains_files(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_lines(a, [rec(0), rec(1)])
    write_lines(b, [rec(5)])
    assert [r.index for r in read_logs([a, b])] == [0, 1, 5]


def test_writer_truncates_torn_tail_then_appends_cleanly(tmp_path, caplog):
    path = tmp_path / "log.jsonl"
    full = rec(1).to_json_line().encode()
    write_lines(path, [rec(0)], tail=full[:-20])
    with caplog.at_level(logging.WARNING):
        with QueryLogWriter(path) as w:
            w.write(rec(1))
            w.write(rec(2))
    assert "removed a torn final line" in caplog.text
    assert [r.index for r in read_log(path)] == [0, 1, 2]
    assert path.read_bytes().count(b"\n") == 3


def test_writer_keeps_complete_final_record_missing_its_newline(tmp_path):
    path = tmp_path / "log.jsonl"
    write_lines(path, [rec(0)], tail=rec(1).to_json_line().rstrip("\n").encode())
    with QueryLogWriter(path) as w:
        w.write(rec(2))
    assert [r.index for r in read_log(path)] == [0, 1, 2]


def test_writer_truncates_file_that_is_only_a_torn_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"schema":1,"ru')
    with QueryLogWriter(path) as w:
        w.write(rec(0))
    assert [r.index for r in read_log(path)] == [0]


def test_second_writer_on_same_log_is_refused(tmp_path):
    path = tmp_path / "log.jsonl"
    with QueryLogWriter(path):
        with pytest.raises(LogError, match="already open for writing"):
            QueryLogWriter(path)
    with QueryLogWriter(path) as w:  # lock released on close
        w.write(rec(0))


def test_closed_writer_refuses_writes(tmp_path):
    w = QueryLogWriter(tmp_path / "log.jsonl")
    w.close()
    with pytest.raises(LogError, match="closed"):
        w.write(rec(0))


def test_concurrent_writes_never_interleave(tmp_path):
    path = tmp_path / "log.jsonl"
    with QueryLogWriter(path, fsync=False) as w:
        threads = [
            threading.Thread(target=lambda t=t: [w.write(rec(i, image=f"img{t}")) for i in range(200)])
            for t in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    records = list(read_log(path))
    assert len(records) == 800
    assert {(r.image, r.index) for r in records} == {(f"img{t}", i) for t in range(4) for i in range(200)}


def test_writer_creates_missing_parent_directory(tmp_path):
    path = tmp_path / "deep" / "dir" / "log.jsonl"
    with QueryLogWriter(path) as w:
        w.write(rec(0))
    assert len(list(read_log(path))) == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=60),
            st.sampled_from([
                rec(0).to_json_line().encode(), b"{}\n", b"[]\n", b"null\n", b'{"schema": 1}\n', b"\xff\xfe\n",
                b'{"schema": "1"}\n', b"[" * 3000 + b"\n", b'{"schema":1,"run":"r","image":"i","provider":"aws",'
                b'"sigma":1e999,"index":0,"phase":"clean","response":{}}\n', b"NaN\n", b'"x"\n',
            ]),
        ),
        max_size=6,
    )
)
def test_reader_raises_only_log_error_on_arbitrary_bytes(tmp_path, chunks):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"".join(chunks))
    try:
        for record in read_log(path):
            assert isinstance(record, QueryRecord)
    except LogError as exc:
        assert exc.path == str(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_crash_at_any_byte_leaves_a_readable_log_and_a_clean_resume(tmp_path, cut):
    path = tmp_path / "cut.jsonl"
    blob = b"".join(rec(i).to_json_line().encode() for i in range(8))
    cut = cut % (len(blob) + 1)
    path.write_bytes(blob[:cut])
    before = [r.index for r in read_log(path)]
    assert before == list(range(len(before)))
    with QueryLogWriter(path, fsync=False) as w:
        w.write(rec(100))
    after = [r.index for r in read_log(path)]
    assert after == before + [100]
