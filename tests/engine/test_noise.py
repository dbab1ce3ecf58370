"""Noise control decisions: grouping, rate limits, quiet hours and silences (pure, no clock)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

from watcher.engine.noise import group_key, labels_for, plan, quiet_until, silenced_by
from watcher.model import (
    Alert,
    BodyFormat,
    ChannelPolicy,
    Event,
    EventKind,
    Job,
    NotifyType,
    OutboxItem,
    OutboxStatus,
    QuietHours,
    RuleConfig,
    Silence,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULE = RuleConfig(name="failures", on=("AUDIT_FAILED",), notify=("ops",))


def item(
    n: int,
    *,
    job: str | None = None,
    rule: str = "failures",
    channel: str = "ops",
    key: str = "source=prod|rule=failures",
    created: datetime = NOW,
    kind: NotifyType = NotifyType.FAILURE,
) -> OutboxItem:
    alert = Alert(
        event_key=f"k{n}",
        source="prod",
        job_id=job or f"job{n}",
        rule=rule,
        channel=channel,
        title=f"AUDIT_FAILED: voice job job{n}",
        body="body",
        notify_type=kind,
        body_format=BodyFormat.TEXT,
        created_at=created,
        group_key=key,
    )
    return OutboxItem(n, alert, OutboxStatus.PENDING, 0, created)


def run_plan(items: list[OutboxItem], **kw: object) -> tuple[list[list[int]], list[int]]:
    args: dict[str, object] = {
        "rules": {"failures": RULE},
        "policies": {},
        "recent_sends": {},
        "group_sent": {},
    }
    args.update(kw)
    p = plan(items, NOW, **args)  # type: ignore[arg-type]
    return [[i.id for i in m.items] for m in p.messages], [h.item_id for h in p.held]


def test_default_rule_groups_by_source_and_rule_but_waits_for_nothing() -> None:
    messages, held = run_plan([item(1), item(2), item(3)])
    assert messages == [[1, 2, 3]]
    assert held == []


def test_group_message_lists_each_job_with_a_tail() -> None:
    items = [item(n) for n in range(1, 26)]
    p = plan(items, NOW, rules={"failures": RULE}, policies={}, recent_sends={}, group_sent={})
    (message,) = p.messages
    assert message.title == "25 voice job alerts (rule failures, source prod)"
    lines = message.body.splitlines()
    # Alerts queued before facts were kept: their title stands for them (see test_messages).
    assert lines[2] == "- AUDIT_FAILED: voice job job1"
    assert len(lines) == 2 + 20 + 2
    assert lines[-1].startswith("+5 more not listed here; all of them: metastudio-watcher alerts")
    assert message.notify_type is NotifyType.FAILURE


def test_single_alert_goes_out_as_rendered() -> None:
    p = plan([item(1)], NOW, rules={"failures": RULE}, policies={}, recent_sends={}, group_sent={})
    assert p.messages[0].title == "AUDIT_FAILED: voice job job1"
    assert p.messages[0].body == "body"


def test_group_wait_holds_until_the_window_closes() -> None:
    rule = RuleConfig(name="failures", on=("*",), notify=("ops",), group_wait=timedelta(minutes=1))
    items = [item(1, created=NOW - timedelta(seconds=30)), item(2)]
    p = plan(items, NOW, rules={"failures": rule}, policies={}, recent_sends={}, group_sent={})
    assert p.messages == ()
    assert p.next_wake == NOW + timedelta(seconds=30)
    later = plan(
        items,
        NOW + timedelta(seconds=31),
        rules={"failures": rule},
        policies={},
        recent_sends={},
        group_sent={},
    )
    assert [[i.id for i in m.items] for m in later.messages] == [[1, 2]]


def test_group_interval_spaces_messages_of_one_group() -> None:
    rule = RuleConfig(
        name="failures", on=("*",), notify=("ops",), group_interval=timedelta(minutes=5)
    )
    sent = {("ops", "source=prod|rule=failures"): NOW - timedelta(minutes=2)}
    messages, held = run_plan([item(1)], rules={"failures": rule}, group_sent=sent)
    assert messages == []
    assert held == [1]


def test_rate_limit_folds_the_excess_into_the_last_allowed_message() -> None:
    items = [item(n, key=f"k{n}") for n in range(1, 6)]
    policy = {"ops": ChannelPolicy(max_per_minute=3)}
    recent = {"ops": [NOW - timedelta(seconds=10)]}
    messages, held = run_plan(items, policies=policy, recent_sends=recent)
    assert messages == [[1], [2, 3, 4, 5]]
    assert held == []


def test_rate_limit_reached_holds_everything_never_drops() -> None:
    policy = {"ops": ChannelPolicy(max_per_minute=2)}
    recent = {"ops": [NOW - timedelta(seconds=50), NOW - timedelta(seconds=5)]}
    p = plan(
        [item(1, key="a"), item(2, key="b")],
        NOW,
        rules={"failures": RULE},
        policies=policy,
        recent_sends=recent,
        group_sent={},
    )
    assert p.messages == ()
    assert sorted(h.item_id for h in p.held) == [1, 2]
    assert p.next_wake == NOW + timedelta(seconds=10)


def test_quiet_hours_hold_non_urgent_alerts_and_keep_job_order() -> None:
    quiet = {"ops": ChannelPolicy(quiet_hours=QuietHours(time(11, 0), time(13, 0)))}
    urgent = RuleConfig(name="urgent", on=("*",), notify=("ops",), urgent=True)
    items = [
        item(1, job="a"),
        item(2, job="a", rule="urgent", key="u"),  # same job: must wait for item 1
        item(3, job="b", rule="urgent", key="u"),
    ]
    messages, held = run_plan(items, rules={"failures": RULE, "urgent": urgent}, policies=quiet)
    assert messages == [[3]]
    assert sorted(held) == [1, 2]


def test_quiet_window_across_midnight_in_a_timezone() -> None:
    quiet = QuietHours(time(22, 0), time(7, 0), "Asia/Shanghai")
    # 15:00 UTC is 23:00 in Shanghai: quiet until 07:00 Shanghai = 23:00 UTC.
    at = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
    assert quiet_until(quiet, at) == datetime(2026, 11, 25, 23, 0, tzinfo=UTC)
    # 21:00 UTC is 05:00 next day in Shanghai: still quiet until 23:00 UTC.
    assert quiet_until(quiet, at + timedelta(hours=6)) == datetime(2026, 11, 25, 23, 0, tzinfo=UTC)
    # 01:00 UTC is 09:00 in Shanghai: not quiet.
    assert quiet_until(quiet, datetime(2026, 11, 26, 1, 0, tzinfo=UTC)) is None


def test_group_key_uses_rule_fields() -> None:
    rule = RuleConfig(name="r", on=("*",), notify=("ops",), group_by=("source", "batch_name"))
    job = Job(job_id="j", state="FAILED", batch_name="spring-sale")
    event = Event(EventKind.TRANSITION, "prod", NOW, "x", job=job)
    assert group_key(event, rule) == "source=prod|batch_name=spring-sale"


def test_silences_match_every_matcher_while_active() -> None:
    job = Job(job_id="j1", state="AUDIT_FAILED", voice_name="shop-anna")
    event = Event(EventKind.TRANSITION, "prod", NOW, "x", job=job)
    alert = replace(item(1).alert, labels=labels_for(event))
    s = Silence(1, (("voice_name", "shop-*"), ("rule", "failures")), NOW, NOW + timedelta(hours=2))
    assert silenced_by(alert, [s], NOW) == s
    assert silenced_by(alert, [s], NOW + timedelta(hours=2)) is None
    other = Silence(2, (("voice_name", "news-*"),), NOW, NOW + timedelta(hours=2))
    assert silenced_by(alert, [other], NOW) is None
    unknown_field = Silence(3, (("batch_name", "*"),), NOW, NOW + timedelta(hours=2))
    assert silenced_by(alert, [unknown_field], NOW) is None  # the job has no batch


def test_labels_carry_job_fields_for_matching() -> None:
    job = Job(job_id="j1", state="FAILED", voice_name="v", extra={"tag": "NEWS"})
    event = Event(EventKind.TRANSITION, "prod", NOW, "x", job=job, previous_state="PROCESSING")
    assert labels_for(event) == {
        "source": "prod",
        "kind": "transition",
        "job_id": "j1",
        "voice_name": "v",
        "state": "FAILED",
        "previous_state": "PROCESSING",
        "tag": "NEWS",
    }


def test_a_group_waiting_for_more_holds_later_alerts_about_its_jobs() -> None:
    slow = RuleConfig(name="failures", on=("*",), notify=("ops",), group_wait=timedelta(minutes=1))
    fast = RuleConfig(name="done", on=("*",), notify=("ops",))
    items = [
        item(1, job="a"),  # grouped, waits a minute
        item(2, job="a", rule="done", key="done"),  # about the same job: must not overtake
        item(3, job="b", rule="done", key="done2"),
    ]
    p = plan(
        items,
        NOW,
        rules={"failures": slow, "done": fast},
        policies={},
        recent_sends={},
        group_sent={},
    )
    assert [[i.id for i in m.items] for m in p.messages] == [[3]]
    assert sorted(h.item_id for h in p.held) == [1, 2]
    assert p.next_wake == NOW + timedelta(minutes=1)
