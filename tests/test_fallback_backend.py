"""The whole store works on the pure-Python backend too (KVTIER_NATIVE=python)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_store_suite_passes_on_the_python_backend():
    env = dict(os.environ, KVTIER_NATIVE="python")
    code = ("import kvtier.native as n, sys; assert n.backend == 'python', n.backend; "
            "import pytest; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', "
            "'test_store.py', 'test_threads.py']))")
    run = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
