"""Polling cost, full scans against incremental cycles, against the simulator on loopback.

Run by hand (`make bench-cycles`); prints a table. bench_side_by_side.py uses its simulator
and daemon roles. Not a test: numbers depend on the machine.

Three kinds of process, so that each measurement is clean: the simulator (its CPU is not
the daemon's), one daemon per mode and size (its `ru_maxrss` is its own peak), and this
orchestrator (the pure diff micro-benchmark). Time is virtual: each cycle moves the
simulator's clock and the daemon's clock 60 s on together, so a cycle is "one poll_interval".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from watcher import model  # noqa: E402
from watcher.simulator.app import create_app  # noqa: E402
from watcher.simulator.runner import serve_app  # noqa: E402
from watcher.simulator.state import SimulatorState, to_ms  # noqa: E402

AK, SK, PROJECT = "BENCHAKBENCHAKBENCH1", "bench-secret-key-0123456789abcdef", "proj-bench"
ACTIVE = ("CREATING", "SYSTEM_AUDITING", "AUDITING", "WAITING", "PROCESSING", "RESULT_REVIEW")
CYCLE = 60.0  # virtual seconds between polls
BATCH_SIZE = 200  # jobs per batch in the benchmark's tenant


# --- the simulator process ------------------------------------------------------------------


def _offset_clock(offset: list[float]) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=offset[0])


SPREADS = ("recent", "uniform")


def populate(
    state: SimulatorState, n: int, active_fraction: float, now: datetime, spread: str = "recent"
) -> None:
    """`n` jobs created over two years, `active_fraction` of them in flight.

    `recent`, what a tenant looks like: training takes hours to days, so the jobs in flight
    are among the newest. Of the newest jobs nineteen in twenty are in flight (the
    twentieth, a quick one, has settled already); besides, one in fifty of the jobs in
    flight is old, waiting for its user to upload data again (AUDIT_FAILED).
    `uniform`: the jobs in flight spread evenly over the two years, which no tenant looks
    like; the worst case for active-set polling, kept to show that it stays correct.
    """
    rng = random.Random(7)
    active = max(1, round(n * active_fraction))
    in_flight: dict[int, str] = {}
    if spread == "uniform":
        every = max(1, round(1 / active_fraction))
        in_flight = {i: rng.choice(ACTIVE) for i in range(0, n, every)}
    else:
        stragglers = active // 50
        age = 0  # 0 = the newest job
        while len(in_flight) < active - stragglers and age < n:
            if age % 20 != 19:
                in_flight[n - 1 - age] = rng.choice(ACTIVE)
            age += 1
        old = n - age
        for k in range(stragglers):
            in_flight[k * old // stragglers] = "AUDIT_FAILED"
    for i in range(n):
        created = now - timedelta(days=730) + timedelta(seconds=i * 730 * 86400 / n)
        # A batch is one campaign: 200 voices submitted together (the simulator's default,
        # four names for every job, makes 250k-job batches at 1M, which no team runs).
        batch = f"campaign-{i // BATCH_SIZE:05d}"
        if (job_state := in_flight.get(i)) is not None:
            state.add_job(
                now=created, state=job_state, lastupdate_time=to_ms(created), batch_name=batch
            )
        else:
            state.add_job(
                now=created, state=rng.choice(("SUCCEED", "SUCCEED", "FAILED")), batch_name=batch
            )


async def serve_simulator(jobs: int, active_fraction: float, spread: str = "recent") -> None:
    offset = [0.0]
    state = SimulatorState(seed=1, cache_listings=True)
    populate(state, jobs, active_fraction, _offset_clock(offset), spread)
    app = create_app(state, project_id=PROJECT, ak=AK, sk=SK, clock=lambda: _offset_clock(offset))
    hook = {"received": 0, "first": 0.0, "last": 0.0}
    rng = random.Random(11)

    async def churn(request: web.Request) -> web.Response:
        """Advance the clock, then change `changes` jobs (settling ones are replaced by new
        active jobs, so the active share stays put) or fail `fail` active jobs at once.
        `order`: `uniform` picks the jobs to change at random from all in flight (the
        default); `oldest` moves the oldest in flight on first, as a training queue does."""
        body = await request.json()
        offset[0] += float(body.get("advance", 0))
        now = _offset_clock(offset) - timedelta(seconds=1)
        active = [j for j, job in state.jobs.items() if job["state"] not in model.SETTLED_STATES]
        changed = 0
        if fail := int(body.get("fail", 0)):
            for job_id in active[:fail]:
                state.set_state(job_id, "FAILED", now=now)
                changed += 1
        wanted = min(int(body.get("changes", 0)), len(active))
        if body.get("order", "uniform") == "oldest":
            picked = sorted(active, key=lambda j: state.jobs[j]["create_time"])[:wanted]
        else:
            picked = rng.sample(active, k=wanted)
        for job_id in picked:
            job = state.jobs[job_id]
            new = state.next_state(job["state"], int(job["reject_times"]))
            if new is None:
                continue
            state.set_state(job_id, new, now=now)
            changed += 1
            if new in model.SETTLED_STATES:
                state.add_job(now=now, state="CREATING")
                changed += 1
        # In flight now: what a documented-behaviour cycle's bound (⌈active/100⌉ + 3) is of.
        settled = model.SETTLED_STATES
        in_flight = sum(1 for job in state.jobs.values() if job["state"] not in settled)
        return web.json_response({"changed": changed, "offset": offset[0], "active": in_flight})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "offset": offset[0],
                "requests": state.requests,
                "by_kind": dict(state.requests_by_kind),
                "hook": hook,
                "jobs": len(state.jobs),
            }
        )

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        hook["received"] += 1
        hook["last"] = time.time()
        if hook["received"] == 1:
            hook["first"] = hook["last"]
        return web.json_response({})

    app.router.add_post("/_bench/churn", churn)
    app.router.add_get("/_bench/stats", stats)
    app.router.add_post("/_bench/hook", receive)
    runner, url = await serve_app(app)
    print(url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


# --- the daemon process -----------------------------------------------------------------------

CONFIG = """
sources:
  - name: bench
    endpoint: {url}
    project_id: {project}
    ak: ${{BENCH_AK}}
    sk: ${{BENCH_SK}}
    poll_interval: 60s
    request_timeout: 30s
    full_scan_every: {full_scan_every}
    max_requests_per_second: 1000
    page_concurrency: 4
