"""One daemon per state file, whatever the path that names it: the lock, and who holds it.

Two claims, because each alone has a door: an flock on `<real file>.lock` (the same inode
through a symlink, `..` or a bind mount) and an abstract unix socket named after the resolved
path (Linux; it cannot be deleted, so removing the state directory does not free the path).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import socket
import struct
import sys
from collections.abc import Callable

from watcher.errors import StoreError

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def real_path(path: str) -> str:
    """The file a path names, symlinks and `..` resolved (the file may not exist yet)."""
    return os.path.realpath(os.path.abspath(path))


def _socket_name(real: str) -> bytes:
    digest = hashlib.sha256(real.encode(errors="surrogateescape")).hexdigest()[:40]
    return b"\0metastudio-watcher/" + digest.encode()


class DaemonLock:
    """Held by the daemon from open to close; `problem()` says when its file went away."""

    def __init__(self, path: str, real: str, fd: int, claim: socket.socket | None) -> None:
        self.path = path
        self.real = real
        self._fd: int | None = fd
        self._claim = claim
        self._identity = _identity(real)

    @classmethod
    def acquire(cls, path: str, prepare: Callable[[str], None]) -> DaemonLock:
        """Lock the state file at `path`, or raise StoreError naming the holder.

        `prepare(path)` creates the file once the path is claimed (so a refused daemon creates
        nothing), before it is resolved again and flocked (so a symlink leads to its target).
        """
        claim = _claim(real_path(path), path)
        try:
            prepare(path)
            real = real_path(path)
            fd = _flock(real, path)
        except BaseException:
            if claim is not None:
                claim.close()
            raise
        return cls(path, real, fd, claim)

    def problem(self) -> str | None:
        """Why the state this daemon writes is no longer the file at its path, if it is not:
        what it commits now would be lost, and `status` would not see it."""
        directory = os.path.dirname(self.real)
        if not os.path.isdir(directory):
            return f"{self.path}: the state directory {directory} was removed under the daemon"
        current = _identity(self.real)
        if current is None:
            return f"{self.path}: the state file was deleted under the daemon"
        if current != self._identity:
            return f"{self.path}: the state file was replaced under the daemon"
        return None

    def release(self) -> None:
        """Safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
        if self._claim is not None:
            self._claim.close()
            self._claim = None


def holder(path: str) -> int | None:
    """The pid of the daemon holding `path`, found through its socket even when the file or
    its directory is gone; None when no daemon holds it (or on systems without the socket)."""
    if not sys.platform.startswith("linux"):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(_socket_name(real_path(path)))
        except OSError:
            return None
        pid, _uid, _gid = _PEERCRED.unpack(
            probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        return int(pid)


def _identity(real: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(real)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _claim(real: str, path: str) -> socket.socket | None:
    if not sys.platform.startswith("linux"):
        return None
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(_socket_name(real))
        claim.listen(8)  # never accepted: connecting is how `holder` asks who is there
    except OSError as err:
        claim.close()
        if err.errno == errno.EADDRINUSE:
            pid = holder(path)
            raise StoreError(
                f"another metastudio-watcher is already using {path} (pid {pid or 'unknown'}); "
                "stop it first or give this one a different storage path"
            ) from err
        return None  # no abstract sockets here (a sandbox): the flock alone decides
    return claim


def _flock(real: str, path: str) -> int:
    lock_path = f"{real}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise StoreError(f"cannot create {lock_path}: {err.strerror}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        found = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreError(
                f"another metastudio-watcher is already using {path} (pid {found}); "
                "stop it first or give this one a different storage path"
            ) from err
        raise StoreError(f"cannot lock {lock_path}: {err.strerror}") from err
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
