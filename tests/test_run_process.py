"""The real `run` process, end to end: polls, alerts, /metrics and /readyz, reload, stop, sd_notify.

Starts `python -m watcher run` as a child process against the simulator and a webhook receiver
on loopback, changes job states through the simulator's control API and watches what arrives,
Alertmanager-style. No fixed sleeps: every wait polls for a condition until a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_cli import AK, SK, Servers, free_port, logging_restored, start_servers
from watcher.cli import main
from watcher.model import OutboxStatus
from watcher.store import Store

T = TypeVar("T")

# One poll interval is the minimum, 5 s: each change takes up to that long to be seen.
POLL = 5.0
SEEN_WITHIN = POLL + 5.0

DONE_RULE = "  - name: done\n    on: [SUCCEED]\n    notify: [hook]\n"


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Servers]:
    """The simulator and webhook of tests/test_cli.py, on a loop in a background thread."""
    yield from start_servers(tmp_path, monkeypatch)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


def wait_for(what: str, check: Callable[[], T | None], within: float) -> T:
    """Poll `check` until it returns something other than None/False; fail after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}")
        time.sleep(0.05)


class Daemon:
    """`python -m watcher run` as a child process, its JSON log lines collected as they come."""

    def __init__(self, config: str, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "watcher", "run", "-c", config, "--log-format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == name:
                    out.append(record)
        return out

    def wait_log(self, name: str, count: int = 1, within: float = SEEN_WITHIN) -> dict[str, Any]:
        """The `count`-th log line with event `name`, once it was written."""

        def seen() -> dict[str, Any] | None:
            self.assert_running()
            found = self.events(name)
            return found[count - 1] if len(found) >= count else None

        return wait_for(f"log line {name!r} #{count}", seen, within)

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            output = "\n".join(self.lines[-30:])
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{output}")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, within: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(within)
        self._reader.join(2)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.pop("WATCHDOG_PID", None)
    env.update(CLI_TEST_AK=AK, CLI_TEST_SK=SK, **extra)
    return env


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Children still running at the end of a test (it failed half-way) are killed."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def http_get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def sim_control(servers: Servers, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to the simulator's /_sim/ control API, as an operator's script would."""
    request = urllib.request.Request(  # noqa: S310 - always http://127.0.0.1
        f"{servers.endpoint}/_sim/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def alert_titles(servers: Servers) -> list[str]:
    return servers.titles()


def test_run_polls_alerts_reloads_and_stops_cleanly(
    servers: Servers, daemons: list[Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    http = f"http:\n  listen: 127.0.0.1:{port}\n"
    # Fast retries, so the outage at the end leaves an alert that is due again at once.
    settings = {"interval": "5s", "retry_initial": "100ms", "retry_max": "200ms", "extra": http}
    config = servers.config(**settings)
    jobs = [sim_control(servers, "jobs", {"state": "AUDITING"}) for _ in range(4)]
    ids = [job["job_id"] for job in jobs]

    daemon = Daemon(config, child_env())
    daemons.append(daemon)
    assert daemon.wait_log("poll_finished")["baseline"] is True
    wait_for("/readyz 200", lambda: http_get(f"{base}/readyz")[0] == 200, 5)

    # The operator commands read the store next to the running daemon (no lock needed).
    assert main(["--log-level", "error", "health", "-c", config]) == 0
    assert f"daemon at {base}/readyz" in capsys.readouterr().out
    assert main(["--log-level", "error", "jobs", "-c", config, "--state", "AUDITING"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "4 job(s)"

    # A change is polled within an interval and alerted.
    sim_control(servers, f"jobs/{ids[0]}", {"state": "AUDIT_FAILED"})
    wait_for("the first alert", lambda: len(servers.hook.received) >= 1, SEEN_WITHIN)
    assert alert_titles(servers) == [f"AUDIT_FAILED: voice job {ids[0]} ({jobs[0]['voice_name']})"]
    daemon.wait_log("alert_sent")
    _, text = http_get(f"{base}/metrics")
    assert (metric(text, "watcher_polls_total", source="prod", outcome="ok") or 0) >= 2
    assert metric(text, "watcher_alerts_total", channel="hook", outcome="sent") == 1

    # SIGHUP with a good new config (one more rule): reloaded, and the new rule works.
    servers.config(**settings, extra_rules=DONE_RULE)
    daemon.signal(signal.SIGHUP)
    daemon.wait_log("config_reloaded")
    sim_control(servers, f"jobs/{ids[1]}", {"state": "SUCCEED"})
    wait_for("the new rule's alert", lambda: len(servers.hook.received) >= 2, SEEN_WITHIN)
    assert alert_titles(servers)[1].startswith(f"SUCCEED: voice job {ids[1]}")

    # SIGHUP with a broken config: rejected, and the running config keeps alerting.
    Path(config).write_text(
        Path(config).read_text().replace("poll_interval: 5s", "poll_interval: soon")
    )
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_log("reload_rejected")
    assert "sources[0].poll_interval" in rejected["error"]
    sim_control(servers, f"jobs/{ids[2]}", {"state": "FAILED"})
    wait_for(
        "an alert after the rejected reload", lambda: len(servers.hook.received) >= 3, SEEN_WITHIN
    )
    assert alert_titles(servers)[2].startswith(f"FAILED: voice job {ids[2]}")
    daemon.assert_running()

    # The webhook goes down: the alert stays in the outbox, across the stop, until sent.
    servers.hook.refuse = True
    sim_control(servers, f"jobs/{ids[3]}", {"state": "SPLIT_FAILED"})
    daemon.wait_log("alert_send_failed")
    started = time.monotonic()
    assert daemon.stop(within=10) == 0
    assert time.monotonic() - started < 10
    assert daemon.events("watcher_stopped")[-1]["exit_code"] == 0
    with Store.open(str(servers.storage)) as store:
        (pending,) = store.list_outbox([OutboxStatus.PENDING])
    assert pending.alert.job_id == ids[3]

    servers.hook.refuse = False
    servers.config(**settings, extra_rules=DONE_RULE)  # a good config again, for `once`
    once = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "watcher", "once", "-c", config, "--log-format", "json"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert once.returncode == 0, once.stderr
    assert alert_titles(servers)[3].startswith(f"SPLIT_FAILED: voice job {ids[3]}")
    with Store.open(str(servers.storage)) as store:
        assert store.list_outbox([OutboxStatus.PENDING]) == []
    assert len(alert_titles(servers)) == 4  # and nothing was sent twice


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """An AF_UNIX datagram socket standing in for systemd's notify socket."""
    path = str(tmp_path / "notify.sock")
    short_dir = None
    if len(path.encode()) > 100:  # sun_path holds 108 bytes
        short_dir = tempfile.mkdtemp(prefix="sdn-")
        path = os.path.join(short_dir, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        if short_dir is not None:
            os.rmdir(short_dir)


def test_run_speaks_sd_notify_ready_status_watchdog_and_stopping(
    servers: Servers,
    daemons: list[Daemon],
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    config = servers.config(interval="5s")
    daemon = Daemon(config, child_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="2000000"))
    daemons.append(daemon)
    datagrams: list[str] = []

    def receive_until(done: Callable[[], bool], what: str, within: float) -> None:
        def check() -> bool:
            with contextlib.suppress(TimeoutError):
                datagrams.append(sock.recv(4096).decode())
            return done()

        wait_for(what, check, within)

    def fields() -> list[str]:
        return [line for datagram in datagrams for line in datagram.splitlines()]

    # WATCHDOG_USEC=2 s asks for a ping every second: two of them within a few seconds.
    receive_until(lambda: fields().count("WATCHDOG=1") >= 2, "two watchdog pings", 5)
    assert "READY=1" in fields()
    assert fields().index("READY=1") < fields().index("WATCHDOG=1")
    status = [f for f in fields() if f.startswith("STATUS=")]
    assert status
    assert status[0].startswith("STATUS=1 source(s), 0 alert(s) pending")
    assert "STOPPING=1" not in fields()

    daemon.signal(signal.SIGTERM)
    receive_until(lambda: "STOPPING=1" in fields(), "STOPPING=1", 10)
    assert daemon.proc.wait(10) == 0


ONE_PER_JOB_RULE = "  - name: done\n    on: [SUCCEED]\n    notify: [hook]\n    group_by: [job_id]\n"


def test_a_storm_of_sighups_during_delivery_loses_nothing_and_doubles_nothing(
    servers: Servers, daemons: list[Daemon]
) -> None:
    # One message per job, each taking 0.3 s to be answered: sends are in flight while
    # 50 reloads arrive. A reload used to cancel the send apprise then completed anyway,
    # and the new configuration sent it again.
    config = servers.config(interval="5s", extra_rules=ONE_PER_JOB_RULE)
    jobs = [servers.add_job(state="AUDITING")["job_id"] for _ in range(20)]
    daemon = Daemon(config, child_env())
    daemons.append(daemon)
    daemon.wait_log("poll_finished")
    servers.loop.call(servers.hook.hang_next, 1000, 0.3)
    for job_id in jobs:
        servers.set_state(job_id, "SUCCEED")
    wait_for("the first send in flight", lambda: len(servers.hook.requests) >= 1, SEEN_WITHIN)
    for _ in range(50):
        daemon.signal(signal.SIGHUP)
        time.sleep(0.05)
    daemon.wait_log("config_reloaded")
    wait_for("every alert", lambda: len(servers.hook.received) >= len(jobs), 60)
    # Let any late duplicate arrive before counting.
    with Store.open(str(servers.storage)) as store:
        wait_for(
            "an empty outbox", lambda: not store.list_outbox([OutboxStatus.PENDING]), SEEN_WITHIN
        )
    time.sleep(1.0)
    titles = alert_titles(servers)
    assert sorted(titles) == sorted(set(titles))  # 0 duplicates
    assert sorted(t.split()[3] for t in titles) == sorted(jobs)  # and none lost
    assert len(daemon.events("config_reloaded")) >= 2
    assert daemon.stop() == 0


def run_cli(config: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "watcher", *argv, "-c", config],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_one_daemon_per_state_file_whatever_the_path_and_after_it_is_deleted(
    servers: Servers, daemons: list[Daemon]
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = servers.config(interval="5s", extra=f"http:\n  listen: 127.0.0.1:{port}\n")
    daemon = Daemon(config, child_env())
    daemons.append(daemon)
    daemon.wait_log("poll_finished")

    # A second watcher whose storage is a symlink to the same file is refused.
    link = servers.tmp_path / "alias" / "link.db"
    link.parent.mkdir()
    link.symlink_to(servers.storage)
    aliased = servers.config("aliased.yaml", interval="5s")
    Path(aliased).write_text(Path(aliased).read_text().replace(str(servers.storage), str(link)))
    refused = run_cli(aliased, "once")
    assert refused.returncode != 0
    assert f"already using {link} (pid {daemon.proc.pid})" in refused.stderr

    # The state directory vanishes under the running daemon: logged, /readyz 503, `status`
    # names the daemon, and the path is still no door for a second one.
    state_dir = servers.tmp_path / "state"
    state_dir.mkdir()
    moved = servers.storage.rename(state_dir / "state.db")  # the file is gone from its path
    lost = daemon.wait_log("state_file_lost", within=10)
    assert lost["error"] == f"{servers.storage}: the state file was deleted under the daemon"
    code, body = http_get(f"{base}/readyz")
    assert code == 503
    assert json.loads(body)["reason"] == lost["error"]
    status = run_cli(config, "status")
    assert status.returncode != 0
    assert f"a watcher (pid {daemon.proc.pid}) still runs on it" in status.stderr
    health = run_cli(config, "health")
    assert health.returncode == 1
    assert f"unhealthy: {lost['error']} (daemon at {base}/readyz)" in health.stderr
    second = run_cli(config, "once")
    assert f"already using {servers.storage} (pid {daemon.proc.pid})" in second.stderr
    assert not servers.storage.exists()  # the refused one created nothing
    daemon.assert_running()
    assert daemon.stop() == 0
    assert moved.exists()


LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime is not installed (apt faketime)")
def test_retries_survive_wall_clock_steps_back_and_forward(
    servers: Servers, daemons: list[Daemon]
) -> None:
    # The daemon's wall clock is libfaketime's, moved by rewriting a file; its monotonic
    # clock stays real, as a kernel's does when NTP or an operator steps the time.
    offset = servers.tmp_path / "faketime"
    offset.write_text("+0\n")
    env = child_env(
        LD_PRELOAD=str(LIBFAKETIME),
        FAKETIME_TIMESTAMP_FILE=str(offset),
        FAKETIME_NO_CACHE="1",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    config = servers.config(interval="5s", retry_initial="1s", retry_max="2s", give_up_after="1h")
    first, second = (servers.add_job(state="AUDITING")["job_id"] for _ in range(2))
    daemon = Daemon(config, env)
    daemons.append(daemon)
    daemon.wait_log("poll_finished")

    # Back ten minutes while an alert is backing off: it goes as soon as its backoff is over,
    # not ten minutes later. (The simulator tolerates 15 minutes of signature skew.)
    servers.hook.refuse = True
    servers.set_state(first, "AUDIT_FAILED")
    daemon.wait_log("alert_send_failed")
    offset.write_text("-10m\n")
    servers.hook.refuse = False
    wait_for("the retried alert", lambda: len(servers.hook.received) >= 1, 10)
    assert alert_titles(servers)[0].startswith(f"AUDIT_FAILED: voice job {first}")

    # Forward 25 hours, past give_up_after (1h), while another alert is backing off: it is
    # retried and delivered, not dead-lettered (it has been tried for seconds, not a day).
    servers.hook.refuse = True
    servers.set_state(second, "AUDIT_FAILED")
    failed = len(daemon.events("alert_send_failed"))
    daemon.wait_log("alert_send_failed", count=failed + 1)
    offset.write_text("+25h\n")
    daemon.wait_log("alert_send_failed", count=failed + 2, within=10)
    servers.hook.refuse = False
    wait_for("the second alert", lambda: len(servers.hook.received) >= 2, 10)
    assert alert_titles(servers)[1].startswith(f"AUDIT_FAILED: voice job {second}")
    assert daemon.events("alert_dead_lettered") == []
    assert daemon.stop() == 0
