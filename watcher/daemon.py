"""The imperative shell: poll each source, diff, route, commit, deliver — once or forever.

Every decision is delegated to `watcher.engine`; this module only moves data between the
API client, the store and the notifier, and owns the asyncio tasks and their timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import aiohttp
import structlog

from watcher.engine.alerts import Routed, route
from watcher.engine.delivery import after_failure, deliverable
from watcher.engine.diff import count_by_state
from watcher.engine.noise import Message, plan, silenced_by
from watcher.engine.tracker import Tracking, advance, health_step
from watcher.errors import ApiError, AuthError, StoreError, WatcherError
from watcher.http import Readiness, readiness, start_http
from watcher.metastudio.client import ListingRejected, MetaStudioClient, RetryPolicy
from watcher.metastudio.incremental import (
    Cursor,
    IncrementalPoller,
    find_misses,
    full_scan_reason,
    missing_after_partial_scan,
    overlay,
)
from watcher.metastudio.parse import novelties
from watcher.metrics import Metrics
from watcher.model import (
    Config,
    Event,
    Job,
    OutboxItem,
    OutboxStatus,
    Snapshot,
    SourceConfig,
)
from watcher.notify import Notifier
from watcher.sdnotify import SystemdNotifier
from watcher.store import Store

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PollOutcome:
    source: str
    ok: bool
    events: int = 0
    alerts: int = 0
    jobs: int = 0
    baseline: bool = False
    error: ApiError | None = None
    requests: int = 0
    # "full", or the incremental strategy used ("changed_since", "active_set").
    mode: str = "full"
    misses: int = 0


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    sent: int = 0
    failed: int = 0
    dead: int = 0


@dataclass(slots=True)
class _SourceState:
    """What the shell remembers about a source between cycles (not part of the snapshot)."""

    config: SourceConfig
    client: MetaStudioClient
    missing: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_ok: datetime | None = None
    cursor: Cursor = field(default_factory=Cursor)
    # The last committed snapshot's jobs, so an incremental cycle need not re-read them.
    jobs: dict[str, Job] | None = None


@dataclass(frozen=True, slots=True)
class _Listing:
    """What one cycle fetched: a full scan, or an increment to overlay on the stored jobs."""

    jobs: Mapping[str, Job]
    requests: int
    full: bool
    mode: str
    server_time: datetime | None = None
    count: int = 0
    gone: frozenset[str] = frozenset()  # lookups that answered 404


class Watcher:
    """One watcher over a config: `once()` for cron, `run(stop)` for the daemon."""

    def __init__(
        self,
        config: Config,
        store: Store,
        notifier: Notifier,
        session: aiohttp.ClientSession,
        *,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        retry: RetryPolicy | None = None,
        vanish_after: int = 3,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.notifier = notifier
        self.clock = clock
        self.rng = rng or random.Random()
        self.vanish_after = vanish_after
        self._sources = {
            s.name: _SourceState(
                s,
                MetaStudioClient(session, s, retry=retry or RetryPolicy(), clock=clock),
            )
            for s in config.sources
        }
        # What the store knows of each source's last good poll: a reloaded (new) Watcher
        # must not look stale to /readyz until its own first poll succeeds.
        for status in store.source_status():
            if status.name in self._sources:
                self._sources[status.name].last_ok = status.last_ok_at
        self._wake_delivery = asyncio.Event()
        self._trackings: dict[str, Tracking] = {}
        self._seen_novelties: set[str] = set()
        self.failure: str | None = None  # why run() stopped by itself, if it did
        # Noise control memory: recent messages per channel (rate limit), last message per
        # group (group_interval), and when held-back alerts may go next.
        self._recent_sends: dict[str, list[datetime]] = {}
        self._group_sent: dict[tuple[str, str], datetime] = {}
        self._held_until: datetime | None = None
        self.metrics = metrics or Metrics(process=False)
        self.metrics.add_sources(self._sources)
        self.metrics.add_channels(config.channels)

    # --- one cycle --------------------------------------------------------------------

    async def poll(self, name: str) -> PollOutcome:
        """Poll one source; commit snapshot, events and alerts in one transaction.

        A full scan runs at start-up and every `full_scan_every`; in between an incremental
        cycle fetches only what can have changed and overlays it on the stored jobs, so the
        engine still diffs a complete snapshot (see `watcher.metastudio.incremental`). A
        failed or inconsistent listing commits nothing, so it can produce no false alert and
        lose no true one: the next cycle starts again from the last committed state.
        """
        state = self._sources[name]
        started = time.monotonic()
        cycle_at = self.clock()
        previous = self._previous_jobs(state)
        deadline = self._cycle_deadline(state)
        try:
            listing = await asyncio.wait_for(self._list(state, previous, cycle_at), deadline)
        except TimeoutError:
            err = ApiError(
                f"the poll took longer than {deadline:.0f}s and was abandoned; nothing was "
                "committed, the next poll starts from the last complete scan",
                retryable=True,
            )
            self._poll_failed(state, err, time.monotonic() - started)
            return PollOutcome(name, False, error=err)
        except ApiError as err:
            self._poll_failed(state, err, time.monotonic() - started)
            return PollOutcome(name, False, error=err)
        now = self.clock()
        self._note_novelties(name, listing.jobs.values())
        tracking_before = self._tracking(name)
        if listing.full or previous is None:
            current: Mapping[str, Job] = listing.jobs
            changed = None
        else:
            current, changed = overlay(previous, listing.jobs)
        misses = (
            find_misses(previous, listing.jobs, state.cursor.covered_until)
            if listing.full and previous is not None
            else []
        )
        snapshot = Snapshot(name, now, current)
        step = advance(
            previous,
            tracking_before,
            snapshot,
            self.config.rules,
            first_run=self.config.first_run,
            vanish_after=self.vanish_after,
            expected_interval=state.config.poll_interval,
        )
        step_tracking = step.tracking
        if not listing.full and previous is not None:
            # Only complete scans may count a job as absent (see missing_after_partial_scan).
            step_tracking = replace(
                step_tracking,
                missing=missing_after_partial_scan(tracking_before.missing, listing.jobs.keys()),
            )
        health, tracking = health_step(
            step_tracking, name, ok=True, now=now, unhealthy_after=self._unhealthy_after(state)
        )
        events = step.events + ((health,) if health is not None else ())
        routed = self._route(events)
        # advance() builds a fresh dict: no need to copy 100k entries again.
        committed = step.jobs if isinstance(step.jobs, dict) else dict(step.jobs)
        inserted = self.store.commit_cycle(
            name,
            Snapshot(name, now, committed),
            events,
            routed.alerts,
            now=now,
            tracking=tracking.to_json(),
            previous=previous,
        )
        self._trackings[name] = tracking
        state.jobs = committed
        self._advance_cursor(state, listing, cycle_at)
        self.store.record_source_poll(name, True, now, None)
        bound = log.bind(source=name)
        if state.last_error is not None:
            bound.info("source_polled_again", previous_error=state.last_error)
        state.last_error = None
        state.last_ok = now
        for miss in misses:
            self.metrics.incremental_miss(name)
            bound.warning(
                "incremental_miss",
                job_id=miss.job_id,
                state=miss.state,
                previous_state=miss.previous_state,
                strategy=str(state.cursor.strategy),
            )
        for event in events:
            self.metrics.event(name, str(event.kind))
            bound.info(
                "event_detected",
                kind=str(event.kind),
                job_id=event.job.job_id if event.job else None,
                previous_state=event.previous_state,
                state=event.job.state if event.job else None,
                reason=event.reason,
            )
        self.metrics.poll_finished(name, True, time.monotonic() - started, now)
        self.metrics.jobs_by_state(name, count_by_state(snapshot.jobs.values()))
        bound.info(
            "poll_finished",
            mode=listing.mode,
            jobs=len(snapshot.jobs),
            fetched=len(listing.jobs),
            changed=changed,
            requests=listing.requests,
            events=len(events),
            alerts=inserted,
            baseline=previous is None,
            misses=len(misses),
        )
        if inserted:
            self._wake_delivery.set()
        return PollOutcome(
            name,
            True,
            len(events),
            inserted,
            len(snapshot.jobs),
            baseline=previous is None,
            requests=listing.requests,
            mode=listing.mode,
            misses=len(misses),
        )

    def _previous_jobs(self, state: _SourceState) -> dict[str, Job] | None:
        """The last committed jobs: kept from the last cycle, read from the store after a
        (re)start. The store stays the truth; the copy only saves re-reading it."""
        if state.jobs is None:
            state.jobs = self.store.load_jobs(state.config.name)
        return state.jobs

    async def _list(
        self, state: _SourceState, previous: Mapping[str, Job] | None, now: datetime
    ) -> _Listing:
        """A full scan when one is due (or the cheaper listing proved untrustworthy), else
        an incremental cycle."""
        reason = full_scan_reason(
            state.cursor, state.config, now=now, has_baseline=previous is not None
        )
        state.client.known = previous or {}
        if reason is None and previous is not None:
            try:
                inc = await IncrementalPoller(state.client, state.config, state.cursor).poll(
                    previous
                )
            except ListingRejected as rejected:
                reason = rejected.reason  # the fallback was logged: scan everything instead
            else:
                return _Listing(
                    inc.jobs,
                    inc.requests,
                    full=False,
                    mode=str(inc.strategy),
                    server_time=inc.watermark,
                    gone=inc.gone,
                )
        log.debug("full_scan_started", source=state.config.name, reason=reason)
        scan = await state.client.list_all_jobs()
        return _Listing(
            scan.jobs,
            scan.requests,
            full=True,
            mode="full",
            server_time=scan.server_time,
            count=scan.count,
        )

    @staticmethod
    def _advance_cursor(state: _SourceState, listing: _Listing, cycle_at: datetime) -> None:
        """After a commit only: a cycle that did not land must be listed again."""
        cursor = state.cursor
        server_time = listing.server_time or cycle_at
        if listing.full:
            cursor.full_scan_committed(now=cycle_at, server_time=server_time, count=listing.count)
        else:
            cursor.increment_committed(server_time, listing.gone)

    def _note_novelties(self, source: str, jobs: Iterable[Job]) -> None:
        """Unknown states and fields pass through untouched; say so once per new value."""
        for job in jobs:
            state, fields = novelties(job)
            if state is not None and state not in self._seen_novelties:
                self._seen_novelties.add(state)
                log.warning("unknown_state_seen", source=source, job_id=job.job_id, state=state)
            for name in fields:
                if name not in self._seen_novelties:
                    self._seen_novelties.add(name)
                    log.info("unknown_field_seen", source=source, job_id=job.job_id, field=name)

    def _tracking(self, name: str) -> Tracking:
        if name not in self._trackings:
            stored = self.store.load_tracking(name)
            self._trackings[name] = Tracking.from_json(stored) if stored else Tracking()
        return self._trackings[name]

    @staticmethod
    def _cycle_deadline(state: _SourceState) -> float:
        """However the API behaves, one poll ends: a hung cycle must not silence a source.
        (systemd's watchdog is fed by its own task, so a long but healthy scan never trips
        it; this bounds the unhealthy kind.)"""
        config = state.config
        return max(
            10 * config.request_timeout.total_seconds(), 3 * config.poll_interval.total_seconds()
        )

    def _unhealthy_after(self, state: _SourceState) -> timedelta:
        return state.config.poll_interval * 3

    def _route(self, events: Sequence[Event]) -> Routed:
        routed = route(events, self.config.rules)
        for problem in routed.problems:
            log.warning("template_failed_using_default", rule=problem.rule, error=problem.error)
        return routed

    def _poll_failed(self, state: _SourceState, err: ApiError, seconds: float) -> None:
        name = state.config.name
        now = self.clock()
        text = str(err)
        self.metrics.api_error(name, err.code or (str(err.status) if err.status else None))
        self.metrics.poll_finished(name, False, seconds, now)
        # Logged once per change of error, not once per poll: no log storm on a revoked key.
        if text != state.last_error:
            level = "error" if isinstance(err, AuthError) else "warning"
            getattr(log, level)(
                "poll_failed",
                source=name,
                error=text,
                code=err.code,
                status=err.status,
                request_id=err.request_id,
            )
        state.last_error = text
        event, tracking = health_step(
            self._tracking(name),
            name,
            ok=False,
            now=now,
            unhealthy_after=self._unhealthy_after(state),
            error=text,
        )
        events = (event,) if event is not None else ()
        routed = self._route(events)
        inserted = self.store.commit_events(
            name, events, routed.alerts, now=now, tracking=tracking.to_json()
        )
        self._trackings[name] = tracking
        self.store.record_source_poll(name, False, now, text)
        if event is not None:
            self.metrics.event(name, str(event.kind))
            log.error("source_unhealthy", source=name, reason=event.reason)
        if inserted:
            self._wake_delivery.set()

    async def deliver(self) -> DeliveryOutcome:
        """Send what may go now: silences, quiet hours, grouping and rate limits applied.

        Channels are served in parallel, each channel's messages in order. Nothing is
        dropped: held alerts stay queued and the delivery loop wakes when they may go.
        """
        now = self.clock()
        pending = self.store.list_outbox([OutboxStatus.PENDING])
        silences = self.store.list_silences(active_at=now) if pending else []
        unsilenced: list[OutboxItem] = []
        for item in pending:
            silence = silenced_by(item.alert, silences, now) if silences else None
            if silence is None:
                unsilenced.append(item)
                continue
            self.store.mark_silenced(item.id, silence.id, now)
            log.info(
                "alert_silenced",
                source=item.alert.source,
                job_id=item.alert.job_id,
                channel=item.alert.channel,
                rule=item.alert.rule,
                silence=silence.id,
            )
        for channel in list(self._recent_sends):
            self._recent_sends[channel] = [
                t for t in self._recent_sends[channel] if now - t < timedelta(minutes=1)
            ]
        decided = plan(
            deliverable(unsilenced, now),
            now,
            rules={r.name: r for r in self.config.rules},
            policies=self.config.channel_policies,
            recent_sends=self._recent_sends,
            group_sent=self._group_sent,
        )
        self._held_until = decided.next_wake
        by_channel: dict[str, list[Message]] = {}
        for message in decided.messages:
            by_channel.setdefault(message.channel, []).append(message)
        results = await asyncio.gather(
            *(self._deliver_channel(batch) for batch in by_channel.values())
        )
        self.metrics.outbox_depth(
            {str(k): v for k, v in self.store.outbox_counts().items()},
            held=len({h.item_id for h in decided.held}),
        )
        return DeliveryOutcome(
            sum(r.sent for r in results),
            sum(r.failed for r in results),
            sum(r.dead for r in results),
        )

    async def _deliver_channel(self, messages: list[Message]) -> DeliveryOutcome:
        sent = failed = dead = 0
        failed_lanes: set[str] = set()
        for message in messages:
            lanes = {f"{i.alert.source}|{i.alert.job_id}" for i in message.items if i.alert.job_id}
            if lanes & failed_lanes:
                continue  # keep per-job order: a later alert waits for the earlier one
            result = await self.notifier.send(
                message.channel,
                message.title,
                message.body,
                message.notify_type,
                message.body_format,
            )
            now = self.clock()
            if result.ok:
                self.store.mark_sent_many([i.id for i in message.items], now)
                self._recent_sends.setdefault(message.channel, []).append(now)
                for key in message.group_keys:
                    self._group_sent[(message.channel, key)] = now
            else:
                failed_lanes |= lanes
            for item in message.items:
                alert = item.alert
                bound = log.bind(
                    source=alert.source,
                    job_id=alert.job_id,
                    channel=alert.channel,
                    rule=alert.rule,
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
                decision = after_failure(item, now, self.config.delivery, self.rng)
                error = result.error or "delivery failed"
                if decision.dead:
                    self.store.mark_dead(item.id, now, error)
                    self.metrics.alert(alert.channel, "dead")
                    dead += 1
                    bound.error("alert_dead_lettered", error=error, reason=decision.reason)
                else:
                    assert decision.retry_at is not None
                    self.store.mark_failed(item.id, now, error, decision.retry_at)
                    self.metrics.alert(alert.channel, "failed")
                    failed += 1
                    bound.warning("alert_send_failed", error=error, reason=decision.reason)
        return DeliveryOutcome(sent, failed, dead)

    async def once(self) -> list[PollOutcome]:
        """Exactly one poll of every source, then one delivery pass (for cron and scripts)."""
        outcomes = await asyncio.gather(*(self.poll(name) for name in self._sources))
        await self.deliver()
        return list(outcomes)

    # --- forever ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll each source on its own interval and deliver continuously until `stop` is set."""
        tasks = [
            asyncio.create_task(self._source_loop(name, stop), name=f"poll:{name}")
            for name in self._sources
        ]
        tasks.append(asyncio.create_task(self._delivery_loop(stop), name="deliver"))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _source_loop(self, name: str, stop: asyncio.Event) -> None:
        interval = self._sources[name].config.poll_interval.total_seconds()
        while not stop.is_set():
            try:
                await self.poll(name)
            except StoreError as err:
                log.error("store_failed", source=name, error=str(err))
                self.failure = str(err)
                stop.set()
                return
            except Exception:
                # A bug must not silence every later poll of this source: log it and go on.
                log.exception("poll_crashed", source=name)
            # A little jitter so that many watchers (or sources) do not poll in lockstep.
            delay = interval * (1 + self.rng.uniform(-0.05, 0.05))
            await _wait(stop, delay)

    async def _delivery_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake_delivery.clear()
            try:
                await self.deliver()
            except StoreError as err:
                log.error("store_failed", error=str(err))
                self.failure = str(err)
                stop.set()
                return
            except Exception:
                log.exception("delivery_crashed")
            await _wait_any(stop, self._wake_delivery, self._next_delivery_delay())

    def last_ok(self) -> dict[str, datetime | None]:
        return {name: state.last_ok for name, state in self._sources.items()}

    def status_line(self) -> str:
        """One line for systemd's STATUS= and `status`: what is watched, what is stuck."""
        down = [n for n, s in self._sources.items() if s.last_error is not None]
        counts = self.store.outbox_counts()
        text = (
            f"{len(self._sources)} source(s), {counts.get(OutboxStatus.PENDING, 0)} alert(s) "
            f"pending, {counts.get(OutboxStatus.DEAD, 0)} dead"
        )
        return text + (f"; failing: {', '.join(down)}" if down else "")

    def _next_delivery_delay(self) -> float:
        pending = self.store.list_outbox([OutboxStatus.PENDING])
        times = [i.next_attempt_at for i in pending if i.next_attempt_at > self.clock()]
        if self._held_until is not None:
            times.append(self._held_until)
        if not times:
            # Idle: look again soon, so alerts requeued by `outbox retry` go out promptly.
            return 5.0
        return max(0.2, min(60.0, (min(times) - self.clock()).total_seconds()))


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0))


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def session_timeout(config: Config) -> aiohttp.ClientTimeout:
    """No request may hang forever (aiohttp's default total is 300 s)."""
    longest = max((s.request_timeout for s in config.sources), default=timedelta(seconds=30))
    return aiohttp.ClientTimeout(total=longest.total_seconds())


