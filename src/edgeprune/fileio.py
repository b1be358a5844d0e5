"""Atomic writes and checksums, so an interrupted command never leaves a half-written file.

A write that fails because of the machine's state (a full disk, no permission, a read-only file
system) raises `StorageError` naming the path and what to do, never a raw OSError traceback.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator

from edgeprune.errors import StorageError

#: errno -> what the user can do about it.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "free some space (see `df -h`) or write somewhere else",
    errno.EDQUOT: "the disk quota is used up: free some space or write somewhere else",
    errno.EACCES: "you may not write there: fix its permissions or write somewhere else",
    errno.EPERM: "you may not write there: fix its permissions or write somewhere else",
    errno.EROFS: "that file system is read-only: write somewhere else",
}


def as_storage_error(error: OSError, path: Path | str | None = None) -> StorageError | None:
    """The `StorageError` for an OSError caused by the machine's storage, else None."""
    hint = _STORAGE_ERRNOS.get(error.errno)
    if hint is None:
        return None
    where = path or error.filename or "the output"
    return StorageError(f"cannot write {where}: {os.strerror(error.errno).lower()}; {hint}")


@contextlib.contextmanager
def storage_errors(path: Path | str) -> Iterator[None]:
    """Turn a full disk, a permission error or a read-only file system into `StorageError`."""
    try:
        yield
    except OSError as error:
        storage = as_storage_error(error, path)
        if storage is None:
            raise
        raise storage from error


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`.

    The temp file is created with mode 0666 minus the umask, like any ordinary file.
    """
    path = Path(path)
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json_object(path: Path, error: type[Exception], hint: str) -> dict[str, Any]:
    """Read a file that must hold a JSON object; anything else raises `error` naming the file.

    `hint` is what the user should do about it (e.g. "retrain the run with ... --force").
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} is missing; {hint}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as reason:
        raise error(f"{path} is not valid JSON ({reason}); {hint}") from None
    if not isinstance(document, dict):
        raise error(f"{path} does not hold a JSON object; {hint}")
    return document


def move_into_place(work: Path, destination: Path, force: bool) -> bool:
    """Rename the finished folder `work` over `destination`; an existing one is removed only after
    the new one is in place, and only with `force`. Returns whether one was replaced."""
    import shutil

    from edgeprune.errors import OutputExistsError

    work, destination = Path(work), Path(destination)
    if not destination.exists():
        work.rename(destination)
        return False
    if not force:
        raise OutputExistsError(f"{destination} already exists; pass --force to replace it")
    trash = destination.with_name(f".{destination.name}.old")
    shutil.rmtree(trash, ignore_errors=True)
    destination.rename(trash)
    work.rename(destination)
    shutil.rmtree(trash, ignore_errors=True)
    return True
