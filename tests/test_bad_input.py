"""Bad input to the entry points, table-driven: one ``error:`` line, exit 2, nothing changed.

Each case builds its input (a broken file, a flag, a damaged copy of a run) inside its own
folder, runs one script's ``main`` in process, and checks:

* the exit status is 2;
* stderr ends with exactly one ``error:`` line matching the case's pattern, and holds no
  traceback and no argparse usage block (train_qat.py may first print its one-line summary of
  the data);
* every file that existed before the call is byte-identical afterwards (sha256 of the shared
  runs and of the case's own folder), and no file was added to the shared runs.

The shared runs (a tiny FP32 run, an STE run from it, their ONNX exports) are trained once per
module on the cyclic dataset of conftest.py. Cases that need the network use a loopback URL that
refuses connections; nothing leaves the machine.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from conftest import TINY_TRAIN, cyclic_dataset, load_script, train_tiny_runs

from data import SequenceDataset, write_sasrec_text

SCRIPTS = ("train_qat", "export_int8", "benchmark", "run_all", "recommend", "paired_ndcg")
REFUSED_URL = "http://127.0.0.1:9/ml-1m.zip"  # discard port: nothing listens, refused at once


@dataclass
class World:
    """The shared runs, and the case's own scratch folder."""

    data: Path
    fp32: Path
    ste: Path
    tmp: Path = field(default=Path())

    def copy(self, run: Path, name: str) -> Path:
        """A copy of a shared run (cases damage copies, never the shared runs)."""
        return Path(shutil.copytree(run, self.tmp / name))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad_input")
    data, fp32, qat = train_tiny_runs(root, ["ste"])
    export = load_script("export_int8")
    for run in (fp32, qat["ste"]):
        assert export.main(["--run", str(run), "--threads", "1"]) == 0
    return World(data, fp32, qat["ste"])


def _write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _without(path: Path) -> Path:
    """Delete ``path``; returns its folder."""
    path.unlink()
    return path.parent


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _permuted_copy(w: World) -> Path:
    """The same interactions with item ids permuted: same item count, other items."""
    base = cyclic_dataset()
    perm = np.random.default_rng(0).permutation(base.num_items) + 1
    sequences = {u: [int(perm[i - 1]) for i in items] for u, items in base.sequences.items()}
    path = w.tmp / "permuted.txt"
    write_sasrec_text(SequenceDataset(sequences, base.num_users, base.num_items, "permuted"), path)
    return path


def _train(w: World, *flags: str, out: str = "out") -> list[str]:
    return ["--data", str(w.data), *TINY_TRAIN, "--epochs", "1", "--out", str(w.tmp / out),
            *flags]


def _bench(w: World, *flags: str) -> list[str]:
    """benchmark.py on the shared FP32 run, writing into the case's folder, plus ``flags``."""
    return ["--runs", str(w.fp32), "--out", str(w.tmp / "b.json"), *flags]


def _run_all(w: World, *flags: str) -> list[str]:
    """run_all.py on the shared data into the case's folder, plus ``flags``."""
    return ["--data", str(w.data), "--out", str(w.tmp / "all"), *flags]


def _resume(w: World, *flags: str) -> list[str]:
    """Resume a copy of the FP32 run with the flags it was trained with, plus ``flags``."""
    run = w.copy(w.fp32, "resumed")
    return ["--data", str(w.data), *TINY_TRAIN, "--epochs", "2", "--out", str(run), "--resume",
            *flags]


def _trained(w: World, out: str, *flags: str) -> bool:
    """Train ``_train(w, *flags, out=out)`` (later flags win: ``--epochs 2``); True if it
    worked, so a case can build on it inside its lambda."""
    return load_script("train_qat").main(_train(w, *flags, out=out)) == 0


def _permuted_run(w: World) -> Path:
    """An FP32 run of the permuted copy: same architecture and item count, other items."""
    run = w.tmp / "permuted_run"
    assert load_script("train_qat").main(["--data", str(_permuted_copy(w)), *TINY_TRAIN,
                                          "--epochs", "1", "--out", str(run)]) == 0
    return run


