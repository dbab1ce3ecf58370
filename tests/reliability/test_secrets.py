"""Secrets and personal data: no command, at any log level, on any path, prints a secret.

Known AK, SK, security token, SMTP password, Slack and webhook tokens and the simulator's
`phone` values are planted; every command's stdout and stderr is searched for them. Also: a
world-readable config is warned about, and templates cannot reach files, env or code.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability._support import (
    AK,
    PROJECT,
    PYTHON,
    ROOT,
    SK,
    BackgroundServers,
    cli_env,
    run_cli,
)
from watcher.simulator.state import SimulatorState

TOKEN = "SECURITYTOKEN-9f8e7d6c5b4a"
SMTP_PASSWORD = "smtp-pass-4c5d6e7f"
SLACK = ("T0ABCDEFG", "B0HIJKLMN", "slacksecretXYZ123456789")
WEBHOOK_TOKEN = "hooktoken-a1b2c3d4e5f6"  # written literally in the URL's path
CANARY = "env-canary-5e6f7a8b"
SECRETS = (AK, SK, TOKEN, SMTP_PASSWORD, *SLACK, WEBHOOK_TOKEN, CANARY)

CONFIG = """\
sources:
  - name: prod
    endpoint: {endpoint}
    project_id: {project}
    ak: ${{TEST_AK}}
    sk: {sk}
    security_token: ${{TEST_TOKEN}}
    poll_interval: 60s
    max_requests_per_second: 1000
channels:
  hook: ["json://{hook_host}/hook/{webhook_token}"]
  chat: ["slack://{slack_a}/{slack_b}/{slack_c}/#alerts"]
  mail: ["mailto://watcher:${{SMTP_PASS}}@127.0.0.1:9?mode=insecure&from=w%40example.com&to=o%40example.com"]
rules:
  - name: failures
    on: [AUDIT_FAILED, SPLIT_FAILED, FAILED]
    notify: [hook, chat, mail]
    title: "{title}"
storage: {storage}
delivery:
  send_timeout: 2s
