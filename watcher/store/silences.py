"""Silences: label matchers and a time window during which matching alerts are recorded as
silenced instead of sent; added and expired by the CLI, read by the daemon every cycle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from watcher.model import Silence
from watcher.store.database import Database
from watcher.store.rows import dt, ts


class Silences:
    """The silences table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(
        self,
        matchers: Sequence[tuple[str, str]],
        starts_at: datetime,
        ends_at: datetime,
        comment: str,
        now: datetime,
    ) -> Silence:
        with self._db.transaction("add the silence") as conn:
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

    def find(self, active_at: datetime | None) -> list[Silence]:
        rows = self._db.query_all(
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

    def expire(self, silence_id: int, now: datetime) -> bool:
        with self._db.transaction("expire the silence") as conn:
            cursor = conn.execute(
                "UPDATE silences SET ends_at = :now WHERE id = :id AND ends_at > :now",
                {"now": ts(now), "id": silence_id},
            )
            return cursor.rowcount > 0
