"""Building and caching the fused-kernel library (export/native_ops.py) on bad input: a damaged
cached copy is rebuilt instead of crashing the process that loads it (SIGBUS), a compiler that
fails is named with its reason, a read-only cache falls back to the temporary directory, and
a library that needs a newer onnxruntime than the one loading it says so.

The kernels themselves are tested in test_export_fused.py and test_export_numerics.py.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import load_script, train_tiny_runs
from test_export_models import one_torch_thread  # noqa: F401  (autouse fixture)
from test_export_models import batch, tiny_model

from export import OnnxScorer, build_sasrec_onnx, make_session, native_ops


LIBRARY = native_ops.LIBRARY_NAME
CHECKSUM = LIBRARY + ".sha256"  # the sidecar holding its hex sha256


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder for this test; ``library_path`` forgets its answer around it."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SASREC_QAT_CACHE", str(folder))
    monkeypatch.setattr(native_ops.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    native_ops.library_path.cache_clear()
    yield folder
    native_ops.library_path.cache_clear()


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> tuple[str, bytes]:
    """(``native/<key>``, the bytes of a library built by ``library_path``), built once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SASREC_QAT_CACHE", str(tmp_path_factory.mktemp("genuine")))
        native_ops.library_path.cache_clear()
        try:
            path = native_ops.library_path()
        finally:
            native_ops.library_path.cache_clear()
    return f"native/{path.parent.name}", path.read_bytes()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _assert_fused_session_runs() -> None:
    """A fused SASRec graph, run with the library ``library_path`` gives now, scores as the
    exact ONNX-function graph does."""
    model = tiny_model("lsq")
    x = batch(21, size=6)
    expected = OnnxScorer(make_session(build_sasrec_onnx(model), threads=1))(x)
    got = OnnxScorer(make_session(build_sasrec_onnx(model, fused=True), threads=1))(x)
    np.testing.assert_array_equal(got.numpy(), expected.numpy())


def _record_load_checks(monkeypatch) -> list[Path]:
    """The libraries ``native_ops`` loads in a child process, from now on."""
    loaded: list[Path] = []
    check = getattr(native_ops, "_load_problem", None)  # (absent before the checks existed)

    def recording(library: Path) -> str | None:
        loaded.append(library)
        return check(library)

    monkeypatch.setattr(native_ops, "_load_problem", recording, raising=False)
    return loaded


