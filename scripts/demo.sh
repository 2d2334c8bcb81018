#!/usr/bin/env bash
# The main job: set up ./.venv, then certify bundled real photos against a local emulator (no credentials).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec robust-api demo "$@"
