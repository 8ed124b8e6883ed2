"""The fused INT8 kernels as an onnxruntime custom-op library, compiled on first use.

    path = library_path()                       # builds export/native/*.cc once per machine
    options.register_custom_ops_library(str(path))

``export.int8_emitters.FusedEmitter`` (``build_sasrec_onnx(fused=True)``) writes the
requantizing ops of a converted SASRec as nodes of the custom domain ``DOMAIN`` (the ops are
listed in export/native/ort_ops.cc) instead of the ONNX local functions of
``export.torch_kernels``. The results are the same uint8 tensors, bit for bit (both reproduce
torch's x86 kernels; tests check the fused kernels against torch on 10^6 values), but each op
is one pass over its tensor instead of a dozen onnxruntime element-wise nodes with float64
intermediates.
``export.runtime.make_session`` registers the library whenever a model uses ``DOMAIN``.

Build: ``g++`` (or ``$CXX``) compiles ``export/native/kernels.cc`` and ``ort_ops.cc`` with
``-O3 -march=native -ffp-contract=off`` (no a * b + c is fused unless the source asks for
``fmaf``) into ``<cache>/native/<hash>/libsasrec_qat_ops.so``, where the hash covers the
sources, the flags, the compiler's version and this CPU's feature flags: a new machine or a
changed source builds again; otherwise the library is reused. The cache is the datasets'
(``data.default_cache_dir``: ``$SASREC_QAT_CACHE`` or ``~/.cache/sasrec-qat``; the temporary
directory if that is not writable). Linux/x86-64 and g++ only for now.

A damaged cache must not crash the process that loads it (a truncated library mapped into
this process dies of SIGBUS, with no message). So the library is compiled under a temporary
name, loaded in a child process, and only then renamed into place (atomically, under a file
lock, so concurrent builders end with one complete file), next to a sha256 sidecar
(``libsasrec_qat_ops.so.sha256``). Once per process the cached copy is checked against its
sidecar and loaded in a child process; a copy that fails either check is reported (one
warning line) and built again the same way.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

from data import default_cache_dir

DOMAIN = "sasrec_qat.fused"
SOURCE_DIR = Path(__file__).resolve().parent / "native"
SOURCES = ("kernels.cc", "score_top_k.cc", "ort_ops.cc")
HEADERS = ("ort_abi.h",)
LIBRARY_NAME = "libsasrec_qat_ops.so"
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared",
         "-std=c++17", "-fvisibility=hidden")
CHECKSUM_SUFFIX = ".sha256"  # the sidecar: <library>.sha256 holds the hex sha256 of its bytes
LOAD_CHECK_TIMEOUT_S = 60
# Run in a child process: loads the library as onnxruntime will (dlopen, RTLD_NOW) and finds
# its entry point; a crash (SIGBUS on a truncated file) kills the child, not the caller.
_LOAD_CHECK = """import ctypes, sys
try:
    ctypes.CDLL(sys.argv[1]).RegisterCustomOps
except (OSError, AttributeError) as err:
    sys.exit(str(err))
