"""Delivery decisions: which outbox items may go now, and what to do after a failed send.

Pure: the shell passes the pending items, the clock reading and a random source.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from watcher.model import DeliveryConfig, OutboxItem


def deliverable(pending: Sequence[OutboxItem], now: datetime) -> list[OutboxItem]:
    """Due items, oldest first, holding back any item whose job has an older one pending on
    the same channel: alerts about one job arrive in the order they were detected."""
    blocked: set[tuple[str, str]] = set()
    out: list[OutboxItem] = []
    for item in sorted(pending, key=lambda i: i.id):
        alert = item.alert
        lane = (alert.channel, f"{alert.source}|{alert.job_id}") if alert.job_id else None
        if lane is not None and lane in blocked:
            continue
        if item.next_attempt_at <= now:
            out.append(item)
        if lane is not None:
            # Anything later in this lane waits for this one, due or not.
            blocked.add(lane)
    return out


@dataclass(frozen=True, slots=True)
class AfterFailure:
    """Retry at `retry_at`, or give up (`dead`) with the reason in words."""

    dead: bool
    retry_at: datetime | None
    reason: str


def after_failure(
    item: OutboxItem, now: datetime, policy: DeliveryConfig, rng: random.Random
) -> AfterFailure:
    """Exponential backoff with full jitter, capped; dead-letter once `give_up_after` passed."""
    attempts = item.attempts + 1
    age = now - (item.queued_at or item.alert.created_at)
    if age >= policy.give_up_after:
        return AfterFailure(True, None, f"gave up after {attempts} attempts over {age}")
    ceiling = min(
        policy.retry_max.total_seconds(),
        policy.retry_initial.total_seconds() * (2 ** min(attempts - 1, 30)),
    )
    # Full jitter, but never sooner than a tenth of the initial delay: no hot loop.
    floor = policy.retry_initial.total_seconds() / 10
    delay = max(floor, rng.uniform(0, ceiling))
    return AfterFailure(
        False, now + timedelta(seconds=delay), f"attempt {attempts} failed; retry in {delay:.0f}s"
    )
