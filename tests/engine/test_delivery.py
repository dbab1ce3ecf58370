"""Retry timing decisions: backoff, giving up by time spent trying, bounded wall-clock reads."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from watcher.engine.delivery import after_failure, first_wait, gap_since_last_attempt
from watcher.model import Alert, BodyFormat, DeliveryConfig, NotifyType, OutboxItem, OutboxStatus

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = DeliveryConfig(
    retry_initial=timedelta(seconds=30),
    retry_max=timedelta(minutes=10),
    give_up_after=timedelta(hours=24),
)
ALERT = Alert("k", "prod", "j1", "r", "ops", "t", "b", NotifyType.FAILURE, BodyFormat.TEXT, NOW)


def failed_item(retry_in: float, delay: float | None = 60.0, elapsed: float = 0.0) -> OutboxItem:
    return OutboxItem(
        1,
        ALERT,
        OutboxStatus.PENDING,
        attempts=3,
        next_attempt_at=NOW + timedelta(seconds=retry_in),
        retry_delay=delay,
        elapsed=elapsed,
    )


def test_a_never_failed_alert_is_due_at_once_whatever_its_stored_time() -> None:
    # Queued "in the future" by a clock that then stepped back ten minutes.
    assert first_wait(failed_item(600, delay=None), NOW) == 0.0


def test_stored_retry_time_is_trusted_up_to_the_delay_chosen() -> None:
    assert first_wait(failed_item(20), NOW) == 20.0
    # The clock stepped back 10 min since the failure: wait one backoff, not 11 minutes.
    assert first_wait(failed_item(60 + 600), NOW) == 60.0
    # Stepped forward 25 h: simply due.
    assert first_wait(failed_item(-25 * 3600), NOW) == 0.0


def test_gap_since_the_last_attempt_is_bounded_by_the_backoff() -> None:
    assert gap_since_last_attempt(failed_item(0), NOW) == 60.0  # waited the whole backoff
    assert gap_since_last_attempt(failed_item(45), NOW) == 15.0
    # Down for 25 hours (or the clock jumped): counts as one backoff of trying, not 25 h.
    assert gap_since_last_attempt(failed_item(-25 * 3600), NOW) == 60.0
    assert gap_since_last_attempt(failed_item(700), NOW) == 0.0  # clock stepped back
    assert gap_since_last_attempt(failed_item(0, delay=None), NOW) == 0.0


def test_give_up_after_counts_time_spent_trying() -> None:
    rng = random.Random(1)
    item = failed_item(0)
    alive = after_failure(item, 24 * 3600 - 1, POLICY, rng)
    assert (alive.dead, alive.reason.startswith("attempt 4 failed; retry in")) == (False, True)
    dead = after_failure(item, 24 * 3600, POLICY, rng)
    assert (dead.dead, dead.delay) == (True, None)
    assert dead.reason == "gave up after 4 attempts over 86400s of trying"


@given(st.integers(min_value=0, max_value=60), st.integers(min_value=0, max_value=2**31))
def test_backoff_stays_between_a_tenth_of_the_initial_delay_and_the_cap(
    attempts: int, seed: int
) -> None:
    item = replace(failed_item(0), attempts=attempts)
    decision = after_failure(item, 0.0, POLICY, random.Random(seed))
    assert decision.delay is not None
    ceiling = min(600.0, 30.0 * 2 ** min(attempts, 30))
    assert 3.0 <= decision.delay <= max(3.0, ceiling)
