"""The engine's memory between scans, and one pure step that advances it.

`advance` composes the snapshot diff with what needs history: jobs stuck too long, jobs that
succeeded after failing, batches that settled, sources that went blind. The shell persists
`Tracking` in the same transaction as the snapshot, so a crash never replays or loses it.
An incremental step (an `Overlay` on the last jobs) costs what changed plus what is due, not
the tenant's size: `_Index` keeps what a full pass would recompute (see there).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from watcher.engine.diff import count_by_state, diff, first_run_events, format_duration
from watcher.jobsets import Overlay, StoredJobs
from watcher.model import (
    AUDIT_FAILED,
    FAILURE_STATES,
    SETTLED_STATES,
    SPLIT_FAILED,
    SUCCEED,
    Event,
    EventKind,
    FirstRun,
    Job,
    RuleConfig,
    Snapshot,
)

# A job that reaches SUCCEED after one of these is announced as `recovered`.
RECOVERABLE_STATES = frozenset({AUDIT_FAILED, SPLIT_FAILED})


@dataclass(frozen=True, slots=True)
class FailureMemory:
    first_failed_at: datetime
    rejections: int
    last_state: str


@dataclass(frozen=True, slots=True)
class StuckMemory:
    stay: str  # identifies one stay in a state; a new stay resets the reminders
    fired: int  # reminders sent in this stay
    last_fired_at: datetime


@dataclass(frozen=True, slots=True)
class BatchMemory:
    """One batch between scans: what it looked like, since when, and what was announced."""

    signature: str  # digest of every job's id, state and update time
    changed_at: datetime  # when a job of it last changed or appeared
    # When the watcher first saw this batch: a later batch reusing the name is another one.
    first_seen: datetime
    announced: str | None = None  # the signature last announced (settled or updated)
    # state -> count when last announced, so an update can say what changed.
    announced_counts: Mapping[str, int] = field(default_factory=dict)
    # Jobs that changed or appeared since the last announcement (bounded).
    changed_jobs: tuple[str, ...] = ()

    def to_json(self) -> list[Any]:
        return [
            self.signature,
            self.changed_at.isoformat(),
            self.first_seen.isoformat(),
            self.announced,
            dict(self.announced_counts),
            list(self.changed_jobs),
        ]

    @classmethod
    def from_json(cls, value: Sequence[Any]) -> BatchMemory:
        return cls(
            str(value[0]),
            datetime.fromisoformat(value[1]),
            datetime.fromisoformat(value[2]),
            value[3],
            {str(k): int(v) for k, v in dict(value[4]).items()},
            tuple(str(j) for j in value[5]),
        )


@dataclass(frozen=True, slots=True)
class Tracking:
    """Everything beyond the snapshot that the engine needs from one scan to the next."""

    missing: Mapping[str, int] = field(default_factory=dict)
    # job_id -> when the watcher first saw it in its current state (when lastupdate_time is absent)
    entered: Mapping[str, datetime] = field(default_factory=dict)
    failures: Mapping[str, FailureMemory] = field(default_factory=dict)
    stuck: Mapping[str, StuckMemory] = field(default_factory=dict)  # "job_id|rule" -> memory
    settled_batches: frozenset[str] = frozenset()  # before batch memory: read, never written
    batches: Mapping[str, BatchMemory] = field(default_factory=dict)
    failing_since: datetime | None = None
    unhealthy: bool = False
    last_scan_at: datetime | None = None
    # Derived from the step that made this memory, never persisted (a restart rebuilds it
    # with one full pass); carried by `replace`, ignored by equality.
    index: _Index | None = field(default=None, compare=False, repr=False)

    def to_json(self, *, batches: bool = True) -> dict[str, Any]:
        """The memory as JSON values; without `batches` when the store keeps those apart
        (a row each, see `batch_changes`): 5,000 batches are ~1 MB to write every cycle."""
        out = {
            "missing": dict(self.missing),
            "entered": {k: v.isoformat() for k, v in self.entered.items()},
            "failures": {
                k: [v.first_failed_at.isoformat(), v.rejections, v.last_state]
                for k, v in self.failures.items()
            },
            "stuck": {
                k: [v.stay, v.fired, v.last_fired_at.isoformat()] for k, v in self.stuck.items()
            },
            "settled_batches": sorted(self.settled_batches),
            "failing_since": self.failing_since.isoformat() if self.failing_since else None,
            "unhealthy": self.unhealthy,
            "last_scan_at": self.last_scan_at.isoformat() if self.last_scan_at else None,
        }
        if batches:  # not even built otherwise: serialising them is the cost to avoid
            out["batches"] = {k: v.to_json() for k, v in self.batches.items()}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tracking:
        def dt(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        return cls(
            missing={str(k): int(v) for k, v in data.get("missing", {}).items()},
            entered={str(k): datetime.fromisoformat(v) for k, v in data.get("entered", {}).items()},
            failures={
                str(k): FailureMemory(datetime.fromisoformat(v[0]), int(v[1]), str(v[2]))
                for k, v in data.get("failures", {}).items()
            },
            stuck={
                str(k): StuckMemory(str(v[0]), int(v[1]), datetime.fromisoformat(v[2]))
                for k, v in data.get("stuck", {}).items()
            },
            settled_batches=frozenset(data.get("settled_batches", [])),
            batches={str(k): BatchMemory.from_json(v) for k, v in data.get("batches", {}).items()},
            failing_since=dt(data.get("failing_since")),
            unhealthy=bool(data.get("unhealthy", False)),
            last_scan_at=dt(data.get("last_scan_at")),
        )


def batch_changes(
    before: Mapping[str, BatchMemory] | None, after: Mapping[str, BatchMemory]
) -> tuple[dict[str, list[Any]], list[str], bool]:
    """What to write of `after`'s batch memory when `before` is what was last written (None:
    nothing is known to be written, so all of it, replacing what is stored): the changed
    memories as JSON values, the names gone, and whether that is all of it. An incremental
    step keeps each unchanged memory as the very object, so this costs the changes."""
    if before is None:
        return {k: v.to_json() for k, v in after.items()}, [], True
    if before is after:
        return {}, [], False
    changed = {
        k: v.to_json() for k, v in after.items() if (old := before.get(k)) is not v and old != v
    }
    return changed, [k for k in before if k not in after], False


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one complete scan: events, the jobs to store, the memory to keep."""

    events: tuple[Event, ...]
    jobs: Mapping[str, Job]
    tracking: Tracking
    # The job ids that may differ from `previous` (added or changed; none removed), when the
    # step knows them (an overlay): what a store needs to write. None: compare every job.
    changed: frozenset[str] | None = None
    # The snapshot's jobs by state, kept up to date from the changes (for metrics), when
    # known without a pass over every job. None: count them.
    counts: Mapping[str, int] | None = None


