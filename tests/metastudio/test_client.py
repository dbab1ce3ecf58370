"""The client against the simulator on loopback: paging, retries, auth errors, consistency.

No mocks of our HTTP layer; `sleep` is injected and records, so no test really waits.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import structlog

from watcher import model
from watcher.errors import ApiError, AuthError
from watcher.metastudio.client import (
    ListingRejected,
    MetaStudioClient,
    RetryPolicy,
    ScanResult,
    TokenBucket,
)
from watcher.simulator.app import create_app
from watcher.simulator.runner import serve_app
from watcher.simulator.state import SimulatorState

PROJECT = "proj0001"
AK = "CLIENTTESTAK"
SK = "client-test-sk"
BASE = datetime(2024, 12, 12, 8, 0, tzinfo=UTC)


@dataclass
class Harness:
    state: SimulatorState
    base_url: str
    session: aiohttp.ClientSession
    sleeps: list[float] = field(default_factory=list)

    async def record_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def client(
        self,
        *,
        sk: str = SK,
        timeout: float = 5.0,
        filters: tuple[tuple[str, str], ...] = (),
        clock_offset: timedelta = timedelta(0),
        retry: RetryPolicy | None = None,
        project_id: str = PROJECT,
    ) -> MetaStudioClient:
        source = model.SourceConfig(
            name="test",
            endpoint=self.base_url,
            region=None,
            project_id=project_id,
            ak=model.Credential(model.Secret(AK), "config"),
            sk=model.Credential(model.Secret(sk), "config"),
            filters=filters,
            request_timeout=timedelta(seconds=timeout),
        )
        return MetaStudioClient(
            self.session,
            source,
            retry=retry or RetryPolicy(initial_backoff=0.01, max_backoff=0.05),
            clock=lambda: datetime.now(UTC) + clock_offset,
            sleep=self.record_sleep,
            rng=random.Random(1),
        )

    def add_jobs(self, n: int, **fields: Any) -> list[dict[str, Any]]:
        return [self.state.add_job(now=BASE + timedelta(seconds=i), **fields) for i in range(n)]


@pytest.fixture
async def sim() -> AsyncIterator[Harness]:
    state = SimulatorState(seed=42)
    runner, base_url = await serve_app(create_app(state, project_id=PROJECT, ak=AK, sk=SK))
    async with aiohttp.ClientSession() as session:
        yield Harness(state, base_url, session)
    await runner.cleanup()


def ids(result: ScanResult) -> set[str]:
    return set(result.jobs)


async def test_complete_scan_over_three_pages(sim: Harness) -> None:
    created = sim.add_jobs(250)
    result = await sim.client().list_all_jobs()
    assert ids(result) == {j["job_id"] for j in created}
    assert result.count == 250
    assert result.requests == 3
    assert sim.state.requests == 3
    assert sim.sleeps == []


async def test_empty_listing_is_one_request(sim: Harness) -> None:
    result = await sim.client().list_all_jobs()
    assert (result.jobs, result.count, result.requests) == ({}, 0, 1)


async def test_filters_are_sent_and_signed(sim: Harness) -> None:
    jobs = sim.add_jobs(5)
    sim.state.set_state(jobs[1]["job_id"], model.FAILED)
    sim.state.set_state(jobs[2]["job_id"], model.WAITING)
    client = sim.client(
        filters=(("state", "FAILED,WAITING"), ("create_since", "2024-12-12T08:00:00Z"))
    )
    result = await client.list_all_jobs()
    assert ids(result) == {jobs[1]["job_id"], jobs[2]["job_id"]}


async def test_server_errors_are_retried_then_succeed(sim: Harness) -> None:
    sim.add_jobs(3)
    sim.state.faults += [{"kind": "status", "status": 503}, {"kind": "status", "status": 500}]
    result = await sim.client().list_all_jobs()
    assert len(result.jobs) == 3
    assert result.requests == 3
    assert len(sim.sleeps) == 2
    # Full jitter: never longer than the exponential ceiling.
    assert sim.sleeps[0] <= 0.01 and sim.sleeps[1] <= 0.02


async def test_throttling_honours_retry_after(sim: Harness) -> None:
    sim.add_jobs(2)
    sim.state.faults += [
        {"kind": "status", "status": 429, "error_code": "APIGW.0308", "retry_after": 2},
        {"kind": "status", "status": 429, "error_code": "APIGW.0308", "retry_after": 3600},
    ]
    result = await sim.client().list_all_jobs()
    assert len(result.jobs) == 2
    # The second Retry-After is capped at max_retry_after.
    assert sim.sleeps == [2.0, 60.0]


async def test_a_hanging_request_times_out_and_is_retried(sim: Harness) -> None:
    sim.add_jobs(2)
    sim.state.faults.append({"kind": "hang", "seconds": 0.5})
    result = await sim.client(timeout=0.1).list_all_jobs()
    assert len(result.jobs) == 2
    assert len(sim.sleeps) == 1


async def test_a_reset_connection_is_retried(sim: Harness) -> None:
    sim.add_jobs(2)
    # aiohttp itself retries a dropped GET once; the second reset reaches our client.
    sim.state.faults += [{"kind": "reset"}, {"kind": "reset"}]
    result = await sim.client().list_all_jobs()
    assert len(result.jobs) == 2
    assert len(sim.sleeps) == 1
    assert sim.state.requests == 3


@pytest.mark.parametrize("kind", ["html", "truncated", "malformed", "missing_jobs"])
async def test_bad_bodies_are_retried_then_succeed(sim: Harness, kind: str) -> None:
    sim.add_jobs(4)
    sim.state.faults.append({"kind": kind})
    result = await sim.client().list_all_jobs()
    assert len(result.jobs) == 4
    assert len(sim.sleeps) == 1


async def test_exhausted_retries_raise_api_error_and_no_partial_result(sim: Harness) -> None:
    sim.add_jobs(150)
    # Page one succeeds; page two fails on every attempt.
    sim.state.faults += [{}, *({"kind": "status", "status": 503} for _ in range(4))]
    with pytest.raises(ApiError) as info:
        await sim.client().list_all_jobs()
    err = info.value
    assert not isinstance(err, AuthError)
    assert err.retryable
    assert err.status == 503
    assert "gave up after 4 attempts" in err.message
    assert err.request_id and err.request_id in err.message
    assert sim.state.requests == 5


async def test_client_errors_other_than_auth_are_not_retried(sim: Harness) -> None:
    sim.state.faults.append(
        {"kind": "status", "status": 400, "error_code": "MSS.00000003", "error_msg": "bad tag"}
    )
    with pytest.raises(ApiError) as info:
        await sim.client().list_all_jobs()
    assert not info.value.retryable
    assert "MSS.00000003" in info.value.message
    assert sim.state.requests == 1


async def test_wrong_secret_raises_auth_error_without_retrying(sim: Harness) -> None:
    sim.add_jobs(2)
    with pytest.raises(AuthError) as info:
        await sim.client(sk="not-the-secret").list_all_jobs()
    err = info.value
    assert err.code == "APIGW.0301"
    assert err.message.startswith("AK/SK rejected by the API gateway (APIGW.0301)")
    assert err.request_id and err.request_id in err.message
    assert "not-the-secret" not in err.message
    assert sim.state.requests == 1
    assert sim.sleeps == []


async def test_old_style_apig_code_is_an_auth_error_too(sim: Harness) -> None:
    sim.state.faults.append({"kind": "status", "status": 403, "error_code": "APIG.0302"})
    with pytest.raises(AuthError):
        await sim.client().list_all_jobs()
    assert sim.state.requests == 1


async def test_clock_skew_is_reported_in_seconds(sim: Harness) -> None:
    with pytest.raises(AuthError) as info:
        await sim.client(clock_offset=timedelta(minutes=-20)).list_all_jobs()
    message = info.value.message
    assert info.value.code == "APIGW.0303"
    assert "local clock looks off by" in message
    seconds = int(message.split("off by ")[1].split(" s")[0])
    assert 1195 <= seconds <= 1205
    assert "behind the server" in message


async def test_wrong_project_is_an_auth_error(sim: Harness) -> None:
    with pytest.raises(AuthError) as info:
        await sim.client(project_id="other").list_all_jobs()
    assert info.value.code == "APIGW.0310"


async def test_job_inserted_before_a_page_triggers_a_consistent_rescan(sim: Harness) -> None:
    created = sim.add_jobs(250)
    # Before page two: an older job appears, so every later offset shifts by one.
    sim.state.faults += [{}, {"kind": "insert_before_page"}]
    result = await sim.client().list_all_jobs()
    assert ids(result) == set(sim.state.jobs)
    assert {j["job_id"] for j in created} <= ids(result)
    assert result.count == 251
    assert result.requests == 6


async def test_job_deleted_before_a_page_triggers_a_consistent_rescan(sim: Harness) -> None:
    created = sim.add_jobs(250)
    sim.state.faults += [{}, {"kind": "delete_before_page"}]
    result = await sim.client().list_all_jobs()
    assert ids(result) == set(sim.state.jobs)
    assert len(result.jobs) == 249
    # Nothing that exists at both ends of the scan is missing.
    assert ids(result) == {j["job_id"] for j in created} - {created[0]["job_id"]}


async def test_a_listing_that_never_settles_is_an_error(sim: Harness) -> None:
    sim.add_jobs(150)
    sim.state.faults += [{}, {"kind": "insert_before_page"}] * 3
    with pytest.raises(ApiError) as info:
        await sim.client().list_all_jobs()
    assert info.value.retryable
    assert "inconsistent listing" in info.value.message


async def test_seconds_and_milliseconds_timestamps_are_normalised(sim: Harness) -> None:
    sim.state.add_job(job_id="ms", create_time=1733990400000, lastupdate_time=1733990460000)
    sim.state.add_job(job_id="s", create_time=1733990401, lastupdate_time=1733990461)
    result = await sim.client().list_all_jobs()
    assert result.jobs["ms"].create_time == datetime(2024, 12, 12, 8, 0, tzinfo=UTC)
    assert result.jobs["s"].lastupdate_time == datetime(2024, 12, 12, 8, 1, 1, tzinfo=UTC)


async def test_no_phone_number_reaches_jobs_or_logs(sim: Harness) -> None:
    jobs = sim.add_jobs(3)
    sim.state.faults += [{"kind": "truncated"}, {"kind": "status", "status": 503}]
    with structlog.testing.capture_logs() as logs:
        result = await sim.client().list_all_jobs()
    phones = {j["phone"] for j in jobs}
    text = repr(result) + repr(logs)
    assert not any(phone in text for phone in phones)
    assert SK not in text
    assert len(logs) >= 2


async def test_oversized_responses_are_refused(sim: Harness) -> None:
    sim.add_jobs(30)
    with pytest.raises(ApiError) as info:
        await sim.client(retry=RetryPolicy(max_response_bytes=2000)).list_all_jobs()
    assert "larger than 2000 bytes" in info.value.message


# --- concurrency, rate limit, listings with parameters, lookups ------------------------------


def _fast_source(sim: Harness, **fields: Any) -> model.SourceConfig:
    return model.SourceConfig(
        name="test",
        endpoint=sim.base_url,
        region=None,
        project_id=PROJECT,
        ak=model.Credential(model.Secret(AK), "config"),
        sk=model.Credential(model.Secret(SK), "config"),
        **{"max_requests_per_second": 10_000.0, **fields},
    )


async def test_token_bucket_spaces_requests_at_the_configured_rate() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    bucket = TokenBucket(5.0, monotonic=lambda: now[0], sleep=sleep)
    for _ in range(15):
        await bucket.acquire()
    # A burst of 5 at once, then one every 0.2 s.
    assert now[0] == pytest.approx(2.0)


async def test_pages_are_fetched_concurrently_but_never_more_than_page_concurrency(
    sim: Harness,
) -> None:
    created = sim.add_jobs(1000)
    in_flight, peak = [0], [0]

    async def started(*_: Any) -> None:
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])

    async def ended(*_: Any) -> None:
        in_flight[0] -= 1

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(started)
    trace.on_request_end.append(ended)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        client = MetaStudioClient(session, _fast_source(sim, page_concurrency=3))
        result = await client.list_all_jobs()
    assert set(result.jobs) == {j["job_id"] for j in created}
    assert result.requests == 10
    assert peak[0] == 3


async def test_concurrent_scan_rescans_when_a_job_is_inserted_while_paging(sim: Harness) -> None:
    sim.add_jobs(450)
    sim.state.faults.extend([{}, {}, {"kind": "insert_before_page"}])
    client = MetaStudioClient(sim.session, _fast_source(sim, page_concurrency=4))
    result = await client.list_all_jobs()
    assert result.count == len(result.jobs) == 451
    assert result.requests == 10  # one spoiled pass of 5 pages, one clean pass


async def test_first_page_check_rejects_the_listing_before_paging_on(sim: Harness) -> None:
    sim.add_jobs(250)
    client = MetaStudioClient(sim.session, _fast_source(sim))
    with pytest.raises(ListingRejected) as caught:
        await client.list_jobs([("state", "CREATING")], check=lambda page: "no, thanks")
    assert (caught.value.reason, caught.value.requests) == ("no, thanks", 1)


async def test_update_since_listing_has_the_changed_jobs_and_the_server_time(
    sim: Harness,
) -> None:
    jobs = sim.add_jobs(150)
    later = BASE + timedelta(hours=1)
    for job in jobs[10:13]:
        sim.state.set_state(job["job_id"], model.FAILED, now=later)
    client = MetaStudioClient(sim.session, _fast_source(sim))
    result = await client.list_jobs(
        [("update_since", "2024-12-12T08:30:00Z")], sort_key="update_time"
    )
    assert set(result.jobs) == {j["job_id"] for j in jobs[10:13]}
    assert result.requests == 1
    assert result.server_time is not None
    assert abs(result.server_time - datetime.now(UTC)) < timedelta(seconds=5)


async def test_get_job_finds_a_job_and_says_none_for_a_404(sim: Harness) -> None:
    (job,) = sim.add_jobs(1)
    client = MetaStudioClient(sim.session, _fast_source(sim))
    found, spent = await client.get_job(job["job_id"])
    assert found is not None and (found.job_id, found.state, spent) == (
        job["job_id"],
        "CREATING",
        1,
    )
    assert "phone" not in found.extra
    assert await client.get_job("no-such-job") == (None, 1)


async def test_a_region_ignoring_the_sort_order_is_noticed_and_still_scanned(
    sim: Harness,
) -> None:
    created = sim.add_jobs(250)
    client = sim.client()
    assert (await client.list_all_jobs()).unsorted is False
    sim.state.ignore_update_filters = True  # an older region: newest first, whatever we ask
    first = await client.list_all_jobs()
    second = await client.list_all_jobs()
    assert ids(first) == ids(second) == {j["job_id"] for j in created}
    assert first.unsorted is True and second.unsorted is True  # the caller says so, once


async def test_a_listing_reuses_the_jobs_the_caller_passes_as_known(sim: Harness) -> None:
    jobs = sim.add_jobs(150)
    client = MetaStudioClient(sim.session, _fast_source(sim))
    first = await client.list_jobs()
    sim.state.set_state(jobs[0]["job_id"], model.FAILED, now=BASE + timedelta(hours=1))
    again = await client.list_jobs(known=first.jobs)
    changed = jobs[0]["job_id"]
    # Equal jobs are the very objects passed in (no second generation held); a changed
    # one is the new version.
    assert all(again.jobs[j] is first.jobs[j] for j in again.jobs if j != changed)
    assert again.jobs[changed] is not first.jobs[changed]
    assert again.jobs[changed].state == model.FAILED
    # Without `known` nothing is shared: the hand-off is the argument, not client state.
    fresh = await client.list_jobs()
    assert all(fresh.jobs[j] is not first.jobs[j] for j in fresh.jobs)
