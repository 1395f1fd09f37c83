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
# SGLang's HiCache storage interface, for tests/test_sglang.py: the wheel alone. Its declared
# dependencies (a CUDA torch, the serving stack) are never imported by the storage interface
# (kvtier.integrations._sglang_import), so --no-deps keeps the CPU torch above. Last, so that
# pip's check of the other installs never sees its unmet pins.
pip install -q --no-deps "sglang==0.5.23"

# The redis tests start real redis-server processes (tests/redisd.py) and skip without one:
# install it with apt when missing (as root, or through sudo). The package may fail to start
# its own service where there is no systemd; only the binary matters here.
install_redis_server() {
    command -v redis-server >/dev/null 2>&1 && return 0
    local sudo="" log
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 && sudo=sudo
    fi
    if ! command -v apt-get >/dev/null 2>&1 || { [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; }; then
        echo "test.sh: redis-server not found and cannot be installed here (needs apt-get as" \
             "root or sudo); the redis tests will be skipped" >&2
        return 0
    fi
    log=$(mktemp)
    apt_get() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get "$@" >>"$log" 2>&1; }
    apt_get install -y -q redis-server || true
    if ! command -v redis-server >/dev/null 2>&1; then
        { apt_get update -q && apt_get install -y -q redis-server; } || true
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "test.sh: could not install redis-server with apt-get; the redis tests will be" \
             "skipped. apt-get said:" >&2
        tail -n 5 "$log" >&2
    fi
    rm -f "$log"
}
install_redis_server

# vLLM (CPU build) for tests/test_vllm.py, in its own cached virtualenv (.venv-vllm); never fails the suite.
./scripts/vllm-env.sh || true
./benchmarks/peers/setup.sh || true  # LMCache (CPU) for `kvtier bench --peers` (.venv-peers); never fails

exec python -m pytest -q -p no:cacheprovider "$@"
