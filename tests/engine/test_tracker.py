"""Events that need memory: stuck, recovered, batch_settled, source health, first-run digest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from watcher.engine.tracker import Tracking, advance, health_step
from watcher.model import EventKind, FirstRun, Job, RuleConfig, Snapshot

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def job(job_id: str, state: str, at: datetime | None = T0, **kw: object) -> Job:
    return Job(job_id=job_id, state=state, lastupdate_time=at, **kw)  # type: ignore[arg-type]


def snap(at: datetime, *jobs: Job) -> Snapshot:
    return Snapshot("prod", at, {j.job_id: j for j in jobs})


STUCK = RuleConfig(name="stuck-review", on=("AUDITING",), notify=("ops",), for_=timedelta(hours=24))
STUCK_REPEAT = RuleConfig(
    name="still-failed",
    on=("AUDIT_FAILED",),
    notify=("ops",),
    for_=timedelta(days=2),
    repeat=timedelta(days=1),
)


def run(
    scans: list[Snapshot], rules: list[RuleConfig], first_run: FirstRun = FirstRun.BASELINE
) -> list[list[tuple[EventKind, str]]]:
    previous = None
    tracking = Tracking()
    out = []
    for s in scans:
        step = advance(previous, tracking, s, rules, first_run=first_run)
        out.append([(e.kind, e.reason) for e in step.events])
        previous, tracking = dict(step.jobs), step.tracking
        # Round-trip the memory as the store does, every time.
        tracking = Tracking.from_json(tracking.to_json())
    return out


def test_stuck_fires_once_per_stay_without_repeat() -> None:
    a = job("a", "AUDITING", at=T0)
    scans = [snap(T0 + timedelta(hours=h), a) for h in (1, 10, 25, 30, 60)]
    kinds = [[k for k, _ in evs] for evs in run(scans, [STUCK])]
    assert kinds == [[], [], [EventKind.STUCK], [], []]


@given(st.lists(st.integers(1, 200), min_size=1, max_size=30, unique=True))
def test_stuck_fires_exactly_once_per_stay_whatever_the_poll_times(hours: list[int]) -> None:
    a = job("a", "AUDITING", at=T0)
    scans = [snap(T0 + timedelta(hours=h), a) for h in sorted(hours)]
    fired = sum(1 for evs in run(scans, [STUCK])[1:] for k, _ in evs if k is EventKind.STUCK)
    # The first scan is the silent baseline; after it, one stuck event if any later scan is
    # past the threshold and the baseline was not (the baseline absorbs a stay already stuck).
    later_past = any(h >= 24 for h in sorted(hours)[1:])
    assert fired == (1 if later_past and sorted(hours)[0] < 24 else 0)


def test_stuck_repeats_as_reminders_and_resets_on_a_new_stay() -> None:
    failed = job("a", "AUDIT_FAILED", at=T0)
    again = job("a", "AUDIT_FAILED", at=T0 + timedelta(days=5), reject_times=2)
    scans = [
        snap(T0 + timedelta(hours=1), failed),
        snap(T0 + timedelta(days=2, hours=1), failed),
        snap(T0 + timedelta(days=2, hours=12), failed),
        snap(T0 + timedelta(days=3, hours=2), failed),
        snap(T0 + timedelta(days=5, hours=1), again),
        snap(T0 + timedelta(days=7, hours=1), again),
    ]
    events = run(scans, [STUCK_REPEAT])
    stuck = [[r for k, r in evs if k is EventKind.STUCK] for evs in events]
    assert stuck[1] == ["job a is AUDIT_FAILED after 2d1h (rule still-failed: for 2d)"]
    assert stuck[2] == []
    assert stuck[3] == ["job a is still AUDIT_FAILED after 3d2h (rule still-failed: for 2d)"]
    assert stuck[4] == []  # re-uploaded and rejected again: a new stay
    assert stuck[5] == ["job a is AUDIT_FAILED after 2d1h (rule still-failed: for 2d)"]


def test_stuck_measures_from_first_seen_without_lastupdate_time() -> None:
    a = job("a", "AUDITING", at=None)
    scans = [snap(T0 + timedelta(hours=h), a) for h in (0, 20, 25)]
    kinds = [[k for k, _ in evs] for evs in run(scans, [STUCK])]
    assert kinds == [[], [], [EventKind.STUCK]]


def test_recovered_refers_back_to_failures() -> None:
    scans = [
        snap(T0, job("a", "AUDITING", at=T0)),
        snap(T0 + timedelta(hours=1), job("a", "AUDIT_FAILED", at=T0 + timedelta(hours=1))),
        snap(T0 + timedelta(hours=2), job("a", "UPLOADING", at=T0 + timedelta(hours=2))),
        snap(
            T0 + timedelta(hours=3),
            job("a", "AUDIT_FAILED", at=T0 + timedelta(hours=3), reject_times=2),
        ),
        snap(
            T0 + timedelta(hours=4, minutes=12),
            job("a", "SUCCEED", at=T0 + timedelta(hours=4, minutes=12)),
        ),
    ]
    events = run(scans, [])
    assert events[-1] == [
        (EventKind.RECOVERED, "job a succeeded after 2 rejections, 3h12m after the first")
    ]


def test_batch_settled_summarises_once() -> None:
    def b(job_id: str, state: str, hours: int, **kw: object) -> Job:
        return Job(
            job_id=job_id,
            state=state,
            batch_name="spring-sale",
            create_time=T0,
            lastupdate_time=T0 + timedelta(hours=hours),
            **kw,  # type: ignore[arg-type]
        )

    noisy = {"job_failed_code": "MSS.0012", "job_failed_reason": "audio too noisy"}
    scans = [
        snap(T0, b("a", "PROCESSING", 0), b("b", "PROCESSING", 0), b("c", "AUDITING", 0)),
        snap(
            T0 + timedelta(hours=5),
            b("a", "SUCCEED", 5),
            b("b", "FAILED", 4, **noisy),
            b("c", "PROCESSING", 1),
        ),
        snap(
            T0 + timedelta(hours=7),
            b("a", "SUCCEED", 5),
            b("b", "FAILED", 4, **noisy),
            b("c", "FAILED", 6, **noisy),
        ),
        snap(
            T0 + timedelta(hours=8),
            b("a", "SUCCEED", 5),
            b("b", "FAILED", 4, **noisy),
            b("c", "FAILED", 6, **noisy),
        ),
    ]
    batch = [[r for k, r in evs if k is EventKind.BATCH_SETTLED] for evs in run(scans, [])]
    # All terminal at 7h, quiet (batch_quiet, 10m) by 8h: announced then, once.
    assert batch == [
        [],
        [],
        [],
        ["batch spring-sale settled: 1 SUCCEED, 2 FAILED (MSS.0012 audio too noisy ×2), took 6h"],
    ]


def test_batch_already_settled_at_baseline_is_not_news() -> None:
    done = Job(job_id="a", state="SUCCEED", batch_name="old")
    events = run([snap(T0, done), snap(T0 + timedelta(minutes=1), done)], [])
    assert events == [[], []]


def test_first_run_summary_names_failures_and_stuck_jobs() -> None:
    jobs = [
        job("f1", "AUDIT_FAILED"),
        job("f2", "AUDIT_FAILED"),
        job("f3", "AUDIT_FAILED"),
        job("s", "AUDITING", at=T0 - timedelta(days=3)),
        *(job(f"p{i}", "PROCESSING") for i in range(40)),
    ]
    (events,) = run([snap(T0, *jobs)], [STUCK], first_run=FirstRun.SUMMARY)
    assert events == [
        (
            EventKind.SUMMARY,
            "prod: watching 44 jobs: 3 jobs AUDIT_FAILED, 1 stuck in AUDITING for 3d (s), "
            "41 in progress",
        )
    ]


def test_baseline_is_silent_even_for_stuck_jobs() -> None:
    (events,) = run([snap(T0, job("s", "AUDITING", at=T0 - timedelta(days=3)))], [STUCK])
    assert events == []


def test_source_health_is_announced_once_each_way() -> None:
    tracking = Tracking()
    seen = []
    for minute, ok in [(0, False), (1, False), (3, False), (4, False), (5, True), (6, True)]:
        event, tracking = health_step(
            tracking,
            "prod",
            ok=ok,
            now=T0 + timedelta(minutes=minute),
            unhealthy_after=timedelta(minutes=3),
            error="AK/SK rejected by the API gateway (APIGW.0301)",
        )
        seen.append(event.kind if event else None)
    assert seen == [
        None,
        None,
        EventKind.SOURCE_UNHEALTHY,
        None,
        EventKind.SOURCE_RECOVERED,
        None,
    ]


def test_offline_gap_is_noted() -> None:
    scans = [snap(T0, job("a", "AUDITING")), snap(T0 + timedelta(hours=2), job("a", "WAITING"))]
    previous = None
    tracking = Tracking()
    notes = []
    for s in scans:
        step = advance(previous, tracking, s, [], expected_interval=timedelta(minutes=1))
        notes.extend(e.note for e in step.events)
        previous, tracking = dict(step.jobs), step.tracking
    assert notes == ["the watcher saw no scan for 2h; intermediate states may have been missed"]


def bj(job_id: str, state: str, **kw: object) -> Job:
    return Job(job_id=job_id, state=state, batch_name="b5", create_time=T0, **kw)  # type: ignore[arg-type]


def batch_run(scans: list[Snapshot], quiet: timedelta = timedelta(minutes=10)) -> list[list[str]]:
    """Per scan, the batch events as 'kind: reason'."""
    previous = None
    tracking = Tracking()
    out = []
    for s in scans:
        step = advance(previous, tracking, s, [], batch_quiet=quiet)
        out.append(
            [
                f"{e.kind}: {e.reason}"
                for e in step.events
                if e.kind in (EventKind.BATCH_SETTLED, EventKind.BATCH_UPDATED)
            ]
        )
        previous, tracking = dict(step.jobs), Tracking.from_json(step.tracking.to_json())
    return out


def at(minutes: int, *jobs: Job) -> Snapshot:
    return snap(T0 + timedelta(minutes=minutes), *jobs)


def test_batch_waits_for_late_jobs_and_settles_once_with_exact_counts() -> None:
    """The issue's case: 3 of 5 jobs terminal, the other 2 appear later."""
    noisy = {"job_failed_code": "MSS.1", "job_failed_reason": "too noisy"}
    three = [bj("a", "SUCCEED"), bj("b", "FAILED", **noisy), bj("c", "FAILED", **noisy)]
    five = [*three, bj("d", "SUCCEED"), bj("e", "FAILED", job_failed_reason="voice mismatch")]
    events = batch_run(
        [
            at(0, bj("a", "PROCESSING")),
            at(1, *three),  # terminal, but not quiet yet
            at(5, *three),
            at(8, *five),  # two more appear: the quiet period starts again
            at(15, *five),
            at(19, *five),  # 11 minutes without change: settled
            at(40, *five),
            at(90, *five),
        ]
    )
    fired = [e for evs in events for e in evs]
    assert fired == [
        "batch_settled: batch b5 settled: 2 SUCCEED, 3 FAILED (MSS.1 too noisy ×2, "
        "voice mismatch ×1)"
    ]
    assert events[5] == fired


