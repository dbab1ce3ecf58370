"""The diff engine: pure functions over snapshots, with property tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from watcher.engine.diff import (
    Overlay,
    apply_events,
    diff,
    first_run_events,
    format_duration,
)
from watcher.model import EventKind, FirstRun, Job, Snapshot

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
STATES = ["CREATING", "AUDITING", "AUDIT_FAILED", "PROCESSING", "SUCCEED", "FAILED", "NEW_STATE"]


def snap(jobs: list[Job], at: datetime = NOW) -> Snapshot:
    return Snapshot("prod", at, {j.job_id: j for j in jobs})


def job(job_id: str, state: str, reject: int | None = None) -> Job:
    return Job(job_id=job_id, state=state, reject_times=reject)


jobs_strategy = st.dictionaries(
    st.text("abcdef0123", min_size=1, max_size=4),
    st.tuples(st.sampled_from(STATES), st.one_of(st.none(), st.integers(1, 10))),
    max_size=30,
)


def to_jobs(spec: dict[str, tuple[str, int | None]]) -> dict[str, Job]:
    return {k: job(k, s, r) for k, (s, r) in spec.items()}


@given(jobs_strategy)
def test_equal_snapshots_produce_no_events(spec: dict[str, tuple[str, int | None]]) -> None:
    jobs = to_jobs(spec)
    assert diff(jobs, snap(list(jobs.values()))).events == ()


@given(jobs_strategy, jobs_strategy, st.randoms())
def test_events_do_not_depend_on_job_order(
    old: dict[str, tuple[str, int | None]],
    new: dict[str, tuple[str, int | None]],
    rnd: object,
) -> None:
    previous = to_jobs(old)
    current_jobs = list(to_jobs(new).values())
    shuffled = current_jobs[:]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    prev_items = list(previous.items())
    rnd.shuffle(prev_items)  # type: ignore[attr-defined]
    a = diff(previous, snap(current_jobs))
    b = diff(dict(prev_items), snap(shuffled))
    assert a == b


@given(jobs_strategy, jobs_strategy, st.dictionaries(st.text("ab", max_size=2), st.integers(1, 5)))
def test_an_overlay_diffs_exactly_like_the_same_jobs_in_a_plain_dict(
    old: dict[str, tuple[str, int | None]],
    laid: dict[str, tuple[str, int | None]],
    missing: dict[str, int],
) -> None:
    """The incremental cycle's shortcut (look at the touched jobs only) changes nothing."""
    previous = to_jobs(old)
    touched = to_jobs(laid)
    overlaid = Overlay(previous, touched)
    plain = snap(list(dict(overlaid).values()))
    fast = diff(previous, Snapshot("prod", NOW, overlaid), missing=missing)
    assert fast == diff(previous, plain, missing=missing)


@given(jobs_strategy, jobs_strategy)
def test_applying_events_to_old_states_yields_new_states(
    old: dict[str, tuple[str, int | None]], new: dict[str, tuple[str, int | None]]
) -> None:
    previous = to_jobs(old)
    current = to_jobs(new)
    # vanish_after=1: a complete scan's absence is applied at once for this invariant.
    result = diff(previous, snap(list(current.values())), vanish_after=1)
    old_states = {k: j.state for k, j in previous.items()}
    assert apply_events(old_states, result.events) == {k: j.state for k, j in current.items()}


@given(jobs_strategy, st.integers(2, 5))
def test_one_missing_scan_never_reports_vanished(
    old: dict[str, tuple[str, int | None]], vanish_after: int
) -> None:
    previous = to_jobs(old)
    result = diff(previous, snap([]), vanish_after=vanish_after)
    assert all(e.kind is not EventKind.VANISHED for e in result.events)
    assert result.retained == previous


def test_job_vanishes_after_n_complete_scans_and_reappears() -> None:
    a = job("a", "PROCESSING")
    stored: dict[str, Job] = {"a": a}
    missing: dict[str, int] = {}
    kinds = []
    for _ in range(3):
        r = diff(stored, snap([]), missing=missing, vanish_after=3)
        kinds.append([e.kind for e in r.events])
        stored = dict(r.retained)
        missing = dict(r.missing)
    assert kinds == [[], [], [EventKind.VANISHED]]
    assert stored == {}
    # Still absent: nothing more is said.
    r = diff(stored, snap([]), missing=missing, vanish_after=3)
    assert r.events == ()
    back = diff(stored, snap([a]), missing=dict(r.missing), vanish_after=3)
    assert [e.kind for e in back.events] == [EventKind.REAPPEARED]


def test_transition_names_both_states() -> None:
    r = diff({"a": job("a", "AUDITING")}, snap([job("a", "AUDIT_FAILED", 1)]))
    (event,) = r.events
    assert event.kind is EventKind.TRANSITION
    assert event.previous_state == "AUDITING"
    assert event.job is not None and event.job.state == "AUDIT_FAILED"
    assert "AUDITING to AUDIT_FAILED" in event.reason


def test_rejected_again_when_reject_times_grows_in_same_state() -> None:
    r = diff({"a": job("a", "AUDIT_FAILED", 1)}, snap([job("a", "AUDIT_FAILED", 2)]))
    (event,) = r.events
    assert event.kind is EventKind.REJECTED_AGAIN
    assert "1 → 2" in event.reason


def test_transition_into_a_repeated_failure_says_how_many_times() -> None:
    r = diff({"a": job("a", "SYSTEM_AUDITING", 2)}, snap([job("a", "AUDIT_FAILED", 2)]))
    (event,) = r.events
    assert event.note == "this job has now been AUDIT_FAILED 2 times"


def test_offline_gap_is_noted_on_transitions() -> None:
    r = diff(
        {"a": job("a", "AUDITING")},
        snap([job("a", "PROCESSING")]),
        offline_gap=timedelta(minutes=90),
    )
    assert r.events[0].note == (
        "the watcher saw no scan for 1h30m; intermediate states may have been missed"
    )


def test_new_job_after_baseline_is_an_event_in_its_state() -> None:
    r = diff({}, snap([job("b", "FAILED")]))
    (event,) = r.events
    assert event.kind is EventKind.NEW
    assert event.previous_state is None


def test_unknown_state_passes_through() -> None:
    r = diff({"a": job("a", "PROCESSING")}, snap([job("a", "SOMETHING_NEW")]))
    assert r.events[0].job is not None and r.events[0].job.state == "SOMETHING_NEW"


def test_event_key_is_stable_for_the_same_change() -> None:
    prev = {"a": job("a", "AUDITING")}
    cur = [job("a", "AUDIT_FAILED", 1)]
    k1 = diff(prev, snap(cur)).events[0].key
    k2 = diff(prev, snap(cur, NOW + timedelta(minutes=5))).events[0].key
    assert k1 == k2


def test_first_run_modes() -> None:
    s = snap([job("a", "AUDIT_FAILED"), job("b", "PROCESSING"), job("c", "AUDIT_FAILED")])
    assert first_run_events(s, FirstRun.BASELINE) == ()
    assert [e.kind for e in first_run_events(s, FirstRun.NOTIFY)] == [EventKind.NEW] * 3
    assert first_run_events(s, FirstRun.SUMMARY) == ()  # the tracker builds the digest


def test_format_duration() -> None:
    assert format_duration(timedelta(seconds=45)) == "45s"
    assert format_duration(timedelta(hours=3, minutes=12)) == "3h12m"
    assert format_duration(timedelta(days=2)) == "2d"
    assert format_duration(timedelta(days=2, hours=4, minutes=1)) == "2d4h"
