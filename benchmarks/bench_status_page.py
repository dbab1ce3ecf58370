"""Status page and API latency at size: 100k jobs, 1M events, 300k outbox rows.

Run by hand (`make bench-web`); prints a table of each route's median and worst time over
several requests, end to end over loopback HTTP (query, shaping, rendering). Not a test: the
numbers depend on the machine. The state file is built with the store's own schema and
filled with plain SQL (a million events through the engine would take an hour), then
served exactly as the daemon serves it: start_http + watcher.web.routes.install.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from watcher.config import load_config_text  # noqa: E402
from watcher.http import Readiness, bound_port, start_http  # noqa: E402
from watcher.metrics import Metrics  # noqa: E402
from watcher.store import Store  # noqa: E402
from watcher.web.routes import StatusPage, install  # noqa: E402

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
STATES = (
    ["SUCCEED"] * 85
    + ["FAILED"] * 5
    + ["AUDIT_FAILED"] * 2
    + ["AUDITING"] * 3
    + ["PROCESSING", "WAITING", "SPLITTING", "CREATING", "RESULT_REVIEW"]
)
KINDS = ["transition"] * 90 + ["new"] * 4 + ["stuck"] * 3 + ["rejected_again"] * 2 + ["vanished"]


def ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def build(path: str, jobs: int, events: int, alerts: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    Store.open(path).close()  # the real schema, with every migration
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    sources = ("prod", "lab")
    job_rows = []
    for i in range(jobs):
        source = sources[0] if i % 10 else sources[1]
        state = rng.choice(STATES)
        created = NOW - timedelta(seconds=rng.randrange(30 * 86400))
        updated = created + timedelta(seconds=rng.randrange(86400))
        batch = f"batch-{i // 100:04d}"
        failed = ("MSS.0012", "audio too noisy") if "FAILED" in state else (None, None)
        job_rows.append(
            (
                source,
                f"job{i:07d}",
                state,
                1,
                ts(created),
                ts(updated),
                f"voice {i}",
                "BASIC",
                batch,
                *failed,
                None,
                "{}",
            )
        )
    conn.executemany("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", job_rows)
    for name in sources:
        conn.execute(
            "INSERT INTO sources (name, baseline_at, last_cycle_at, last_poll_at, last_ok_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (name, ts(NOW - timedelta(days=30)), ts(NOW), ts(NOW), ts(NOW)),
        )

    def event_rows():  # type: ignore[no-untyped-def]
        start = NOW - timedelta(days=30)
        for i in range(events):
            j = job_rows[rng.randrange(jobs)]
            kind = rng.choice(KINDS)
            yield (
                f"{j[0]}|{j[1]}|{kind}|{i}",
                kind,
                j[0],
                j[1],
                "AUDITING",
                rng.choice(STATES),
                "a reason in words",
                None,
                ts(start + timedelta(seconds=i * 2.5)),
                None,
                0,
                "{}",
            )

    conn.executemany(
        "INSERT INTO events (event_key, kind, source, job_id, previous_state, state, reason, "
        "note, detected_at, subject, sequence, details) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        event_rows(),
    )

    def alert_rows():  # type: ignore[no-untyped-def]
        for i in range(alerts):
            event_id = rng.randrange(1, events + 1)
            status = "sent" if i < alerts - 80 else ("pending" if i % 2 else "dead")
            when = ts(NOW - timedelta(seconds=(alerts - i) * 5))
            yield (
                f"a{i}",
                f"key{event_id}",
                "prod",
                f"job{rng.randrange(jobs):07d}",
                "all",
                "ops",
                "title",
                "body",
                "failure",
                "text",
                when,
                status,
                1,
                when,
                None,
                when if status == "sent" else None,
                when,
                when,
            )

    conn.executemany(
        "INSERT INTO outbox (alert_id, event_key, source, job_id, rule, channel, title, body, "
        "notify_type, body_format, created_at, status, attempts, next_attempt_at, last_error, "
        "sent_at, updated_at, queued_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        alert_rows(),
    )
    # Tie a few alerts to the benchmarked job's events, as the daemon would.
    conn.execute(
        "UPDATE outbox SET event_key = (SELECT event_key FROM events WHERE job_id = 'job0000042' "
        "LIMIT 1) WHERE id <= 3"
    )
    conn.commit()  # no ANALYZE: the daemon never runs one, so neither does the benchmark
    conn.close()


ROUTES = [
    "/",
    "/batch?source=prod&name=batch-0420",
    "/job?source=prod&id=job0000042",
    "/events",
    "/events?kind=vanished",
    "/events?state=AUDIT_FAILED&source=lab",
    "/events?source=lab&kind=stuck",
    "/events?batch=batch-0420",
    "/events?since=2026-11-15T00:00&until=2026-11-16T00:00",
    "/events?before=500000",
    "/events?until=2026-11-03T00:00",  # worst case: walks back through the newer events
    "/events?since=2026-12-01T11:00",  # nothing that recent: a walk that finds nothing
    "/api/v1/overview",
    "/api/v1/sources",
    "/api/v1/jobs",
    "/api/v1/jobs?state=AUDIT_FAILED",
    "/api/v1/jobs?source=prod&after=prod:job0050000",
    "/api/v1/job?source=prod&id=job0000042",
    "/api/v1/batches",
    "/api/v1/batches?open=1&offset=200",
    "/api/v1/batch?source=prod&name=batch-0420",
    "/api/v1/events?limit=500",
    "/api/v1/events?kind=rejected_again&state=SUCCEED",
    "/api/v1/outbox",
]


async def measure(path: str, repeat: int) -> list[tuple[str, float, float, int]]:
    text = (
        "sources:\n"
        + "".join(
            f"  - name: {n}\n    endpoint: http://127.0.0.1:9\n    project_id: p\n"
            "    ak: AKBENCH000000001\n    sk: SKBENCH000000001\n"
            for n in ("prod", "lab")
        )
        + f"storage: {path}\nhttp:\n  listen: 127.0.0.1:0\n"
    )
    config = load_config_text(text, os.path.join(os.path.dirname(path), "c.yaml"), env={})
    page = StatusPage(lambda: config, clock=lambda: NOW)
    runner = await start_http(
        "127.0.0.1:0", Metrics(), lambda: Readiness(True, ()), lambda app: install(app, page)
    )
    base = f"http://127.0.0.1:{bound_port(runner)}"
    out = []
    try:
        async with aiohttp.ClientSession() as session:
            for route in ROUTES:
                times, size = [], 0
                for _ in range(repeat + 1):
                    started = time.perf_counter()
                    async with session.get(base + route) as response:
                        body = await response.read()
                        assert response.status == 200, (route, response.status, body[:300])
                    times.append(time.perf_counter() - started)
                    size = len(body)
                times = times[1:]  # the first request warms SQLite's page cache
                out.append((route, statistics.median(times), max(times), size))
    finally:
        await runner.cleanup()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--alerts", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "state.db")
        started = time.perf_counter()
        build(path, args.jobs, args.events, args.alerts)
        built = time.perf_counter() - started
        results = asyncio.run(measure(path, args.repeat))
        size_mb = os.path.getsize(path) / 1e6
    if args.json:
        print(
            json.dumps(
                [{"route": r, "median_ms": m * 1e3, "max_ms": x * 1e3} for r, m, x, _ in results]
            )
        )
        return
    print(
        f"# {args.jobs:,} jobs, {args.events:,} events, {args.alerts:,} outbox rows "
        f"({size_mb:.0f} MB file, built in {built:.0f} s); {args.repeat} requests each; "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs"
    )
    print(f"| {'route':<55} | median ms | max ms | bytes |")
    print(f"|{'-' * 57}|-----------|--------|-------|")
    for route, median, worst, size in results:
        print(f"| {route:<55} | {median * 1e3:9.1f} | {worst * 1e3:6.1f} | {size:5} |")
    worst_all = max(x for _, _, x, _ in results)
    print(f"\nslowest single request: {worst_all * 1e3:.1f} ms (target: 200 ms)")


if __name__ == "__main__":
    main()
