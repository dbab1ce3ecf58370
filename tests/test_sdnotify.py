"""Tests of watcher.sdnotify against a real AF_UNIX datagram socket, as systemd would bind it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from watcher.sdnotify import SystemdNotifier

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX sockets")


class Manager:
    """The service manager's end: a bound datagram socket that hands back what arrived."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2)

    def receive(self) -> bytes:
        return self.sock.recv(4096)

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2)
        return False


def time_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@pytest.fixture
def socket_path(tmp_path: Path) -> str:
    path = str(tmp_path / "notify")
    if len(path.encode()) >= 100:  # sun_path holds 108 bytes
        pytest.skip("tmp_path too long for an AF_UNIX socket path")
    return path


@pytest.fixture
def manager(socket_path: str) -> Iterator[Manager]:
    bound = Manager(socket_path)
    yield bound
    bound.sock.close()


@pytest.fixture
def notifier(socket_path: str, manager: Manager) -> Iterator[SystemdNotifier]:
    sender = SystemdNotifier.from_env({"NOTIFY_SOCKET": socket_path})
    yield sender
    sender.close()


def test_ready_sends_ready_1(notifier: SystemdNotifier, manager: Manager) -> None:
    notifier.ready()
    assert manager.receive() == b"READY=1"


def test_each_state_is_one_exact_datagram(notifier: SystemdNotifier, manager: Manager) -> None:
    notifier.status("polling 2 sources")
    notifier.watchdog()
    notifier.stopping()
    received = [manager.receive() for _ in range(3)]
    assert received == [b"STATUS=polling 2 sources", b"WATCHDOG=1", b"STOPPING=1"]


def test_send_joins_fields_as_lines(notifier: SystemdNotifier, manager: Manager) -> None:
    notifier.send(READY=1, STATUS="up")
    assert manager.receive() == b"READY=1\nSTATUS=up"


def test_status_newlines_cannot_inject_fields(notifier: SystemdNotifier, manager: Manager) -> None:
    notifier.status("bad\nREADY=1")
    assert manager.receive() == b"STATUS=bad READY=1"


def test_reloading_carries_monotonic_timestamp(notifier: SystemdNotifier, manager: Manager) -> None:
    before = time_usec()
    notifier.reloading()
    after = time_usec()
    first, second = manager.receive().split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_socket_address() -> None:
    name = f"metastudio-watcher-test-{uuid.uuid4().hex}"
    try:
        manager = Manager(b"\0" + name.encode())
    except OSError:  # pragma: no cover - abstract sockets are Linux only
        pytest.skip("abstract AF_UNIX sockets are not supported here")
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "@" + name})
    try:
        notifier.ready()
        assert manager.receive() == b"READY=1"
    finally:
        notifier.close()
        manager.sock.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled
    notifier.ready()
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping()
    notifier.reloading()
    assert notifier.watchdog_interval() is None


def test_relative_notify_socket_is_ignored() -> None:
    assert not SystemdNotifier.from_env({"NOTIFY_SOCKET": "notify"}).enabled


def test_missing_socket_warns_once_and_never_raises(socket_path: str) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": socket_path})  # nothing bound there
    with capture_logs() as logs:
        notifier.ready()
        notifier.watchdog()
    notifier.close()
    assert [entry["event"] for entry in logs] == ["sd_notify_failed"]
    assert logs[0]["log_level"] == "warning"


def test_socket_bound_again_later_receives(socket_path: str) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": socket_path})
    notifier.ready()  # nobody listening yet: dropped, not raised
    manager = Manager(socket_path)
    try:
        notifier.watchdog()
        assert manager.receive() == b"WATCHDOG=1"
        assert manager.nothing_pending()
    finally:
        notifier.close()
        manager.sock.close()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "500000"}, 0.25),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({}, None),
    ],
    ids=["usec", "our_pid", "sub_second", "other_pid", "zero", "not_a_number", "negative", "unset"],
)
def test_watchdog_interval_is_half_the_timeout(
    environ: dict[str, str], expected: float | None
) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", **environ})
    assert notifier.watchdog_interval() == expected


def test_watchdog_interval_needs_a_notify_socket() -> None:
    notifier = SystemdNotifier.from_env({"WATCHDOG_USEC": "30000000"})
    assert notifier.watchdog_interval() is None