def test_settled_batch_that_changes_gives_one_update_saying_what_changed() -> None:
    done = [bj("a", "SUCCEED"), bj("b", "FAILED")]
    retried = [bj("a", "SUCCEED"), bj("b", "PROCESSING")]
    fixed = [bj("a", "SUCCEED"), bj("b", "SUCCEED")]
    events = batch_run(
        [
            at(0, bj("a", "PROCESSING"), bj("b", "PROCESSING")),
            at(1, *done),
            at(20, *done),  # settled
            at(30, *retried),  # b is retried: not terminal, nothing yet
            at(40, *fixed),
            at(45, *fixed),
            at(55, *fixed),  # quiet again: one update
            at(90, *fixed),
        ]
    )
    assert [len(e) for e in events] == [0, 0, 1, 0, 0, 0, 1, 0]
    assert events[2][0].startswith("batch_settled: batch b5 settled: 1 SUCCEED, 1 FAILED")
    assert events[6] == [
        "batch_updated: batch b5 changed after it settled: was 1 SUCCEED, 1 FAILED, "
        "now 2 SUCCEED (changed: b)"
    ]


def test_batch_quiet_is_the_sources_setting() -> None:
    done = [bj("a", "SUCCEED")]
    scans = [at(0, bj("a", "PROCESSING")), at(1, *done), at(3, *done)]
    assert batch_run(scans, quiet=timedelta(minutes=1))[2] != []
    assert batch_run(scans, quiet=timedelta(minutes=5))[2] == []


