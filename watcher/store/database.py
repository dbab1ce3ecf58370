"""The SQLite file itself: made private, opened in WAL mode, its errors turned into StoreError,
and the one connection, lock and transaction every repository of the store goes through.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import structlog

from watcher.errors import StoreError

log = structlog.get_logger()

CORRUPT_HINT = "move it aside or restore a backup"


class Database:
    """One connection shared by the daemon's threads; a mutex orders them, and every write is
    one `transaction`. Repositories never BEGIN or COMMIT on their own: they run inside one."""

    def __init__(self, path: str, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn
        self.mutex = threading.RLock()

    def close(self) -> None:
        with self.mutex, contextlib.suppress(sqlite3.Error):
            self.conn.close()

    @contextlib.contextmanager
    def transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT; anything raised inside rolls the whole thing back."""
        with self.mutex:
            conn = self.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise store_error(self.path, what, err) from err
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as err:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(err, sqlite3.Error):
                    raise store_error(self.path, what, err) from err
                raise

    @contextlib.contextmanager
    def reading(self, what: str) -> Iterator[sqlite3.Connection]:
        """The connection for a read that streams its rows (no transaction of its own)."""
        with self.mutex:
            try:
                yield self.conn
            except sqlite3.Error as err:
                raise store_error(self.path, what, err) from err

    def query_all(self, what: str, sql: str, args: Any = ()) -> list[Any]:
        with self.reading(what) as conn:
            return conn.execute(sql, args).fetchall()

    def query_one(self, what: str, sql: str, args: Any = ()) -> Any:
        with self.reading(what) as conn:
            return conn.execute(sql, args).fetchone()


# --- opening -------------------------------------------------------------------------------


def prepare_file(path: str) -> None:
    """Create the parent directory (0700) and the file (0600) so no one else can read state."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        _make_private_dirs(parent)
        if os.path.exists(path) and not os.path.isfile(path):
            raise StoreError(f"{path}: not a regular file; point storage at a file path")
        with contextlib.suppress(FileExistsError):  # someone else just created it: fine
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        raise StoreError(f"cannot create {path}: {_os_hint(err, parent)}") from err


def _make_private_dirs(directory: str) -> None:
    """Create `directory` and any missing parents as 0700; existing ones are left alone."""
    missing: list[str] = []
    while not os.path.isdir(directory):
        if os.path.lexists(directory):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", directory)
        missing.append(directory)
        directory = os.path.dirname(directory)
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def _os_hint(err: OSError, parent: str) -> str:
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"directory is read-only or not ours ({parent}); fix its permissions or move storage"
    if err.errno == errno.ENOTDIR:
        return f"{err.filename or parent} is a file, not a directory"
    if err.errno == errno.ENOSPC:
        return "disk is full"
    if err.errno == errno.ENOENT:
        return (
            f"cannot create the directory {parent}: a part of the path is missing or the file "
            "system refuses directories; fix `storage:`"
        )
    return err.strerror or str(err)


def _free_bytes(path: str) -> int | None:
    try:
        stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def connect(path: str) -> sqlite3.Connection:
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see Database.transaction).
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as err:
        raise store_error(path, "open the database", err) from err
    try:
        conn.execute("PRAGMA busy_timeout = 5000")  # a `status` reader must not fail the daemon
        row = conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise StoreError(
                f"{path}: database is corrupt ({row[0] if row else 'no answer'}) — {CORRUPT_HINT}"
            )
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal" and path != ":memory:":
            log.warning("store_not_wal", path=path, journal_mode=mode)
        # FULL: in WAL mode this syncs the log on every commit, so a sent mark or a queued alert
        # survives power loss, not just a crash of the process.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException as err:
        conn.close()
        if isinstance(err, sqlite3.Error):
            raise store_error(path, "open the database", err) from err
        raise
    return conn


def store_error(path: str, what: str, err: sqlite3.Error) -> StoreError:
    text = str(err)
    code = getattr(err, "sqlite_errorcode", None)
    lowered = text.lower()
    if "not a database" in lowered or code == sqlite3.SQLITE_NOTADB:
        hint = f"not a SQLite database — {CORRUPT_HINT}"
    elif "malformed" in lowered or "corrupt" in lowered or code == sqlite3.SQLITE_CORRUPT:
        hint = f"database is corrupt ({text}) — {CORRUPT_HINT}"
    elif "readonly" in lowered or code == sqlite3.SQLITE_READONLY:
        hint = _permission_hint(path) or "database is read-only; fix permissions"
    elif "unable to open" in lowered or code == sqlite3.SQLITE_CANTOPEN:
        hint = _permission_hint(path) or f"cannot open the file ({text})"
    elif "locked" in lowered or "busy" in lowered:
        hint = "database is busy: another process holds a write lock"
    elif "full" in lowered or code == sqlite3.SQLITE_FULL:
        hint = "disk is full: free some space (nothing was written)"
    elif "disk i/o error" in lowered or code == sqlite3.SQLITE_IOERR:
        # With WAL, a full disk often shows as an I/O error creating the -shm/-wal files.
        free = _free_bytes(path)
        if free is not None and free < 1024 * 1024:
            hint = f"disk is full ({free // 1024} KiB free): free some space (nothing was written)"
        else:
            hint = "disk I/O error: check the file system holding the database"
    else:
        hint = text
    return StoreError(f"{path}: cannot {what}: {hint}")


def _permission_hint(path: str) -> str | None:
    """Why this process cannot use the file, when the file system says so."""
    if path == ":memory:":
        return None
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return "file is not readable and writable by this user; fix its owner or mode"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.access(parent, os.W_OK | os.X_OK):
        # WAL mode creates <file>-wal and <file>-shm next to the database.
        return f"directory is read-only ({parent}); fix its permissions or move storage"
    return None
