"""Checks on files numdl reads that a user names: regular files only (a FIFO would hang a read, a
link to /dev/zero would read until memory runs out), and sizes checked before anything is read."""

import os
import stat
from pathlib import Path

from numdl.errors import DataError


def regular_file(path, what="file", error=DataError):
    """``path`` as a Path after checking that it names an existing regular file (links followed);
    returns (path, size in bytes)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except OSError as problem:
        raise error(f"{what} {path}: {problem.strerror or problem}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise error(f"{what} {path}: {kind}")
    return path, info.st_size


def write_text_atomically(path, text):
    """Write ``text`` to ``path`` through a temporary file in the same folder: a full disk or a
    read-only folder leaves no partial file behind, and the error names the path and the cause."""
    write_bytes_atomically(path, text.encode())


def write_bytes_atomically(path, data):
    """``write_text_atomically`` for bytes."""
    from numdl.errors import NumdlError

    path = Path(path)
    if not path.parent.is_dir():
        raise NumdlError(f"cannot write {path}: the folder {path.parent} does not exist")
    if path.exists() and not path.is_file():  # never replace a device, FIFO or folder (/dev/null as root)
        raise NumdlError(f"cannot write {path}: it exists and is not a regular file")
    tmp = path.parent / f".numdl-tmp-{os.getpid()}-{path.name}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as problem:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise NumdlError(f"cannot write {path}: {problem.strerror or problem}") from None
