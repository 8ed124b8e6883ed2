"""One writer per run folder: an exclusive lock held while a training or an export writes it.

Two trainings writing one folder (``train_qat.py --out X`` started twice, a ``--resume`` while
the first run still trains, ``run_all.py`` beside a hand-started run) would interleave their
checkpoints and records without a word. The trainer therefore holds an exclusive ``flock`` on
the folder itself (its directory file descriptor: no lock file is written) from before it reads
the checkpoint until the run is written; a second process gets one clear error. The kernel
drops the lock when the process ends, however it ends (``kill -9`` included), so a crashed run
never leaves a stale lock behind.

``export.export_run`` (``export_int8.py``) takes the same lock, so an export never writes a
folder that a training or another export is writing. With the lock held nobody else can be
writing the folder, so the temporary files a killed writer left (``data.atomic.atomic_write``'s
``.<name>.<random>.tmp`` beside each file it was writing) are removed then: each writer removes
those of the files it writes.

On a network file system (NFS, SMB, Lustre, ...: ``network_filesystem``) a directory
``flock`` is at best seen by the processes of one host, so the lock still keeps two writers on
one machine apart, but the temporary files are left alone: a writer on another host may be
writing them. Where the file system does not support ``flock`` at all, the writer goes on
unlocked, as before, and leaves them alone too (so does a system without ``fcntl``).
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterable, Iterator

from data import ITEM_IDS
from qat.run_files import CHECKPOINT, CONFIG, INT8_MODEL, METRICS

TRAINER_FILES = (CHECKPOINT, CONFIG, METRICS, INT8_MODEL, ITEM_IDS)  # what training writes
# /proc/mounts types whose locks other hosts may not see
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "lustre", "gpfs", "beegfs",
                       "ceph", "glusterfs", "afs", "fuse.sshfs", "fuse.glusterfs", "fuse.s3fs")


class RunFolderBusy(OSError):
    """Another process holds the run folder's lock (a training or an export writing it)."""


@contextlib.contextmanager
def run_folder_lock(folder: str | os.PathLike[str],
                    written: Iterable[str] = TRAINER_FILES) -> Iterator[bool]:
    """Create ``folder`` if needed and hold an exclusive lock on it for the ``with`` block;
    yields whether it is locked (False where the file system cannot lock). Once locked, stale
    temporary files of the ``written`` file names are removed.

    Raises:
        RunFolderBusy: another process holds the lock.
        ValueError: ``folder`` is a file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file; give a folder for the run")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened as a file (Windows, no read permission)
        yield False
        return
    try:
        locked = _try_lock(fd, folder)
        if locked and network_filesystem(folder) is None:
            remove_stale_temp_files(folder, written)
        yield locked
    finally:
        os.close(fd)  # releases the lock


def _try_lock(fd: int, folder: Path) -> bool:
    try:
        import fcntl  # POSIX; elsewhere (Windows) the writer goes on unlocked
    except ImportError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunFolderBusy(
                f"{folder} is being written by another process (a training or an export holds "
                "the folder's lock): wait for it to end, or stop it") from None
        return False  # no flock here (ENOLCK, EOPNOTSUPP, ...): train unlocked
    return True


def network_filesystem(folder: str | os.PathLike[str],
                       mounts: str = "/proc/self/mounts") -> str | None:
    """The type of the network file system ``folder`` lies on (``NETWORK_FILESYSTEMS``), from
    the longest mount point above it in ``mounts``; None for a local one or where that cannot
    be read (not Linux).
    """
    try:
        table = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    path = Path(folder).resolve()
    best, kind = -1, None
    for line in table:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (path == point or point in path.parents) and len(point.parts) > best:
            best, kind = len(point.parts), fields[2]
    return kind if kind in NETWORK_FILESYSTEMS else None


def remove_stale_temp_files(folder: Path, written: Iterable[str]) -> list[str]:
    """Remove ``atomic_write``'s leftovers ``.<name>.<random>.tmp`` of the ``written`` names
    in ``folder`` (call it only while no other process can be writing them); returns the names
    removed."""
    removed = []
    for name in written:
        for leftover in folder.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed.append(leftover.name)
    return sorted(removed)
