"""Import query logs of the reference implementation (microsoft/denoised-smoothing `vision_api/`).

The reference pickles one file per image, `pred_hist_<i>.pkl` = {"ground_truth": [clean_response],
"pred": [N0 selection responses, then N estimation responses]}, with responses in each provider's reduced
shape: Google an ordered mapping description -> score, Azure a list of {"name", "confidence"} tags, AWS a
list of {"Name", "Confidence", ...} labels, Clarifai the whole response dict.

Unpickling can execute arbitrary code, so these files are read with a restricted unpickler that accepts
only builtin containers and scalars and collections.OrderedDict; any other global is refused (LogError)
before anything is called. Only import logs you could have produced yourself.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from robust_api.errors import ConfigError, LogError
from robust_api.query_logs.schema import QueryRecord
from robust_api.query_logs.store import QueryLogWriter

log = logging.getLogger(__name__)

LEGACY_PROVIDERS = ("azure", "google", "aws", "clarifai")
LEGACY_FILE = re.compile(r"^pred_hist_(\d+)\.pkl$")

# (module, name) pairs a reference log may reference. "__builtin__" covers Python 2 pickles (the C
# unpickler hands the raw module name to an overridden find_class before applying fix_imports).
_ALLOWED_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "bool", "complex"}
)
_PY2_BUILTINS = {"unicode": "str", "long": "int"}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only builtin containers/scalars and collections.OrderedDict."""

    def __init__(self, file: io.BufferedIOBase, path: str | Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        import builtins
        import collections

        if module in ("builtins", "__builtin__"):
            name = _PY2_BUILTINS.get(name, name) if module == "__builtin__" else name
            if name in _ALLOWED_BUILTINS:
                return getattr(builtins, name)
        elif module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise LogError(
            self._path,
            None,
            f"refusing to unpickle {module}.{name}: legacy logs may contain only builtin containers",
        )


def load_legacy_pickle(path: str | Path) -> Any:
    """Unpickle one reference log with RestrictedUnpickler; raises LogError for refused globals or bad files."""
    p = Path(path)
    if p.is_dir():
        raise LogError(p, None, "is a directory, not a legacy pickle log")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise LogError(p, None, f"cannot read legacy log: {exc.strerror or exc}") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), p).load()
    except LogError:
        raise
    except RecursionError:
        raise LogError(p, None, "not a readable pickle (nested too deeply)") from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, TypeError, ... from hostile bytes
        raise LogError(p, None, f"not a readable pickle ({type(exc).__name__}: {exc})") from None


def normalize_response(response: Any, provider: str, where: str | Path = "<response>") -> dict[str, Any]:
    """Turn a reference-shaped response into the provider's native JSON shape; native ones pass unchanged.

    google: mapping description -> score (order kept) -> {"labelAnnotations": [{"description", "score"}]};
    azure: [tags] -> {"tags": [...]}; aws: [labels] -> {"Labels": [...]}; clarifai: the dict unchanged.
    None or an empty container means "no labels". Raises LogError (naming `where`) for other shapes.
    """
    if response is None:
        response = {}
    if provider == "google":
        if isinstance(response, Mapping):
            if "labelAnnotations" in response or "responses" in response:
                return dict(response)
            annotations = []
            for desc, score in response.items():
                if not isinstance(desc, str) or isinstance(score, bool) or not isinstance(score, (int, float)):
                    raise LogError(where, None, "google response is not a mapping description -> score")
                annotations.append({"description": desc, "score": float(score)})
            return {"labelAnnotations": annotations}
    elif provider == "azure":
        if isinstance(response, (list, tuple)):
            return {"tags": _dict_items(response, "name", where, provider)}
        if isinstance(response, Mapping) and not response:
            return {"tags": []}
        if isinstance(response, Mapping) and ("tags" in response or "tagsResult" in response):
            return dict(response)
    elif provider == "aws":
        if isinstance(response, (list, tuple)):
            return {"Labels": _dict_items(response, "Name", where, provider)}
        if isinstance(response, Mapping) and not response:
            return {"Labels": []}
        if isinstance(response, Mapping) and "Labels" in response:
            return dict(response)
    elif provider == "clarifai":
        if isinstance(response, Mapping):
            return dict(response)
        if isinstance(response, (list, tuple)) and not response:
            return {}
    else:
        raise ConfigError(f"legacy logs exist only for {', '.join(LEGACY_PROVIDERS)}; got {provider!r}")
    raise LogError(where, None, f"not a {provider} response as the reference logged it ({type(response).__name__})")


def _dict_items(items: Any, name_key: str, where: str | Path, provider: str) -> list[dict[str, Any]]:
    out = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get(name_key), str):
            raise LogError(where, None, f"{provider} response item lacks a string {name_key!r}")
        out.append(dict(item))
    return out


