"""Read-only queries behind the status page and API, on their own `mode=ro` SQLite connection.

Every query is an indexed lookup or an aggregate over an index (see the store's status-page
migration), never a load of every job or event. Rows come back as plain frozen dataclasses
holding only the fields the page may show: no `extra`, no alert body, no URL.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from watcher.engine.why import failure_key_of
from watcher.errors import StoreError
from watcher.model import FAILURE_STATES, SETTLED_STATES, SUCCEED
from watcher.store.rows import from_micros_or_none

__all__ = [
    "AlertRow",
    "BatchRow",
    "EventFilter",
    "EventRow",
    "JobRow",
    "OutboxCounts",
    "OutboxRow",
    "ReadModel",
    "SilenceRow",
    "SourceRow",
]

_JOB_COLUMNS = (
    "source, job_id, state, reject_times, create_time, lastupdate_time, voice_name, job_type, "
    "batch_name, job_failed_code, job_failed_reason, asset_id"
)
_EVENT_COLUMNS = (
    "id, kind, source, job_id, previous_state, state, reason, note, detected_at, subject"
)
_OUTBOX_COLUMNS = (
    "id, source, job_id, rule, channel, status, attempts, created_at, next_attempt_at, "
    "sent_at, last_error, title, event_key"
)


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One source as the store knows it, with its jobs counted by state."""

    name: str
    baseline_at: datetime | None
    last_poll_at: datetime | None
    last_ok_at: datetime | None
    last_error_at: datetime | None
    last_error: str | None
    consecutive_failures: int
    by_state: dict[str, int]
    # From poll_cursors: the strategy the next cycle uses, and a scan in flight, if any.
    strategy: str | None = None
    scan_pages_done: int | None = None
    scan_pages_total: int | None = None
    scan_baseline: bool = False

    @property
    def jobs(self) -> int:
        return sum(self.by_state.values())


@dataclass(frozen=True, slots=True)
class JobRow:
    source: str
    job_id: str
    state: str
    reject_times: int | None
    create_time: datetime | None
    lastupdate_time: datetime | None
    voice_name: str | None
    job_type: str | None
    batch_name: str | None
    job_failed_code: str | None
    job_failed_reason: str | None
    asset_id: str | None


