"""Incremental polling of one source: between full scans, fetch only what can have moved;
what the fetch means (the complete snapshot, misses, the next cursor) is decided by
`watcher.engine.cycle`.

Why it is safe (the engine's contract is unchanged: `advance()` always gets every job):

* The snapshot of an incremental cycle is the stored jobs overlaid with every job the cycle
  fetched, so an unchanged job keeps its stored value and no job can look deleted. Vanishing
  is a full-scan verdict only: the cycle's decision carries the tracker's per-job miss
  counts through incremental cycles untouched (a sighting still clears one).
* Strategy 1, changed-since: one listing with `update_since` (the API's `Date` when the last
  listing started, minus `UPDATE_OVERLAP` for clock skew between the API's nodes and for
  same-second updates; compared on the server's clock, so our clock's skew does not matter),
  sorted by `update_time` ascending so new updates land on the last page. The parameter is
  undocumented on the page, so every page is checked: a job updated before the bound means
  the region ignores it (decisive whatever the number of changes; and a listing without one
  holds every changed job whatever the API did).
* Demotion: a strategy the API refuses (400, MSS.00000003) or shows it ignores is demoted
  for `full_scan_every`, logged loudly once and counted; the same cycle tries the next
  strategy, down to a full scan. A scheduled full scan lifts every demotion, so a region
  that starts honouring a parameter is used again. The cursor (with its demotions) is
  stored after each committed cycle, so `once` from cron continues where the last run was.
* Strategy 2, active-set: settled states (`settled_states`, default SUCCEED and FAILED) are
  assumed final. One listing of jobs created since the last cycle, in any state (a job
  created and settled between two polls, or in a state that cannot be asked for), one of
  every other documented state created before that (only the 14 values the page lists are
  sent; a job in another unsettled state is looked up by id each cycle), and for
  the jobs that were active but are in neither (they settled), `plan_resolution` picks per
  cluster of their create times either one settled listing bounded on both sides
  (`state=<settled>&create_since=..&create_until=..`) or a lookup by id each, whichever is
  estimated (from the create times of the stored settled jobs) to cost fewer requests. A
  listing whose first page counts more pages than the lookups it replaces stops there
  (`WindowBudget`), and a job a listing did not return is looked up anyway, so a wrong
  estimate costs a page, never a transition. A 404 on a lookup keeps the stored job; the
  next full scan decides whether it vanished.
* A full scan still runs at the first start and every `full_scan_every`; whatever it finds
  changed before the last incremental cycle started, and not seen by it, is a miss
  (`watcher.engine.cycle.find_misses`): logged and counted, so a wrong assumption shows in
  monitoring instead of silently.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog

from watcher.engine.cursor import LADDER, Cursor, Strategy
from watcher.errors import ApiError, AuthError
from watcher.jobsets import StoredJobs
from watcher.metastudio.client import ListingRejected, MetaStudioClient, PageCheck
from watcher.metastudio.parse import JobsPage
from watcher.model import DOCUMENTED_STATES, Job, SourceConfig

log = structlog.get_logger()
T = TypeVar("T")

# Re-listed every cycle: covers skew between the API's own nodes, updates within the same
# second as the bound (RFC 3339 here has whole seconds) and rows committed a little late.
UPDATE_OVERLAP = timedelta(seconds=5)


def is_refusal(err: ApiError) -> bool:
    """The API refused a parameter (HTTP 400 or MSS.00000003): a reason to demote the
    strategy that sent it, never a failed poll."""
    if isinstance(err, AuthError):
        return False  # wrong credentials are wrong for every listing: a real failure
    return err.status == 400 or err.code == "MSS.00000003"


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


def updated_since_check(since: datetime) -> PageCheck:
    """Evidence, on any page, that the API ignored `update_since`: a job last updated before
    the bound. Decisive whatever the number of changes, and sufficient: a listing with no
    such job on any page holds every job changed since the bound (if the API ignored the
    filter it returned every job, and every one of them changed), so it can be used as is.
    """

    def check(page: JobsPage) -> str | None:
        for job in page.jobs:
            if job.lastupdate_time is not None and job.lastupdate_time < since:
                return (
                    f"asked for jobs updated since {rfc3339(since)} and got job {job.job_id} "
                    f"last updated {rfc3339(job.lastupdate_time)}: the API ignores update_since"
                )
        return None

    return check


def created_since_check(since: datetime) -> PageCheck:
    """Evidence, on any page, that the API ignored `create_since`."""

    def check(page: JobsPage) -> str | None:
        for job in page.jobs:
            if job.create_time is not None and job.create_time < since:
                return (
                    f"asked for jobs created since {rfc3339(since)} and got job {job.job_id} "
                    f"created {rfc3339(job.create_time)}: the API ignores create_since"
                )
        return None

    return check


def state_check(states: Collection[str]) -> PageCheck:
    """Evidence, on any page, that the API ignored `state`: a job in a state not asked for."""
    wanted = frozenset(states)

    def check(page: JobsPage) -> str | None:
        for job in page.jobs:
            if job.state not in wanted:
                return (
                    f"asked for jobs in {len(wanted)} states and got job {job.job_id} in "
                    f"{job.state}: the API ignores state"
                )
        return None

    return check


def all_of(*checks: PageCheck) -> PageCheck:
    def check(page: JobsPage) -> str | None:
        for one in checks:
            if reason := one(page):
                return reason
        return None

    return check


def _filter_states(source: SourceConfig) -> set[str] | None:
    for key, value in source.filters:
        if key == "state":
            return {s.strip() for s in value.split(",") if s.strip()}
    return None


def active_states(source: SourceConfig) -> list[str]:
    """Every documented state that is not settled (within the source's own `state` filter).

    Only the 14 values the API page documents are ever sent: a region validating the
    parameter refuses others. Jobs in any other unsettled state (USER_RESULT_REVIEW, a new
    one) drop out of the active listing and are looked up by id every cycle instead.
    """
    wanted = _filter_states(source)
    return sorted(
        s
        for s in DOCUMENTED_STATES
        if s not in source.settled_states and (wanted is None or s in wanted)
    )


def settled_states(source: SourceConfig) -> list[str]:
    """The documented settled states, for a settled listing (see `active_states`)."""
    wanted = _filter_states(source)
    return sorted(
        s
        for s in source.settled_states
        if s in DOCUMENTED_STATES and (wanted is None or s in wanted)
    )


def _own_bound(source: SourceConfig, key: str) -> tuple[datetime, str] | None:
    """The source's own `create_since`/`create_until` filter, parsed, and as written."""
    for name, value in source.filters:
        if name == key:
            try:
                own = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return None
            return (own.replace(tzinfo=UTC) if own.tzinfo is None else own), value
    return None


def _create_since(source: SourceConfig, bound: datetime) -> str:
    """Our `create_since`, never earlier than the source's own (which it replaces)."""
    own = _own_bound(source, "create_since")
    return own[1] if own is not None and own[0] > bound else rfc3339(bound)


def _create_until(source: SourceConfig, bound: datetime) -> str:
    """Our `create_until`, never later than the source's own (which it replaces)."""
    own = _own_bound(source, "create_until")
    return own[1] if own is not None and own[0] < bound else rfc3339(bound)


def created_until_check(until: datetime) -> PageCheck:
    """Evidence, on any page, that the API ignored `create_until`."""

    def check(page: JobsPage) -> str | None:
        for job in page.jobs:
            if job.create_time is not None and job.create_time > until:
                return (
                    f"asked for jobs created until {rfc3339(until)} and got job {job.job_id} "
                    f"created {rfc3339(job.create_time)}: the API ignores create_until"
                )
        return None

    return check


@dataclass(frozen=True, slots=True)
class StoredSurvey:
    """What an active-set cycle needs to know about the stored jobs."""

    # Stored jobs not in a settled state, by job id: the active set as last seen.
    unsettled: tuple[Job, ...]
    # Create times (epoch seconds, ascending) of the stored jobs in a state a settled
    # listing asks for: what a bounded settled listing returns besides the newly settled.
    settled_created: tuple[float, ...]


def survey_stored(
    stored: Mapping[str, Job], settled: Collection[str], listed: Collection[str]
) -> StoredSurvey:
    """The one pass over every stored job an active-set cycle makes (`settled`: the states
    assumed final; `listed`: those a settled listing asks for). Over compact stored rows it
    reads only the unsettled jobs (held already, as a rule): never the whole table."""
    unsettled: list[Job] = []
    created: list[float] = []
    if isinstance(stored, StoredJobs):
        ids: list[str] = []
        for job_id, (_, state, _, when, _) in stored.rows().items():
            if state not in settled:
                ids.append(job_id)
            elif state in listed and when is not None:
                created.append(when)
        unsettled = list(stored.materialise(ids).values())
    else:
        for job in stored.values():
            if job.state not in settled:
                unsettled.append(job)
            elif job.state in listed and job.create_time is not None:
                created.append(job.create_time.timestamp())
    unsettled.sort(key=lambda job: job.job_id)
    created.sort()
    return StoredSurvey(tuple(unsettled), tuple(created))


@dataclass(frozen=True, slots=True)
class Window:
    """One settled listing over `since`..`until` (both inclusive, whole seconds, as sent),
    expected to hold `job_ids` and to cost `pages` requests."""

    since: datetime
    until: datetime
    job_ids: tuple[str, ...]
    pages: int


@dataclass(frozen=True, slots=True)
class ResolutionPlan:
    """How to find where departed jobs went: bounded settled listings, and lookups by id."""

    windows: tuple[Window, ...]
    lookups: tuple[str, ...]

    @property
    def cost(self) -> int:
        """Requests, as estimated: never more than one lookup per departed job."""
        return sum(w.pages for w in self.windows) + len(self.lookups)


class WindowBudget:
    """A page check that stops a settled listing, on its first page, when its `count`
    says it would cost more pages than the lookups it replaces (the stored jobs it was
    estimated from can be wrong: jobs the store never saw). `exceeded` tells that stop
    from an ignored filter; the jobs it did not return are looked up instead."""

    def __init__(self, lookups: int, page_size: int) -> None:
        self.lookups = lookups
        self.page_size = page_size
        self.exceeded = False

    def __call__(self, page: JobsPage) -> str | None:
        pages = math.ceil(page.count / self.page_size)
        if pages <= self.lookups:
            return None
        self.exceeded = True
        return f"{page.count} settled jobs in the window: {pages} pages > {self.lookups} lookups"


# Past this many departed jobs the planner groups neighbours (by create time) into units,
# so planning stays quadratic in this, not in a mass settlement of thousands.
_MAX_UNITS = 256
_SECOND = timedelta(seconds=1)


def _window_bounds(first: datetime, last: datetime) -> tuple[datetime, datetime]:
    """Whole-second bounds that include both create times (RFC 3339 as sent has seconds)."""
    since = first.astimezone(UTC).replace(microsecond=0)
    return since, last.astimezone(UTC).replace(microsecond=0) + _SECOND


def plan_resolution(
    departed: Sequence[tuple[str, datetime | None]],
    settled_created: Sequence[float],
    page_size: int,
) -> ResolutionPlan:
    """The cheapest cover of `departed` (job id, create time) by bounded settled listings
    and lookups, estimated from `settled_created` (the stored settled jobs' create times,
    ascending epoch seconds; each departed job is assumed settled now, so counted in its
    window).

    Exact over contiguous runs by create time (dynamic programming); a window costs
    ceil(jobs in it / page_size) pages, at least one. A window must beat the lookups it
    replaces (ties go to lookups, which do not depend on the estimate), so the plan never
    costs more than one lookup per job, whatever the distribution of create times.
    """
    timed = sorted((when, job_id) for job_id, when in departed if when is not None)
    untimed = [job_id for job_id, when in departed if when is None]
    size = max(1, math.ceil(len(timed) / _MAX_UNITS))
    units = [timed[i : i + size] for i in range(0, len(timed), size)]
    n = len(units)
    lows: list[int] = []
    highs: list[int] = []
    for unit in units:
        since, until = _window_bounds(unit[0][0], unit[-1][0])
        lows.append(bisect.bisect_left(settled_created, since.timestamp()))
        highs.append(bisect.bisect_right(settled_created, until.timestamp()))
    before = [0]
    for unit in units:
        before.append(before[-1] + len(unit))
    best = [0] * (n + 1)
    # choice[i]: (j, as_window): units j..i-1 form the last group of the best cover of i.
    choice: list[tuple[int, bool]] = [(0, False)] * (n + 1)
    for i in range(1, n + 1):
        best[i] = best[i - 1] + len(units[i - 1])
        choice[i] = (i - 1, False)
        for j in range(i - 1, -1, -1):
            jobs = before[i] - before[j]
            if jobs < 2:
                continue  # one job: a lookup is never dearer than a page
            pages = max(1, math.ceil((highs[i - 1] - lows[j] + jobs) / page_size))
            if pages >= best[i]:
                break  # a wider window (smaller j) only costs more pages
            if best[j] + pages < best[i]:
                best[i] = best[j] + pages
                choice[i] = (j, True)
    windows: list[Window] = []
    lookups: list[str] = []
    i = n
    while i > 0:
        j, as_window = choice[i]
        group = [job for unit in units[j:i] for job in unit]
        ids = tuple(job_id for _, job_id in group)
        if as_window:
            since, until = _window_bounds(group[0][0], group[-1][0])
            windows.append(Window(since, until, ids, best[i] - best[j]))
        else:
            lookups.extend(ids)
        i = j
    windows.reverse()
    return ResolutionPlan(tuple(windows), tuple(sorted(lookups)) + tuple(untimed))


# Called once per demotion with the strategy, why, and the cursor that now holds it: the
# caller keeps that cursor (a demotion holds even when the cycle then fails) and counts it.
OnDemote = Callable[[Strategy, str, Cursor], None]


class IncrementalPoller:
    """Runs one incremental cycle of a source over its client; the cursor says from where.

    A strategy the API refuses (HTTP 400, MSS.00000003) or shows it ignores (a job outside
    the filter on any page) is demoted for `full_scan_every` and the same cycle goes on with
    the next one; when none is left, `ListingRejected` tells the caller to scan everything.
    """

    def __init__(
        self,
        client: MetaStudioClient,
        source: SourceConfig,
        cursor: Cursor,
        *,
        now: datetime,
        on_demote: OnDemote | None = None,
    ) -> None:
        self.client = client
        self.source = source
        self.cursor = cursor
        self.now = now
        self.on_demote = on_demote

    async def poll(self, stored: Mapping[str, Job]) -> Increment:
        watermark = self.cursor.watermark
        assert watermark is not None, "an incremental cycle needs a full scan first"
        before = self.client.requests_made
        reasons: list[str] = []
        for strategy in LADDER:
            # self.cursor, not a copy: a demotion earlier in this loop moves it on.
            if self.cursor.strategy_at(self.now) is not strategy:
                continue
            try:
                if strategy is Strategy.CHANGED_SINCE:
                    inc = await self._changed_since(stored, watermark)
                else:
                    inc = await self._active_set(stored, watermark)
            except ListingRejected as rejected:
                reasons.append(rejected.reason)
                self._demote(strategy, rejected.reason)
                continue
            except ApiError as err:
                if not is_refusal(err):
                    raise
                reason = f"the API refused the {strategy} listing: {err.message}"
                reasons.append(reason)
                self._demote(strategy, reason)
                continue
            return replace(inc, requests=self.client.requests_made - before)
        raise ListingRejected(
            "; ".join(reasons) or "every cheaper strategy is demoted",
            self.client.requests_made - before,
        )

    def _demote(self, strategy: Strategy, reason: str) -> None:
        first = self.cursor.is_news(strategy)
        # The poller's own view for the rest of this cycle; the caller gets it by on_demote.
        self.cursor = self.cursor.demote(
            strategy, now=self.now, hold=self.source.full_scan_every, reason=reason
        )
        # Loud the first time; a re-verification that fails again is routine.
        (log.warning if first else log.info)(
            "strategy_demoted",
            source=self.source.name,
            strategy=str(strategy),
            next=str(self.cursor.strategy_at(self.now)),
            until=rfc3339(self.now + self.source.full_scan_every),
            reason=reason,
        )
        if self.on_demote is not None:
            self.on_demote(strategy, reason, self.cursor)

    async def _changed_since(self, stored: Mapping[str, Job], watermark: datetime) -> Increment:
        since = lower_bound(watermark)
        scan = await self.client.list_jobs(
            [("update_since", rfc3339(since))],
            sort_key="update_time",
            check=updated_since_check(since),
            known=stored,
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
                    known=stored,
                )
            )
        ]
        if states:
            # Bounded by create time where the other listing starts (a second past it, so
            # no reading of either bound can leave a gap): a job created since is listed
            # once, not in both, and a job created during this listing cannot shift its
            # pages (newest first, where the API ignores `sort_key`). An API that ignores
            # the bound only lists those twice, so nothing here checks it.
            until = _create_until(source, since + _SECOND)
            tasks.append(
                asyncio.ensure_future(
                    self.client.list_jobs(
                        [("state", ",".join(states)), ("create_until", until)],
                        check=state_check(states),
                        known=stored,
                    )
                )
            )
        try:
            listings = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            # A sibling's exception must not be left unretrieved when one failed first.
            await asyncio.gather(*tasks, return_exceptions=True)
        jobs: dict[str, Job] = {}
        for listing in listings:
            jobs.update(listing.jobs)
        requests = sum(listing.requests for listing in listings)
        server_times = [t for t in (listing.server_time for listing in listings) if t]
        new_watermark = min(server_times, default=watermark)
        survey = survey_stored(stored, source.settled_states, settled_states(source))
        departed = [
            job
            for job in survey.unsettled
            if job.job_id not in jobs and job.job_id not in self.cursor.gone
        ]
        lookups = 0
        gone: set[str] = set()
        if departed:
            found, extra_requests, lookups, gone = await self._resolve(departed, stored, survey)
            jobs.update(found)
            requests += extra_requests
        return Increment(
            jobs, requests, new_watermark, Strategy.ACTIVE_SET, lookups, frozenset(gone)
        )

    async def _resolve(
        self, departed: Sequence[Job], stored: Mapping[str, Job], survey: StoredSurvey
    ) -> tuple[dict[str, Job], int, int, set[str]]:
        """Where the jobs that left the active set went: (jobs, requests, lookups, 404s)."""
        found: dict[str, Job] = {}
        requests = 0
        settled = settled_states(self.source)
        # A job in an undocumented state left the listing because it cannot be asked
        # for, not because it settled: a lookup, without widening any window.
        candidates = [(j.job_id, j.create_time) for j in departed if j.state in DOCUMENTED_STATES]
        windows: tuple[Window, ...] = ()
        if settled and len(candidates) > 1:
            plan = plan_resolution(candidates, survey.settled_created, self.client.page_size)
            windows = plan.windows
        for listed, spent in await _gather_all([self._settled_window(w, stored) for w in windows]):
            found.update(listed)
            requests += spent
        # Whatever a listing did not return (not settled after all, deleted, an estimate
        # gone wrong) is looked up: a plan can cost requests, never a transition.
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
        if windows:
            log.debug(
                "departed_resolved",
                source=self.source.name,
                departed=len(departed),
                windows=len(windows),
                estimated=sum(w.pages for w in windows),
                lookups=len(left),
            )
        return found, requests, len(left), gone

    async def _settled_window(
        self, window: Window, stored: Mapping[str, Job]
    ) -> tuple[Mapping[str, Job], int]:
        """The settled jobs created in `window` and the requests spent; nothing (after its
        first page) when the listing would cost more than the lookups it was to replace."""
        settled = settled_states(self.source)
        budget = WindowBudget(len(window.job_ids), self.client.page_size)
        try:
            listing = await self.client.list_jobs(
                [
                    ("state", ",".join(settled)),
                    ("create_since", _create_since(self.source, window.since)),
                    ("create_until", _create_until(self.source, window.until)),
                ],
                # The filters first: an API ignoring one is a demotion, not a budget.
                check=all_of(
                    state_check(settled),
                    created_since_check(window.since),
                    created_until_check(window.until),
                    budget,
                ),
                known=stored,
            )
        except ListingRejected as rejected:
            if not budget.exceeded:
                raise
            log.info(
                "settled_listing_over_budget",
                source=self.source.name,
                jobs=len(window.job_ids),
                estimated=window.pages,
                reason=rejected.reason,
            )
            return {}, rejected.requests
        return listing.jobs, listing.requests


async def _gather_all(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run them at once (the client's token bucket still spaces their requests); on a
    failure, cancel the rest and retrieve their exceptions before raising the first."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
