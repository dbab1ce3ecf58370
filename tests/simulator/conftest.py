"""A simulator on a loopback port and a way to send it signed requests.

Shared by the simulator tests only; the client tests have their own fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from yarl import URL

from watcher.metastudio.signer import sign_request
from watcher.simulator.app import create_app
from watcher.simulator.runner import serve_app
from watcher.simulator.state import SimulatorState

PROJECT = "proj0001"
AK = "SIMAK"
SK = "sim-secret"
NOW = datetime(2024, 12, 12, 8, 0, tzinfo=UTC)


@dataclass
class Sim:
    state: SimulatorState
    base_url: str
    session: aiohttp.ClientSession

    async def get(
        self,
        query: list[tuple[str, str]],
        *,
        path: str | None = None,
        sk: str = SK,
        now: datetime | None = None,
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        path = path or f"/v1/{PROJECT}/voice-training-manage/user/jobs"
        signed = sign_request(
            method="GET",
            endpoint=self.base_url,
            path=path,
            query=query,
            ak=AK,
            sk=sk,
            now=now or datetime.now(UTC),
            project_id=PROJECT,
        )
        async with self.session.get(URL(signed.url, encoded=True), headers=signed.headers) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    state = SimulatorState(seed=7)
    app = create_app(state, project_id=PROJECT, ak=AK, sk=SK)
    runner, base_url = await serve_app(app)
    async with aiohttp.ClientSession() as session:
        yield Sim(state, base_url, session)
    await runner.cleanup()


def add_jobs(state: SimulatorState, n: int, **fields: Any) -> list[dict[str, Any]]:
    """`n` jobs created one second apart, so their order is known."""
    return [state.add_job(now=NOW + timedelta(seconds=i), **fields) for i in range(n)]
