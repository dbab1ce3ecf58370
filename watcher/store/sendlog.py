"""The send log: which messages went out on which channel and group, and when, so rate limits
and `group_interval` count the same after a reload or a restart as before it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime

from watcher.model import SentMessage
from watcher.store.database import Database
from watcher.store.rows import dt, ts


class SendLog:
    """The send_log table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    def record(
        conn: sqlite3.Connection, channel: str, group_keys: Sequence[str], alerts: int, stamp: str
    ) -> None:
        """Inside the caller's transaction (the one marking its alerts sent): one message."""
        conn.execute(
            "INSERT INTO send_log (channel, group_keys, alerts, sent_at) VALUES (?, ?, ?, ?)",
            (channel, json.dumps(list(group_keys)), alerts, stamp),
        )

    def since(self, since: datetime) -> list[SentMessage]:
        rows = self._db.query_all(
            "read the send log",
            "SELECT channel, group_keys, sent_at FROM send_log WHERE sent_at >= ? ORDER BY id",
            (ts(since),),
        )
        return [
            SentMessage(row[0], tuple(str(k) for k in json.loads(row[1])), dt(row[2]))
            for row in rows
        ]
