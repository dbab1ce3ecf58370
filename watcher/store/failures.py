"""Failure details: what the detail APIs (audit result, op logs) said about one failure, kept
once per failure so a restart does not ask again, and forgotten after FAILURE_DETAIL_DAYS.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from watcher.store.database import Database
from watcher.store.rows import ts

FAILURE_DETAIL_DAYS = 90


class FailureDetails:
    """The failure_details table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, source: str, failure: str) -> dict[str, Any] | None:
        row = self._db.query_one(
            "read a failure detail",
            "SELECT why FROM failure_details WHERE source = ? AND failure = ?",
            (source, failure),
        )
        return dict(json.loads(row[0])) if row is not None else None

    def save(self, source: str, failure: str, why: Mapping[str, Any], now: datetime) -> None:
        with self._db.transaction("keep a failure detail") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO failure_details (source, failure, why, fetched_at) "
                "VALUES (?, ?, ?, ?)",
                (source, failure, json.dumps(dict(why), ensure_ascii=False), ts(now)),
            )
            # A failure is re-detected only within days (a crash before its commit): keep
            # 90 days, so the table stays small however long the watcher runs.
            conn.execute(
                "DELETE FROM failure_details WHERE fetched_at < ?",
                (ts(now - timedelta(days=FAILURE_DETAIL_DAYS)),),
            )
