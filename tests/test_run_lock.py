"""qat.run_lock: one training process per run folder; a killed run's temporary files go."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import TINY_TRAIN, cyclic_dataset, run_in_process

from data import write_sasrec_text
from qat.run_lock import (
    RunFolderBusy,
    network_filesystem,
    remove_stale_temp_files,
    run_folder_lock,
)


def test_a_second_lock_on_the_folder_is_refused_until_the_first_ends(tmp_path):
    folder = tmp_path / "run"
    with run_folder_lock(folder) as locked:
        assert locked and folder.is_dir()
        with pytest.raises(RunFolderBusy, match=r"run is being written by another process "
                                                r"\(a training or an export holds"):
            with run_folder_lock(folder):
                pass
    with run_folder_lock(folder) as locked:  # released at the end of the block
        assert locked
    assert list(folder.iterdir()) == []  # the lock writes no file


def test_a_file_is_not_a_run_folder(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match="is a file; give a folder for the run"):
        with run_folder_lock(path):
            pass


def test_only_the_trainers_stale_temp_files_are_removed(tmp_path):
    names = [".checkpoint.pt.k2j4x9.tmp", ".metrics.json.a1b2c3.tmp",  # a killed trainer's
             ".parity.json.zz9.tmp", ".model_int8.onnx.q1.tmp",  # an export's: kept
             "checkpoint.pt", ".checkpoint.pt.tmp", "checkpoint.pt.x.tmp"]  # not atomic_write's
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert remove_stale_temp_files(tmp_path, ["checkpoint.pt", "metrics.json"]) == [
        ".checkpoint.pt.k2j4x9.tmp", ".metrics.json.a1b2c3.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_the_kernel_drops_the_lock_of_a_killed_process(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from qat.run_lock import run_folder_lock
        with run_folder_lock({str(folder)!r}):
            print("locked", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy):
            with run_folder_lock(folder):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    with run_folder_lock(folder) as locked:
        assert locked


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "cyclic.txt"
    write_sasrec_text(cyclic_dataset(), path)
    return path


def test_training_into_a_folder_another_process_trains_into_is_one_error(data, tmp_path):
    folder = tmp_path / "run"
    with run_folder_lock(folder):  # as a first train_qat.py holds it
        result = run_in_process("train_qat", "--data", data, *TINY_TRAIN, "--epochs", 1,
                                "--out", folder)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode == 2 and len(errors) == 1, result.stderr
        assert "is being written by another process" in errors[0]
        assert list(folder.iterdir()) == []  # nothing written
        resumed = run_in_process("train_qat", "--data", data, *TINY_TRAIN, "--epochs", 1,
                                 "--out", folder, "--resume")
        assert resumed.returncode == 2 and "another process" in resumed.stderr


def test_resume_removes_what_a_killed_run_was_writing(data, tmp_path):
    folder = tmp_path / "run"
    first = run_in_process("train_qat", "--data", data, *TINY_TRAIN, "--epochs", 1,
                           "--out", folder)
    assert first.returncode == 0, first.stderr
    stale = folder / ".checkpoint.pt.4kq9zt1e.tmp"  # kill -9 during a checkpoint write
    stale.write_bytes(b"\x80\x02partial")
    resumed = run_in_process("train_qat", "--data", data, *TINY_TRAIN, "--epochs", 2,
                             "--out", folder, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not stale.exists()
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_an_export_holds_the_lock_and_clears_what_a_killed_export_left(data, tmp_path):
    folder = tmp_path / "run"
    assert run_in_process("train_qat", "--data", data, *TINY_TRAIN, "--epochs", 1,
                          "--out", folder).returncode == 0
    with run_folder_lock(folder):  # a training (or another export) writing the folder
        busy = run_in_process("export_int8", "--run", folder, "--threads", 1, "--no-progress")
        assert busy.returncode == 2 and "is being written by another process" in busy.stderr
        assert not (folder / "parity.json").exists()
    stale = [folder / ".model_fp32.onnx.x8k2m1q0.tmp", folder / ".parity.json.p0o9i8u7.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    checkpoint_temp = folder / ".checkpoint.pt.abcdefgh.tmp"  # not an export's file: kept
    checkpoint_temp.write_bytes(b"")
    done = run_in_process("export_int8", "--run", folder, "--threads", 1, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert not any(path.exists() for path in stale) and checkpoint_temp.exists()
    assert (folder / "parity.json").is_file()


def test_network_filesystem_is_the_longest_mount_above_the_folder(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda1 / ext4 rw 0 0\n"
                      "server:/export /shared nfs4 rw,relatime 0 0\n"
                      "tmpfs /shared/scratch tmpfs rw 0 0\n"
                      "//nas/share /mnt/my\\040nas cifs rw 0 0\n")
    assert network_filesystem("/shared/runs/fp32", str(mounts)) == "nfs4"
    assert network_filesystem("/shared", str(mounts)) == "nfs4"
    assert network_filesystem("/shared/scratch/run", str(mounts)) is None  # tmpfs inside it
    assert network_filesystem("/sharedother/run", str(mounts)) is None  # a prefix, not a parent
    assert network_filesystem("/mnt/my nas/run", str(mounts)) == "cifs"
    assert network_filesystem("/home/u/run", str(mounts)) is None
    assert network_filesystem("/home/u/run", str(tmp_path / "none")) is None  # unreadable


def test_on_a_network_file_system_temp_files_are_left_alone(tmp_path, monkeypatch):
    """Another host may be writing them: its directory flock need not reach this one."""
    import qat.run_lock as run_lock

    stale = tmp_path / ".checkpoint.pt.k2j4x9.tmp"
    stale.write_bytes(b"")
    monkeypatch.setattr(run_lock, "network_filesystem", lambda folder: "nfs4")
    with run_folder_lock(tmp_path) as locked:
        assert locked and stale.exists()
    monkeypatch.undo()
    with run_folder_lock(tmp_path):
        assert not stale.exists()


def test_without_flock_the_writer_goes_on_unlocked_and_keeps_temp_files(tmp_path, monkeypatch):
    """A file system (or OS) that cannot lock: no error, nothing removed."""
    import fcntl

    def unsupported(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    stale = tmp_path / ".checkpoint.pt.k2j4x9.tmp"
    stale.write_bytes(b"")
    monkeypatch.setattr(fcntl, "flock", unsupported)
    with run_folder_lock(tmp_path) as locked:
        assert not locked and stale.exists()