def advance(
    previous: Mapping[str, Job] | None,
    tracking: Tracking,
    snapshot: Snapshot,
    rules: Sequence[RuleConfig],
    *,
    first_run: FirstRun = FirstRun.BASELINE,
    vanish_after: int = 3,
    expected_interval: timedelta | None = None,
    batch_quiet: timedelta = timedelta(minutes=10),
    keep_index: bool = True,
) -> Step:
    """One complete scan's worth of events. `previous` is None on a source's first scan.

    `keep_index=False`: the caller will not hand this step's memory to the next step (it
    reads the next previous from the store, whose rows rebuild an index), so a full pass
    builds none: at a 1M-job baseline its batch members alone were 33 MB of the peak."""
    now = snapshot.taken_at
    stuck_rules = [r for r in rules if r.for_ is not None]
    offline_gap = None
    if expected_interval is not None and tracking.last_scan_at is not None:
        gap = now - tracking.last_scan_at
        if gap > expected_interval * 3:
            offline_gap = gap
    current = snapshot.jobs
    overlaid = previous is not None and isinstance(current, Overlay) and current.over(previous)
    index = tracking.index
    fast = False
    if overlaid and isinstance(current, Overlay) and not current.absent:
        if index is None or not index.serves(previous, tracking, stuck_rules):
            # A fresh process (`once`, a restart): the index from the stored rows.
            index = _Index.rebuild(previous, tracking, stuck_rules)
        fast = index is not None
    if not fast and isinstance(current, Overlay):
        # The full pass reads every job: in one go, not one at a time through the view.
        previous, current = _materialised(previous, current)
        snapshot = replace(snapshot, jobs=current)
        overlaid = False
    retained = False
    if previous is None:
        events = list(first_run_events(snapshot, first_run))
        # The scan's own dict, shared rather than copied (nothing writes to either): a
        # copy of a 1M-job baseline's would be 40 MB more at its peak.
        jobs: Mapping[str, Job] = (
            snapshot.jobs if type(snapshot.jobs) is dict else dict(snapshot.jobs)
        )
        missing: Mapping[str, int] = {}
    else:
        result = diff(
            previous,
            snapshot,
            missing=tracking.missing,
            vanish_after=vanish_after,
            offline_gap=offline_gap,
        )
        events = list(result.events)
        if overlaid and not result.retained:
            # An overlay is a view of every job: keep it rather than copy 1M.
            assert isinstance(current, Overlay)
            jobs = current
        else:
            jobs = {**result.retained, **snapshot.jobs}
            retained = bool(result.retained)
        missing = result.missing

    failures: Mapping[str, FailureMemory]
    if fast:
        assert index is not None and previous is not None and isinstance(current, Overlay)
        index.jobs = None  # mutated below: useless to anyone else if this step fails midway
        touched = current.touched
        _recount(index.counts, previous, current, touched)
        entered = _entered_changed(previous, tracking.entered, snapshot, touched)
        if events:
            events, failures = _recoveries(events, tracking.failures, snapshot.jobs)
        else:
            failures = tracking.failures  # nothing left the overlay, so nothing to forget
        stuck_events, stuck = _stuck_due(
            snapshot, stuck_rules, tracking.stuck, entered, touched, index
        )
        batch_events, batches = _batches_changed(
            previous, snapshot, tracking, batch_quiet, touched, index
        )
        index.adopt(jobs, entered, stuck, batches)
    else:
        entered = _entered(previous or {}, tracking.entered, snapshot)
        events, failures = _recoveries(events, tracking.failures, snapshot.jobs)
        stuck_events, stuck = _stuck(snapshot, rules, tracking.stuck, entered, now)
        batch_events, batches = _batches(previous, snapshot, tracking, batch_quiet)
        # Retained jobs are outside this step's bookkeeping: the next step is a full one.
        index = (
            None
            if retained or not keep_index
            else _Index.build(jobs, stuck_rules, entered, stuck, batches, now)
        )
    if previous is not None or first_run is FirstRun.NOTIFY:
        events.extend(stuck_events)
    elif first_run is FirstRun.SUMMARY:
        # Day one: one digest that also names what is already stuck.
        events = [summary(snapshot, stuck_events)]
    events.extend(batch_events)
    new_tracking = replace(
        tracking,
        missing=missing,
        entered=entered,
        failures=failures,
        stuck=stuck,
        settled_batches=frozenset(),
        batches=batches,
        last_scan_at=now,
        index=index,
    )
    changed = frozenset(current.touched) if overlaid and isinstance(current, Overlay) else None
    counts = dict(index.counts) if index is not None else None
    return Step(tuple(events), jobs, new_tracking, changed, counts)


