"""Tests of watcher.metrics and watcher.http: pure readiness, and a real server on loopback."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from watcher.errors import ConfigError
from watcher.http import Readiness, bound_port, readiness, start_http
from watcher.metrics import Metrics
from watcher.model import EventKind

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


# --- readiness (pure) ----------------------------------------------------------------------


def test_fresh_sources_are_ready() -> None:
    result = readiness({"prod": NOW - MINUTE, "lab": NOW}, {"prod": MINUTE, "lab": MINUTE}, NOW)
    assert result == Readiness(ready=True, stale=())


def test_source_that_never_succeeded_is_stale() -> None:
    result = readiness({"prod": NOW, "lab": None}, {"prod": MINUTE, "lab": MINUTE}, NOW)
    assert result == Readiness(ready=False, stale=("lab",))


def test_source_missing_from_last_ok_is_stale() -> None:
    assert readiness({}, {"prod": MINUTE}, NOW) == Readiness(ready=False, stale=("prod",))


def test_exactly_factor_intervals_old_is_still_fresh() -> None:
    assert readiness({"prod": NOW - 3 * MINUTE}, {"prod": MINUTE}, NOW).ready


def test_older_than_factor_intervals_is_stale() -> None:
    last = NOW - 3 * MINUTE - timedelta(seconds=1)
    assert readiness({"prod": last}, {"prod": MINUTE}, NOW).stale == ("prod",)


def test_each_source_is_judged_by_its_own_interval() -> None:
    last = {"fast": NOW - 10 * MINUTE, "slow": NOW - 10 * MINUTE}
    intervals = {"fast": MINUTE, "slow": 5 * MINUTE}
    assert readiness(last, intervals, NOW).stale == ("fast",)


def test_factor_is_configurable() -> None:
    last = {"prod": NOW - 2 * MINUTE}
    assert readiness(last, {"prod": MINUTE}, NOW, factor=1.5).stale == ("prod",)
    assert readiness(last, {"prod": MINUTE}, NOW, factor=2.0).ready


def test_stale_keeps_config_order_and_ignores_unconfigured_sources() -> None:
    last = {"gone": None, "b": None, "a": None}
    result = readiness(last, {"b": MINUTE, "a": MINUTE}, NOW)
    assert result.stale == ("b", "a")


def test_no_sources_is_ready() -> None:
    assert readiness({}, {}, NOW) == Readiness(ready=True, stale=())


# --- metrics -------------------------------------------------------------------------------


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, keyed by name and labels (parsed, not grepped)."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def test_poll_finished_counts_times_and_stamps_success() -> None:
    metrics = Metrics()
    metrics.poll_finished("prod", ok=True, seconds=0.3, now=NOW)
    metrics.poll_finished("prod", ok=False, seconds=12.0, now=NOW + MINUTE)
    got = samples(metrics)
    assert got[key("watcher_polls_total", source="prod", outcome="ok")] == 1
    assert got[key("watcher_polls_total", source="prod", outcome="error")] == 1
    assert got[key("watcher_poll_duration_seconds_count", source="prod")] == 2
    assert got[key("watcher_poll_duration_seconds_sum", source="prod")] == pytest.approx(12.3)
    assert got[key("watcher_poll_duration_seconds_bucket", source="prod", le="0.5")] == 1
    # The failed poll does not move the success timestamp.
    stamp = got[key("watcher_last_successful_poll_timestamp_seconds", source="prod")]
    assert stamp == NOW.timestamp()


def test_api_error_without_code_is_labelled_none() -> None:
    metrics = Metrics()
    metrics.api_error("prod", "APIGW.0301")
    metrics.api_error("prod", None)
    got = samples(metrics)
    assert got[key("watcher_api_errors_total", source="prod", code="APIGW.0301")] == 1
    assert got[key("watcher_api_errors_total", source="prod", code="none")] == 1


def test_jobs_by_state_zeroes_states_that_emptied() -> None:
    metrics = Metrics()
    metrics.jobs_by_state("prod", {"PROCESSING": 3, "FAILED": 1})
    metrics.jobs_by_state("prod", {"SUCCEED": 4})
    metrics.jobs_by_state("lab", {"PROCESSING": 2})
    got = samples(metrics)
    assert got[key("watcher_jobs", source="prod", state="PROCESSING")] == 0
    assert got[key("watcher_jobs", source="prod", state="FAILED")] == 0
    assert got[key("watcher_jobs", source="prod", state="SUCCEED")] == 4
    assert got[key("watcher_jobs", source="lab", state="PROCESSING")] == 2


def test_events_alerts_and_incremental_misses_count() -> None:
    metrics = Metrics()
    metrics.event("prod", EventKind.TRANSITION)
    metrics.event("prod", "stuck")
    metrics.alert("ops", "sent")
    metrics.alert("ops", "failed")
    metrics.alert("ops", "failed")
    metrics.alert("pager", "dead")
    metrics.incremental_miss("prod")
    got = samples(metrics)
    assert got[key("watcher_events_total", source="prod", kind="transition")] == 1
    assert got[key("watcher_events_total", source="prod", kind="stuck")] == 1
    assert got[key("watcher_alerts_total", channel="ops", outcome="sent")] == 1
    assert got[key("watcher_alerts_total", channel="ops", outcome="failed")] == 2
    assert got[key("watcher_alerts_total", channel="pager", outcome="dead")] == 1
    assert got[key("watcher_incremental_misses_total", source="prod")] == 1


def test_unknown_alert_outcome_is_a_bug() -> None:
    with pytest.raises(ValueError, match="sent, failed, dead"):
        Metrics().alert("ops", "delivered")


def test_outbox_depth_reads_zero_for_absent_statuses() -> None:
    metrics = Metrics()
    assert samples(metrics)[key("watcher_outbox_depth", status="pending")] == 0
    metrics.outbox_depth({"pending": 5, "dead": 1})
    metrics.outbox_depth({"pending": 2})
    got = samples(metrics)
    assert got[key("watcher_outbox_depth", status="pending")] == 2
    assert got[key("watcher_outbox_depth", status="dead")] == 0
    assert got[key("watcher_outbox_depth", status="held")] == 0
    # Sent and silenced rows are history, not depth: no series for them.
    assert key("watcher_outbox_depth", status="sent") not in got
    assert key("watcher_outbox_depth", status="silenced") not in got


def test_held_alerts_are_counted_apart_from_pending() -> None:
    metrics = Metrics()
    metrics.outbox_depth({"pending": 5, "dead": 1, "sent": 40, "silenced": 3}, held=3)
    got = samples(metrics)
    assert got[key("watcher_outbox_depth", status="pending")] == 2
    assert got[key("watcher_outbox_depth", status="held")] == 3
    assert got[key("watcher_outbox_depth", status="dead")] == 1


def test_add_sources_exposes_zero_counters_before_any_poll() -> None:
    metrics = Metrics()
    metrics.add_sources(["prod"])
    got = samples(metrics)
    assert got[key("watcher_polls_total", source="prod", outcome="ok")] == 0
    assert got[key("watcher_polls_total", source="prod", outcome="error")] == 0
    assert got[key("watcher_incremental_misses_total", source="prod")] == 0


def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.event("prod", "new")
    assert key("watcher_events_total", source="prod", kind="new") not in samples(second)


# --- the HTTP server -----------------------------------------------------------------------


class Probe:
    """A readiness the test can flip."""

    def __init__(self) -> None:
        self.state = Readiness(ready=True, stale=())

    def __call__(self) -> Readiness:
        return self.state


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def base_url(metrics: Metrics, probe: Probe) -> AsyncIterator[str]:
    runner = await start_http("127.0.0.1:0", metrics, probe)
    try:
        yield f"http://127.0.0.1:{bound_port(runner)}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def test_healthz_says_ok(base_url: str, client: aiohttp.ClientSession) -> None:
    async with client.get(base_url + "/healthz") as response:
        assert response.status == 200
        assert await response.text() == "ok\n"


async def test_readyz_turns_503_naming_the_stale_source(
    base_url: str, client: aiohttp.ClientSession, probe: Probe
) -> None:
    async with client.get(base_url + "/readyz") as response:
        assert response.status == 200
        assert await response.json() == {"ready": True, "stale": []}
    probe.state = readiness({"prod": NOW, "lab": None}, {"prod": MINUTE, "lab": MINUTE}, NOW)
    async with client.get(base_url + "/readyz") as response:
        assert response.status == 503
        assert await response.json() == {"ready": False, "stale": ["lab"]}


async def test_metrics_serves_what_the_daemon_reported(
    base_url: str, client: aiohttp.ClientSession, metrics: Metrics
) -> None:
    metrics.poll_finished("prod", ok=True, seconds=0.2, now=NOW)
    metrics.api_error("prod", "MSS.0001")
    metrics.jobs_by_state("prod", {"PROCESSING": 3})
    metrics.event("prod", EventKind.NEW)
    metrics.alert("ops", "sent")
    metrics.outbox_depth({"pending": 1})
    async with client.get(base_url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await response.text()
    for line in (
        'watcher_polls_total{outcome="ok",source="prod"} 1.0',
        'watcher_poll_duration_seconds_count{source="prod"} 1.0',
        'watcher_api_errors_total{code="MSS.0001",source="prod"} 1.0',
        'watcher_jobs{source="prod",state="PROCESSING"} 3.0',
        'watcher_events_total{kind="new",source="prod"} 1.0',
        'watcher_alerts_total{channel="ops",outcome="sent"} 1.0',
        'watcher_outbox_depth{status="pending"} 1.0',
        'watcher_last_successful_poll_timestamp_seconds{source="prod"} 1.7145648e+09',  # NOW
    ):
        assert line in text.splitlines()
    assert "# TYPE watcher_incremental_misses_total counter" in text


async def test_unknown_path_is_404(base_url: str, client: aiohttp.ClientSession) -> None:
    async with client.get(base_url + "/") as response:
        assert response.status == 404


async def test_listens_on_ipv6_loopback(metrics: Metrics, probe: Probe) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        runner = await start_http("[::1]:0", metrics, probe)
    except ConfigError:
        pytest.skip("no IPv6 loopback here")
    try:
        url = f"http://[::1]:{bound_port(runner)}/healthz"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
    finally:
        await runner.cleanup()


async def test_port_in_use_is_a_config_error(metrics: Metrics, probe: Probe) -> None:
    taken = await start_http("127.0.0.1:0", metrics, probe)
    try:
        listen = f"127.0.0.1:{bound_port(taken)}"
        with pytest.raises(ConfigError, match=r"^http\.listen: cannot listen on 127\.0\.0\.1:"):
            await start_http(listen, metrics, probe)
    finally:
        await taken.cleanup()


async def test_bad_listen_is_a_config_error(metrics: Metrics, probe: Probe) -> None:
    with pytest.raises(ConfigError, match="0 to 65535"):
        await start_http("127.0.0.1:70000", metrics, probe)


async def test_requests_are_not_access_logged(
    base_url: str, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp.access")
    async with client.get(base_url + "/healthz?token=x") as response:
        assert response.status == 200
    assert [r for r in caplog.records if r.name == "aiohttp.access"] == []
