"""The standalone simulator: populated, listening, stepping on its own timer.

Drives it with the real client, as `make demo` does.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp

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
