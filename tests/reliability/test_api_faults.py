"""API faults: a seeded storm of 5xx, 429, timeouts, resets, bad bodies and page shifts.

The watcher runs in-process against the simulator for hundreds of cycles while faults are
queued for its requests. The simulator moves on only once a cycle committed its scan, so a
fault-free run of the same scenario commits the same snapshots: the alerts must be the same,
none false, none lost. A shift (a job inserted or deleted before the page being read) changes
the simulator itself, so the reference run applies the same change at the same point.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.receivers import WebhookReceiver, json_url
from tests.reliability._support import (
    AK,
    ENV,
    PROJECT,
    SK,
    SOAK,
    alert_counts,
    config_text,
    memory_dir,
)
from watcher.config import load_config_text
from watcher.daemon import Watcher
from watcher.metastudio.client import RetryPolicy
from watcher.model import SETTLED_STATES
from watcher.notify import Notifier, check_url
from watcher.simulator.app import create_app, select_jobs
from watcher.simulator.runner import serve_app
from watcher.simulator.state import SimulatorState, to_ms
from watcher.store import Store

SEED = 4242
CYCLES = 5000 if SOAK else 500
JOBS = 40
PAGE = 25  # two pages
MOVE_CHANCE = 0.06
RETRY = RetryPolicy(
    attempts=3, initial_backoff=0.001, max_backoff=0.002, max_retry_after=0.01, page_size=PAGE
)
SHIFTS = ("insert_before_page", "delete_before_page")
# kind -> (weight, fault as queued)
FAULTS: dict[str, tuple[int, dict[str, Any]]] = {
    "500": (10, {"kind": "status", "status": 500}),
    "502": (8, {"kind": "status", "status": 502}),
    "503": (10, {"kind": "status", "status": 503, "error_code": "APIGW.0203"}),
    "429": (10, {"kind": "status", "status": 429, "error_code": "APIGW.0308", "retry_after": 1}),
    "timeout": (2, {"kind": "hang", "seconds": 0.4}),  # request_timeout is 150ms
    "reset": (8, {"kind": "reset"}),
    "html": (6, {"kind": "html"}),
    "truncated": (6, {"kind": "truncated"}),
    "malformed": (6, {"kind": "malformed"}),
    "missing_jobs": (6, {"kind": "missing_jobs"}),
    "insert_before_page": (6, {"kind": "insert_before_page"}),
    "delete_before_page": (6, {"kind": "delete_before_page"}),
}


@dataclass
class Churn:
    """Seeded job churn: jobs move on at random, settled ones disappear, new ones arrive."""

    seed: int
    now: datetime
    state: SimulatorState = field(init=False)
    settled_steps: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.state = SimulatorState(seed=self.seed)
        self._rng = random.Random(self.seed + 1)
        self.state.populate(JOBS, self.now)

    def step(self) -> None:
        for job_id in sorted(self.state.jobs):
            job = self.state.jobs[job_id]
            if job["state"] in SETTLED_STATES:
                self.settled_steps[job_id] += 1
                if self.settled_steps[job_id] > 2 and self._rng.random() < 0.5:
                    self.state.remove_job(job_id)  # the watcher reports it vanished
                continue
            if self._rng.random() < MOVE_CHANCE:
                new = self.state.next_state(job["state"], int(job["reject_times"]))
                if new is not None:
                    self.state.set_state(job_id, new, now=self.now)
        while len(self.state.jobs) < JOBS:
            self.state.add_job(now=self.now, state=self._rng.choice(["AUDITING", "PROCESSING"]))

    def shift(self, kind: str) -> None:
        """What the simulator does for a shift fault, done directly (for the reference run)."""
        if kind == "insert_before_page":
            oldest = min(job["create_time"] for job in self.state.jobs.values())
            self.state.add_job(
                now=self.now, create_time=oldest - 1000, lastupdate_time=to_ms(self.now)
            )
        else:
            query = {"sort_key": "create_time", "sort_dir": "asc"}
            self.state.remove_job(select_jobs(self.state, query)[0]["job_id"])


@dataclass
class Run:
    steps: int = 0
    cycles: int = 0
    failed_cycles: int = 0
    played: Counter[str] = field(default_factory=Counter)
    shifts_at: dict[int, list[str]] = field(default_factory=dict)
    alerts: Counter[str] = field(default_factory=Counter)
    messages: int = 0


async def run_scenario(
    tmp_path: Path,
    name: str,
    *,
    cycles: int,
    faults: Callable[[random.Random], list[str]] | None,
    shifts_at: dict[int, list[str]] | None = None,
    steps: int | None = None,
) -> Run:
    """Cycles of `once` with faults queued before each (or the reference: no faults, the
    recorded shifts applied at their logical step, `steps` steps)."""
    start = datetime.now(UTC).replace(microsecond=0)
    churn = Churn(SEED, start)
    clock = [start]

    def now() -> datetime:
        return clock[0]

    app = create_app(churn.state, project_id=PROJECT, ak=AK, sk=SK, clock=now)
    runner, endpoint = await serve_app(app)
    result = Run()
    rng = random.Random(SEED + 2)
    try:
        async with WebhookReceiver() as hook, aiohttp.ClientSession() as session:
            text = config_text(
                endpoint=endpoint,
                hook=json_url(hook.base_url),
                storage=tmp_path / f"{name}.db",
                request_timeout="150ms",
            )
            config = load_config_text(text, str(tmp_path / f"{name}.yaml"), ENV, check_url)
            store = Store.open(config.storage)
            notifier = Notifier(config.channels, send_timeout=5.0)
            watcher = Watcher(
                config,
                store,
                notifier,
                session,
                clock=now,
                monotonic=lambda: now().timestamp(),
                rng=random.Random(1),
                retry=RETRY,
            )
            try:
                total = cycles if faults is not None else steps or 0
                for _ in range(total):
                    clock[0] += timedelta(seconds=1)
                    churn.now = clock[0]
                    queued: list[str] = []
                    if faults is not None:
                        queued = faults(rng)
                        churn.state.faults[:] = [dict(FAULTS[k][1]) for k in queued]
                    for kind in (shifts_at or {}).get(result.steps, []):
                        churn.shift(kind)
                    (outcome,) = await watcher.once()
                    played = queued[: len(queued) - len(churn.state.faults)]
                    churn.state.faults.clear()
                    result.played.update(played)
                    for kind in played:
                        if kind in SHIFTS:
                            result.shifts_at.setdefault(result.steps, []).append(kind)
                    result.cycles += 1
                    if outcome.ok:
                        result.steps += 1
                        churn.step()
                    else:
                        result.failed_cycles += 1
                counts = store.outbox_counts()
                assert counts["pending"] == counts["dead"] == 0
            finally:
                notifier.close()
                store.close()
            result.alerts = alert_counts(hook.received)
            result.messages = len(hook.received)
    finally:
        await runner.cleanup()
    return result


def random_faults(rng: random.Random) -> list[str]:
    """None for about a third of the cycles; else 1 to 5 faults, at most one page shift."""
    if rng.random() < 0.35:
        return []
    kinds = list(FAULTS)
    weights = [FAULTS[k][0] for k in kinds]
    out: list[str] = []
    for kind in rng.choices(kinds, weights, k=rng.randint(1, 5)):
        if kind in SHIFTS and any(k in SHIFTS for k in out):
            continue  # two shifts in one scan can cancel out in the count: see the docstring
        out.append(kind)
    return out


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_fault_storm_gives_the_same_alerts_as_a_fault_free_run(tmp_path: Path) -> None:
    with memory_dir(tmp_path) as where:
        stormy = await run_scenario(where, "storm", cycles=CYCLES, faults=random_faults)
        calm = await run_scenario(
            where, "calm", cycles=0, faults=None, shifts_at=stormy.shifts_at, steps=stormy.steps
        )
    false_alerts = stormy.alerts - calm.alerts
    lost_alerts = calm.alerts - stormy.alerts
    print(
        f"\napi faults: cycles={stormy.cycles} failed_cycles={stormy.failed_cycles}"
        f" faults={sum(stormy.played.values())} {dict(sorted(stormy.played.items()))}"
        f" alerts={sum(calm.alerts.values())} false={sum(false_alerts.values())}"
        f" lost={sum(lost_alerts.values())}"
    )
    assert stormy.cycles >= 500
    assert sum(calm.alerts.values()) >= 100
    assert all(stormy.played[kind] >= 5 for kind in FAULTS), stormy.played
    assert stormy.failed_cycles >= 20  # some cycles must really fail, not just retry
    assert not false_alerts, sorted(false_alerts)[:5]
    assert not lost_alerts, sorted(lost_alerts)[:5]
