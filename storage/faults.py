"""What the disk does wrong, said in Lamina's terms.

Every failure of the storage layer (an ``OSError`` from a segment file, the exception
rocksdict raises with RocksDB's status message) goes through ``classify`` once, at the
storage boundary (``storage_errors``), and comes out as the typed error a client can act on:

==================================  ============================  =======================
cause                               error                         gRPC status
==================================  ============================  =======================
no space left (ENOSPC, EDQUOT)      ``DiskFull``                  RESOURCE_EXHAUSTED
read-only file system, no write     ``ReadOnly``                  FAILED_PRECONDITION
permission (EROFS, EACCES, EPERM)
I/O error reading a file (EIO),     ``DataLoss``                  DATA_LOSS
RocksDB ``Corruption``
==================================  ============================  =======================

A failing disk is simulated by ``inject``: a test-only seam that the segment reader
consults (``check_read``) and that raises the ``OSError`` a real failing disk raises
(the environment variable ``LAMINA_INJECT_EIO``, a comma-separated list of path
fragments read when the process starts, does the same in a server process). RocksDB itself is never mocked.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lamina.errors import DataLoss, DiskFull, LaminaError, ReadOnly

#: a write stalled by a full disk is retried (by the next write, or the optimizer's back-off)
#: only once the file system has this much free space again
MIN_FREE_BYTES = 1 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
#: RocksDB status messages (rocksdict raises a plain Exception carrying them)
_ROCKS_FULL = ("No space left on device", "Disk quota exceeded")
_ROCKS_READ_ONLY = ("Read-only file system", "Permission denied", "read only mode", "os error 30")
_ROCKS_LOST = ("Corruption:", "Input/output error", "checksum mismatch")

log = logging.getLogger("lamina.storage")
_injected: dict[str, int] = {}
_injected_lock = threading.Lock()


def data_root(path: Path) -> Path:
    """The data directory ``path`` lies in (the folder holding ``collections/``), or the
    nearest existing folder when it lies in none."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.name == "collections" or parent.name == "snapshots":
            return parent.parent
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``path``."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return int(st.f_bavail * st.f_frsize)


