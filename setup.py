"""Build script for kvtier's native extensions; project metadata lives in pyproject.toml.

Every install (``pip install .``) compiles ``kvtier._native`` from csrc/*.cpp (C++17).

Where nvcc is found (``$CUDA_HOME/bin/nvcc``, else ``nvcc`` on PATH), it also builds
``kvtier._cuda``: the paged gather/scatter kernels (csrc/cuda/*.cu, compiled by nvcc) and
their bindings (csrc/cuda/module.cpp), with the CUDA runtime linked statically, so the
module imports on machines without a driver (``kvtier.gpu`` then says CUDA is unusable).

Environment:
    KVTIER_NO_CUDA=1         skip the CUDA module even where nvcc is present.
    KVTIER_REQUIRE_CUDA=1    fail the build when the CUDA module cannot be built (CI);
                             by default a failed CUDA build is reported and skipped.
    KVTIER_CUDA_ARCHS        GPU architectures, default "80;90" (A100, H100/H200: SASS
                             for each, plus PTX of the last one for newer GPUs).
    CUDA_HOME / CUDA_PATH    the CUDA toolkit to use.
"""

import os
import shlex
import shutil
import subprocess
import sys
import time
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _rel(pattern: str) -> list[str]:
    """Files matching pattern, relative to the project root (as setuptools wants)."""
    return sorted(glob(pattern, root_dir=ROOT))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


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

# --- CUDA ---------------------------------------------------------------------------------
CUDA_SOURCES = _rel("csrc/cuda/*.cu")


def find_cuda() -> tuple[Path, Path] | None:
    """(nvcc, toolkit root) or None when there is no usable toolkit."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            nvcc = Path(home) / "bin" / "nvcc"
            break
    else:
        found = shutil.which("nvcc")
        if found is None:
            return None
        nvcc = Path(found).resolve()  # /usr/local/bin/nvcc -> <toolkit>/bin/nvcc
    root = nvcc.resolve().parent.parent
    if not (root / "include" / "cuda_runtime_api.h").is_file():
        root = _nvcc_top(nvcc)  # nvcc on PATH may be a wrapper script (exec .../bin/nvcc)
    if root is None or not (root / "include" / "cuda_runtime_api.h").is_file():
        return None
    return nvcc, root


def _nvcc_top(nvcc: Path) -> Path | None:
    """The toolkit root nvcc itself uses (its ``TOP`` in a dry run)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.cu"
        source.write_text("")
        try:
            run = subprocess.run([str(nvcc), "--dryrun", "-c", str(source), "-o", str(Path(tmp) / "p.o")],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
    for line in (run.stdout + run.stderr).splitlines():
        if line.startswith("#$ TOP="):
            return Path(line.split("=", 1)[1].strip()).resolve()
    return None


def _cuda_lib_dir(root: Path) -> Path:
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
        if (root / sub / "libcudart_static.a").is_file():
            return root / sub
    raise RuntimeError(f"libcudart_static.a not found under {root}")


def _gencode() -> list[str]:
    archs = [a.strip().replace("sm_", "").replace(".", "")
             for a in os.environ.get("KVTIER_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
             if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return flags + [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]


class BuildExt(build_ext):
    """build_ext that compiles csrc/cuda/*.cu with nvcc for ``kvtier._cuda`` (or skips it,
    saying why) and leaves ``kvtier._native`` exactly as before."""

    def build_extensions(self) -> None:
        cuda = next((ext for ext in self.extensions if ext.name == "kvtier._cuda"), None)
        if cuda is not None:
            try:
                self._prepare_cuda(cuda)
            except Exception as exc:  # nvcc failed: the CPU build goes on unless CI asked
                if _flag("KVTIER_REQUIRE_CUDA"):
                    raise
                print(f"kvtier: NOT building the CUDA module kvtier._cuda: {exc}", file=sys.stderr)
                self.extensions.remove(cuda)
        super().build_extensions()

    def _prepare_cuda(self, ext: Pybind11Extension) -> None:
        nvcc, root = find_cuda()  # present: the extension is only added when it is
        ext.include_dirs.append(str(root / "include"))
        ext.library_dirs.append(str(_cuda_lib_dir(root)))
        out = Path(self.build_temp) / "cuda"
        out.mkdir(parents=True, exist_ok=True)
        objects = []
        for source in CUDA_SOURCES:
            obj = out / (Path(source).stem + ".o")
            deps = [ROOT / source] + [ROOT / h for h in _rel("csrc/cuda/*.h")]
            if not self.force and obj.is_file() and all(obj.stat().st_mtime >= d.stat().st_mtime
                                                        for d in deps):
                objects.append(str(obj))
                continue
            cmd = [str(nvcc), "-c", str(ROOT / source), "-o", str(obj), "-std=c++17", "-O3",
                   "--threads", "0", "-Xcompiler", "-fPIC,-fvisibility=hidden",
                   f"-I{ROOT / 'csrc' / 'cuda'}", *_gencode()]
            print("kvtier: " + shlex.join(cmd), file=sys.stderr)
            start = time.monotonic()
            subprocess.run(cmd, check=True)
            print(f"kvtier: nvcc {source}: {time.monotonic() - start:.1f} s", file=sys.stderr)
            objects.append(str(obj))
        ext.extra_objects = objects


extensions = [native]
if _flag("KVTIER_NO_CUDA"):
    print("kvtier: KVTIER_NO_CUDA is set: building without the CUDA module", file=sys.stderr)
elif find_cuda() is None:
    print("kvtier: nvcc not found (set CUDA_HOME): building without the CUDA module "
          "(kvtier.gpu.available() will be False)", file=sys.stderr)
elif CUDA_SOURCES:
    extensions.append(Pybind11Extension(
        "kvtier._cuda",
        sources=["csrc/cuda/module.cpp"],
        depends=_rel("csrc/cuda/*.h") + CUDA_SOURCES,
        cxx_std=17,
        extra_compile_args=["-O3", "-fvisibility=hidden"],
        # cudart linked statically and kept private (--exclude-libs): importable without the
        # runtime .so, and no clash with the libcudart torch loads.
        libraries=["cudart_static", "dl", "rt", "pthread"],
        extra_link_args=["-Wl,--exclude-libs,ALL"],
    ))

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})
