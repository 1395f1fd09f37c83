#!/usr/bin/env bash
# The main job: the offload benchmark on embedded defaults (host + disk tiers in a temp dir, no
# server): writes bench.png here and prints the summary.
# Creates .venv (if missing), installs kvtier, runs `kvtier bench` with any extra arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
pip install -q --no-build-isolation .
exec kvtier bench "$@"
