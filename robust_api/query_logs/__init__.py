"""Query logs: the versioned JSONL record, the append-only store, the cache/resume index, legacy import."""
from __future__ import annotations

from robust_api.query_logs.index import LogIndex
from robust_api.query_logs.legacy import (
    LEGACY_PROVIDERS,
    ImportSummary,
    RestrictedUnpickler,
    import_legacy,
    iter_legacy_records,
    legacy_files,
    legacy_records,
    load_legacy_pickle,
    normalize_response,
)
from robust_api.query_logs.schema import PHASES, SCHEMA_VERSION, QueryRecord, SampleKey, sample_key, settings_key
from robust_api.query_logs.store import QueryLogWriter, read_log, read_log_range, read_logs

__all__ = [
    "SCHEMA_VERSION",
    "PHASES",
    "QueryRecord",
    "SampleKey",
    "sample_key",
    "settings_key",
    "QueryLogWriter",
    "read_log",
    "read_logs",
    "read_log_range",
    "LogIndex",
    "LEGACY_PROVIDERS",
    "ImportSummary",
    "RestrictedUnpickler",
    "import_legacy",
    "iter_legacy_records",
    "legacy_files",
    "legacy_records",
    "load_legacy_pickle",
    "normalize_response",
]
