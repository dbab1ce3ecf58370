"""The shipped unit under a real systemd: a minimal Debian 12 booted with systemd-nspawn.

`make nspawn` runs this (as root; it needs debootstrap and systemd-container). The rootfs is
debootstrapped once into $WATCHER_NSPAWN_CACHE (default /var/cache/metastudio-watcher/nspawn)
and copied for each run; the package is installed by systemd/install.sh from a wheelhouse of
requirements.lock. The container shares the host's network, so the daemon inside polls the
simulator and posts to the webhook this test serves on loopback, and /metrics is scraped
from here. Checked: READY, credentials through LoadCredential=, journald priorities, a reload
of a bad config refused, the watchdog killing a hung daemon and systemd restarting it, a bad
config at start stopping with 78 and no restart loop, process_* metrics, and
`systemd-analyze verify` of the installed unit.
Without WATCHER_NSPAWN=1 (a plain `pytest`) it is skipped: it boots a machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging._support import REPO_ROOT, tool_missing
from tests.receivers import json_url
from tests.reliability._support import AK, PROJECT, SK, BackgroundServers
from watcher.simulator.state import SimulatorState

SUITE = "bookworm"
MIRROR = os.environ.get("WATCHER_NSPAWN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = "systemd,systemd-sysv,dbus,procps,python3,python3-venv,ca-certificates"
CACHE = Path(os.environ.get("WATCHER_NSPAWN_CACHE", "/var/cache/metastudio-watcher/nspawn"))
UNIT = "metastudio-watcher.service"
ETC = "etc/metastudio-watcher"

pytestmark = pytest.mark.skipif(
    os.environ.get("WATCHER_NSPAWN") != "1",
    reason="boots a container: run `make nspawn` (as root)",
)


def _require_tools() -> None:
    if os.geteuid() != 0:
        tool_missing("systemd-nspawn needs root")
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            tool_missing(f"{tool} not installed (apt-get install debootstrap systemd-container)")


def _timed(label: str, started: float) -> None:
    print(f"nspawn: {label} after {time.monotonic() - started:.1f}s", flush=True)


def cached_rootfs() -> Path:
    """A debootstrapped minimal Debian, built once per suite/package list/mirror."""
    key = hashlib.sha256(f"{SUITE} {PACKAGES} {MIRROR}".encode()).hexdigest()[:12]
    rootfs = CACHE / f"{SUITE}-{key}"
    if (rootfs / ".complete").exists():
        return rootfs
    building = rootfs.with_name(rootfs.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(  # noqa: S603 - debootstrap from PATH, fixed arguments
        ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(building), MIRROR],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=1200,
    )
    # No login prompt on the console, no first-boot questions.
    (building / "etc/machine-id").write_text("")
    (building / ".complete").write_text(f"{SUITE} {PACKAGES} {MIRROR}\n")
    building.rename(rootfs)
    for stale in CACHE.glob(f"{SUITE}-*"):  # older package lists: 300 MB each
        if stale != rootfs:
            shutil.rmtree(stale, ignore_errors=True)
    return rootfs


def wheelhouse(into: Path) -> Path:
    """The package and requirements.lock as cp311 wheels (Debian 12's Python is 3.11)."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(  # noqa: S603 - pip, fixed arguments
        [
            *pip, "download", "--quiet", "--only-binary=:all:", "--python-version", "3.11",
            "--implementation", "cp", "--abi", "cp311", "--platform", "manylinux2014_x86_64",
            "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
            "--platform", "any", "-r", str(REPO_ROOT / "requirements.lock"), "-d", str(into),
        ],
        check=True,
        timeout=600,
    )  # fmt: skip
    subprocess.run(  # noqa: S603
        [*pip, "wheel", "--quiet", "--no-deps", "-w", str(into), str(REPO_ROOT)],
        check=True,
        timeout=600,
    )
    return into


