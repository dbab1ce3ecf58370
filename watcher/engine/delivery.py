"""Delivery timing decisions: when a backing-off alert may go again, and when to give up.

Pure: the shell passes the item, readings of the wall and monotonic clocks and a random source.
Time between attempts is measured on the monotonic clock, so wall-clock steps (NTP, a VM
resumed, an operator's `date -s`) neither stall a retry nor dead-letter an alert.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from watcher.model import DeliveryConfig, OutboxItem


def first_wait(item: OutboxItem, now: datetime) -> float:
    """Seconds an alert not yet scheduled by this process still waits, from what is stored.

    The stored retry time is wall-clock; trusted only up to the delay that was chosen, so a
    clock stepped back (or a restart after one) waits at most one backoff, and a clock stepped
    forward just makes it due. A never-failed alert is due at once.
    """
    if item.retry_delay is None:
        return 0.0
    remaining = (item.next_attempt_at - now).total_seconds()
    return min(max(remaining, 0.0), item.retry_delay)


def gap_since_last_attempt(item: OutboxItem, now: datetime) -> float:
    """Seconds since the last attempt, for an alert this process has not tried yet.

    Across a restart only the wall clock knows, so it is bounded: at most the backoff that
    was waited (time the watcher was down is not time spent trying).
    """
    if item.retry_delay is None:
        return 0.0
    elapsed = (now - item.next_attempt_at).total_seconds() + item.retry_delay
    return min(max(elapsed, 0.0), item.retry_delay)


@dataclass(frozen=True, slots=True)
class AfterFailure:
    """Retry in `delay` seconds, or give up (`dead`) with the reason in words."""

    dead: bool
    delay: float | None
    reason: str


def after_failure(
    item: OutboxItem, elapsed: float, policy: DeliveryConfig, rng: random.Random
) -> AfterFailure:
    """Exponential backoff with full jitter, capped; dead-letter once delivery has been tried
    for `give_up_after` (`elapsed` seconds, this attempt included)."""
    attempts = item.attempts + 1
    if elapsed >= policy.give_up_after.total_seconds():
        return AfterFailure(
            True, None, f"gave up after {attempts} attempts over {elapsed:.0f}s of trying"
        )
    ceiling = min(
        policy.retry_max.total_seconds(),
        policy.retry_initial.total_seconds() * (2 ** min(attempts - 1, 30)),
    )
    # Full jitter, but never sooner than a tenth of the initial delay: no hot loop.
    floor = policy.retry_initial.total_seconds() / 10
    delay = max(floor, rng.uniform(0, ceiling))
    return AfterFailure(False, delay, f"attempt {attempts} failed; retry in {delay:.0f}s")
