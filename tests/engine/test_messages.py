"""Message composition: a grouped message says what and why per job, capped honestly."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from watcher.engine.alerts import route
from watcher.engine.messages import (
    CHAT_LIST_LIMIT,
    FULL_LIST_LIMIT,
    compose,
    summary_line,
)
from watcher.engine.shorten import shorten
from watcher.model import Alert, BodyFormat, Event, EventKind, Job, RuleConfig

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def failed(n: int, state: str = "AUDIT_FAILED", reason: str = "background noise too high") -> Event:
    job = Job(
        job_id=f"job-{n:03d}",
        state=state,
        voice_name=f"voice-{n}",
        job_failed_code="MSS.00000102",
        job_failed_reason=reason,
        reject_times=1,
        batch_name="b1",
        extra={"tag": "ECOMMERCE"},
    )
    return Event(
        EventKind.TRANSITION,
        "prod",
        NOW,
        f"job {job.job_id} went from AUDITING to {state}",
        job=job,
        previous_state="AUDITING",
    )


def alerts_for(
    events: list[Event], fmt: BodyFormat = BodyFormat.TEXT, **rule: object
) -> list[Alert]:
    r = RuleConfig(name="failures", on=("*",), notify=("ops",), format=fmt, **rule)  # type: ignore[arg-type]
    return list(route(events, [r]).alerts)


def group(alerts: list[Alert]) -> tuple[str, str]:
    ids = list(range(10, 10 + len(alerts)))
    c = compose("ops", [alerts[0].group_key], alerts, ids)
    return c.title, c.body


MIXED = [
    *(failed(n) for n in range(3)),
    *(failed(n, reason="text and speech do not match") for n in range(3, 5)),
    *(failed(n, "FAILED", "training failed") for n in range(5, 7)),
]


def test_group_opens_with_counts_and_top_reasons() -> None:
    _, body = group(alerts_for(MIXED))
    assert body.splitlines()[0] == (
        "5 AUDIT_FAILED: 3× background noise too high, 2× text and speech do not match"
        " · 2 FAILED: 2× training failed"
    )


def test_group_lists_each_job_with_previous_state_code_and_reason() -> None:
    _, body = group(alerts_for(MIXED))
    assert (
        "- job-000 (voice-0): AUDITING → AUDIT_FAILED · MSS.00000102 background noise too high"
        in (body.splitlines())
    )
    assert "- job-006 (voice-6): AUDITING → FAILED · MSS.00000102 training failed" in body


def test_chat_group_caps_the_list_and_names_the_command_for_the_rest() -> None:
    events = [failed(n) for n in range(CHAT_LIST_LIMIT + 7)]
    _, body = group(alerts_for(events))
    listed = [line for line in body.splitlines() if line.startswith("- ")]
    assert len(listed) == CHAT_LIST_LIMIT
    assert body.splitlines()[-1] == (
        "+7 more not listed here; all of them: metastudio-watcher alerts --channel ops "
        "--group 'source=prod|rule=failures' --ids 10-36"
    )


def test_html_group_lists_everything_up_to_its_larger_cap_and_escapes() -> None:
    events = [failed(n, reason="<b>noise</b> & hum") for n in range(150)]
    _, body = group(alerts_for(events, BodyFormat.HTML))
    assert body.count("<li>") == 150
    assert "&lt;b&gt;noise&lt;/b&gt; &amp; hum" in body
    assert "<b>noise</b>" not in body
    assert "more not listed" not in body
    assert FULL_LIST_LIMIT >= 200


def test_group_limit_is_configurable_per_rule() -> None:
    _, body = group(alerts_for([failed(n) for n in range(5)], group_limit=2))
    assert len([line for line in body.splitlines() if line.startswith("- ")]) == 2
    assert "+3 more not listed here" in body


def test_unicode_reasons_are_kept_and_bounded_in_characters() -> None:
    reason = "录音背景噪声过大，请在安静环境下重新录制。" * 20
    _, body = group(alerts_for([failed(1, reason=reason), failed(2, reason=reason)]))
    line = next(line for line in body.splitlines() if line.startswith("- job-001"))
    assert "录音背景噪声过大" in line
    assert line.endswith("…")
    assert len(line) < 260


def test_json_group_is_one_document_with_every_job_field_but_phone() -> None:
    alerts = alerts_for(MIXED[:2], BodyFormat.JSON)
    c = compose("ops", [alerts[0].group_key], alerts, [1, 2])
    assert c.body_format is BodyFormat.TEXT  # apprise carries the document as text
    doc = json.loads(c.body)
    assert doc["version"] == 1
    assert [a["job"]["job_id"] for a in doc["alerts"]] == ["job-000", "job-001"]
    first = doc["alerts"][0]
    assert set(first) == {
        "kind",
        "source",
        "rule",
        "previous_state",
        "state",
        "reason",
        "why",
        "detected_at",
        "job",
    }
    assert first["job"]["tag"] == "ECOMMERCE"
    assert first["job"]["job_failed_reason"] == "background noise too high"
    assert "phone" not in first["job"]


def test_single_json_alert_is_the_same_document() -> None:
    (alert,) = alerts_for(MIXED[:1], BodyFormat.JSON)
    c = compose("ops", [alert.group_key], [alert], [1])
    doc = json.loads(c.body)
    assert doc["version"] == 1
    assert doc["alerts"][0]["state"] == "AUDIT_FAILED"
    assert doc["alerts"][0]["previous_state"] == "AUDITING"
    assert c.body_format is BodyFormat.TEXT


def test_markdown_group_escapes_user_text() -> None:
    _, body = group(alerts_for([failed(1, reason="*bold* _x_"), failed(2)], BodyFormat.MARKDOWN))
    assert "\\*bold\\* \\_x\\_" in body
    assert body.startswith("**")


def test_group_templates_see_alerts_and_counts() -> None:
    alerts = alerts_for(
        MIXED,
        group_title="{{ counts['AUDIT_FAILED'] }} rejected",
        group_body="{% for a in alerts %}{{ a.job.job_id }}={{ a.event.state }};{% endfor %}",
    )
    title, body = group(alerts)
    assert title == "5 rejected"
    assert body.startswith("job-000=AUDIT_FAILED;job-001=AUDIT_FAILED;")


def test_failing_group_template_falls_back_to_the_default() -> None:
    _, body = group(alerts_for(MIXED, group_body="{{ alerts[99].job }}"))
    assert body.startswith("5 AUDIT_FAILED")


def test_job_less_alerts_list_their_reason_and_count_by_kind() -> None:
    settled = Event(
        EventKind.BATCH_SETTLED, "prod", NOW, "batch b1 settled: 2 SUCCEED", subject="b1|2"
    )
    _, body = group(alerts_for([settled, failed(1)]))
    assert "- batch b1 settled: 2 SUCCEED" in body
    assert "1 batch_settled" in body.splitlines()[0]


def test_default_single_body_drops_reject_times_for_success() -> None:
    ok = Job(job_id="j1", state="SUCCEED", reject_times=1)
    event = Event(
        EventKind.TRANSITION,
        "prod",
        NOW,
        "job j1 went from UPLOADING to SUCCEED",
        job=ok,
        previous_state="UPLOADING",
    )
    (alert,) = alerts_for([event])
    assert "reject" not in alert.body
    (rejected,) = alerts_for([failed(1)])
    assert "rejected 1 time so far" in rejected.body


@given(
    st.lists(
        st.sampled_from(["AUDIT_FAILED", "FAILED", "SUCCEED", "SPLIT_FAILED"]),
        min_size=1,
        max_size=30,
    )
)
def test_summary_counts_add_up(states: list[str]) -> None:
    entries = [
        {"state": s, "kind": "transition", "job": {"job_failed_reason": "r"}} for s in states
    ]
    line = summary_line(entries)
    total = sum(int(part.split(" ", 1)[0]) for part in line.split(" · "))
    assert total == len(states)


@given(st.text(), st.integers(min_value=2, max_value=300))
def test_shorten_never_exceeds_the_limit(text: str, limit: int) -> None:
    assert len(shorten(text, limit)) <= limit


def test_default_html_body_keeps_its_lines() -> None:
    (alert,) = alerts_for([failed(1, reason="<noise> & hum")], BodyFormat.HTML)
    assert "<br>\n" in alert.body
    assert "&lt;noise&gt; &amp; hum" in alert.body


def test_group_says_where_and_when_batches_and_time_span() -> None:
    later = Event(
        EventKind.TRANSITION,
        "prod",
        NOW.replace(minute=7),
        "r",
        job=Job(job_id="z", state="FAILED", batch_name="b2"),
        previous_state="PROCESSING",
    )
    _, body = group(alerts_for([failed(1), failed(2), later]))
    assert (
        body.splitlines()[-1]
        == "source prod · batches b1, b2 · detected 2026-11-25 12:00–12:07 UTC"
    )
