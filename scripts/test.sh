#!/usr/bin/env bash
# Run the whole test suite: creates .venv (if missing), installs kvtier and everything the
# tests need into it, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
# torch is optional for kvtier but exercised by the tests. Pin the local CPU build first so
# nothing later pulls a CUDA build.
pip install -q "torch==2.13.0"
pip install -q --no-build-isolation ".[test]"
exec python -m pytest -q -p no:cacheprovider "$@"