"""

_MISSING = "no library built yet"

logger = logging.getLogger(__name__)


class NativeBuildError(RuntimeError):
    """The custom-op library could not be compiled (no compiler, unsupported platform, ...).

    The message's first line says what failed and why (``reason``); the lines after it, where
    there are any, hold the command and the compiler's whole output.
    """

    @property
    def reason(self) -> str:
        """The first non-blank line of the message, for one-line notes."""
        return next((line for line in str(self).splitlines() if line.strip()), "")


def _compiler() -> str:
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise NativeBuildError(f"the fused INT8 kernels need a C++ compiler: {compiler!r} is not "
                               "on PATH (install g++ or set CXX), or export without --fused")
    return compiler


def _run_compiler(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as err:  # e.g. a script without an interpreter line
        raise NativeBuildError(f"CXX {command[0]!r} cannot be run ({err}): set CXX to a C++ "
                               "compiler (g++), or export without --fused") from err


def _failure(done: subprocess.CompletedProcess[str]) -> str:
    """How a command failed, in a few words: its exit status and the line of its output that
    names an error (g++ prints context such as "In function ..." before it), else its first
    line; "no output" when it printed nothing (``CXX=/bin/false``)."""
    if done.returncode < 0:
        try:
            status = f"killed by {signal.Signals(-done.returncode).name}"
        except ValueError:
            status = f"killed by signal {-done.returncode}"
    else:
        status = f"exit status {done.returncode}"
    lines = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines()
             if line.strip()]
    line = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
    return f"{status}: {line}" if line else f"{status}, no output"


def _compiler_version(compiler: str) -> str:
    """``compiler --version``'s output; a compiler that cannot answer it is no compiler."""
    done = _run_compiler([compiler, "--version"])
    if done.returncode != 0:
        raise NativeBuildError(f"CXX {compiler!r} is not a working C++ compiler: "
                               f"'{compiler} --version' failed ({_failure(done)}); set CXX to "
                               "a C++ compiler (g++), or export without --fused")
    return done.stdout


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
    version = _compiler_version(compiler)
    for part in (" ".join(FLAGS), version, _cpu_flags(), platform.machine()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def compile_library(output: Path, compiler: str | None = None,
                    extra_flags: Sequence[str] = ()) -> None:
    """Compile ``SOURCES`` with ``FLAGS`` (then ``extra_flags``, e.g. ``-D`` macros) into the
    shared library ``output``: what ``library_path`` builds, without its cache and checks
    (the tests build variants with it).

    Raises:
        NativeBuildError: the compiler failed (the message's first line holds its first error,
            the rest the command and its whole output) or wrote no library.
    """
    compiler = compiler or _compiler()
    command = [compiler, *FLAGS, *extra_flags, *(str(SOURCE_DIR / s) for s in SOURCES),
               "-o", str(output)]
    done = _run_compiler(command)
    if done.returncode != 0:
        raise NativeBuildError(
            f"compiling the fused INT8 kernels with CXX {compiler!r} failed ({_failure(done)}); "
            "fix the compiler or set CXX to g++, or export without --fused\n"
            f"{shlex.join(command)}\n{(done.stderr + done.stdout).strip()}")
    if not output.is_file():
        raise NativeBuildError(f"CXX {compiler!r} exited with status 0 but wrote no library "
                               f"({output}): set CXX to a C++ compiler (g++), or export without "
                               f"--fused\n{shlex.join(command)}")


def _checksum_path(library: Path) -> Path:
    return library.with_name(library.name + CHECKSUM_SUFFIX)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_problem(library: Path) -> str | None:
    """Why ``library`` does not load, or None when it does: it is loaded in a child process
    (loading a damaged library in this one can kill it with SIGBUS) and its
    ``RegisterCustomOps`` looked up. Where no child process can be started the library is
    trusted (its checksum was checked already)."""
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _LOAD_CHECK, str(library)],
                              capture_output=True, text=True, check=False,
                              timeout=LOAD_CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"loading it took more than {LOAD_CHECK_TIMEOUT_S} s"
    except OSError:
        return None
    if done.returncode < 0:
        return f"loading it crashed: {_failure(done)}"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no message"]
        return f"it does not load: {lines[-1]}"
    return None


def _checksum_problem(library: Path) -> str | None:
    """Why ``library``'s bytes are not those written by its build, or None when they are."""
    try:
        expected = _checksum_path(library).read_text().strip()
    except FileNotFoundError:
        return (f"no {CHECKSUM_SUFFIX} checksum next to it: an interrupted build, or one from "
                "before checksums were written")
    except OSError as err:
        return f"its checksum cannot be read ({err})"
    try:
        actual = _sha256(library)
    except OSError as err:
        return f"it cannot be read ({err})"
    if actual != expected:
        return "its bytes differ from the checksum written when it was built"
    return None


