"""Shaping the detail APIs' answers into `why`: what is kept, what is said, what never is."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from watcher.engine.why import (
    MAX_ERRORS,
    detail_resource,
    from_audit_result,
    from_op_logs,
    unavailable,
    why_lines,
)
from watcher.model import Event, EventKind, Job

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def event(state: str, kind: EventKind = EventKind.TRANSITION) -> Event:
    return Event(kind, "prod", NOW, "r", job=Job(job_id="j", state=state), previous_state="X")


def test_each_failure_asks_the_api_that_explains_it() -> None:
    assert detail_resource(event("AUDIT_FAILED")) == "audit-result"
    assert detail_resource(event("AUDIT_FAILED", EventKind.REJECTED_AGAIN)) == "audit-result"
    assert detail_resource(event("FAILED")) == "op-logs"
    assert detail_resource(event("SPLIT_FAILED")) == "op-logs"
    assert detail_resource(event("SUCCEED")) is None
    assert detail_resource(event("FAILED", EventKind.STUCK)) is None


def test_audit_result_keeps_recordings_and_reviewer_but_not_the_signed_link() -> None:
    why = from_audit_result(
        {
            "system_audit_result": {
                "errors": [
                    {
                        "audio_name": "003.wav",
                        "text_name": "003.txt",
                        "error_code": "E1",
                        "error_message": "录音背景噪声过大",
                    }
                ]
            },
            "admin_audit_result": {
                "message": "请重新录制第3句",
                "attachment_name": "notes.pdf",
                "attachment_url": "https://obs.example.com/x?Signature=s3cr3t",
            },
        }
    )
    assert "s3cr3t" not in str(why)
    assert why_lines(why) == [
        "003.wav (003.txt): E1 录音背景噪声过大",
        "reviewer: 请重新录制第3句",
    ]


def test_many_rejected_recordings_are_bounded_and_counted() -> None:
    errors = [{"audio_name": f"{n}.wav", "error_message": "noise"} for n in range(50)]
    why = from_audit_result({"system_audit_result": {"errors": errors}})
    lines = why_lines(why)
    assert len(lines) == MAX_ERRORS + 1
    assert lines[-1] == f"… {50 - MAX_ERRORS} more recordings rejected"


def test_op_logs_give_each_failure_reason_once_in_order() -> None:
    ops = [
        {"action": "CREATE_JOB", "external_info": {}},
        {"action": "AUDIT_NOT_PASS", "external_info": {"admin_audit_failure_reason": "echo"}},
        {"action": "TRAINING_FINISH", "external_info": {"algorithm_failure_reason": "too short"}},
        {"action": "TRAINING_FINISH", "external_info": {"algorithm_failure_reason": "too short"}},
    ]
    assert why_lines(from_op_logs({"operations": ops})) == ["reason: echo", "reason: too short"]


def test_empty_and_unavailable_details_say_so() -> None:
    assert why_lines(from_audit_result({})) == ["audit-result gave no further detail"]
    assert why_lines(unavailable("op-logs", "no answer within 10s")) == [
        "detail unavailable (op-logs): no answer within 10s"
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(["system_audit_result", "admin_audit_result", "operations", "count"]),
        json_values,
    )
)
def test_any_answer_shape_gives_a_why_never_an_exception(body: dict[str, Any]) -> None:
    for why in (from_audit_result(body), from_op_logs(body)):
        assert isinstance(why_lines(why), list)
