"""In-memory index of logged samples: answers "is this sample already paid for?" in O(1), for resume and caching."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from robust_api.query_logs.schema import QueryRecord, SampleKey
from robust_api.query_logs.store import read_log


class LogIndex:
    """Map SampleKey -> the first QueryRecord logged with that key.

    Later records with an already indexed key are duplicates (e.g. two runs racing on one log before the
    writer lock existed); the first one wins, as in replay, and `duplicates` counts the rest.
    """

    def __init__(self) -> None:
        self._records: dict[SampleKey, QueryRecord] = {}
        self._by_image: dict[str, list[QueryRecord]] = {}
        self.duplicates = 0

    @classmethod
    def from_logs(cls, paths: Iterable[str | Path] | str | Path) -> "LogIndex":
        """Index every record of the given logs; a log that does not exist yet counts as empty.

        Raises LogError for unreadable or corrupt logs (see read_log).
        """
        if isinstance(paths, (str, Path)):
            paths = [paths]
        index = cls()
        for path in paths:
            if not Path(path).exists():
                continue
            for record in read_log(path):
                index.add(record)
        return index

    def add(self, record: QueryRecord) -> bool:
        """Index a record; returns False (and keeps the earlier record) if its key was already present."""
        key = record.key()
        if key in self._records:
            self.duplicates += 1
            return False
        self._records[key] = record
        self._by_image.setdefault(record.image, []).append(record)
        return True

    def get(self, key: SampleKey) -> QueryRecord | None:
        return self._records.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[SampleKey]:
        return iter(self._records)

    def records(self) -> Iterator[QueryRecord]:
        return iter(self._records.values())

    def for_image(self, image_sha256: str) -> list[QueryRecord]:
        """Every indexed record of one image (any provider, sigma, denoiser, seed), in the order indexed."""
        return list(self._by_image.get(image_sha256, ()))
