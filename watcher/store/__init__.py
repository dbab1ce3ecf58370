"""The state database: last snapshot per source, event history and the durable alert outbox.

One SQLite file in WAL mode; every change a cycle makes is one transaction, so a crash either
keeps the whole cycle (snapshot, events, alerts) or none of it, and no alert is lost or doubled.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import structlog

from watcher.errors import StoreError
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
from watcher.store.rows import (
    alert_to_row,
    dt,
    dt_or_none,
    event_to_row,
    job_to_row,
    row_to_item,
    row_to_job,
    ts,
)

log = structlog.get_logger()

# Each entry migrates the schema from version i to i + 1; never edit a released entry, append.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # v1: the whole schema.
    (
        """
        CREATE TABLE sources (
            name TEXT PRIMARY KEY,
            baseline_at TEXT,
            last_cycle_at TEXT,
            last_poll_at TEXT,
            last_ok_at TEXT,
            last_error_at TEXT,
            last_error TEXT,
            consecutive_failures INTEGER NOT NULL DEFAULT 0
        )
        """,
        """
        CREATE TABLE jobs (
            source TEXT NOT NULL,
            job_id TEXT NOT NULL,
            state TEXT NOT NULL,
            reject_times INTEGER,
            create_time TEXT,
            lastupdate_time TEXT,
            voice_name TEXT,
            job_type TEXT,
            batch_name TEXT,
            job_failed_code TEXT,
            job_failed_reason TEXT,
            asset_id TEXT,
            extra TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (source, job_id)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            event_key TEXT NOT NULL,
            kind TEXT NOT NULL,
            source TEXT NOT NULL,
            job_id TEXT,
            previous_state TEXT,
            state TEXT,
            reason TEXT NOT NULL,
            note TEXT,
            detected_at TEXT NOT NULL,
            subject TEXT,
            sequence INTEGER NOT NULL DEFAULT 0,
            details TEXT NOT NULL DEFAULT '{}'
        )
        """,
        """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            alert_id TEXT NOT NULL UNIQUE,
            event_key TEXT NOT NULL,
            source TEXT NOT NULL,
            job_id TEXT,
            rule TEXT NOT NULL,
            channel TEXT NOT NULL,
            title TEXT NOT NULL,
            body TEXT NOT NULL,
            notify_type TEXT NOT NULL,
            body_format TEXT NOT NULL,
            created_at TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sent', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            last_error TEXT,
            sent_at TEXT,
            updated_at TEXT NOT NULL
        )
        """,
        "CREATE INDEX outbox_due ON outbox (status, next_attempt_at, id)",
    ),
    # v2: lookups by job and by event for `history`, and per-job ordering of the outbox.
    (
        "CREATE INDEX events_by_job ON events (job_id, id)",
        "CREATE INDEX outbox_by_event ON outbox (event_key)",
        "CREATE INDEX outbox_by_job ON outbox (channel, source, job_id, id) "
        "WHERE status = 'pending'",
    ),
    # v3: the engine's memory per source (stuck reminders, failures, batches, health), and
    # when an alert was (re)queued, so `outbox retry` gives it a fresh `give_up_after`.
    (
        "ALTER TABLE sources ADD COLUMN tracking TEXT",
        "ALTER TABLE outbox ADD COLUMN queued_at TEXT",
        "UPDATE outbox SET queued_at = created_at",
    ),
    # v4: noise control. The outbox is rebuilt (SQLite cannot alter a CHECK) to admit the
    # 'silenced' status, and gains the alert's group key and labels; silences get a table.
    (
        """
        CREATE TABLE outbox_v4 (
            id INTEGER PRIMARY KEY,
            alert_id TEXT NOT NULL UNIQUE,
            event_key TEXT NOT NULL,
            source TEXT NOT NULL,
            job_id TEXT,
            rule TEXT NOT NULL,
            channel TEXT NOT NULL,
            title TEXT NOT NULL,
            body TEXT NOT NULL,
            notify_type TEXT NOT NULL,
            body_format TEXT NOT NULL,
            created_at TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sent', 'dead', 'silenced')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            last_error TEXT,
            sent_at TEXT,
            updated_at TEXT NOT NULL,
            queued_at TEXT,
            group_key TEXT NOT NULL DEFAULT '',
            labels TEXT NOT NULL DEFAULT '{}',
            silence_id INTEGER
        )
        """,
        "INSERT INTO outbox_v4 (id, alert_id, event_key, source, job_id, rule, channel, title, "
        "body, notify_type, body_format, created_at, status, attempts, next_attempt_at, "
        "last_error, sent_at, updated_at, queued_at) SELECT id, alert_id, event_key, source, "
        "job_id, rule, channel, title, body, notify_type, body_format, created_at, status, "
        "attempts, next_attempt_at, last_error, sent_at, updated_at, queued_at FROM outbox",
        "DROP TABLE outbox",
        "ALTER TABLE outbox_v4 RENAME TO outbox",
        "CREATE INDEX outbox_due ON outbox (status, next_attempt_at, id)",
        "CREATE INDEX outbox_by_event ON outbox (event_key)",
        "CREATE INDEX outbox_by_job ON outbox (channel, source, job_id, id) "
        "WHERE status = 'pending'",
        """
        CREATE TABLE silences (
            id INTEGER PRIMARY KEY,
            matchers TEXT NOT NULL,
            starts_at TEXT NOT NULL,
            ends_at TEXT NOT NULL,
            comment TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL
        )
        """,
    ),
    # v5: durable delivery memory. A send log (what went out on which channel and group,
    # when) for rate limits and group_interval across reloads and restarts; per alert the
    # backoff chosen and the time spent trying, so retries do not follow the wall clock;
    # indexes for pruning history by age in small batches.
    (
        "ALTER TABLE outbox ADD COLUMN retry_delay_s REAL",
        "ALTER TABLE outbox ADD COLUMN elapsed_s REAL NOT NULL DEFAULT 0",
        """
        CREATE TABLE send_log (
            id INTEGER PRIMARY KEY,
            channel TEXT NOT NULL,
            group_keys TEXT NOT NULL DEFAULT '[]',
            alerts INTEGER NOT NULL,
            sent_at TEXT NOT NULL
        )
        """,
        "CREATE INDEX send_log_by_time ON send_log (sent_at)",
        "CREATE INDEX events_by_time ON events (detected_at)",
        "CREATE INDEX outbox_done_by_time ON outbox (updated_at) "
        "WHERE status IN ('sent', 'dead', 'silenced')",
    ),
    # Status page (watcher.web): every aggregate it shows comes from one of these indexes,
    # so a page stays fast at 100k jobs and 1M events. Indexes only, nothing to migrate.
    (
        "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (source, state, lastupdate_time)",
        "CREATE INDEX IF NOT EXISTS jobs_by_batch ON jobs "
        "(source, batch_name, state, create_time, lastupdate_time)",
        "CREATE INDEX IF NOT EXISTS events_by_kind ON events (kind, id)",
        "CREATE INDEX IF NOT EXISTS events_by_state ON events (state, id)",
        "CREATE INDEX IF NOT EXISTS events_by_source ON events (source, id)",
    ),
    # poll cursors: what a source's next cycle needs (watermark, strategy, demotions) so a
    # `once` from cron is as cheap as the daemon, and how far a scan in flight has got.
    (
        """
        CREATE TABLE poll_cursors (
            source TEXT PRIMARY KEY,
            cursor TEXT NOT NULL DEFAULT '{}',
            strategy TEXT,
            scan_pages_done INTEGER,
            scan_pages_total INTEGER,
            scan_baseline INTEGER NOT NULL DEFAULT 0,
            scan_updated_at TEXT
        )
        """,
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_SELECT_JOBS = """
    SELECT job_id, state, reject_times, create_time, lastupdate_time, voice_name, job_type,
           batch_name, job_failed_code, job_failed_reason, asset_id, extra
    FROM jobs WHERE source = ? ORDER BY job_id
