"""The outbox: every alert queued for a channel, durable until it is sent, dead-lettered or
silenced, with its attempts, backoff and the time spent trying.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from watcher.errors import StoreError
from watcher.model import Alert, OutboxItem, OutboxStatus
from watcher.store.database import Database
from watcher.store.rows import alert_to_row, row_to_item, ts

_INSERT_ALERT = """
    INSERT OR IGNORE INTO outbox (alert_id, event_key, source, job_id, rule, channel, title,
                                  body, notify_type, body_format, created_at, next_attempt_at,
                                  group_key, labels, facts, updated_at, queued_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_SELECT_OUTBOX = """
    SELECT id, event_key, source, job_id, rule, channel, title, body, notify_type, body_format,
           created_at, status, attempts, next_attempt_at, last_error, sent_at, queued_at,
           group_key, labels, retry_delay_s, elapsed_s, facts
    FROM outbox WHERE status IN (SELECT value FROM json_each(?)) ORDER BY id
"""


class Outbox:
    """The outbox table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    def enqueue(conn: sqlite3.Connection, alerts: Sequence[Alert], stamp: str) -> int:
        """Inside the caller's transaction: queue `alerts`, due at once; an alert id already
        queued is skipped. Return how many were new."""
        before = conn.total_changes
        conn.executemany(_INSERT_ALERT, [(*alert_to_row(alert), stamp, stamp) for alert in alerts])
        return conn.total_changes - before

    @staticmethod
    def mark_sent(conn: sqlite3.Connection, item_ids: Sequence[int], stamp: str) -> None:
        """Inside the caller's transaction: the alerts went out."""
        conn.executemany(
            "UPDATE outbox SET status = 'sent', attempts = attempts + 1, sent_at = ?, "
            "last_error = NULL, updated_at = ? WHERE id = ?",
            [(stamp, stamp, item_id) for item_id in item_ids],
        )

    def mark_silenced(self, item_id: int, silence_id: int, now: datetime) -> None:
        self._update_item(
            item_id,
            "mark the alert silenced",
            "UPDATE outbox SET status = 'silenced', silence_id = ?, updated_at = ? WHERE id = ?",
            (silence_id, ts(now)),
        )

    def mark_failed(
        self,
        item_id: int,
        now: datetime,
        error: str,
        next_attempt_at: datetime,
        retry_delay: float | None,
        elapsed: float | None,
    ) -> None:
        self._update_item(
            item_id,
            "record the failed delivery",
            "UPDATE outbox SET status = 'pending', attempts = attempts + 1, last_error = ?, "
            "next_attempt_at = ?, updated_at = ?, retry_delay_s = ?, "
            "elapsed_s = coalesce(?, elapsed_s) WHERE id = ?",
            (error, ts(next_attempt_at), ts(now), retry_delay, elapsed),
        )

    def mark_dead(self, item_id: int, now: datetime, error: str, elapsed: float | None) -> None:
        self._update_item(
            item_id,
            "give up on the alert",
            "UPDATE outbox SET status = 'dead', attempts = attempts + 1, last_error = ?, "
            "updated_at = ?, elapsed_s = coalesce(?, elapsed_s) WHERE id = ?",
            (error, ts(now), elapsed),
        )

    def retry_dead(self, item_id: int | None, now: datetime) -> int:
        stamp = ts(now)
        with self._db.transaction("requeue dead alerts") as conn:
            cursor = conn.execute(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = :now, "
                "updated_at = :now, queued_at = :now, retry_delay_s = NULL, elapsed_s = 0 "
                "WHERE status = 'dead' AND (:id IS NULL OR id = :id)",
                {"now": stamp, "id": item_id},
            )
            return cursor.rowcount

    def with_status(self, statuses: Collection[OutboxStatus]) -> list[OutboxItem]:
        wanted = json.dumps([OutboxStatus(status).value for status in statuses])
        rows = self._db.query_all("read the outbox", _SELECT_OUTBOX, (wanted,))
        return [row_to_item(row) for row in rows]

    def of_group(
        self, channel: str, group_keys: Collection[str], first_id: int, last_id: int
    ) -> list[OutboxItem]:
        rows = self._db.query_all(
            "read the outbox",
            _SELECT_OUTBOX.replace(
                "WHERE status IN (SELECT value FROM json_each(?))",
                "WHERE channel = ? AND (group_key IN (SELECT value FROM json_each(?)) OR ? = 0) "
                "AND id BETWEEN ? AND ?",
            ),
            (channel, json.dumps(sorted(group_keys)), len(group_keys), first_id, last_id),
        )
        return [row_to_item(row) for row in rows]

    def counts(self) -> dict[OutboxStatus, int]:
        counts = dict.fromkeys(OutboxStatus, 0)
        for status, count in self._db.query_all(
            "read the outbox", "SELECT status, count(*) FROM outbox GROUP BY status"
        ):
            counts[OutboxStatus(status)] = count
        return counts

    def _update_item(self, item_id: int, what: str, sql: str, args: tuple[Any, ...]) -> None:
        with self._db.transaction(what) as conn:
            cursor = conn.execute(sql, (*args, item_id))
            if cursor.rowcount == 0:
                raise StoreError(
                    f"{self._db.path}: cannot {what}: outbox item {item_id} does not exist"
                )