@dataclass(frozen=True, slots=True)
class BatchRow:
    """A batch (`batch_name` within a source): its jobs counted by state, first and last times."""

    source: str
    name: str
    by_state: dict[str, int]
    started_at: datetime | None  # the earliest create_time
    updated_at: datetime | None  # the latest lastupdate_time

    @property
    def total(self) -> int:
        return sum(self.by_state.values())

    @property
    def succeeded(self) -> int:
        return self.by_state.get(SUCCEED, 0)

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.by_state.items() if s in FAILURE_STATES)

    @property
    def in_progress(self) -> int:
        return self.total - self.succeeded - self.failed

    @property
    def open(self) -> bool:
        """Open until every job is settled (the same test as the `batch_settled` event)."""
        return any(s not in SETTLED_STATES for s in self.by_state)


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    kind: str
    source: str
    job_id: str | None
    previous_state: str | None
    state: str | None
    reason: str
    note: str | None
    detected_at: datetime
    subject: str | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An alert in the outbox: where it goes (channel name, never the URL) and how it went."""

    id: int
    source: str
    job_id: str | None
    rule: str
    channel: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None
    last_error: str | None
    title: str
    event_key: str


@dataclass(frozen=True, slots=True)
class AlertRow:
    """An outbox row tied to the event that caused it (for a job's timeline)."""

    event_id: int
    alert: OutboxRow


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    """pending: due now; held: queued but waiting (retry backoff); dead; silenced."""

    pending: int = 0
    held: int = 0
    dead: int = 0
    silenced: int = 0


@dataclass(frozen=True, slots=True)
class SilenceRow:
    id: int
    matchers: tuple[tuple[str, str], ...]
    starts_at: datetime
    ends_at: datetime
    comment: str


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What the events page and API filter on; None matches anything."""

    source: str | None = None
    kind: str | None = None
    state: str | None = None
    batch: str | None = None
    job_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None  # keyset paging: events older than this id
    limit: int = 50


class ReadModel:
    """Queries over one read-only connection; safe to call from worker threads (a lock)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- sources and jobs ------------------------------------------------------------------

    def sources(self) -> list[SourceRow]:
        rows = self._all(
            "SELECT name, baseline_at, last_poll_at, last_ok_at, last_error_at, last_error, "
            "consecutive_failures FROM sources ORDER BY name"
        )
        counts: dict[str, dict[str, int]] = {}
        for source, state, count in self._all(
            "SELECT source, state, count(*) FROM jobs INDEXED BY jobs_by_state "
            "GROUP BY source, state"
        ):
            counts.setdefault(source, {})[state] = count
        polling = {
            r[0]: r[1:]
            for r in self._all(
                "SELECT source, strategy, scan_pages_done, scan_pages_total, scan_baseline "
                "FROM poll_cursors"
            )
        }
        return [
            SourceRow(
                name=r[0],
                baseline_at=_dt(r[1]),
                last_poll_at=_dt(r[2]),
                last_ok_at=_dt(r[3]),
                last_error_at=_dt(r[4]),
                last_error=r[5],
                consecutive_failures=r[6],
                by_state=dict(sorted(counts.get(r[0], {}).items())),
                strategy=polling.get(r[0], (None,))[0],
                scan_pages_done=polling.get(r[0], (None, None))[1],
                scan_pages_total=polling.get(r[0], (None, None, None))[2],
                scan_baseline=bool(polling.get(r[0], (None, None, None, 0))[3]),
            )
            for r in rows
        ]

    def whys(self, jobs: Sequence[JobRow]) -> dict[str, dict[str, Any]]:
        """What the detail APIs said about each failed job's current failure (job id ->
        `why`), from the cache the alerts were explained with: one primary-key read each."""
        out: dict[str, dict[str, Any]] = {}
        for job in jobs:
            if job.state not in FAILURE_STATES:
                continue
            key = failure_key_of(job.job_id, job.state, job.reject_times, job.lastupdate_time)
            row = self._one(
                "SELECT why FROM failure_details WHERE source = ? AND failure = ?",
                (job.source, key),
            )
            if row is not None:
                out[job.job_id] = dict(json.loads(row[0]))
        return out

    def job(self, source: str, job_id: str) -> JobRow | None:
        row = self._one(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE source = ? AND job_id = ?", (source, job_id)
        )
        return None if row is None else _job(row)

    def jobs(
        self,
        *,
        source: str | None = None,
        state: str | None = None,
        batch: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 100,
    ) -> list[JobRow]:
        """Jobs by (source, job_id), `after` that key (keyset paging)."""
        where: list[str] = ["1"]
        args: list[Any] = []
        if source is not None:
            where.append("source = ?")
            args.append(source)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if batch is not None:
            where.append("batch_name = ?")
            args.append(batch)
        if after is not None:
            where.append("(source, job_id) > (?, ?)")
            args.extend(after)
        sql = (
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} "
            "ORDER BY source, job_id LIMIT ?"
        )
        return [_job(r) for r in self._all(sql, (*args, limit))]

    def stuck_jobs(
        self, limit: int = 10, sources: Sequence[SourceRow] | None = None
    ) -> list[JobRow]:
        """Unsettled jobs with the oldest last update: one indexed probe per (source, state).

        `sources` (from `sources()`) already names every (source, state) there is."""
        pairs = (
            [(s.name, state) for s in sources for state in s.by_state]
            if sources is not None
            else self._all(
                "SELECT DISTINCT source, state FROM jobs INDEXED BY jobs_by_state ORDER BY 1, 2"
            )
        )
        found: list[JobRow] = []
        for source, state in pairs:
            if state in SETTLED_STATES:
                continue
            found.extend(
                _job(r)
                for r in self._all(
                    f"SELECT {_JOB_COLUMNS} FROM jobs INDEXED BY jobs_by_state "
                    "WHERE source = ? AND state = ? AND lastupdate_time IS NOT NULL "
                    "ORDER BY lastupdate_time LIMIT ?",
                    (source, state, limit),
                )
            )
        found.sort(key=lambda j: (j.lastupdate_time or datetime.max, j.source, j.job_id))
        return found[:limit]

    # --- batches ---------------------------------------------------------------------------

    def batches(self, *, source: str | None = None) -> list[BatchRow]:
        """Every batch, newest first, aggregated from the batch index (never job rows).

        SQLite folds the per-state counts into one JSON object per batch, so Python handles
        one row per batch rather than one per batch and state.
        """
        return self._batches(
            "batch_name IS NOT NULL AND (? IS NULL OR source = ?)", (source, source)
        )

    def batch(self, source: str, name: str) -> BatchRow | None:
        found = self._batches("source = ? AND batch_name = ?", (source, name))
        return found[0] if found else None

    def _batches(self, where: str, args: tuple[Any, ...]) -> list[BatchRow]:
        rows = self._all(
            "SELECT source, batch_name, json_group_object(state, n), min(first), max(last) "
            "FROM (SELECT source, batch_name, state, count(*) AS n, min(create_time) AS first, "
            "max(lastupdate_time) AS last FROM jobs INDEXED BY jobs_by_batch "
            f"WHERE {where} GROUP BY source, batch_name, state) "
            "GROUP BY source, batch_name",
            args,
        )
        out = [
            BatchRow(
                source=r[0],
                name=r[1],
                by_state=dict(sorted(json.loads(r[2]).items())),
                started_at=from_micros_or_none(r[3]),
                updated_at=from_micros_or_none(r[4]),
            )
            for r in rows
        ]
        out.sort(key=lambda b: (b.started_at or datetime.min, b.source, b.name), reverse=True)
        return out

    def batch_jobs(self, source: str, name: str, limit: int = 1000) -> list[JobRow]:
        """A batch's jobs, at most `limit` (the view puts them in order)."""
        return [
            _job(r)
            for r in self._all(
                f"SELECT {_JOB_COLUMNS} FROM jobs INDEXED BY jobs_by_batch "
                "WHERE source = ? AND batch_name = ? LIMIT ?",
                (source, name, limit),
            )
        ]

    # --- events ----------------------------------------------------------------------------

    def events(self, wanted: EventFilter) -> list[EventRow]:
        """Newest first, `limit` of them, older than `before_id` when paging.

        Each filter walks the index that can answer it in id order, so a page costs about
        `limit` rows however many events there are.
        """
        where: list[str] = ["1"]
        args: list[Any] = []
        index = "INDEXED BY events_by_source" if wanted.source is not None else ""
        for column, value, by in (
            ("source", wanted.source, ""),
            ("kind", wanted.kind, "INDEXED BY events_by_kind"),
            ("state", wanted.state, "INDEXED BY events_by_state"),
            ("job_id", wanted.job_id, "INDEXED BY events_by_job"),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
                index = by or index
        # A time window becomes an id range too, found in the time index in O(log n): events
        # are recorded in time order (detected_at is the committing cycle's clock), so the
        # walk in id order starts and stops at the window instead of crossing the newer or
        # older events. The detected_at test stays, so the answer is exact either way.
        if wanted.since is not None:
            first = self._one(
                "SELECT id FROM events INDEXED BY events_by_time WHERE detected_at >= ? "
                "ORDER BY detected_at, id LIMIT 1",
                (_ts(wanted.since),),
            )
            if first is None:
                return []
            where.append("detected_at >= ? AND id >= ?")
            args.extend([_ts(wanted.since), first[0]])
        if wanted.until is not None:
            last = self._one(
                "SELECT id FROM events INDEXED BY events_by_time WHERE detected_at < ? "
                "ORDER BY detected_at DESC, id DESC LIMIT 1",
                (_ts(wanted.until),),
            )
            if last is None:
                return []
            where.append("detected_at < ? AND id <= ?")
            args.extend([_ts(wanted.until), last[0]])
        if wanted.before_id is not None:
            where.append("id < ?")
            args.append(wanted.before_id)
        if wanted.batch is None:
            sql = (
                f"SELECT {_EVENT_COLUMNS} FROM events {index} WHERE {' AND '.join(where)} "
                "ORDER BY id DESC LIMIT ?"
            )
            return [_event(r) for r in self._all(sql, (*args, wanted.limit))]
        # Events carry no batch: its jobs' events (a batch is tens to hundreds of jobs, each
        # a handful of events) and the batch's own job-less events, merged.
        job_ids = [
            r[0]
            for r in self._all(
                "SELECT job_id FROM jobs INDEXED BY jobs_by_batch "
                "WHERE batch_name = ? AND (? IS NULL OR source = ?)",
                (wanted.batch, wanted.source, wanted.source),
            )
        ]
        condition = " AND ".join(where)
        by_jobs = self._all(
            f"SELECT {_EVENT_COLUMNS} FROM events INDEXED BY events_by_job "
            f"WHERE job_id IN (SELECT value FROM json_each(?)) AND {condition} "
            "ORDER BY id DESC LIMIT ?",
            (json.dumps(job_ids), *args, wanted.limit),
        )
        own = self._all(
            f"SELECT {_EVENT_COLUMNS} FROM events INDEXED BY events_by_kind "
            f"WHERE kind = 'batch_settled' AND subject = ? AND {condition} "
            "ORDER BY id DESC LIMIT ?",
            (wanted.batch, *args, wanted.limit),
        )
        merged = sorted({r[0]: r for r in (*by_jobs, *own)}.values(), key=lambda r: -r[0])
        return [_event(r) for r in merged[: wanted.limit]]

    def job_timeline(self, source: str, job_id: str) -> list[EventRow]:
        """Every event of one job, oldest first."""
        return [
            _event(r)
            for r in self._all(
                f"SELECT {_EVENT_COLUMNS} FROM events INDEXED BY events_by_job "
                "WHERE job_id = ? AND source = ? ORDER BY id",
                (job_id, source),
            )
        ]

    def job_alerts(self, source: str, job_id: str) -> list[AlertRow]:
        """Every alert the job's events caused, with the id of the event that caused it."""
        rows = self._all(
            f"SELECT e.id, {', '.join('o.' + c.strip() for c in _OUTBOX_COLUMNS.split(','))} "
            "FROM events e INDEXED BY events_by_job JOIN outbox o ON o.event_key = e.event_key "
            "WHERE e.job_id = ? AND e.source = ? ORDER BY e.id, o.id",
            (job_id, source),
        )
        return [AlertRow(event_id=r[0], alert=_outbox(r[1:])) for r in rows]

    # --- outbox and silences ---------------------------------------------------------------

    def outbox_counts(self, now: datetime) -> OutboxCounts:
        """Alerts not (yet) sent, by status: each a range of the due index. Sent ones are
        history, counted on no page: at hundreds of thousands that count alone costs more
        than a whole page."""
        counts = dict.fromkeys(("pending", "dead", "silenced"), 0)
        for status in counts:
            counts[status] = self._one(
                "SELECT count(*) FROM outbox INDEXED BY outbox_due WHERE status = ?", (status,)
            )[0]
        held = self._one(
            "SELECT count(*) FROM outbox INDEXED BY outbox_due "
            "WHERE status = 'pending' AND next_attempt_at > ?",
            (_ts(now),),
        )[0]
        return OutboxCounts(
            pending=counts["pending"] - held,
            held=held,
            dead=counts["dead"],
            silenced=counts["silenced"],
        )

    def outbox(self, statuses: Sequence[str], limit: int = 100) -> list[OutboxRow]:
        """The oldest alerts with one of `statuses` (the unsent ones are what people ask about)."""
        marks = ", ".join("?" * len(statuses))
        return [
            _outbox(r)
            for r in self._all(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox INDEXED BY outbox_due "
                f"WHERE status IN ({marks}) ORDER BY id LIMIT ?",
                (*statuses, limit),
            )
        ]

    def active_silences(self, now: datetime) -> list[SilenceRow]:
        stamp = _ts(now)
        rows = self._all(
            "SELECT id, matchers, starts_at, ends_at, comment FROM silences "
            "WHERE starts_at <= ? AND ends_at > ? ORDER BY ends_at",
            (stamp, stamp),
        )
        return [
            SilenceRow(
                r[0],
                tuple((str(k), str(v)) for k, v in json.loads(r[1])),
                datetime.fromisoformat(r[2]),
                datetime.fromisoformat(r[3]),
                r[4],
            )
            for r in rows
        ]

    # --- plumbing --------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            uri = f"file:{quote(self.path)}?mode=ro"
            try:
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout = 2000")
                conn.execute("PRAGMA query_only = ON")  # belt and braces over mode=ro
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: cannot open for reading: {err}") from err
            self._conn = conn
        return self._conn

    def _all(self, sql: str, args: Any = ()) -> list[Any]:
        with self._lock:
            try:
                return self._connection().execute(sql, args).fetchall()
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: cannot read: {err}") from err

    def _one(self, sql: str, args: Any = ()) -> Any:
        with self._lock:
            try:
                return self._connection().execute(sql, args).fetchone()
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: cannot read: {err}") from err


def _ts(value: datetime) -> str:
    # The store's format: fixed-width UTC ISO text, so text order is time order.
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _job(r: Sequence[Any]) -> JobRow:
    return JobRow(
        source=r[0],
        job_id=r[1],
        state=r[2],
        reject_times=r[3],
        create_time=from_micros_or_none(r[4]),
        lastupdate_time=from_micros_or_none(r[5]),
        voice_name=r[6],
        job_type=r[7],
        batch_name=r[8],
        job_failed_code=r[9],
        job_failed_reason=r[10],
        asset_id=r[11],
    )


def _event(r: Sequence[Any]) -> EventRow:
    return EventRow(
        id=r[0],
        kind=r[1],
        source=r[2],
        job_id=r[3],
        previous_state=r[4],
        state=r[5],
        reason=r[6],
        note=r[7],
        detected_at=datetime.fromisoformat(r[8]),
        subject=r[9],
    )


def _outbox(r: Sequence[Any]) -> OutboxRow:
    return OutboxRow(
        id=r[0],
        source=r[1],
        job_id=r[2],
        rule=r[3],
        channel=r[4],
        status=r[5],
        attempts=r[6],
        created_at=datetime.fromisoformat(r[7]),
        next_attempt_at=datetime.fromisoformat(r[8]),
        sent_at=_dt(r[9]),
        last_error=r[10],
        title=r[11],
        event_key=r[12],
    )