def _retrained_fp32(w: World) -> Path:
    """Another FP32 run of the same data and architecture (another seed): the shared QAT run
    did not start from its checkpoint."""
    run = w.tmp / "fp32_again"
    assert load_script("train_qat").main(["--data", str(w.data), *TINY_TRAIN, "--epochs", "1",
                                          "--seed", "7", "--out", str(run)]) == 0
    return run


def _damage(path: Path, state: str = "model") -> Path:
    """Overwrite 16 bytes inside the item table of ``state`` (the best model of a checkpoint,
    ``qat_state`` of model_int8.pt): the zip stays valid, torch loads it without complaint."""
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=False)
    table = saved[state]["item_emb.weight"]
    raw = bytearray(path.read_bytes())
    at = bytes(raw).index(table[1, :8].numpy().tobytes())  # row 0 is the zero padding row
    raw[at:at + 16] = b"\x7f" * 16
    path.write_bytes(bytes(raw))
    return path


@dataclass(frozen=True)
class Case:
    name: str
    script: str
    argv: Callable[[World], list[str]]
    error: str  # regex the single error line must match (after "error: ")
    env: dict[str, str] = field(default_factory=dict)


CASES = [
    # -- train_qat.py: data --------------------------------------------------------------------
    Case("missing data file", "train_qat",
         lambda w: ["--data", str(w.tmp / "nope.txt"), "--out", str(w.tmp / "o")],
         r"nope\.txt.*does not exist"),
    Case("data is a directory", "train_qat",
         lambda w: ["--data", str(w.tmp), "--out", str(w.tmp / "o")], r"is a directory"),
    Case("empty data file", "train_qat",
         lambda w: ["--data", str(_write(w.tmp / "empty.txt", b"")), "--out", str(w.tmp / "o")],
         r"empty\.txt:1: file is empty"),
    Case("item ids far from dense (a table of 2e9 rows)", "train_qat",
         lambda w: ["--data", str(_write(w.tmp / "sparse.txt",
                                         "1 1\n1 2\n1 2000000000\n2 1\n2 2\n2 1\n")),
                    "--out", str(w.tmp / "o")],
         r"sparse\.txt:3: item id 2000000000 but the file holds 3 distinct items"),
    Case("malformed line", "train_qat",
         lambda w: ["--data", str(_write(w.tmp / "bad.txt", "1 2\n1 3\n1 x\n")),
                    "--out", str(w.tmp / "o")], r"bad\.txt:3:"),
    Case("binary file", "train_qat",
         lambda w: ["--data", str(_write(w.tmp / "blob.bin", bytes(range(256)) * 4)),
                    "--out", str(w.tmp / "o")], r"blob\.bin:1:"),
    Case("bad zip", "train_qat",
         lambda w: ["--data", str(_write(w.tmp / "ml-1m.zip", b"PK\x03\x04 not a zip")),
                    "--out", str(w.tmp / "o")], r"ml-1m\.zip"),
    Case("zip without ratings.dat", "train_qat",
         lambda w: ["--data", str(_zip_without_ratings(w)), "--out", str(w.tmp / "o")],
         r"ratings\.dat"),
    Case("ml-1m offline", "train_qat",
         lambda w: ["--data", "ml-1m", "--cache-dir", str(w.tmp / "cache"), "--mirror",
                    REFUSED_URL, "--out", str(w.tmp / "o")],
         r"downloading .* failed.*put ml-1m\.zip .* at .*--mirror URL"),
    # -- train_qat.py: flags -------------------------------------------------------------------
    Case("unknown method", "train_qat",
         lambda w: ["--qconfig", "int3", "--data", str(w.data), "--out", str(w.tmp / "o")],
         r"invalid choice: 'int3'.*--help"),
    Case("bad bits", "train_qat",
         lambda w: _train(w, "--qconfig", "ste", "--bits", "9", "--init-from", str(w.fp32)),
         r"bits.*9"),
    Case("bits APoT has no level set for", "train_qat",
         lambda w: _train(w, "--qconfig", "apot", "--bits", "6", "--init-from", str(w.fp32)),
         r"bits.*6"),
    Case("bits with fp32", "train_qat", lambda w: _train(w, "--bits", "4"),
         r"--bits applies to QAT methods.*drop --bits"),
    Case("zero epochs", "train_qat", lambda w: _train(w, "--epochs", "0"), r"epochs"),
    Case("zero max-len", "train_qat", lambda w: _train(w, "--max-len", "0"),
         r"max_len \(--max-len\) must be a positive integer, got 0"),
    Case("heads not dividing hidden", "train_qat", lambda w: _train(w, "--heads", "3"),
         r"divisible by heads"),
    Case("negative threads", "train_qat", lambda w: _train(w, "--threads", "-1"), r"threads"),
    Case("threads far above any machine (torch would crash)", "train_qat",
         lambda w: _train(w, "--threads", "100000"),
         r"argument --threads: a thread count is in \[0, 1024\]"),
    Case("negative seed", "train_qat", lambda w: _train(w, "--seed", "-1"),
         r"argument --seed: a seed is an integer in \[0, 4294967295\], got -1"),
    Case("seed past 64 bits", "train_qat", lambda w: _train(w, "--seed", "9" * 20),
         r"argument --seed: a seed is an integer in"),
    Case("negative --quant-lr", "train_qat",
         lambda w: _train(w, "--qconfig", "lsq", "--init-from", str(w.fp32), "--quant-lr", "-1"),
         r"--quant-lr must be a positive finite learning rate, got -1"),
    Case("NaN --quant-lr", "train_qat",
         lambda w: _train(w, "--qconfig", "lsq", "--init-from", str(w.fp32), "--quant-lr",
                          "nan"), r"--quant-lr must be a positive finite learning rate, got nan"),
    Case("--eval-negatives beyond the catalogue", "train_qat",
         lambda w: _train(w, "--eval-negatives", "1000"),
         r"--eval-negatives 1000 is not below the catalogue's \d+ items"),
    Case("no user with 3 interactions", "train_qat",
         lambda w: ["--data", str(_write(w.tmp / "pairs.txt", "1 1\n1 2\n2 2\n2 3\n")),
                    *TINY_TRAIN, "--epochs", "1", "--out", str(w.tmp / "o")],
         r"pairs\.txt: no user has the 3 interactions the leave-one-out split needs .*has 2"),
    Case("device that is not there", "train_qat", lambda w: _train(w, "--device", "cuda:99"),
         r"--device cuda:99: (CUDA is not available .*available: cpu|this machine has \d+ GPU)"),
    Case("unknown device", "train_qat", lambda w: _train(w, "--device", "tpu"),
         r"--device must be one of auto, cpu, cuda or cuda:N, got 'tpu'"),
    Case("zero batch size per rank", "train_qat",
         lambda w: _train(w, "--batch-size-per-rank", "0"), r"--batch-size-per-rank must be >= 1"),
    Case("out is a file", "train_qat",
         lambda w: _train(w, out=_write(w.tmp / "taken", b"x").name),
         r"argument --out: .*taken is a file; give a folder"),
    Case("out not writable (under a file)", "train_qat",
         lambda w: _train(w, out=f"{_write(w.tmp / 'file', b'x').name}/run"),
         r"argument --out: .*file/run: .*file is a file, not a folder"),
    Case("out empty (would be the current folder)", "train_qat",
         lambda w: ["--data", str(w.data), *TINY_TRAIN, "--out", ""],
         r"argument --out: a path is needed, got an empty string"),
    Case("--batch-size and --batch-size-per-rank", "train_qat",
         lambda w: _train(w, "--batch-size-per-rank", "4"),
         r"--batch-size 8 and --batch-size-per-rank 4 both set the batch: give one"),
    Case("--quant-lr with fp32", "train_qat", lambda w: _train(w, "--quant-lr", "0.01"),
         r"--quant-lr applies to QAT methods; --qconfig fp32 has no quantizer parameters"),
    Case("NaN loss", "train_qat", lambda w: _train(w, "--lr", "1e30"),
         r"(loss is nan|non-finite) at epoch 1, step \d+/\d+.*lower --lr"),
    # -- train_qat.py: --init-from -------------------------------------------------------------
    Case("init-from not a run", "train_qat",
         lambda w: _train(w, "--qconfig", "ste", "--init-from", str(w.tmp)),
         r"no checkpoint at"),
    Case("init-from a QAT run", "train_qat",
         lambda w: _train(w, "--qconfig", "ste", "--init-from", str(w.ste)),
         r"is a ste run; --init-from needs an fp32 run"),
    Case("init-from another dataset", "train_qat",
         lambda w: ["--data", str(_permuted_copy(w)), *TINY_TRAIN, "--epochs", "1",
                    "--qconfig", "ste", "--init-from", str(w.fp32), "--out", str(w.tmp / "o")],
         r"--init-from .* fingerprint .* same item ids must mean the same items"),
    Case("init-from truncated checkpoint", "train_qat",
         lambda w: _train(w, "--qconfig", "ste", "--init-from", str(
             _truncate(w.copy(w.fp32, "cut") / "checkpoint.pt").parent)),
         r"checkpoint\.pt is not a readable checkpoint"),
    Case("init-from random checkpoint", "train_qat",
         lambda w: _train(w, "--qconfig", "ste", "--init-from", str(
             _write(w.tmp / "rnd" / "checkpoint.pt", os.urandom(4096)).parent)),
         r"checkpoint\.pt is not a readable checkpoint"),
    Case("init-from damaged weights", "train_qat",
         lambda w: _train(w, "--qconfig", "ste", "--init-from", str(
             _damage(w.copy(w.fp32, "dmg") / "checkpoint.pt").parent)),
         r"checkpoint\.pt is corrupt: its content does not match"),
    # -- train_qat.py: --out and --resume --------------------------------------------------------
    Case("existing out without resume", "train_qat",
         lambda w: ["--data", str(w.data), *TINY_TRAIN, "--out", str(w.copy(w.fp32, "again"))],
         r"checkpoint\.pt exists: pass --resume"),
    Case("resume with another max-len", "train_qat",
         lambda w: _resume(w, "--max-len", "12"), r"cannot resume: .* holds a model"),
    Case("resume with another method", "train_qat",
         lambda w: _resume(w, "--qconfig", "ste", "--init-from", str(w.fp32)),
         r"cannot resume: .* --qconfig fp32, not ste"),
    Case("resume with another lr", "train_qat", lambda w: _resume(w, "--lr", "1e9"),
         r"cannot resume: .*lr 0\.001 \(asked: 1000000000\.0\)"),
    Case("resume with another seed", "train_qat", lambda w: _resume(w, "--seed", "7"),
         r"cannot resume: .*seed 42 \(asked: 7\)"),
    Case("resume with --epochs below the epochs trained", "train_qat",
         lambda w: [*_train(w, out="two"), "--epochs", "1", "--resume"]
         if _trained(w, "two", "--epochs", "2") else [],
         r"cannot resume: .*has trained 2 epochs, more than --epochs 1: give --epochs 2 or more"),
    Case("resume AdaRound with other --epochs (its regulariser anneals over them)", "train_qat",
         lambda w: [*_train(w, "--qconfig", "adaround", "--init-from", str(w.fp32), out="ada"),
                    "--epochs", "3", "--resume"]
         if _trained(w, "ada", "--qconfig", "adaround", "--init-from", str(w.fp32)) else [],
         r"cannot resume: .*trained with --epochs 1, and --qconfig adaround anneals its "
         r"rounding regulariser .*give --epochs 1"),
    Case("resume on another dataset", "train_qat",
         lambda w: ["--data", str(_permuted_copy(w)), *TINY_TRAIN, "--epochs", "2", "--out",
                    str(w.copy(w.fp32, "res")), "--resume"],
         r"cannot resume: .*dataset fingerprint"),
    Case("resume a QAT run from a retrained FP32 run", "train_qat",
         lambda w: ["--data", str(w.data), *TINY_TRAIN, "--epochs", "2", "--qconfig", "ste",
                    "--init-from", str(_retrained_fp32(w)), "--out", str(w.copy(w.ste, "res")),
                    "--resume"],
         r"cannot resume: .*--init-from checkpoint sha256 '[0-9a-f]{64}' "
         r"\(asked: '[0-9a-f]{64}'\)"),
    Case("resume from damaged checkpoint", "train_qat",
         lambda w: ["--data", str(w.data), *TINY_TRAIN, "--epochs", "2", "--resume", "--out",
                    str(_damage(w.copy(w.fp32, "dmg") / "checkpoint.pt").parent)],
         r"checkpoint\.pt is corrupt"),
    # -- export_int8.py --------------------------------------------------------------------------
    Case("export: --eval-negatives beyond the catalogue", "export_int8",
         lambda w: ["--run", str(w.copy(w.ste, "ste")), "--eval-negatives", "1000"],
         r"--eval-negatives 1000 is not below the catalogue's \d+ items"),
    Case("export: config.json deleted (the dataset check would pass by default)", "export_int8",
         lambda w: ["--run", str(_without(w.copy(w.ste, "ste") / "config.json")), "--data",
                    str(_permuted_copy(w))], r"ste/config\.json is missing: the run's dataset"),
    Case("export: config.json truncated", "export_int8",
         lambda w: ["--run", str(_truncate(w.copy(w.ste, "ste") / "config.json").parent)],
         r"ste/config\.json is unreadable \(.*\): the run's dataset cannot be checked"),
    Case("export: a model file given as the run", "export_int8",
         lambda w: ["--run", str(w.copy(w.ste, "ste") / "model_int8.onnx")],
         r"ste/model_int8\.onnx is a file, not a run folder: give the folder .*ste"),
    Case("export: no run folder", "export_int8",
         lambda w: ["--run", str(w.tmp / "nope")], r"no run folder at"),
    Case("export: empty folder", "export_int8",
         lambda w: ["--run", str(_mkdir(w.tmp / "empty"))], r"neither model_int8\.pt nor"),
    Case("export: truncated model_int8.pt", "export_int8",
         lambda w: ["--run", str(_truncate(w.copy(w.ste, "cut") / "model_int8.pt").parent)],
         r"model_int8\.pt is not a readable"),
    Case("export: damaged model_int8.pt", "export_int8",
         lambda w: ["--run", str(
             _damage(w.copy(w.ste, "dmg") / "model_int8.pt", "qat_state").parent)],
         r"model_int8\.pt is corrupt: its content does not match"),
    Case("export: another dataset", "export_int8",
         lambda w: ["--run", str(w.copy(w.ste, "perm")), "--data", str(_permuted_copy(w))],
         r"fingerprint .* pass --data with the run's dataset"),
    Case("export: fused without a compiler", "export_int8",
         lambda w: ["--run", str(w.copy(w.ste, "fused")), "--fused"],
         r"/bin/false", env={"CXX": "/bin/false", "SASREC_QAT_CACHE": "{tmp}/native-cache"}),
    # -- benchmark.py ----------------------------------------------------------------------------
    Case("benchmark: a catalogue smaller than its top-k lists", "benchmark",
         lambda w: _bench(w, "--items", "9"),
         r"--items values must be >= 10 \(its top-k graphs return 10 items\), got 9"),
    Case("benchmark: a catalogue too large for memory", "benchmark",
         lambda w: _bench(w, "--items", "2000000000"), r"--items 2000000000 is above 5,000,000"),
    Case("benchmark: no run folder", "benchmark",
         lambda w: ["--runs", str(w.tmp / "nope"), "--out", str(w.tmp / "b.json")],
         r"no run folder at"),
    Case("benchmark: runs of different datasets", "benchmark",
         lambda w: ["--runs", str(w.fp32), str(_permuted_run(w)), "--out", str(w.tmp / "b.json")],
         r"the runs were trained on different datasets \(fingerprints: .*fp32 [0-9a-f]{12}, "
         r".*permuted_run [0-9a-f]{12}\): no one dataset evaluates them all"),
    Case("benchmark: truncated ONNX", "benchmark",
         lambda w: ["--runs", str(_truncate(w.copy(w.fp32, "cut") / "model_fp32.onnx").parent),
                    "--out", str(w.tmp / "b.json"), "--batches", "1", "--threads", "1",
                    "--repeats", "1", "--warmup", "0", "--no-baselines"],
         r"model_fp32\.onnx"),
    # -- train_qat.py: own logs ------------------------------------------------------------------
    Case("log without the named column", "train_qat",
         lambda w: ["--data", str(_write(w.tmp / "log.csv", "user,item,ts\nu1,a,1\n")),
                    "--columns", "user,sku,ts", "--out", str(w.tmp / "o")],
         r"log\.csv:1: .*sku"),
    Case("log with a bad timestamp", "train_qat",
         lambda w: ["--data", str(_write(w.tmp / "log.csv",
                                         "user,item,timestamp\nu1,a,1\nu1,b,yesterday\n")),
                    "--out", str(w.tmp / "o")],
         r"log\.csv:3: .*yesterday"),
    Case("columns for a SASRec text file", "train_qat",
         lambda w: _train(w, "--columns", "0,1,2"), r"columns"),
    # -- recommend.py ----------------------------------------------------------------------------
    Case("recommend: unknown item ids", "recommend",
         lambda w: ["--model", str(w.ste / "model_int8.onnx"), "--history", "1", "nope", "x9"],
         r"unknown item id\(s\) 'nope', 'x9'"),
    Case("recommend: no model file", "recommend",
         lambda w: ["--model", str(w.tmp / "none.onnx"), "--history", "1"], r"none\.onnx"),
    Case("recommend: a file that is not ONNX", "recommend",
         lambda w: ["--model", str(_write(w.tmp / "m.onnx", b"not onnx")), "--history", "1"],
         r"m\.onnx"),
    # -- paired_ndcg.py --------------------------------------------------------------------------
    Case("paired_ndcg: a run of another dataset than the reference's", "paired_ndcg",
         lambda w: ["--reference", str(w.fp32), "--runs", str(_permuted_run(w))],
         r"the runs were trained on different datasets \(fingerprints: .*fp32 [0-9a-f]{12}, "
         r".*permuted_run [0-9a-f]{12}\)"),
    # -- run_all.py ------------------------------------------------------------------------------
    Case("run_all: zero --qat-epochs (refused before the FP32 run trains)", "run_all",
         lambda w: _run_all(w, "--qat-epochs", "0"),
         r"--qat-epochs must be >= 1"),
    Case("run_all: zero --sweep-hidden", "run_all",
         lambda w: _run_all(w, "--sweep-hidden", "0"),
         r"--sweep-hidden must be >= 1"),
    Case("run_all: --bench-top-k above the catalogue", "run_all",
         lambda w: _run_all(w, "--bench-top-k", "1000"),
         r"--bench-top-k 1000 is above the \d+ items of"),
    Case("run_all: bad bits", "run_all",
         lambda w: _run_all(w, "--methods", "apot", "--bits", "6"),
         r"apot supports --bits 4, 8, not 6"),
    Case("run_all: device that is not there", "run_all",
         lambda w: _run_all(w, "--device", "cuda:99"),
         r"--device cuda:99: (CUDA is not available|this machine has \d+ GPU)"),
    Case("run_all: --out is a file", "run_all",
         lambda w: ["--data", str(w.data), "--out", str(_write(w.tmp / "afile", b"x"))],
         r"argument --out: .*afile is a file; give a folder"),
    Case("run_all: --out empty", "run_all", lambda w: ["--data", str(w.data), "--out", ""],
         r"argument --out: a path is needed, got an empty string"),
    Case("export: --run empty", "export_int8", lambda w: ["--run", ""],
         r"argument --run: a path is needed, got an empty string"),
    Case("run_all: ml-1m offline", "run_all",
         lambda w: ["--data", "ml-1m", "--mirror", REFUSED_URL, "--out", str(w.tmp / "all"),
                    "--quiet", "--no-progress"],
         r"step 'train fp32' failed \(exit status 2: error: downloading .*--mirror URL",
         env={"SASREC_QAT_CACHE": "{tmp}/cache"}),
]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _zip_without_ratings(w: World) -> Path:
    path = w.tmp / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation\n")
    return path


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scripts():
    return {name: load_script(name) for name in SCRIPTS}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(case, world, scripts, tmp_path, capsys,
                                                monkeypatch):
    from export import native_ops

    world.tmp = tmp_path
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    native_ops.library_path.cache_clear()  # CXX and the cache folder are read when it builds
    argv = case.argv(world)
    shared_before = _tree_digest(world.data.parent)
    own_before = _tree_digest(tmp_path)
    capsys.readouterr()
    try:
        status = scripts[case.script].main(argv)
    except SystemExit as exit_:  # argparse exits by itself
        status = exit_.code
    finally:
        native_ops.library_path.cache_clear()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err and "usage:" not in err, err
    assert re.search(case.error, errors[0]), errors[0]
    assert _tree_digest(world.data.parent) == shared_before
    after = _tree_digest(tmp_path)
    assert {k: v for k, v in after.items() if k in own_before} == own_before