def _jsonable(value: Any) -> Any:
    """Builtin containers -> JSON types (OrderedDict -> dict keeping order, tuples/sets -> lists)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, complex):
        return str(value)
    return value


def legacy_records(
    path: str | Path,
    provider: str,
    n0: int,
    sigma: float,
    seed: int | None = None,
    run: str | None = None,
) -> list[QueryRecord]:
    """The JSONL records of one `pred_hist_<i>.pkl`: clean (index 0), selection = first n0 of "pred"
    (index 0..n0-1), estimation = the rest (index 0..N-1). image = "legacy:<file stem>".

    Raises LogError if the file is refused/corrupt, lacks "ground_truth"/"pred", or has fewer than n0 samples.
    """
    p = Path(path)
    if provider not in LEGACY_PROVIDERS:
        raise ConfigError(f"legacy logs exist only for {', '.join(LEGACY_PROVIDERS)}; got {provider!r}")
    if n0 < 0:
        raise ConfigError(f"--n0 must be >= 0, got {n0}")
    data = load_legacy_pickle(p)
    if not isinstance(data, Mapping) or "pred" not in data:
        raise LogError(p, None, 'not a reference query log: expected a dict with "ground_truth" and "pred"')
    clean = data.get("ground_truth") or []
    noisy = data["pred"]
    if not isinstance(clean, (list, tuple)) or not isinstance(noisy, (list, tuple)):
        raise LogError(p, None, '"ground_truth" and "pred" must be lists of responses')
    if len(noisy) < n0:
        raise LogError(p, None, f"has {len(noisy)} noisy responses, fewer than --n0 {n0}")
    if len(clean) > 1:
        log.warning("%s: %d clean responses; using the first", p, len(clean))
    image = f"legacy:{p.stem}"
    run = run or f"legacy:{p.parent.name or p.parent}"
    try:
        ts: float | None = p.stat().st_mtime
    except OSError:
        ts = None
    common = dict(
        run=run, image=image, provider=provider, model_version=None, settings={}, sigma=float(sigma),
        denoiser=None, seed=seed, ts=ts,
    )
    records = []
    if clean:
        records.append(
            QueryRecord(
                **common, index=0, phase="clean",
                response=_jsonable(normalize_response(clean[0], provider, p)),
                extra={"legacy_file": p.name, "legacy_field": "ground_truth[0]"},
            )
        )
    for position, response in enumerate(noisy):
        phase, index = ("selection", position) if position < n0 else ("estimation", position - n0)
        records.append(
            QueryRecord(
                **common, index=index, phase=phase,
                response=_jsonable(normalize_response(response, provider, p)),
                extra={"legacy_file": p.name, "legacy_field": f"pred[{position}]"},
            )
        )
    return records


def legacy_files(directory: str | Path) -> list[Path]:
    """The `pred_hist_<i>.pkl` files of a directory, ordered by i; raises LogError if there are none."""
    d = Path(directory)
    if not d.is_dir():
        raise LogError(d, None, "not a directory of reference logs (pred_hist_<i>.pkl)")
    found = []
    for entry in os.scandir(d):
        m = LEGACY_FILE.match(entry.name)
        if m and entry.is_file():
            found.append((int(m.group(1)), Path(entry.path)))
    if not found:
        raise LogError(d, None, "contains no pred_hist_<i>.pkl files")
    return [path for _, path in sorted(found)]


@dataclass
class ImportSummary:
    files: int
    records: int
    out: Path


def iter_legacy_records(
    directory: str | Path, provider: str, n0: int, sigma: float, seed: int | None = None
) -> Iterator[QueryRecord]:
    """Records of every `pred_hist_<i>.pkl` in `directory`, file by file (see legacy_records)."""
    run = f"legacy:{Path(directory).resolve().name}"
    for path in legacy_files(directory):
        yield from legacy_records(path, provider, n0, sigma, seed=seed, run=run)


def import_legacy(
    directory: str | Path,
    provider: str,
    n0: int,
    sigma: float,
    out: str | Path,
    seed: int | None = None,
    append: bool = False,
) -> ImportSummary:
    """Convert a directory of reference pickle logs into one JSONL query log at `out`.

    Every file is converted before anything is written, so a refused or corrupt file leaves `out`
    untouched. Refuses (ConfigError) to add to an existing non-empty `out` unless `append`.
    """
    out = Path(out)
    if provider not in LEGACY_PROVIDERS:
        raise ConfigError(f"--api must be one of {', '.join(LEGACY_PROVIDERS)}; got {provider!r}")
    if not sigma > 0:
        raise ConfigError(f"--sigma must be > 0, got {sigma}")
    if out.exists() and not out.is_dir() and out.stat().st_size > 0 and not append:
        raise ConfigError(f"{out} already exists; choose another output or pass --append")
    files = legacy_files(directory)
    run = f"legacy:{Path(directory).resolve().name}"
    records = [r for path in files for r in legacy_records(path, provider, n0, sigma, seed=seed, run=run)]
    # One fsync at the end: an import is rerun from scratch if it crashes, so per-line durability buys nothing.
    with QueryLogWriter(out, fsync=False) as writer:
        for record in records:
            writer.write(record)
    return ImportSummary(files=len(files), records=len(records), out=out)