"""
# Rewrites a job row only when something changed, so an idle cycle writes almost nothing.
_UPSERT_JOB = """
    INSERT INTO jobs (source, job_id, state, reject_times, create_time, lastupdate_time,
                      voice_name, job_type, batch_name, job_failed_code, job_failed_reason,
                      asset_id, extra)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (source, job_id) DO UPDATE SET
        state = excluded.state, reject_times = excluded.reject_times,
        create_time = excluded.create_time, lastupdate_time = excluded.lastupdate_time,
        voice_name = excluded.voice_name, job_type = excluded.job_type,
        batch_name = excluded.batch_name, job_failed_code = excluded.job_failed_code,
        job_failed_reason = excluded.job_failed_reason, asset_id = excluded.asset_id,
        extra = excluded.extra
    WHERE state IS NOT excluded.state OR reject_times IS NOT excluded.reject_times
        OR create_time IS NOT excluded.create_time
        OR lastupdate_time IS NOT excluded.lastupdate_time
        OR voice_name IS NOT excluded.voice_name OR job_type IS NOT excluded.job_type
        OR batch_name IS NOT excluded.batch_name
        OR job_failed_code IS NOT excluded.job_failed_code
        OR job_failed_reason IS NOT excluded.job_failed_reason
        OR asset_id IS NOT excluded.asset_id OR extra IS NOT excluded.extra
