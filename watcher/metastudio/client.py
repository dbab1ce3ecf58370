"""Reads voice-training jobs of one source: signed requests, retries, paging, consistency.

A listing is all-or-nothing: the caller gets a complete `ScanResult` or an `ApiError`, never
half. Pages after the first are fetched concurrently (bounded) under a per-source token bucket.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import structlog
from multidict import CIMultiDict
from yarl import URL

from watcher.errors import ApiError, AuthError
from watcher.jobsets import Listed, StoredJobs
from watcher.metastudio.parse import JobsPage, KnownDigests, parse_job, parse_jobs_page
from watcher.metastudio.signer import sign_request
from watcher.model import Job, SourceConfig

log = structlog.get_logger()

# The API's maximum page size; larger values get a 400.
MAX_PAGE_SIZE = 100
# Consecutive scans tried before an ever-shifting listing is reported as an error.
MAX_SCANS = 3
# Gateway codes meaning "your credentials or project are wrong", in both spellings.
_AUTH_CODES = frozenset({"0301", "0302", "0303", "0310"})
_THROTTLED = "0308"
_ERROR_MSG_LIMIT = 200


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try one page: attempts, backoff (seconds) and size limits."""

    attempts: int = 4
    initial_backoff: float = 0.5
    max_backoff: float = 10.0
    max_retry_after: float = 60.0
    page_size: int = 100
    max_response_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Every job of one complete, consistent listing; `requests` counts HTTP requests made.

    `server_time` is the API's `Date` when the listing's first page was served (our clock if
    the API sent none): every change after it is guaranteed to show in a later listing.
    """

    jobs: Mapping[str, Job]
    count: int
    requests: int
    server_time: datetime | None = None
    # The listing came back in another order than `sort_key` ascending asked for (documented
    # APIs list newest first): the caller remembers and reports it (see Cursor.sort_ignored).
    unsorted: bool = False


class ListingRejected(Exception):
    """A listing's first page showed the API ignored a filter we rely on (see `list_jobs`)."""

    def __init__(self, reason: str, requests: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.requests = requests


# Looks at each page of a listing; returns why the listing cannot be trusted, or None.
PageCheck = Callable[[JobsPage], str | None]


@dataclass(slots=True)
class ScanProgress:
    """How far the listing in flight has got: pages fetched of the pages its count implies,
    and when the last page arrived (monotonic), so a slow scan that progresses is told
    from a stalled one."""

    pages_done: int = 0
    pages_total: int | None = None
    last_progress: float = 0.0


class TokenBucket:
    """Client-side rate limit: at most `rate` requests per second, bursts up to `burst`.

    MetaStudio throttles per tenant (APIGW.0308 at roughly 10-20 req/s for list APIs); the
    watcher keeps well below so that the team's own tools never get throttled because of it.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be above 0")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._monotonic = monotonic
        self._sleep = sleep
        self._tokens = self.burst
        self._last = monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until one request may go out; callers are served in arrival order."""
        async with self._lock:
            while True:
                now = self._monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                # The epsilon: float rounding must not leave a sliver to wait for forever.
                if self._tokens >= 1 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1)
                    return
                await self._sleep((1 - self._tokens) / self.rate)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _gateway_code(code: str | None) -> str | None:
    """`APIGW.0301` and `APIG.0301` -> `0301`; None for any other code."""
    if code is None:
        return None
    prefix, _, number = code.partition(".")
    return number if prefix in ("APIGW", "APIG") else None


def _parse_retry_after(value: str | None, now: datetime) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _server_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError("response is not JSON", retryable=True) from None
    if not isinstance(data, dict):
        raise ApiError("response JSON is not an object", retryable=True)
    return data


def body_to_job(body: Mapping[str, Any]) -> Job:
    """ShowVoiceTrainingJob's answer: the TrainingJobInfo fields, at the top level."""
    return parse_job(body)


def _error_fields(body: bytes) -> tuple[str | None, str | None]:
    """`error_code` and `error_msg` of an error body, when it is the documented JSON."""
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    code = data.get("error_code")
    msg = data.get("error_msg")
    return (
        code if isinstance(code, str) else None,
        msg[:_ERROR_MSG_LIMIT] if isinstance(msg, str) else None,
    )


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    content_type: str | None


