#!/usr/bin/env bash
# Create or refresh the cached virtualenv that runs the peers of `kvtier bench --peers`:
# .venv-peers/ (or $KVTIER_PEERS_VENV). The core .venv stays free of them.
#
#   benchmarks/peers/setup.sh            # create it, or reuse it when it already matches (~1 s)
#   benchmarks/peers/setup.sh --check    # exit 0 only when it exists and matches (installs nothing)
#
# What it holds: torch 2.13.0 (the local CPU wheel, installed first and pinned in every later
# call, so nothing pulls a CUDA build) and LMCache 0.5.6 with --no-deps, plus the packages its
# StorageManager, LocalCPUBackend and LocalDiskBackend import on CPU (found by importing them
# until nothing was missing; none is a CUDA package). LMCache's declared dependencies (cupy,
# cuda-python, nixl, a CUDA torch, its servers) are never imported on that path.
#
# SGLang's HiCacheFile is not here: its row is bench/sglang.py's benchmark, which runs kvtier's
# SGLang backend in the same process, so it runs where kvtier is installed (scripts/test.sh
# puts `sglang --no-deps` into .venv).
#
# Never fails the caller: when something cannot be installed it prints why, writes the reason
# to $VENV/UNAVAILABLE and exits 0 (the benchmark then skips LMCache with that reason).
set -uo pipefail
cd "$(dirname "$0")/../.."
venv=${KVTIER_PEERS_VENV:-$(pwd)/.venv-peers}
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch 2.13.0's CPU build is a local wheel on this project's machines (see scripts/venv.sh).
if [ -z "${PIP_FIND_LINKS:-}" ] && [ -d /opt/wheels ]; then
    export PIP_FIND_LINKS=/opt/wheels
fi
lmcache_deps=(pyyaml requests cachetools sortedcontainers numba prometheus_client py-cpuinfo
              psutil aiohttp aiofile msgspec pyzmq transformers cryptography)
# Bump when the lists change: a venv with another spec is rebuilt from scratch.
spec="torch==2.13.0 lmcache==0.5.6 ${lmcache_deps[*]} spec-v1"
probe='from lmcache.v1.storage_backend.storage_manager import StorageManager
from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend
from lmcache.v1.storage_backend.local_disk_backend import LocalDiskBackend
import torch; assert "+cpu" in torch.__version__, torch.__version__'

matches() {
    [ -x "$venv/bin/python" ] && [ "$(cat "$venv/SPEC" 2>/dev/null)" = "$spec" ] && [ ! -e "$venv/UNAVAILABLE" ]
}

if [ "${1:-}" = "--check" ]; then
    matches
    exit $?
fi
if matches; then
    echo "peers-env: $venv is up to date"
    exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
fail() {
    echo "peers-env: cannot set up LMCache: $*; kvtier bench --peers will skip it" >&2
    mkdir -p "$venv" && echo "$*" >"$venv/UNAVAILABLE"
    exit 0
}
pipq() { "$venv/bin/python" -m pip install -q "$@" >>"$log" 2>&1; }
start=$(date +%s)
echo "peers-env: creating $venv (torch 2.13.0 CPU + lmcache 0.5.6 --no-deps; about a minute)"
rm -rf "$venv"
# The same interpreter as the core venv when there is one.
python_bin=${PYTHON:-python3}
[ -x .venv/bin/python ] && python_bin=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
"$python_bin" -m venv "$venv" >>"$log" 2>&1 || fail "python -m venv failed ($(tail -n 2 "$log"))"
pipq "torch==2.13.0" || fail "pip could not install torch==2.13.0: $(tail -n 3 "$log")"
pipq --no-deps "lmcache==0.5.6" || fail "pip could not install lmcache==0.5.6: $(tail -n 3 "$log")"
pipq "torch==2.13.0" "${lmcache_deps[@]}" || fail "pip could not install LMCache's CPU dependencies: $(tail -n 3 "$log")"
LMCACHE_LOG_LEVEL=ERROR "$venv/bin/python" -c "$probe" >>"$log" 2>&1 \
    || fail "LMCache's storage backends do not import: $(tail -n 3 "$log")"
rm -f "$venv/UNAVAILABLE"
echo "$spec" >"$venv/SPEC"
echo "peers-env: $venv ready in $(( $(date +%s) - start )) s"
