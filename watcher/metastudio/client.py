"""Reads every voice-training job of one source: signed requests, retries, paging, consistency.

A scan is all-or-nothing: the caller gets a complete `ScanResult` or an `ApiError`, never half.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import structlog
from multidict import CIMultiDict
from yarl import URL

from watcher.errors import ApiError, AuthError
from watcher.metastudio.parse import JobsPage, parse_jobs_page
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
    """Every job of one complete, consistent listing; `requests` counts HTTP requests made."""

    jobs: Mapping[str, Job]
    count: int
    requests: int


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
    first_count: int | None = None
    last_count: int = 0
    overlapped: bool = False


@dataclass(slots=True)
class _Tally:
    """HTTP requests made by one `list_all_jobs` call (calls may run concurrently)."""

    requests: int = 0


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
    ) -> None:
        self._session = session
        self._source = source
        self._retry = retry
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._page_size = max(1, min(retry.page_size, MAX_PAGE_SIZE))
        self._path = f"/v1/{source.project_id}/voice-training-manage/user/jobs"

    async def list_all_jobs(self) -> ScanResult:
        """Every job matching the source's filters, from one scan that saw a stable listing."""
        tally = _Tally()
        problem = ""
        for scan in range(1, MAX_SCANS + 1):
            state = await self._scan_once(tally)
            problem = self._inconsistency(state)
            if not problem:
                log.debug(
                    "scan_finished",
                    source=self._source.name,
                    jobs=len(state.jobs),
                    requests=tally.requests,
                    scans=scan,
                )
                return ScanResult(jobs=state.jobs, count=state.last_count, requests=tally.requests)
            log.info("scan_inconsistent", source=self._source.name, scan=scan, problem=problem)
        raise ApiError(
            f"inconsistent listing after {MAX_SCANS} scans ({problem}): jobs changed while "
            "paging; will try again next poll",
            retryable=True,
        )

    @staticmethod
    def _inconsistency(state: _ScanState) -> str:
        if state.overlapped:
            return "a job appeared on two pages"
        if state.first_count != state.last_count:
            return f"count changed from {state.first_count} to {state.last_count}"
        if len(state.jobs) != state.last_count:
            return f"saw {len(state.jobs)} distinct jobs but count is {state.last_count}"
        return ""

    async def _scan_once(self, tally: _Tally) -> _ScanState:
        state = _ScanState(jobs={})
        offset = 0
        # Bounds a server that keeps returning full pages forever.
        max_pages: int | None = None
        pages = 0
        while True:
            page = await self._fetch_page(offset, tally)
            pages += 1
            if state.first_count is None:
                state.first_count = page.count
                max_pages = page.count // self._page_size + 3
            state.last_count = page.count
            for job in page.jobs:
                if job.job_id in state.jobs:
                    state.overlapped = True
                state.jobs[job.job_id] = job
            offset += len(page.jobs)
            if len(page.jobs) < self._page_size or offset >= page.count:
                return state
            if max_pages is not None and pages >= max_pages:
                state.overlapped = True
                return state

    def _query(self, offset: int) -> list[tuple[str, str]]:
        reserved = {"offset", "limit", "sort_key", "sort_dir"}
        query = [(k, v) for k, v in self._source.filters if k not in reserved]
        query += [
            ("limit", str(self._page_size)),
            ("offset", str(offset)),
            # Oldest first: new jobs land on the last page instead of shifting every offset.
            ("sort_key", "create_time"),
            ("sort_dir", "asc"),
        ]
        return query

    async def _fetch_page(self, offset: int, tally: _Tally) -> JobsPage:
        """One page, retried on transient failures; AuthError at once."""
        attempts = max(1, self._retry.attempts)
        for attempt in range(1, attempts + 1):
            try:
                return await self._request_page(offset, tally)
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
                    offset=offset,
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

    async def _request_page(self, offset: int, tally: _Tally) -> JobsPage:
        response, signed_at = await self._get(self._query(offset), tally)
        if response.status == 200:
            try:
                return parse_jobs_page(response.body, response.content_type)
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

    async def _get(self, query: list[tuple[str, str]], tally: _Tally) -> tuple[_Response, datetime]:
        source = self._source
        now = self._clock()
        # Signed afresh for every attempt: the gateway rejects dates 15 minutes old.
        signed = sign_request(
            method="GET",
            endpoint=source.endpoint,
            path=self._path,
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
        try:
            async with self._session.get(
                URL(signed.url, encoded=True),
                headers=signed.headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as resp:
                body = await self._read_capped(resp)
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