def _materialised(
    previous: Mapping[str, Job] | None, current: Overlay
) -> tuple[dict[str, Job] | None, dict[str, Job]]:
    """`previous` and the overlay `current` as plain dicts, the stored base read once."""
    base = current.base
    whole = base.materialise() if isinstance(base, StoredJobs) else dict(base.items())
    if previous is base:
        before: dict[str, Job] | None = dict(whole)
    elif isinstance(previous, StoredJobs):
        before = previous.materialise()
    else:
        before = None if previous is None else dict(previous.items())
    for job_id in current.absent:
        whole.pop(job_id, None)
    whole.update(current.touched)
    return before, whole


def _read(jobs: Mapping[str, Job], ids: Iterable[str]) -> list[Job]:
    """`jobs[j]` for each of `ids`, reading what a stored base does not hold in one go."""
    wanted = list(ids)
    if isinstance(jobs, Overlay) and isinstance(jobs.base, StoredJobs):
        jobs.base.materialise([j for j in wanted if j not in jobs.touched])
    return [jobs[j] for j in wanted]


def _recount(
    counts: dict[str, int],
    previous: Mapping[str, Job],
    current: Mapping[str, Job],
    touched: Iterable[str],
) -> None:
    """Jobs by state after an overlay: the touched jobs move from their old state."""
    for job_id in touched:
        old = previous.get(job_id)
        if old is not None:
            left = counts.get(old.state, 0) - 1
            if left > 0:
                counts[old.state] = left
            else:
                counts.pop(old.state, None)
        state = current[job_id].state
        counts[state] = counts.get(state, 0) + 1


StuckKey = tuple[str, int]  # (job_id, index of the stuck rule)


