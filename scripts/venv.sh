# Sourced by the other scripts: create and activate .venv with the tools that build kvtier.
python_bin=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch 2.13.0's CPU build (2.13.0+cpu) is a local wheel on this project's machines; the index's
# 2.13.0 is the CUDA build (gigabytes of nvidia-* packages). Make sure pip sees the local one
# even when the environment does not point at it (a clean `env -i` CI run).
if [ -z "${PIP_FIND_LINKS:-}" ] && [ -d /opt/wheels ]; then
    export PIP_FIND_LINKS=/opt/wheels
fi
pip install -q "setuptools>=69" wheel "pybind11>=2.12"