"""
_INSERT_EVENT = """
    INSERT INTO events (event_key, kind, source, job_id, previous_state, state, reason, note,
                        detected_at, subject, sequence, details)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_ALERT = """
    INSERT OR IGNORE INTO outbox (alert_id, event_key, source, job_id, rule, channel, title,
                                  body, notify_type, body_format, created_at, next_attempt_at,
                                  group_key, labels, updated_at, queued_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_SELECT_OUTBOX = """
    SELECT id, event_key, source, job_id, rule, channel, title, body, notify_type, body_format,
           created_at, status, attempts, next_attempt_at, last_error, sent_at, queued_at,
           group_key, labels, retry_delay_s, elapsed_s
    FROM outbox WHERE status IN (SELECT value FROM json_each(?)) ORDER BY id
"""
_SELECT_HISTORY = """
    SELECT event_key, kind, source, job_id, previous_state, state, reason, note, detected_at,
           subject, sequence, details
    FROM events WHERE job_id = :job_id AND (:source IS NULL OR source = :source) ORDER BY id
"""
_SELECT_HISTORY_ALERTS = """
    SELECT event_key, rule, channel, status, attempts, sent_at, last_error
    FROM outbox WHERE event_key IN (
        SELECT event_key FROM events
        WHERE job_id = :job_id AND (:source IS NULL OR source = :source))
    ORDER BY id
"""
# Oldest first, by the indexes of migration v5; pending alerts are never history.
_PRUNE = (
    "DELETE FROM events WHERE id IN "
    "(SELECT id FROM events WHERE detected_at < ? ORDER BY detected_at LIMIT ?)",
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE updated_at < ? "
    "AND status IN ('sent', 'dead', 'silenced') ORDER BY updated_at LIMIT ?)",
    "DELETE FROM send_log WHERE id IN "
    "(SELECT id FROM send_log WHERE sent_at < ? ORDER BY sent_at LIMIT ?)",
)
_CORRUPT_HINT = "move it aside or restore a backup"


@dataclass(frozen=True, slots=True)
class PollStrategy:
    """A source's polling strategy (`changed_since`, `active_set`, `full_only`) and the
    scan in flight (`pages_done` is None when none is)."""

    strategy: str | None
    pages_done: int | None
    pages_total: int | None
    baseline: bool
    progress_at: datetime | None


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """What the store knows about one source's polling, for `status` and health checks."""

    name: str
    baseline_at: datetime | None
    last_cycle_at: datetime | None
    last_poll_at: datetime | None
    last_ok_at: datetime | None
    last_error_at: datetime | None
    last_error: str | None
    consecutive_failures: int
    job_count: int