class _Index:
    """What a full pass over the jobs would find, kept so that an incremental step touches
    only the jobs it changed plus what is due: when each (job, stuck rule) pair next fires
    (a heap, stale entries skipped lazily), each batch's members, and the batches waiting
    out their quiet time. Valid only for the exact jobs and memory it was built with."""

    __slots__ = (
        "batches",
        "counts",
        "due",
        "entered",
        "heap",
        "jobs",
        "members",
        "pending",
        "rules",
        "stuck",
    )

    def __init__(self, rules: tuple[tuple[object, ...], ...]) -> None:
        self.rules = rules
        self.jobs: Mapping[str, Job] | None = None
        self.entered: Mapping[str, datetime] = {}
        self.stuck: Mapping[str, StuckMemory] = {}
        self.batches: Mapping[str, BatchMemory] = {}
        self.due: dict[StuckKey, datetime] = {}
        self.heap: list[tuple[datetime, str, int]] = []
        self.members: dict[str, set[str]] = {}
        # Batches all settled but not announced as they are: name -> when one last changed.
        self.pending: dict[str, datetime] = {}
        self.counts: dict[str, int] = {}

    @staticmethod
    def rules_key(stuck_rules: Sequence[RuleConfig]) -> tuple[tuple[object, ...], ...]:
        return tuple((r.name, r.on, r.for_, r.repeat) for r in stuck_rules)

    @classmethod
    def build(
        cls,
        jobs: Mapping[str, Job],
        stuck_rules: Sequence[RuleConfig],
        entered: Mapping[str, datetime],
        stuck: Mapping[str, StuckMemory],
        batches: Mapping[str, BatchMemory],
        now: datetime,
    ) -> _Index | None:
        if len({r.name for r in stuck_rules}) != len(stuck_rules):
            return None  # memory keys would collide: only the full pass reproduces that
        index = cls(cls.rules_key(stuck_rules))
        open_batches: set[str] = set()
        members = index.members
        watched = _watched_states(stuck_rules) if stuck_rules else frozenset()
        counts = index.counts
        for job_id, job in jobs.items():
            counts[job.state] = counts.get(job.state, 0) + 1
            if job.batch_name:
                members.setdefault(job.batch_name, set()).add(job_id)
                if job.state not in SETTLED_STATES:
                    open_batches.add(job.batch_name)
            if watched is not None and job.state not in watched:
                continue
            index.add_due(job_id, job, stuck_rules, entered, stuck, now)
        index.finish(open_batches, jobs, entered, stuck, batches)
        return index

    @classmethod
    def rebuild(
        cls,
        previous: Mapping[str, Job] | None,
        tracking: Tracking,
        stuck_rules: Sequence[RuleConfig],
    ) -> _Index | None:
        """What `build` made at the end of the step that stored `previous`, from the
        stored rows and that step's memory: only jobs a stuck rule watches are read. None
        when that would not be exact (jobs missing from the last scan, old memory, a rule
        watching every state, a batch without memory): the full pass then decides."""
        if not isinstance(previous, StoredJobs) or tracking.last_scan_at is None:
            return None
        if tracking.settled_batches or any(j in previous for j in tracking.missing):
            return None
        if len({r.name for r in stuck_rules}) != len(stuck_rules):
            return None
        watched = _watched_states(stuck_rules) if stuck_rules else frozenset()
        if watched is None:
            return None
        index = cls(cls.rules_key(stuck_rules))
        counts, members = index.counts, index.members
        open_batches: set[str] = set()
        watch: list[str] = []
        for job_id, (_, state, batch, _, _) in previous.rows().items():
            counts[state] = counts.get(state, 0) + 1
            if batch:
                members.setdefault(batch, set()).add(job_id)
                if state not in SETTLED_STATES:
                    open_batches.add(batch)
            if state in watched:
                watch.append(job_id)
        batches = tracking.batches
        if any(name not in batches for name in members):
            return None
        now = tracking.last_scan_at
        entered, stuck = tracking.entered, tracking.stuck
        for job_id, job in previous.materialise(watch).items():
            index.add_due(job_id, job, stuck_rules, entered, stuck, now)
        index.finish(open_batches, previous, entered, stuck, batches)
        return index

    def add_due(
        self,
        job_id: str,
        job: Job,
        stuck_rules: Sequence[RuleConfig],
        entered: Mapping[str, datetime],
        stuck: Mapping[str, StuckMemory],
        now: datetime,
    ) -> None:
        """When each stuck rule next fires for `job` (before `finish` heaps them)."""
        for i, rule in enumerate(stuck_rules):
            when = _due(job_id, job, rule, entered, stuck, now)
            if when is not None:
                self.due[(job_id, i)] = when

    def finish(
        self,
        open_batches: set[str],
        jobs: Mapping[str, Job],
        entered: Mapping[str, datetime],
        stuck: Mapping[str, StuckMemory],
        batches: Mapping[str, BatchMemory],
    ) -> None:
        """The heap of what is due, the settled batches still to announce, and the memory
        this index describes: the common end of `build` and `rebuild`."""
        self.heap = [(when, job_id, i) for (job_id, i), when in self.due.items()]
        heapq.heapify(self.heap)
        for name in self.members:
            mem = batches[name]
            if name not in open_batches and mem.announced != mem.signature:
                self.pending[name] = mem.changed_at
        self.adopt(jobs, entered, stuck, batches)

    def serves(
        self,
        previous: Mapping[str, Job] | None,
        tracking: Tracking,
        stuck_rules: Sequence[RuleConfig],
    ) -> bool:
        applied = isinstance(previous, StoredJobs) and previous.applied is self.jobs
        return (
            self.jobs is not None
            and (self.jobs is previous or applied)
            and self.entered is tracking.entered
            and self.stuck is tracking.stuck
            and self.batches is tracking.batches
            and not tracking.settled_batches
            and self.rules == self.rules_key(stuck_rules)
        )

    def adopt(
        self,
        jobs: Mapping[str, Job],
        entered: Mapping[str, datetime],
        stuck: Mapping[str, StuckMemory],
        batches: Mapping[str, BatchMemory],
    ) -> None:
        self.jobs, self.entered, self.stuck, self.batches = jobs, entered, stuck, batches

    def push(self, key: StuckKey, when: datetime) -> None:
        self.due[key] = when
        heapq.heappush(self.heap, (when, key[0], key[1]))

    def pop_due(self, now: datetime) -> set[str]:
        """Jobs with a pair due at `now` (their pairs are dropped: the caller re-adds them)."""
        out: set[str] = set()
        heap, due = self.heap, self.due
        while heap and heap[0][0] <= now:
            when, job_id, i = heapq.heappop(heap)
            if due.get((job_id, i)) == when:
                out.add(job_id)
        if len(heap) > 2 * len(due) + 1024:  # mostly stale entries: start afresh
            self.heap = [(when, job_id, i) for (job_id, i), when in due.items()]
            heapq.heapify(self.heap)
        return out


