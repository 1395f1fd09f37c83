"""Build script for kvtier's native extension; project metadata lives in pyproject.toml.

Every install (``pip install .``) compiles ``kvtier._native`` from csrc/*.cpp.
"""

from glob import glob
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _rel(pattern: str) -> list[str]:
    """Files matching pattern, relative to the project root (as setuptools wants)."""
    return sorted(glob(pattern, root_dir=ROOT))


native = Pybind11Extension(
    "kvtier._native",
    sources=_rel("csrc/*.cpp"),
    include_dirs=["third_party/xxhash"],
    # Headers: rebuild when they change, and ship them in an sdist.
    depends=_rel("csrc/*.h") + ["third_party/xxhash/xxhash.h"],
    cxx_std=17,
    # No -march=native: the wheel must run on any x86-64 machine.
    extra_compile_args=["-O3", "-fvisibility=hidden", "-pthread"],
    extra_link_args=["-pthread"],
)

# --- CUDA: not built yet ------------------------------------------------------
# Kernels will live in csrc/*.cu.  When nvcc is available, compile them here
# (e.g. a build_ext subclass that runs nvcc on CUDA_SOURCES and appends the
# objects to native.extra_objects, then links cudart), guarded so that machines
# without CUDA still build the CPU-only extension.  Until then they are ignored.
CUDA_SOURCES = _rel("csrc/*.cu")
# -------------------------------------------------------------------------------

setup(ext_modules=[native], cmdclass={"build_ext": build_ext})
