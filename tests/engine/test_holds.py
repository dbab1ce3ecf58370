"""engine.holds: why each pending alert waits, and until when (pure, no clock)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

from tests.engine.test_noise import item
from watcher.engine.holds import Hold, explain_holds
from watcher.model import ChannelPolicy, QuietHours, RuleConfig, SentMessage, Silence

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULE = RuleConfig(name="failures", on=("AUDIT_FAILED",), notify=("ops",))


def holds(items: list, **kw: object) -> dict[int, Hold]:  # type: ignore[type-arg]
    args: dict[str, object] = {"rules": {"failures": RULE}, "policies": {}}
    args.update(kw)
    return explain_holds(items, NOW, **args)  # type: ignore[arg-type]


def test_nothing_holds_an_alert_that_goes_out_now() -> None:
    assert holds([item(1), item(2)]) == {}


def test_quiet_hours_hold_until_the_window_ends() -> None:
    quiet = QuietHours(time(10, 0), time(14, 30), "UTC")
    got = holds([item(1)], policies={"ops": ChannelPolicy(quiet_hours=quiet)})
    assert got == {1: Hold(NOW.replace(hour=14, minute=30), "quiet hours on channel ops")}


def test_urgent_rules_are_not_held_by_quiet_hours() -> None:
    quiet = QuietHours(time(10, 0), time(14, 30), "UTC")
    urgent = replace(RULE, urgent=True)
    got = holds(
        [item(1)], rules={"failures": urgent}, policies={"ops": ChannelPolicy(quiet_hours=quiet)}
    )
    assert got == {}


def test_a_silence_holds_until_it_ends() -> None:
    silence = Silence(7, (("voice_name", "shop-*"),), NOW, NOW + timedelta(hours=2))
    shop = item(1)
    shop = replace(shop, alert=replace(shop.alert, labels={"voice_name": "shop-1"}))
    got = holds([shop, item(2)], silences=[silence])
    assert got == {1: Hold(NOW + timedelta(hours=2), "silence 7")}


def test_a_failed_send_is_held_until_its_retry() -> None:
    retry = replace(
        item(1), attempts=2, next_attempt_at=NOW + timedelta(minutes=4), retry_delay=300.0
    )
    later = item(2, job="job1")  # same job, same channel: waits behind it
    got = holds([retry, later])
    assert got == {
        1: Hold(NOW + timedelta(minutes=4), "attempt 3 in 240s"),
        2: Hold(
            NOW + timedelta(minutes=4), "waits for alert 1 about the same job (attempt 3 in 240s)"
        ),
    }


def test_grouping_holds_until_group_wait_is_over() -> None:
    rule = replace(RULE, group_wait=timedelta(minutes=5))
    got = holds([item(1, created=NOW - timedelta(minutes=1))], rules={"failures": rule})
    assert got == {1: Hold(NOW + timedelta(minutes=4), "grouping (source=prod|rule=failures)")}


def test_rate_limit_holds_until_the_minute_has_room() -> None:
    sent = [
        SentMessage("ops", ("other",), NOW - timedelta(seconds=50)),
        SentMessage("ops", ("other",), NOW - timedelta(seconds=20)),
    ]
    got = holds([item(1)], policies={"ops": ChannelPolicy(max_per_minute=2)}, sent=sent)
    assert got == {1: Hold(NOW + timedelta(seconds=10), "rate limit of 2/min on channel ops")}