def _due(
    job_id: str,
    job: Job,
    rule: RuleConfig,
    entered: Mapping[str, datetime],
    memory: Mapping[str, StuckMemory],
    now: datetime,
) -> datetime | None:
    """When `_stuck` would next fire `rule` for `job` if nothing changes (None: never)."""
    if rule.for_ is None or ("*" not in rule.on and job.state not in rule.on):
        return None
    since = job.lastupdate_time or entered.get(job_id, now)
    mem = memory.get(f"{job_id}|{rule.name}")
    try:
        if mem is None or mem.stay != f"{job.state}|{since.isoformat()}":
            return since + rule.for_
        if rule.repeat is not None:
            return mem.last_fired_at + rule.repeat
    except OverflowError:
        pass  # beyond the calendar: never
    return None


def _entered(
    previous: Mapping[str, Job], entered: Mapping[str, datetime], snapshot: Snapshot
) -> dict[str, datetime]:
    """When each job entered its current state, as far as the watcher knows: only for jobs
    without `lastupdate_time` (the API's own time is better, and 100k entries persisted every
    cycle would cost more than the whole diff)."""
    out: dict[str, datetime] = {}
    for job_id, job in snapshot.jobs.items():
        if job.lastupdate_time is not None:
            continue
        old = previous.get(job_id)
        if old is not None and old.state == job.state and job_id in entered:
            out[job_id] = entered[job_id]
        else:
            out[job_id] = snapshot.taken_at
    return out


def _entered_changed(
    previous: Mapping[str, Job],
    entered: Mapping[str, datetime],
    snapshot: Snapshot,
    touched: Iterable[str],
) -> Mapping[str, datetime]:
    """`_entered` for an overlay: only touched jobs can differ (copied only if one does)."""
    out: dict[str, datetime] | None = None
    for job_id in touched:
        job = snapshot.jobs[job_id]
        if job.lastupdate_time is not None:
            if job_id in entered:
                out = dict(entered) if out is None else out
                out.pop(job_id, None)
            continue
        old = previous.get(job_id)
        if old is not None and old.state == job.state and job_id in entered:
            continue
        out = dict(entered) if out is None else out
        out[job_id] = snapshot.taken_at
    return entered if out is None else out


def _recoveries(
    events: list[Event], failures: Mapping[str, FailureMemory], jobs: Mapping[str, Job]
) -> tuple[list[Event], dict[str, FailureMemory]]:
    """Remember failures; a later SUCCEED becomes `recovered`, referring back to them."""
    memory = {k: v for k, v in failures.items() if k in jobs}
    out: list[Event] = []
    for event in events:
        job = event.job
        if job is None or event.kind not in (
            EventKind.TRANSITION,
            EventKind.NEW,
            EventKind.REJECTED_AGAIN,
        ):
            out.append(event)
            continue
        seen = memory.get(job.job_id)
        if job.state in RECOVERABLE_STATES:
            when = job.lastupdate_time or event.detected_at
            if seen is None:
                memory[job.job_id] = FailureMemory(when, 1, job.state)
            else:
                memory[job.job_id] = FailureMemory(
                    seen.first_failed_at, seen.rejections + 1, job.state
                )
            out.append(event)
        elif job.state == SUCCEED and seen is not None and event.kind is EventKind.TRANSITION:
            took = (job.lastupdate_time or event.detected_at) - seen.first_failed_at
            plural = "s" if seen.rejections != 1 else ""
            out.append(
                replace(
                    event,
                    kind=EventKind.RECOVERED,
                    reason=(
                        f"job {job.job_id} succeeded after {seen.rejections} "
                        f"{_failure_word(seen.last_state)}{plural}, "
                        f"{format_duration(took)} after the first"
                    ),
                )
            )
            del memory[job.job_id]
        else:
            if job.state in SETTLED_STATES:
                memory.pop(job.job_id, None)
            out.append(event)
    return out, memory


def _failure_word(state: str) -> str:
    return "rejection" if state == AUDIT_FAILED else "failure"