def test_old_memory_of_settled_batches_is_not_announced_again() -> None:
    done = [bj("a", "SUCCEED")]
    old = Tracking(settled_batches=frozenset({"b5"}))
    step = advance({"a": done[0]}, old, at(30, *done), [])
    step = advance(dict(step.jobs), step.tracking, at(60, *done), [])
    assert [e for e in step.events if e.kind is EventKind.BATCH_SETTLED] == []


@given(
    st.lists(
        st.tuples(st.integers(1, 30), st.sampled_from(["PROCESSING", "SUCCEED", "FAILED"])),
        min_size=1,
        max_size=25,
    )
)
def test_a_batch_is_announced_settled_at_most_once(changes: list[tuple[int, str]]) -> None:
    jobs = {"a": bj("a", "PROCESSING"), "b": bj("b", "PROCESSING")}
    scans, minute = [at(0, *jobs.values())], 0
    for step_minutes, state in changes:
        minute += step_minutes
        jobs["ab"[minute % 2]] = bj("ab"[minute % 2], state)
        scans.append(at(minute, *jobs.values()))
    scans.append(at(minute + 60, *jobs.values()))
    fired = [e for evs in batch_run(scans) for e in evs if e.startswith("batch_settled")]
    assert len(fired) <= 1
    if all(j.state != "PROCESSING" for j in jobs.values()):
        assert len(fired) == 1


