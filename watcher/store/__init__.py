"""The state database: last snapshot per source, event history, the durable alert outbox, the
send log, silences and poll cursors, one SQLite file behind the `Store` facade.

Every change a cycle makes is one transaction, so a crash either keeps the whole cycle
(snapshot, events, alerts, tracking) or none of it, and no alert is lost or doubled.

Layout: `Store` (here) owns the connection, the daemon lock and the one transaction boundary
(`database.Database.transaction`); each aggregate has a repository module that owns its table
and SQL, and never opens a transaction that spans another aggregate:

    database.py    the file: private creation, WAL connection, errors, the transaction
    migrations.py  MIGRATIONS (append-only) and applying them
    rows.py        row <-> model codecs (times, jobs, events, alerts)
    snapshots.py   jobs: the last listing of each source
    sources.py     sources: baseline, poll health, the engine's tracking
    cursors.py     poll_cursors: what the next cycle needs, scan progress
    events.py      events, and `history` per job
    outbox.py      outbox: alerts until sent, dead or silenced
    sendlog.py     send_log: messages sent, for rate limits and group_interval
    silences.py    silences
    failures.py    failure_details: what the detail APIs said about a failure
    retention.py   pruning old history in small batches

To add a migration: append a tuple of statements to `migrations.MIGRATIONS` (never edit a
released one; each entry self-contained). `SCHEMA_VERSION` follows from its length.

To add an aggregate: a module here with a class taking the `Database` (reads through
`db.query_all`/`db.query_one`, single-aggregate writes in `db.transaction(...)`, writes that
belong to a larger commit as static methods taking the caller's `conn`); build it in
`Store.__init__` and add the public methods callers use to `Store`, delegating to it. A write
spanning aggregates opens one `self._transaction(...)` here and calls each part with its `conn`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import structlog

from watcher.jobsets import StoredJobs
from watcher.model import (
    Alert,
    Event,
    Job,
    OutboxItem,
    OutboxStatus,
    SentMessage,
    Silence,
    Snapshot,
)
from watcher.statelock import DaemonLock
from watcher.store import migrations, retention
from watcher.store.cursors import Cursors, PollStrategy
from watcher.store.database import Database, connect, prepare_file
from watcher.store.events import AlertDelivery, Events, HistoryEntry
from watcher.store.failures import FAILURE_DETAIL_DAYS, FailureDetails
from watcher.store.migrations import MIGRATIONS as _MIGRATIONS
from watcher.store.migrations import SCHEMA_VERSION
from watcher.store.outbox import Outbox
from watcher.store.rows import ts
from watcher.store.sendlog import SendLog
from watcher.store.silences import Silences
from watcher.store.snapshots import Snapshots, changed_jobs
from watcher.store.sources import Sources, SourceStatus

# Batch memories to write: changed ones (JSON values by name), names to forget, and
# whether the changed ones are all there are (then they replace every stored row).
BatchWrites = tuple[Mapping[str, Any], Collection[str], bool]

__all__ = [
    "FAILURE_DETAIL_DAYS",
    "SCHEMA_VERSION",
    "_MIGRATIONS",
    "AlertDelivery",
    "HistoryEntry",
    "PollStrategy",
    "SourceStatus",
    "Store",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _settle(answer: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the loop: `Store.call`'s answer, unless its caller was cancelled meanwhile."""
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(result)


log = structlog.get_logger()


