"""The command line, called in-process: exit codes, one-line errors, and the operator commands.

`main()` runs its own event loop with `asyncio.run`, so these tests are plain functions and the
real servers they talk to (the simulator, a webhook receiver) run on a loop in another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog
from aiohttp import web

from tests.receivers import WebhookReceiver, json_url
from watcher.cli import EX_CONFIG, EX_FAILURE, EX_OK, EX_TEMPFAIL, EX_USAGE, TEST_TITLE, main
from watcher.simulator.app import create_app
from watcher.simulator.runner import serve_app
from watcher.simulator.state import ApiBehaviour, SimulatorState
from watcher.store import Store

T = TypeVar("T")

AK, SK, PROJECT = "CLITESTAK0123456789", "cli-test-secret-key-0123456789", "proj-cli"
HOOK_TOKEN = "SuperSecretHookToken42"

CONFIG = """\
sources:
  - name: prod
    endpoint: {endpoint}
    project_id: {project}
    ak: ${{CLI_TEST_AK}}
    sk: ${{CLI_TEST_SK}}
    poll_interval: {interval}
    request_timeout: 2s
channels:
  hook: ["{hook}"]
{extra_channels}rules:
  - name: failures
    on: [AUDIT_FAILED, SPLIT_FAILED, FAILED]
    notify: [hook]
{extra_rules}storage: {storage}
delivery:
  retry_initial: {retry_initial}
  retry_max: {retry_max}
  give_up_after: {give_up_after}
  send_timeout: 3s
{extra}"""


class LoopThread:
    """An asyncio loop in a daemon thread, for the servers a blocked main thread talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args)` on the loop's thread: the servers' state is only touched from there."""

        async def call() -> T:
            return fn(*args, **kwargs)

        return self.run(call())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@dataclass
class Servers:
    """A simulator and a webhook receiver on loopback, and config files pointing at both."""

    loop: LoopThread
    sim: SimulatorState
    endpoint: str
    hook: WebhookReceiver
    tmp_path: Path

    @property
    def storage(self) -> Path:
        return self.tmp_path / "state.db"

    def config(
        self,
        name: str = "config.yaml",
        *,
        interval: str = "60s",
        retry_initial: str = "1s",
        retry_max: str = "2s",
        give_up_after: str = "1h",
        extra_channels: str = "",
        extra_rules: str = "",
        extra: str = "",
    ) -> str:
        path = self.tmp_path / name
        path.write_text(
            CONFIG.format(
                endpoint=self.endpoint,
                project=PROJECT,
                interval=interval,
                hook=json_url(self.hook.base_url, f"/hook/{HOOK_TOKEN}"),
                storage=self.storage,
                retry_initial=retry_initial,
                retry_max=retry_max,
                give_up_after=give_up_after,
                extra_channels=extra_channels,
                extra_rules=extra_rules,
                extra=extra,
            )
        )
        path.chmod(0o600)
        return str(path)

    def add_job(self, **fields: Any) -> dict[str, Any]:
        return dict(self.loop.call(self.sim.add_job, **fields))

    def set_state(self, job_id: str, state: str) -> None:
        self.loop.call(self.sim.set_state, job_id, state)

    def titles(self) -> list[str]:
        return [str(m.get("title")) for m in list(self.hook.received)]


def start_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Servers]:
    """The body of the `servers` fixture, for other test modules to build theirs on."""
    monkeypatch.setenv("CLI_TEST_AK", AK)
    monkeypatch.setenv("CLI_TEST_SK", SK)
    loop = LoopThread()
    sim = SimulatorState(seed=11)
    hook = WebhookReceiver()

    async def start() -> tuple[web.AppRunner, str]:
        await hook.start()
        return await serve_app(create_app(sim, project_id=PROJECT, ak=AK, sk=SK))

    runner, endpoint = loop.run(start())
    try:
        yield Servers(loop, sim, endpoint, hook, tmp_path)
    finally:

        async def stop() -> None:
            await hook.stop()
            await runner.cleanup()

        loop.run(stop())
        loop.stop()


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Servers]:
    yield from start_servers(tmp_path, monkeypatch)


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """`main()` points structlog and the root logger at pytest's capture: undo that after."""
    saved_structlog = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        yield
    finally:
        structlog.configure(**saved_structlog)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command line in-process; (exit code, stdout, stderr)."""
    code = main(["--log-level", "error", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def columns(line: str) -> list[str]:
    """The cells of a table line: columns are at least two spaces apart."""
    return re.split(r"\s{2,}", line.strip())


def our_lines(err: str) -> list[str]:
    """The CLI's own messages on stderr: plain lines, or (for run/once, whose stderr is a log
    stream) the JSON error records the CLI itself wrote, shown the way a terminal shows them."""
    return [
        line if line.startswith("metastudio-watcher:") else f"metastudio-watcher: {record['event']}"
        for line in err.splitlines()
        if line.startswith("metastudio-watcher:")
        or ((record := _json_record(line)) and record.get("logger") == "watcher.cli")
    ]


def _json_record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def baseline_then_failure(servers: Servers, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Two `once` runs: a silent baseline, then one job failing review. Returns (config, id)."""
    job = servers.add_job(state="AUDITING")
    servers.add_job(state="PROCESSING")
    config = servers.config()
    assert cli(capsys, "once", "-c", config)[0] == EX_OK
    servers.set_state(job["job_id"], "AUDIT_FAILED")
    assert cli(capsys, "once", "-c", config)[0] == EX_OK
    return config, str(job["job_id"])


# --- check ---------------------------------------------------------------------------------


def test_check_names_sources_and_credential_origins_and_masks_channel_urls(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config = servers.config(interval="60s")
    code, out, err = cli(capsys, "check", "-c", config)
    assert code == EX_OK, err
    assert f"{config}: ok" in out
    assert f"prod: {servers.endpoint} every 1m" in out
    assert "source prod: ak from config ${CLI_TEST_AK}, sk from config ${CLI_TEST_SK}" in out
    assert "hook: json://" in out
    for secret in (HOOK_TOKEN, AK, SK):
        assert secret not in out + err


def test_check_shows_an_odd_interval_exactly(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "check", "-c", servers.config(interval="90s"))
    assert code == EX_OK
    assert "every 90s" in out


def test_check_on_a_bad_config_exits_78_with_file_line_key(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config = servers.config(interval="often")
    line = Path(config).read_text().splitlines().index("    poll_interval: often") + 1
    code, out, err = cli(capsys, "check", "-c", config)
    assert code == EX_CONFIG
    assert out == ""
    assert f"{config}:{line}: sources[0].poll_interval: " in err
    assert len(our_lines(err)) == 1
    assert "Traceback" not in err


def test_check_on_a_broken_rule_template_exits_78_pointing_at_the_title(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config = servers.config()
    text = (
        Path(config)
        .read_text()
        .replace("    notify: [hook]\n", "    notify: [hook]\n    title: '{{ job.state '\n", 1)
    )
    Path(config).write_text(text)
    line = text.splitlines().index("    title: '{{ job.state '") + 1
    code, _, err = cli(capsys, "check", "-c", config)
    assert code == EX_CONFIG
    assert f"{config}:{line}: rules[0].title: template syntax error" in err
    assert "Traceback" not in err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["jobs", "--no-such-option"])
    assert exited.value.code == EX_USAGE
    assert "usage:" in capsys.readouterr().err


def test_version_works_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "watcher", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("metastudio-watcher ")


# --- once and route ------------------------------------------------------------------------


def test_once_takes_a_silent_baseline_then_delivers_the_change(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    job = servers.add_job(state="AUDITING")
    config = servers.config()
    code, _, err = cli(capsys, "once", "-c", config)
    assert code == EX_OK, err
    assert servers.hook.received == []
    servers.set_state(job["job_id"], "AUDIT_FAILED")
    code, _, err = cli(capsys, "once", "-c", config)
    assert code == EX_OK, err
    assert servers.titles() == [f"AUDIT_FAILED: voice job {job['job_id']} ({job['voice_name']})"]


def test_once_with_a_wrong_secret_key_exits_1_with_one_line_reason(
    servers: Servers, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_TEST_SK", "not-the-right-secret-key")
    code, _, err = cli(capsys, "once", "-c", servers.config())
    assert code == EX_FAILURE
    (line,) = our_lines(err)
    assert line.startswith("metastudio-watcher: source prod: ")
    assert "APIGW.0301" in line
    assert "Traceback" not in err
    assert "not-the-right-secret-key" not in err


def test_route_prints_matching_rules_and_the_rendered_title(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config = servers.config(extra_rules="  - name: done\n    on: [SUCCEED]\n    notify: [hook]\n")
    code, out, _ = cli(
        capsys, "route", "-c", config, "--state", "AUDIT_FAILED", "--from", "AUDITING"
    )
    assert code == EX_OK
    assert "MATCH failures: matched" in out
    assert "done: state AUDIT_FAILED is not one of on: SUCCEED" in out
    assert "title: AUDIT_FAILED: voice job route-test-job" in out
    assert "channels: hook" in out


# --- outbox --------------------------------------------------------------------------------


def test_outbox_lists_dead_alerts_and_retry_all_sends_them(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    job = servers.add_job(state="PROCESSING")
    # Give up at the first failure, so one refused send makes a dead alert.
    config = servers.config(give_up_after="1ms")
    assert cli(capsys, "once", "-c", config)[0] == EX_OK
    servers.set_state(job["job_id"], "FAILED")
    servers.hook.fail_next(1, status=500)
    # The alert could not be delivered: once says so with EX_TEMPFAIL (75).
    code, _, err = cli(capsys, "once", "-c", config)
    assert code == EX_TEMPFAIL
    assert "1 alert(s) could not be delivered (0 will be retried, 1 dead-lettered)" in err
    assert servers.hook.received == []

    code, out, _ = cli(capsys, "outbox", "-c", config)
    assert code == EX_OK
    header, row = out.splitlines()
    assert columns(header) == [
        "ID",
        "STATUS",
        "CHANNEL",
        "ATTEMPTS",
        "NEXT TRY",
        "HELD BY",
        "TITLE",
        "LAST ERROR",
    ]
    assert columns(row)[1:6] == ["dead", "hook", "1", "-", "-"]
    assert f"FAILED: voice job {job['job_id']}" in row
    assert HOOK_TOKEN not in out

    code, out, _ = cli(capsys, "outbox", "-c", config, "--json")
    (item,) = json.loads(out)
    assert (item["status"], item["channel"], item["job_id"]) == ("dead", "hook", job["job_id"])
    assert item["last_error"]

    code, out, _ = cli(capsys, "outbox", "-c", config, "retry", "--all")
    assert (code, out.strip()) == (EX_OK, "1 alert(s) queued again")
    assert cli(capsys, "once", "-c", config)[0] == EX_OK
    assert servers.titles() == [f"FAILED: voice job {job['job_id']} ({job['voice_name']})"]
    code, out, _ = cli(capsys, "outbox", "-c", config)
    assert out.strip() == "outbox empty: nothing pending, nothing dead"


def test_outbox_retry_of_an_unknown_id_fails(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = baseline_then_failure(servers, capsys)
    code, _, err = cli(capsys, "outbox", "-c", config, "retry", "999")
    assert code == EX_FAILURE
    assert our_lines(err) == ["metastudio-watcher: no dead alert with id 999"]


# --- status, jobs, history -----------------------------------------------------------------


def test_status_shows_each_source_its_jobs_by_state_and_the_outbox(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = baseline_then_failure(servers, capsys)
    code, out, _ = cli(capsys, "status", "-c", config)
    assert code == EX_OK
    lines = out.splitlines()
    assert columns(lines[0]) == [
        "SOURCE",
        "EVERY",
        "LAST POLL",
        "LAST OK",
        "FAILURES",
        "JOBS",
        "BY STATE",
    ]
    source, every, _, _, failures, jobs, by_state = columns(lines[1])
    assert (source, every, failures, jobs) == ("prod", "1m", "0", "2")
    assert by_state == "AUDIT_FAILED 1, PROCESSING 1"
    assert lines[-1] == "outbox: 0 pending, 0 dead"

    code, out, _ = cli(capsys, "status", "-c", config, "--json")
    status = json.loads(out)
    (source,) = status["sources"]
    assert source["name"] == "prod"
    assert source["jobs_by_state"] == {"AUDIT_FAILED": 1, "PROCESSING": 1}
    assert source["consecutive_failures"] == 0
    assert datetime.fromisoformat(source["last_ok_at"]) > datetime.now(UTC) - timedelta(minutes=1)
    assert status["outbox"]["pending"] == 0


def test_status_shows_the_strategy_in_use_and_a_scan_in_flight(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = baseline_then_failure(servers, capsys)
    code, out, _ = cli(capsys, "status", "-c", config)
    assert code == EX_OK
    assert "prod: strategy changed_since" in out.splitlines()
    with Store.open(str(servers.storage)) as store:  # what a daemon mid-scan writes
        store.save_scan_progress("prod", 12, 1000, baseline=True, now=datetime.now(UTC))
    code, out, _ = cli(capsys, "status", "-c", config)
    assert "prod: strategy changed_since; baseline in progress: 12 of 1000 pages" in out
    code, out, _ = cli(capsys, "status", "-c", config, "--json")
    (source,) = json.loads(out)["sources"]
    assert source["strategy"] == "changed_since"
    assert source["scan"]["text"] == "baseline in progress: 12 of 1000 pages"


@pytest.mark.parametrize(
    ("behaviour", "budget"),
    [("full", lambda active: 3), ("documented", lambda active: -(-active // 100) + 3)],
)
def test_once_from_cron_is_as_cheap_as_the_daemon(
    servers: Servers,
    capsys: pytest.CaptureFixture[str],
    behaviour: str,
    budget: Callable[[int], int],
) -> None:
    now = datetime.now(UTC)
    for i in range(1000):
        # 2 % active, created over the last week.
        state = "PROCESSING" if i % 50 == 0 else "SUCCEED"
        created = int(now.timestamp() * 1000) - (i + 1) * 600_000
        servers.add_job(state=state, create_time=created, lastupdate_time=created)
    servers.sim.api_behaviour = ApiBehaviour(behaviour)
    config = servers.config()
    assert cli(capsys, "once", "-c", config)[0] == EX_OK  # the baseline
    active = [j for j, job in servers.sim.jobs.items() if job["state"] == "PROCESSING"]
    costs = []
    for job_id in active[:3]:
        servers.set_state(job_id, "FAILED")
        before = servers.sim.requests
        assert cli(capsys, "once", "-c", config)[0] == EX_OK
        costs.append(servers.sim.requests - before)
    assert all(cost <= budget(len(active)) for cost in costs), costs
    assert len(servers.titles()) == 3


def test_status_shows_the_last_error_of_a_failing_source(
    servers: Servers, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = servers.config()
    assert cli(capsys, "once", "-c", config)[0] == EX_OK
    monkeypatch.setenv("CLI_TEST_SK", "a-revoked-secret-key")
    assert cli(capsys, "once", "-c", config)[0] == EX_FAILURE
    code, out, _ = cli(capsys, "status", "-c", config)
    assert code == EX_OK
    assert "prod: 1 failed poll(s) in a row" in out
    assert "APIGW.0301" in out
    assert "a-revoked-secret-key" not in out


def test_status_before_any_run_says_so_in_one_line(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "status", "-c", servers.config())
    assert code == EX_FAILURE
    (line,) = our_lines(err)
    assert "no state database yet" in line
    assert not servers.storage.exists()  # a read command does not create the state file


def test_jobs_lists_tracked_jobs_filtered_by_state(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config, job_id = baseline_then_failure(servers, capsys)
    code, out, _ = cli(capsys, "jobs", "-c", config)
    assert code == EX_OK
    assert columns(out.splitlines()[0]) == [
        "SOURCE",
        "JOB_ID",
        "STATE",
        "REJECTS",
        "VOICE",
        "TYPE",
        "BATCH",
        "UPDATED (UTC)",
    ]
    assert out.splitlines()[-1] == "2 job(s)"

    code, out, _ = cli(capsys, "jobs", "-c", config, "--state", "AUDIT_FAILED")
    (row,) = [line for line in out.splitlines() if line.startswith("prod")]
    assert columns(row)[:4] == ["prod", job_id, "AUDIT_FAILED", "1"]

    code, out, _ = cli(capsys, "jobs", "-c", config, "--state", "AUDIT_FAILED", "--json")
    (job,) = json.loads(out)
    assert (job["job_id"], job["state"], job["source"]) == (job_id, "AUDIT_FAILED", "prod")
    assert "phone" not in job

    code, out, _ = cli(capsys, "jobs", "-c", config, "--source", "elsewhere")
    assert out.strip() == "no tracked jobs with source elsewhere"


def test_jobs_never_shows_a_phone_number(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    job = servers.add_job(state="AUDITING")
    config = servers.config()
    cli(capsys, "once", "-c", config)
    _, out, _ = cli(capsys, "jobs", "-c", config)
    _, out_json, _ = cli(capsys, "jobs", "-c", config, "--json")
    assert job["phone"] not in out + out_json


def test_history_shows_each_event_with_its_alerts(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config, job_id = baseline_then_failure(servers, capsys)
    code, out, _ = cli(capsys, "history", "-c", config, job_id)
    assert code == EX_OK
    lines = out.splitlines()
    assert lines[0].endswith("prod  transition  AUDITING → AUDIT_FAILED")
    assert lines[1] == f"    reason: job {job_id} went from AUDITING to AUDIT_FAILED"
    assert any(line.startswith("    failures → hook: sent, 1 attempt, sent ") for line in lines)

    code, out, _ = cli(capsys, "history", "-c", config, job_id, "--json")
    (entry,) = json.loads(out)
    assert (entry["previous_state"], entry["state"]) == ("AUDITING", "AUDIT_FAILED")
    (alert,) = entry["alerts"]
    assert (alert["rule"], alert["channel"], alert["status"]) == ("failures", "hook", "sent")


def test_history_of_an_unknown_job_exits_1(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = baseline_then_failure(servers, capsys)
    code, _, err = cli(capsys, "history", "-c", config, "no-such-job")
    assert code == EX_FAILURE
    (line,) = our_lines(err)
    assert "no events recorded for job no-such-job" in line


def test_history_of_a_quiet_tracked_job_says_it_has_no_events(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    job = servers.add_job(state="PROCESSING")
    config = servers.config()
    cli(capsys, "once", "-c", config)
    code, out, _ = cli(capsys, "history", "-c", config, job["job_id"])
    assert code == EX_OK
    assert "in PROCESSING since the baseline or earlier; no events recorded" in out


# --- health --------------------------------------------------------------------------------


def test_health_is_ok_after_a_recent_successful_poll(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config = servers.config(interval="5s")
    cli(capsys, "once", "-c", config)
    code, out, _ = cli(capsys, "health", "-c", config)
    assert code == EX_OK
    assert out.startswith("ok: ")


def test_health_names_stale_sources_in_one_line(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config = servers.config(interval="5s")
    cli(capsys, "once", "-c", config)
    with Store.open(str(servers.storage)) as store:
        store.record_source_poll("prod", True, datetime.now(UTC) - timedelta(minutes=5))
    code, out, err = cli(capsys, "health", "-c", config)
    assert code == EX_FAILURE
    assert out == ""
    (line,) = our_lines(err)
    assert "unhealthy: stale source(s): prod (last ok 5m ago, limit 15s)" in line


def test_health_before_any_poll_is_unhealthy_and_creates_nothing(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "health", "-c", servers.config())
    assert code == EX_FAILURE
    assert "prod (never polled successfully)" in err
    assert not servers.storage.exists()


def test_health_falls_back_to_the_store_when_the_endpoint_does_not_answer(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config = servers.config(extra=f"http:\n  listen: 127.0.0.1:{free_port()}\n")
    cli(capsys, "once", "-c", config)
    code, out, _ = cli(capsys, "health", "-c", config)
    assert code == EX_OK
    assert out.startswith("ok: 1 source(s) polled successfully lately")


def test_health_does_not_need_the_daemon_lock(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config = servers.config()
    cli(capsys, "once", "-c", config)
    with Store.open(str(servers.storage), exclusive=True):  # as if the daemon were running
        assert cli(capsys, "health", "-c", config)[0] == EX_OK
        assert cli(capsys, "status", "-c", config)[0] == EX_OK
        assert cli(capsys, "jobs", "-c", config)[0] == EX_OK


# --- test-notify ---------------------------------------------------------------------------


def test_test_notify_sends_a_marked_message_to_each_channel(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "test-notify", "-c", servers.config())
    assert code == EX_OK
    assert out.startswith("ok      hook: json://")
    assert HOOK_TOKEN not in out
    (message,) = servers.hook.received
    assert message["title"] == TEST_TITLE
    assert "no action needed" in message["message"]


def test_test_notify_reports_a_failing_channel_and_exits_1(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = f"json://127.0.0.1:{free_port()}/hook/{HOOK_TOKEN}"
    config = servers.config(extra_channels=f'  broken: ["{closed}"]\n')
    code, out, err = cli(capsys, "test-notify", "-c", config)
    assert code == EX_FAILURE
    lines = out.splitlines()
    assert any(line.startswith("ok      hook: ") for line in lines)
    (failed,) = [line for line in lines if line.startswith("FAILED  broken: json://127.0.0.1")]
    assert "delivery failed" in failed
    assert HOOK_TOKEN not in out + err
    assert our_lines(err) == ["metastudio-watcher: 1 of 2 channel(s) failed"]


def test_test_notify_to_one_channel_only(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = f"json://127.0.0.1:{free_port()}/x"
    config = servers.config(extra_channels=f'  broken: ["{closed}"]\n')
    code, out, _ = cli(capsys, "test-notify", "-c", config, "--channel", "hook")
    assert code == EX_OK
    assert len(out.splitlines()) == 1
    code, _, err = cli(capsys, "test-notify", "-c", config, "--channel", "nope")
    assert code == EX_USAGE
    assert our_lines(err) == [
        f"metastudio-watcher: no channel 'nope' in {config} (channels: hook, broken)"
    ]


# --- silence -------------------------------------------------------------------------------


def test_silence_add_list_expire_and_a_silenced_alert_is_not_sent(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    quiet = servers.add_job(state="AUDITING", voice_name="shop-anna")
    loud = servers.add_job(state="AUDITING", voice_name="news-bob")
    config = servers.config()
    assert cli(capsys, "once", "-c", config)[0] == EX_OK
    code, out, _ = cli(
        capsys,
        "silence", "add", "-c", config, "--match", "voice_name=shop-*", "--for", "2h",
        "--comment", "re-recording",
    )  # fmt: skip
    assert code == EX_OK
    assert out.startswith("silence 1 added until ")
    code, out, _ = cli(capsys, "silence", "-c", config)
    assert columns(out.splitlines()[1])[:2] == ["1", "voice_name=shop-*"]
    servers.set_state(quiet["job_id"], "AUDIT_FAILED")
    servers.set_state(loud["job_id"], "AUDIT_FAILED")
    assert cli(capsys, "once", "-c", config)[0] == EX_OK
    servers.loop.run(servers.hook.wait_for(1))
    assert [t.split(" (")[-1] for t in servers.titles()] == ["news-bob)"]
    assert cli(capsys, "silence", "expire", "1", "-c", config)[:2] == (EX_OK, "silence 1 expired\n")
    code, out, _ = cli(capsys, "silence", "list", "-c", config)
    assert out.startswith("no silences active")
    code, _, err = cli(capsys, "silence", "expire", "1", "-c", config)
    assert code == EX_FAILURE
    assert our_lines(err) == ["metastudio-watcher: no active silence with id 1"]


def test_silence_add_rejects_an_unknown_field_with_exit_2(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "silence", "add", "-c", servers.config(), "--match", "phone=1")
    assert code == 2
    assert our_lines(err)[0].startswith("metastudio-watcher: --match: unknown field 'phone'")


# --- the shipped example -------------------------------------------------------------------


def test_the_example_config_passes_check_with_every_rule_form(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = Path(__file__).resolve().parent.parent / "config.example.yaml"
    text = example.read_text()
    for form in (
        "on:",
        "from:",
        "events:",
        "where:",
        "title:",
        "body:",
        "format:",
        "continue:",
        "for:",
        "repeat:",
        "urgent:",
        "group_by:",
        "quiet_hours:",
        "group_title:",
        "group_limit:",
        "batch_quiet:",
        "enrich_timeout:",
        "format: json",
        "dingtalk://",
        "wecombot://",
        "feishu://",
        "workflows://",
    ):
        assert form in text, form
    # Storage relative to the config: keep the example's state file out of the repo.
    copy = tmp_path / "config.yaml"
    copy.write_text(text)
    copy.chmod(0o600)
    code, out, err = cli(capsys, "check", "-c", str(copy))
    assert code == EX_OK, err
    assert "rules: 11 (review-failed, failures, batch-done, failures-for-chat, " in out
    assert "warning:" not in out
