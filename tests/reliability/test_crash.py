"""Crash safety: `once` processes SIGKILLed at seeded random points lose no alert.

Each cycle is one real `metastudio-watcher once` process (forked from a pre-imported launcher,
see `_forkserver`); some are killed after a random delay, on the N-th request to the
simulator (mid-scan) or right after the webhook recorded the N-th post but before it answers
(mid-delivery: the alert arrived, the sender never learnt it). The simulator moves on only
once a cycle committed its scan, so the snapshots committed are those of a fault-free run of
the same scenario: the alerts must be the same, with at most one duplicate per kill.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.receivers import WebhookReceiver, json_url
from tests.reliability._support import (
    AK,
    ENV,
    PROJECT,
    SK,
    SOAK,
    BackgroundServers,
    Launcher,
    alert_counts,
    config_text,
    memory_dir,
    repeated_messages,
)
from watcher.config import load_config_text
from watcher.daemon import Watcher
from watcher.notify import Notifier, check_url
from watcher.simulator.app import create_app
from watcher.simulator.runner import serve_app
from watcher.simulator.state import SimulatorState
from watcher.store import Store

SEED = 20240611
INITIAL_JOBS = 400 if SOAK else 200
STEPS = 150 if SOAK else 40
MOVE_CHANCE = 0.15
MIN_CYCLES = 500 if SOAK else 50
# Share of cycles that get a kill planned (a planned kill may not fire: the cycle can end first).
KILL_MODES = {"none": 40, "delay": 25, "scan": 15, "delivery": 20}


@dataclass
class Scenario:
    """The simulator's life, seeded: `initial_jobs` at varied stages, then `step()`s that add
    a few jobs and move some of the unsettled ones a state on (few enough alerts per cycle
    that a grouped message lists each of them)."""

    seed: int
    initial_jobs: int
    state: SimulatorState = field(init=False)
    done: int = 0

    def __post_init__(self) -> None:
        self.state = SimulatorState(seed=self.seed)
        self._rng = random.Random(self.seed + 1)
        self.state.populate(self.initial_jobs, datetime.now(UTC))

    def step(self) -> None:
        now = datetime.now(UTC)
        for _ in range(self._rng.randint(1, 3)):
            self.state.add_job(now=now)
        for job_id in sorted(self.state.jobs):
            if self._rng.random() < MOVE_CHANCE:
                job = self.state.jobs[job_id]
                new = self.state.next_state(job["state"], int(job["reject_times"]))
                if new is not None:
                    self.state.set_state(job_id, new, now=now)
        self.done += 1


async def reference_run(tmp_path: Path) -> tuple[Counter[tuple[str, str, str]], int]:
    """The same scenario, fault-free and in-process: the alerts that must arrive."""
    scenario = Scenario(SEED, INITIAL_JOBS)
    runner, endpoint = await serve_app(create_app(scenario.state, project_id=PROJECT, ak=AK, sk=SK))
    try:
        async with WebhookReceiver() as hook, aiohttp.ClientSession() as session:
            text = config_text(
                endpoint=endpoint, hook=json_url(hook.base_url), storage=tmp_path / "ref.db"
            )
            config = load_config_text(text, str(tmp_path / "ref.yaml"), ENV, check_url)
            store = Store.open(config.storage)
            notifier = Notifier(config.channels, send_timeout=5.0)
            try:
                watcher = Watcher(config, store, notifier, session)
                for index in range(STEPS + 1):
                    if index:
                        scenario.step()
                    (outcome,) = await watcher.once()
                    assert outcome.ok, outcome.error
                counts = store.outbox_counts()
                assert counts["pending"] == counts["dead"] == 0
            finally:
                notifier.close()
                store.close()
            return alert_counts(hook.received), len(scenario.state.jobs)
    finally:
        await runner.cleanup()


class KillSwitch:
    """Kills the running cycle at a planned simulator request or webhook post."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.scan_at: int | None = None
        self.post_at: int | None = None
        self._scans = self._posts = 0

    def arm(self, pid: int, *, scan_at: int | None = None, post_at: int | None = None) -> None:
        self._scans = self._posts = 0
        self.scan_at, self.post_at = scan_at, post_at
        self.pid = pid

    def disarm(self) -> None:
        self.pid = self.scan_at = self.post_at = None

    def _kill(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.pid = None

    def on_scan(self) -> None:
        self._scans += 1
        if self._scans == self.scan_at:
            self._kill()

    def on_post(self) -> None:
        self._posts += 1
        if self._posts == self.post_at:
            self._kill()

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def kill_on_request(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if request.path.startswith("/v1/"):
                self.on_scan()  # before answering: the process dies waiting for this page
            return await handler(request)

        return kill_on_request


class KillingReceiver(WebhookReceiver):
    """Records a post, then lets the kill switch fire before the answer goes out."""

    def __init__(self, switch: KillSwitch) -> None:
        super().__init__()
        self.switch = switch

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await super()._handle(request)
        if response.status == 200:
            self.switch.on_post()
        return response


def committed_scan(db: Path) -> str | None:
    """When the last scan was committed (None before the first): tells a killed cycle that
    committed its scan from one killed before it could."""
    if not db.exists():
        return None
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT last_cycle_at FROM sources WHERE name = 'prod'").fetchone()
    except sqlite3.Error:
        return None  # killed before the schema was made
    finally:
        conn.close()
    return None if row is None else str(row[0])


def pending_alerts(db: Path) -> Counter[str]:
    conn = sqlite3.connect(db)
    try:
        return Counter(
            dict(conn.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall())
        )
    finally:
        conn.close()


async def test_sigkill_at_random_points_loses_no_alert_and_doubles_at_most_one_per_kill(
    tmp_path: Path,
) -> None:
    with memory_dir(tmp_path) as where:
        await crash_run(tmp_path, where)


async def crash_run(tmp_path: Path, where: Path) -> None:
    expected, jobs_total = await reference_run(where)
    assert jobs_total >= 200
    assert sum(expected.values()) >= 80, "the scenario should produce plenty of alerts"

    rng = random.Random(SEED)
    scenario = Scenario(SEED, INITIAL_JOBS)
    switch = KillSwitch()
    db = where / "crash.db"
    with BackgroundServers(
        scenario.state, KillingReceiver(switch), (switch.middleware(),)
    ) as servers:
        cfg = tmp_path / "crash.yaml"
        cfg.write_text(config_text(endpoint=servers.endpoint, hook=servers.hook_url, storage=db))
        launcher = Launcher()
        out, err = tmp_path / "cycle.out", tmp_path / "cycle.err"
        argv = ["--log-level", "warning", "--log-format", "json", "once", "-c", str(cfg)]
        cycles = kills = 0
        killed_by: Counter[str] = Counter()
        durations: list[float] = []
        try:
            while scenario.done < STEPS or cycles < MIN_CYCLES:
                before = committed_scan(db)
                mode = rng.choices(list(KILL_MODES), weights=list(KILL_MODES.values()))[0]
                pages = len(scenario.state.jobs) // 100 + 1
                started = time.monotonic()
                pid = launcher.start(argv, out, err)
                if mode == "scan":
                    switch.arm(pid, scan_at=rng.randint(1, pages))
                elif mode == "delivery":
                    switch.arm(pid, post_at=rng.randint(1, 2))
                code = None
                if mode == "delay":
                    typical = statistics.median(durations) if durations else 0.3
                    code = launcher.wait(rng.uniform(0, 1.2 * typical))
                    if code is None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                if code is None:
                    code = launcher.wait(30)
                switch.disarm()
                assert code is not None, "a cycle hung"
                cycles += 1
                if code == -signal.SIGKILL:
                    kills += 1
                    killed_by[mode] += 1
                else:
                    assert code == 0, err.read_text()
                    if mode == "none":
                        durations.append(time.monotonic() - started)
                if committed_scan(db) != before and scenario.done < STEPS:
                    servers.call(scenario.step)
            # Clean cycles until the outbox is drained.
            for _ in range(10):
                if pending_alerts(db)["pending"] == 0:
                    break
                pid = launcher.start(argv, out, err)
                assert launcher.wait(30) == 0, err.read_text()
        finally:
            launcher.close()
        received = list(servers.receiver.received)

    got = alert_counts(received)
    lost = expected - got
    duplicates = got - expected
    repeats = repeated_messages(received, expected)
    counts = pending_alerts(db)
    print(
        f"\ncrash: cycles={cycles} kills={kills} {dict(killed_by)} jobs={len(scenario.state.jobs)}"
        f" expected_alerts={sum(expected.values())} messages={len(received)}"
        f" duplicate_messages={repeats} duplicate_alerts={sum(duplicates.values())}"
        f" lost={sum(lost.values())}"
    )
    assert cycles >= MIN_CYCLES
    assert kills >= MIN_CYCLES // 5
    assert not lost, f"alerts lost after {kills} kills: {sorted(lost)[:5]}"
    # A kill can interrupt one message (one alert, or one group of them) between its send and
    # its mark: that message comes again, once. Nothing else may repeat.
    assert repeats <= kills
    assert not duplicates or repeats > 0
    assert counts["pending"] == 0
    assert counts["dead"] == 0
