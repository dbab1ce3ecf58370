"""The simulator's three API behaviours over loopback: what each region honours and ignores.

full honours the undocumented update/sort parameters, documented only the page's filters
(validating `state`), plain only offset/limit and the exact-match filters.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

import aiohttp
import pytest

from tests.simulator.conftest import NOW, Sim, add_jobs
from watcher import model
from watcher.simulator.runner import start_simulator
from watcher.simulator.state import ApiBehaviour

_BOUND = (NOW + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ids(body: dict[str, object]) -> list[str]:
    jobs = body["jobs"]
    assert isinstance(jobs, list)
    return [j["job_id"] for j in jobs]


async def _set_behaviour(sim: Sim, behaviour: str) -> dict[str, object]:
    async with sim.session.post(
        f"{sim.base_url}/_sim/config", json={"api_behaviour": behaviour}
    ) as resp:
        assert resp.status == 200
        answer: dict[str, object] = await resp.json()
        return answer


def _spread(sim: Sim) -> list[dict[str, object]]:
    """Five jobs created a second apart; the oldest updated last, one is FAILED."""
    jobs = add_jobs(sim.state, 5)
    for job in jobs:
        job["state"] = "PROCESSING"
    sim.state.set_state(str(jobs[0]["job_id"]), "FAILED", now=NOW + timedelta(seconds=30))
    return jobs


async def test_full_behaviour_honours_update_filters_and_sort(sim: Sim) -> None:
    jobs = _spread(sim)
    since = [("update_since", _BOUND), ("sort_key", "update_time"), ("sort_dir", "asc")]
    status, body, _ = await sim.get(since)
    assert status == 200
    # Created at +3 s and +4 s, and the oldest job, updated at +30 s: in update order.
    assert _ids(body) == [jobs[3]["job_id"], jobs[4]["job_id"], jobs[0]["job_id"]]
    status, body, _ = await sim.get([("sort_key", "create_time"), ("sort_dir", "asc")])
    assert _ids(body) == [j["job_id"] for j in jobs]


async def test_documented_behaviour_ignores_update_filters_and_sort_but_not_state(
    sim: Sim,
) -> None:
    jobs = _spread(sim)
    answer = await _set_behaviour(sim, "documented")
    assert answer["api_behaviour"] == "documented"
    since = [("update_since", _BOUND), ("sort_key", "update_time"), ("sort_dir", "asc")]
    status, body, _ = await sim.get(since)
    assert status == 200
    assert body["count"] == 5
    assert _ids(body) == [j["job_id"] for j in reversed(jobs)]  # newest created first
    status, body, _ = await sim.get([("state", "FAILED")])
    assert (status, _ids(body)) == (200, [jobs[0]["job_id"]])
    status, body, _ = await sim.get([("create_since", _BOUND)])
    assert _ids(body) == [jobs[4]["job_id"], jobs[3]["job_id"]]
    status, body, _ = await sim.get([("job_id", str(jobs[2]["job_id"]))])
    assert _ids(body) == [jobs[2]["job_id"]]


@pytest.mark.parametrize("state", ["USER_RESULT_REVIEW", "USER_REVIEW_REJECT", "BOGUS"])
async def test_documented_behaviour_rejects_an_undocumented_state_value(
    sim: Sim, state: str
) -> None:
    _spread(sim)
    await _set_behaviour(sim, "documented")
    status, body, _ = await sim.get([("state", f"FAILED,{state}")])
    assert status == 400
    assert body["error_code"] == "MSS.00000003"
    # Every documented value is accepted.
    status, body, _ = await sim.get([("state", ",".join(sorted(model.DOCUMENTED_STATES)))])
    assert (status, body["count"]) == (200, 5)


async def test_full_behaviour_accepts_an_undocumented_state_value(sim: Sim) -> None:
    _spread(sim)
    status, body, _ = await sim.get([("state", "USER_RESULT_REVIEW")])
    assert (status, body["count"]) == (200, 0)


async def test_plain_behaviour_honours_only_paging_and_exact_filters(sim: Sim) -> None:
    jobs = _spread(sim)
    sim.state.update_fields(str(jobs[1]["job_id"]), tag="NEWS")
    await _set_behaviour(sim, "plain")
    for query in (
        [("state", "FAILED")],
        [("create_since", _BOUND)],
        [("update_since", _BOUND), ("sort_key", "update_time"), ("sort_dir", "asc")],
        [("state", "BOGUS")],  # not even validated
    ):
        status, body, _ = await sim.get(query)
        assert status == 200, query
        assert _ids(body) == [j["job_id"] for j in reversed(jobs)], query
    status, body, _ = await sim.get([("tag", "NEWS")])
    assert _ids(body) == [jobs[1]["job_id"]]
    status, body, _ = await sim.get([("offset", "1"), ("limit", "2")])
    assert _ids(body) == [jobs[3]["job_id"], jobs[2]["job_id"]]


async def test_unknown_behaviour_is_refused_by_the_control_interface(sim: Sim) -> None:
    async with sim.session.post(
        f"{sim.base_url}/_sim/config", json={"api_behaviour": "lenient"}
    ) as resp:
        assert resp.status == 400
        assert "full, documented, plain" in await resp.text()
    assert sim.state.api_behaviour is ApiBehaviour.FULL


async def test_runner_starts_a_simulator_in_the_behaviour_asked_for() -> None:
    runner, base_url = await start_simulator(
        "127.0.0.1",
        0,
        jobs=3,
        step_every=None,
        seed=1,
        project_id="p1",
        ak="AK",
        sk="SK",
        api_behaviour=ApiBehaviour.PLAIN,
    )
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base_url}/_sim/stats") as resp,
        ):
            assert (await resp.json())["api_behaviour"] == "plain"
    finally:
        await runner.cleanup()


async def test_command_line_flag_picks_the_behaviour() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher.simulator",
        "--port",
        "0",
        "--jobs",
        "2",
        "--step-every",
        "0",
        "--api-behaviour",
        "documented",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "API behaviour documented" in line
    finally:
        proc.terminate()
        await proc.wait()
