"""Snapshot diff: what changed between the last stored scan and a new complete one.

Pure: the caller passes both snapshots and the clock reading; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from watcher.jobsets import Overlay
from watcher.model import (
    FAILURE_STATES,
    Event,
    EventKind,
    FirstRun,
    Job,
    Snapshot,
)


@dataclass(frozen=True, slots=True)
class DiffResult:
    """Events found, and the per-job miss counts to carry to the next diff."""

    events: tuple[Event, ...]
    # job_id -> consecutive complete scans the job was absent from (only jobs still tracked).
    missing: Mapping[str, int] = field(default_factory=dict)
    # Jobs absent from this scan but not yet declared vanished: keep them in the stored state.
    retained: Mapping[str, Job] = field(default_factory=dict)


def diff(
    previous: Mapping[str, Job],
    current: Snapshot,
    *,
    missing: Mapping[str, int] | None = None,
    vanish_after: int = 3,
    offline_gap: timedelta | None = None,
) -> DiffResult:
    """Compare the stored jobs with a complete scan and return the events, in job-id order.

    `missing` carries how many complete scans in a row each tracked job was absent from; a
    job is `vanished` when that reaches `vanish_after` (never on the first miss: a listing
    can shift under us). `offline_gap`, when the previous scan is older than expected, is
    mentioned in notes because states may have been skipped meanwhile.
    """
    missing = missing or {}
    now = current.taken_at
    found: list[tuple[str, Event]] = []
    next_missing: dict[str, int] = {}
    retained: dict[str, Job] = {}

    # Unsorted: an idle cycle over 1M jobs must not sort 1M ids to find nothing. Only the
    # few events are sorted, so the cost follows the changes.
    before = previous.get
    jobs = current.jobs
    # An overlay on `previous` (an incremental cycle, or a full scan read against the
    # stored digests): only its touched jobs can differ, only its absent ones are gone.
    overlaid = isinstance(jobs, Overlay) and jobs.over(previous)
    touched = jobs.touched if isinstance(jobs, Overlay) and overlaid else None
    candidates = jobs.items() if touched is None else ((j, jobs[j]) for j in touched)
    for job_id, job in candidates:
        old = before(job_id)
        if old is job:
            continue  # the same object: unchanged (the client reuses what it already held)
        if old is None:
            was_missing = missing.get(job_id, 0)
            kind = EventKind.REAPPEARED if was_missing >= vanish_after else EventKind.NEW
            reason = (
                f"job {job_id} is back, in state {job.state}"
                if kind is EventKind.REAPPEARED
                else f"new job {job_id} first seen in state {job.state}"
            )
            found.append((job_id, Event(kind, current.source, now, reason, job=job)))
            continue
        event = _compare(old, job, current.source, now, offline_gap)
        if event is not None:
            found.append((job_id, event))
    found.sort(key=lambda pair: pair[0])
    events = [event for _, event in found]

    if isinstance(jobs, Overlay) and overlaid:
        gone: Iterable[str] = jobs.absent
    else:
        gone = set() if not previous else previous.keys() - jobs.keys()
    for job_id in sorted(gone):
        count = missing.get(job_id, 0) + 1
        old = previous[job_id]
        if count >= vanish_after:
            events.append(
                Event(
                    EventKind.VANISHED,
                    current.source,
                    now,
                    f"job {job_id} ({old.state}) is no longer listed "
                    f"({count} complete scans in a row)",
                    job=old,
                    previous_state=old.state,
                )
            )
        else:
            retained[job_id] = old
        next_missing[job_id] = count
    for job_id, count in missing.items():
        # Vanished jobs stay remembered so that a later return reads as `reappeared`.
        if count >= vanish_after and job_id not in previous and job_id not in jobs:
            next_missing[job_id] = count
    return DiffResult(tuple(events), next_missing, retained)


def _compare(
    old: Job, new: Job, source: str, now: datetime, offline_gap: timedelta | None
) -> Event | None:
    if old.state != new.state:
        notes = []
        # reject_times counts how often the job has been in its *current* state, so across a
        # transition it says "this is the Nth time", not that states were skipped.
        if new.state in FAILURE_STATES and (new.reject_times or 0) > 1:
            notes.append(f"this job has now been {new.state} {new.reject_times} times")
        if offline_gap is not None:
            notes.append(
                f"the watcher saw no scan for {format_duration(offline_gap)}; "
                "intermediate states may have been missed"
            )
        return Event(
            EventKind.TRANSITION,
            source,
            now,
            f"job {new.job_id} went from {old.state} to {new.state}",
            job=new,
            previous_state=old.state,
            note="; ".join(notes) or None,
        )
    if _reject_growth(old, new):
        return Event(
            EventKind.REJECTED_AGAIN,
            source,
            now,
            f"job {new.job_id} is {new.state} again "
            f"(reject_times {old.reject_times} → {new.reject_times})",
            job=new,
            previous_state=old.state,
            note="the job was re-submitted and failed again between two polls",
        )
    return None


def _reject_growth(old: Job, new: Job) -> bool:
    if new.reject_times is None:
        return False
    return new.reject_times > (old.reject_times or 0)


def first_run_events(snapshot: Snapshot, mode: FirstRun) -> tuple[Event, ...]:
    """Job events of a source's first complete scan: none for `baseline` (and `summary`,
    whose single digest the tracker builds), one `new` per job for `notify`."""
    if mode is not FirstRun.NOTIFY:
        return ()
    return tuple(
        Event(
            EventKind.NEW,
            snapshot.source,
            snapshot.taken_at,
            f"job {job.job_id} is {job.state} (already so when watching started)",
            job=job,
        )
        for job in (snapshot.jobs[k] for k in sorted(snapshot.jobs))
    )


def count_by_state(jobs: Iterable[Job]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    return counts


def apply_events(states: Mapping[str, str], events: Iterable[Event]) -> dict[str, str]:
    """Replay job events onto a job_id -> state map (the inverse of `diff`, for tests)."""
    out = dict(states)
    for event in events:
        if event.job is None:
            continue
        if event.kind is EventKind.VANISHED:
            out.pop(event.job.job_id, None)
        else:
            out[event.job.job_id] = event.job.state
    return out


def format_duration(delta: timedelta) -> str:
    """`3h12m`, `2d4h`, `45s`: short, for people."""
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)}s"
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes = rem // 60
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m"