@dataclass(frozen=True, slots=True)
class AlertDelivery:
    """One alert an event produced, and how its delivery went."""

    rule: str
    channel: str
    status: OutboxStatus
    attempts: int
    sent_at: datetime | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One recorded event about a job, with the alerts it caused."""

    event_key: str
    kind: str
    source: str
    job_id: str | None
    previous_state: str | None
    state: str | None
    reason: str
    note: str | None
    detected_at: datetime
    subject: str | None
    sequence: int
    details: Mapping[str, Any]
    alerts: tuple[AlertDelivery, ...]


class Store:
    """The SQLite state file. Synchronous: every operation is a few small statements."""

    def __init__(self, path: str, conn: sqlite3.Connection, lock: DaemonLock | None) -> None:
        # Use Store.open(): it prepares the file, the lock and the schema.
        self.path = path
        self._conn = conn
        self._lock = lock
        self._mutex = threading.RLock()

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
            lock = DaemonLock.acquire(path, prepare=_prepare_file)
        else:
            _prepare_file(path)
        try:
            conn = _connect(path)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        store = cls(path, conn, lock)
        try:
            store._migrate()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Close the database and release the daemon lock. Safe to call twice."""
        with self._mutex:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

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
        return int(self._query_one("read the schema version", "PRAGMA user_version")[0])

    def _migrate(self) -> None:
        found = self.schema_version
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: written by a newer metastudio-watcher (schema v{found}, this "
                f"version knows up to v{SCHEMA_VERSION}); upgrade, or point storage elsewhere"
            )
        for version in range(found, SCHEMA_VERSION):
            with self._transaction(f"migrate the schema to v{version + 1}") as conn:
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                # PRAGMA takes no parameters; the value is our own integer.
                conn.execute(f"PRAGMA user_version = {version + 1}")
            # A new file goes through every step: only an upgrade is news.
            (log.info if found else log.debug)(
                "store_migrated", path=self.path, schema_version=version + 1
            )

    # --- jobs --------------------------------------------------------------------------------

    def has_baseline(self, source: str) -> bool:
        """Whether `source` ever completed a scan, so changes against it are real changes."""
        row = self._query_one(
            "read the source", "SELECT baseline_at FROM sources WHERE name = ?", (source,)
        )
        return row is not None and row[0] is not None

    def load_jobs(self, source: str) -> dict[str, Job] | None:
        """The last committed snapshot of `source`; None before its first complete scan."""
        if not self.has_baseline(source):
            return None
        # Row by row, not fetchall(): 100k rows as tuples would briefly double the memory.
        with self._mutex:
            try:
                cursor = self._conn.execute(_SELECT_JOBS, (source,))
                return {row[0]: row_to_job(row) for row in cursor}
            except sqlite3.Error as err:
                raise _store_error(self.path, "read the jobs", err) from err

    def load_tracking(self, source: str) -> dict[str, Any] | None:
        """The engine's memory for `source` as last committed (None if never stored)."""
        row = self._query_one(
            "read the source", "SELECT tracking FROM sources WHERE name = ?", (source,)
        )
        if row is None or row[0] is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else None

    def commit_events(
        self,
        source: str,
        events: Sequence[Event],
        alerts: Sequence[Alert],
        *,
        now: datetime,
        tracking: Mapping[str, Any],
    ) -> int:
        """Store events that come without a snapshot (source health) and their alerts,
        with the engine's memory, in one transaction; return how many alerts were queued."""
        stamp = ts(now)
        with self._transaction(f"save the events of source {source!r}") as conn:
            conn.execute("INSERT OR IGNORE INTO sources (name) VALUES (?)", (source,))
            conn.executemany(
                _INSERT_EVENT,
                [event_to_row(event) for event in events],
            )
            before = conn.total_changes
            conn.executemany(
                _INSERT_ALERT, [(*alert_to_row(alert), stamp, stamp) for alert in alerts]
            )
            queued = conn.total_changes - before
            conn.execute(
                "UPDATE sources SET tracking = ? WHERE name = ?",
                (json.dumps(dict(tracking), sort_keys=True), source),
            )
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
    ) -> int:
        """Store one poll cycle in one transaction; return how many alerts were newly queued.

        Either all of it lands (snapshot, events, alerts) or none of it: the next cycle then
        re-detects the same changes, and alert ids make sure nothing is queued twice.
        `previous`, when the caller holds exactly what is stored for the source, lets only
        the jobs that differ be written: at 100k jobs and a handful of changes per cycle,
        serialising every row would be most of the cycle's CPU.
        """
        if snapshot.source != source:
            raise ValueError(f"snapshot of {snapshot.source!r} committed as {source!r}")
        stamp = ts(now)
        if previous is None:
            changed = list(snapshot.jobs.values())
        else:
            # `is` first: unchanged jobs are the very objects held before (see the client).
            changed = [
                j
                for k, j in snapshot.jobs.items()
                if (old := previous.get(k)) is not j and old != j
            ]
        # A generator: a 100k-job baseline never holds all its rows in memory at once.
        job_rows = ((source, *job_to_row(job)) for job in changed)
        with self._transaction(f"save the poll cycle of source {source!r}") as conn:
            if previous is None:
                stored = {
                    row[0]
                    for row in conn.execute("SELECT job_id FROM jobs WHERE source = ?", (source,))
                }
            else:
                stored = set(previous)
            conn.executemany(
                "DELETE FROM jobs WHERE source = ? AND job_id = ?",
                [(source, job_id) for job_id in stored - snapshot.jobs.keys()],
            )
            conn.executemany(_UPSERT_JOB, job_rows)
            conn.execute(
                "INSERT INTO sources (name, baseline_at, last_cycle_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET "
                "baseline_at = coalesce(baseline_at, excluded.baseline_at), "
                "last_cycle_at = excluded.last_cycle_at",
                (source, stamp, stamp),
            )
            conn.executemany(
                _INSERT_EVENT,
                [event_to_row(event) for event in events],
            )
            before = conn.total_changes
            conn.executemany(
                _INSERT_ALERT, [(*alert_to_row(alert), stamp, stamp) for alert in alerts]
            )
            queued = conn.total_changes - before
            if tracking is not None:
                conn.execute(
                    "UPDATE sources SET tracking = ? WHERE name = ?",
                    (json.dumps(dict(tracking), sort_keys=True), source),
                )
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
        stamp = ts(now)
        with self._transaction(f"record the poll of source {source!r}") as conn:
            conn.execute("INSERT OR IGNORE INTO sources (name) VALUES (?)", (source,))
            if ok:
                conn.execute(
                    "UPDATE sources SET last_poll_at = ?, last_ok_at = ?, "
                    "consecutive_failures = 0 WHERE name = ?",
                    (stamp, stamp, source),
                )
            else:
                conn.execute(
                    "UPDATE sources SET last_poll_at = ?, last_error_at = ?, last_error = ?, "
                    "consecutive_failures = consecutive_failures + 1 WHERE name = ?",
                    (stamp, stamp, error or "poll failed", source),
                )

    def source_status(self) -> list[SourceStatus]:
        """Every source the store has heard of, by name."""
        rows = self._query_all(
            "read the sources",
            "SELECT s.name, s.baseline_at, s.last_cycle_at, s.last_poll_at, s.last_ok_at, "
            "s.last_error_at, s.last_error, s.consecutive_failures, "
            "(SELECT count(*) FROM jobs j WHERE j.source = s.name) "
            "FROM sources s ORDER BY s.name",
        )
        return [
            SourceStatus(
                name=row[0],
                baseline_at=dt_or_none(row[1]),
                last_cycle_at=dt_or_none(row[2]),
                last_poll_at=dt_or_none(row[3]),
                last_ok_at=dt_or_none(row[4]),
                last_error_at=dt_or_none(row[5]),
                last_error=row[6],
                consecutive_failures=row[7],
                job_count=row[8],
            )
            for row in rows
        ]

    # --- poll cursors ------------------------------------------------------------------------

    def load_cursor(self, source: str) -> dict[str, Any] | None:
        """The incremental-polling cursor last saved for `source` (None if never)."""
        row = self._query_one(
            "read the poll cursor", "SELECT cursor FROM poll_cursors WHERE source = ?", (source,)
        )
        if row is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else None

    def save_cursor(self, source: str, cursor: Mapping[str, Any], strategy: str) -> None:
        """Save the cursor after a committed cycle (and clear the scan progress: it landed).

        Written after `commit_cycle`, not in it: a crash in between leaves the older cursor,
        whose watermark only makes the next cycle list a little more than needed.
        """
        with self._transaction(f"save the poll cursor of source {source!r}") as conn:
            conn.execute(
                "INSERT INTO poll_cursors (source, cursor, strategy) VALUES (?, ?, ?) "
                "ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, "
                "strategy = excluded.strategy, scan_pages_done = NULL, "
                "scan_pages_total = NULL, scan_baseline = 0, scan_updated_at = NULL",
                (source, json.dumps(dict(cursor), sort_keys=True), strategy),
            )

    def save_scan_progress(
        self, source: str, done: int, total: int | None, *, baseline: bool, now: datetime
    ) -> None:
        """How far the scan in flight has got, for `status` in another process."""
        with self._transaction(f"save the scan progress of source {source!r}") as conn:
            conn.execute(
                "INSERT INTO poll_cursors (source, scan_pages_done, scan_pages_total, "
                "scan_baseline, scan_updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (source) DO UPDATE SET scan_pages_done = excluded.scan_pages_done, "
                "scan_pages_total = excluded.scan_pages_total, "
                "scan_baseline = excluded.scan_baseline, "
                "scan_updated_at = excluded.scan_updated_at",
                (source, done, total, int(baseline), ts(now)),
            )

    def poll_strategies(self) -> dict[str, PollStrategy]:
        """Per source: the strategy in use and the scan in flight, if any."""
        rows = self._query_all(
            "read the poll cursors",
            "SELECT source, strategy, scan_pages_done, scan_pages_total, scan_baseline, "
            "scan_updated_at FROM poll_cursors ORDER BY source",
        )
        return {
            row[0]: PollStrategy(
                strategy=row[1],
                pages_done=row[2],
                pages_total=row[3],
                baseline=bool(row[4]),
                progress_at=dt_or_none(row[5]),
            )
            for row in rows
        }

    # --- history -----------------------------------------------------------------------------

    def job_history(self, job_id: str, source: str | None = None) -> list[HistoryEntry]:
        """Every event recorded about `job_id`, oldest first, each with its alerts."""
        args = {"job_id": job_id, "source": source}
        events = self._query_all("read the job history", _SELECT_HISTORY, args)
        deliveries: dict[str, list[AlertDelivery]] = {}
        for row in self._query_all("read the job history", _SELECT_HISTORY_ALERTS, args):
            deliveries.setdefault(row[0], []).append(
                AlertDelivery(
                    rule=row[1],
                    channel=row[2],
                    status=OutboxStatus(row[3]),
                    attempts=row[4],
                    sent_at=dt_or_none(row[5]),
                    last_error=row[6],
                )
            )
        return [
            HistoryEntry(
                event_key=row[0],
                kind=row[1],
                source=row[2],
                job_id=row[3],
                previous_state=row[4],
                state=row[5],
                reason=row[6],
                note=row[7],
                detected_at=dt(row[8]),
                subject=row[9],
                sequence=row[10],
                details=json.loads(row[11]),
                alerts=tuple(deliveries.get(row[0], ())),
            )
            for row in events
        ]

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
        with self._transaction("add the silence") as conn:
            cursor = conn.execute(
                "INSERT INTO silences (matchers, starts_at, ends_at, comment, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    json.dumps([list(m) for m in matchers]),
                    ts(starts_at),
                    ts(ends_at),
                    comment,
                    ts(now),
                ),
            )
            silence_id = int(cursor.lastrowid or 0)
        return Silence(silence_id, tuple(matchers), starts_at, ends_at, comment)

    def list_silences(self, *, active_at: datetime | None = None) -> list[Silence]:
        """Every silence (or only those active at `active_at`), oldest first."""
        rows = self._query_all(
            "read the silences",
            "SELECT id, matchers, starts_at, ends_at, comment FROM silences "
            "WHERE :at IS NULL OR (starts_at <= :at AND ends_at > :at) ORDER BY id",
            {"at": ts(active_at) if active_at is not None else None},
        )
        return [
            Silence(
                row[0],
                tuple((str(k), str(v)) for k, v in json.loads(row[1])),
                dt(row[2]),
                dt(row[3]),
                row[4],
            )
            for row in rows
        ]

    def expire_silence(self, silence_id: int, now: datetime) -> bool:
        """End a silence now; False if there is no such silence still running."""
        with self._transaction("expire the silence") as conn:
            cursor = conn.execute(
                "UPDATE silences SET ends_at = :now WHERE id = :id AND ends_at > :now",
                {"now": ts(now), "id": silence_id},
            )
            return cursor.rowcount > 0

    def mark_silenced(self, item_id: int, silence_id: int, now: datetime) -> None:
        """A silence matched the alert: record it as silenced; it is never sent."""
        stamp = ts(now)
        self._update_item(
            item_id,
            "mark the alert silenced",
            "UPDATE outbox SET status = 'silenced', silence_id = ?, updated_at = ? WHERE id = ?",
            (silence_id, stamp),
        )

    # --- outbox ------------------------------------------------------------------------------

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
            conn.executemany(
                "UPDATE outbox SET status = 'sent', attempts = attempts + 1, sent_at = ?, "
                "last_error = NULL, updated_at = ? WHERE id = ?",
                [(stamp, stamp, item_id) for item_id in item_ids],
            )
            if channel is not None:
                conn.execute(
                    "INSERT INTO send_log (channel, group_keys, alerts, sent_at) "
                    "VALUES (?, ?, ?, ?)",
                    (channel, json.dumps(list(group_keys)), len(item_ids), stamp),
                )

    def send_log(self, since: datetime) -> list[SentMessage]:
        """Messages sent at or after `since` (or logged ahead of it), oldest first."""
        rows = self._query_all(
            "read the send log",
            "SELECT channel, group_keys, sent_at FROM send_log WHERE sent_at >= ? ORDER BY id",
            (ts(since),),
        )
        return [
            SentMessage(row[0], tuple(str(k) for k in json.loads(row[1])), dt(row[2]))
            for row in rows
        ]

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
        self._update_item(
            item_id,
            "record the failed delivery",
            "UPDATE outbox SET status = 'pending', attempts = attempts + 1, last_error = ?, "
            "next_attempt_at = ?, updated_at = ?, retry_delay_s = ?, "
            "elapsed_s = coalesce(?, elapsed_s) WHERE id = ?",
            (error, ts(next_attempt_at), ts(now), retry_delay, elapsed),
        )

    def mark_dead(
        self,
        item_id: int,
        now: datetime,
        error: str,
        *,
        attempted: bool = True,
        elapsed: float | None = None,
    ) -> None:
        """Give up on the alert; `attempted=False` when no delivery was tried this time."""
        self._update_item(
            item_id,
            "give up on the alert",
            "UPDATE outbox SET status = 'dead', attempts = attempts + ?, last_error = ?, "
            "updated_at = ?, elapsed_s = coalesce(?, elapsed_s) WHERE id = ?",
            (1 if attempted else 0, error, ts(now), elapsed),
        )

    def retry_dead(self, item_id: int | None, now: datetime) -> int:
        """Queue dead alerts again (one, or all with None), due at once with a fresh backoff."""
        stamp = ts(now)
        with self._transaction("requeue dead alerts") as conn:
            cursor = conn.execute(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = :now, "
                "updated_at = :now, queued_at = :now, retry_delay_s = NULL, elapsed_s = 0 "
                "WHERE status = 'dead' AND (:id IS NULL OR id = :id)",
                {"now": stamp, "id": item_id},
            )
            return cursor.rowcount

    def list_outbox(self, statuses: Collection[OutboxStatus]) -> list[OutboxItem]:
        """Every alert with one of `statuses`, oldest first."""
        wanted = json.dumps([OutboxStatus(status).value for status in statuses])
        rows = self._query_all("read the outbox", _SELECT_OUTBOX, (wanted,))
        return [row_to_item(row) for row in rows]

    def outbox_counts(self) -> dict[OutboxStatus, int]:
        """How many alerts are in each status (every status present, zero included)."""
        counts = dict.fromkeys(OutboxStatus, 0)
        for status, count in self._query_all(
            "read the outbox", "SELECT status, count(*) FROM outbox GROUP BY status"
        ):
            counts[OutboxStatus(status)] = count
        return counts

    def prune(self, before: datetime, *, batch: int = 500) -> int:
        """Forget up to `batch` rows each of history older than `before`: events, sent, dead
        and silenced alerts, send-log rows; return how many went. Pending alerts always stay.

        Small batches, each its own short transaction, so a running daemon's cycles are never
        kept waiting; call again until it returns 0.
        """
        stamp = ts(before)
        with self._transaction("prune old history") as conn:
            removed = 0
            for sql in _PRUNE:
                removed += conn.execute(sql, (stamp, batch)).rowcount
        return removed

    # --- plumbing ----------------------------------------------------------------------------

    def _update_item(self, item_id: int, what: str, sql: str, args: tuple[Any, ...]) -> None:
        with self._transaction(what) as conn:
            cursor = conn.execute(sql, (*args, item_id))
            if cursor.rowcount == 0:
                raise StoreError(
                    f"{self.path}: cannot {what}: outbox item {item_id} does not exist"
                )

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT; anything raised inside rolls the whole thing back."""
        with self._mutex:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise _store_error(self.path, what, err) from err
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as err:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(err, sqlite3.Error):
                    raise _store_error(self.path, what, err) from err
                raise

    def _query_all(self, what: str, sql: str, args: Any = ()) -> list[Any]:
        with self._mutex:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as err:
                raise _store_error(self.path, what, err) from err

    def _query_one(self, what: str, sql: str, args: Any = ()) -> Any:
        with self._mutex:
            try:
                return self._conn.execute(sql, args).fetchone()
            except sqlite3.Error as err:
                raise _store_error(self.path, what, err) from err

    # --- operator queries (read-only, for the CLI) -------------------------------------------

    def list_jobs(
        self, source: str | None = None, state: str | None = None
    ) -> list[tuple[str, Job]]:
        """Tracked jobs as (source, job), by source then job id; None matches any."""
        rows = self._query_all(
            "read the jobs",
            "SELECT source, job_id, state, reject_times, create_time, lastupdate_time, "
            "voice_name, job_type, batch_name, job_failed_code, job_failed_reason, asset_id, "
            "extra FROM jobs WHERE (:source IS NULL OR source = :source) "
            "AND (:state IS NULL OR state = :state) ORDER BY source, job_id",
            {"source": source, "state": state},
        )
        return [(row[0], row_to_job(row[1:])) for row in rows]

    def jobs_by_state(self) -> dict[str, dict[str, int]]:
        """source -> state -> how many tracked jobs are in it."""
        out: dict[str, dict[str, int]] = {}
        for source, state, count in self._query_all(
            "read the jobs",
            "SELECT source, state, count(*) FROM jobs GROUP BY source, state ORDER BY 1, 2",
        ):
            out.setdefault(source, {})[state] = count
        return out


# --- opening -------------------------------------------------------------------------------


def _prepare_file(path: str) -> None:
    """Create the parent directory (0700) and the file (0600) so no one else can read state."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        _make_private_dirs(parent)
        if os.path.exists(path) and not os.path.isfile(path):
            raise StoreError(f"{path}: not a regular file; point storage at a file path")
        with contextlib.suppress(FileExistsError):  # someone else just created it: fine
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        raise StoreError(f"cannot create {path}: {_os_hint(err, parent)}") from err