def test_unhealthy_window_starts_when_the_first_failed_poll_began() -> None:
    """A 40 s outage with 10 s polls: the first poll spends 25 s on retries before failing."""
    after = timedelta(seconds=30)
    event, tracking = health_step(
        Tracking(),
        "prod",
        ok=False,
        now=T0 + timedelta(seconds=25),
        unhealthy_after=after,
        failed_at=T0,
    )
    assert event is None
    assert tracking.failing_since == T0
    event, tracking = health_step(
        tracking,
        "prod",
        ok=False,
        now=T0 + timedelta(seconds=35),
        unhealthy_after=after,
        failed_at=T0 + timedelta(seconds=35),
    )
    assert event is not None
    assert event.kind is EventKind.SOURCE_UNHEALTHY
    assert "35s" in event.reason


def test_a_later_batch_reusing_the_name_settles_as_a_new_batch() -> None:
    previous = None
    tracking = Tracking()
    keys = []
    scans = [
        at(0, bj("a", "PROCESSING")),
        at(1, bj("a", "SUCCEED")),
        at(20, bj("a", "SUCCEED")),  # settled
        at(30),  # the batch is gone (cleaned up)
        at(40, bj("z", "PROCESSING")),  # a new batch, same name
        at(41, bj("z", "FAILED")),
        at(60, bj("z", "FAILED")),  # settled too: a different event
    ]
    for s in scans:
        step = advance(previous, tracking, s, [], vanish_after=1)
        keys += [e.key for e in step.events if e.kind is EventKind.BATCH_SETTLED]
        previous, tracking = dict(step.jobs), Tracking.from_json(step.tracking.to_json())
    assert len(keys) == 2
    assert len(set(keys)) == 2
