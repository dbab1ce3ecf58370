"""One poll cycle's decisions over plain data: what a listing (full or incremental) means
for the snapshot, the events, the miss counts, the misses and the next cursor.

The shell fetches, then calls `decide` once and commits what it returns: "only a complete
scan may count a job absent" is decided here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from watcher.engine.alerts import TemplateProblem, route
from watcher.engine.cursor import LADDER, Cursor, Strategy
from watcher.engine.tracker import Tracking, advance, health_step
from watcher.jobsets import Listed, Overlay
from watcher.model import Alert, Config, Event, Job, Snapshot, SourceConfig


@dataclass(frozen=True, slots=True)
class Fetched:
    """What one cycle's listing fetched: a full scan, or an increment to overlay on the
    stored jobs."""

    jobs: Mapping[str, Job]
    full: bool
    mode: str  # "full", or the incremental strategy used
    requests: int = 0
    server_time: datetime | None = None  # the API's `Date` when the listing started
    count: int = 0
    gone: frozenset[str] = frozenset()  # lookups that answered 404
    reverify: bool = False  # a scheduled full scan: lifts strategy demotions once committed
    # A full scan's `create_until`: jobs created after it could not be listed.
    created_until: datetime | None = None
    # A full scan's order: True, not as asked; False, as asked or never seen (not a full scan).
    unsorted: bool = False


@dataclass(frozen=True, slots=True)
class Miss:
    """A change a full scan found that the incremental cycles should have seen."""

    job_id: str
    state: str
    previous_state: str | None  # None: a job they never listed


@dataclass(frozen=True, slots=True)
class Decision:
    """Everything one committed cycle changes, for the shell to store and report."""

    observed: Snapshot  # the complete snapshot the cycle diffed
    committed: Snapshot  # what to store: observed plus jobs missing but not yet vanished
    events: tuple[Event, ...]
    alerts: tuple[Alert, ...]
    problems: tuple[TemplateProblem, ...]  # templates that failed (the default was used)
    tracking: Tracking
    misses: tuple[Miss, ...]
    cursor: Cursor  # the next cycle's cursor
    strategy: str  # the strategy that cursor picks at the cycle's start (for `status`)
    fetched: int  # jobs the listing stands for (with those a bounded scan could not list)
    changed: int | None  # fetched jobs that differ from the stored ones (increments only)
    baseline: bool  # the source's first scan
    # The snapshot's jobs by state when the engine kept count (None: count them).
    counts: Mapping[str, int] | None = None

    @property
    def writes(self) -> tuple[Mapping[str, Job], frozenset[str]] | None:
        """Exactly what the store must write and delete, when the committed snapshot is
        the stored one plus this cycle's changes (None: compare every job)."""
        jobs = self.committed.jobs
        return (jobs.touched, jobs.absent) if isinstance(jobs, Overlay) else None


def unhealthy_after(source: SourceConfig) -> timedelta:
    """How long a source may fail before it is announced unhealthy."""
    return source.poll_interval * 3


# --- what this cycle lists ------------------------------------------------------------


def full_scan_reason(
    cursor: Cursor, source: SourceConfig, *, now: datetime, has_baseline: bool
) -> str | None:
    """Why this cycle must scan everything, or None when an incremental cycle will do."""
    if source.full_scan_every <= timedelta(0):
        return "incremental polling disabled (full_scan_every: 0)"
    if not has_baseline:
        return "first scan of the source"
    if cursor.watermark is None or cursor.last_full_at is None:
        return "start-up"
    if now - cursor.last_full_at >= source.full_scan_every:
        return "full_scan_every elapsed"
    if cursor.strategy_at(now) is Strategy.FULL_ONLY:
        why = "; ".join(cursor.reasons.get(s, "demoted") for s in LADDER)
        return f"every cheaper strategy is demoted ({why})"
    return None


