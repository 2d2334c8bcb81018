"""Append-only JSONL query-log store: a crash-safe writer and a strict, torn-tail-tolerant reader.

The writer returns from write() only after the line is flushed (and fsynced), so a sample the engine
counted is on disk. A crash mid-write leaves at most one torn final line (no trailing newline): the reader
skips it with a warning and the next writer removes it before appending.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from robust_api.errors import LogError
from robust_api.query_logs.schema import QueryRecord

try:  # advisory lock so two runs cannot interleave lines in one log; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_loads = json.loads
_raw_decode = json.JSONDecoder().raw_decode
_from_dict = QueryRecord.from_dict


def _fast_loads(raw: bytes):
    """json.loads for one newline-terminated UTF-8 line, minus its per-call overhead (the replay hot path).

    Anything unusual (leading whitespace, trailing junk, another encoding) falls back to json.loads, which
    then either parses it or raises the usual error.
    """
    try:
        text = raw.decode("utf-8")
        obj, end = _raw_decode(text)
    except ValueError:
        return _loads(raw)
    if end != len(text) - 1 and text[end:].strip():
        return _loads(raw)
    return obj


def _parse_line(raw: bytes, path: str, lineno: int) -> QueryRecord | None:
    """The sample record on this line; None for a count record (query_logs.counts: read by its own reader)."""
    try:
        obj = _loads(raw)
    except RecursionError:
        raise LogError(path, lineno, "not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise LogError(path, lineno, f"not valid JSON ({_short(exc)})") from None
    if _is_counts(obj):
        return None
    return _from_dict(obj, path, lineno)


def _is_counts(obj) -> bool:
    return type(obj) is dict and obj.get("kind") == "counts"


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


def _open_for_reading(path: str | Path) -> IO[bytes]:
    p = Path(path)
    if p.is_dir():
        raise LogError(p, None, "is a directory, not a query log")
    try:
        return open(p, "rb")
    except FileNotFoundError:
        raise LogError(p, None, "no such query log") from None
    except OSError as exc:
        raise LogError(p, None, f"cannot open query log: {exc.strerror or exc}") from None


TornLineHandler = Callable[[str, int, int, str], None]


def _could_be_torn(raw: bytes) -> bool:
    """Whether an unterminated final line can be our own interrupted write: a prefix of a record line (which
    starts with '{'), or the zero bytes a file system may leave after a power loss. Anything else (a pickle,
    an image, a text file given as --log by mistake) is not ours to skip or to truncate."""
    return raw[:1] == b"{" or not raw.strip(b"\0 \t\r")


def _warn_torn(name: str, lineno: int, nbytes: int, reason: str) -> None:
    log.warning("%s:%d: skipping torn final line (%d bytes; an interrupted write): %s", name, lineno, nbytes, reason)


def read_log(path: str | Path) -> Iterator[QueryRecord]:
    """Yield the records of one JSONL log in file order.

    A final line without a trailing newline that does not parse is a torn write: it is skipped with a
    warning (a complete final record missing only its newline is kept). Any other bad line raises LogError
    naming the file and line: corrupt JSON, unknown schema version, missing or ill-typed fields.
    Blank lines are skipped. An empty file yields nothing; a missing file or a directory raises LogError.
    """
    return read_log_range(path)


def read_log_range(
    path: str | Path, start: int = 0, end: int | None = None, on_torn: TornLineHandler | None = None
) -> Iterator[QueryRecord]:
    """read_log restricted to the lines that start in bytes [start, end) (start must be a line start).

    For parallel readers: line numbers in errors count from `start` (line 1 = the line at `start`);
    a torn final line is reported to on_torn(path, line, nbytes, reason) (default: a logged warning).
    """
    name = str(path)
    on_torn = on_torn or _warn_torn
    fh = _open_for_reading(path)
    loads, from_dict = _fast_loads, _from_dict
    with fh:
        lineno = 0
        pos = start
        stop = float("inf") if end is None else end
        try:
            if start:
                fh.seek(start)
            for raw in fh:
                if pos >= stop:
                    return
                pos += len(raw)
                lineno += 1
                if raw[-1] != 10:  # no newline: the last line of the file, possibly a torn write
                    try:
                        record = _parse_line(raw, name, lineno)
                    except LogError as exc:
                        if not _could_be_torn(raw):
                            raise
                        on_torn(name, lineno, len(raw), exc.reason)
                        return
                    if record is not None:
                        yield record
                    return
                try:
                    obj = loads(raw)
                except RecursionError:
                    raise LogError(name, lineno, "not valid JSON (nested too deeply)") from None
                except ValueError as exc:
                    if raw.isspace():
                        continue
                    raise LogError(name, lineno, f"not valid JSON ({_short(exc)})") from None
                if type(obj) is dict and "kind" in obj and _is_counts(obj):
                    continue  # a count record (query_logs.counts), not a sample
                yield from_dict(obj, name, lineno)
        except OSError as exc:
            raise LogError(name, lineno or None, f"read error: {exc.strerror or exc}") from None


def split_log(path: str | Path, parts: int) -> list[tuple[int, int]]:
    """Cut a log into about `parts` byte ranges [start, end) that begin at line starts (for parallel reads)."""
    p = Path(path)
    fh = _open_for_reading(p)
    with fh:
        size = os.fstat(fh.fileno()).st_size
        cuts = [0]
        for k in range(1, max(1, parts)):
            fh.seek(max(cuts[-1], size * k // parts))
            fh.readline()  # move to the next line start
            offset = fh.tell()
            if cuts[-1] < offset < size:
                cuts.append(offset)
        cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a] or [(0, size)]


def count_lines_before(path: str | Path, offset: int) -> int:
    """How many lines end before byte `offset` (to turn a range-relative line number into a file one)."""
    fh = _open_for_reading(path)
    count = 0
    with fh:
        remaining = offset
        while remaining > 0:
            chunk = fh.read(min(remaining, 1 << 22))
            if not chunk:
                break
            count += chunk.count(b"\n")
            remaining -= len(chunk)
    return count


def read_logs(paths: Iterable[str | Path]) -> Iterator[QueryRecord]:
    """Records of several logs, one file after the other (same rules as read_log)."""
    for path in paths:
        yield from read_log(path)


def _torn_tail_start(fh: IO[bytes], size: int) -> int:
    """Offset just after the last newline of a file whose last byte is not a newline (0 if none)."""
    block = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - block)
        fh.seek(start)
        chunk = fh.read(end - start)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        end = start
    return 0


class QueryLogWriter:
    """Append records to a JSONL log, one line each; thread-safe; usable as a context manager.

    write() returns only after the line is written, flushed and (if `fsync`) fsynced: count a sample only
    after it returns. Opening repairs a torn tail left by a crash: an unparseable final fragment is
    truncated (it was never counted) with a warning; a complete final record missing its newline gets the
    newline, so no paid response is dropped. Raises LogError if the path is a directory, cannot be opened,
    or is locked by another writer.
    """

    def __init__(self, path: str | Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self.records_written = 0
        if self.path.is_dir():
            raise LogError(self.path, None, "is a directory, not a query log")
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+b")
        except OSError as exc:
            raise LogError(self.path, None, f"cannot open query log for appending: {exc.strerror or exc}") from None
        self._fh: IO[bytes] | None = fh
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise LogError(
                        self.path, None, "query log is already open for writing (another robust-api run holds it)"
                    ) from None
            self._repair_tail()
        except BaseException:
            fh.close()
            self._fh = None
            raise

    def _repair_tail(self) -> None:
        fh = self._fh
        assert fh is not None
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        start = _torn_tail_start(fh, size)
        fh.seek(start)
        tail = fh.read(size - start)
        try:
            _parse_line(tail, str(self.path), 0)
            complete = True
        except LogError:
            complete = False
        if not complete and not _could_be_torn(tail):
            line = count_lines_before(self.path, start) + 1
            raise LogError(self.path, line, "not a query log record and not an interrupted write; left untouched")
        if complete:
            fh.write(b"\n")  # append mode: goes to the end; the complete record is kept
            log.warning("%s: final record lacked its newline (interrupted write); kept it", self.path)
        else:
            fh.truncate(start)
            log.warning(
                "%s: removed a torn final line of %d bytes left by an interrupted write (it was never counted)",
                self.path, size - start,
            )
        fh.flush()
        os.fsync(fh.fileno())

    def write(self, record: QueryRecord) -> None:
        """Append one record durably; raises LogError if the writer is closed or the disk write fails."""
        data = record.to_json_line().encode("utf-8")
        with self._lock:
            fh = self._fh
            if fh is None:
                raise LogError(self.path, None, "query log writer is closed")
            try:
                fh.write(data)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise LogError(self.path, None, f"write failed: {exc.strerror or exc}") from None
            self.records_written += 1

    def sync(self) -> None:
        """Flush and fsync whatever was written (useful with fsync=False for bulk imports)."""
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fh.close()  # closing releases the flock

    @property
    def closed(self) -> bool:
        return self._fh is None

    def __enter__(self) -> "QueryLogWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
