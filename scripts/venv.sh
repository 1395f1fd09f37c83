# Sourced by the other scripts: create and activate .venv with the tools that build kvtier.
python_bin=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q "setuptools>=69" wheel "pybind11>=2.12"