def _make_private_dirs(directory: str) -> None:
    """Create `directory` and any missing parents as 0700; existing ones are left alone."""
    missing: list[str] = []
    while not os.path.isdir(directory):
        if os.path.lexists(directory):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", directory)
        missing.append(directory)
        directory = os.path.dirname(directory)
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def _os_hint(err: OSError, parent: str) -> str:
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"directory is read-only or not ours ({parent}); fix its permissions or move storage"
    if err.errno == errno.ENOTDIR:
        return f"{err.filename or parent} is a file, not a directory"
    if err.errno == errno.ENOSPC:
        return "disk is full"
    if err.errno == errno.ENOENT:
        return (
            f"cannot create the directory {parent}: a part of the path is missing or the file "
            "system refuses directories; fix `storage:`"
        )
    return err.strerror or str(err)


def _free_bytes(path: str) -> int | None:
    try:
        stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _connect(path: str) -> sqlite3.Connection:
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see Store._transaction).
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as err:
        raise _store_error(path, "open the database", err) from err
    try:
        conn.execute("PRAGMA busy_timeout = 5000")  # a `status` reader must not fail the daemon
        row = conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise StoreError(
                f"{path}: database is corrupt ({row[0] if row else 'no answer'}) — {_CORRUPT_HINT}"
            )
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal" and path != ":memory:":
            log.warning("store_not_wal", path=path, journal_mode=mode)
        # FULL: in WAL mode this syncs the log on every commit, so a sent mark or a queued alert
        # survives power loss, not just a crash of the process.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException as err:
        conn.close()
        if isinstance(err, sqlite3.Error):
            raise _store_error(path, "open the database", err) from err
        raise
    return conn


