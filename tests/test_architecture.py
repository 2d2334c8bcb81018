"""The package's import graph obeys the intended architecture: no "never" arrow between its parts.

Every module of robust_api is parsed with `ast` (nothing is imported): module-level and function-level imports,
`import x` and `from x import y` (y counted as the submodule x.y when it is one), relative imports resolved,
and `importlib.import_module("...")` calls with a literal (or an f-string's literal prefix). Each module and
each imported module is mapped to its part by the longest matching path below; modules in no part (errors.py,
results.py) are shared helpers and unconstrained.

PARTS and NEVER are copied from the project's architecture description (the package and its tests do not read
it at run time). EXTRA_NEVER adds rules the description implies but does not list as "never" arrows.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "robust_api"

# part -> files ("x.py") or folders ("x/"), relative to the repository root
PARTS: dict[str, tuple[str, ...]] = {
    "Face": ("robust_api/__init__.py", "robust_api/api.py"),
    "Shell": ("robust_api/cli.py", "robust_api/report.py", "robust_api/demo.py"),
    "Session": ("robust_api/session.py", "robust_api/run.py", "robust_api/backends/"),
    "Engine": ("robust_api/engine.py", "robust_api/noise.py", "robust_api/images.py", "robust_api/dispatch.py"),
    "Stats": (
        "robust_api/smoothing.py",
        "robust_api/sequential.py",
        "robust_api/planner.py",
        "robust_api/modes.py",
        "robust_api/decision.py",
    ),
    "Replay": ("robust_api/replay/",),
    "Providers": ("robust_api/providers/",),
    "Emulators": ("robust_api/providers/emulator/",),
    "Classifiers": ("robust_api/classifiers.py",),
    "Logs": ("robust_api/query_logs/",),
    "Denoisers": ("robust_api/denoisers/",),
}

# (importer part, imported part, why) -- the "never" arrows
NEVER: tuple[tuple[str, str, str], ...] = (
    ("Stats", "Engine", "statistics are pure: no I/O"),
    ("Stats", "Providers", "statistics know no provider"),
    ("Stats", "Logs", "statistics know no storage"),
    ("Providers", "Stats", "adapters know no statistics"),
    ("Providers", "Logs", "adapters do not write logs"),
    ("Providers", "Engine", "adapters sit below the engine and own their limits"),
    ("Providers", "Emulators", "production adapters never import the test servers"),
    ("Engine", "Emulators", "the engine talks to emulators only through adapters"),
    ("Engine", "Session", "the engine does not build its own parts"),
    ("Engine", "Shell", "the library knows no screen"),
    ("Face", "Shell", "the library knows no screen"),
    ("Session", "Shell", "the library knows no screen"),
    ("Logs", "Engine", "the store is below the engine"),
    ("Denoisers", "Providers", "denoisers know no provider"),
    ("Replay", "Engine", "replay makes no calls"),
)

# Implied by the description: Stats has no outgoing arrow at all (pure statistics do no I/O of any kind), and
# the classifiers sit below the providers, the emulators and the denoisers that use them.
EXTRA_NEVER: tuple[tuple[str, str, str], ...] = tuple(
    ("Stats", part, "statistics are pure: they import no part that does I/O")
    for part in ("Face", "Shell", "Session", "Replay", "Emulators", "Classifiers", "Denoisers")
) + (
    ("Classifiers", "Providers", "the classifiers sit below the providers that use them"),
    ("Classifiers", "Emulators", "the classifiers sit below the emulators that use them"),
    ("Classifiers", "Denoisers", "the classifiers sit below the denoisers that use them"),
)

RULES: dict[tuple[str, str], str] = {(a, b): why for a, b, why in NEVER + EXTRA_NEVER}


@dataclass(frozen=True)
class Violation:
    module: str  # importer, dotted
    imported: str  # dotted
    line: int
    rule: str  # "Importer -> Imported: why"

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.imported} [{self.rule}]"


def part_of(path: str) -> str | None:
    """The part a repository-relative path belongs to (the most specific matching entry), or None."""
    best: tuple[int, str] | None = None
    for part, entries in PARTS.items():
        for entry in entries:
            # a folder entry also covers the module of the same name (replay.py before it became replay/)
            hit = path.startswith(entry) or path == entry[:-1] + ".py" if entry.endswith("/") else path == entry
            if hit and (best is None or len(entry) > best[0]):
                best = (len(entry), part)
    return best[1] if best else None


def module_name(path: str) -> str:
    """robust_api/providers/aws.py -> robust_api.providers.aws; a package's __init__.py -> the package."""
    parts = path[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def module_path(name: str, root: Path = ROOT) -> str:
    """The repository-relative file of a dotted module (a package's __init__.py); a name with no file still
    gets a path (name/with/slashes.py) so its part is found by folder."""
    base = name.replace(".", "/")
    if (root / f"{base}.py").is_file():
        return f"{base}.py"
    if (root / base / "__init__.py").is_file():
        return f"{base}/__init__.py"
    return f"{base}.py"


def _is_module(name: str, root: Path) -> bool:
    base = name.replace(".", "/")
    return (root / f"{base}.py").is_file() or (root / base / "__init__.py").is_file()


def _literal_prefix(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        prefix = ""
        for value in node.values:
            if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
                break
            prefix += value.value
        return prefix.rstrip(".") or None
    return None


def imports_of(source: str, path: str, root: Path = ROOT) -> list[tuple[str, int]]:
    """(dotted module, line) for every robust_api module that the source at `path` imports, anywhere in it."""
    tree = ast.parse(source, filename=path)
    package = module_name(path) if path.endswith("/__init__.py") else module_name(path).rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if alias.name != "*" and _is_module(sub, root) else base, node.lineno))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__"):
                target = _literal_prefix(node.args[0])
                if target:
                    found.append((target, node.lineno))
    return [(name, line) for name, line in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def violations(sources: dict[str, str], root: Path = ROOT) -> list[Violation]:
    """Every "never" arrow in the given {repository-relative path: source} modules."""
    out = []
    for path, source in sorted(sources.items()):
        importer = part_of(path)
        if importer is None:
            continue
        for imported, line in sorted(set(imports_of(source, path, root)), key=lambda hit: (hit[1], hit[0])):
            target = part_of(module_path(imported, root))
            why = RULES.get((importer, target)) if target else None
            if why:
                out.append(Violation(module_name(path), imported, line, f"{importer} -> {target}: {why}"))
    return out


def package_sources(root: Path = ROOT) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted((root / PACKAGE).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


# -------------------------------------------------------------------------------------------------------------


def test_no_never_arrow_in_the_package():
    sources = package_sources()
    assert len(sources) > 30  # the walk found the package
    found = violations(sources)
    assert not found, "imports that break the architecture:\n  " + "\n  ".join(map(str, found))


def test_every_part_names_something_that_exists_or_is_planned():
    # a renamed file must not silently drop out of its part (session.py and backends/ may not exist yet)
    planned = {"robust_api/session.py", "robust_api/modes.py", "robust_api/backends/", "robust_api/replay/"}
    for entries in PARTS.values():
        for entry in entries:
            assert entry in planned or (ROOT / entry).exists(), entry
    assert {a for a, _, _ in NEVER + EXTRA_NEVER} | {b for _, b, _ in NEVER + EXTRA_NEVER} <= set(PARTS)


def test_parts_map_by_the_most_specific_path():
    assert part_of("robust_api/providers/aws.py") == "Providers"
    assert part_of("robust_api/providers/emulator/aws.py") == "Emulators"
    assert part_of("robust_api/providers/emulator/__init__.py") == "Emulators"
    assert part_of("robust_api/__init__.py") == "Face"
    assert part_of("robust_api/errors.py") is None
    assert part_of("robust_api/replay.py") == part_of("robust_api/replay/__init__.py") == "Replay"
    assert part_of(module_path("robust_api.replay.recount")) == "Replay"


PLANTED = '''
import json
import robust_api.errors
from robust_api.providers.base import Provider
from .limits import ImageLimits

def for_emulator():
    from robust_api.providers.emulator.base import EMULATOR_KEY
    from ..images import encode_for
    from .. import engine
    import importlib
    return importlib.import_module(f"robust_api.providers.emulator.{name}")
'''

PLANTED_STATS = '''
from robust_api.smoothing import radius_l2
from robust_api.results import ABSTAIN

class Mode:
    def run(self):
        import robust_api.query_logs.store as store
        from robust_api import dispatch
        from robust_api.providers import make_provider
'''


def test_the_walker_catches_planted_violations():
    found = violations({"robust_api/providers/planted.py": PLANTED, "robust_api/modes.py": PLANTED_STATS})
    got = {(v.module, v.imported, v.rule.split(":")[0]) for v in found}
    assert got == {
        ("robust_api.providers.planted", "robust_api.providers.emulator.base", "Providers -> Emulators"),
        ("robust_api.providers.planted", "robust_api.images", "Providers -> Engine"),
        ("robust_api.providers.planted", "robust_api.engine", "Providers -> Engine"),
        ("robust_api.providers.planted", "robust_api.providers.emulator", "Providers -> Emulators"),
        ("robust_api.modes", "robust_api.query_logs.store", "Stats -> Logs"),
        ("robust_api.modes", "robust_api.dispatch", "Stats -> Engine"),
        ("robust_api.modes", "robust_api.providers", "Stats -> Providers"),
    }
    lines = {v.imported: v.line for v in found if v.module == "robust_api.providers.planted"}
    assert lines["robust_api.images"] == 9  # function-level imports are found, with their line
    assert any(str(v).startswith("robust_api.providers.planted:9 imports robust_api.images [") for v in found)


def test_the_walker_passes_allowed_imports():
    allowed = '''
from robust_api.providers.limits import ImageLimits
from robust_api.providers.base import Provider

def encode():
    from robust_api.errors import ImageError
'''
    assert violations({"robust_api/images.py": allowed, "robust_api/providers/emulator/x.py": allowed}) == []


@pytest.mark.parametrize(
    "path, source, expected",
    [
        ("robust_api/providers/emulator/__init__.py", "from . import base", "robust_api.providers.emulator.base"),
        ("robust_api/providers/aws.py", "from .base import Provider", "robust_api.providers.base"),
        ("robust_api/providers/aws.py", "from ..images import encode_for", "robust_api.images"),
        ("robust_api/providers/aws.py", "from robust_api import classifiers", "robust_api.classifiers"),
        ("robust_api/providers/aws.py", "from robust_api.errors import ConfigError", "robust_api.errors"),
    ],
)
def test_imports_are_resolved(path, source, expected):
    assert [name for name, _ in imports_of(source, path)] == [expected]
