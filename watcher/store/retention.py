"""Retention: which history may be forgotten (events, sent, dead and silenced alerts, send-log
rows older than a cut-off; never a pending alert), removed oldest first in small batches.
"""

from __future__ import annotations

from datetime import datetime

from watcher.store.database import Database
from watcher.store.rows import ts

# Oldest first, by the indexes of migration v5; pending alerts are never history.
_PRUNE = (
    "DELETE FROM events WHERE id IN "
    "(SELECT id FROM events WHERE detected_at < ? ORDER BY detected_at LIMIT ?)",
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE updated_at < ? "
    "AND status IN ('sent', 'dead', 'silenced') ORDER BY updated_at LIMIT ?)",
    "DELETE FROM send_log WHERE id IN "
    "(SELECT id FROM send_log WHERE sent_at < ? ORDER BY sent_at LIMIT ?)",
)


def prune(db: Database, before: datetime, batch: int) -> int:
    """One batch, one short transaction; return how many rows went."""
    stamp = ts(before)
    with db.transaction("prune old history") as conn:
        removed = 0
        for sql in _PRUNE:
            removed += conn.execute(sql, (stamp, batch)).rowcount
    return removed