def _stuck(
    snapshot: Snapshot,
    rules: Sequence[RuleConfig],
    memory: Mapping[str, StuckMemory],
    entered: Mapping[str, datetime],
    now: datetime,
) -> tuple[list[Event], dict[str, StuckMemory]]:
    """`stuck` fires once per stay past a rule's `for:`, then every `repeat:` if set."""
    stuck_rules = [r for r in rules if r.for_ is not None]
    out: list[Event] = []
    kept: dict[str, StuckMemory] = {}
    if not stuck_rules:
        return out, kept
    watched = _watched_states(stuck_rules)
    # Only jobs in a watched state can fire or keep memory: sort those, not every id.
    ids = [j for j, job in snapshot.jobs.items() if watched is None or job.state in watched]
    for job_id in sorted(ids):
        job = snapshot.jobs[job_id]
        since = job.lastupdate_time or entered.get(job_id, now)
        _stuck_job(snapshot.source, job, since, stuck_rules, memory, now, out, kept)
    return out, kept


def _watched_states(stuck_rules: Sequence[RuleConfig]) -> frozenset[str] | None:
    """The states some stuck rule watches (None: every state, a rule says `*`)."""
    if any("*" in r.on for r in stuck_rules):
        return None
    return frozenset(s for r in stuck_rules for s in r.on)


def _stuck_due(
    snapshot: Snapshot,
    stuck_rules: Sequence[RuleConfig],
    memory: Mapping[str, StuckMemory],
    entered: Mapping[str, datetime],
    touched: Iterable[str],
    index: _Index,
) -> tuple[list[Event], Mapping[str, StuckMemory]]:
    """`_stuck` for an overlay: only touched jobs and those with a pair due can fire or
    change memory; every other job's memory stays as the last full pass left it."""
    out: list[Event] = []
    if not stuck_rules:
        return out, memory
    now = snapshot.taken_at
    check = index.pop_due(now)
    check.update(touched)
    if not check:
        return out, memory
    kept = dict(memory)
    for job_id in sorted(check):
        job = snapshot.jobs[job_id]
        for i, rule in enumerate(stuck_rules):
            kept.pop(f"{job_id}|{rule.name}", None)
            index.due.pop((job_id, i), None)
        since = job.lastupdate_time or entered.get(job_id, now)
        _stuck_job(snapshot.source, job, since, stuck_rules, memory, now, out, kept)
        for i, rule in enumerate(stuck_rules):
            when = _due(job_id, job, rule, entered, kept, now)
            if when is not None:
                index.push((job_id, i), when)
    return out, kept


def _stuck_job(
    source: str,
    job: Job,
    since: datetime,
    stuck_rules: Sequence[RuleConfig],
    memory: Mapping[str, StuckMemory],
    now: datetime,
    out: list[Event],
    kept: dict[str, StuckMemory],
) -> None:
    """One job's stuck rules: events appended to `out`, memory to keep put in `kept`."""
    job_id = job.job_id
    stay = f"{job.state}|{since.isoformat()}"
    for rule in stuck_rules:
        if "*" not in rule.on and job.state not in rule.on:
            continue
        assert rule.for_ is not None
        key = f"{job_id}|{rule.name}"
        mem = memory.get(key)
        if mem is not None and mem.stay != stay:
            mem = None  # a new stay: start over
        stayed = now - since
        due = False
        if mem is None:
            due = stayed >= rule.for_
        elif rule.repeat is not None:
            due = now - mem.last_fired_at >= rule.repeat
        if due:
            fired = 0 if mem is None else mem.fired
            still = "still " if fired else ""
            out.append(
                Event(
                    EventKind.STUCK,
                    source,
                    now,
                    f"job {job_id} is {still}{job.state} after {format_duration(stayed)}"
                    f" (rule {rule.name}: for {format_duration(rule.for_)})",
                    job=job,
                    previous_state=job.state,
                    subject=rule.name,
                    sequence=fired,
                    details={"stayed_seconds": int(stayed.total_seconds())},
                )
            )
            kept[key] = StuckMemory(stay, fired + 1, now)
        elif mem is not None:
            kept[key] = mem


MAX_CHANGED_JOBS = 20


def _batches(
    previous: Mapping[str, Job] | None,
    snapshot: Snapshot,
    tracking: Tracking,
    quiet: timedelta,
) -> tuple[list[Event], dict[str, BatchMemory]]:
    """A batch settles once: every job terminal and none changed or appeared for `quiet`.
    A settled batch that changes again gives one `batch_updated` saying what changed."""
    by_batch: dict[str, list[Job]] = {}
    for job in snapshot.jobs.values():
        if job.batch_name:
            by_batch.setdefault(job.batch_name, []).append(job)
    out: list[Event] = []
    kept: dict[str, BatchMemory] = {}
    for name in sorted(by_batch):
        jobs = sorted(by_batch[name], key=lambda j: j.job_id)
        event, kept[name], _ = _batch_step(name, jobs, previous, snapshot, tracking, quiet)
        if event is not None:
            out.append(event)
    return out, kept