def full_scan_bound(source: SourceConfig, now: datetime, server_offset: float) -> datetime | None:
    """The `create_until` of a full scan: a little past the API's now (our clock corrected
    by the offset last seen, which the whole-second `Date` under-states by up to a second;
    never before it, or a job created just before the scan would be left out). Jobs
    created while a long scan pages would otherwise shift its pages and have it discarded
    (a 1M-job baseline takes over half an hour); they are left to the next cycle instead.
    None when the source sets its own create_until."""
    if any(key == "create_until" for key, _ in source.filters):
        return None
    server_now = now + timedelta(seconds=server_offset + 2)
    return server_now.astimezone(UTC).replace(microsecond=0)


def reverifies(cursor: Cursor, source: SourceConfig, *, now: datetime) -> bool:
    """Whether a full scan now is a scheduled one (start-up or `full_scan_every`), which
    lifts every demotion once committed."""
    return cursor.last_full_at is None or now - cursor.last_full_at >= source.full_scan_every


# --- what the listing means -----------------------------------------------------------


def decide(
    source: SourceConfig,
    config: Config,
    previous: Mapping[str, Job] | None,
    tracking: Tracking,
    fetched: Fetched,
    cursor: Cursor,
    *,
    cycle_at: datetime,
    now: datetime,
    vanish_after: int = 3,
) -> Decision:
    """The outcome of one successful listing. `previous` is the last committed jobs (None
    before the first scan), `cycle_at` when the cycle started and `now` when it listed."""
    name = source.name
    listed = fetched.jobs
    seen: Mapping[str, Job]
    if fetched.full and isinstance(listed, Listed) and previous is not None:
        seen = scanned_overlay(previous, listed, fetched.created_until)
    elif fetched.full:
        seen = keep_created_after(previous, listed, fetched.created_until)
    else:
        seen = listed
    complete = fetched.full or previous is None
    changed: int | None = None
    if complete or previous is None:
        current: Mapping[str, Job] = seen
    else:
        current, changed = overlay(previous, seen)
    misses = (
        find_misses(previous, seen, cursor.covered_until)
        if fetched.full and previous is not None
        else []
    )
    observed = Snapshot(name, now, current)
    step = advance(
        previous,
        tracking,
        observed,
        config.rules,
        first_run=config.first_run,
        vanish_after=vanish_after,
        expected_interval=source.poll_interval,
        batch_quiet=source.batch_quiet,
        # A baseline's step holds a full `Job` for every job; the shell lets them go once
        # they are committed and reads the next cycle's previous as compact rows, which
        # rebuild the index (see `Watcher._commit_held`): one built here is never used.
        keep_index=previous is not None,
    )
    after = step.tracking
    if not complete:
        # An overlay holds every stored job, so advance() saw none absent and cleared every
        # count: only a complete scan may count a job absent (or clear one it did not list).
        after = replace(after, missing=missing_after_partial_scan(tracking.missing, seen.keys()))
    health, after = health_step(
        after, name, ok=True, now=now, unhealthy_after=unhealthy_after(source)
    )
    events = step.events + ((health,) if health is not None else ())
    # The config path lets a grouped message name the exact `alerts -c …` command.
    routed = route(events, config.rules, config_path=config.path)
    # advance() builds a fresh dict or a view on the stored jobs: never copy 1M entries.
    committed = step.jobs if isinstance(step.jobs, dict | Overlay) else dict(step.jobs)
    following = next_cursor(cursor, fetched, cycle_at)
    return Decision(
        observed=observed,
        committed=Snapshot(name, now, committed),
        events=events,
        alerts=routed.alerts,
        problems=routed.problems,
        tracking=after,
        misses=tuple(misses),
        cursor=following,
        strategy=str(following.strategy_at(cycle_at)),
        fetched=len(seen),
        changed=changed,
        baseline=previous is None,
        counts=step.counts,
    )


def explained(decision: Decision, events: tuple[Event, ...], config: Config) -> Decision:
    """The decision with its events replaced by explained ones (the same events, with the
    `why` the shell fetched): routed again, so every alert carries what its event says."""
    routed = route(events, config.rules, config_path=config.path)
    return replace(decision, events=events, alerts=routed.alerts, problems=routed.problems)