"""


@pytest.fixture
def servers() -> Iterator[BackgroundServers]:
    state = SimulatorState(seed=5)
    for _ in range(3):
        state.add_job(state="AUDITING")
    with BackgroundServers(state) as running:
        yield running


def env() -> dict[str, str]:
    # A dead local proxy: the Slack send fails at once, without leaving this machine.
    return {
        "TEST_TOKEN": TOKEN,
        "SMTP_PASS": SMTP_PASSWORD,
        "CANARY": CANARY,
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }


def write(
    tmp_path: Path,
    servers: BackgroundServers,
    *,
    sk: str = "${TEST_SK}",
    title: str = "{{ event.state }} {{ job.job_id }}",
    name: str = "config.yaml",
) -> Path:
    path = tmp_path / name
    path.write_text(
        CONFIG.format(
            endpoint=servers.endpoint,
            project=PROJECT,
            sk=sk,
            hook_host=servers.hook_base.removeprefix("http://"),
            webhook_token=WEBHOOK_TOKEN,
            slack_a=SLACK[0],
            slack_b=SLACK[1],
            slack_c=SLACK[2],
            title=title,
            storage=tmp_path / f"{Path(name).stem}.db",
        )
    )
    path.chmod(0o600)
    return path


def leaks(text: str, phones: list[str]) -> list[str]:
    return [s for s in (*SECRETS, *phones) if s in text]


def run_everything(
    tmp_path: Path, servers: BackgroundServers
) -> dict[str, subprocess.CompletedProcess[str]]:
    """check, once (baseline), once with alerts (webhook ok; Slack and mail fail), outbox,
    route and an auth failure, at debug; the delivering `once` at info too."""
    cfg = write(tmp_path, servers)
    bad_sk = write(tmp_path, servers, sk="wrong-secret-key-000000", name="badsk.yaml")
    debug = ("--log-level", "debug")
    runs = {
        "check": run_cli(*debug, "check", "-c", str(cfg), env=env()),
        "once": run_cli(*debug, "once", "-c", str(cfg), env=env()),
    }
    jobs = sorted(servers.state.jobs)
    servers.call(lambda: [servers.state.set_state(j, "FAILED") for j in jobs])
    runs["delivery at info"] = run_cli("once", "-c", str(cfg), env=env())
    servers.call(lambda: [servers.state.set_state(j, "AUDIT_FAILED") for j in jobs])
    runs["delivery at debug"] = run_cli(*debug, "once", "-c", str(cfg), env=env())
    runs["outbox"] = run_cli(*debug, "outbox", "-c", str(cfg), env=env())
    runs["route"] = run_cli(*debug, "route", "--state", "FAILED", "-c", str(cfg), env=env())
    runs["auth rejected"] = run_cli(*debug, "once", "-c", str(bad_sk), env=env())
    assert len(servers.receiver.received) >= 2, "the webhook path was exercised"
    assert runs["auth rejected"].returncode == 1
    return runs


@pytest.fixture(scope="module")
def everything(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, subprocess.CompletedProcess[str]], list[str]]]:
    state = SimulatorState(seed=5)
    for _ in range(3):
        state.add_job(state="AUDITING")
    phones = [job["phone"] for job in state.jobs.values()]
    with BackgroundServers(state) as running:
        yield run_everything(tmp_path_factory.mktemp("secrets"), running), phones


def test_no_command_prints_a_secret_or_a_phone(
    everything: tuple[dict[str, subprocess.CompletedProcess[str]], list[str]],
) -> None:
    runs, phones = everything
    found = {
        name: leaks(r.stdout + r.stderr, phones)
        for name, r in runs.items()
        if name != "delivery at debug"  # see the next test
    }
    print("\nsecrets: commands=", len(runs), "leaks=", {k: v for k, v in found.items() if v})
    assert not any(found.values()), {k: v for k, v in found.items() if v}
    assert all("Traceback" not in r.stdout + r.stderr for r in runs.values())


def test_delivery_at_debug_prints_no_channel_token(
    everything: tuple[dict[str, subprocess.CompletedProcess[str]], list[str]],
) -> None:
    runs, phones = everything
    run = runs["delivery at debug"]
    assert leaks(run.stdout + run.stderr, phones) == []


def test_daemon_run_prints_no_secret(tmp_path: Path, servers: BackgroundServers) -> None:
    cfg = write(tmp_path, servers)
    phones = [job["phone"] for job in servers.state.jobs.values()]
    daemon = subprocess.Popen(  # noqa: S603
        [PYTHON, "-m", "watcher", "--log-level", "debug", "run", "-c", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(env()),
        cwd=ROOT,
        text=True,
    )
    deadline = time.monotonic() + 20
    while servers.state.requests == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    daemon.send_signal(signal.SIGTERM)
    out, err = daemon.communicate(timeout=20)
    assert servers.state.requests > 0
    assert leaks(out + err, phones) == []


def test_demo_prints_neither_its_keys_nor_phones() -> None:
    result = run_cli(
        "--log-level",
        "debug",
        "demo",
        "--duration",
        "3",
        "--step-every",
        "0.5",
        "--poll-interval",
        "5s",
        timeout=60,
    )
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-2000:]
    assert not re.search(r"\bDEMO[0-9A-F]{16}\b", text)  # the demo's AK
    assert not re.search(r"\b[0-9a-f]{40}\b", text)  # the demo's SK
    assert not re.search(r"\b138\d{8}\b", text)  # the simulator's phone numbers


def test_bad_url_with_a_token_is_refused_without_printing_the_token(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(
        "sources:\n  - name: p\n    region: cn-north-4\n    project_id: p\n"
        "    ak: AKAKAKAKAK\n    sk: SKSKSKSKSK\n"
        f"channels:\n  chat: ['slak://{SLACK[0]}/{SLACK[1]}/{SLACK[2]}']\n"
    )
    path.chmod(0o600)
    result = run_cli("--log-level", "debug", "check", "-c", str(path))
    assert result.returncode == 78
    assert leaks(result.stdout + result.stderr, []) == [], result.stderr


def test_check_warns_about_a_world_readable_config(
    tmp_path: Path, servers: BackgroundServers
) -> None:
    cfg = write(tmp_path, servers)
    cfg.chmod(0o644)
    result = run_cli("check", "-c", str(cfg), env=env())
    assert result.returncode == 0, result.stderr
    assert f"warning: {cfg} is readable by other users (mode 0644)" in result.stdout
    cfg.chmod(0o600)
    assert "readable by other users" not in run_cli("check", "-c", str(cfg), env=env()).stdout


ESCAPES = (
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].environ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ job.__class__.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__.os.environ['CANARY'] }}",
)


def test_templates_cannot_reach_environment_or_code(
    tmp_path: Path, servers: BackgroundServers
) -> None:
    cfg = write(tmp_path, servers)
    rules = "".join(
        f'  - name: escape{index}\n    on: [FAILED]\n    notify: [hook]\n    title: "{template}"\n'
        for index, template in enumerate(ESCAPES)
    )
    cfg.write_text(cfg.read_text().replace("storage:", rules + "storage:"))
    check = run_cli("check", "-c", str(cfg), env=env())
    route = run_cli("route", "--state", "FAILED", "-c", str(cfg), env=env())
    for result in (check, route):
        text = result.stdout + result.stderr
        assert CANARY not in text
        assert "environ(" not in text and "<module 'os'" not in text and "<class" not in text
        assert "Traceback" not in text
    assert check.returncode == 78
    # Every escape is named as a sandbox refusal, rule by rule.
    assert check.stderr.count("SecurityError") == len(ESCAPES), check.stderr
    assert route.returncode == 0
