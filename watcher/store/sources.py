"""Sources: one row per configured source, with its baseline, how its polls went (for `status`
and health) and the engine's memory (`tracking`: stuck reminders, failures, batches).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from watcher.store.database import Database
from watcher.store.rows import dt_or_none, ts


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


class Sources:
    """The sources table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def has_baseline(self, source: str) -> bool:
        row = self._db.query_one(
            "read the source", "SELECT baseline_at FROM sources WHERE name = ?", (source,)
        )
        return row is not None and row[0] is not None

    def load_tracking(self, source: str) -> dict[str, Any] | None:
        row = self._db.query_one(
            "read the source", "SELECT tracking FROM sources WHERE name = ?", (source,)
        )
        rows = self._db.query_all(
            "read the batch memory",
            "SELECT name, memory FROM batch_memory WHERE source = ?",
            (source,),
        )
        value = json.loads(row[0]) if row is not None and row[0] is not None else None
        if not isinstance(value, dict):
            if not rows:
                return None
            value = {}
        if rows:
            # An older blob's batches, if any, are overridden by the rows (see save_batches).
            value["batches"] = {**value.get("batches", {}), **{n: json.loads(m) for n, m in rows}}
        return value

    @staticmethod
    def save_batches(
        conn: sqlite3.Connection,
        source: str,
        changed: Mapping[str, Any],
        removed: Iterable[str],
        *,
        complete: bool,
    ) -> None:
        """Inside the caller's transaction: the batch memories that changed (`complete`:
        these are all of them, replacing whatever rows the source had)."""
        if complete:
            conn.execute("DELETE FROM batch_memory WHERE source = ?", (source,))
        else:
            conn.executemany(
                "DELETE FROM batch_memory WHERE source = ? AND name = ?",
                [(source, name) for name in removed],
            )
        conn.executemany(
            "INSERT INTO batch_memory (source, name, memory) VALUES (?, ?, ?) "
            "ON CONFLICT (source, name) DO UPDATE SET memory = excluded.memory",
            [(source, name, json.dumps(memory)) for name, memory in changed.items()],
        )

    @staticmethod
    def ensure(conn: sqlite3.Connection, source: str) -> None:
        """Inside the caller's transaction: the source has a row."""
        conn.execute("INSERT OR IGNORE INTO sources (name) VALUES (?)", (source,))

    @staticmethod
    def mark_cycle(conn: sqlite3.Connection, source: str, stamp: str) -> None:
        """Inside the caller's transaction: a complete cycle landed (the first is the baseline)."""
        conn.execute(
            "INSERT INTO sources (name, baseline_at, last_cycle_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET "
            "baseline_at = coalesce(baseline_at, excluded.baseline_at), "
            "last_cycle_at = excluded.last_cycle_at",
            (source, stamp, stamp),
        )

    @staticmethod
    def save_tracking(conn: sqlite3.Connection, source: str, tracking: Mapping[str, Any]) -> None:
        """Inside the caller's transaction: the engine's memory as of this cycle."""
        conn.execute(
            "UPDATE sources SET tracking = ? WHERE name = ?",
            (json.dumps(dict(tracking), sort_keys=True), source),
        )

    def record_poll(self, source: str, ok: bool, now: datetime, error: str | None) -> None:
        stamp = ts(now)
        with self._db.transaction(f"record the poll of source {source!r}") as conn:
            self.ensure(conn, source)
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

    def status(self) -> list[SourceStatus]:
        rows = self._db.query_all(
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
