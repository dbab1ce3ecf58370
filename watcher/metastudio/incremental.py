"""Incremental polling of one source: between full scans, ask only for what can have moved,
and turn the answer into the complete snapshot the engine diffs.

Why it is safe (the engine's contract is unchanged: `advance()` always gets every job):

* The snapshot of an incremental cycle is the stored jobs overlaid with every job the cycle
  fetched, so an unchanged job keeps its stored value and no job can look deleted. Vanishing
  is a full-scan verdict only: `missing_after_partial_scan` carries the tracker's per-job
  miss counts through incremental cycles untouched (a sighting still clears one).
* Strategy 1, changed-since: one listing with `update_since` (the API's `Date` when the last
  listing started, minus `UPDATE_OVERLAP` for clock skew between the API's nodes and for
  same-second updates; compared on the server's clock, so our clock's skew does not matter),
  sorted by `update_time` ascending so new updates land on the last page. The parameter is
  undocumented on the page, so its first page is checked: a job updated before the bound, or
  a count as large as the whole listing's, means the region ignores it; the source then
  falls back, once and for good, logging why.
* Strategy 2, active-set: settled states (`settled_states`, default SUCCEED and FAILED) are
  assumed final. One listing of every other known state, one of jobs created since the last
  cycle (a job created and settled between two polls), and for each job that was active but
  is in neither, a lookup by id — or one `state=<settled>&create_since=<oldest such job>`
  listing when that is estimated (from the stored jobs) to cost fewer requests. A 404 on a
  lookup keeps the stored job; the next full scan decides whether it vanished.
* A full scan still runs at start-up and every `full_scan_every`; whatever it finds changed
  before the last incremental cycle started, and not seen by it, is a miss (`find_misses`):
  logged and counted, so a wrong assumption shows in monitoring instead of silently.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import structlog

from watcher.metastudio.client import ListingRejected, MetaStudioClient, PageCheck
from watcher.metastudio.parse import JobsPage
from watcher.model import KNOWN_STATES, Job, SourceConfig

log = structlog.get_logger()

# Re-listed every cycle: covers skew between the API's own nodes, updates within the same
# second as the bound (RFC 3339 here has whole seconds) and rows committed a little late.
UPDATE_OVERLAP = timedelta(seconds=5)


class Strategy(StrEnum):
    CHANGED_SINCE = "changed_since"
    ACTIVE_SET = "active_set"
    # The API ignores even `create_since`: nothing cheaper than a full scan can be trusted.
    FULL_ONLY = "full_only"


@dataclass(slots=True)
class Cursor:
    """What one source's incremental polling remembers; in memory only (start-up scans fully)."""

    strategy: Strategy = Strategy.CHANGED_SINCE
    # The API's time when the last committed listing started: every later change is newer.
    watermark: datetime | None = None
    last_full_at: datetime | None = None  # our clock
    full_count: int | None = None
    # Watermark of the last incremental cycle since the last full scan (None: none ran), so
    # the next full scan can tell what those cycles should have seen.
    covered_until: datetime | None = None
    # Jobs a lookup answered 404 for since the last full scan: not looked up again.
    gone: set[str] = field(default_factory=set)

    def full_scan_committed(self, *, now: datetime, server_time: datetime, count: int) -> None:
        self.watermark = server_time
        self.last_full_at = now
        self.full_count = count
        self.covered_until = None
        self.gone.clear()

    def increment_committed(self, watermark: datetime, gone: Collection[str]) -> None:
        self.watermark = watermark
        self.covered_until = watermark
        self.gone.update(gone)


def full_scan_reason(
    cursor: Cursor, source: SourceConfig, *, now: datetime, has_baseline: bool
) -> str | None:
    """Why this cycle must scan everything, or None when an incremental cycle will do."""
    if source.full_scan_every <= timedelta(0):
        return "incremental polling disabled (full_scan_every: 0)"
    if not has_baseline:
        return "first scan of the source"
    if cursor.strategy is Strategy.FULL_ONLY:
        return "the API ignores create_since"
    if cursor.watermark is None or cursor.last_full_at is None:
        return "start-up"
    if now - cursor.last_full_at >= source.full_scan_every:
        return "full_scan_every elapsed"
    return None


@dataclass(frozen=True, slots=True)
class Increment:
    """What one incremental cycle fetched: every job it saw, at its latest version."""

    jobs: Mapping[str, Job]
    requests: int
    watermark: datetime
    strategy: Strategy
    lookups: int = 0
    gone: frozenset[str] = frozenset()


