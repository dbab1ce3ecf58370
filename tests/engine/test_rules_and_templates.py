"""Rule matching, routing to channels and template rendering (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from watcher.engine.alerts import route
from watcher.engine.rules import decide, match
from watcher.engine.templates import check_rule_templates, render
from watcher.model import (
    BodyFormat,
    Event,
    EventKind,
    Job,
    NotifyType,
    RuleConfig,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def event(
    state: str = "AUDIT_FAILED",
    previous: str | None = "AUDITING",
    kind: EventKind = EventKind.TRANSITION,
    **fields: object,
) -> Event:
    job = Job(
        job_id="j1",
        state=state,
        reject_times=1,
        voice_name=str(fields.pop("voice_name", "shop-anna")),
        job_type=str(fields.pop("job_type", "BASIC")),
        job_failed_code="MSS.00000012",
        job_failed_reason="audio too noisy",
        lastupdate_time=NOW,
        extra=dict(fields),
    )
    return Event(kind, "prod", NOW, "reason", job=job, previous_state=previous)


def rule(**kw: object) -> RuleConfig:
    base: dict[str, object] = {"name": "r", "on": ("AUDIT_FAILED",), "notify": ("ops",)}
    base.update(kw)
    return RuleConfig(**base)  # type: ignore[arg-type]


def test_rule_matches_on_new_state() -> None:
    assert decide(rule(), event()).matched
    assert not decide(rule(), event(state="SUCCEED")).matched


def test_star_matches_any_state() -> None:
    assert decide(rule(on=("*",)), event(state="WHATEVER")).matched


def test_from_requires_previous_state() -> None:
    r = rule(from_states=("AUDITING",))
    assert decide(r, event()).matched
    assert not decide(r, event(previous="PROCESSING")).matched
    assert not decide(r, event(previous=None, kind=EventKind.NEW)).matched


def test_where_supports_lists_and_globs() -> None:
    r = rule(where=(("job_type", ("BASIC", "MIDDLE")), ("voice_name", ("shop-*",))))
    assert decide(r, event()).matched
    assert not decide(r, event(voice_name="news-bob")).matched
    assert not decide(r, event(job_type="ADVANCE")).matched


def test_where_reads_extra_fields() -> None:
    r = rule(where=(("tag", ("ECOMMERCE",)),))
    assert decide(r, event(tag="ECOMMERCE")).matched
    assert not decide(r, event(tag="NEWS")).matched


def test_stuck_and_vanished_need_to_be_asked_for() -> None:
    assert not decide(rule(), event(kind=EventKind.STUCK)).matched
    assert decide(rule(events=(EventKind.STUCK,)), event(kind=EventKind.STUCK)).matched


def test_continue_false_stops_later_rules() -> None:
    rules = [rule(name="a", stop=True), rule(name="b")]
    assert [d.rule.name for d in match(rules, event()) if d.matched] == ["a"]
    rules = [rule(name="a"), rule(name="b")]
    assert [d.rule.name for d in match(rules, event()) if d.matched] == ["a", "b"]


def test_decision_says_why_not() -> None:
    d = decide(rule(), event(state="SUCCEED"))
    assert "SUCCEED" in d.reason


def test_route_makes_one_alert_per_rule_and_channel() -> None:
    routed = route([event()], [rule(notify=("ops", "mail")), rule(name="other", on=("FAILED",))])
    assert [(a.rule, a.channel) for a in routed.alerts] == [("r", "ops"), ("r", "mail")]
    assert len({a.alert_id for a in routed.alerts}) == 2


def test_default_message_names_job_states_and_failure() -> None:
    out = render(event())
    assert out.title == "AUDIT_FAILED: voice job j1 (shop-anna)"
    assert "j1: AUDITING → AUDIT_FAILED" in out.body
    assert "MSS.00000012 audio too noisy" in out.body
    assert "BASIC" in out.body
    assert out.notify_type is NotifyType.FAILURE


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("FAILED", NotifyType.FAILURE),
        ("SPLIT_FAILED", NotifyType.FAILURE),
        ("SUCCEED", NotifyType.SUCCESS),
        ("PROCESSING", NotifyType.INFO),
    ],
)
def test_notify_type_by_state(state: str, expected: NotifyType) -> None:
    assert render(event(state=state)).notify_type is expected


def test_default_message_never_contains_phone() -> None:
    # The parser drops `phone`; even if a job carried it, the default template does not print it.
    out = render(event(phone="+8613800000000"))
    assert "13800000000" not in out.title + out.body


def test_custom_template_with_filters() -> None:
    r = rule(
        title="{{ job.voice_name }} failed review ({{ job.reject_times }}x)",
        body="at {{ job.lastupdate_time | datetime }}",
    )
    out = render(event(), r)
    assert out.title == "shop-anna failed review (1x)"
    assert out.body == "at 2026-11-25 12:00 UTC"
    assert out.error is None


def test_broken_template_falls_back_to_default_and_reports() -> None:
    out = render(event(), rule(title="{{ job.nope.deeper }}"))
    assert out.error is not None
    assert out.title == "AUDIT_FAILED: voice job j1 (shop-anna)"


def test_sandbox_blocks_attribute_escapes() -> None:
    r = rule(title="{{ job.__class__.__mro__ }}")
    out = render(event(), r)
    assert out.error is not None and "__class__" not in out.title
    r = rule(title="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    assert render(event(), r).error is not None


def test_html_format_escapes_job_fields() -> None:
    r = rule(title="{{ job.voice_name }}", format=BodyFormat.HTML)
    out = render(event(voice_name="<b>x</b>"), r)
    assert out.title == "&lt;b&gt;x&lt;/b&gt;"


def test_check_reports_syntax_and_runtime_template_errors() -> None:
    problems = check_rule_templates(rule(title="{{ job.voice_name ", body="{{ nothing }}"), NOW)
    assert [p[0] for p in problems] == ["title", "body"]
    assert "syntax" in problems[0][1]
    assert "nothing" in problems[1][1]
    assert check_rule_templates(rule(title="{{ job.job_id }}"), NOW + timedelta(0)) == []


def test_a_template_raising_a_python_error_falls_back_and_is_reported() -> None:
    r = rule(title="{{ 'n=' + job.reject_times }}", body="{{ 1 / 0 }}")
    out = render(event(), r)
    assert out.error is not None
    assert out.error.startswith("TypeError")
    assert out.title == "AUDIT_FAILED: voice job j1 (shop-anna)"
    problems = check_rule_templates(r, NOW)
    assert [p[0] for p in problems] == ["title", "body"]
    assert "ZeroDivisionError" in problems[1][1]


def test_a_job_less_event_says_what_happened_in_its_title() -> None:
    batch = Event(
        EventKind.BATCH_SETTLED,
        "prod",
        NOW,
        "batch spring-sale settled: 48 SUCCEED, 2 FAILED (MSS.0012 audio too noisy ×2), took 6h40m",
    )
    out = render(batch)
    assert out.title == batch.reason
    assert "source: prod" in out.body
    mixed = replace(batch, details={"counts": {"SUCCEED": 48, "FAILED": 2}})
    assert render(mixed).notify_type is NotifyType.WARNING
    clean = replace(batch, details={"counts": {"SUCCEED": 50}})
    assert render(clean).notify_type is NotifyType.SUCCESS
