"""The CUDA module is built wherever nvcc is (so CI proves the kernels compile), imports without
a driver, and setup.py skips it cleanly, saying why, where it cannot or must not be built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NVCC = (shutil.which("nvcc") or any((Path(os.environ[v]) / "bin" / "nvcc").is_file()
                                    for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)))
EXPECT_BUILT = bool(NVCC) and os.environ.get("KVTIER_NO_CUDA", "") in ("", "0")


@pytest.mark.skipif(not EXPECT_BUILT, reason="no nvcc here (or KVTIER_NO_CUDA=1): nothing to build")
def test_cuda_module_was_built_where_nvcc_is():
    from kvtier import _cuda, gpu

    assert _cuda.RUNTIME_VERSION >= 11000
    count, why = _cuda.device_status()  # never raises, driver or not
    assert isinstance(count, int) and (count > 0 or why)
    assert gpu.status().built
    with pytest.raises(ValueError, match="vector_bytes"):
        _cuda.paged_copy(True, 0, 0, 0, 1, 1, 1, 16, 3, 0, 0)  # checked before any CUDA call


@pytest.mark.skipif(not EXPECT_BUILT, reason="no nvcc here")
def test_cuda_module_imports_in_a_fresh_process_without_crashing():
    code = ("import kvtier.gpu as g; s = g.status(); print(s.built, s.devices, s.reason)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("True ")


@pytest.mark.parametrize("env, note", [
    ({"KVTIER_NO_CUDA": "1"}, "KVTIER_NO_CUDA is set: building without the CUDA module"),
    ({"PATH": os.path.dirname(sys.executable), "CUDA_HOME": "", "CUDA_PATH": ""},
     "nvcc not found (set CUDA_HOME): building without the CUDA module"),
])
def test_setup_skips_the_cuda_module_saying_why(env, note):
    run = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr[-2000:]
    assert note in run.stderr
