"""One poll cycle's decision over plain data: overlay, misses, miss counts, next cursor."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from watcher.engine.cursor import Cursor, Strategy
from watcher.engine.cycle import (
    Decision,
    Fetched,
    Miss,
    decide,
    find_misses,
    full_scan_bound,
    full_scan_reason,
    missing_after_partial_scan,
    next_cursor,
    reverifies,
)
from watcher.engine.tracker import Tracking
from watcher.model import (
    Config,
    Credential,
    EventKind,
    Job,
    RuleConfig,
    Secret,
    SourceConfig,
)

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
SOURCE = SourceConfig(
    name="prod",
    endpoint="http://127.0.0.1:9",
    region=None,
    project_id="p",
    ak=Credential(Secret("ak"), "config"),
    sk=Credential(Secret("sk"), "config"),
)
RULE = RuleConfig(name="failed", on=("FAILED",), notify=("ops",))
CONFIG = Config(path="t.yaml", sources=(SOURCE,), channels={}, rules=(RULE,), storage="t.db")


def job(job_id: str, state: str, updated: datetime = T0, created: datetime = T0) -> Job:
    return Job(job_id, state, 1, created, updated)


def jobs(*items: Job) -> dict[str, Job]:
    return {j.job_id: j for j in items}


def full(found: dict[str, Job], at: datetime, **kw: object) -> Fetched:
    return Fetched(found, full=True, mode="full", server_time=at, count=len(found), **kw)  # type: ignore[arg-type]


def increment(found: dict[str, Job], at: datetime, gone: frozenset[str] = frozenset()) -> Fetched:
    return Fetched(found, full=False, mode="changed_since", server_time=at, gone=gone)


def cycle(
    previous: dict[str, Job] | None,
    fetched: Fetched,
    *,
    tracking: Tracking | None = None,
    cursor: Cursor | None = None,
    at: datetime = T0,
) -> Decision:
    return decide(
        SOURCE,
        CONFIG,
        previous,
        tracking or Tracking(),
        fetched,
        cursor or Cursor(),
        cycle_at=at,
        now=at,
        vanish_after=3,
    )


def test_a_baseline_stores_everything_alerts_nothing_and_starts_the_cursor() -> None:
    found = jobs(job("a", "FAILED"), job("b", "CREATING"))
    decision = cycle(None, full(found, T0 + timedelta(seconds=2)))
    assert decision.baseline and decision.events == () and decision.alerts == ()
    assert dict(decision.committed.jobs) == found
    # The shell lets a baseline's jobs go after the commit: an index of them would be waste.
    assert decision.tracking.index is None
    cursor = decision.cursor
    assert (cursor.watermark, cursor.last_full_at, cursor.full_count) == (
        T0 + timedelta(seconds=2),
        T0,
        2,
    )
    assert cursor.server_offset == 2.0
    assert decision.strategy == str(Strategy.CHANGED_SINCE)


def test_an_increment_is_overlaid_and_its_cursor_is_a_new_value() -> None:
    stored = jobs(job("a", "CREATING"), job("b", "CREATING"))
    start = Cursor(watermark=T0, last_full_at=T0, full_count=2)
    later = T0 + timedelta(minutes=1)
    fetched = increment(
        jobs(job("a", "FAILED", later), job("b", "CREATING")), later, gone=frozenset({"x"})
    )
    decision = cycle(stored, fetched, cursor=start, at=later)
    # b was re-listed unchanged: it counts as unchanged; a changed and is alerted on.
    assert decision.changed == 1 and decision.fetched == 2
    assert [(e.kind, e.job.job_id if e.job else None) for e in decision.events] == [
        (EventKind.TRANSITION, "a")
    ]
    assert [a.rule for a in decision.alerts] == ["failed"]
    assert decision.committed.jobs["a"].state == "FAILED"
    assert decision.committed.jobs["b"] is stored["b"]
    assert decision.cursor.covered_until == later and decision.cursor.gone == {"x"}
    assert start == Cursor(watermark=T0, last_full_at=T0, full_count=2), "never edited"


def test_a_full_scan_after_increments_names_what_they_missed() -> None:
    stored = jobs(job("a", "CREATING"), job("b", "CREATING"))
    covered = T0 + timedelta(minutes=10)
    cursor = Cursor(watermark=covered, last_full_at=T0, full_count=2, covered_until=covered)
    scan = jobs(
        job("a", "FAILED", T0 + timedelta(minutes=5)),  # before the last increment: missed
        job("b", "FAILED", T0 + timedelta(minutes=11)),  # after it: news
    )
    at = T0 + timedelta(hours=1)
    decision = cycle(stored, full(scan, at, reverify=True), cursor=cursor, at=at)
    assert decision.misses == (Miss("a", "FAILED", "CREATING"),)
    assert decision.cursor.covered_until is None and decision.cursor.last_full_at == at


def test_a_bounded_full_scan_does_not_count_jobs_created_after_its_bound_absent() -> None:
    bound = T0 + timedelta(minutes=1)
    late = job("late", "CREATING", created=bound + timedelta(seconds=1))
    old = job("old", "SUCCEED")
    stored = jobs(late, old)
    fetched = full({}, bound + timedelta(seconds=5), created_until=bound)
    decision = cycle(stored, fetched, at=bound)
    assert decision.tracking.missing == {"old": 1}
    assert set(decision.committed.jobs) == {"late", "old"}  # old kept until it vanishes
    # The watermark stops at the bound: what it left out is listed by the next cycle.
    assert decision.cursor.watermark == bound


def test_a_demotion_the_poller_made_is_carried_into_the_next_cursor() -> None:
    stored = jobs(job("a", "CREATING"))
    cursor = Cursor(watermark=T0, last_full_at=T0, full_count=1).demote(
        Strategy.CHANGED_SINCE, now=T0, hold=timedelta(hours=1), reason="400"
    )
    fetched = Fetched({}, full=False, mode="active_set", server_time=T0)
    decision = cycle(stored, fetched, cursor=cursor, at=T0)
    assert decision.strategy == str(Strategy.ACTIVE_SET)
    assert decision.cursor.reasons == {Strategy.CHANGED_SINCE: "400"}


def test_partial_scan_keeps_miss_counts_and_a_sighting_clears_one() -> None:
    before = {"gone": 2, "vanished": 3, "back": 1}
    assert missing_after_partial_scan(before, {"back", "other"}) == {"gone": 2, "vanished": 3}


def test_only_changes_older_than_the_last_incremental_cycle_are_misses() -> None:
    t0 = T0
    stored = {"a": job("a", "SUCCEED", t0), "b": job("b", "PROCESSING", t0)}
    scanned = {
        "a": job("a", "FAILED", t0 + timedelta(minutes=1)),  # before the cycle: missed
        "b": job("b", "SUCCEED", t0 + timedelta(minutes=5)),  # after it: news
        "c": job("c", "FAILED", t0 + timedelta(minutes=2)),  # created unseen: missed
    }
    covered = t0 + timedelta(minutes=3)
    assert find_misses(stored, scanned, covered) == [
        Miss("a", "FAILED", "SUCCEED"),
        Miss("c", "FAILED", None),
    ]
    assert find_misses(stored, scanned, None) == []


def test_the_plan_scans_everything_only_when_an_increment_cannot_be_trusted() -> None:
    hour = timedelta(hours=1)
    fresh = Cursor()
    fed = Cursor(watermark=T0, last_full_at=T0, full_count=1)
    assert full_scan_reason(fed, SOURCE, now=T0, has_baseline=False) == "first scan of the source"
    assert full_scan_reason(fresh, SOURCE, now=T0, has_baseline=True) == "start-up"
    assert full_scan_reason(fed, SOURCE, now=T0 + timedelta(minutes=5), has_baseline=True) is None
    assert full_scan_reason(fed, SOURCE, now=T0 + hour, has_baseline=True) == (
        "full_scan_every elapsed"
    )
    both = fed.demote(Strategy.CHANGED_SINCE, now=T0, hold=hour, reason="400").demote(
        Strategy.ACTIVE_SET, now=T0, hold=hour, reason="ignored"
    )
    reason = full_scan_reason(both, SOURCE, now=T0 + timedelta(minutes=5), has_baseline=True)
    assert reason == "every cheaper strategy is demoted (400; ignored)"
    off = replace(SOURCE, full_scan_every=timedelta(0))
    assert full_scan_reason(fed, off, now=T0, has_baseline=True) == (
        "incremental polling disabled (full_scan_every: 0)"
    )
    # Only a scheduled full scan lifts demotions.
    assert not reverifies(both, SOURCE, now=T0 + timedelta(minutes=5))
    assert reverifies(both, SOURCE, now=T0 + hour) and reverifies(fresh, SOURCE, now=T0)


def test_a_full_scan_is_bounded_just_past_the_api_clock_unless_the_source_bounds_it() -> None:
    at = T0.replace(microsecond=500_000)
    assert full_scan_bound(SOURCE, at, 10.0) == T0 + timedelta(seconds=12)
    own = replace(SOURCE, filters=(("create_until", "2026-01-01T00:00:00Z"),))
    assert full_scan_bound(own, at, 10.0) is None


IDS = [f"j{i}" for i in range(8)]


@st.composite
def histories(draw: st.DrawFn) -> tuple[dict[str, Job], dict[str, int], set[str]]:
    """Stored jobs, the miss counts so far (some stored jobs already absent once or
    twice, some long vanished), and which ids the next listing returns."""
    stored_ids = draw(st.sets(st.sampled_from(IDS), min_size=1))
    stored = {j: job(j, draw(st.sampled_from(["CREATING", "SUCCEED"]))) for j in stored_ids}
    missing = {
        j: draw(st.integers(1, 2)) for j in draw(st.sets(st.sampled_from(sorted(stored_ids))))
    }
    vanished = set(IDS) - stored_ids
    missing.update(
        {j: 3 for j in draw(st.sets(st.sampled_from(sorted(vanished))))} if vanished else {}
    )
    listed = draw(st.sets(st.sampled_from(IDS)))
    return stored, missing, listed


def _listing(stored: dict[str, Job], listed: set[str], at: datetime) -> dict[str, Job]:
    return {j: stored.get(j) or job(j, "CREATING", at, at) for j in listed}


@given(histories())
def test_an_incremental_cycle_never_advances_a_miss_count(
    history: tuple[dict[str, Job], dict[str, int], set[str]],
) -> None:
    stored, missing, listed = history
    at = T0 + timedelta(minutes=1)
    cursor = Cursor(watermark=T0, last_full_at=T0, full_count=len(stored))
    decision = cycle(
        stored,
        increment(_listing(stored, listed, at), at),
        tracking=Tracking(missing=missing),
        cursor=cursor,
        at=at,
    )
    after = decision.tracking.missing
    # Unchanged for every job it did not list, cleared for the ones it did; never more.
    assert after == {j: n for j, n in missing.items() if j not in listed}
    assert not any(e.kind is EventKind.VANISHED for e in decision.events)
    assert set(stored) <= set(decision.committed.jobs)


@given(histories())
def test_a_full_scan_advances_the_count_of_every_stored_job_it_did_not_list(
    history: tuple[dict[str, Job], dict[str, int], set[str]],
) -> None:
    stored, missing, listed = history
    at = T0 + timedelta(minutes=1)
    cursor = Cursor(watermark=T0, last_full_at=T0, full_count=len(stored))
    decision = cycle(
        stored,
        full(_listing(stored, listed, at), at),
        tracking=Tracking(missing=missing),
        cursor=cursor,
        at=at,
    )
    after = decision.tracking.missing
    absent = set(stored) - listed
    for job_id in absent:
        assert after[job_id] == missing.get(job_id, 0) + 1
    vanished = {e.job.job_id for e in decision.events if e.kind is EventKind.VANISHED and e.job}
    assert vanished == {j for j in absent if missing.get(j, 0) + 1 >= 3}
    assert not any(j in after for j in listed)


def test_a_full_scan_of_two_or_more_jobs_says_whether_the_order_was_honoured() -> None:
    at = datetime(2026, 12, 2, tzinfo=UTC)

    def after(cursor: Cursor, count: int, unsorted: bool) -> bool:
        scan = Fetched({}, full=True, mode="full", count=count, unsorted=unsorted)
        return next_cursor(cursor, scan, at).sort_ignored

    assert after(Cursor(), 120, True) is True
    assert after(Cursor(sort_ignored=True), 120, False) is False
    # One job or none has no order: what was known stays.
    assert after(Cursor(sort_ignored=True), 1, False) is True
    assert after(Cursor(), 0, True) is False
    # An increment never changes it.
    increment = Fetched({}, full=False, mode="changed_since", unsorted=True)
    assert next_cursor(Cursor(sort_ignored=True), increment, at).sort_ignored is True