def next_cursor(cursor: Cursor, fetched: Fetched, cycle_at: datetime) -> Cursor:
    """The cursor after `fetched` is committed (a cycle that did not land keeps the old one,
    so it is listed again)."""
    server_time = fetched.server_time
    if fetched.created_until is not None and server_time is not None:
        server_time = min(server_time, fetched.created_until)  # what it left out is next
    if server_time is not None:
        cursor = replace(cursor, server_offset=(server_time - cycle_at).total_seconds())
    watermark = server_time or cycle_at
    if fetched.full:
        if fetched.count >= 2:  # one job or none has no order to honour or ignore
            cursor = replace(cursor, sort_ignored=fetched.unsorted)
        return cursor.after_full_scan(
            now=cycle_at, server_time=watermark, count=fetched.count, reverify=fetched.reverify
        )
    return cursor.after_increment(watermark, fetched.gone)


def scanned_overlay(
    stored: Mapping[str, Job], listed: Listed, bound: datetime | None
) -> Mapping[str, Job]:
    """A full scan read against the stored digests as the stored jobs plus what the scan
    parsed, minus what it did not list (those created after a bounded scan's `bound`
    stay: they could not be listed, so they are not absent)."""
    if listed.known is not stored:
        return keep_created_after(stored, dict(listed.items()), bound)
    absent = [job_id for job_id in stored if job_id not in listed]
    if absent and bound is not None:
        left = [stored[j] for j in absent]
        absent = [j.job_id for j in left if j.create_time is None or j.create_time <= bound]
    return Overlay(stored, listed.changed, absent)


def keep_created_after(
    previous: Mapping[str, Job] | None, scanned: Mapping[str, Job], bound: datetime | None
) -> Mapping[str, Job]:
    """A bounded full scan's jobs, plus stored ones it could not list because they were
    created after its bound: those are not absent, and must not count towards `vanished`."""
    if bound is None or previous is None:
        return scanned
    kept = {
        job_id: job
        for job_id, job in previous.items()
        if job_id not in scanned and job.create_time is not None and job.create_time > bound
    }
    if not kept:
        return scanned
    return {**scanned, **kept}


def overlay(stored: Mapping[str, Job], fetched: Mapping[str, Job]) -> tuple[Overlay, int]:
    """The complete snapshot of an incremental cycle, and how many fetched jobs differ.

    Deduplication is by job and content: a job re-listed because of the overlap, with the
    same `lastupdate_time` and fields, counts as unchanged (and diffs as such).
    """
    touched = {j: job for j, job in fetched.items() if stored.get(j) != job}
    return Overlay(stored, touched), len(touched)


def missing_after_partial_scan(before: Mapping[str, int], seen: Collection[str]) -> dict[str, int]:
    """The tracker's miss counts after an incremental cycle: unchanged, except for jobs seen.

    Only a complete scan may count a job as absent; an incremental listing omits unchanged
    jobs by design, so it neither advances a count nor (unless it lists the job) clears one.
    """
    return {job_id: count for job_id, count in before.items() if job_id not in seen}


def find_misses(
    stored: Mapping[str, Job], scanned: Mapping[str, Job], covered_until: datetime | None
) -> list[Miss]:
    """Changes in a full scan older than the last incremental cycle, so missed by it.

    A change after `covered_until` is simply news for this scan. Deletions are never
    misses: only full scans are expected to notice them.
    """
    if covered_until is None:
        return []
    out: list[Miss] = []
    # Read against the stored jobs, only what the scan parsed can differ from them.
    ids = scanned.touched if isinstance(scanned, Overlay) and scanned.over(stored) else scanned
    for job_id in sorted(ids):
        job = scanned[job_id]
        old = stored.get(job_id)
        if old is None:
            when = job.create_time
            if when is not None and when < covered_until:
                out.append(Miss(job_id, job.state, None))
            continue
        if (old.state, old.reject_times, old.lastupdate_time) == (
            job.state,
            job.reject_times,
            job.lastupdate_time,
        ):
            continue
        when = job.lastupdate_time
        if when is None or when < covered_until:
            out.append(Miss(job_id, job.state, old.state))
    return out
