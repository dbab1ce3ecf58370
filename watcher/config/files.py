"""The files config names, checked on disk: the config file itself, read safely, and the
state file's path (refused trees and file systems, permissions) before the first poll.
"""

from __future__ import annotations

import os
import stat

from watcher.config.ranges import MAX_CONFIG_BYTES
from watcher.errors import ConfigError

_STORAGE_REFUSED_TREES = ("/proc", "/sys")
# File systems that cannot hold a database file (devtmpfs is /dev; /dev/shm is a tmpfs, fine).
_STORAGE_REFUSED_FS = frozenset(
    {
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "configfs",
        "pstore",
        "bpf",
        "mqueue",
        "fusectl",
        "binfmt_misc",
        "autofs",
        "efivarfs",
    }
)


def read_config_bytes(path: str) -> bytes:
    """The file's bytes, refusing anything but a regular file of at most MAX_CONFIG_BYTES.

    Opened non-blocking and checked with fstat on the open descriptor: a FIFO or a device as
    `-c` is refused at once instead of hanging, and nothing can be swapped in between.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = file_kind(info.st_mode)
            raise ConfigError(
                f"the configuration must be a regular file (this is {what})", file=path
            )
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"the configuration file is {info.st_size} bytes; at most "
                f"{MAX_CONFIG_BYTES} (1 MiB) is accepted",
                file=path,
            )
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_CONFIG_BYTES:  # it grew while being read
                raise ConfigError(
                    f"the configuration file is larger than {MAX_CONFIG_BYTES} bytes (1 MiB)",
                    file=path,
                )
        return b"".join(chunks)
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def storage_problem(path: str) -> str | None:
    """Why `path` cannot be the SQLite state file, or None. Checked by `check` and at start.

    A device, anything under /proc, /sys or /dev, a directory, a path under a file, and a file
    or directory this user cannot write all fail on the first poll, after start-up said ok.
    """
    if path == ":memory:":
        return None
    full = os.path.abspath(path)
    for tree in _STORAGE_REFUSED_TREES:
        if full == tree or full.startswith(tree + "/"):
            return f"{full} is under {tree}, which cannot hold a SQLite database; use a file path"
    try:
        info = os.stat(full)
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        return f"{_first_file_ancestor(full)} is a file, so {full} cannot be created under it"
    except OSError as exc:
        return f"cannot inspect {full}: {exc.strerror or type(exc).__name__}"
    if info is not None:
        if not stat.S_ISREG(info.st_mode):
            return f"{full} is {file_kind(info.st_mode)}; storage must be a regular file path"
        if not os.access(full, os.R_OK | os.W_OK):
            return f"{full} is not writable by this user; fix its permissions or move storage"
    directory = os.path.dirname(full)
    while not os.path.isdir(directory):
        if os.path.lexists(directory):
            return f"{directory} is a file, so {full} cannot be created under it"
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    fs_type = filesystem_type(directory)
    if fs_type in _STORAGE_REFUSED_FS:
        return (
            f"{directory} is on a {fs_type} file system, which cannot hold a SQLite database; "
            "use a file path"
        )
    if directory == os.path.dirname(full) and not os.access(directory, os.W_OK | os.X_OK):
        # SQLite writes a journal next to the file: the directory itself must be writable.
        return f"the directory {directory} is not writable by this user; fix it or move storage"
    return None


def filesystem_type(directory: str) -> str | None:
    """The type of the file system `directory` is on, from /proc/self/mountinfo (None when
    that cannot be read, e.g. under systemd's ProcSubset=pid)."""
    try:
        real = os.path.realpath(directory)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            rows = mounts.read().splitlines()
    except OSError:
        return None
    best, best_type = "", None
    for row in rows:
        fields, sep, rest = row.partition(" - ")
        parts = fields.split()
        if not sep or len(parts) < 5 or not rest:
            continue
        point = parts[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, rest.split()[0]
    return best_type


def _first_file_ancestor(full: str) -> str:
    probe = os.path.dirname(full)
    found = probe
    while probe != os.path.dirname(probe):
        if os.path.lexists(probe) and not os.path.isdir(probe):
            found = probe
        probe = os.path.dirname(probe)
    return found


def config_warnings(path: str) -> list[str]:
    """Things worth telling the operator about the file itself (not errors): loose permissions."""
    try:
        info = os.stat(path)
    except OSError:
        return []  # load_config reports an unreadable file
    mode = info.st_mode
    # Group root may read: root:root 0640 is how a container (running in group 0) reads a
    # root-owned file, and on a host group 0 holds root alone.
    if mode & stat.S_IROTH or (mode & stat.S_IRGRP and info.st_gid != 0):
        return [
            f"{path} is readable by other users (mode {stat.S_IMODE(mode):04o}) and may hold "
            f"credentials: run chmod 600 {path}"
        ]
    return []
