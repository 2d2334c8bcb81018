#!/usr/bin/env bash
# Create ./.venv and install robust-api with every extra: one line per step with its duration, nothing else.
# Safe to rerun: when pyproject.toml and this script are unchanged since the last successful run (and the
# editable install still points here), nothing is installed and nothing is fetched from the registry.
# pip's own output goes to .venv/setup.log; on a failure its diagnosis and last lines are printed.
# PYTHON=/path/to/python picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=.venv/setup.log
STAMP=.venv/.robust-api-setup

say() { printf 'setup: %s\n' "$*"; }
fail() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

# The minimum Python comes from pyproject.toml (requires-python = ">=X.Y").
MIN=$(sed -n 's/^requires-python *= *">= *\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)
MIN=${MIN:-3.10}

python_version() {  # "X.Y.Z" of interpreter $1, or nothing when it does not run
  "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || true
}
version_ok() {  # is version $1 >= $2 (X.Y)?
  awk -v v="$1" -v m="$2" 'BEGIN { split(v, a, "."); split(m, b, "."); exit !(a[1] > b[1] || (a[1] == b[1] && a[2] >= b[2])) }'
}

# Step 1: the interpreter.
t=$(now)
if [ -x .venv/bin/python ]; then
  where=".venv"
  version=$(python_version .venv/bin/python)
  [ -n "$version" ] || fail ".venv/bin/python does not run (made on another machine or moved?); remove .venv and rerun"
  version_ok "$version" "$MIN" || fail ".venv has Python $version, robust-api needs Python >= $MIN; remove .venv and rerun with PYTHON=/path/to/python$MIN or newer"
else
  command -v "$PY" >/dev/null 2>&1 || fail "no '$PY' found: install Python >= $MIN, or set PYTHON=/path/to/python3"
  where=$(command -v "$PY")
  version=$(python_version "$PY")
  [ -n "$version" ] || fail "'$PY' does not run as Python; set PYTHON=/path/to/python$MIN or newer"
  version_ok "$version" "$MIN" || fail "robust-api needs Python >= $MIN, but $where is Python $version; install a newer Python and rerun with PYTHON=/path/to/python$MIN (or newer)"
fi
say "Python $version ($where) ($(took "$t"))"

# Step 2: the virtual environment.
t=$(now)
if [ -x .venv/bin/python ]; then
  say ".venv exists ($(took "$t"))"
else
  out=$("$PY" -m venv .venv 2>&1) || {
    rm -rf .venv
    case "$out" in
      *ensurepip*) fail "'$PY -m venv' has no pip (ensurepip); on Debian/Ubuntu: apt-get install python3-venv" ;;
      *) fail "'$PY -m venv .venv' failed: $out" ;;
    esac
  }
  say "created .venv ($(took "$t"))"
fi
VPY=.venv/bin/python

# What the installed state depends on; equal stamps mean there is nothing to do.
fingerprint() {
  { cat pyproject.toml scripts/setup.sh; echo "$version"; } | "$VPY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}
installed_here() {  # robust_api imports from this checkout (looked up from another directory, not run)
  local repo
  repo=$(pwd -P)
  (cd / && "$repo/$VPY" -c 'import importlib.util, os, sys; s = importlib.util.find_spec("robust_api"); sys.exit(not (s and s.origin and os.path.dirname(os.path.realpath(s.origin)) == os.path.join(sys.argv[1], "robust_api")))' "$repo") 2>/dev/null
}

NETWORK_ERRORS="could not fetch url|connection refused|failed to establish a new connection|max retries exceeded|temporary failure in name resolution|name or service not known|network is unreachable|read timed out|connecttimeout|proxyerror|certificate verify failed"

pip_step() {  # pip_step "what it installs" pip-arguments...: quiet, logged, one line, a clear message on failure
  local what=$1 start out rc=0
  shift
  start=$(now)
  out=$("$VPY" -m pip "$@" 2>&1) || rc=$?
  printf '\n$ pip %s\n%s\n' "$*" "$out" >>"$LOG"
  # pip gives up on an unreachable index after its retries, and `install --upgrade pip` then still exits 0
  if grep -q "Retry(total=0" <<<"$out" || { [ "$rc" -ne 0 ] && grep -Eqi "$NETWORK_ERRORS" <<<"$out"; }; then
    fail "$what: cannot reach the package registry (${PIP_INDEX_URL:-the configured index}); check the network, the proxy or PIP_INDEX_URL, then rerun (pip's output: $LOG)"
  fi
  if [ "$rc" -ne 0 ]; then
    printf 'setup: error: %s: pip failed; the last lines of %s:\n' "$what" "$LOG" >&2
    tail -n 15 "$LOG" | sed 's/^/  /' >&2
    exit 1
  fi
  say "$what ($(took "$start"))"
}

t=$(now)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(fingerprint)" ] && installed_here; then
  say "packages up to date: pyproject.toml unchanged since the last set-up ($(took "$t"))"
  exit 0
fi
rm -f "$STAMP"
: >"$LOG"
pip_step "upgrade pip" install -q --upgrade pip
# The CPU wheel of torch; a bare "torch" requirement would pull a multi-GB CUDA build.
pip_step "install torch 2.13.0 (CPU) and numpy" install -q "torch==2.13.0" numpy
# Editable: the checkout is the installed package (pyproject.toml's package-dir keeps the install a plain path).
pip_step "install robust-api[all] in editable mode" install -q -e ".[all]"
fingerprint >"$STAMP"
