"""Atomic writes: a reader sees the old file or the new one, never half of one; and a
failed write explained in one line."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from charrnn.common.errors import CharRnnError

LOW_SPACE_BYTES = 1 << 20  # under this much free space, a failed write is a full disk


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    The temporary file lives in the same directory so that `os.replace` is a
    rename within one file system (atomic on POSIX). On an exception the
    temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a fresh temporary directory that replaces directory `path` on success.

    A directory cannot be renamed over a non-empty one, so the swap is: old ->
    `<path>.old`, new -> `path`, then the old one is deleted. If the process
    dies between the two renames, `<path>.old` still holds the last complete
    checkpoint, and `resolve_directory` finds it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a directory", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.with_name(path.name + ".old")
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_directory(path: str | os.PathLike) -> Path:
    """`path` if it exists, else the `<path>.old` left by an interrupted swap, else `path`."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        return old
    return path


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_failure(path: str | os.PathLike, exc: BaseException) -> CharRnnError:
    """One line for a failed write of `path`, naming it and the reason.

    The reason is the OS's (no space, permission denied, read-only file system, not a
    directory) when an OSError is in the exception's chain; a framework's own writer
    often raises something else ("unexpected pos", a SafetensorError), and then the
    file system is asked why a write would fail there now.
    """
    reason = _os_reason(exc) or _probe(Path(path))
    if reason is None:
        first = str(exc).splitlines()[0] if str(exc) else ""
        reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return CharRnnError(f"cannot write {path}: {reason}")


def describe_os_error(exc: OSError) -> str:
    """`<path>: <reason>` for an OSError, as one line."""
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason


def _os_reason(exc: BaseException | None) -> str | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and (exc.strerror or exc.errno):
            return exc.strerror or os.strerror(exc.errno)
        exc = exc.__cause__ or exc.__context__
    return None


def _probe(path: Path) -> str | None:
    """Why a write at `path` would fail now, from its nearest existing ancestor."""
    here = path.parent
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        return f"{here} is a file, not a directory"
    try:
        stat = os.statvfs(here)
    except OSError:
        return None
    if stat.f_flag & os.ST_RDONLY:
        return os.strerror(errno.EROFS)
    if not os.access(here, os.W_OK):
        return os.strerror(errno.EACCES)
    if stat.f_bavail * stat.f_frsize < LOW_SPACE_BYTES:
        return os.strerror(errno.ENOSPC)
    return None
