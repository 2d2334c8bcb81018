#!/usr/bin/env bash
# Create ./.venv and install robust-api with every extra. Safe to rerun (pip skips what is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU wheel of torch; a bare "torch" requirement would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0" numpy
python -m pip install -q -e ".[all]"
