"""Noise control predicates and messages: group keys, silences, quiet windows (pure, no clock)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

from watcher.engine.noise import group_key, labels_for, quiet_until, render_group, silenced_by
from watcher.model import (
    Alert,
    BodyFormat,
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


def test_group_message_lists_each_job_with_a_tail() -> None:
    items = [item(n) for n in range(1, 26)]
    message = render_group("ops", ["source=prod|rule=failures"], items)
    assert message.title == "25 voice job alerts (rule failures, source prod)"
    lines = message.body.splitlines()
    # Alerts queued before facts were kept: their title stands for them (see test_messages).
    assert lines[2] == "- AUDIT_FAILED: voice job job1"
    assert len(lines) == 2 + 20 + 2 + 2  # summary, 20 jobs, where/when, the tail
    assert lines[-3] == "source prod · detected 2026-11-25 12:00 UTC"
    assert lines[-1].startswith("+5 more not listed here; all of them: metastudio-watcher alerts")
    assert message.notify_type is NotifyType.FAILURE


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
