"""Metrics useful from the first scrape: every series at 0, no *_created, process_* even where
/proc/stat is hidden, `promtool check metrics` clean, and the README's alert rules firing
(`promtool test rules`) on what a daemon with wrong credentials really serves."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.packaging._support import REPO_ROOT, find_tool, tool_missing
from tests.receivers import json_url
from tests.reliability._support import PROJECT, BackgroundServers
from watcher.metrics import KNOWN_API_CODES, Metrics, _ProcessCollector
from watcher.model import KNOWN_STATES, EventKind
from watcher.simulator.state import SimulatorState


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def fresh() -> Metrics:
    metrics = Metrics()
    metrics.add_sources(["prod"])
    metrics.add_channels(["ops"])
    return metrics


def test_every_series_exists_at_zero_before_anything_happened() -> None:
    text = fresh().render().decode()
    got = samples(text)

    def value(name: str, **labels: str) -> float:
        return got[(name, frozenset(labels.items()))]

    assert value("watcher_source_up", source="prod") == 0
    assert value("watcher_last_successful_poll_timestamp_seconds", source="prod") == 0
    for outcome in ("ok", "error"):
        assert value("watcher_polls_total", source="prod", outcome=outcome) == 0
    for code in KNOWN_API_CODES:
        assert value("watcher_api_errors_total", source="prod", code=code) == 0
    for kind in EventKind:
        assert value("watcher_events_total", source="prod", kind=kind.value) == 0
    for state in KNOWN_STATES:
        assert value("watcher_jobs", source="prod", state=state) == 0
    for outcome in ("sent", "failed", "dead"):
        assert value("watcher_alerts_total", channel="ops", outcome=outcome) == 0
    assert value("watcher_incremental_misses_total", source="prod") == 0
    assert value("watcher_poll_duration_seconds_count", source="prod") == 0
    assert {dict(labels)["status"] for name, labels in got if name == "watcher_outbox_depth"} == {
        "pending",
        "held",
        "dead",
    }
    assert "_created" not in text
    assert value("process_resident_memory_bytes") > 0


def test_source_up_follows_the_last_poll() -> None:
    from datetime import UTC, datetime

    metrics = fresh()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    metrics.poll_finished("prod", True, 0.1, now)
    got = samples(metrics.render().decode())
    assert got[("watcher_source_up", frozenset({("source", "prod")}))] == 1
    assert (
        got[("watcher_last_successful_poll_timestamp_seconds", frozenset({("source", "prod")}))]
        == now.timestamp()
    )
    metrics.poll_finished("prod", False, 0.1, now)
    got = samples(metrics.render().decode())
    assert got[("watcher_source_up", frozenset({("source", "prod")}))] == 0


def test_process_metrics_where_proc_stat_is_hidden(tmp_path: Path) -> None:
    """ProcSubset=pid leaves /proc/PID but hides /proc/stat, where btime lives."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "self").symlink_to(f"/proc/{os.getpid()}")
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.process_collector import ProcessCollector

    plain = CollectorRegistry()
    ProcessCollector(proc=str(proc), registry=plain)
    assert b"process_start_time_seconds" not in generate_latest(plain)  # the library's gap
    ours = CollectorRegistry()
    _ProcessCollector(proc=str(proc), registry=ours)
    got = samples(generate_latest(ours).decode())
    start = got[("process_start_time_seconds", frozenset())]
    assert abs(start - real_start_time()) < 2
    assert got[("process_cpu_seconds_total", frozenset())] > 0


def real_start_time() -> float:
    with open("/proc/self/stat", "rb") as stat:
        ticks = float(stat.read().split(b")")[-1].split()[19])
    with open("/proc/stat", "rb") as system:
        btime = next(float(line.split()[1]) for line in system if line.startswith(b"btime "))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def promtool() -> str:
    found = find_tool("promtool")
    if found is None:
        tool_missing("promtool not installed (apt-get install prometheus)")
    return found


