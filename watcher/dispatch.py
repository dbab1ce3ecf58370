"""The delivery shell: load the outbox, plan it with the pipeline, send, record. Effects only.

Every decision is `watcher.engine.pipeline` (what goes, as which messages) or
`watcher.engine.delivery` (retry timing); `DeliveryMemory` is what the shell keeps between
passes, and it outlives a reload.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from watcher.engine.delivery import after_failure, first_wait, gap_since_last_attempt
from watcher.engine.noise import Message
from watcher.engine.pipeline import RATE_WINDOW, Held, job_order, plan
from watcher.model import Config, OutboxItem, OutboxStatus
from watcher.notify import Notifier
from watcher.recorder import Recorder
from watcher.store import Store

log = structlog.get_logger("watcher.daemon")

Clock = Callable[[], datetime]
Monotonic = Callable[[], float]


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    sent: int = 0
    failed: int = 0
    dead: int = 0


@dataclass(slots=True)
class DeliveryMemory:
    """Retry times on the monotonic clock, kept across reloads (serve() owns one).

    The store holds wall-clock times for `status` and for a restart; within the process they
    are read once and then only the monotonic clock counts.
    """

    monotonic: Monotonic = time.monotonic
    due: dict[int, float] = field(default_factory=dict)  # item id -> retry due
    last_attempt: dict[int, float] = field(default_factory=dict)  # item id -> last attempt
    wake: float | None = None  # when alerts held back by the pipeline may go next

    def waits(self, pending: Sequence[OutboxItem], now: datetime) -> dict[int, timedelta]:
        """How long each pending alert still waits for its retry (absent: due)."""
        mono = self.monotonic()
        live = {item.id for item in pending}
        for gone in [k for k in self.due if k not in live]:
            del self.due[gone]
            self.last_attempt.pop(gone, None)
        out: dict[int, timedelta] = {}
        for item in pending:
            due = self.due.setdefault(item.id, mono + first_wait(item, now))
            if due > mono:
                out[item.id] = timedelta(seconds=due - mono)
        return out

    def attempted(self, item: OutboxItem, now: datetime, started: float) -> float:
        """Record an attempt that began at monotonic `started` and just ended; return the time
        spent trying so far (from the first attempt's start to this one's end)."""
        mono = self.monotonic()
        last = self.last_attempt.get(item.id)
        if last is not None:
            gap = mono - last
        else:
            gap = gap_since_last_attempt(item, now) + (mono - started)
        self.last_attempt[item.id] = mono
        return item.elapsed + max(gap, 0.0)

    def retry_in(self, item_id: int, delay: float) -> None:
        self.due[item_id] = self.monotonic() + delay

    def next_delay(self) -> float:
        """Seconds until the delivery loop should look again."""
        mono = self.monotonic()
        times = [t for t in self.due.values() if t > mono]
        if self.wake is not None:
            times.append(self.wake)
        if not times:
            # Idle: look again soon, so alerts requeued by `outbox retry` go out promptly.
            return 5.0
        return max(0.2, min(60.0, min(times) - mono))


class Dispatcher:
    """One delivery pass at a time over the outbox: load, plan, send, record."""

    def __init__(
        self,
        config: Config,
        store: Store,
        notifier: Notifier,
        *,
        clock: Clock,
        rng: random.Random,
        metrics: Recorder,
        memory: DeliveryMemory,
    ) -> None:
        self.config = config
        self.store = store
        self.notifier = notifier
        self.clock = clock
        self.rng = rng
        self.metrics = metrics
        self.memory = memory
        self._rules = {r.name: r for r in config.rules}
        # The send log is read back as far as any rule's group_interval (and a rate window).
        self._log_span = max([RATE_WINDOW, *(r.group_interval for r in config.rules)])

    async def deliver(self, stopping: asyncio.Event | None = None) -> DeliveryOutcome:
        """Send what may go now. Channels in parallel, each channel's messages in order.

        Once `stopping` is set no new message starts; the ones in flight finish and are
        recorded, so a reload or stop neither loses nor repeats a send.
        """
        now = self.clock()
        # Every store call goes through `store.call`: never waits on the loop for a large
        # cycle committing in its thread.
        store = self.store
        pending = await store.call(store.list_outbox, [OutboxStatus.PENDING])
        silences = await store.call(store.list_silences, active_at=now) if pending else ()
        sent = await store.call(store.send_log, now - self._log_span) if pending else ()
        decided = plan(
            pending,
            now,
            rules=self._rules,
            policies=self.config.channel_policies,
            silences=silences,
            sent=sent,
            waits=self.memory.waits(pending, now),
        )
        for silenced in decided.silenced:
            alert = silenced.item.alert
            await store.call(store.mark_silenced, silenced.item.id, silenced.silence.id, now)
            log.info(
                "alert_silenced",
                source=alert.source,
                job_id=alert.job_id,
                channel=alert.channel,
                rule=alert.rule,
                silence=silenced.silence.id,
            )
        wake = decided.next_wake
        self.memory.wake = (
            None
            if wake is None
            else self.memory.monotonic() + max((wake - now).total_seconds(), 0.0)
        )
        by_channel: dict[str, list[Message]] = {}
        for message in decided.messages:
            by_channel.setdefault(message.channel, []).append(message)
        results = await asyncio.gather(
            *(self._deliver_channel(batch, stopping) for batch in by_channel.values())
        )
        counts = await store.call(store.outbox_counts)
        self.metrics.outbox_depth(
            {str(k): v for k, v in counts.items()},
            held=len({h.item_id for h in decided.held}),
        )
        return DeliveryOutcome(
            sum(r.sent for r in results),
            sum(r.failed for r in results),
            sum(r.dead for r in results),
        )

    async def _deliver_channel(
        self, messages: list[Message], stopping: asyncio.Event | None
    ) -> DeliveryOutcome:
        sent = failed = dead = 0
        failed_items: list[Held] = []
        for message in messages:
            if stopping is not None and stopping.is_set():
                break  # the rest go on the next pass (of the next configuration)
            if job_order(message.items, failed_items).held:
                continue  # an earlier alert about one of its jobs just failed: it goes first
            started = self.memory.monotonic()
            result = await self.notifier.send(
                message.channel,
                message.title,
                message.body,
                message.notify_type,
                message.body_format,
            )
            now = self.clock()
            if result.ok:
                await self.store.call(
                    self.store.mark_sent_many,
                    [i.id for i in message.items],
                    now,
                    channel=message.channel,
                    group_keys=message.group_keys,
                )
            else:
                failed_items.extend(Held(i, now, "its send failed") for i in message.items)
            for item in message.items:
                alert = item.alert
                bound = log.bind(
                    source=alert.source, job_id=alert.job_id, channel=alert.channel, rule=alert.rule
                )
                if result.ok:
                    self.metrics.alert(alert.channel, "sent")
                    sent += 1
                    bound.info(
                        "alert_sent",
                        title=alert.title,
                        attempts=item.attempts + 1,
                        grouped=len(message.items),
                    )
                    continue
                error = result.error or "delivery failed"
                elapsed = self.memory.attempted(item, now, started)
                decision = after_failure(item, elapsed, self.config.delivery, self.rng)
                if decision.delay is None:
                    await self.store.call(
                        self.store.mark_dead, item.id, now, error, elapsed=elapsed
                    )
                    self.metrics.alert(alert.channel, "dead")
                    dead += 1
                    bound.error("alert_dead_lettered", error=error, reason=decision.reason)
                    continue
                self.memory.retry_in(item.id, decision.delay)
                await self.store.call(
                    self.store.mark_failed,
                    item.id,
                    now,
                    error,
                    now + timedelta(seconds=decision.delay),
                    retry_delay=decision.delay,
                    elapsed=elapsed,
                )
                self.metrics.alert(alert.channel, "failed")
                failed += 1
                bound.warning("alert_send_failed", error=error, reason=decision.reason)
        return DeliveryOutcome(sent, failed, dead)
