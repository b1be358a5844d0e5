"""Atomic writes and the one JSON-object reader every stage uses."""
from __future__ import annotations

import os
import stat

import pytest

from edgeprune.errors import RunError
from edgeprune.fileio import read_json_object, sha256_file, write_json_atomic


def test_atomic_write_leaves_no_temp_file_and_a_normal_mode(tmp_path):
    path = tmp_path / "a" / "doc.json"
    write_json_atomic(path, {"x": 1})
    assert read_json_object(path, RunError, "hint") == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["doc.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("content, message", [(None, "is missing"), ("{not json", "not valid JSON"),
                                              ("[1, 2]", "does not hold a JSON object")])
def test_reading_a_bad_json_file_names_the_file_and_the_fix(tmp_path, content, message):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RunError, match=message) as caught:
        read_json_object(path, RunError, "retrain the run")
    assert str(path) in str(caught.value) and "retrain the run" in str(caught.value)


def test_sha256_of_a_known_file(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_full_disk_is_a_storage_error_naming_the_file(tmp_path, monkeypatch):
    import errno
    import os

    from edgeprune.errors import StorageError
    from edgeprune.fileio import write_bytes_atomic

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("edgeprune.fileio.os.fsync", full)
    target = tmp_path / "out.json"
    with pytest.raises(StorageError, match=r"out\.json: no space left on device; free some space"):
        write_bytes_atomic(target, b"{}")
    assert list(tmp_path.iterdir()) == []


def test_other_os_errors_are_not_reported_as_storage(tmp_path, monkeypatch):
    import errno

    from edgeprune.fileio import write_bytes_atomic

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("edgeprune.fileio.os.fsync", broken)
    with pytest.raises(OSError) as raised:
        write_bytes_atomic(tmp_path / "x", b"1")
    assert raised.value.errno == errno.EIO

