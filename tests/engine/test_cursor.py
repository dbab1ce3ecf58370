"""The poll cursor: demotions, their expiry and lifting, and its stored form."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from watcher.engine.cursor import Cursor, Strategy

START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def test_a_demotion_holds_then_expires_and_a_scheduled_full_scan_lifts_it() -> None:
    fresh = Cursor()
    hour = timedelta(hours=1)
    assert fresh.strategy_at(START) is Strategy.CHANGED_SINCE
    assert fresh.is_news(Strategy.CHANGED_SINCE)
    cursor = fresh.demote(Strategy.CHANGED_SINCE, now=START, hold=hour, reason="400")
    assert fresh == Cursor(), "a demotion is a new cursor, never an edit"
    assert cursor.strategy_at(START) is Strategy.ACTIVE_SET
    cursor = cursor.demote(Strategy.ACTIVE_SET, now=START, hold=hour, reason="ignored")
    # Demoted again (a re-verification that failed): not news, so not logged loudly.
    assert not cursor.is_news(Strategy.CHANGED_SINCE)
    cursor = cursor.demote(Strategy.CHANGED_SINCE, now=START, hold=hour, reason="400")
    assert cursor.strategy_at(START + timedelta(minutes=59)) is Strategy.FULL_ONLY
    assert cursor.strategy_at(START + hour) is Strategy.CHANGED_SINCE
    restored = Cursor.from_json(json.loads(json.dumps(cursor.to_json("s"))), "s")
    assert restored == cursor
    assert Cursor.from_json(cursor.to_json("s"), "other scope") == Cursor()
    kept = cursor.after_full_scan(now=START, server_time=START, count=3, reverify=False)
    assert kept.strategy_at(START) is Strategy.FULL_ONLY
    lifted = cursor.after_full_scan(now=START, server_time=START, count=3, reverify=True)
    assert lifted.strategy_at(START) is Strategy.CHANGED_SINCE
    assert cursor.strategy_at(START) is Strategy.FULL_ONLY
