"""The fused INT8 kernels as an onnxruntime custom-op library, compiled on first use.

    path = library_path()                       # builds export/native/*.cc once per machine
    options.register_custom_ops_library(str(path))

``export.int8_layers`` with ``fused=True`` writes the requantizing ops of a converted SASRec
as nodes of the custom domain ``DOMAIN`` (the ops are listed in export/native/ort_ops.cc)
instead of the ONNX local functions of ``export.torch_kernels``. The
results are the same uint8 tensors, bit for bit (both reproduce torch's x86 kernels; tests
check the fused kernels against torch on 10^6 values), but each op is one pass over its
tensor instead of a dozen onnxruntime element-wise nodes with float64 intermediates.
``export.runtime.make_session`` registers the library whenever a model uses ``DOMAIN``.

Build: ``g++`` (or ``$CXX``) compiles ``export/native/kernels.cc`` and ``ort_ops.cc`` with
``-O3 -march=native -ffp-contract=off`` (no a * b + c is fused unless the source asks for
``fmaf``) into ``<cache>/native/<hash>/libsasrec_qat_ops.so``, where the hash covers the
sources, the flags, the compiler's version and this CPU's feature flags: a new machine or a
changed source builds again; otherwise the library is reused. The cache is the datasets'
(``data.default_cache_dir``: ``$SASREC_QAT_CACHE`` or ``~/.cache/sasrec-qat``; the temporary
directory if that is not writable). Linux/x86-64 and g++ only for now.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from data import default_cache_dir

DOMAIN = "sasrec_qat.fused"
SOURCE_DIR = Path(__file__).resolve().parent / "native"
SOURCES = ("kernels.cc", "ort_ops.cc")
HEADERS = ("ort_abi.h",)
LIBRARY_NAME = "libsasrec_qat_ops.so"
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared",
         "-std=c++17", "-fvisibility=hidden")


class NativeBuildError(RuntimeError):
    """The custom-op library could not be compiled (no compiler, unsupported platform, ...)."""


def _compiler() -> str:
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise NativeBuildError(f"the fused INT8 kernels need a C++ compiler: {compiler!r} is not "
                               "on PATH (install g++ or set CXX), or export without --fused")
    return compiler


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build_key(compiler: str) -> str:
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=False).stdout
    for part in (" ".join(FLAGS), version, _cpu_flags(), platform.machine()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


@lru_cache(maxsize=None)
def library_path() -> Path:
    """The compiled custom-op library for this machine (built on the first call).

    Raises:
        NativeBuildError: not Linux/x86-64, no compiler, or the compilation failed (the
            message holds the compiler's output).
    """
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise NativeBuildError(f"the fused INT8 kernels are built for Linux x86-64 only, not "
                               f"{platform.system()} {platform.machine()}")
    compiler = _compiler()
    key = _build_key(compiler)
    target_dir = default_cache_dir() / "native" / key
    target = target_dir / LIBRARY_NAME
    if target.exists():
        return target
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError:  # an unwritable cache: build in the temporary directory instead
        target_dir = Path(tempfile.gettempdir()) / f"sasrec-qat-{os.getuid()}" / "native" / key
        target = target_dir / LIBRARY_NAME
        if target.exists():
            return target
        target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        partial = Path(tmp) / LIBRARY_NAME
        command = [compiler, *FLAGS, *(str(SOURCE_DIR / s) for s in SOURCES), "-o", str(partial)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise NativeBuildError(f"compiling the fused INT8 kernels failed:\n{' '.join(command)}"
                                   f"\n{done.stderr.strip()}")
        os.replace(partial, target)  # atomic: a concurrent build leaves one complete file
    return target