def _batches_changed(
    previous: Mapping[str, Job],
    snapshot: Snapshot,
    tracking: Tracking,
    quiet: timedelta,
    touched: Iterable[str],
    index: _Index,
) -> tuple[list[Event], Mapping[str, BatchMemory]]:
    """`_batches` for an overlay: only batches with a touched job, and settled-looking ones
    whose `quiet` is over, can announce or change memory."""
    members, pending = index.members, index.pending
    now = snapshot.taken_at
    # An untouched batch can only announce once its quiet time is over.
    names = {name for name, at in pending.items() if now - at >= quiet}
    for job_id in touched:
        job = snapshot.jobs[job_id]
        old = previous.get(job_id)
        before = old.batch_name if old is not None else None
        if before != job.batch_name:
            if before:
                members.get(before, set()).discard(job_id)
            if job.batch_name:
                members.setdefault(job.batch_name, set()).add(job_id)
        if before:
            names.add(before)
        if job.batch_name:
            names.add(job.batch_name)
    out: list[Event] = []
    if not names:
        return out, tracking.batches
    kept = dict(tracking.batches)
    for name in sorted(names):
        ids = members.get(name)
        if not ids:  # its last job moved to another batch: forgotten, as a full pass would
            members.pop(name, None)
            kept.pop(name, None)
            pending.pop(name, None)
            continue
        jobs = sorted(_read(snapshot.jobs, ids), key=lambda j: j.job_id)
        event, mem, terminal = _batch_step(name, jobs, previous, snapshot, tracking, quiet)
        kept[name] = mem
        if event is not None:
            out.append(event)
        if terminal and mem.announced != mem.signature:
            pending[name] = mem.changed_at
        else:
            pending.pop(name, None)
    return out, kept


def _batch_step(
    name: str,
    jobs: Sequence[Job],
    previous: Mapping[str, Job] | None,
    snapshot: Snapshot,
    tracking: Tracking,
    quiet: timedelta,
) -> tuple[Event | None, BatchMemory, bool]:
    """One batch (its jobs by id): the event it gives, its memory, whether all are settled."""
    now = snapshot.taken_at
    signature = _batch_signature(jobs)
    terminal = all(j.state in SETTLED_STATES for j in jobs)
    mem = tracking.batches.get(name)
    if mem is None:
        # Unknown so far: at the first scan (or from the old memory, which only kept
        # names) a batch already settled is history, not news.
        history = previous is None or name in tracking.settled_batches
        announced = signature if (terminal and history) else None
        counts = _state_counts(jobs) if announced else {}
        return None, BatchMemory(signature, now, now, announced, counts), terminal
    if mem.signature != signature:
        changed = mem.changed_jobs
        if mem.announced is not None:
            changed = _changed_jobs(previous or {}, jobs, changed)
        mem = replace(mem, signature=signature, changed_at=now, changed_jobs=changed)
    event = None
    if terminal and mem.announced != signature and now - mem.changed_at >= quiet:
        if mem.announced is None:
            event = batch_event(snapshot.source, name, jobs, now, since=mem.first_seen)
        else:
            event = batch_update_event(snapshot.source, name, jobs, mem, now)
        mem = replace(
            mem, announced=signature, announced_counts=_state_counts(jobs), changed_jobs=()
        )
    return event, mem, terminal


def _batch_signature(jobs: Sequence[Job]) -> str:
    digest = hashlib.sha256()
    for job in jobs:
        stamp = job.lastupdate_time.isoformat() if job.lastupdate_time else ""
        digest.update(f"{job.job_id}\0{job.state}\0{stamp}\n".encode())
    return digest.hexdigest()[:24]


def _state_counts(jobs: Iterable[Job]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    return counts


def _changed_jobs(
    previous: Mapping[str, Job], jobs: Sequence[Job], already: tuple[str, ...]
) -> tuple[str, ...]:
    """Jobs of a batch that appeared or changed state since the previous scan, added to
    those already noted since the last announcement (bounded: the update names a few)."""
    out = list(already)
    for job in jobs:
        old = previous.get(job.job_id)
        if (old is None or old.state != job.state) and job.job_id not in out:
            out.append(job.job_id)
    return tuple(out[:MAX_CHANGED_JOBS])


def _counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(
        f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: (s != SUCCEED, s)) if counts[s]
    )