ConfigLoader = Callable[[str], Config]


async def serve(
    config_path: str,
    config: Config,
    store: Store,
    *,
    load_config: ConfigLoader,
    notifier_factory: Callable[[Config], Notifier],
    sd: SystemdNotifier | None = None,
) -> int:
    """The daemon's life: signals, sd_notify, the HTTP endpoint, reloads, a clean stop.

    READY=1 is sent once start-up succeeded (config valid, store open, endpoint listening),
    not after the first poll: a cloud outage at boot must not make systemd kill a watcher
    whose job is to report exactly that. SIGHUP reloads; an invalid new config is logged and
    the old one keeps running.
    """
    sd = sd or SystemdNotifier.from_env()
    loop = asyncio.get_running_loop()
    shutdown, reload = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, shutdown.set)
    loop.add_signal_handler(signal.SIGINT, shutdown.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    metrics = Metrics()
    current: list[Watcher] = []

    def ready() -> Readiness:
        if not current:
            return Readiness(False, ())
        watcher = current[0]
        intervals = {s.name: s.poll_interval for s in watcher.config.sources}
        return readiness(watcher.last_ok(), intervals, watcher.clock())

    http_runner = None
    if config.http_listen:
        http_runner = await start_http(config.http_listen, metrics, ready)
    exit_code = 0
    try:
        async with aiohttp.ClientSession(timeout=session_timeout(config)) as session:
            notifier = notifier_factory(config)
            watcher = Watcher(config, store, notifier, session, metrics=metrics)
            current[:] = [watcher]
            stop_watcher = asyncio.Event()
            task = asyncio.create_task(watcher.run(stop_watcher), name="watcher")
            running = [task]
            watchdog = asyncio.create_task(
                _watchdog(sd, current, running, shutdown), name="watchdog"
            )
            sd.ready()
            log.info("watcher_started", sources=[s.name for s in config.sources])
            while True:
                waiters = [asyncio.ensure_future(e.wait()) for e in (shutdown, reload)]
                await asyncio.wait([*waiters, task], return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                if shutdown.is_set() or task.done():
                    break
                reload.clear()
                sd.reloading()
                try:
                    new_config = load_config(config_path)
                    new_notifier = notifier_factory(new_config)
                except WatcherError as err:
                    log.error("reload_rejected", error=err.message, keeping="the running config")
                    sd.ready()
                    continue
                stop_watcher.set()
                await task
                notifier.close()
                config, notifier = new_config, new_notifier
                watcher = Watcher(config, store, notifier, session, metrics=metrics)
                current[:] = [watcher]
                stop_watcher = asyncio.Event()
                task = asyncio.create_task(watcher.run(stop_watcher), name="watcher")
                running[:] = [task]
                sd.ready()
                log.info("config_reloaded", sources=[s.name for s in config.sources])
            sd.stopping()
            stop_watcher.set()
            await task
            watchdog.cancel()
            notifier.close()
            if watcher.failure is not None:
                exit_code = 1
    finally:
        if http_runner is not None:
            await http_runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        sd.close()
    log.info("watcher_stopped", exit_code=exit_code)
    return exit_code


async def _watchdog(
    sd: SystemdNotifier,
    current: list[Watcher],
    running: list[asyncio.Task[None]],
    stop: asyncio.Event,
) -> None:
    """WATCHDOG=1 while the event loop turns and the watcher runs; STATUS= alongside."""
    interval = sd.watchdog_interval() or 30.0
    while not stop.is_set():
        if current and running and not running[0].done():
            sd.watchdog()
            with contextlib.suppress(StoreError):
                sd.status(current[0].status_line())
        await _wait(stop, interval)
