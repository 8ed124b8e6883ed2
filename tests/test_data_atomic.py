"""data.atomic.atomic_write: whole files or none, with the permissions open() would give."""
from __future__ import annotations

import os
import stat

import pytest

from data.atomic import atomic_write


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o077, 0o600),
                                                 (0o002, 0o664)])
def test_new_file_permissions_follow_the_umask(tmp_path, umask, expected):
    """0666 less the umask, as open() gives a new file (not mkstemp's 0600 whatever the umask:
    a group sharing a run folder could not read its files)."""
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "f.json", lambda f: f.write("{}"), mode="w")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == expected
    assert (tmp_path / "f.json").read_text() == "{}"


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
