"""Bounded storage: a soak of 100k events over 60 days with `retention: 30d` keeps the state
file within a stated bound, pruning in small batches as the daemon does.

Figures for README (measured here, printed with `-s`):
    .venv/bin/pytest tests/test_retention.py -q -s
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from watcher.daemon import prune_history
from watcher.model import (
    Alert,
    BodyFormat,
    Event,
    EventKind,
    Job,
    NotifyType,
    OutboxStatus,
)
from watcher.store import Store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EVENTS = 100_000
DAYS = 60
RETENTION = timedelta(days=30)
# Measured: an event with its alert and their indexes takes about 1.1 KiB, so 30 days of this
# traffic (50k of each) is ~56 MiB, plus a WAL as large as one day's transaction (~7 MiB): the
# file levels off at 63 MiB. Without pruning the same soak reaches 112 MiB, +1.8 MiB a day.
BOUND = 72 * 1024 * 1024


def file_size(path: Path) -> int:
    return sum(
        os.path.getsize(f"{path}{suffix}")
        for suffix in ("", "-wal", "-shm")
        if os.path.exists(f"{path}{suffix}")
    )


def day_of_traffic(day: int, per_day: int) -> tuple[list[Event], list[Alert]]:
    at = T0 + timedelta(days=day)
    events, alerts = [], []
    for n in range(per_day):
        job = Job(
            job_id=f"{day:03d}{n:05d}0123456789abc",
            state="AUDIT_FAILED",
            voice_name=f"shop-voice-{n % 50}",
            batch_name=f"batch-{day}",
            job_failed_reason="the recording has background noise",
        )
        event = Event(
            EventKind.TRANSITION,
            "prod",
            at + timedelta(seconds=n),
            f"job {job.job_id} went from AUDITING to AUDIT_FAILED",
            job=job,
            previous_state="AUDITING",
        )
        events.append(event)
        alerts.append(
            Alert(
                event.key,
                "prod",
                job.job_id,
                "failures",
                "ops",
                f"AUDIT_FAILED: voice job {job.job_id} ({job.voice_name})",
                "the recording has background noise",
                NotifyType.FAILURE,
                BodyFormat.TEXT,
                event.detected_at,
                group_key="source=prod|rule=failures",
            )
        )
    return events, alerts


async def soak(db: Path, *, prune: bool) -> tuple[dict[int, int], int, Store]:
    """Sixty days of traffic, each day's alerts sent; pruned daily as the daemon does when
    `prune`. Returns the file size after each day, the rows pruned, and the store (open)."""
    per_day = -(-EVENTS // DAYS)  # at least EVENTS in all
    sizes: dict[int, int] = {}
    pruned = 0
    store = Store.open(str(db), exclusive=True)
    for day in range(DAYS):
        now = T0 + timedelta(days=day, hours=23)
        events, alerts = day_of_traffic(day, per_day)
        store.commit_events("prod", events, alerts, now=now, tracking={})
        sent = store.list_outbox([OutboxStatus.PENDING])
        store.mark_sent_many(
            [i.id for i in sent], now, channel="ops", group_keys=["source=prod|rule=failures"]
        )
        if prune:
            pruned += await prune_history(store, now - RETENTION)
        sizes[day] = file_size(db)
    return sizes, pruned, store


async def test_retention_keeps_the_file_bounded_under_a_soak_of_100k_events(
    tmp_path: Path,
) -> None:
    per_day = -(-EVENTS // DAYS)
    sizes, pruned, store = await soak(tmp_path / "soak.db", prune=True)
    with store:
        counts = store.outbox_counts()
        kept_events = store._query_one("count", "SELECT count(*) FROM events")[0]
    unpruned, _, other = await soak(tmp_path / "unpruned.db", prune=False)
    other.close()
    mib = 2**20
    print(
        f"\nretention soak: {per_day * DAYS} events over {DAYS} days, retention 30d: "
        f"largest file {max(sizes.values()) / mib:.1f} MiB, final {sizes[DAYS - 1] / mib:.1f} "
        f"MiB, {pruned} rows pruned, {kept_events} events kept; without pruning "
        f"{unpruned[DAYS - 1] / mib:.1f} MiB, growing "
        f"{(unpruned[DAYS - 1] - unpruned[DAYS - 11]) / 10 / mib:.1f} MiB a day"
    )
    assert max(sizes.values()) <= BOUND
    # Once the window is full the file stops growing: freed pages are reused.
    assert sizes[DAYS - 1] <= sizes[35] * 1.02
    # Without pruning the same traffic keeps growing, past the bound.
    assert unpruned[DAYS - 1] > BOUND
    assert unpruned[DAYS - 1] > unpruned[35] * 1.4
    # What is left is the last 30 days, no more and no less.
    assert kept_events == per_day * 30
    # Sent alerts age from their send (23:00), events from detection: one day more of them.
    assert counts[OutboxStatus.SENT] == per_day * 31
    assert counts[OutboxStatus.PENDING] == 0
