"""The standalone simulator: populated, listening, stepping on its own timer.

Drives it with the real client, as `make demo` does.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

import aiohttp
import pytest

from watcher import model
from watcher.metastudio.client import MetaStudioClient
from watcher.simulator.runner import start_simulator


async def test_started_simulator_serves_its_jobs_and_steps_them() -> None:
    runner, base_url = await start_simulator(
        "127.0.0.1", 0, jobs=30, step_every=0.05, seed=3, project_id="p1", ak="AK", sk="SK"
    )
    source = model.SourceConfig(
        name="demo",
        endpoint=base_url,
        region=None,
        project_id="p1",
        ak=model.Credential(model.Secret("AK"), "config"),
        sk=model.Credential(model.Secret("SK"), "config"),
        request_timeout=timedelta(seconds=5),
    )
    try:
        async with aiohttp.ClientSession() as session:
            client = MetaStudioClient(session, source)
            first = await client.list_all_jobs()
            assert len(first.jobs) == 30
            async with session.get(f"{base_url}/_sim/stats") as resp:
                assert (await resp.json())["requests"] == first.requests
            await asyncio.sleep(0.2)
            second = await client.list_all_jobs()
            before = {j.job_id: j.lastupdate_time for j in first.jobs.values()}
            assert any(before[j.job_id] != j.lastupdate_time for j in second.jobs.values())
    finally:
        await runner.cleanup()


def _source(base_url: str, ak: str, sk: str) -> model.SourceConfig:
    return model.SourceConfig(
        name="demo",
        endpoint=base_url,
        region=None,
        project_id="p1",
        ak=model.Credential(model.Secret(ak), "config"),
        sk=model.Credential(model.Secret(sk), "config"),
        request_timeout=timedelta(seconds=5),
    )


async def test_cached_listings_still_follow_the_lifecycle() -> None:
    runner, base_url = await start_simulator(
        "127.0.0.1",
        0,
        jobs=250,
        step_every=None,
        seed=3,
        project_id="p1",
        ak="AK",
        sk="SK",
        cache_listings=True,
    )
    try:
        async with aiohttp.ClientSession() as session:
            client = MetaStudioClient(session, _source(base_url, "AK", "SK"))
            first = await client.list_all_jobs()
            assert len(first.jobs) == 250
            async with session.post(f"{base_url}/_sim/step") as resp:
                stepped = (await resp.json())["changes"]
            assert stepped
            second = await client.list_all_jobs()
            assert {j["job_id"]: j["to"] for j in stepped} == {
                job_id: job.state
                for job_id, job in second.jobs.items()
                if job.state != first.jobs[job_id].state
            }
    finally:
        await runner.cleanup()


async def test_command_line_flag_caches_listings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_SDK_AK", "CLIAK")
    monkeypatch.setenv("CLOUD_SDK_SK", "cli-secret")
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "watcher.simulator", "--port", "0", "--jobs", "150"),
        *("--step-every", "0", "--project-id", "p1", "--cache-listings"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "listings cached" in line
        base_url = line.split(" on ", 1)[1].split(" ", 1)[0]
        async with aiohttp.ClientSession() as session:
            client = MetaStudioClient(session, _source(base_url, "CLIAK", "cli-secret"))
            first = await client.list_all_jobs()
            assert len(first.jobs) == 150
            async with session.post(f"{base_url}/_sim/step") as resp:
                stepped = {j["job_id"]: j["to"] for j in (await resp.json())["changes"]}
            second = await client.list_all_jobs()
            assert stepped
            assert all(second.jobs[job_id].state == new for job_id, new in stepped.items())
    finally:
        proc.terminate()
        await proc.wait()


async def test_without_the_flag_listings_are_not_cached() -> None:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "watcher.simulator", "--port", "0", "--jobs", "2"),
        *("--step-every", "0"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "API behaviour full)" in line
        assert "listings cached" not in line
    finally:
        proc.terminate()
        await proc.wait()