def read_only_reason(path: Path) -> str:
    """Why ``path`` cannot be written ("" when it can): a read-only file system, or no
    write permission."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return f"{path} is on a read-only file system"
    if not os.access(path, os.W_OK):
        return f"this process may not write {path} (permission denied)"
    # a file system the kernel turned read-only after an error need not say so in its flags
    probe = path / ".lamina-write-probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in _READ_ONLY:
            return f"{path} is on a read-only file system ({exc.strerror})"
    return ""


def disk_full(where: Path, detail: str = "") -> DiskFull:
    root = data_root(where)
    return DiskFull(
        f"disk full: data directory {root} has {free_bytes(root):,} bytes free"
        + (f" ({detail})" if detail else "")
        + "; the write was refused whole and nothing acknowledged was lost. Free space or grow "
        "the volume: writes resume by themselves, reads go on meanwhile"
    )


def read_only(where: Path, detail: str = "") -> ReadOnly:
    root = data_root(where)
    why = read_only_reason(root) or detail or f"{root} refused a write"
    return ReadOnly(
        f"data directory {root} is read-only: {why}; writes are refused, reads are served. "
        "Remount it read-write (or fix its permissions) and writes resume"
    )


def classify(exc: BaseException, where: Path) -> LaminaError | None:
    """The typed error an exception from the storage layer at ``where`` means, or None
    when it is no storage fault (a bug: let it through)."""
    if isinstance(exc, LaminaError):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        path = Path(exc.filename) if exc.filename else where
        if exc.errno in _FULL:
            return disk_full(path, f"writing {path}")
        if exc.errno in _READ_ONLY:
            return read_only(path, f"{exc.strerror}: {path}")
        if exc.errno == errno.EIO:
            return DataLoss(
                f"I/O error reading {path}: the disk is failing. Move the data directory to a healthy "
                "disk and run `lamina check --data DIR --deep`; it names each damaged file and its repair"
            )
        return None
    if (type(exc) is Exception or isinstance(exc, OSError)) and exc.args and isinstance(exc.args[0], str):
        # rocksdict's status (a plain Exception), or an OSError from its Rust side (no errno)
        message = exc.args[0]
        if any(m in message for m in _ROCKS_FULL):
            return disk_full(where, f"RocksDB: {message}")
        if any(m in message for m in _ROCKS_READ_ONLY):
            return read_only(where, f"RocksDB: {message}")
        if any(m in message for m in _ROCKS_LOST):
            return DataLoss(
                f"RocksDB of {where} reported: {message}. Run `lamina check --data DIR --deep`; "
                "restore the collection from a snapshot if it reports the damage"
            )
    return None


@contextmanager
def storage_errors(where: Path) -> Iterator[None]:
    """Run a block of storage work, raising storage faults as typed errors (see ``classify``)."""
    try:
        yield
    except LaminaError:
        raise
    except Exception as exc:
        mapped = classify(exc, where)
        if mapped is None:
            raise
        raise mapped from exc


def writable(where: Path) -> LaminaError | None:
    """The error a write to ``where`` would meet now (full disk, read-only), or None."""
    reason = read_only_reason(where)
    if reason:
        return read_only(where, reason)
    if free_bytes(where) < MIN_FREE_BYTES:
        return disk_full(where)
    return None


class Backoff:
    """Retries of a background job that met a full or read-only disk: ``failed`` schedules
    ``retry`` after 0.5 s, doubling up to ``MAX_BACKOFF`` while the fault lasts."""

    MAX_BACKOFF = 30.0

    def __init__(self, retry: Callable[[], None]) -> None:
        self._retry = retry
        self.delay = 0.0
        self._timer: threading.Timer | None = None

    def failed(self, exc: BaseException, where: Path, job: str) -> LaminaError | None:
        """The storage fault ``exc`` is (a retry is scheduled), or None when it is none."""
        fault = classify(exc, where)
        if not isinstance(fault, (DiskFull, ReadOnly)):
            return None
        self.delay = min(self.MAX_BACKOFF, max(0.5, 2 * self.delay))
        log.warning("%s stalled, retrying in %.1f s: %s", job, self.delay, str(fault))
        self._timer = threading.Timer(self.delay, self._retry)
        self._timer.daemon = True
        self._timer.start()
        return type(fault)(str(fault))  # kept: without the traceback, whose frames hold open files

    def reset(self) -> None:
        self.delay = 0.0


# ------------------------------------------------------------------ test seam
def inject(fragment: str, code: int = errno.EIO) -> None:
    """Test-only: every segment read of a path containing ``fragment`` fails with the
    ``OSError`` of ``code`` (EIO: a failing disk) until ``clear``."""
    with _injected_lock:
        _injected[fragment] = code


def clear(fragment: str | None = None) -> None:
    """Undo ``inject`` (of one fragment, or all)."""
    with _injected_lock:
        if fragment is None:
            _injected.clear()
        else:
            _injected.pop(fragment, None)


#: ``LAMINA_INJECT_EIO`` as the process started with it (read once: every search checks it)
_ENV_FRAGMENTS = tuple(f for f in os.environ.get("LAMINA_INJECT_EIO", "").split(",") if f)


def check_read(path: Path) -> None:
    """Raise the OS error a failing disk would when ``path`` is read, if one was injected."""
    if not _injected and not _ENV_FRAGMENTS:
        return
    text = str(path)
    faults = dict(_injected)
    for fragment in _ENV_FRAGMENTS:
        faults.setdefault(fragment, errno.EIO)
    for fragment, code in faults.items():
        if fragment in text:
            raise OSError(code, os.strerror(code), text)
