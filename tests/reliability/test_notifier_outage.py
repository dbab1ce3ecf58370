"""Notifier outage: the webhook refuses, then hangs, then recovers (on an injected clock).

Every alert must arrive exactly once, each job's alerts in the order they were detected; past
`give_up_after` alerts are dead-lettered, and `outbox retry --all` brings them back.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from tests.receivers import WebhookReceiver, json_url
from tests.reliability._support import AK, ENV, PROJECT, SK, alert_titles, config_text
from watcher.cli import main
from watcher.config import load_config_text
from watcher.daemon import Watcher
from watcher.metastudio.client import RetryPolicy
from watcher.model import OutboxStatus
from watcher.notify import Notifier, check_url
from watcher.simulator.app import create_app
from watcher.simulator.runner import serve_app
from watcher.simulator.state import SimulatorState
from watcher.store import Store

FAST = RetryPolicy(attempts=2, initial_backoff=0.001, max_backoff=0.002)


@dataclass
class Rig:
    sim: SimulatorState
    hook: WebhookReceiver
    store: Store
    watcher: Watcher
    config_path: Path
    clock: list[datetime]

    def advance(self, **delta: float) -> None:
        self.clock[0] += timedelta(**delta)

    async def drain(self, rounds: int = 60) -> None:
        """Deliver, a minute of fake time apart, until nothing is pending."""
        for _ in range(rounds):
            if not self.store.list_outbox([OutboxStatus.PENDING]):
                return
            self.advance(minutes=1)
            await self.watcher.deliver()
        raise AssertionError("the outbox did not drain")

    def delivered_titles(self) -> list[str]:
        return [t for payload in self.hook.received for t in alert_titles(payload)]


async def make_rig(tmp_path: Path, give_up_after: str) -> AsyncIterator[Rig]:
    start = datetime.now(UTC).replace(microsecond=0)
    clock = [start]
    sim = SimulatorState(seed=11)
    runner, endpoint = await serve_app(
        create_app(sim, project_id=PROJECT, ak=AK, sk=SK, clock=lambda: clock[0])
    )
    async with WebhookReceiver() as hook, aiohttp.ClientSession() as session:
        text = config_text(
            endpoint=endpoint,
            hook=json_url(hook.base_url),
            storage=tmp_path / "state.db",
            send_timeout="300ms",
            give_up_after=give_up_after,
        )
        path = tmp_path / "config.yaml"
        path.write_text(text)
        config = load_config_text(text, str(path), ENV, check_url)
        store = Store.open(config.storage)
        notifier = Notifier(config.channels, send_timeout=0.3)
        watcher = Watcher(
            config,
            store,
            notifier,
            session,
            clock=lambda: clock[0],
            monotonic=lambda: clock[0].timestamp(),  # the test's time moves both clocks
            rng=random.Random(5),
            retry=FAST,
        )
        try:
            yield Rig(sim, hook, store, watcher, path, clock)
        finally:
            notifier.close()
            store.close()
    await runner.cleanup()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async for r in make_rig(tmp_path, "24h"):
        yield r


@pytest.fixture
async def short_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async for r in make_rig(tmp_path, "1h"):
        yield r


# Each job's walk while the webhook is down: failed review, re-upload, failed again, success.
WALK = ("AUDIT_FAILED", "UPLOADING", "SYSTEM_AUDITING", "AUDIT_FAILED", "AUDITING", "SUCCEED")


async def test_outage_then_recovery_delivers_every_alert_once_in_job_order(rig: Rig) -> None:
    jobs = [rig.sim.add_job(state="AUDITING", now=rig.clock[0])["job_id"] for _ in range(6)]
    await rig.watcher.once()  # baseline
    rig.hook.refuse = True  # connections reset without an answer
    for index, state in enumerate(WALK):
        if index == 3:  # halfway: the webhook accepts connections but never answers
            rig.hook.refuse = False
            rig.hook.hang_next(1000, 30.0)  # every request until recovery
        for job_id in jobs[: 2 + index % 4]:
            rig.sim.set_state(job_id, state, now=rig.clock[0])
        rig.advance(minutes=20)  # two hours of outage in all
        await rig.watcher.once()
    assert rig.hook.received == []
    refused_or_hung = len(rig.hook.requests)

    rig.hook.recover()
    await rig.drain()

    queued = rig.store.list_outbox([OutboxStatus.SENT])
    expected = [item.alert.title for item in sorted(queued, key=lambda i: i.id)]
    got = rig.delivered_titles()
    print(
        f"\noutage: alerts={len(expected)} failed_attempts={refused_or_hung}"
        f" messages={len(rig.hook.received)}"
    )
    assert refused_or_hung >= 6
    assert len(expected) >= 8
    assert sorted(got) == sorted(expected)  # every alert, exactly once
    for job_id in jobs:  # and each job's alerts in detection order
        assert [t for t in got if job_id in t] == [t for t in expected if job_id in t]
    assert rig.store.outbox_counts()[OutboxStatus.DEAD] == 0


async def test_dead_lettered_alerts_come_back_with_outbox_retry_all(
    short_rig: Rig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = short_rig
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    jobs = [rig.sim.add_job(state="PROCESSING", now=rig.clock[0])["job_id"] for _ in range(4)]
    await rig.watcher.once()
    rig.hook.refuse = True
    for job_id in jobs:
        rig.sim.set_state(job_id, "FAILED", now=rig.clock[0])
    await rig.watcher.once()
    for _ in range(12):  # two hours of retries: past give_up_after (1h)
        rig.advance(minutes=10)
        await rig.watcher.deliver()
    counts = rig.store.outbox_counts()
    assert counts[OutboxStatus.DEAD] == 4
    assert counts[OutboxStatus.PENDING] == 0

    capsys.readouterr()
    assert main(["outbox", "list", "--json", "-c", str(rig.config_path)]) == 0
    assert capsys.readouterr().out.count('"status": "dead"') == 4
    assert main(["outbox", "retry", "--all", "-c", str(rig.config_path)]) == 0
    assert "4 alert(s) queued again" in capsys.readouterr().out

    rig.hook.refuse = False
    # `outbox retry` stamps the wall clock; the watcher's fake clock is already ahead of it.
    await rig.drain()
    got = rig.delivered_titles()
    assert len(got) == 4
    assert all(sum(job_id in title for title in got) == 1 for job_id in jobs)
    assert rig.store.outbox_counts()[OutboxStatus.DEAD] == 0