def test_promtool_accepts_the_exposition(tmp_path: Path) -> None:
    metrics = fresh()
    metrics.api_error("prod", "APIGW.0301")
    metrics.outbox_depth({"pending": 3}, held=1)
    result = subprocess.run(  # noqa: S603 - promtool, fixed arguments
        [promtool(), "check", "metrics"],
        input=metrics.render(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"", result.stdout  # not even a lint remark


# --- the README's alerts against a real daemon with wrong credentials -----------------------


def readme_alert_rules() -> dict[str, object]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("Alerts worth setting") :]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match is not None
    rules = yaml.safe_load(match.group(1))
    assert isinstance(rules, dict)
    return rules


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def servers() -> Iterator[BackgroundServers]:
    state = SimulatorState(seed=3)
    for _ in range(3):
        state.add_job(state="AUDITING")
    with BackgroundServers(state) as running:
        yield running


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def wait_for_errors(port: int, at_least: int, within: float = 30.0) -> str:
    deadline = time.monotonic() + within
    key = ("watcher_polls_total", frozenset({("source", "prod"), ("outcome", "error")}))
    while time.monotonic() < deadline:
        try:
            text = scrape(port)
        except OSError:
            time.sleep(0.2)
            continue
        if samples(text).get(key, 0) >= at_least:
            return text
        time.sleep(0.2)
    raise AssertionError(f"fewer than {at_least} failed polls within {within}s")


def series_notation(name: str, labels: frozenset[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels))
    return f"{name}{{{inner}}}"


def test_readme_alerts_fire_for_wrong_credentials_from_the_start(
    servers: BackgroundServers, tmp_path: Path
) -> None:
    tool = promtool()
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"sources:\n  - name: prod\n    endpoint: {servers.endpoint}\n    project_id: {PROJECT}\n"
        "    ak: WRONGAK000000000000\n    sk: wrong-secret-key-000000000000\n"
        "    poll_interval: 5s\n    request_timeout: 5s\n"
        f"channels:\n  ops: {json_url(servers.hook_base)}\n"
        "rules:\n  - name: all\n    notify: [ops]\n"
        f"storage: {tmp_path / 'state.db'}\nhttp:\n  listen: 127.0.0.1:{port}\n"
    )
    daemon = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "watcher", "run", "-c", str(config), "--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        first = wait_for_errors(port, 1)
        second = wait_for_errors(port, 2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    assert b"APIGW.0301" in stderr
    one, two = samples(first), samples(second)
    # Input series for promtool: the first scrape at 0m, the second from 1m on, held there.
    series = [
        {"series": series_notation(name, labels), "values": f"{value:g} {two[key]:g}+0x30"}
        for key in one
        if (name := key[0]).startswith("watcher_") and key in two
        for labels in [key[1]]
        for value in [one[key]]
    ]
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(readme_alert_rules()))
    # (when to look, what must be firing then): promtool's clock starts at 0, like a deploy
    # whose first poll never succeeded; Blind needs 15m of blindness plus its 5m `for:`.
    fires = {
        "MetaStudioWatcherBlind": ("21m", [{"exp_labels": {"source": "prod"}}]),
        "MetaStudioWatcherSourceDown": ("11m", [{"exp_labels": {"source": "prod"}}]),
        "MetaStudioWatcherApiErrors": (
            "2m",
            [{"exp_labels": {"source": "prod", "code": "APIGW.0301"}}],
        ),
        "MetaStudioWatcherDeadLetters": ("21m", []),
        "MetaStudioWatcherBacklog": ("21m", []),
    }
    test_file = tmp_path / "test.yaml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules_file)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": series,
                        "alert_rule_test": [
                            {"eval_time": when, "alertname": name, "exp_alerts": expected}
                            for name, (when, expected) in fires.items()
                        ],
                    }
                ],
            }
        )
    )
    # Every alert of the README is checked: a new one must be added to `fires`.
    names = {r["alert"] for g in readme_alert_rules()["groups"] for r in g["rules"]}  # type: ignore[index, attr-defined]
    assert names == set(fires)
    result = subprocess.run(  # noqa: S603 - promtool, fixed arguments
        [tool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