def rfc3339(when: datetime) -> str:
    """`2021-01-10T08:43:17Z`: UTC, whole seconds (rounded down, so the bound only widens)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lower_bound(watermark: datetime) -> datetime:
    """The `*_since` bound for a cycle after `watermark`, as sent (whole seconds)."""
    return (watermark - UPDATE_OVERLAP).astimezone(UTC).replace(microsecond=0)


def updated_since_check(
    since: datetime, full_count: int | None, page_size: int, stored: Mapping[str, Job]
) -> PageCheck:
    """Evidence, on the first page, that the API ignored `update_since`.

    Decisive: a job last updated before the bound. Circumstantial, for an API that ignores
    the filter *and* the sort: a count as large as the whole listing's, when that is more
    than a page and some stored job was last updated before the bound (so a filter would
    have had to drop it, unless every one of them changed since the last cycle).
    """

    def check(page: JobsPage) -> str | None:
        for job in page.jobs:
            if job.lastupdate_time is not None and job.lastupdate_time < since:
                return (
                    f"asked for jobs updated since {rfc3339(since)} and got job {job.job_id} "
                    f"last updated {rfc3339(job.lastupdate_time)}: the API ignores update_since"
                )
        if (
            full_count is not None
            and full_count > page_size
            and page.count >= full_count
            and any(
                j.lastupdate_time is not None and j.lastupdate_time < since for j in stored.values()
            )
        ):
            return (
                f"the changed-since listing counts {page.count} jobs, as many as the full "
                f"listing ({full_count}): the API ignores update_since"
            )
        return None

    return check


def created_since_check(since: datetime) -> PageCheck:
    """Evidence, on the first page, that the API ignored `create_since`."""

    def check(page: JobsPage) -> str | None:
        for job in page.jobs:
            if job.create_time is not None and job.create_time < since:
                return (
                    f"asked for jobs created since {rfc3339(since)} and got job {job.job_id} "
                    f"created {rfc3339(job.create_time)}: the API ignores create_since"
                )
        return None

    return check


def _filter_states(source: SourceConfig) -> set[str] | None:
    for key, value in source.filters:
        if key == "state":
            return {s.strip() for s in value.split(",") if s.strip()}
    return None


def active_states(source: SourceConfig) -> list[str]:
    """Every known state that is not settled (within the source's own `state` filter)."""
    wanted = _filter_states(source)
    return sorted(
        s
        for s in KNOWN_STATES
        if s not in source.settled_states and (wanted is None or s in wanted)
    )


def settled_states(source: SourceConfig) -> list[str]:
    wanted = _filter_states(source)
    return sorted(s for s in source.settled_states if wanted is None or s in wanted)


def _create_since(source: SourceConfig, bound: datetime) -> str:
    """Our `create_since`, never earlier than the source's own (which it replaces)."""
    for key, value in source.filters:
        if key == "create_since":
            try:
                own = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                break
            if own.tzinfo is None:
                own = own.replace(tzinfo=UTC)
            if own > bound:
                return value
    return rfc3339(bound)


def overlay(stored: Mapping[str, Job], fetched: Mapping[str, Job]) -> tuple[dict[str, Job], int]:
    """The complete snapshot of an incremental cycle, and how many fetched jobs differ.

    Deduplication is by job and content: a job re-listed because of the overlap, with the
    same `lastupdate_time` and fields, counts as unchanged (and diffs as such).
    """
    jobs = dict(stored)
    changed = 0
    for job_id, job in fetched.items():
        if jobs.get(job_id) != job:
            changed += 1
            jobs[job_id] = job
    return jobs, changed


def missing_after_partial_scan(before: Mapping[str, int], seen: Collection[str]) -> dict[str, int]:
    """The tracker's miss counts after an incremental cycle: unchanged, except for jobs seen.

    Only a complete scan may count a job as absent; an incremental listing omits unchanged
    jobs by design, so it neither advances a count nor (unless it lists the job) clears one.
    """
    return {job_id: count for job_id, count in before.items() if job_id not in seen}


@dataclass(frozen=True, slots=True)
class Miss:
    """A change a full scan found that the incremental cycles should have seen."""

    job_id: str
    state: str
    previous_state: str | None  # None: a job they never listed


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
    for job_id in sorted(scanned):
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


def use_settled_listing(
    departed: Sequence[Job], stored: Mapping[str, Job], settled: Collection[str], page_size: int
) -> datetime | None:
    """The `create_since` for one settled listing when it costs fewer requests than looking
    up each departed job (estimated from the stored jobs), else None."""
    if len(departed) < 2:
        return None
    created = [job.create_time for job in departed]
    if any(when is None for when in created):
        return None
    cutoff = min(when for when in created if when is not None)
    already = sum(
        1
        for job in stored.values()
        if job.state in settled and job.create_time is not None and job.create_time >= cutoff
    )
    pages = math.ceil((already + len(departed)) / page_size)
    return cutoff if pages < len(departed) else None


class IncrementalPoller:
    """Runs one incremental cycle of a source over its client; the cursor says from where."""

    def __init__(self, client: MetaStudioClient, source: SourceConfig, cursor: Cursor) -> None:
        self.client = client
        self.source = source
        self.cursor = cursor

    async def poll(self, stored: Mapping[str, Job]) -> Increment:
        cursor = self.cursor
        assert cursor.watermark is not None, "an incremental cycle needs a full scan first"
        if cursor.strategy is Strategy.CHANGED_SINCE:
            try:
                return await self._changed_since(stored, cursor.watermark)
            except ListingRejected as rejected:
                self._fall_back(Strategy.ACTIVE_SET, rejected.reason)
                inc = await self._active_set(stored, cursor.watermark)
                return _plus_requests(inc, rejected.requests)
        return await self._active_set(stored, cursor.watermark)

    def _fall_back(self, strategy: Strategy, reason: str) -> None:
        log.warning(
            "incremental_fallback",
            source=self.source.name,
            strategy=str(strategy),
            previous=str(self.cursor.strategy),
            reason=reason,
        )
        self.cursor.strategy = strategy

    async def _changed_since(self, stored: Mapping[str, Job], watermark: datetime) -> Increment:
        since = lower_bound(watermark)
        check = updated_since_check(since, self.cursor.full_count, self.client.page_size, stored)
        scan = await self.client.list_jobs(
            [("update_since", rfc3339(since))], sort_key="update_time", check=check
        )
        return Increment(
            scan.jobs,
            scan.requests,
            scan.server_time or watermark,
            Strategy.CHANGED_SINCE,
        )

    async def _active_set(self, stored: Mapping[str, Job], watermark: datetime) -> Increment:
        source = self.source
        since = lower_bound(watermark)
        states = active_states(source)
        # Both listings at once; the client's token bucket still spaces their requests.
        tasks = [
            asyncio.ensure_future(
                self.client.list_jobs(
                    [("create_since", _create_since(source, since))],
                    check=created_since_check(since),
                )
            )
        ]
        if states:
            tasks.append(
                asyncio.ensure_future(self.client.list_jobs([("state", ",".join(states))]))
            )
        try:
            listings = await asyncio.gather(*tasks)
        except ListingRejected as rejected:
            self._fall_back(Strategy.FULL_ONLY, rejected.reason)
            raise
        finally:
            for task in tasks:
                task.cancel()
        jobs: dict[str, Job] = {}
        for listing in listings:
            jobs.update(listing.jobs)
        requests = sum(listing.requests for listing in listings)
        server_times = [t for t in (listing.server_time for listing in listings) if t]
        new_watermark = min(server_times, default=watermark)
        departed = [
            job
            for job_id, job in sorted(stored.items())
            if job.state not in source.settled_states
            and job_id not in jobs
            and job_id not in self.cursor.gone
        ]
        lookups = 0
        gone: set[str] = set()
        if departed:
            found, extra_requests, lookups, gone = await self._resolve(departed, stored)
            jobs.update(found)
            requests += extra_requests
        return Increment(
            jobs, requests, new_watermark, Strategy.ACTIVE_SET, lookups, frozenset(gone)
        )

    async def _resolve(
        self, departed: Sequence[Job], stored: Mapping[str, Job]
    ) -> tuple[dict[str, Job], int, int, set[str]]:
        """Where the jobs that left the active set went: (jobs, requests, lookups, 404s)."""
        found: dict[str, Job] = {}
        requests = 0
        settled = settled_states(self.source)
        cutoff = use_settled_listing(
            departed, stored, self.source.settled_states, self.client.page_size
        )
        if cutoff is not None and settled:
            listing = await self.client.list_jobs(
                [("state", ",".join(settled)), ("create_since", _create_since(self.source, cutoff))]
            )
            found.update(listing.jobs)
            requests += listing.requests
        left = [job.job_id for job in departed if job.job_id not in found]
        gate = asyncio.Semaphore(max(1, self.source.page_concurrency))

        async def lookup(job_id: str) -> tuple[str, Job | None, int]:
            async with gate:
                job, spent = await self.client.get_job(job_id)
                return job_id, job, spent

        gone: set[str] = set()
        for job_id, job, spent in await asyncio.gather(*(lookup(j) for j in left)):
            requests += spent
            if job is None:
                gone.add(job_id)
            else:
                found[job_id] = job
        if gone:
            log.info("lookup_not_found", source=self.source.name, jobs=len(gone))
        return found, requests, len(left), gone


def _plus_requests(inc: Increment, extra: int) -> Increment:
    return Increment(
        inc.jobs, inc.requests + extra, inc.watermark, inc.strategy, inc.lookups, inc.gone
    )