def batch_update_event(
    source: str, name: str, jobs: Sequence[Job], mem: BatchMemory, now: datetime
) -> Event:
    """A settled batch that changed and settled again: what it was, what it is, which jobs."""
    counts = _state_counts(jobs)
    before = _counts_text(mem.announced_counts) or "nothing"
    which = ", ".join(mem.changed_jobs[:5])
    if len(mem.changed_jobs) > 5:
        which += f" and {len(mem.changed_jobs) - 5} more"
    text = f"batch {name} changed after it settled: was {before}, now {_counts_text(counts)}"
    if which:
        text += f" (changed: {which})"
    return Event(
        EventKind.BATCH_UPDATED,
        source,
        now,
        text,
        subject=f"{name}|update|{mem.first_seen.isoformat()}|{_batch_signature(jobs)}",
        details={
            "batch_name": name,
            "counts": counts,
            "previous_counts": dict(mem.announced_counts),
            "changed_jobs": list(mem.changed_jobs),
            "failure_reasons": _reasons(jobs),
        },
    )


def _reasons(jobs: Iterable[Job]) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for job in jobs:
        if job.state in FAILURE_STATES:
            why = " ".join(p for p in (job.job_failed_code, job.job_failed_reason) if p)
            reasons[why or "no reason given"] = reasons.get(why or "no reason given", 0) + 1
    return reasons


def batch_event(
    source: str, name: str, jobs: Iterable[Job], now: datetime, *, since: datetime | None = None
) -> Event:
    """The settled-batch summary: counts by state, failure reasons, how long it took."""
    jobs = list(jobs)
    counts = _state_counts(jobs)
    reasons = _reasons(jobs)
    parts = [f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: (s != SUCCEED, s))]
    text = ", ".join(parts)
    if reasons:
        why = ", ".join(
            f"{r} ×{n}" for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        text += f" ({why})"
    starts = [j.create_time for j in jobs if j.create_time is not None]
    ends = [j.lastupdate_time for j in jobs if j.lastupdate_time is not None]
    if starts and ends:
        text += f", took {format_duration(max(ends) - min(starts))}"
    return Event(
        EventKind.BATCH_SETTLED,
        source,
        now,
        f"batch {name} settled: {text}",
        # Once per batch: a later batch reusing the name (first seen later) is news again.
        subject=f"{name}|settled|{(since or now).isoformat()}",
        details={"batch_name": name, "counts": counts, "failure_reasons": reasons},
    )


def health_step(
    tracking: Tracking,
    source: str,
    *,
    ok: bool,
    now: datetime,
    unhealthy_after: timedelta,
    error: str | None = None,
    failed_at: datetime | None = None,
) -> tuple[Event | None, Tracking]:
    """A source that fails longer than `unhealthy_after` is announced once; so is its return.

    The failing window starts when the first failed poll began (`failed_at`), not when its
    retries gave up: a poll that spends a minute on 429 retries must not hide the outage."""
    if ok:
        if tracking.unhealthy:
            down = now - (tracking.failing_since or now)
            event = Event(
                EventKind.SOURCE_RECOVERED,
                source,
                now,
                f"source {source} is polled successfully again after {format_duration(down)}",
                subject=f"recovered|{(tracking.failing_since or now).isoformat()}",
            )
            return event, replace(tracking, unhealthy=False, failing_since=None)
        return None, replace(tracking, failing_since=None)
    since = tracking.failing_since or min(failed_at or now, now)
    tracking = replace(tracking, failing_since=since)
    if not tracking.unhealthy and now - since >= unhealthy_after:
        event = Event(
            EventKind.SOURCE_UNHEALTHY,
            source,
            now,
            f"source {source} has failed to poll for {format_duration(now - since)}: "
            f"{error or 'unknown error'}",
            subject=f"unhealthy|{since.isoformat()}",
        )
        return event, replace(tracking, unhealthy=True)
    return None, tracking


def summary(snapshot: Snapshot, stuck: Sequence[Event] = ()) -> Event:
    """One digest of a source for day one: failures first, then stuck jobs, then the rest."""
    counts = count_by_state(snapshot.jobs.values())
    parts = [
        f"{n} job{'s' if n != 1 else ''} {state}"
        for state, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if state in FAILURE_STATES
    ]
    seen: set[str] = set()
    for event in stuck:
        job = event.job
        if job is None or job.job_id in seen:
            continue
        seen.add(job.job_id)
        stayed = timedelta(seconds=int(event.details.get("stayed_seconds", 0)))
        parts.append(f"1 stuck in {job.state} for {format_duration(stayed)} ({job.job_id})")
    active = sum(n for s, n in counts.items() if s not in FAILURE_STATES | SETTLED_STATES)
    parts.append(f"{active} in progress")
    if counts.get(SUCCEED):
        parts.append(f"{counts[SUCCEED]} SUCCEED")
    return Event(
        EventKind.SUMMARY,
        snapshot.source,
        snapshot.taken_at,
        f"{snapshot.source}: watching {len(snapshot.jobs)} jobs: " + ", ".join(parts),
        subject=f"summary|{snapshot.taken_at.isoformat()}",
    )