class Machine:
    """A booted container; `sh()` runs a command inside it (all its namespaces)."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self._log = log.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - systemd-nspawn, fixed arguments
            [
                "systemd-nspawn", "--quiet", "--keep-unit", "--register=no",
                "--link-journal=no", "--console=passive", "-D", str(root), "--boot",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.leader = self._find_leader()

    def _find_leader(self, within: float = 30.0) -> int:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited with {self.proc.returncode}")
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                children = (task / "children").read_text().split()
                if children:
                    return int(children[0])
            time.sleep(0.1)
        raise AssertionError("no container init process")

    def sh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "SYSTEMD_PAGER": "cat",
            "SYSTEMD_COLORS": "0",
            "LANG": "C.UTF-8",
        }
        return subprocess.run(  # noqa: S603 - nsenter into our own container
            ["nsenter", "-t", str(self.leader), "-a", "--", "/bin/sh", "-c", command],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )

    def ok(self, command: str, timeout: float = 120) -> str:
        result = self.sh(command, timeout)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        return result.stdout

    def show(self, *props: str) -> dict[str, str]:
        out = self.ok(f"systemctl show {UNIT} -p {','.join(props)}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_booted(self, within: float = 90.0) -> str:
        deadline = time.monotonic() + within
        state = ""
        while time.monotonic() < deadline:
            state = self.sh("systemctl is-system-running").stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.5)
        raise AssertionError(f"the container did not finish booting: {state!r}")

    def poweroff(self) -> None:
        if self.proc.poll() is None:
            self.sh("systemctl poweroff", timeout=30)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def wait_until(what: str, check: object, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def servers() -> Iterator[BackgroundServers]:
    state = SimulatorState(seed=8)
    for _ in range(4):
        state.add_job(state="AUDITING")
    with BackgroundServers(state) as running:
        yield running


def config_text(servers: BackgroundServers, metrics_port: int, extra: str = "") -> str:
    return (
        "sources:\n"
        f"  - name: sim\n    endpoint: {servers.endpoint}\n    project_id: {PROJECT}\n"
        f"    ak_file: ak\n    sk_file: sk\n    poll_interval: 5s\n{extra}"
        "channels:\n"
        f"  hook: {json_url(servers.hook_base)}\n"
        "  broken: json://127.0.0.1:9/closed-port\n"
        "rules:\n  - name: all\n    on: '*'\n    notify: [hook, broken]\n"
        "storage: /var/lib/metastudio-watcher/state.db\nfirst_run: notify\n"
        f"http:\n  listen: 127.0.0.1:{metrics_port}\n"
        "delivery:\n  retry_initial: 1s\n  retry_max: 2s\n"
    )


def test_the_unit_under_a_booted_systemd(
    servers: BackgroundServers, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _require_tools()
    started = time.monotonic()
    base = cached_rootfs()
    _timed("rootfs ready", started)
    work = tmp_path_factory.mktemp("nspawn")
    root = work / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(root)], check=True)  # noqa: S603
    wheels = wheelhouse(work / "wheels")
    _timed("copied and wheelhouse built", started)

    # Install exactly as the README says, by the script `make install` runs, but offline.
    install = subprocess.run(  # noqa: S603 - systemd-nspawn, fixed arguments
        [
            "systemd-nspawn", "--quiet", "--keep-unit", "--register=no", "--link-journal=no",
            "-D", str(root), f"--bind-ro={REPO_ROOT}:/src", f"--bind-ro={wheels}:/wheels",
            "--setenv=PIP_NO_INDEX=1", "--setenv=PIP_FIND_LINKS=/wheels",
            "--setenv=PACKAGE=metastudio-watcher", "/bin/sh", "/src/systemd/install.sh",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    assert (root / "opt/metastudio-watcher/bin/python").exists()
    assert os.readlink(root / "usr/local/bin/metastudio-watcher") == (
        "/opt/metastudio-watcher/bin/metastudio-watcher"
    )
    _timed("installed", started)

    metrics_port = free_port()
    etc = root / ETC
    (etc / "config.yaml").write_text(config_text(servers, metrics_port))
    (etc / "config.yaml").chmod(0o644)
    for name, value in (("ak", AK), ("sk", SK)):
        (etc / name).write_text(value + "\n")
        (etc / name).chmod(0o600)
    dropins = root / "etc/systemd/system" / f"{UNIT}.d"

    machine = Machine(root, work / "console.log")
    try:
        machine.wait_booted()
        _timed("booted", started)
        machine.ok(f"systemd-analyze verify --man=no /etc/systemd/system/{UNIT}")

        # READY: Type=notify, so `start` returns once the daemon said READY=1.
        machine.ok(f"systemctl start {UNIT}", timeout=90)
        state = machine.show("ActiveState", "SubState", "StatusText", "MainPID")
        assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
        first_pid = state["MainPID"]

        # Credentials from LoadCredential= (root-only files in /etc): the simulator accepts
        # the signature, so the source is up, and the alerts reach the webhook.
        wait_until(
            "a successful poll",
            lambda: 'watcher_source_up{source="sim"} 1.0' in scrape(metrics_port),
        )
        servers.run(servers.receiver.wait_for(1, within=30))
        text = scrape(metrics_port)
        for series in (
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_cpu_seconds_total",
            "process_open_fds",
        ):
            assert f"\n{series} " in text, series
        assert machine.show("StatusText")["StatusText"], "no STATUS= from the daemon"
        _timed("ready, polling, alerting, process_* present", started)

        # journald keeps the level: the failing channel's warnings at priority 4, info at 6.
        wait_until(
            "a warning in the journal",
            lambda: (
                "alert_send_failed"
                in machine.sh(f"journalctl -u {UNIT} -p warning -o cat --no-pager").stdout
            ),
        )
        entries = [
            json.loads(line)
            for line in machine.ok(
                f"journalctl -u {UNIT} -o json --no-pager _PID={first_pid}"
            ).splitlines()
        ]
        by_priority = {e["PRIORITY"] for e in entries}
        assert {"4", "6"} <= by_priority, by_priority
        assert all(not e["MESSAGE"].startswith("<") for e in entries)  # prefixes were consumed
        sent_failed = [e for e in entries if "alert_send_failed" in e["MESSAGE"]]
        assert sent_failed and all(e["PRIORITY"] == "4" for e in sent_failed)
        assert all(json.loads(e["MESSAGE"])["level"] for e in entries)  # one JSON object each

        # A reload of a bad config is refused, visibly, and the daemon keeps running.
        good = (etc / "config.yaml").read_text()
        (etc / "config.yaml").write_text(good.replace("poll_interval: 5s", "poll_interval: 999d"))
        reload = machine.sh(f"systemctl reload {UNIT}")
        assert reload.returncode != 0, reload
        state = machine.show("ActiveState", "MainPID")
        assert state == {"ActiveState": "active", "MainPID": first_pid}, state
        journal = machine.ok(f"journalctl -u {UNIT} -o cat --no-pager")
        assert "sources[0].poll_interval: must be from 5s to 1d (got 999d)" in journal, journal
        (etc / "config.yaml").write_text(good.replace("poll_interval: 5s", "poll_interval: 6s"))
        machine.ok(f"systemctl reload {UNIT}")
        wait_until(
            "config_reloaded",
            lambda: (
                "config_reloaded" in machine.sh(f"journalctl -u {UNIT} -o cat --no-pager").stdout
            ),
            within=20,
        )
        assert machine.show("MainPID")["MainPID"] == first_pid
        _timed("bad reload refused, good reload applied", started)

        # The watchdog: a hung daemon (SIGSTOP) is killed and restarted. A drop-in shortens
        # the shipped WatchdogSec=120 so that the test takes seconds, not minutes.
        dropins.mkdir(parents=True, exist_ok=True)
        (dropins / "test.conf").write_text(
            "[Service]\nWatchdogSec=6s\nTimeoutAbortSec=3s\nRestartSec=1s\n"
        )
        machine.ok("systemctl daemon-reload")
        machine.ok(f"systemctl restart {UNIT}", timeout=90)
        before = machine.show("MainPID", "NRestarts")
        machine.ok(f"kill -STOP {before['MainPID']}")
        wait_until(
            "a watchdog restart",
            lambda: (
                (s := machine.show("MainPID", "NRestarts", "ActiveState"))["ActiveState"]
                == "active"
                and int(s["NRestarts"]) > int(before["NRestarts"])
                and s["MainPID"] not in (before["MainPID"], "0")
            ),
            within=60,
        )
        assert "Watchdog timeout" in machine.ok(f"journalctl -u {UNIT} -o cat --no-pager")
        _timed("watchdog kill and restart", started)

        # A bad config at start: exit 78, and RestartPreventExitStatus=78 stops the loop.
        machine.ok(f"systemctl stop {UNIT}")
        machine.ok(f"systemctl reset-failed {UNIT} || true")
        restarts = int(machine.show("NRestarts")["NRestarts"])
        (etc / "config.yaml").write_text(good.replace("project_id:", 'project_id: "p\\n"\n#'))
        assert machine.sh(f"systemctl start {UNIT}", timeout=90).returncode != 0
        time.sleep(5)  # RestartSec=1s: a restart loop would show by now
        state = machine.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
        assert state["ActiveState"] == "failed", state
        assert state["ExecMainStatus"] == "78", state
        assert int(state["NRestarts"]) == restarts, state
        journal = machine.ok(f"journalctl -u {UNIT} -o cat --no-pager -n 30")
        assert "contains the control character U+000A" in journal
        _timed("bad config: 78, no restart", started)
    finally:
        machine.poweroff()
        shutil.rmtree(root, ignore_errors=True)
    _timed("done", started)