@pytest.mark.slow
@pytest.mark.parametrize("damage, reason, loaded", [
    # the case: half the file, no checksum (a cache written before checksums)
    ("truncated", "no .sha256 checksum next to it", False),
    # a checksum that matches the damaged bytes: only loading it (in a child) tells
    ("truncated, matching checksum", "loading it crashed: killed by SIG", True),
    # the checksum of the genuine library: rebuilt without even loading the damaged bytes
    ("random bytes, genuine checksum", "its bytes differ from the checksum", False),
], ids=["truncated", "truncated-matching-checksum", "random-bytes"])
def test_damaged_cached_library_is_rebuilt(cache, genuine, monkeypatch, caplog, damage, reason,
                                           loaded):
    """A damaged copy at the cached path is reported in one warning line and replaced by a
    new build (loading it here would kill the process with SIGBUS, as it did before)."""
    folder, good = genuine
    target = cache / folder / LIBRARY
    target.parent.mkdir(parents=True)
    if damage.startswith("truncated"):
        bad = good[: len(good) // 2]
    else:
        bad = np.random.default_rng(0).integers(0, 256, len(good), dtype=np.uint8).tobytes()
    target.write_bytes(bad)
    if damage == "truncated, matching checksum":
        (target.parent / CHECKSUM).write_text(_sha256(bad) + "\n")
    elif damage == "random bytes, genuine checksum":
        (target.parent / CHECKSUM).write_text(_sha256(good) + "\n")
    checks = _record_load_checks(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=native_ops.__name__):
        path = native_ops.library_path()
    assert path == target
    rebuilt = path.read_bytes()
    assert rebuilt != bad  # checked before anything loads it here
    assert (target.parent / CHECKSUM).read_text().strip() == _sha256(rebuilt)
    assert (target in checks) == loaded
    warnings = [r.getMessage() for r in caplog.records if r.name == native_ops.__name__]
    assert len(warnings) == 1
    assert str(target) in warnings[0] and reason in warnings[0]
    assert "building it again" in warnings[0]
    assert not list(target.parent.glob(".build-*"))  # no temporary folder left behind
    _assert_fused_session_runs()
    # the next process finds the rebuilt copy good and keeps it
    native_ops.library_path.cache_clear()
    built = path.stat().st_mtime_ns
    caplog.clear()
    assert native_ops.library_path() == path and path.stat().st_mtime_ns == built
    assert not [r for r in caplog.records if r.name == native_ops.__name__]


def test_failing_compiler_is_named_with_its_reason(cache, monkeypatch):
    """CXX=/bin/false answers ``--version`` with exit status 1 (and compiles nothing, silently):
    the error names it and why, on its first line (the one the benchmark's note keeps)."""
    monkeypatch.setenv("CXX", "/bin/false")
    with pytest.raises(native_ops.NativeBuildError) as caught:
        native_ops.library_path()
    reason = caught.value.reason
    assert reason == str(caught.value).splitlines()[0]
    assert "'/bin/false' is not a working C++ compiler" in reason
    assert "'/bin/false --version' failed (exit status 1" in reason
    assert "set CXX to" in reason
    assert not list(cache.rglob(LIBRARY))


@pytest.mark.parametrize("output, expected", [
    ("", "failed (exit status 1, no output)"),
    ("x.cc: In function 'int f()':\\nx.cc:3:1: error: boom\\n1 error",
     "failed (exit status 1: x.cc:3:1: error: boom)"),
], ids=["silent", "gcc-like"])
def test_compile_failure_reason_is_on_the_first_line(cache, tmp_path, monkeypatch, output,
                                                     expected):
    """A compiler that answers ``--version`` but fails to compile: the first line names it,
    its exit status and its first error line (not g++'s "In function" context); the command
    and the whole output follow."""
    fake = tmp_path / "fake-cxx"
    fake.write_text("#!/bin/sh\n"
                    'if [ "$1" = --version ]; then echo "fake-cxx 1.0"; exit 0; fi\n'
                    f'printf "{output}" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    with pytest.raises(native_ops.NativeBuildError) as caught:
        native_ops.library_path()
    assert caught.value.reason == (f"compiling the fused INT8 kernels with CXX {str(fake)!r} "
                                   f"{expected}; fix the compiler or set CXX to g++, or export "
                                   "without --fused")
    details = str(caught.value).splitlines()[1:]
    assert details[0].startswith(f"{fake} ") and details[0].endswith(LIBRARY)
    assert not list(cache.rglob(LIBRARY)) and not list(cache.rglob(".build-*"))


def test_benchmark_note_keeps_the_reason(cache, tmp_path, monkeypatch):
    """benchmark.py skips the fused graphs when the library cannot be built; its note says why."""
    (tmp_path / "runs").mkdir()
    _, fp32, _ = train_tiny_runs(tmp_path / "runs")
    monkeypatch.setenv("CXX", "/bin/false")
    out = tmp_path / "bench.json"
    assert load_script("benchmark").main([
        "--runs", str(fp32), "--repeats", "1", "--warmup", "0", "--batches", "1",
        "--threads", "1", "--no-baselines", "--out", str(out)]) == 0
    [note] = [n for n in json.loads(out.read_text())["notes"] if "fused" in n]
    assert note.startswith("fused INT8 graphs skipped: CXX '/bin/false' is not a working C++ "
                           "compiler: '/bin/false --version' failed (exit status 1")


@pytest.mark.slow
def test_read_only_cache_builds_in_the_temporary_directory(cache, genuine, tmp_path,
                                                           monkeypatch, caplog):
    """A cache that cannot be written (a shared, read-only one) holding a damaged copy: the
    library is built in the temporary directory instead, the damaged copy left as it is."""
    folder, good = genuine
    damaged = cache / folder / LIBRARY
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(good[: len(good) // 2])
    read_only = [cache, cache / "native", damaged.parent]
    for path in read_only:
        path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:  # permission bits do not stop root: fail its writes there by hand
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if Path(path).is_relative_to(cache):
                raise PermissionError(13, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        with caplog.at_level(logging.WARNING, logger=native_ops.__name__):
            path = native_ops.library_path()
        assert path == tmp_path / "tmp" / f"sasrec-qat-{os.getuid()}" / folder / LIBRARY
        assert path.read_bytes() != damaged.read_bytes() == good[: len(good) // 2]
        [warning] = [r.getMessage() for r in caplog.records if r.name == native_ops.__name__]
        assert str(damaged) in warning and "its folder is not writable" in warning
        _assert_fused_session_runs()
        native_ops.library_path.cache_clear()  # the next process reuses the temporary copy
        built = path.stat().st_mtime_ns
        assert native_ops.library_path() == path and path.stat().st_mtime_ns == built
    finally:
        for path in read_only:
            path.chmod(stat.S_IRWXU)


@pytest.mark.slow
def test_concurrent_builders_leave_one_complete_library(cache, monkeypatch):
    """Two builders at once on an empty cache: one compiles, the other waits for it and takes
    its library; the file in place loads and matches its checksum."""
    compiled: list[Path] = []
    compile_library = native_ops.compile_library

    def counting(output: Path, *args, **kwargs) -> None:
        compiled.append(output)
        compile_library(output, *args, **kwargs)

    monkeypatch.setattr(native_ops, "compile_library", counting)
    start = threading.Barrier(2)
    results: list[Path | BaseException] = []

    def build() -> None:
        start.wait()
        try:
            results.append(native_ops.library_path.__wrapped__())  # past the lru_cache
        except BaseException as err:  # reported by the assertion below
            results.append(err)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1] and isinstance(results[0], Path)
    assert len(compiled) == 1
    path = results[0]
    assert native_ops._load_problem(path) is None
    assert (path.parent / CHECKSUM).read_text().strip() == _sha256(path.read_bytes())
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", LIBRARY, CHECKSUM]


@pytest.mark.slow
def test_library_for_a_newer_onnxruntime_fails_to_register(tmp_path):
    """A library that asks onnxruntime for a C API version it lacks (as on a runtime older than
    the library's) fails to register with a message naming the version, instead of
    registering nothing and reporting success."""
    library = tmp_path / LIBRARY
    native_ops.compile_library(library, extra_flags=["-DSASREC_QAT_ORT_API_VERSION=9999"])
    with pytest.raises(Exception, match=(
            r"libsasrec_qat_ops needs onnxruntime C API version 9999 \(onnxruntime >= 1\.9999\); "
            rf"this onnxruntime \({ort.__version__}\) does not provide it")):
        ort.SessionOptions().register_custom_ops_library(str(library))
