"""Poll cursors: what a source's next cycle needs (watermark, strategy, demotions), so a `once`
from cron is as cheap as the daemon, and how far a scan in flight has got, for `status`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from watcher.store.database import Database
from watcher.store.rows import dt_or_none, ts


@dataclass(frozen=True, slots=True)
class PollStrategy:
    """A source's polling strategy (`changed_since`, `active_set`, `full_only`) and the
    scan in flight (`pages_done` is None when none is)."""

    strategy: str | None
    pages_done: int | None
    pages_total: int | None
    baseline: bool
    progress_at: datetime | None


class Cursors:
    """The poll_cursors table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def load(self, source: str) -> dict[str, Any] | None:
        row = self._db.query_one(
            "read the poll cursor", "SELECT cursor FROM poll_cursors WHERE source = ?", (source,)
        )
        if row is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else None

    def save(self, source: str, cursor: Mapping[str, Any], strategy: str) -> None:
        with self._db.transaction(f"save the poll cursor of source {source!r}") as conn:
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
        with self._db.transaction(f"save the scan progress of source {source!r}") as conn:
            conn.execute(
                "INSERT INTO poll_cursors (source, scan_pages_done, scan_pages_total, "
                "scan_baseline, scan_updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (source) DO UPDATE SET scan_pages_done = excluded.scan_pages_done, "
                "scan_pages_total = excluded.scan_pages_total, "
                "scan_baseline = excluded.scan_baseline, "
                "scan_updated_at = excluded.scan_updated_at",
                (source, done, total, int(baseline), ts(now)),
            )

    def strategies(self) -> dict[str, PollStrategy]:
        rows = self._db.query_all(
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