channels:
  hook: ["json://{hook}/_bench/hook?method=POST"]
rules:
  - name: failures
    on: [FAILED]
    notify: [hook]
    group_by: [job_id]  # ungrouped: one message per alert
storage: {storage}
delivery:
  send_timeout: 10s
"""


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(url, json=body) as resp:
        return await resp.json()


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        return await resp.json()


class LoopStalls:
    """The event loop's longest lateness on a 10 ms tick since the last `take`: about how
    long /healthz, /readyz or /metrics would have waited for an answer meanwhile."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.last = time.monotonic()

    async def run(self) -> None:
        while True:
            self.last = time.monotonic()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.monotonic() - self.last - 0.01)

    def take(self) -> float:
        """Including the stretch the tick has not seen the end of: a cycle whose last step
        stalls the loop returns before the tick runs again."""
        worst = max(self.worst, time.monotonic() - self.last - 0.01)
        self.worst = 0.0
        return worst


async def _status_every(watcher: Any, seconds: float) -> None:
    while True:
        await watcher.status_line()
        await asyncio.sleep(seconds)


async def run_daemon(
    url: str, mode: str, cycles: int, changes: int, alerts: int, idle: int = 0
) -> None:
    """A baseline, then `idle` cycles with nothing changed, then `cycles` cycles after
    `changes` changes each; each cycle is one whole `Watcher.poll` (fetch, decide, commit,
    report), its CPU (`process_time`, every thread of this process) and wall time measured."""
    from watcher.app import tune_memory
    from watcher.config import load_config_text
    from watcher.daemon import Watcher
    from watcher.model import OutboxStatus
    from watcher.notify import Notifier, check_url
    from watcher.store import Store

    tune_memory()  # as `run` does
    out: dict[str, Any] = {"mode": mode}
    with tempfile.TemporaryDirectory() as tmp:
        hook = url.removeprefix("http://")
        text = CONFIG.format(
            url=url,
            project=PROJECT,
            hook=hook,
            storage=Path(tmp) / "state.db",
            full_scan_every="0" if mode == "full" else "1h",
        )
        config = load_config_text(
            text, str(Path(tmp) / "c.yaml"), {"BENCH_AK": AK, "BENCH_SK": SK}, check_url
        )
        async with aiohttp.ClientSession() as control, aiohttp.ClientSession() as session:
            offset = [float((await _get(control, f"{url}/_bench/stats"))["offset"])]
            store = Store.open(config.storage)
            notifier = Notifier(config.channels, send_timeout=10.0)
            watcher = Watcher(config, store, notifier, session, clock=lambda: _offset_clock(offset))
            stalls = LoopStalls()
            ticker = asyncio.create_task(stalls.run())
            # The store used from the loop during the baseline, as the daemon's watchdog and
            # delivery do: such a call made during the bulk commit must not stall the loop.
            watchdog = asyncio.create_task(_status_every(watcher, 0.5))
            cpu, wall = time.process_time(), time.perf_counter()
            first = await watcher.poll("bench")
            watchdog.cancel()
            assert first.ok, first.error
            out["baseline"] = {
                "stall_ms": stalls.take() * 1000,
                "requests": first.requests,
                "cpu": time.process_time() - cpu,
                "wall": time.perf_counter() - wall,
                "jobs": first.jobs,
                "rss_mb": _rss_mb(),
            }
            rows = []
            for i in range(idle + cycles):
                churn = {"advance": CYCLE, "changes": 0 if i < idle else changes}
                churned = await _post(control, f"{url}/_bench/churn", churn)
                offset[0] = churned["offset"]
                cpu, wall = time.process_time(), time.perf_counter()
                outcome = await watcher.poll("bench")
                assert outcome.ok, outcome.error
                rows.append(
                    {
                        "stall_ms": stalls.take() * 1000,
                        "requests": outcome.requests,
                        "cpu": time.process_time() - cpu,
                        "wall": time.perf_counter() - wall,
                        "changed": churned["changed"],
                        "events": outcome.events,
                        "mode": outcome.mode,
                        "phase": "idle" if i < idle else "changed",
                    }
                )
            out["cycles"] = [row for row in rows if row["phase"] == "changed"]
            out["idle_cycles"] = [row for row in rows if row["phase"] == "idle"]
            if alerts:
                await watcher.deliver()  # whatever the cycles queued goes first
                before = (await _get(control, f"{url}/_bench/stats"))["hook"]["received"]
                churned = await _post(
                    control, f"{url}/_bench/churn", {"advance": CYCLE, "fail": alerts}
                )
                offset[0] = churned["offset"]
                started = time.perf_counter()
                outcome = await watcher.poll("bench")
                assert outcome.ok, outcome.error
                queued = outcome.alerts
                while time.perf_counter() - started < 120:
                    await watcher.deliver()
                    if not store.outbox_counts().get(OutboxStatus.PENDING, 0):
                        break
                got = (await _get(control, f"{url}/_bench/stats"))["hook"]["received"]
                out["alerts"] = {
                    "queued": queued,
                    "delivered": got - before,
                    "seconds": time.perf_counter() - started,
                }
            ticker.cancel()
            notifier.close()
            store.close()
    out["rss_mb"] = _rss_mb()
    print(json.dumps(out), flush=True)


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the pure diff, in this process -----------------------------------------------------------


