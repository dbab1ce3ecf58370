"""The floor: a minimal aiohttp loop that signs, fetches and json.loads every page of the
listing, four at a time, and keeps each job's state. No store, no diff, no alerts.

Benchmark only: what any poller must at least spend to read the same pages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from watcher.metastudio.signer import sign_request


async def fetch(
    session: aiohttp.ClientSession, endpoint: str, project: str, offset: int
) -> dict[str, object]:
    signed = sign_request(
        method="GET",
        endpoint=endpoint,
        path=f"/v1/{project}/voice-training-manage/user/jobs",
        query=[("limit", "100"), ("offset", str(offset))],
        ak=os.environ["CLOUD_SDK_AK"],
        sk=os.environ["CLOUD_SDK_SK"],
        now=datetime.now(UTC),
        project_id=project,
    )
    async with session.get(URL(signed.url, encoded=True), headers=signed.headers) as resp:
        page: dict[str, object] = json.loads(await resp.read())
        return page


async def run(endpoint: str, project: str) -> None:
    states: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        first = await fetch(session, endpoint, project, 0)
        count = int(first["count"])  # type: ignore[call-overload]
        pages = [first]
        offsets = iter(range(100, count, 100))

        async def worker() -> None:
            for offset in offsets:
                pages.append(await fetch(session, endpoint, project, offset))

        await asyncio.gather(*(worker() for _ in range(4)))
    for page in pages:
        for job in page["jobs"]:  # type: ignore[attr-defined]
            states[job["job_id"]] = job["state"]
    print(json.dumps({"jobs": len(states)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--project-id", required=True)
    args = parser.parse_args()
    asyncio.run(run(args.endpoint, args.project_id))


if __name__ == "__main__":
    main()
