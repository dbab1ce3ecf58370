"""Events: the history of what was detected about each job, appended in a cycle's transaction,
and read back per job (with the alerts each event caused) for `history`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from watcher.model import Event, OutboxStatus
from watcher.store.database import Database
from watcher.store.rows import dt, dt_or_none, event_to_row

_INSERT_EVENT = """
    INSERT INTO events (event_key, kind, source, job_id, previous_state, state, reason, note,
                        detected_at, subject, sequence, details)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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


class Events:
    """The events table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    def append(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
        """Inside the caller's transaction: record `events`."""
        conn.executemany(_INSERT_EVENT, [event_to_row(event) for event in events])

    def job_history(self, job_id: str, source: str | None) -> list[HistoryEntry]:
        args = {"job_id": job_id, "source": source}
        events = self._db.query_all("read the job history", _SELECT_HISTORY, args)
        deliveries: dict[str, list[AlertDelivery]] = {}
        for row in self._db.query_all("read the job history", _SELECT_HISTORY_ALERTS, args):
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
