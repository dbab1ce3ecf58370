"""The delivery shell against a real SQLite file and webhook, with both clocks injected.

The wall clock steps (±10 min, +25 h) while the monotonic clock runs on: retries neither stall
nor dead-letter. Rate limits and group intervals come from the send log, across a restart.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.receivers import WebhookReceiver, json_url
from watcher.dispatch import DeliveryMemory, Dispatcher
from watcher.metrics import Metrics
from watcher.model import (
    Alert,
    BodyFormat,
    ChannelPolicy,
    Config,
    DeliveryConfig,
    NotifyType,
    OutboxStatus,
    RuleConfig,
    Secret,
)
from watcher.notify import Notifier
from watcher.store import Store

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULE = RuleConfig(name="r", on=("*",), notify=("hook",), group_by=("job_id",))


@dataclass
class Rig:
    """A store, a notifier to a real webhook, and two clocks the test moves by hand."""

    tmp: Path
    hook: WebhookReceiver
    policies: dict[str, ChannelPolicy] = field(default_factory=dict)
    rules: tuple[RuleConfig, ...] = (RULE,)
    wall: datetime = T0
    mono: float = 1000.0
    _open: list[tuple[Store, Notifier]] = field(default_factory=list)

    def dispatcher(self) -> Dispatcher:
        """A fresh process: a new store connection, notifier and (empty) delivery memory."""
        config = Config(
            path=str(self.tmp / "config.yaml"),
            sources=(),
            channels={"hook": (Secret(json_url(self.hook.base_url)),)},
            rules=self.rules,
            storage=str(self.tmp / "state.db"),
            delivery=DeliveryConfig(
                retry_initial=timedelta(seconds=10),
                retry_max=timedelta(seconds=20),
                give_up_after=timedelta(hours=24),
                send_timeout=timedelta(seconds=2),
            ),
            channel_policies=self.policies,
        )
        store = Store.open(config.storage)
        notifier = Notifier(config.channels, send_timeout=2.0)
        self._open.append((store, notifier))
        return Dispatcher(
            config,
            store,
            notifier,
            clock=lambda: self.wall,
            rng=random.Random(3),
            metrics=Metrics(process=False),
            memory=DeliveryMemory(lambda: self.mono),
        )

    def queue(self, d: Dispatcher, job: str) -> None:
        alert = Alert(
            f"e-{job}",
            "prod",
            job,
            "r",
            "hook",
            f"alert about {job}",
            "body",
            NotifyType.FAILURE,
            BodyFormat.TEXT,
            self.wall,
            group_key=f"job_id={job}",
        )
        d.store.commit_events("prod", [], [alert], now=self.wall, tracking={})

    def step(self, *, wall: timedelta = timedelta(0), mono: float = 0.0) -> None:
        self.wall += wall
        self.mono += mono

    def close(self) -> None:
        for store, notifier in self._open:
            notifier.close()
            store.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with WebhookReceiver() as hook:
        r = Rig(tmp_path, hook)
        try:
            yield r
        finally:
            r.close()


async def failed_once(rig: Rig, d: Dispatcher) -> None:
    rig.queue(d, "j1")
    rig.hook.fail_next(1)
    outcome = await d.deliver()
    assert (outcome.sent, outcome.failed) == (0, 1)


async def test_a_clock_stepped_back_ten_minutes_does_not_stall_a_retry(rig: Rig) -> None:
    d = rig.dispatcher()
    await failed_once(rig, d)
    rig.step(wall=timedelta(minutes=-10), mono=25.0)  # past any backoff (at most 20 s)
    outcome = await d.deliver()
    assert outcome.sent == 1
    assert [m["title"] for m in rig.hook.received] == ["alert about j1"]


async def test_a_retry_still_waits_out_its_backoff_when_the_clock_jumps_ahead(rig: Rig) -> None:
    d = rig.dispatcher()
    await failed_once(rig, d)
    rig.step(wall=timedelta(minutes=10), mono=0.5)  # the backoff (at least 1 s) has not passed
    assert (await d.deliver()).sent == 0
    assert len(rig.hook.requests) == 1
    rig.step(mono=25.0)
    assert (await d.deliver()).sent == 1


async def test_a_clock_stepped_forward_25_hours_does_not_dead_letter(rig: Rig) -> None:
    d = rig.dispatcher()
    await failed_once(rig, d)
    rig.step(wall=timedelta(hours=25), mono=25.0)
    rig.hook.fail_next(1)
    outcome = await d.deliver()
    assert (outcome.failed, outcome.dead) == (1, 0)  # 25 s of trying, not 25 h
    (item,) = d.store.list_outbox([OutboxStatus.PENDING])
    assert 24.0 <= item.elapsed <= 26.0
    rig.step(mono=25.0)
    assert (await d.deliver()).sent == 1


async def test_give_up_after_still_holds_on_the_monotonic_clock(rig: Rig) -> None:
    d = rig.dispatcher()
    await failed_once(rig, d)
    rig.hook.refuse = True
    outcomes = []
    for _ in range(30):
        rig.step(mono=3600.0)  # an hour of trying between attempts (a long outage)
        outcomes.append(await d.deliver())
        if outcomes[-1].dead:
            break
    # Dead on the attempt after 24 h of trying (the first failure was at 0 s), not before.
    assert [o.failed for o in outcomes] == [1] * 23 + [0]
    assert outcomes[-1].dead == 1
    (item,) = d.store.list_outbox([OutboxStatus.DEAD])
    assert item.elapsed >= 24 * 3600


async def test_after_a_restart_and_a_step_back_a_retry_waits_one_backoff_at_most(
    rig: Rig,
) -> None:
    await failed_once(rig, rig.dispatcher())
    restarted = rig.dispatcher()
    rig.step(wall=timedelta(minutes=-10))
    assert (await restarted.deliver()).sent == 0  # still inside its backoff
    rig.step(mono=21.0)  # the longest backoff, measured by the new process
    assert (await restarted.deliver()).sent == 1


async def test_rate_limit_holds_across_a_restart(rig: Rig) -> None:
    rig.policies["hook"] = ChannelPolicy(max_per_minute=1)
    first = rig.dispatcher()
    rig.queue(first, "j1")
    assert (await first.deliver()).sent == 1

    restarted = rig.dispatcher()  # new process: nothing in memory, only the send log
    rig.step(wall=timedelta(seconds=20), mono=20.0)
    rig.queue(restarted, "j2")
    assert (await restarted.deliver()).sent == 0
    assert restarted.memory.next_delay() == pytest.approx(40.0)
    rig.step(wall=timedelta(seconds=41), mono=41.0)
    assert (await restarted.deliver()).sent == 1
    assert [m["title"] for m in rig.hook.received] == ["alert about j1", "alert about j2"]


async def test_group_interval_holds_across_a_restart(rig: Rig) -> None:
    rig.rules = (
        RuleConfig(
            name="r",
            on=("*",),
            notify=("hook",),
            group_by=("job_id",),
            group_interval=timedelta(minutes=5),
        ),
    )
    first = rig.dispatcher()
    rig.queue(first, "j1")
    assert (await first.deliver()).sent == 1
    restarted = rig.dispatcher()
    rig.step(wall=timedelta(minutes=1), mono=60.0)
    alert = Alert(
        "e-j1-again",
        "prod",
        "j1",
        "r",
        "hook",
        "again about j1",
        "body",
        NotifyType.FAILURE,
        BodyFormat.TEXT,
        rig.wall,
        group_key="job_id=j1",
    )
    restarted.store.commit_events("prod", [], [alert], now=rig.wall, tracking={})
    assert (await restarted.deliver()).sent == 0
    rig.step(wall=timedelta(minutes=4), mono=240.0)
    assert (await restarted.deliver()).sent == 1
