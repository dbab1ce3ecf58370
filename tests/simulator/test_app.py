"""The simulator's HTTP API over loopback: filters, paging, validation, the gateway's checks.

Also the `/_sim/` control interface the demo and tests drive it with.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from tests.simulator.conftest import NOW, PROJECT, Sim, add_jobs
from watcher import model
from watcher.simulator.app import select_jobs
from watcher.simulator.state import SimulatorState


async def test_paging_returns_total_count_and_a_stable_order(sim: Sim) -> None:
    created = add_jobs(sim.state, 25)
    seen: list[str] = []
    for offset in (0, 10, 20):
        query = [
            ("offset", str(offset)),
            ("limit", "10"),
            ("sort_key", "create_time"),
            ("sort_dir", "asc"),
        ]
        status, body, headers = await sim.get(query)
        assert status == 200
        assert body["count"] == 25
        assert "X-Request-Id" in headers
        seen += [j["job_id"] for j in body["jobs"]]
    assert seen == [j["job_id"] for j in created]


async def test_default_order_is_newest_first_and_default_limit_is_ten(sim: Sim) -> None:
    created = add_jobs(sim.state, 12)
    status, body, _ = await sim.get([])
    assert status == 200
    assert len(body["jobs"]) == 10
    assert body["jobs"][0]["job_id"] == created[-1]["job_id"]


async def test_limit_outside_1_to_100_is_a_400(sim: Sim) -> None:
    for bad in ("0", "101", "ten"):
        status, body, _ = await sim.get([("limit", bad)])
        assert status == 400
        assert body["error_code"] == "MSS.00000003"
    status, _, _ = await sim.get([("offset", "-1")])
    assert status == 400


async def test_filters_on_state_list_and_exact_fields(sim: Sim) -> None:
    jobs = add_jobs(sim.state, 6, tag="NEWS", batch_name="b1")
    sim.state.set_state(jobs[0]["job_id"], model.FAILED)
    sim.state.set_state(jobs[1]["job_id"], model.WAITING)
    jobs[2]["tag"] = "LIVE"
    status, body, _ = await sim.get([("state", "FAILED,WAITING"), ("limit", "100")])
    assert status == 200
    assert {j["job_id"] for j in body["jobs"]} == {jobs[0]["job_id"], jobs[1]["job_id"]}
    _, body, _ = await sim.get([("tag", "LIVE")])
    assert [j["job_id"] for j in body["jobs"]] == [jobs[2]["job_id"]]
    _, body, _ = await sim.get([("job_id", jobs[3]["job_id"])])
    assert body["count"] == 1
    _, body, _ = await sim.get([("batch_name", "b1"), ("job_type", jobs[4]["job_type"])])
    assert jobs[4]["job_id"] in {j["job_id"] for j in body["jobs"]}
    _, body, _ = await sim.get([("voice_name", "nobody")])
    assert body == {"count": 0, "jobs": []}


async def test_create_since_and_until_take_rfc3339(sim: Sim) -> None:
    # add_jobs creates them at 08:00:00, 08:00:01, ... UTC.
    add_jobs(sim.state, 5)
    query = [("create_since", "2024-12-12T08:00:01Z"), ("create_until", "2024-12-12T08:00:03Z")]
    status, body, _ = await sim.get(query)
    assert status == 200
    assert body["count"] == 3
    status, body, _ = await sim.get([("create_since", "yesterday")])
    assert status == 400


async def test_bad_signature_and_unknown_key_are_401_apigw_0301(sim: Sim) -> None:
    status, body, headers = await sim.get([], sk="wrong")
    assert (status, body["error_code"]) == (401, "APIGW.0301")
    assert headers["X-Request-Id"] == body["request_id"]
    async with sim.session.get(f"{sim.base_url}/v1/{PROJECT}/voice-training-manage/user/jobs") as r:
        assert r.status == 401
        assert (await r.json())["error_code"] == "APIGW.0301"


async def test_a_date_more_than_15_minutes_off_is_401_apigw_0303(sim: Sim) -> None:
    old = datetime.now(UTC) - timedelta(minutes=20)
    status, body, _ = await sim.get([], now=old)
    assert (status, body["error_code"]) == (401, "APIGW.0303")
    status, _, _ = await sim.get([], now=datetime.now(UTC) - timedelta(minutes=10))
    assert status == 200


async def test_wrong_project_is_403_apigw_0310(sim: Sim) -> None:
    status, body, _ = await sim.get([], path="/v1/other/voice-training-manage/user/jobs")
    assert (status, body["error_code"]) == (403, "APIGW.0310")


async def test_show_one_job(sim: Sim) -> None:
    job = add_jobs(sim.state, 1)[0]
    path = f"/v1/{PROJECT}/voice-training-manage/user/jobs/{job['job_id']}"
    status, body, _ = await sim.get([], path=path)
    assert (status, body["job_id"]) == (200, job["job_id"])
    status, _, _ = await sim.get([], path=path + "x")
    assert status == 404


async def test_control_interface_adds_updates_steps_and_deletes(sim: Sim) -> None:
    base = f"{sim.base_url}/_sim"
    async with sim.session.post(f"{base}/jobs", json={"voice_name": "Zed"}) as r:
        assert r.status == 201
        job_id = (await r.json())["job_id"]
    async with sim.session.post(f"{base}/jobs/{job_id}", json={"state": "AUDIT_FAILED"}) as r:
        body = await r.json()
        assert (body["state"], body["reject_times"]) == ("AUDIT_FAILED", 1)
    async with sim.session.post(f"{base}/step") as r:
        assert (await r.json())["changes"][0]["to"] == "UPLOADING"
    async with sim.session.post(f"{base}/faults", json=[{"kind": "status", "status": 503}]) as r:
        assert (await r.json())["faults_pending"] == 1
    status, body, _ = await sim.get([])
    assert (status, body["error_code"]) == (503, "MSS.00000001")
    async with sim.session.delete(f"{base}/jobs/{job_id}") as r:
        assert r.status == 204
    async with sim.session.get(f"{base}/stats") as r:
        stats = await r.json()
        assert (stats["requests"], stats["jobs"], stats["faults_pending"]) == (1, 0, 0)


async def test_html_and_reset_faults(sim: Sim) -> None:
    add_jobs(sim.state, 3)
    # Two resets: aiohttp quietly retries an idempotent request once after a dropped connection.
    resets = [{"kind": "reset"}, {"kind": "reset"}]
    sim.state.faults += [{"kind": "html"}, *resets, {"kind": "missing_jobs"}]
    async with sim.session.get(f"{sim.base_url}/v1/{PROJECT}/voice-training-manage/user/jobs") as r:
        assert r.content_type == "text/html"
    with pytest.raises(aiohttp.ClientError):
        await sim.get([])
    status, body, _ = await sim.get([])
    assert status == 200
    assert body == {"count": 3}


async def test_update_since_is_honoured_and_sorted_by_update_time(sim: Sim) -> None:
    jobs = add_jobs(sim.state, 5)
    sim.state.set_state(jobs[3]["job_id"], "FAILED", now=NOW + timedelta(hours=2))
    sim.state.set_state(jobs[1]["job_id"], "SUCCEED", now=NOW + timedelta(hours=1))
    status, body, _ = await sim.get(
        [
            ("update_since", "2024-12-12T08:30:00Z"),
            ("sort_key", "update_time"),
            ("sort_dir", "asc"),
        ]
    )
    assert status == 200
    assert [j["job_id"] for j in body["jobs"]] == [jobs[1]["job_id"], jobs[3]["job_id"]]
    assert body["count"] == 2
    assert sim.state.requests_by_kind == {"list?update_since": 1}


async def test_an_older_region_ignores_update_filters_when_told_to(sim: Sim) -> None:
    jobs = add_jobs(sim.state, 5)
    base = f"{sim.base_url}/_sim"
    async with sim.session.post(f"{base}/config", json={"ignore_update_filters": True}) as r:
        assert (await r.json()) == {"ignore_update_filters": True, "api_behaviour": "documented"}
    query = [("update_since", "2030-01-01T00:00:00Z"), ("sort_key", "update_time")]
    status, body, _ = await sim.get([*query, ("sort_dir", "asc")])
    assert status == 200
    assert body["count"] == 5
    # The old default order: newest created first.
    assert [j["job_id"] for j in body["jobs"]] == [j["job_id"] for j in reversed(jobs)]
    async with sim.session.get(f"{base}/stats") as r:
        stats = await r.json()
    assert stats["ignore_update_filters"] is True
    assert stats["requests_by_kind"] == {"list?update_since": 1}


async def test_requests_are_counted_by_kind(sim: Sim) -> None:
    (job,) = add_jobs(sim.state, 1)
    await sim.get([("state", "CREATING,WAITING"), ("limit", "100"), ("offset", "0")])
    await sim.get([("state", "FAILED"), ("create_since", "2024-12-12T08:00:00Z")])
    await sim.get([], path=f"/v1/{PROJECT}/voice-training-manage/user/jobs/{job['job_id']}")
    await sim.get([])
    assert sim.state.requests_by_kind == {
        "list?state": 1,
        "list?create_since&state": 1,
        "show": 1,
        "list": 1,
    }


async def test_cached_listings_follow_every_change(sim: Sim) -> None:
    sim.state.cache_listings = True
    jobs = add_jobs(sim.state, 3)
    _, body, _ = await sim.get([("state", "CREATING")])
    assert body["count"] == 3
    sim.state.set_state(jobs[0]["job_id"], "FAILED", now=NOW)
    _, body, _ = await sim.get([("state", "CREATING")])
    assert body["count"] == 2
    sim.state.remove_job(jobs[1]["job_id"])
    _, body, _ = await sim.get([("state", "CREATING")])
    assert body["count"] == 1


def test_interleaved_queries_keep_their_cached_listings() -> None:
    state = SimulatorState(seed=2, cache_listings=True)
    for _ in range(20):
        state.add_job(now=NOW)
    creating = {"state": "CREATING", "limit": "100", "offset": "0"}
    everything = {"limit": "100", "offset": "100"}
    first = select_jobs(state, creating)
    assert select_jobs(state, everything) is select_jobs(state, everything)
    assert select_jobs(state, {**creating, "offset": "50"}) is first  # paging: the same listing
    state.set_state(first[0]["job_id"], "FAILED", now=NOW)
    assert len(select_jobs(state, creating)) == len(first) - 1
    assert len(select_jobs(state, everything)) == 20