def _problem(library: Path) -> str | None:
    """Why the cached ``library`` cannot be used (``_MISSING`` when there is none), or None when
    it can: its checksum is checked, then it is loaded in a child process."""
    if not library.is_file():
        return _MISSING
    return _checksum_problem(library) or _load_problem(library)


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` (one builder at a time; best effort: where
    locking is not supported, the atomic renames still leave one complete file)."""
    import fcntl  # Linux only, as the build is

    try:
        lock = open(folder / ".lock", "a")
    except OSError:  # a folder we can build in but not lock in: build unlocked
        lock = None
    with lock or contextlib.nullcontext():  # closing the file releases the lock
        if lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build_into(compiler: str, folder: Path, workspace: Path) -> Path:
    """Compile in ``workspace`` (a temporary folder inside ``folder``), load the result in a
    child process, then rename it and its checksum into ``folder``: the checksum first, so a
    library in place always has its own (or a newer) checksum next to it."""
    target = folder / LIBRARY_NAME
    partial = workspace / LIBRARY_NAME
    compile_library(partial, compiler)
    problem = _load_problem(partial)
    if problem is not None:
        raise NativeBuildError(f"the freshly compiled fused-kernel library does not load "
                               f"({problem}): set CXX to a C++ compiler that builds libraries "
                               f"for this system (g++), or export without --fused")
    checksum = workspace / (LIBRARY_NAME + CHECKSUM_SUFFIX)
    checksum.write_text(_sha256(partial) + "\n")
    os.replace(checksum, _checksum_path(target))
    os.replace(partial, target)  # atomic: a reader sees the old file or the new, never half
    return target


def available() -> bool:
    """Whether the fused-kernel library can be used here (built now if it is not cached)."""
    try:
        library_path()
    except NativeBuildError:
        return False
    return True


def build_key() -> str:
    """The build this process's fused kernels come from: a digest of their sources, compiler
    flags and version, and the CPU's flags (the name of ``library_path()``'s folder; built now
    if it is not cached). A benchmark record names it so that timings of another build are not
    taken for this one's.

    Raises:
        NativeBuildError: as ``library_path``.
    """
    return library_path().parent.name


@lru_cache(maxsize=None)
def library_path() -> Path:
    """The compiled custom-op library for this machine (built on the first call; the cached
    copy is checked once per process and rebuilt when it fails, see the module's docstring).

    Raises:
        NativeBuildError: not Linux/x86-64, no compiler, the compilation failed (the
            message holds the compiler's output), or neither the cache nor the temporary
            directory can be written.
    """
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise NativeBuildError(f"the fused INT8 kernels are built for Linux x86-64 only, not "
                               f"{platform.system()} {platform.machine()}")
    compiler = _compiler()
    key = _build_key(compiler)
    folders = (default_cache_dir() / "native" / key,  # else an unwritable cache's stand-in:
               Path(tempfile.gettempdir()) / f"sasrec-qat-{os.getuid()}" / "native" / key)
    unwritable: list[str] = []
    for folder in folders:
        target = folder / LIBRARY_NAME
        problem = _problem(target)
        if problem is None:
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            workspace = Path(tempfile.mkdtemp(prefix=".build-", dir=folder))
        except OSError as err:  # not writable: try the next folder
            unwritable.append(f"{folder} ({err.strerror or err})")
            if problem != _MISSING:
                logger.warning("the cached fused-kernel library %s is unusable (%s) and its "
                               "folder is not writable (%s)", target, problem, err.strerror or err)
            continue
        try:
            with _exclusive(folder):
                if _problem(target) is None:  # a concurrent builder has just built it
                    return target
                if problem != _MISSING:
                    logger.warning("the cached fused-kernel library %s is unusable (%s); "
                                   "building it again", target, problem)
                return _build_into(compiler, folder, workspace)
        finally:
            shutil.rmtree(workspace, ignore_errors=True)
    raise NativeBuildError(f"cannot write the fused-kernel library to {' or '.join(unwritable)}: "
                           "set SASREC_QAT_CACHE to a writable folder, or export without --fused")