def _store_error(path: str, what: str, err: sqlite3.Error) -> StoreError:
    text = str(err)
    code = getattr(err, "sqlite_errorcode", None)
    lowered = text.lower()
    if "not a database" in lowered or code == sqlite3.SQLITE_NOTADB:
        hint = f"not a SQLite database — {_CORRUPT_HINT}"
    elif "malformed" in lowered or "corrupt" in lowered or code == sqlite3.SQLITE_CORRUPT:
        hint = f"database is corrupt ({text}) — {_CORRUPT_HINT}"
    elif "readonly" in lowered or code == sqlite3.SQLITE_READONLY:
        hint = _permission_hint(path) or "database is read-only; fix permissions"
    elif "unable to open" in lowered or code == sqlite3.SQLITE_CANTOPEN:
        hint = _permission_hint(path) or f"cannot open the file ({text})"
    elif "locked" in lowered or "busy" in lowered:
        hint = "database is busy: another process holds a write lock"
    elif "full" in lowered or code == sqlite3.SQLITE_FULL:
        hint = "disk is full: free some space (nothing was written)"
    elif "disk i/o error" in lowered or code == sqlite3.SQLITE_IOERR:
        # With WAL, a full disk often shows as an I/O error creating the -shm/-wal files.
        free = _free_bytes(path)
        if free is not None and free < 1024 * 1024:
            hint = f"disk is full ({free // 1024} KiB free): free some space (nothing was written)"
        else:
            hint = "disk I/O error: check the file system holding the database"
    else:
        hint = text
    return StoreError(f"{path}: cannot {what}: {hint}")


def _permission_hint(path: str) -> str | None:
    """Why this process cannot use the file, when the file system says so."""
    if path == ":memory:":
        return None
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return "file is not readable and writable by this user; fix its owner or mode"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.access(parent, os.W_OK | os.X_OK):
        # WAL mode creates <file>-wal and <file>-shm next to the database.
        return f"directory is read-only ({parent}); fix its permissions or move storage"
    return None
