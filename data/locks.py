"""One writer per output: an advisory lock beside the thing being written (a feature cache, a run folder).

    from data.locks import exclusive_lock, LockedError

    with exclusive_lock("artifacts/features/synthetic.h5", "feature extraction"):
        ...                     # no other process holds artifacts/features/synthetic.h5.lock meanwhile

The lock is `fcntl.flock` (exclusive, non-blocking) on ``<path>.lock``. A second process asking for it fails
AT ONCE with `LockedError` (a RuntimeError) whose one-line message names the output, what holds it, and the
holder's pid and host (written into the lock file). The kernel drops the lock when the holder exits, even
on kill -9, so a crash never leaves a stale lock; the lock file itself is removed on a clean release.
Within one process, taking the same lock twice also raises (flock locks belong to open files).

Errors creating the lock file (a read-only folder, a full disk) are raised as the OSError they are;
callers turn them into their own message. On a filesystem without flock support (some network mounts) the
block runs unlocked after a warning.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno as _errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator

__all__ = ["LockedError", "exclusive_lock", "lock_path", "lock_holder"]

log = logging.getLogger(__name__)
_NO_FLOCK = {_errno.ENOLCK, _errno.EOPNOTSUPP, getattr(_errno, "ENOTSUP", _errno.EOPNOTSUPP)}


class LockedError(RuntimeError):
    """The lock is held by another process (or another open of this one). ``pid``: the holder's pid
    (None if it could not be read), ``path``: the protected path, ``lock``: the lock file."""

    def __init__(self, message: str, path: Path, lock: Path, pid: int | None):
        super().__init__(message)
        self.path, self.lock, self.pid = path, lock, pid


def lock_path(path: str | os.PathLike) -> Path:
    """``<path>.lock`` (beside the file or folder it protects)."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


def lock_holder(lock: str | os.PathLike) -> dict:
    """What the holder wrote into a lock file: {"pid": int | None, "host": str, "what": str, "since": str}."""
    try:
        text = Path(lock).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return _parse(text)


def _parse(text: str) -> dict:
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    try:
        pid = int(fields.get("pid", ""))
    except ValueError:
        pid = None
    return {"pid": pid, "host": fields.get("host", ""), "what": fields.get("what", ""),
            "since": fields.get("since", "")}


def _read_fd(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 4096, 0).decode("utf-8", "replace")
    return ""


def _holder_of(fd: int) -> dict:
    # the holder writes its pid right after taking the lock: give it a moment if the file is still empty
    deadline = time.monotonic() + 0.5
    info = _parse(_read_fd(fd))
    while info["pid"] is None and time.monotonic() < deadline:
        time.sleep(0.02)
        info = _parse(_read_fd(fd))
    return info


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str = "a writer") -> Iterator[Path]:
    """Hold the exclusive lock of ``path`` (file ``<path>.lock``) for the ``with`` block; yields the lock file.

    ``what`` says what takes it ("feature extraction", "training run"); it is written into the lock file
    and shown to whoever finds the lock taken. Raises LockedError at once when another process holds it.
    """
    p = Path(path)
    lock = lock_path(p)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _holder_of(fd)
            os.close(fd)
            who = f"pid {info['pid']}" if info["pid"] is not None else "pid unknown"
            if info["host"] and info["host"] != socket.gethostname():
                who += f" on {info['host']}"
            doing = f" ({info['what']}, since {info['since']})" if info["what"] else ""
            raise LockedError(f"{p} is in use by another process: {who}{doing}; wait for it to finish "
                              f"(or stop it) before starting {what} on it", p, lock, info["pid"]) from None
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            os.close(fd)            # a filesystem without flock (some network mounts): say so, go on
            log.warning("%s: this filesystem does not support locks (%s); nothing stops a second %s on %s "
                        "meanwhile", lock, e.strerror, what, p)
            yield lock
            return
        except BaseException:
            os.close(fd)
            raise
        # a holder that was releasing may have unlinked the file we opened: lock the file at `lock` only
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        since = _dt.datetime.now().astimezone().replace(microsecond=0).isoformat()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()}\nhost={socket.gethostname()}\nwhat={what}\nsince={since}\n"
                  .encode("utf-8"), 0)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
        raise
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)       # while still holding it: a waiter then re-opens a fresh file
        os.close(fd)
