"""watcher.web.views: pure shaping of rows for one `now` (no I/O)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from watcher.model import KNOWN_STATES
from watcher.web import views
from watcher.web.readmodel import BatchRow, JobRow, SourceRow

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
INFO = views.SourceInfo("prod", timedelta(seconds=30), timedelta(hours=1))


def source(**kw: object) -> SourceRow:
    fields: dict[str, object] = {
        "name": "prod",
        "baseline_at": NOW - timedelta(days=1),
        "last_poll_at": NOW - timedelta(seconds=5),
        "last_ok_at": NOW - timedelta(seconds=5),
        "last_error_at": None,
        "last_error": None,
        "consecutive_failures": 0,
        "by_state": {"SUCCEED": 2},
    }
    fields.update(kw)
    return SourceRow(**fields)  # type: ignore[arg-type]


def job(job_id: str, state: str, minutes: int = 0) -> JobRow:
    return JobRow(
        "prod",
        job_id,
        state,
        1,
        None,
        NOW - timedelta(minutes=minutes),
        None,
        None,
        "b",
        None,
        None,
        None,
    )


def test_format_age_keeps_two_units() -> None:
    cases = {0: "0s", 59: "59s", 60: "1m", 3599: "59m", 3600: "1h", 3720: "1h02m"}
    cases.update({86400: "1d", 90000: "1d1h", -5: "0s"})
    assert {s: views.format_age(s) for s in cases} == cases


@given(st.dictionaries(st.sampled_from(sorted(KNOWN_STATES)), st.integers(1, 10**6), max_size=16))
def test_state_bar_segments_tile_the_whole_width(counts: dict[str, int]) -> None:
    segments = views._bar(counts)
    assert sum(s["count"] for s in segments) == sum(counts.values())
    if counts:
        assert [s["state"] for s in segments] == sorted(
            counts,
            key=lambda k: (
                {"succeed": 0, "failed": 1, "review": 2, "progress": 3}[views.state_class(k)],
                k,
            ),
        )
        assert segments[0]["x"] == 0
        assert sum(s["width"] for s in segments) == 1000
        for left, right in itertools.pairwise(segments):
            assert right["x"] == left["x"] + left["width"]
        assert all(s["width"] >= 0 for s in segments)


def test_health_says_why() -> None:
    assert views._health(source(), INFO, NOW) == ("ok", "polling")
    failing = source(consecutive_failures=2, last_error="AK/SK rejected")
    assert views._health(failing, INFO, NOW)[0] == "failing"
    stale = source(last_ok_at=NOW - timedelta(minutes=2))
    assert views._health(stale, INFO, NOW)[0] == "stale"
    assert views._health(None, INFO, NOW)[0] == "starting"


def test_empty_states_say_what_happens_next() -> None:
    never = views._empty_text(None, INFO, NOW)
    assert never == "no jobs yet: first poll under way"
    failed_first = source(baseline_at=None, by_state={}, last_poll_at=NOW - timedelta(seconds=18))
    assert views._empty_text(failed_first, INFO, NOW) == "no jobs yet: first poll in 12s"
    empty = source(by_state={})
    assert views._empty_text(empty, INFO, NOW) == "no jobs in this source (next poll in 25s)"
    assert views._empty_text(source(), INFO, NOW) is None


def test_configured_sources_come_first_then_remembered_ones() -> None:
    rows = [source(name="old"), source(name="prod")]
    shown = views.source_views(rows, [INFO], NOW)
    assert [s["name"] for s in shown] == ["prod", "old"]
    assert [s["configured"] for s in shown] == [True, False]
    assert shown[0]["strategy"] == "incremental (full scan every 1h)"
    assert shown[1]["strategy"] is None


def test_batch_view_orders_failed_then_waiting_longest_then_done() -> None:
    batch = BatchRow("prod", "b", {"SUCCEED": 1, "FAILED": 1, "AUDITING": 2}, None, None)
    jobs = [
        job("s", "SUCCEED"),
        job("w1", "AUDITING", 5),
        job("f", "FAILED"),
        job("w2", "AUDITING", 50),
    ]
    shown = views.batch_view(batch, jobs, NOW)
    assert [j["job_id"] for j in shown["jobs"]] == ["f", "w2", "w1", "s"]
    assert shown["batch"]["percent_done"] == 50
    assert all(j["why"] is None for j in shown["jobs"])  # no enrichment yet


def test_batch_progress_segments_add_up() -> None:
    batch = BatchRow("prod", "b", {"SUCCEED": 1, "AUDIT_FAILED": 1, "AUDITING": 1}, None, None)
    summary = views.batch_summary(batch, NOW)
    assert [s["width"] for s in summary["segments"]] == [333, 334, 333]  # edges 0 333 667 1000
    assert (summary["succeeded"], summary["failed"], summary["in_progress"]) == (1, 1, 1)
    assert summary["open"] is True


def test_why_failed_is_empty_until_the_enrichment_exists() -> None:
    assert views.why_failed(job("f", "FAILED"), None) is None


def test_why_failed_says_what_the_detail_api_said_in_the_alerts_words() -> None:
    why = {
        "source": "audit-result",
        "errors": [{"audio_name": "003.wav", "error_code": "E1", "error_message": "背景噪音过大"}],
        "reviewer_message": "请重新录制",
    }
    detail = views.why_failed(job("f", "AUDIT_FAILED"), why)
    assert detail is not None
    assert detail.summary == "from audit-result"
    assert detail.items == ("003.wav: E1 背景噪音过大", "reviewer: 请重新录制")
    # A job that is no longer failed shows no stale explanation.
    assert views.why_failed(job("f", "SUCCEED"), why) is None


def test_unavailable_detail_is_said_not_hidden() -> None:
    why = {"source": "op-logs", "available": False, "problem": "timed out after 10s"}
    detail = views.why_failed(job("f", "FAILED"), why)
    assert detail is not None
    assert detail.items == ("detail unavailable (op-logs): timed out after 10s",)


def test_scrub_masks_secrets_urls_and_phones_but_not_identifiers() -> None:
    value = {
        "reason": "sent to json://hooks.example/T0KEN and https://b.example/a.wav?Signature=x",
        "note": "call +86 13812345678 or 13912345678",
        "last_error": "key AKSECRET123 refused",
        "job_id": "a13812345678b",
        "nested": [{"title": "AKSECRET123"}],
    }
    out = views.scrub(value, {"AKSECRET123"})
    assert out["reason"] == "sent to json://[link removed] and https://[link removed]"
    assert out["note"] == "call [phone removed] or [phone removed]"
    assert out["last_error"] == "key **** refused"
    assert out["job_id"] == "a13812345678b"
    assert out["nested"] == [{"title": "****"}]
