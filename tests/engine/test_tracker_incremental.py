"""The tracker's incremental step (an overlay on the last jobs) against a full recomputation."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.engine.diff import Overlay, count_by_state
from watcher.engine.tracker import BatchMemory, Step, Tracking, advance, batch_changes
from watcher.jobsets import StoredJobs
from watcher.model import EventKind, FirstRun, Job, RuleConfig, Snapshot

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
RULES = [
    RuleConfig(name="review", on=("AUDITING",), notify=("ops",), for_=timedelta(hours=1)),
    RuleConfig(
        name="failed",
        on=("AUDIT_FAILED", "SPLIT_FAILED"),
        notify=("ops",),
        for_=timedelta(hours=2),
        repeat=timedelta(hours=3),
    ),
    RuleConfig(name="any", on=("*",), notify=("ops",), for_=timedelta(hours=5)),
    RuleConfig(name="plain", on=("FAILED",), notify=("ops",)),
]
STATES = ["AUDITING", "AUDIT_FAILED", "SPLIT_FAILED", "PROCESSING", "SUCCEED", "FAILED"]
IDS = [f"j{i}" for i in range(8)]

job_change = st.tuples(
    st.sampled_from(IDS),
    st.sampled_from(STATES),
    st.sampled_from([None, "b1", "b2"]),
    st.sampled_from(["none", "now", "old"]),  # lastupdate_time: absent, the scan's, earlier
    st.integers(0, 3),  # reject_times
)
cycle = st.tuples(
    # Minutes since the previous scan; round ones land exactly on `for:`, `repeat:` and quiet.
    st.sampled_from([10, 30, 60, 120]) | st.integers(1, 400),
    st.lists(job_change, max_size=5),
    # A full scan instead of an incremental cycle, listing only these jobs (a job left out
    # counts as missing), or None for an incremental one.
    st.none() | st.sets(st.sampled_from(IDS)),
)


def make(change: tuple[str, str, str | None, str, int], now: datetime) -> Job:
    job_id, state, batch, stamp, rejects = change
    at = {"none": None, "now": now, "old": T0}[stamp]
    return Job(job_id, state, reject_times=rejects, lastupdate_time=at, batch_name=batch)


@settings(max_examples=300, deadline=None)
@given(st.lists(job_change, min_size=1, max_size=8), st.lists(cycle, min_size=1, max_size=12))
def test_incremental_steps_give_exactly_what_a_full_recomputation_gives(
    first: list[tuple[str, str, str | None, str, int]],
    cycles: list[tuple[int, list[tuple[str, str, str | None, str, int]], set[str] | None]],
) -> None:
    now = T0
    baseline = Snapshot("prod", now, {c[0]: make(c, now) for c in first})
    fast = advance(None, Tracking(), baseline, RULES, batch_quiet=timedelta(minutes=30))
    slow = advance(None, Tracking(), baseline, RULES, batch_quiet=timedelta(minutes=30))
    for minutes, changes, listed in cycles:
        now += timedelta(minutes=minutes)
        fetched = {c[0]: make(c, now) for c in changes}
        if listed is None:
            touched = {j: job for j, job in fetched.items() if fast.jobs.get(j) != job}
            fast_jobs: dict[str, Job] = Overlay(fast.jobs, touched)
            slow_jobs = {**slow.jobs, **touched}
        else:
            known = {**fast.jobs, **fetched}
            fast_jobs = {j: known[j] for j in listed if j in known}
            slow_jobs = dict(fast_jobs)
        before = dict(fast.jobs)
        # The daemon replaces fields of the memory between steps; the index must survive it.
        fast_tracking = replace(fast.tracking, unhealthy=False)
        fast = advance(
            fast.jobs,
            fast_tracking,
            Snapshot("prod", now, fast_jobs),
            RULES,
            batch_quiet=timedelta(minutes=30),
        )
        # From scratch: the memory as the store gives it back after a restart, a plain dict.
        slow = advance(
            dict(slow.jobs),
            Tracking.from_json(slow.tracking.to_json()),
            Snapshot("prod", now, slow_jobs),
            RULES,
            batch_quiet=timedelta(minutes=30),
        )
        assert fast.events == slow.events
        assert dict(fast.jobs) == dict(slow.jobs)
        assert fast.tracking == slow.tracking
        assert fast.tracking.to_json() == slow.tracking.to_json()
        # What the step says about itself holds: its counts, and what may have changed.
        if fast.counts is not None:
            assert fast.counts == count_by_state(fast_jobs.values())
        if fast.changed is not None:
            assert {j for j in fast.jobs if fast.jobs[j] != before.get(j)} <= fast.changed
            assert before.keys() <= fast.jobs.keys()


def test_an_idle_incremental_cycle_keeps_the_overlay_and_touches_nothing() -> None:
    jobs = {
        "a": Job("a", "AUDITING", lastupdate_time=T0),
        "b": Job("b", "SUCCEED", lastupdate_time=T0, batch_name="b1"),
    }
    rules = RULES[:1]
    step: Step = advance(None, Tracking(), Snapshot("prod", T0, jobs), rules)
    assert step.tracking.index is not None  # built by the full pass
    memory = step.tracking
    later = T0 + timedelta(minutes=10)
    idle = advance(step.jobs, memory, Snapshot("prod", later, Overlay(step.jobs, {})), rules)
    assert idle.events == ()
    assert isinstance(idle.jobs, Overlay) and idle.jobs.base is step.jobs  # a view, no copy
    # Nothing changed and nothing was due: the memory's mappings are the very same objects.
    assert idle.tracking.stuck is memory.stuck and idle.tracking.batches is memory.batches
    assert idle.tracking.index is memory.index
    # Two hours on, the job is due without being touched: the index finds it.
    due = advance(
        idle.jobs,
        idle.tracking,
        Snapshot("prod", T0 + timedelta(hours=2), Overlay(idle.jobs, {})),
        rules,
    )
    assert [e.kind for e in due.events] == [EventKind.STUCK]
    assert due.tracking.index is memory.index  # the fast path served it


def test_stored_memory_without_an_index_still_loads_and_rebuilds_it() -> None:
    jobs = {"a": Job("a", "AUDITING", lastupdate_time=T0)}
    step = advance(None, Tracking(), Snapshot("prod", T0, jobs), RULES[:1])
    stored = step.tracking.to_json()
    assert "index" not in stored
    loaded = Tracking.from_json(stored)
    assert loaded.index is None and loaded == step.tracking
    later = T0 + timedelta(hours=2)
    previous = dict(step.jobs)  # as the store loads it
    again = advance(previous, loaded, Snapshot("prod", later, Overlay(previous, {})), RULES[:1])
    assert [e.kind for e in again.events] == [EventKind.STUCK]
    assert again.tracking.index is not None


RULES_WATCHING = [r for r in RULES if r.name != "any"]  # no `*`: the index can be rebuilt


@settings(max_examples=300, deadline=None)
@given(
    st.lists(job_change, min_size=1, max_size=8),
    st.lists(st.tuples(cycle, st.booleans()), min_size=1, max_size=12),
    st.sampled_from([RULES, RULES_WATCHING]),
)
def test_steps_on_stored_rows_give_exactly_what_a_full_recomputation_gives(
    first: list[tuple[str, str, str | None, str, int]],
    cycles: list[
        tuple[tuple[int, list[tuple[str, str, str | None, str, int]], set[str] | None], bool]
    ],
    rules: list[RuleConfig],
) -> None:
    """The daemon's way: the stored jobs as compact rows (`StoredJobs`), every cycle, full
    scans included, an overlay on them, the changes applied after each step, and restarts
    (memory read back from JSON, so the index is rebuilt from the rows)."""
    quiet = timedelta(minutes=30)
    now = T0
    baseline = Snapshot("prod", now, {c[0]: make(c, now) for c in first})
    slow = advance(None, Tracking(), baseline, rules, batch_quiet=quiet)
    # The daemon's baseline keeps no index: the first cycle rebuilds it from the rows.
    lean = advance(None, Tracking(), baseline, rules, batch_quiet=quiet, keep_index=False)
    assert lean.tracking.index is None and lean.counts is None
    stored = StoredJobs.of(lean.jobs)
    tracking = lean.tracking
    for (minutes, changes, listed), restart in cycles:
        now += timedelta(minutes=minutes)
        fetched = {c[0]: make(c, now) for c in changes}
        if listed is None:
            touched = {j: job for j, job in fetched.items() if stored.get(j) != job}
            current = Overlay(stored, touched)
            slow_jobs = {**slow.jobs, **touched}
        else:
            known = {**dict(stored.items()), **fetched}
            slow_jobs = {j: known[j] for j in listed if j in known}
            touched = {j: job for j, job in slow_jobs.items() if stored.get(j) != job}
            current = Overlay(stored, touched, [j for j in stored if j not in slow_jobs])
        fast = advance(stored, tracking, Snapshot("prod", now, current), rules, batch_quiet=quiet)
        slow = advance(
            dict(slow.jobs),
            Tracking.from_json(slow.tracking.to_json()),
            Snapshot("prod", now, slow_jobs),
            rules,
            batch_quiet=quiet,
        )
        assert fast.events == slow.events
        assert dict(fast.jobs.items()) == dict(slow.jobs)
        assert fast.tracking == slow.tracking
        if fast.counts is not None:
            assert fast.counts == count_by_state(slow.jobs.values())
        # The shell: lay a view's changes on the rows, else read the rows back.
        if isinstance(fast.jobs, Overlay) and fast.jobs.over(stored):
            stored.apply(fast.jobs.touched, fast.jobs.absent, fast.jobs)
        else:
            stored = StoredJobs.of(dict(fast.jobs.items()))
        assert dict(stored.items()) == dict(slow.jobs)
        tracking = Tracking.from_json(fast.tracking.to_json()) if restart else fast.tracking


@settings(max_examples=200, deadline=None)
@given(
    st.lists(job_change, min_size=1, max_size=8),
    st.sampled_from([RULES, RULES_WATCHING]),
    st.sampled_from(list(FirstRun)),
)
def test_a_step_that_keeps_no_index_is_the_same_step_without_one(
    first: list[tuple[str, str, str | None, str, int]],
    rules: list[RuleConfig],
    first_run: FirstRun,
) -> None:
    baseline = Snapshot("prod", T0 + timedelta(hours=6), {c[0]: make(c, T0) for c in first})
    kept = advance(None, Tracking(), baseline, rules, first_run=first_run)
    lean = advance(None, Tracking(), baseline, rules, first_run=first_run, keep_index=False)
    assert lean.events == kept.events and dict(lean.jobs) == dict(kept.jobs)
    assert lean.tracking == kept.tracking  # the index is not part of the memory's value
    assert lean.tracking.index is None and lean.counts is None
    assert kept.tracking.index is not None and kept.counts == count_by_state(kept.jobs.values())


def test_a_restart_rebuilds_the_index_from_the_rows_and_reads_only_watched_jobs() -> None:
    jobs = {
        f"s{i}": Job(f"s{i}", "SUCCEED", lastupdate_time=T0, batch_name="b1") for i in range(50)
    }
    jobs["a"] = Job("a", "AUDITING", lastupdate_time=T0, batch_name="b1")
    step = advance(None, Tracking(), Snapshot("prod", T0, jobs), RULES_WATCHING)
    reads: list[int] = []

    def load(ids: object) -> dict[str, Job]:
        assert ids is not None, "a fast step never reads the whole table"
        wanted = list(ids)  # type: ignore[call-overload]
        reads.append(len(wanted))
        return {j: jobs[j] for j in wanted}

    stored = StoredJobs(
        {j: (None, job.state, job.batch_name, None, j) for j, job in jobs.items()}, load
    )
    memory = Tracking.from_json(step.tracking.to_json())
    assert memory.index is None
    later = T0 + timedelta(minutes=61)
    idle = advance(stored, memory, Snapshot("prod", later, Overlay(stored, {})), RULES_WATCHING)
    assert [e.kind for e in idle.events] == [EventKind.STUCK]  # `a` is AUDITING for 1h+
    assert sum(reads) == 1  # only the one job a stuck rule watches
    assert idle.tracking.index is not None and idle.counts == {"SUCCEED": 50, "AUDITING": 1}


memory_of = st.builds(
    BatchMemory,
    st.sampled_from(["s1", "s2", "s3"]),
    st.just(T0),
    st.just(T0),
    st.sampled_from([None, "s1"]),
)
batch_maps = st.dictionaries(st.sampled_from(["b1", "b2", "b3", "b4"]), memory_of)


@settings(max_examples=200, deadline=None)
@given(batch_maps, batch_maps, st.booleans())
def test_batch_changes_written_onto_the_last_write_give_the_new_memory(
    before: dict[str, BatchMemory], after: dict[str, BatchMemory], share: bool
) -> None:
    if share:  # an incremental step keeps unchanged memories as the very objects
        after = {**after, **{k: v for k, v in before.items() if k not in after}}
    stored = {k: v.to_json() for k, v in before.items()}
    changed, removed, complete = batch_changes(before, after)
    assert not complete
    for name in removed:
        del stored[name]
    stored.update(changed)
    assert stored == {k: v.to_json() for k, v in after.items()}
    assert all(after[k] != before.get(k) for k in changed)  # nothing rewritten needlessly
    # Nothing known to be written: all of it, as a replacement.
    assert batch_changes(None, after) == ({k: v.to_json() for k, v in after.items()}, [], True)
    assert batch_changes(after, after) == ({}, [], False)
