"""How every ``scripts/`` entry point fails: one ``error:`` line on stderr and exit status 2.

A user of a command-line tool should see what to fix (a flag, a file), not a traceback. The
errors that mean "your input or your machine" are caught here; anything else is a bug and keeps
its traceback.

    def main(argv=None) -> int:
        return run_cli(_main, argv)

User errors (exit 2):

* ``ValueError`` (bad flags, bad files: ``data.DataFormatError`` is one) and ``OSError``
  (missing, unreadable or unwritable paths: ``FileNotFoundError``, ``FileExistsError``,
  ``PermissionError``);
* ``data.DownloadError`` (offline, a bad mirror, a wrong md5);
* ``FloatingPointError`` (training diverged: ``qat.train.NonFiniteError``);
* whatever the script adds in ``extra`` (e.g. ``export.native_ops.NativeBuildError``).

Ctrl-C prints ``interrupted`` and exits 130, the shell's convention.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from data import DownloadError
from qat.distributed import PeerFailed, lost_peer

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, DownloadError,
                                                FloatingPointError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one ``error:`` line (exit 2), too."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


MAX_SEED = 2**32 - 1  # numpy's legacy seeding and every generator the project seeds accept it
MAX_THREADS = 1024  # torch.set_num_threads far above the cores crashes the process (SIGSEGV)


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} is an integer, got {text!r}") from None


def seed_arg(text: str) -> int:
    """argparse ``type`` of a random seed: an integer in [0, 2**32 - 1]."""
    value = _integer(text, "a seed")
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is an integer in [0, {MAX_SEED}], got {text}")
    return value


def threads_arg(text: str) -> int:
    """argparse ``type`` of a thread count: an integer in [0, 1024] (0: the library's default,
    one per core)."""
    value = _integer(text, "a thread count")
    if not 0 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(
            f"a thread count is in [0, {MAX_THREADS}] (0: one per core), got {text}")
    return value


def _nearest_existing_above(path: Path) -> Path:
    """The nearest folder above ``path`` (absolute) that exists: where the writers, which
    make missing folders, would create it (the root at worst)."""
    return next((p for p in path.absolute().parents if p.exists()), Path(path.absolute().anchor))


def path_arg(text: str) -> Path:
    """argparse ``type`` of a path flag: refuses an empty string (``Path("")`` is the current
    folder, so ``--out ""`` would quietly write a run there)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a path is needed, got an empty string")
    return Path(text)


def folder_arg(text: str) -> Path:
    """argparse ``type`` of an output folder: a non-empty path (:func:`path_arg`) that is not a
    file and has no file where a folder above it should be."""
    path = path_arg(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    parent = _nearest_existing_above(path)
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
    return path


def check_output_file(path: str | os.PathLike | None, flag: str = "--out", *,
                      what: str = "the JSON") -> None:
    """Refuse, before any work, an output file path that names a folder or where no file can be
    created (``ValueError``: the error line names ``flag``); None (no output asked for) passes.

    The probe is a temporary file in the nearest existing folder above ``path`` (the writers
    make missing folders), removed at once: nothing is left behind.
    """
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder; give a file name for {what}")
    try:
        with tempfile.TemporaryFile(dir=_nearest_existing_above(Path(path))):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot write there ({err.strerror or err})") from err


def error_line(err: BaseException) -> str:
    """``err`` as one line: its message's lines joined, or its type's name if it has none.

    ``OSError`` from the standard library carries the file name apart from the message
    (``[Errno 13] Permission denied: 'runs/x'``); ``str`` already includes it.
    """
    text = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
    return text or type(err).__name__


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None, *,
            extra: Sequence[type[BaseException]] = ()) -> int:
    """``main(argv)``; a user error becomes ``error: <message>`` on stderr and status 2.

    Under torchrun (``WORLD_SIZE`` > 1) a rank other than 0 prefixes its line with
    ``[rank R]``, and a rank stopped because rank 0 failed (``qat.distributed.PeerFailed``)
    exits 2 without a line of its own: the reason is rank 0's line. A rank whose collective
    failed because another process died (``qat.distributed.lost_peer``) says so in one line
    (exit 2) instead of the backend's traceback.
    """
    try:
        return main(argv)
    except PeerFailed:
        return EXIT_USER_ERROR
    except (*USER_ERRORS, *extra) as err:
        rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 \
            else 0
        print(f"error: {f'[rank {rank}] ' if rank else ''}{error_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as err:
        if not lost_peer(err):
            raise  # a bug: keep the traceback
        reason = error_line(err).split(" This is typically caused", 1)[0].rstrip(". ")
        print(f"error: [rank {os.environ.get('RANK', '?')}] lost contact with another process "
              f"of the run, which stopped or was killed (its own output says why): {reason}; "
              "every checkpoint written so far is kept: rerun with --resume", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
