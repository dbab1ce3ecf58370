"""How soon a state change is alerted, per API behaviour: the daemon's real loop, real clocks.

The simulator acts as each kind of region; a webhook behind apprise's json:// receives the
alerts. (a) and (b) must alert within two poll intervals, (c) within one poll interval plus
one full scan at the rate limit.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from tests.receivers import WebhookReceiver, json_url
from watcher.config import load_config_text
from watcher.daemon import Watcher
from watcher.metastudio.client import RetryPolicy
from watcher.notify import Notifier, check_url
from watcher.simulator.app import create_app
from watcher.simulator.runner import serve_app
from watcher.simulator.state import ApiBehaviour, SimulatorState, to_ms
from watcher.store import Store

AK, SK, PROJECT = "LATENCYAKLATENCYAK01", "latency-secret-key-0123456789abcd", "proj-lat"
INTERVAL = 0.6  # seconds; below the config minimum of 5 s, set on the parsed config
RATE = 20  # requests per second
JOBS = 1000
CONFIG = """
sources:
  - name: prod
    endpoint: {endpoint}
    project_id: {project}
    ak: ${{TEST_AK}}
    sk: ${{TEST_SK}}
    poll_interval: 5s
    request_timeout: 5s
    max_requests_per_second: {rate}
channels:
  hook: ["{hook}"]
rules:
  - name: failures
    on: [FAILED]
    notify: [hook]
storage: {storage}
"""


def polls_ok(watcher: Watcher) -> float:
    value = watcher.metrics.registry.get_sample_value(
        "watcher_polls_total", {"source": "prod", "outcome": "ok"}
    )
    return value or 0.0


@pytest.fixture
async def hook() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as receiver:
        yield receiver


async def _latencies(
    behaviour: ApiBehaviour, tmp_path: Path, hook: WebhookReceiver, changes: int = 3
) -> list[float]:
    state = SimulatorState(seed=21, api_behaviour=behaviour)
    now = datetime.now(UTC)
    for i in range(JOBS):
        created = to_ms(now - timedelta(days=7) + timedelta(minutes=i))
        job_state = "PROCESSING" if i % 10 == 0 else "SUCCEED"
        state.add_job(now=now, state=job_state, create_time=created, lastupdate_time=created)
    runner, endpoint = await serve_app(create_app(state, project_id=PROJECT, ak=AK, sk=SK))
    text = CONFIG.format(
        endpoint=endpoint,
        project=PROJECT,
        rate=RATE,
        hook=json_url(hook.base_url),
        storage=tmp_path / "state.db",
    )
    config = load_config_text(text, "latency.yaml", {"TEST_AK": AK, "TEST_SK": SK}, check_url)
    (source,) = config.sources
    config = replace(config, sources=(replace(source, poll_interval=timedelta(seconds=INTERVAL)),))
    store = Store.open(config.storage)
    notifier = Notifier(config.channels, send_timeout=2.0)
    rng = random.Random(behaviour.value)
    out: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            watcher = Watcher(
                config,
                store,
                notifier,
                session,
                retry=RetryPolicy(attempts=2, initial_backoff=0.01),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(watcher.run(stop))
            try:
                # Past the baseline and the cycle that finds out what the region honours.
                for _ in range(400):
                    if polls_ok(watcher) >= 3:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the watcher did not poll three times in 20 s")
                active = [j for j, job in state.jobs.items() if job["state"] == "PROCESSING"]
                for n, job_id in enumerate(rng.sample(active, changes), start=1):
                    # At a random point of the poll cycle.
                    await asyncio.sleep(rng.uniform(0, INTERVAL))
                    changed_at = time.monotonic()
                    state.set_state(job_id, "FAILED", now=datetime.now(UTC))
                    await hook.wait_for(n, within=10)
                    out.append(time.monotonic() - changed_at)
            finally:
                stop.set()
                await task
    finally:
        notifier.close()
        store.close()
        await runner.cleanup()
    return out


@pytest.mark.parametrize("behaviour", [ApiBehaviour.FULL, ApiBehaviour.DOCUMENTED])
async def test_a_change_is_alerted_within_two_poll_intervals(
    behaviour: ApiBehaviour, tmp_path: Path, hook: WebhookReceiver
) -> None:
    latencies = await _latencies(behaviour, tmp_path, hook)
    print(f"{behaviour}: latencies {[round(x, 3) for x in latencies]} s, bound {2 * INTERVAL} s")
    assert max(latencies) <= 2 * INTERVAL, latencies


async def test_a_plain_region_alerts_within_an_interval_and_a_full_scan(
    tmp_path: Path, hook: WebhookReceiver
) -> None:
    full_scan = math.ceil(JOBS / 100) / RATE  # seconds, at the rate limit
    latencies = await _latencies(ApiBehaviour.PLAIN, tmp_path, hook)
    bound = INTERVAL + full_scan
    print(f"plain: latencies {[round(x, 3) for x in latencies]} s, bound {bound} s")
    assert max(latencies) <= bound, latencies