class Store:
    """The SQLite state file. Synchronous: every operation is a few small statements."""

    def __init__(self, db: Database, lock: DaemonLock | None) -> None:
        # Use Store.open(): it prepares the file, the lock and the schema.
        self.path = db.path
        self._db = db
        self._lock = lock
        self._snapshots = Snapshots(db)
        self._sources = Sources(db)
        self._cursors = Cursors(db)
        self._events = Events(db)
        self._outbox = Outbox(db)
        self._send_log = SendLog(db)
        self._silences = Silences(db)
        self._failures = FailureDetails(db)
        # `call`s waiting in their own thread for the store, which `close` waits for.
        self._in_flight = threading.Condition()
        self._calls = 0

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str, *, exclusive: bool = False) -> Store:
        """Open (creating if needed) the state file and bring its schema up to date.

        `exclusive=True` is for the daemon: a second daemon on the same file is refused,
        whatever path names it (see `watcher.statelock`).
        """
        lock = None
        if path == ":memory:":
            pass
        elif exclusive:
            lock = DaemonLock.acquire(path, prepare=prepare_file)
        else:
            prepare_file(path)
        try:
            conn = connect(path)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        store = cls(Database(path, conn), lock)
        try:
            store._migrate()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Close the database and release the daemon lock, after every `call` still on its
        way (each waits only for the commit holding the store). Safe to call twice."""
        with self._in_flight:
            self._in_flight.wait_for(lambda: self._calls == 0)
        with self._db.mutex:
            self._db.close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The store to the calling thread alone for several calls in a row (re-entrant):
        a cycle committed from a worker thread keeps `close`, and every other writer, from
        coming between its transaction and the cursor saved after it."""
        with self._db.mutex:
            yield

    async def call(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """`fn(*args, **kwargs)`, a call on this store from the event loop: made there and then
        when the store is free (the usual case: no thread, no wait), else in a thread of its
        own. A large cycle's commit holds the store from a worker thread for seconds (a
        1M-job baseline's); a delivery mark, a watchdog status or another source's cursor
        waiting for it on the loop would stop /healthz, /metrics and every send all that time.

        A call once made is made whole: cancelling the caller (a stop) does not stop it, and
        `close` waits for it, so a sent mark waiting for the store is never dropped."""
        mutex = self._db.mutex
        if mutex.acquire(blocking=False):
            try:
                return fn(*args, **kwargs)
            finally:
                mutex.release()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[_T] = loop.create_future()

        def run() -> None:
            try:
                outcome = functools.partial(_settle, answer, fn(*args, **kwargs), None)
            except BaseException as err:
                outcome = functools.partial(_settle, answer, None, err)
            finally:
                self._call_finished()
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
                loop.call_soon_threadsafe(outcome)

        # A thread of its own, not the loop's executor: a queued executor job is dropped
        # when its caller is cancelled, and this call must happen (and `close` wait for it).
        with self._in_flight:
            self._calls += 1
        try:
            threading.Thread(target=run, name="store-call", daemon=True).start()
        except BaseException:
            self._call_finished()
            raise
        return await answer

    def _call_finished(self) -> None:
        with self._in_flight:
            self._calls -= 1
            self._in_flight.notify_all()

    def file_problem(self) -> str | None:
        """For the daemon: why its state file is no longer the one at its path (deleted,
        replaced, its directory removed), or None while all is well."""
        return self._lock.problem() if self._lock is not None else None

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return migrations.schema_version(self._db)

    def _migrate(self) -> None:
        # This package's `_MIGRATIONS`, looked up at each open, so a test can append a step.
        migrations.migrate(self._db, _MIGRATIONS)

    # --- the transaction boundary ------------------------------------------------------------

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._db.conn

    def _transaction(self, what: str) -> AbstractContextManager[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT; anything raised inside rolls the whole thing back."""
        return self._db.transaction(what)

    def _query_all(self, what: str, sql: str, args: Any = ()) -> list[Any]:
        return self._db.query_all(what, sql, args)

    def _query_one(self, what: str, sql: str, args: Any = ()) -> Any:
        return self._db.query_one(what, sql, args)

    # --- a poll cycle: snapshot, events, alerts and tracking, one transaction ---------------

    def has_baseline(self, source: str) -> bool:
        """Whether `source` ever completed a scan, so changes against it are real changes."""
        return self._sources.has_baseline(source)

    def load_jobs(self, source: str) -> dict[str, Job] | None:
        """The last committed snapshot of `source`; None before its first complete scan."""
        if not self.has_baseline(source):
            return None
        return self._snapshots.load(source)

    def load_stored(self, source: str) -> StoredJobs | None:
        """`load_jobs` as compact rows, each job read on first access (see StoredJobs),
        laid out for a full scan's lookups (see Snapshots.load_stored)."""
        if not self.has_baseline(source):
            return None
        return self._snapshots.load_stored(source)

    def load_tracking(self, source: str) -> dict[str, Any] | None:
        """The engine's memory for `source` as last committed (None if never stored)."""
        return self._sources.load_tracking(source)

    def commit_events(
        self,
        source: str,
        events: Sequence[Event],
        alerts: Sequence[Alert],
        *,
        now: datetime,
        tracking: Mapping[str, Any],
        batches: BatchWrites | None = None,
    ) -> int:
        """Store events that come without a snapshot (source health) and their alerts,
        with the engine's memory, in one transaction; return how many alerts were queued."""
        stamp = ts(now)
        with self._transaction(f"save the events of source {source!r}") as conn:
            Sources.ensure(conn, source)
            Events.append(conn, events)
            queued = Outbox.enqueue(conn, alerts, stamp)
            Sources.save_tracking(conn, source, tracking)
            if batches is not None:
                Sources.save_batches(conn, source, *batches[:2], complete=batches[2])
        return queued

    def commit_cycle(
        self,
        source: str,
        snapshot: Snapshot,
        events: Sequence[Event],
        alerts: Sequence[Alert],
        *,
        now: datetime,
        tracking: Mapping[str, Any] | None = None,
        previous: Mapping[str, Job] | None = None,
        writes: tuple[Mapping[str, Job], Collection[str]] | None = None,
        batches: BatchWrites | None = None,
    ) -> int:
        """Store one poll cycle in one transaction; return how many alerts were newly queued.

        Either all of it lands (snapshot, events, alerts) or none of it: the next cycle then
        re-detects the same changes, and alert ids make sure nothing is queued twice.
        `previous`, when the caller holds exactly what is stored for the source, lets only
        the jobs that differ be written: at 100k jobs and a handful of changes per cycle,
        serialising every row would be most of the cycle's CPU. `writes`, when the engine
        knows exactly what changed (the jobs to write, the ids to delete), spares even the
        comparison. `batches`: the batch memories that changed (JSON values by name), the
        names forgotten, and whether those are all of them; kept apart from `tracking` so a
        cycle writes only what changed.
        """
        if snapshot.source != source:
            raise ValueError(f"snapshot of {snapshot.source!r} committed as {source!r}")
        stamp = ts(now)
        # A fresh list either way: `replace` sorts it in place.
        changed = (
            list(writes[0].values()) if writes is not None else changed_jobs(snapshot, previous)
        )
        with self._transaction(f"save the poll cycle of source {source!r}") as conn:
            if writes is not None:
                self._snapshots.write(conn, source, changed, writes[1])
            else:
                self._snapshots.replace(conn, snapshot, changed, previous)
            Sources.mark_cycle(conn, source, stamp)
            Events.append(conn, events)
            queued = Outbox.enqueue(conn, alerts, stamp)
            if tracking is not None:
                Sources.save_tracking(conn, source, tracking)
            if batches is not None:
                Sources.save_batches(conn, source, *batches[:2], complete=batches[2])
        log.debug(
            "cycle_committed",
            source=source,
            jobs_written=len(changed),
            events=len(events),
            alerts_queued=queued,
            alerts_duplicate=len(alerts) - queued,
        )
        return queued

    # --- sources -----------------------------------------------------------------------------

    def record_source_poll(
        self, source: str, ok: bool, now: datetime, error: str | None = None
    ) -> None:
        """Remember how the last poll of `source` went (the error text must hold no secret)."""
        self._sources.record_poll(source, ok, now, error)

    def source_status(self) -> list[SourceStatus]:
        """Every source the store has heard of, by name."""
        return self._sources.status()

    # --- poll cursors ------------------------------------------------------------------------

    def load_cursor(self, source: str) -> dict[str, Any] | None:
        """The incremental-polling cursor last saved for `source` (None if never)."""
        return self._cursors.load(source)

    def save_cursor(self, source: str, cursor: Mapping[str, Any], strategy: str) -> None:
        """Save the cursor after a committed cycle (and clear the scan progress: it landed).

        Written after `commit_cycle`, not in it: a crash in between leaves the older cursor,
        whose watermark only makes the next cycle list a little more than needed.
        """
        self._cursors.save(source, cursor, strategy)

    def save_scan_progress(
        self, source: str, done: int, total: int | None, *, baseline: bool, now: datetime
    ) -> None:
        """How far the scan in flight has got, for `status` in another process."""
        self._cursors.save_scan_progress(source, done, total, baseline=baseline, now=now)

    def poll_strategies(self) -> dict[str, PollStrategy]:
        """Per source: the strategy in use and the scan in flight, if any."""
        return self._cursors.strategies()

    # --- history -----------------------------------------------------------------------------

    def job_history(self, job_id: str, source: str | None = None) -> list[HistoryEntry]:
        """Every event recorded about `job_id`, oldest first, each with its alerts."""
        return self._events.job_history(job_id, source)

    # --- silences ----------------------------------------------------------------------------

    def add_silence(
        self,
        matchers: Sequence[tuple[str, str]],
        *,
        starts_at: datetime,
        ends_at: datetime,
        comment: str,
        now: datetime,
    ) -> Silence:
        """Store a silence; the running daemon reads silences every cycle, no restart needed."""
        return self._silences.add(matchers, starts_at, ends_at, comment, now)

    def list_silences(self, *, active_at: datetime | None = None) -> list[Silence]:
        """Every silence (or only those active at `active_at`), oldest first."""
        return self._silences.find(active_at)

    def expire_silence(self, silence_id: int, now: datetime) -> bool:
        """End a silence now; False if there is no such silence still running."""
        return self._silences.expire(silence_id, now)

    # --- failure details ---------------------------------------------------------------------

    def failure_detail(self, source: str, failure: str) -> dict[str, Any] | None:
        """What the detail APIs said about one failure, if it was fetched before."""
        return self._failures.get(source, failure)

    def save_failure_detail(
        self, source: str, failure: str, why: Mapping[str, Any], now: datetime
    ) -> None:
        """Keep what the detail APIs said about a failure (and forget those past 90 days)."""
        self._failures.save(source, failure, why, now)

    # --- outbox and send log -----------------------------------------------------------------

    def mark_silenced(self, item_id: int, silence_id: int, now: datetime) -> None:
        """A silence matched the alert: record it as silenced; it is never sent."""
        self._outbox.mark_silenced(item_id, silence_id, now)

    def mark_sent_many(
        self,
        item_ids: Sequence[int],
        now: datetime,
        *,
        channel: str | None = None,
        group_keys: Sequence[str] = (),
    ) -> None:
        """One message carried several alerts: mark them all sent, and log the message on
        `channel` in the send log, in one transaction, so a crash right after the send
        repeats the message at most once, not half of it, and the log never disagrees."""
        stamp = ts(now)
        with self._transaction("mark the alerts sent") as conn:
            Outbox.mark_sent(conn, item_ids, stamp)
            if channel is not None:
                SendLog.record(conn, channel, group_keys, len(item_ids), stamp)

    def send_log(self, since: datetime) -> list[SentMessage]:
        """Messages sent at or after `since` (or logged ahead of it), oldest first."""
        return self._send_log.since(since)

    def mark_failed(
        self,
        item_id: int,
        now: datetime,
        error: str,
        next_attempt_at: datetime,
        *,
        retry_delay: float | None = None,
        elapsed: float | None = None,
    ) -> None:
        """A delivery attempt failed; try again at `next_attempt_at` (the caller's backoff,
        `retry_delay` seconds), after `elapsed` seconds spent trying in all."""
        self._outbox.mark_failed(item_id, now, error, next_attempt_at, retry_delay, elapsed)

    def mark_dead(
        self, item_id: int, now: datetime, error: str, *, elapsed: float | None = None
    ) -> None:
        """Give up on the alert after a failed delivery attempt (counted in its attempts)."""
        self._outbox.mark_dead(item_id, now, error, elapsed)

    def retry_dead(self, item_id: int | None, now: datetime) -> int:
        """Queue dead alerts again (one, or all with None), due at once with a fresh backoff."""
        return self._outbox.retry_dead(item_id, now)

    def list_outbox(self, statuses: Collection[OutboxStatus]) -> list[OutboxItem]:
        """Every alert with one of `statuses`, oldest first."""
        return self._outbox.with_status(statuses)

    def alerts_of_group(
        self, channel: str, group_keys: Collection[str], first_id: int, last_id: int
    ) -> list[OutboxItem]:
        """The alerts one grouped message carried: its channel, group keys and id span."""
        return self._outbox.of_group(channel, group_keys, first_id, last_id)

    def outbox_counts(self) -> dict[OutboxStatus, int]:
        """How many alerts are in each status (every status present, zero included)."""
        return self._outbox.counts()

    # --- retention ---------------------------------------------------------------------------

    def prune(self, before: datetime, *, batch: int = 500) -> int:
        """Forget up to `batch` rows each of history older than `before`: events, sent, dead
        and silenced alerts, send-log rows; return how many went. Pending alerts always stay.

        Small batches, each its own short transaction, so a running daemon's cycles are never
        kept waiting; call again until it returns 0.
        """
        return retention.prune(self._db, before, batch)

    # --- operator queries (read-only, for the CLI) -------------------------------------------

    def list_jobs(
        self, source: str | None = None, state: str | None = None
    ) -> list[tuple[str, Job]]:
        """Tracked jobs as (source, job), by source then job id; None matches any."""
        return self._snapshots.find(source, state)

    def jobs_by_state(self) -> dict[str, dict[str, int]]:
        """source -> state -> how many tracked jobs are in it."""
        return self._snapshots.count_by_state()