def bench_diff(n: int) -> tuple[float, float]:
    """Seconds to diff, and to run the whole engine step over, `n` unchanged jobs (best of 5)."""
    from watcher.engine.diff import diff
    from watcher.engine.tracker import Tracking, advance

    now = datetime.now(UTC)
    jobs = {
        f"job{i:08d}": model.Job(
            job_id=f"job{i:08d}",
            state="SUCCEED" if i % 100 else "PROCESSING",
            reject_times=1,
            create_time=now - timedelta(seconds=i),
            lastupdate_time=now - timedelta(seconds=i),
            voice_name="Anna",
            batch_name=f"batch{i % 50}",
        )
        for i in range(n)
    }
    snapshot = model.Snapshot("bench", now, dict(jobs))
    best_diff = best_step = math.inf
    for _ in range(5):
        started = time.perf_counter()
        result = diff(jobs, snapshot)
        best_diff = min(best_diff, time.perf_counter() - started)
        assert not result.events
        started = time.perf_counter()
        advance(jobs, Tracking(), snapshot, ())
        best_step = min(best_step, time.perf_counter() - started)
    return best_diff, best_step


# --- the orchestrator ------------------------------------------------------------------------


@dataclass
class Simulator:
    process: subprocess.Popen[str]
    url: str
    started: float = 0.0  # seconds from launch to listening (populating included)

    def peak_rss_mb(self) -> float:
        """The simulator process's peak RSS so far (VmHWM), 0 where /proc has none."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0.0
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start_simulator(jobs: int, active: float, spread: str = "recent") -> Simulator:
    launched = time.perf_counter()
    args = [sys.executable, __file__, "--role", "sim", "--jobs", str(jobs), "--active", str(active)]
    process = subprocess.Popen(  # noqa: S603 (our own script)
        [*args, "--spread", spread],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http"):
        process.kill()
        raise SystemExit(f"the simulator did not start (said {url!r})")
    return Simulator(process, url, time.perf_counter() - launched)


def run_mode(
    url: str, mode: str, cycles: int, changes: int, alerts: int, idle: int = 0
) -> dict[str, Any]:
    """One daemon process (see run_daemon); its JSON result."""
    args = [sys.executable, __file__, "--role", "daemon", "--url", url, "--mode", mode]
    args += ["--cycles", str(cycles), "--changes", str(changes), "--alerts", str(alerts)]
    args += ["--idle", str(idle)]
    done = subprocess.run(  # noqa: S603 (our own script)
        args,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "WATCHER_LOG_LEVEL": "warning"},
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"daemon ({mode}) failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()}"


def mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(float(r[key]) for r in rows) / len(rows)


def orchestrate(sizes: list[int], cycles: int, active: float, change: float) -> None:
    print(f"machine: {machine()}")
    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"{cycles} cycles per mode; {active:.1%} active, {change:.1%} changed per cycle\n")
    header = (
        f"{'jobs':>7} {'mode':<14} {'req/cycle':>9} {'wall/cycle':>10} {'cpu/cycle':>9} "
        f"{'peak RSS':>9} {'baseline scan: req':>18} {'cpu':>6} {'wall':>6}"
    )
    print(header)
    print("-" * len(header))
    alerts_line = ""
    for n in sizes:
        sim = start_simulator(n, active)
        try:
            changes = max(1, round(n * change))
            for mode in ("full", "incremental"):
                alerts = 1000 if (mode == "incremental" and n == sizes[-1]) else 0
                result = run_mode(sim.url, mode, cycles, changes, alerts)
                rows = result["cycles"]
                base = result["baseline"]
                modes = sorted({r["mode"] for r in rows})
                print(
                    f"{n:>7} {mode + ('' if mode == 'full' else '/' + ','.join(modes)):<14.14} "
                    f"{mean(rows, 'requests'):>9.1f} {mean(rows, 'wall') * 1000:>8.0f}ms "
                    f"{mean(rows, 'cpu') * 1000:>7.0f}ms {result['rss_mb']:>7.0f}MB "
                    f"{base['requests']:>18} {base['cpu']:>5.2f}s {base['wall']:>5.2f}s",
                    flush=True,
                )
                if "alerts" in result:
                    a = result["alerts"]
                    alerts_line = (
                        f"1,000 alerts (webhook, ungrouped): {a['delivered']}/{a['queued']} "
                        f"delivered end to end in {a['seconds']:.2f}s"
                    )
                if mode == "incremental":
                    changed = mean(rows, "changed")
                    print(
                        f"{'':>7} {'':<14} changed/cycle {changed:.0f}: target "
                        f"<= ceil(changed/100)+1 = {math.ceil(changed / 100) + 1} requests"
                    )
        finally:
            sim.stop()
    diff_s, step_s = bench_diff(100_000)
    print(f"\ndiff of 100,000 unchanged jobs: {diff_s * 1000:.1f} ms")
    print(f"whole engine step (advance) over them: {step_s * 1000:.1f} ms")
    if alerts_line:
        print(alerts_line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=("bench", "sim", "daemon"), default="bench")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--active", type=float, default=0.01)
    parser.add_argument("--change", type=float, default=0.001)
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--spread", choices=SPREADS, default="recent")
    parser.add_argument("--url", default="")
    parser.add_argument("--mode", default="full")
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--alerts", type=int, default=0)
    parser.add_argument("--idle", type=int, default=0, help="idle cycles before the others")
    args = parser.parse_args()
    if args.role == "sim":
        asyncio.run(serve_simulator(args.jobs, args.active, args.spread))
    elif args.role == "daemon":
        asyncio.run(
            run_daemon(args.url, args.mode, args.cycles, args.changes, args.alerts, args.idle)
        )
    else:
        sizes = [int(s) for s in args.sizes.split(",")]
        orchestrate(sizes, args.cycles, args.active, args.change)


if __name__ == "__main__":
    main()
