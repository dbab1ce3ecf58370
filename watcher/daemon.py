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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import structlog

from watcher.app import App, Root
from watcher.dispatch import DeliveryMemory, DeliveryOutcome, Dispatcher
from watcher.engine.alerts import Routed, route
from watcher.engine.cursor import Cursor, Strategy, cursor_scope
from watcher.engine.cycle import (
    Decision,
    Fetched,
    decide,
    explained,
    full_scan_bound,
    full_scan_reason,
    reverifies,
    unhealthy_after,
)
from watcher.engine.diff import count_by_state
from watcher.engine.rules import matching_rules
from watcher.engine.tracker import BatchMemory, Tracking, batch_changes, health_step
from watcher.engine.why import detail_resource, failure_key, unavailable
from watcher.errorcodes import with_explanation
from watcher.errors import ApiError, AuthError, StoreError, WatcherError
from watcher.jobsets import Listed, Overlay, StoredJobs
from watcher.metastudio.client import ListingRejected, MetaStudioClient, RetryPolicy, ScanProgress
from watcher.metastudio.details import fetch_why
from watcher.metastudio.incremental import IncrementalPoller, rfc3339
from watcher.metastudio.parse import novelties
from watcher.model import (
    Alert,
    Config,
    Event,
    Job,
    OutboxStatus,
    SourceConfig,
)
from watcher.notify import Notifier
from watcher.readiness import Readiness, readiness
from watcher.recorder import Recorder
from watcher.sdnotify import SystemdNotifier
from watcher.store import Store
from watcher.web.page import StatusPage, install

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
# How often a scan in flight reports its progress (metrics, /readyz, the store for `status`).
_PROGRESS_REPORT_EVERY = 2.0
T = TypeVar("T")


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker thread. A 1M-job baseline's engine pass and commit took 19 s
    on the event loop, and /healthz, /readyz, /metrics, delivery and every other source's
    poll stood still all that time (long enough for a liveness probe with a short failure
    budget to restart the sidecar, whose next baseline starts over). A thread cannot be
    stopped: a cancelled poll leaves it to finish, which is safe because each step is whole
    (a transaction, a pure decision) and a cancelled Watcher is retired and its memory
    dropped (a reload reads the store).
    """
    return await asyncio.to_thread(fn, *args)


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


@dataclass(slots=True)
class _SourceState:
    """What the shell remembers about a source between cycles (not part of the snapshot)."""

    config: SourceConfig
    client: MetaStudioClient
    last_error: str | None = None
    last_ok: datetime | None = None
    cursor: Cursor = field(default_factory=Cursor)
    # The cursor is read from the store on the first poll (so `once` continues from it).
    cursor_loaded: bool = False
    # The last committed snapshot's jobs, so an incremental cycle need not re-read them.
    jobs: Mapping[str, Job] | None = None


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
        metrics: Recorder | None = None,
        memory: DeliveryMemory | None = None,
        monotonic: Callable[[], float] | None = None,
        stall_limit: float | None = None,
    ) -> None:
        self.config = config
        self.stall_limit = stall_limit  # None: from each source's timeouts (_cycle_deadline)
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
        # The batch memory each source last wrote in this process: the next write is what
        # changed since (the first one writes all of it).
        self._saved_batches: dict[str, Mapping[str, BatchMemory]] = {}
        self._seen_novelties: set[str] = set()
        self.failure: str | None = None  # why run() stopped by itself, if it did
        if metrics is None:  # a Watcher of its own (tests): metrics to read, none served
            from watcher.metrics import Metrics

            metrics = Metrics(process=False)
        self.metrics: Recorder = metrics
        self.metrics.add_sources(self._sources)
        self.metrics.add_channels(config.channels)
        # Delivery: rate limits and group intervals come from the store's send log; retry
        # times from `memory`, which a reload hands on to the next Watcher.
        self._dispatcher = Dispatcher(
            config,
            store,
            notifier,
            clock=clock,
            rng=self.rng,
            metrics=self.metrics,
            memory=memory or DeliveryMemory(monotonic or time.monotonic),
        )
        self._stopping: asyncio.Event | None = None

    # --- one cycle --------------------------------------------------------------------

    async def poll(self, name: str) -> PollOutcome:
        """Poll one source; commit snapshot, events and alerts in one transaction.

        Fetch, decide, commit, report: a full scan runs at start-up and every
        `full_scan_every`, in between an incremental cycle fetches only what can have
        changed; what that means for the snapshot, the events and the next cursor is
        decided by `watcher.engine.cycle`. A failed or inconsistent listing commits
        nothing, so it can produce no false alert and lose no true one: the next cycle
        starts again from the last committed state.
        """
        state = self._sources[name]
        started = time.monotonic()
        cycle_at = self.clock()
        await self._load_cursor(state)
        # What the cycle reads, decides and writes in bulk runs in a worker thread (see
        # `_off_loop`); the fetch is the loop's own work.
        previous = state.jobs
        if previous is None:
            previous = await _off_loop(self._previous_jobs, state)
        fetched = await self._fetch(state, previous, cycle_at)
        if isinstance(fetched, ApiError):
            await self._poll_failed(state, fetched, time.monotonic() - started)
            return PollOutcome(name, False, error=fetched)
        tracking = await self._tracking(name)
        decision = await _off_loop(
            self._decide, state, previous, tracking, fetched, cycle_at, self.clock()
        )
        # Why a job failed takes a detail call (I/O, bounded by enrich_timeout): the shell
        # makes it, the core routes the explained events again.
        events = await self._explain_failures(state, decision.events)
        if events is not decision.events:
            decision = explained(decision, events, self.config)
        inserted = await _off_loop(self._commit, state, decision, previous)
        self._report(state, decision, fetched, inserted, time.monotonic() - started)
        return PollOutcome(
            name,
            True,
            len(decision.events),
            inserted,
            len(decision.observed.jobs),
            baseline=decision.baseline,
            requests=fetched.requests,
            mode=fetched.mode,
            misses=len(decision.misses),
        )

    def _decide(
        self,
        state: _SourceState,
        previous: Mapping[str, Job] | None,
        tracking: Tracking,
        fetched: Fetched,
        cycle_at: datetime,
        now: datetime,
    ) -> Decision:
        """What the cycle means (the pure core's decision), after a word on anything new the
        API sent; in a worker thread (a baseline's is every job, a million of each)."""
        # Only what was parsed: a job recognised by its digest was looked at when it changed.
        listed = fetched.jobs
        self._note_novelties(
            state.config.name,
            listed.changed.values() if isinstance(listed, Listed) else listed.values(),
        )
        return decide(
            state.config,
            self.config,
            previous,
            tracking,
            fetched,
            state.cursor,
            cycle_at=cycle_at,
            now=now,
            vanish_after=self.vanish_after,
        )

    async def _fetch(
        self, state: _SourceState, previous: Mapping[str, Job] | None, cycle_at: datetime
    ) -> Fetched | ApiError:
        """This cycle's listing, or why there is none (a poll that stood still is one)."""
        stall = self._cycle_deadline(state)
        progress = state.client.begin_cycle()
        requests_before = state.client.requests_made
        try:
            fetched = await self._while_progressing(
                state, self._list(state, previous, cycle_at), progress, stall, previous is None
            )
        except TimeoutError:
            total = f" of {progress.pages_total}" if progress.pages_total else ""
            return ApiError(
                f"the poll made no progress for {stall:g}s ({progress.pages_done}{total} "
                "pages fetched) and was abandoned; nothing was committed, the next poll "
                "starts from the last complete scan",
                retryable=True,
            )
        except ApiError as err:
            return err
        finally:
            self.metrics.scan_finished(state.config.name)
        return replace(fetched, requests=state.client.requests_made - requests_before)

    def _commit(
        self,
        state: _SourceState,
        decision: Decision,
        previous: Mapping[str, Job] | None,
    ) -> int:
        """Store the decision (one transaction, then the cursor) and take it as the shell's
        memory; returns how many alerts were queued. Runs in a worker thread: it holds the
        store for all its writes, so nothing (a reload closing the store, another source's
        commit) comes between them, and only this source's own poll, which awaits it, reads
        the memory it sets."""
        with self.store.held():
            return self._commit_held(state, decision, previous)

    def _commit_held(
        self,
        state: _SourceState,
        decision: Decision,
        previous: Mapping[str, Job] | None,
    ) -> int:
        name = state.config.name
        now = decision.committed.taken_at
        committed = decision.committed.jobs
        # The stored jobs plus this cycle's changes: write just those, then lay them on the
        # compact copy we hold. Anything else (a baseline, a full pass) is written by
        # comparison and read back compact on the next cycle.
        stacked = (
            isinstance(previous, StoredJobs)
            and isinstance(committed, Overlay)
            and committed.over(previous)
        )
        writes = decision.writes if stacked else None
        batches = batch_changes(self._saved_batches.get(name), decision.tracking.batches)
        inserted = self.store.commit_cycle(
            name,
            decision.committed,
            decision.events,
            decision.alerts,
            now=now,
            tracking=decision.tracking.to_json(batches=False),
            previous=previous,
            writes=writes,
            batches=batches,
        )
        self._trackings[name] = decision.tracking
        self._saved_batches[name] = decision.tracking.batches
        if writes is not None and isinstance(previous, StoredJobs):
            previous.apply(writes[0], writes[1], committed)
            state.jobs = previous
        else:
            # Read back compact on the next cycle (a `once` ends first and never pays it).
            state.jobs = None
            if isinstance(committed, dict):
                # A baseline or a full pass committed a full `Job` for every job, and the
                # engine's index refers to them: let them all go now (the next cycle builds
                # its index from the rows, as after a restart). Making the rows from these
                # instead held both at once: a 1M-job daemon peaked at 800 MB against the
                # baseline's own 645 MB.
                self._trackings[name] = replace(decision.tracking, index=None)
        if decision.cursor.sort_ignored != state.cursor.sort_ignored:
            # Once per state file (the cursor is stored): a cron `once` does not repeat it.
            log.info(
                "sort_not_honoured" if decision.cursor.sort_ignored else "sort_honoured",
                source=name,
                note="full scans rely on the duplicate, gap and count checks to see pages shift"
                if decision.cursor.sort_ignored
                else "full scans are listed oldest first, as asked",
            )
        state.cursor = decision.cursor
        self.store.save_cursor(
            name, state.cursor.to_json(cursor_scope(state.config)), decision.strategy
        )
        self.store.record_source_poll(name, True, now, None)
        if state.last_error is not None:
            log.info("source_polled_again", source=name, previous_error=state.last_error)
        state.last_error = None
        state.last_ok = now
        return inserted

    def _report(
        self,
        state: _SourceState,
        decision: Decision,
        fetched: Fetched,
        inserted: int,
        seconds: float,
    ) -> None:
        """Logs and metrics of a committed cycle; wakes delivery when alerts were queued."""
        name = state.config.name
        now = decision.committed.taken_at
        bound = log.bind(source=name)
        for problem in decision.problems:
            log.warning("template_failed_using_default", rule=problem.rule, error=problem.error)
        for miss in decision.misses:
            self.metrics.incremental_miss(name)
            bound.warning(
                "incremental_miss",
                job_id=miss.job_id,
                state=miss.state,
                previous_state=miss.previous_state,
                strategy=decision.strategy,
            )
        for event in decision.events:
            self.metrics.event(name, str(event.kind))
            bound.info(
                "event_detected",
                kind=str(event.kind),
                job_id=event.job.job_id if event.job else None,
                previous_state=event.previous_state,
                state=event.job.state if event.job else None,
                reason=event.reason,
            )
        self.metrics.poll_finished(name, True, seconds, now)
        counts = decision.counts
        if counts is None:
            counts = count_by_state(decision.observed.jobs.values())
        self.metrics.jobs_by_state(name, counts)
        bound.info(
            "poll_finished",
            mode=fetched.mode,
            jobs=len(decision.observed.jobs),
            fetched=decision.fetched,
            changed=decision.changed,
            requests=fetched.requests,
            events=len(decision.events),
            alerts=inserted,
            baseline=decision.baseline,
            misses=len(decision.misses),
        )
        if inserted:
            self._wake_delivery.set()

    def _previous_jobs(self, state: _SourceState) -> Mapping[str, Job] | None:
        """The last committed jobs: kept from the last cycle, read from the store after a
        (re)start. The store stays the truth; the copy only saves re-reading it."""
        if state.jobs is None:
            state.jobs = self.store.load_stored(state.config.name)
        return state.jobs

    async def _list(
        self, state: _SourceState, previous: Mapping[str, Job] | None, now: datetime
    ) -> Fetched:
        """A full scan when one is due (or the cheaper listing proved untrustworthy), else
        an incremental cycle."""
        reason = full_scan_reason(
            state.cursor, state.config, now=now, has_baseline=previous is not None
        )
        reverify = reverifies(state.cursor, state.config, now=now)
        if reason is None and previous is not None:
            name = state.config.name

            def demoted(strategy: Strategy, why: str, cursor: Cursor) -> None:
                state.cursor = cursor  # demotions hold even if this cycle then fails
                self.metrics.strategy_demoted(name, str(strategy))

            poller = IncrementalPoller(
                state.client, state.config, state.cursor, now=now, on_demote=demoted
            )
            try:
                inc = await poller.poll(previous)
            except ListingRejected as rejected:
                reason = rejected.reason  # the demotions were logged: scan everything instead
            else:
                return Fetched(
                    inc.jobs,
                    full=False,
                    mode=str(inc.strategy),
                    requests=inc.requests,
                    server_time=inc.watermark,
                    gone=inc.gone,
                )
        log.debug("full_scan_started", source=state.config.name, reason=reason)
        if state.cursor.server_offset is None:
            # Once per state file: where the API's clock is, for the bound below.
            offset = await state.client.server_offset()
            state.cursor = replace(state.cursor, server_offset=offset)
        bound = full_scan_bound(state.config, now, state.cursor.server_offset or 0.0)
        params = [("create_until", rfc3339(bound))] if bound is not None else []
        scan = await state.client.list_jobs(params, known=previous)
        return Fetched(
            scan.jobs,
            full=True,
            mode="full",
            requests=scan.requests,
            server_time=scan.server_time,
            count=scan.count,
            reverify=reverify,
            created_until=bound,
            unsorted=scan.unsorted,
        )

    async def _load_cursor(self, state: _SourceState) -> None:
        """The cursor the last committed cycle saved, once per process (cron `once` too)."""
        if state.cursor_loaded:
            return
        stored = await self.store.call(self.store.load_cursor, state.config.name)
        state.cursor_loaded = True
        state.cursor = Cursor.from_json(stored, cursor_scope(state.config))

    async def _while_progressing(
        self,
        state: _SourceState,
        work: Awaitable[Fetched],
        progress: ScanProgress,
        stall: float,
        baseline: bool,
    ) -> Fetched:
        """Await the cycle's listing for as long as pages keep arriving; TimeoutError once
        none has for `stall` seconds. A 1M-job baseline at 5 requests/s takes over half an
        hour and must never be abandoned for its length, only for standing still."""
        name = state.config.name
        task = asyncio.ensure_future(work)
        reported = -1
        try:
            while True:
                idle = state.client.idle_for()
                wait = min(max(0.0, stall - idle), _PROGRESS_REPORT_EVERY)
                done, _ = await asyncio.wait({task}, timeout=wait)
                if done:
                    return task.result()
                if state.client.idle_for() >= stall:
                    raise TimeoutError
                if progress.pages_total and progress.pages_done != reported:
                    reported = progress.pages_done
                    self.metrics.scan_progress(
                        name, progress.pages_done, progress.pages_total, baseline=baseline
                    )
                    await self.store.call(
                        self.store.save_scan_progress,
                        name,
                        progress.pages_done,
                        progress.pages_total,
                        baseline=baseline,
                        now=self.clock(),
                    )
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

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

    async def _tracking(self, name: str) -> Tracking:
        if name not in self._trackings:
            stored = await self.store.call(self.store.load_tracking, name)
            self._trackings[name] = Tracking.from_json(stored) if stored else Tracking()
        return self._trackings[name]

    def _cycle_deadline(self, state: _SourceState) -> float:
        """How long a poll may go without progress (a page or lookup answered) before it is
        abandoned: a hung cycle must not silence a source, a slow one that moves is fine.
        (systemd's watchdog is fed by its own task, so a long but healthy scan never trips
        it; this bounds the unhealthy kind.)"""
        if self.stall_limit is not None:
            return self.stall_limit
        config = state.config
        return max(
            10 * config.request_timeout.total_seconds(), 3 * config.poll_interval.total_seconds()
        )

    def _unhealthy_after(self, state: _SourceState) -> timedelta:
        return unhealthy_after(state.config)

    def _route(self, events: Sequence[Event]) -> Routed:
        # The config path lets a grouped message name the exact `alerts -c …` command.
        routed = route(events, self.config.rules, config_path=self.config.path)
        for problem in routed.problems:
            log.warning("template_failed_using_default", rule=problem.rule, error=problem.error)
        return routed

    async def _explain_failures(
        self, state: _SourceState, events: tuple[Event, ...]
    ) -> tuple[Event, ...]:
        """Add `why` to failures some rule will send: the job's review result or operation
        log, asked once per failure (kept in the store, so a restart does not ask again) and
        given at most the source's `enrich_timeout`: a slow, failing or missing detail never
        delays the alert longer, nor drops it; the alert then says the detail is unavailable.
        """
        wanted: dict[str, tuple[str, str]] = {}
        for event in events:
            resource = detail_resource(event)
            if resource is not None and event.job is not None and self._routed_anywhere(event):
                wanted[failure_key(event.job)] = (event.job.job_id, resource)
        if not wanted:
            return events
        name = state.config.name
        found: dict[str, dict[str, Any]] = {}
        for key in wanted:
            cached = await self.store.call(self.store.failure_detail, name, key)
            if cached is not None:
                found[key] = cached
        asks = {
            key: asyncio.ensure_future(fetch_why(state.client, job_id, resource))
            for key, (job_id, resource) in wanted.items()
            if key not in found
        }
        limit = state.config.enrich_timeout.total_seconds()
        if asks:
            _, late = await asyncio.wait(asks.values(), timeout=limit)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        now = self.clock()
        for key, task in asks.items():
            job_id, resource = wanted[key]
            error = None if task.cancelled() else task.exception()
            if task.cancelled():
                found[key] = unavailable(resource, f"no answer within {limit:g}s")
            elif error is not None:
                problem = error.message if isinstance(error, WatcherError) else type(error).__name__
                found[key] = unavailable(resource, problem)
            else:
                found[key] = task.result()
                await self.store.call(self.store.save_failure_detail, name, key, found[key], now)
                continue
            log.warning(
                "failure_detail_unavailable",
                source=name,
                job_id=job_id,
                resource=resource,
                problem=found[key]["problem"],
            )
        return tuple(
            replace(e, details={**e.details, "why": found[failure_key(e.job)]})
            if e.job is not None and failure_key(e.job) in found and detail_resource(e)
            else e
            for e in events
        )

    def _routed_anywhere(self, event: Event) -> bool:
        return any(rule.notify for rule in matching_rules(self.config.rules, event))

    async def _poll_failed(self, state: _SourceState, err: ApiError, seconds: float) -> None:
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
            await self._tracking(name),
            name,
            ok=False,
            now=now,
            unhealthy_after=self._unhealthy_after(state),
            error=with_explanation(text, err.code),  # what a documented code means
            failed_at=now - timedelta(seconds=seconds),  # when this failing poll began
        )
        events = (event,) if event is not None else ()
        routed = self._route(events)
        inserted = await self.store.call(
            self._commit_failed, name, events, routed.alerts, now, tracking, text
        )
        if event is not None:
            self.metrics.event(name, str(event.kind))
            log.error("source_unhealthy", source=name, reason=event.reason)
        if inserted:
            self._wake_delivery.set()

    def _commit_failed(
        self,
        name: str,
        events: tuple[Event, ...],
        alerts: Sequence[Alert],
        now: datetime,
        tracking: Tracking,
        error: str,
    ) -> int:
        """A failed poll's record: its health event and alerts (one transaction), then the
        poll; held together, as a cycle's commit is."""
        with self.store.held():
            inserted = self.store.commit_events(
                name,
                events,
                alerts,
                now=now,
                tracking=tracking.to_json(batches=False),
                batches=batch_changes(self._saved_batches.get(name), tracking.batches),
            )
            self._trackings[name] = tracking
            self._saved_batches[name] = tracking.batches
            self.store.record_source_poll(name, False, now, error)
        return inserted

    async def _poll_crashed(self, name: str, err: Exception, seconds: float) -> bool:
        """A poll that crashed is a failed poll: it counts towards `source_unhealthy`, so a bug
        cannot blind the watcher silently. The alert names the log entry, not the exception
        text (which may carry anything)."""
        failure = ApiError(
            f"the poll crashed inside the watcher ({type(err).__name__}); see the "
            "poll_crashed entry in the log",
            retryable=True,
        )
        try:
            await self._poll_failed(self._sources[name], failure, seconds)
        except StoreError as store_err:
            log.error("store_failed", source=name, error=str(store_err))
            self.failure = str(store_err)
            return False  # the store is gone: stop, as a failing poll would
        except Exception:  # recording the crash must not crash the loop as well
            log.exception("poll_crash_not_recorded", source=name)
        return True

    async def deliver(self) -> DeliveryOutcome:
        """One delivery pass (see `watcher.dispatch`): silences, per-job order, quiet hours,
        grouping and rate limits applied; nothing dropped, held alerts stay queued."""
        return await self._dispatcher.deliver(self._stopping)

    async def once(self) -> list[PollOutcome]:
        """Exactly one poll of every source, then one delivery pass (for cron and scripts)."""
        outcomes = await asyncio.gather(*(self.poll(name) for name in self._sources))
        await self.deliver()
        return list(outcomes)

    # --- forever ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll each source on its own interval and deliver continuously until `stop` is set.

        On stop, polls are cancelled (a cycle commits all or nothing), but sends in flight
        finish and are recorded first, within the notifier's guard timeout: a cancelled send
        would still arrive (apprise's thread completes it) yet stay pending, and go again.
        """
        self._stopping = stop
        tasks = [
            asyncio.create_task(self._source_loop(name, stop), name=f"poll:{name}")
            for name in self._sources
        ]
        tasks.append(asyncio.create_task(self._retention_loop(stop), name="retention"))
        delivery = asyncio.create_task(self._delivery_loop(stop), name="deliver")
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            drain = self.notifier.guard_timeout + 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(delivery), drain)
            if not delivery.done():
                log.warning("delivery_abandoned", waited_seconds=drain)
                delivery.cancel()
            await asyncio.gather(delivery, return_exceptions=True)

    async def _source_loop(self, name: str, stop: asyncio.Event) -> None:
        interval = self._sources[name].config.poll_interval.total_seconds()
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.poll(name)
            except StoreError as err:
                log.error("store_failed", source=name, error=str(err))
                self.failure = str(err)
                stop.set()
                return
            except Exception as err:
                # A bug must not silence every later poll of this source: log it and go on.
                log.exception("poll_crashed", source=name)
                if not await self._poll_crashed(name, err, time.monotonic() - started):
                    stop.set()
                    return
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
            await _wait_any(stop, self._wake_delivery, self._dispatcher.memory.next_delay())

    async def _retention_loop(self, stop: asyncio.Event) -> None:
        """Forget history older than `retention`, a small batch at a time, so the state file
        stays bounded however long the watcher runs."""
        while not stop.is_set():
            try:
                removed = await prune_history(self.store, self.clock() - self.config.retention)
            except StoreError as err:
                log.error("store_failed", error=str(err))
                self.failure = str(err)
                stop.set()
                return
            if removed:
                log.info("history_pruned", rows=removed, retention=str(self.config.retention))
            await _wait(stop, PRUNE_EVERY)

    def last_ok(self) -> dict[str, datetime | None]:
        return {name: state.last_ok for name, state in self._sources.items()}

    async def status_line(self) -> str:
        """One line for systemd's STATUS= and `status`: what is watched, what is stuck."""
        down = [n for n, s in self._sources.items() if s.last_error is not None]
        counts = await self.store.call(self.store.outbox_counts)
        text = (
            f"{len(self._sources)} source(s), {counts.get(OutboxStatus.PENDING, 0)} alert(s) "
            f"pending, {counts.get(OutboxStatus.DEAD, 0)} dead"
        )
        return text + (f"; failing: {', '.join(down)}" if down else "")


PRUNE_EVERY = 600.0  # seconds between retention passes
PRUNE_BATCH = 500  # rows per table per transaction


async def prune_history(store: Store, before: datetime, *, batch: int = PRUNE_BATCH) -> int:
    """Prune in small transactions, yielding to the loop between them; return rows removed."""
    total = 0
    while True:
        removed = await store.call(store.prune, before, batch=batch)
        total += removed
        if removed == 0:
            return total
        await asyncio.sleep(0)


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
    root: Root,
    load_config: ConfigLoader,
    sd: SystemdNotifier | None = None,
) -> int:
    """The daemon's life: signals, sd_notify, the HTTP endpoint, reloads, a clean stop.

    READY=1 is sent once start-up succeeded (config valid, store open, endpoint listening),
    not after the first poll: a cloud outage at boot must not make systemd kill a watcher
    whose job is to report exactly that. SIGHUP reloads; an invalid new config is logged and
    the old one keeps running. `root` wires the app, at start and on every reload.
    """
    sd = sd or SystemdNotifier.from_env()
    loop = asyncio.get_running_loop()
    shutdown, reload = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, shutdown.set)
    loop.add_signal_handler(signal.SIGINT, shutdown.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    current: list[Watcher] = []
    lost: list[str] = []  # why the state file is no longer ours, once that happened

    def ready() -> Readiness:
        if not current:
            return Readiness(False, ())
        watcher = current[0]
        intervals = {s.name: s.poll_interval for s in watcher.config.sources}
        verdict = readiness(watcher.last_ok(), intervals, watcher.clock())
        if lost:
            return Readiness(False, verdict.stale, lost[0])
        return verdict

    http_runner = None
    exit_code = 0
    retire: list[App] = []  # the app whose notifier is closed however we leave
    try:
        async with root.session(config) as session:
            # Metrics and the retry memory (on the monotonic clock) live as long as the daemon:
            # each reload's app is rebuilt from this one and hands them on.
            from watcher.metrics import Metrics  # `once` serves none: it never imports them

            metrics = Metrics(process=True)
            app = root.build_app(config, store, session, metrics=metrics)
            retire[:] = [app]
            if config.http_listen:
                # Here, not at import: `once` never serves, and aiohttp.web costs ~35 ms.
                from watcher.http import start_http

                page = StatusPage(lambda: current[0].config if current else config)
                http_runner = await start_http(
                    config.http_listen, metrics, ready, lambda web: install(web, page)
                )
            watcher = app.watcher
            current[:] = [watcher]
            stop_watcher = asyncio.Event()
            task = asyncio.create_task(watcher.run(stop_watcher), name="watcher")
            running = [task]
            watchdog = asyncio.create_task(
                _watchdog(sd, current, running, shutdown), name="watchdog"
            )
            guard = asyncio.create_task(_guard_state(store, lost, shutdown), name="state-guard")
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
                    new_app = app.rebuild(load_config(config_path))
                except WatcherError as err:
                    log.error("reload_rejected", error=err.message, keeping="the running config")
                    sd.ready()
                    continue
                # The old configuration retires only once its sends in flight are recorded
                # (Watcher.run waits for them): a reload neither loses nor repeats a send.
                stop_watcher.set()
                await task
                app.close()
                app = new_app
                retire[:] = [app]
                config, watcher = app.config, app.watcher
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
            guard.cancel()
            app.close()
            if watcher.failure is not None:
                exit_code = 1
    finally:
        for left in retire:
            left.close()  # closing twice is harmless
        if http_runner is not None:
            await http_runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        sd.close()
    log.info("watcher_stopped", exit_code=exit_code)
    return exit_code


STATE_CHECK_EVERY = 2.0  # seconds between looks at the state file


async def _guard_state(store: Store, lost: list[str], stop: asyncio.Event) -> None:
    """Notice a state file deleted or replaced under the daemon: logged, and /readyz says so.

    The daemon keeps its lock (see `watcher.statelock`), so no second daemon starts on the
    path meanwhile; an operator restarts it once the file is restored or given up.
    """
    while not stop.is_set():
        problem = store.file_problem()
        if problem is not None and not lost:
            lost.append(problem)
            log.error("state_file_lost", error=problem, action="restart the watcher")
        await _wait(stop, STATE_CHECK_EVERY)


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
                sd.status(await current[0].status_line())
        await _wait(stop, interval)
