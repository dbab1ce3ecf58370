"""The systemd notify protocol (`READY=1`, `WATCHDOG=1`, ...) spoken directly over `$NOTIFY_SOCKET`.

Without the variable every call is a no-op, and a failed send is logged once, never raised.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

__all__ = ["SystemdNotifier"]

log = structlog.get_logger(__name__)


class SystemdNotifier:
    """Sends state datagrams to the service manager; see sd_notify(3) for the fields."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        """`address` is a socket path, or `@name` for an abstract socket; None sends nothing."""
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SystemdNotifier:
        """The notifier systemd asked for (`Type=notify`, `WatchdogSec=`), or a no-op one."""
        address = environ.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            # systemd only hands out absolute paths and abstract names; anything else is a
            # misconfiguration we report rather than guess at.
            log.warning("sd_notify_socket_unsupported", notify_socket=address)
            address = None
        return cls(address, _watchdog_usec(environ))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between `watchdog()` pings (half the timeout), or None if none are expected."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def send(self, **fields: object) -> None:
        """One datagram of `KEY=value` lines; newlines inside values become spaces."""
        if self._address is None or not fields:
            return
        lines = (f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        payload = "\n".join(lines).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(payload, _socket_address(self._address))
        except OSError as exc:
            # The service manager going away must never take the watcher down with it.
            if not self._warned:
                self._warned = True
                log.warning(
                    "sd_notify_failed",
                    notify_socket=self._address,
                    error=exc.strerror or type(exc).__name__,
                )

    def ready(self) -> None:
        """Startup (or a reload) is complete."""
        self.send(READY=1)

    def status(self, text: str) -> None:
        """A one-line status for `systemctl status`."""
        self.send(STATUS=text)

    def watchdog(self) -> None:
        """Still alive: send at least every `watchdog_interval()` seconds."""
        self.send(WATCHDOG=1)

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.send(STOPPING=1)

    def reloading(self) -> None:
        """A reload has begun (`Type=notify-reload` needs the timestamp); send `ready()` after."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(RELOADING=1, MONOTONIC_USEC=usec)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(address: str) -> str | bytes:
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    return address


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    """`$WATCHDOG_USEC` when it is meant for this process (`$WATCHDOG_PID` unset or ours)."""
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    raw = environ.get("WATCHDOG_USEC", "")
    if not (raw.isascii() and raw.isdigit()) or int(raw) == 0:
        return None
    return int(raw)
