#!/usr/bin/env bash
# The main job: the offload benchmark on embedded defaults (host tier, no server needed).
# Creates .venv (if missing), installs kvtier, runs `kvtier bench` with any extra arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
pip install -q --no-build-isolation .
cd "$(mktemp -d)" && exec kvtier bench "$@"