@dataclass(slots=True)
class _ScanState:
    jobs: dict[str, Job]
    # Listed, and their digest matched what the caller holds: unchanged, never parsed.
    same: set[str] = field(default_factory=set)
    first_count: int | None = None
    last_count: int = 0
    overlapped: bool = False
    counts_differ: bool = False
    # Was the listing in the order asked for? (None until two comparable jobs were seen.)
    last_key: float | None = None
    unsorted: bool = False


@dataclass(slots=True)
class _Tally:
    """HTTP requests made by one listing call (calls may run concurrently)."""

    requests: int = 0
    # The `Date` of the first response (our clock if absent): see ScanResult.server_time.
    server_time: datetime | None = None


class MetaStudioClient:
    """Lists voice-training jobs for one configured source over a shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        source: SourceConfig,
        *,
        retry: RetryPolicy = RetryPolicy(),  # frozen, so sharing it is safe
        clock: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._source = source
        self._retry = retry
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._page_size = max(1, min(retry.page_size, MAX_PAGE_SIZE))
        self._path = f"/v1/{source.project_id}/voice-training-manage/user/jobs"
        self._concurrency = max(1, source.page_concurrency)
        self.bucket = TokenBucket(source.max_requests_per_second, monotonic=monotonic, sleep=sleep)
        self._monotonic = monotonic
        # Every HTTP request this client made (attempts included): what a cycle cost.
        self.requests_made = 0
        self.progress = ScanProgress(last_progress=monotonic())

    @property
    def page_size(self) -> int:
        return self._page_size

    async def list_all_jobs(self) -> ScanResult:
        """Every job matching the source's filters, from one scan that saw a stable listing."""
        return await self.list_jobs()

    async def list_jobs(
        self,
        params: Sequence[tuple[str, str]] = (),
        *,
        sort_key: str = "create_time",
        check: PageCheck | None = None,
        known: Mapping[str, Job] | None = None,
    ) -> ScanResult:
        """Every job matching the source's filters plus `params` (which override a filter of
        the same name), from one listing that saw a stable result.

        `known` is what the caller already holds (its last committed jobs): a parsed job
        equal to one of them is swapped for that object, so a scan of 100k unchanged jobs
        does not hold a second generation of them in memory.

        `check` looks at every page as it arrives, the first one before more are fetched:
        when it names a reason the listing cannot be trusted (an API ignoring
        `update_since`), `ListingRejected` is raised at once instead of paging on.
        """
        tally = _Tally()
        problem = ""
        for scan in range(1, MAX_SCANS + 1):
            state = await self._scan_once(tally, params, sort_key, check, known or {})
            # An unsorted listing is not fatal: offsets may shift under it, and the duplicate,
            # gap and count checks catch that. The caller says so once (its cursor is stored).
            problem = self._inconsistency(state)
            if not problem:
                log.debug(
                    "scan_finished",
                    source=self._source.name,
                    jobs=len(state.jobs) + len(state.same),
                    parsed=len(state.jobs),
                    requests=tally.requests,
                    scans=scan,
                    params=[k for k, _ in params],
                )
                return ScanResult(
                    jobs=Listed(known, state.jobs, state.same)
                    if state.same and known is not None
                    else state.jobs,
                    count=state.last_count,
                    requests=tally.requests,
                    server_time=tally.server_time,
                    unsorted=state.unsorted,
                )
            log.info("scan_inconsistent", source=self._source.name, scan=scan, problem=problem)
        raise ApiError(
            f"inconsistent listing after {MAX_SCANS} scans ({problem}): jobs changed while "
            "paging; will try again next poll",
            retryable=True,
        )

    async def server_offset(self) -> float | None:
        """Seconds the API's clock (its whole-second `Date`) is ahead of ours, from one
        smallest page of the listing; measured from when the request left, so it errs
        by at most a second low, never high. None when the API sent no `Date`."""
        tally = _Tally()
        query = [(k, v) for k, v in self._source.filters if k not in ("offset", "limit")]
        sent_at = self._clock()
        await self._fetch(self._path, [*query, ("limit", "1"), ("offset", "0")], tally, "probe")
        self.progress.last_progress = self._monotonic()
        if tally.server_time is None:
            return None
        return (tally.server_time - sent_at).total_seconds()

    async def get_job(self, job_id: str) -> tuple[Job | None, int]:
        """One job by id (ShowVoiceTrainingJob) and the requests it took; None when 404."""
        tally = _Tally()
        try:
            body = await self._fetch(f"{self._path}/{job_id}", [], tally, f"job {job_id}")
        except ApiError as err:
            if err.status == 404:
                self.progress.last_progress = self._monotonic()
                return None, tally.requests
            raise
        self.progress.last_progress = self._monotonic()
        return body_to_job(body), tally.requests

    async def get_job_resource(
        self, job_id: str, resource: str, query: Sequence[tuple[str, str]] = ()
    ) -> dict[str, Any]:
        """A per-job sub-resource (`audit-result`, `op-logs`): signed, throttled and retried
        like the list call; ApiError as it answers (404 for an unknown job)."""
        body = await self._fetch(
            f"{self._path}/{job_id}/{resource}", list(query), _Tally(), f"{resource} of {job_id}"
        )
        return dict(body)

    def idle_for(self) -> float:
        """Seconds since the last page or lookup of this cycle was answered."""
        return self._monotonic() - self.progress.last_progress

    def begin_cycle(self) -> ScanProgress:
        """Start counting a new cycle's progress from now; returns the live record."""
        self.progress = ScanProgress(last_progress=self._monotonic())
        return self.progress

    @staticmethod
    def _inconsistency(state: _ScanState) -> str:
        if state.overlapped:
            return "a job appeared on two pages"
        if state.counts_differ or state.first_count != state.last_count:
            return f"count changed from {state.first_count} to {state.last_count}"
        seen = len(state.jobs) + len(state.same)
        if seen != state.last_count:
            return f"saw {seen} distinct jobs but count is {state.last_count}"
        return ""

    async def _scan_once(
        self,
        tally: _Tally,
        params: Sequence[tuple[str, str]],
        sort_key: str,
        check: PageCheck | None,
        known: Mapping[str, Job],
    ) -> _ScanState:
        """One pass: the first page says `count`, then every other page at once (bounded).

        Concurrency does not weaken the consistency rules: the listing is sorted oldest
        first, every page must report the first page's count, and the distinct jobs seen
        must number exactly `count`, so a job moved, added or removed while paging shows up
        as a count change, a job on two pages or a gap, and the pass is repeated.
        """
        state = _ScanState(jobs={})
        # Page checks look at every job, so only an unchecked listing may skip parsing.
        digests = _digests_of(known) if check is None else None
        first = await self._fetch_page(0, tally, params, sort_key, known, digests)
        state.first_count = state.last_count = first.count
        if check is not None and (reason := check(first)):
            raise ListingRejected(reason, tally.requests)
        self._absorb(state, first, sort_key)
        if first.size < self._page_size or first.size >= first.count:
            return state
        self.progress.pages_total = self.progress.pages_done + math.ceil(
            (first.count - first.size) / self._page_size
        )
        offsets = iter(range(first.size, first.count, self._page_size))
        pages: dict[int, JobsPage] = {}
        short_at: list[int] = []  # an offset whose page came back short: nothing after it

        async def worker() -> None:
            # Workers share one iterator, so at most `page_concurrency` requests are in flight.
            for offset in offsets:
                if short_at and offset > min(short_at):
                    continue
                page = await self._fetch_page(offset, tally, params, sort_key, known, digests)
                if check is not None and (reason := check(page)):
                    raise ListingRejected(reason, tally.requests)
                pages[offset] = page
                if page.size < self._page_size:
                    short_at.append(offset)

        workers = [asyncio.ensure_future(worker()) for _ in range(self._concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
        for offset in sorted(pages):
            self._absorb(state, pages[offset], sort_key)
        return state

    @staticmethod
    def _absorb(state: _ScanState, page: JobsPage, sort_key: str = "create_time") -> None:
        if page.count != state.first_count:
            state.counts_differ = True
        state.last_count = page.count
        jobs, same = state.jobs, state.same
        for job in page.jobs:
            if job.job_id in jobs or job.job_id in same:
                state.overlapped = True
            jobs[job.job_id] = job
        for job_id in page.same:
            if job_id in jobs or job_id in same:
                state.overlapped = True
            same.add(job_id)
        # The page checked its own order (on the raw times, parsed or not); across pages
        # its first key must not come before the last one of the page before.
        if page.unsorted:
            state.unsorted = True
        if page.first_key is not None:
            if state.last_key is not None and page.first_key < state.last_key:
                state.unsorted = True
            state.last_key = page.last_key if page.last_key is not None else page.first_key

    def _query(
        self, offset: int, params: Sequence[tuple[str, str]], sort_key: str
    ) -> list[tuple[str, str]]:
        override = {k for k, _ in params}
        reserved = {"offset", "limit", "sort_key", "sort_dir"} | override
        query = [(k, v) for k, v in self._source.filters if k not in reserved]
        query += [(k, v) for k, v in params if k not in ("offset", "limit")]
        query += [
            ("limit", str(self._page_size)),
            ("offset", str(offset)),
            # Oldest first: new (or newly updated) jobs land on the last page instead of
            # shifting every offset.
            ("sort_key", sort_key),
            ("sort_dir", "asc"),
        ]
        return query

    async def _fetch_page(
        self,
        offset: int,
        tally: _Tally,
        params: Sequence[tuple[str, str]],
        sort_key: str,
        known: Mapping[str, Job],
        digests: KnownDigests | None = None,
    ) -> JobsPage:
        page = await self._fetch(
            self._path,
            self._query(offset, params, sort_key),
            tally,
            f"offset {offset}",
            digests=digests,
            sort_key=sort_key,
        )
        assert isinstance(page, JobsPage)
        self.progress.pages_done += 1
        self.progress.last_progress = self._monotonic()
        return _reuse_known(page, known)

    async def _fetch(
        self,
        path: str,
        query: list[tuple[str, str]],
        tally: _Tally,
        what: str,
        *,
        digests: KnownDigests | None = None,
        sort_key: str = "create_time",
    ) -> Any:
        """One request, retried on transient failures; AuthError at once."""
        attempts = max(1, self._retry.attempts)
        for attempt in range(1, attempts + 1):
            try:
                return await self._request(path, query, tally, digests, sort_key)
            except AuthError:
                raise
            except ApiError as err:
                if not err.retryable:
                    raise
                if attempt == attempts:
                    raise ApiError(
                        f"{err.message} (gave up after {attempts} attempts)",
                        status=err.status,
                        code=err.code,
                        request_id=err.request_id,
                        retryable=True,
                        retry_after=err.retry_after,
                    ) from err
                delay = self._delay(attempt, err.retry_after)
                log.info(
                    "api_request_retrying",
                    source=self._source.name,
                    what=what,
                    attempt=attempt,
                    delay=round(delay, 3),
                    error=err.message,
                    status=err.status,
                    request_id=err.request_id,
                )
                await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._retry.max_retry_after)
        # Full jitter: spreads retries of many watchers instead of synchronising them.
        ceiling = min(self._retry.max_backoff, self._retry.initial_backoff * 2 ** (attempt - 1))
        return self._rng.uniform(0, ceiling)

    async def _request(
        self,
        path: str,
        query: list[tuple[str, str]],
        tally: _Tally,
        digests: KnownDigests | None = None,
        sort_key: str = "create_time",
    ) -> Any:
        """A list path gives a `JobsPage`, a job path the raw JSON object (see get_job)."""
        response, signed_at = await self._get(path, query, tally)
        if response.status == 200:
            try:
                if path == self._path:
                    return parse_jobs_page(response.body, response.content_type, digests, sort_key)
                return _json_object(response.body)
            except ApiError as err:
                request_id = response.headers.get("X-Request-Id")
                suffix = f" [request {request_id}]" if request_id else ""
                raise ApiError(
                    f"bad list response: {err.message}{suffix}",
                    status=200,
                    request_id=request_id,
                    retryable=True,
                ) from None
        raise self._status_error(response, signed_at)

    async def _get(
        self, path: str, query: list[tuple[str, str]], tally: _Tally
    ) -> tuple[_Response, datetime]:
        source = self._source
        await self.bucket.acquire()
        now = self._clock()
        # Signed afresh for every attempt: the gateway rejects dates 15 minutes old.
        signed = sign_request(
            method="GET",
            endpoint=source.endpoint,
            path=path,
            query=query,
            ak=source.ak.secret.reveal(),
            sk=source.sk.secret.reveal(),
            now=now,
            project_id=source.project_id,
            security_token=source.security_token.secret.reveal() if source.security_token else None,
            app_user_id=source.app_user_id,
        )
        timeout_s = source.request_timeout.total_seconds()
        tally.requests += 1
        self.requests_made += 1
        try:
            async with self._session.get(
                URL(signed.url, encoded=True),
                headers=signed.headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as resp:
                body = await self._read_capped(resp)
                if tally.server_time is None:
                    tally.server_time = _server_date(resp.headers.get("Date")) or now
                return (
                    _Response(
                        status=resp.status,
                        headers=CIMultiDict(resp.headers),
                        body=body,
                        content_type=resp.headers.get("Content-Type"),
                    ),
                    now,
                )
        except TimeoutError:
            raise ApiError(
                f"MetaStudio API did not answer within {timeout_s:g} s", retryable=True
            ) from None
        except aiohttp.ClientError as err:
            raise ApiError(
                f"cannot reach MetaStudio API at {source.endpoint}: {type(err).__name__}",
                retryable=True,
            ) from None

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self._retry.max_response_bytes
        too_big = ApiError(
            f"response larger than {limit} bytes; refusing to read it",
            status=resp.status,
            request_id=resp.headers.get("X-Request-Id"),
            retryable=False,
        )
        if resp.content_length is not None and resp.content_length > limit:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        while chunk := await resp.content.read(65536):
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    def _status_error(self, response: _Response, signed_at: datetime) -> ApiError:
        status = response.status
        code, msg = _error_fields(response.body)
        request_id = response.headers.get("X-Request-Id")
        gateway = _gateway_code(code)
        suffix = f" [request {request_id}]" if request_id else ""
        detail = f": {msg}" if msg else ""
        shown_code = code or f"HTTP {status}"
        if gateway in _AUTH_CODES or status in (401, 403):
            if gateway == "0303":
                skew = self._clock_skew(response, signed_at)
                if skew is None:
                    advice = "; check the local clock (NTP)"
                else:
                    side = "behind" if skew > 0 else "ahead of"
                    advice = f"; local clock looks off by {abs(skew):.0f} s ({side} the server)"
                message = f"request date rejected by the API gateway ({shown_code}){detail}{advice}"
            elif gateway == "0310":
                message = (
                    f"project {self._source.project_id} is unavailable to these credentials "
                    f"({shown_code}){detail}"
                )
            else:
                message = f"AK/SK rejected by the API gateway ({shown_code}){detail}"
            return AuthError(
                message + suffix, status=status, code=code, request_id=request_id, retryable=False
            )
        if status == 429 or gateway == _THROTTLED:
            retry_after = _parse_retry_after(response.headers.get("Retry-After"), self._clock())
            return ApiError(
                f"throttled by the API gateway ({shown_code}){detail}{suffix}",
                status=status,
                code=code,
                request_id=request_id,
                retryable=True,
                retry_after=retry_after,
            )
        retryable = status >= 500
        return ApiError(
            f"MetaStudio API returned HTTP {status} ({shown_code}){detail}{suffix}",
            status=status,
            code=code,
            request_id=request_id,
            retryable=retryable,
        )

    @staticmethod
    def _clock_skew(response: _Response, signed_at: datetime) -> float | None:
        """Seconds our clock is behind (+) or ahead (-) of the server's `Date`, if it sent one."""
        date = response.headers.get("Date")
        if not date:
            return None
        try:
            server = parsedate_to_datetime(date)
        except (TypeError, ValueError):
            return None
        if server.tzinfo is None:
            server = server.replace(tzinfo=UTC)
        return (server - signed_at).total_seconds()


def _digests_of(known: Mapping[str, Job]) -> KnownDigests | None:
    """How to read the digest of a job the caller holds (None: it holds none)."""
    if not known:
        return None
    if isinstance(known, StoredJobs):
        return known.unchanged

    def unchanged(job_id: str, digest: int) -> str | None:
        job = known.get(job_id)
        return job.job_id if job is not None and job.digest == digest else None

    return unchanged


def _reuse_known(page: JobsPage, known: Mapping[str, Job]) -> JobsPage:
    """`page` with each parsed job equal to one already held swapped for that object, so
    a scan of 100k unchanged jobs does not hold a second generation of them in memory."""
    if not known:
        return page
    # Only an old object with the same digest: one without (stored before digests) is
    # replaced once, so that its row gets the digest and the next scan skips it.
    jobs = tuple(
        old
        if (old := known.get(job.job_id)) is not None and old.digest == job.digest and old == job
        else job
        for job in page.jobs
    )
    return replace(page, jobs=jobs)
