"""Incremental polling end to end: the daemon's cheap cycles against the simulator on loopback.

Two watchers poll the same simulator on one virtual clock (the simulator's `Date` and the
signing date both follow it): a reference that scans everything every cycle, and one that
polls incrementally. They must find the same transitions; the request counts show the cost.
"""

from __future__ import annotations

import math
import random
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.config import load_config_text
from watcher.daemon import PollOutcome, Watcher
from watcher.metastudio.client import PageCheck, RetryPolicy
from watcher.metastudio.incremental import (
    ResolutionPlan,
    active_states,
    created_since_check,
    created_until_check,
    plan_resolution,
    settled_states,
    state_check,
    updated_since_check,
)
from watcher.metastudio.parse import JobsPage
from watcher.model import DOCUMENTED_STATES, SETTLED_STATES, Job
from watcher.notify import Notifier, check_url
from watcher.simulator.app import create_app
from watcher.simulator.runner import serve_app
from watcher.simulator.state import SimulatorState
from watcher.store import Store

AK, SK, PROJECT = "INCRAKINCRAKINCRAK01", "incremental-secret-key-0123456789ab", "proj-inc"
FAST = RetryPolicy(attempts=2, initial_backoff=0.01, max_backoff=0.02, max_retry_after=0.05)
START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)

CONFIG = """
sources:
  - name: prod
    endpoint: {endpoint}
    project_id: {project}
    ak: ${{TEST_AK}}
    sk: ${{TEST_SK}}
    poll_interval: 60s
    request_timeout: 5s
    full_scan_every: {full_scan_every}
    max_requests_per_second: {rate}
channels:
  hook: ["json://127.0.0.1:9/never-called"]
rules:
  - name: everything
    on: ["*"]
    events: [transition, rejected_again, new, vanished, reappeared, recovered]
    notify: [hook]
storage: {storage}
"""


@dataclass
class Sim:
    state: SimulatorState
    endpoint: str
    session: aiohttp.ClientSession
    tmp: Path
    now: list[datetime] = field(default_factory=lambda: [START])
    _opened: list[tuple[Store, Notifier]] = field(default_factory=list)

    def clock(self) -> datetime:
        return self.now[0]

    def tick(self, seconds: float = 60) -> datetime:
        self.now[0] += timedelta(seconds=seconds)
        return self.now[0]

    def watcher(
        self, name: str, full_scan_every: str, *, rate: int = 1000, stall_limit: float | None = None
    ) -> Watcher:
        """A watcher with its own store; a second call with the same name is a new process
        on the same state file (what `once` from cron is)."""
        text = CONFIG.format(
            endpoint=self.endpoint,
            project=PROJECT,
            full_scan_every=full_scan_every,
            storage=self.tmp / f"{name}.db",
            rate=rate,
        )
        config = load_config_text(
            text, str(self.tmp / f"{name}.yaml"), {"TEST_AK": AK, "TEST_SK": SK}, check_url
        )
        store = Store.open(config.storage)
        notifier = Notifier(config.channels, send_timeout=1.0)
        self._opened.append((store, notifier))
        return Watcher(
            config,
            store,
            notifier,
            self.session,
            clock=self.clock,
            rng=random.Random(1),
            retry=FAST,
            stall_limit=stall_limit,
        )

    def close(self) -> None:
        for store, notifier in self._opened:
            notifier.close()
            store.close()


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Sim]:
    state = SimulatorState(seed=11)
    holder: list[Sim] = []
    app = create_app(state, project_id=PROJECT, ak=AK, sk=SK, clock=lambda: holder[0].clock())
    runner, endpoint = await serve_app(app)
    async with aiohttp.ClientSession() as session:
        s = Sim(state, endpoint, session, tmp_path)
        holder.append(s)
        try:
            yield s
        finally:
            s.close()
    await runner.cleanup()


def events(watcher: Watcher) -> list[tuple[str, str | None, str | None, str | None]]:
    """Every job event the watcher committed, comparable across watchers."""
    with sqlite3.connect(watcher.config.storage) as conn:
        rows = conn.execute(
            "SELECT kind, job_id, previous_state, state FROM events WHERE job_id IS NOT NULL"
        ).fetchall()
    return sorted(rows)


def populate(sim: Sim, n: int, active_every: int = 10) -> None:
    """`n` jobs created over the past week; one in `active_every` still in progress."""
    rng = random.Random(5)
    for i in range(n):
        created = START - timedelta(days=7) + timedelta(minutes=i)
        state = "PROCESSING" if i % active_every == 0 else rng.choice(["SUCCEED", "FAILED"])
        sim.state.add_job(now=created, state=state)


def churn(sim: Sim, rng: random.Random) -> None:
    """The minute before now: active jobs move on, a job is created and settles before the next
    poll, sometimes a whole batch settles at once."""
    now = sim.now[0]
    active = [j for j, job in sorted(sim.state.jobs.items()) if job["state"] not in SETTLED_STATES]
    for job_id in rng.sample(active, k=min(3, len(active))):
        job = sim.state.jobs[job_id]
        new = sim.state.next_state(job["state"], int(job["reject_times"]))
        if new is not None:
            sim.state.set_state(job_id, new, now=now - timedelta(seconds=rng.randrange(1, 50)))
    fleeting = sim.state.add_job(now=now - timedelta(seconds=40), state="CREATING")
    sim.state.set_state(fleeting["job_id"], "FAILED", now=now - timedelta(seconds=20))
    sim.state.add_job(now=now - timedelta(seconds=10), state="AUDITING")


async def poll(watcher: Watcher) -> PollOutcome:
    outcome = await watcher.poll("prod")
    assert outcome.ok, outcome.error
    return outcome


async def test_changed_since_cycles_find_every_transition_a_full_scan_would(sim: Sim) -> None:
    populate(sim, 300)
    full, inc = sim.watcher("full", "0"), sim.watcher("inc", "1h")
    assert (await poll(full)).mode == (await poll(inc)).mode == "full"
    rng = random.Random(2)
    for cycle in range(12):
        sim.tick()
        churn(sim, rng)
        if cycle == 6:
            # Many jobs settle at once (a whole batch), between two polls.
            for job_id, job in sorted(sim.state.jobs.items()):
                if job["state"] not in SETTLED_STATES:
                    sim.state.set_state(job_id, "SUCCEED", now=sim.now[0])
        before = sim.state.requests
        reference = await poll(full)
        spent_full = sim.state.requests - before
        outcome = await poll(inc)
        assert outcome.mode == "changed_since"
        assert events(inc) == events(full), f"cycle {cycle}"
        changed = outcome.events
        assert outcome.requests <= math.ceil(changed / 100) + 1
        assert outcome.requests < spent_full == reference.requests
    assert sim.state.requests_by_kind["list?update_since"] == 12
    assert "show" not in sim.state.requests_by_kind


async def test_ignored_update_since_falls_back_to_active_set_polling(sim: Sim) -> None:
    populate(sim, 300)
    sim.state.ignore_update_filters = True  # an older region
    full, inc = sim.watcher("full", "0"), sim.watcher("inc", "1h")
    await poll(full)
    await poll(inc)
    rng = random.Random(3)
    modes = []
    for cycle in range(10):
        sim.tick()
        churn(sim, rng)
        if cycle == 4:
            for job_id, job in sorted(sim.state.jobs.items()):
                if job["state"] not in SETTLED_STATES:
                    sim.state.set_state(job_id, "FAILED", now=sim.now[0])
        await poll(full)
        outcome = await poll(inc)
        modes.append(outcome.mode)
        assert events(inc) == events(full), f"cycle {cycle}"
    assert modes == ["active_set"] * 10
    kinds = sim.state.requests_by_kind
    assert kinds["list?update_since"] == 1  # tried once, found ignored, never again
    assert kinds["list?create_until&state"] >= 10
    assert kinds["list?create_since"] == 10
    # The batch that settled at once was resolved by a bounded settled listing, not 30+
    # lookups.
    assert kinds["list?create_since&create_until&state"] >= 1
    assert kinds["show"] < 30


async def test_settled_job_that_changes_anyway_is_caught_by_the_next_full_scan(sim: Sim) -> None:
    populate(sim, 50)
    sim.state.ignore_update_filters = True
    inc = sim.watcher("inc", "10m")
    await poll(inc)
    settled = next(j for j, job in sorted(sim.state.jobs.items()) if job["state"] == "SUCCEED")
    sim.tick()
    await poll(inc)  # falls back to active-set polling
    sim.state.set_state(settled, "FAILED", now=sim.tick(5))  # "settled" was wrong
    sim.tick(55)
    outcome = await poll(inc)
    assert outcome.mode == "active_set"
    assert outcome.events == 0  # the assumption hides it...
    sim.tick(600)
    outcome = await poll(inc)  # ...until the full scan
    assert (outcome.mode, outcome.events, outcome.misses) == ("full", 1, 1)
    assert ("transition", settled, "SUCCEED", "FAILED") in events(inc)
    misses = inc.metrics.registry.get_sample_value(
        "watcher_incremental_misses_total", {"source": "prod"}
    )
    assert misses == 1


async def test_incremental_cycles_never_report_a_job_vanished(sim: Sim) -> None:
    populate(sim, 30, active_every=3)
    inc = sim.watcher("inc", "5m")
    await poll(inc)
    gone = next(j for j, job in sorted(sim.state.jobs.items()) if job["state"] == "PROCESSING")
    sim.state.remove_job(gone)
    sim.state.ignore_update_filters = True  # active-set: the job is looked up and 404s
    kinds: list[str] = []
    for _ in range(40):
        sim.tick()
        outcome = await poll(inc)
        kinds.append(outcome.mode)
        vanished = [e for e in events(inc) if e[0] == "vanished"]
        full_scans_since = kinds.count("full")
        assert bool(vanished) == (full_scans_since >= 3), kinds
    assert kinds.count("active_set") > 20
    # The 404 is remembered until the next full scan: one lookup per full-scan period.
    assert sim.state.requests_by_kind["show"] <= kinds.count("full") + 1


async def test_reappearing_job_clears_its_miss_count(sim: Sim) -> None:
    populate(sim, 20, active_every=2)
    inc = sim.watcher("inc", "5m")
    await poll(inc)
    job_id = next(j for j, job in sorted(sim.state.jobs.items()) if job["state"] == "SUCCEED")
    saved: dict[str, Any] = dict(sim.state.jobs[job_id])
    sim.state.remove_job(job_id)
    sim.tick(301)
    assert (await poll(inc)).mode == "full"  # one miss
    sim.state.jobs[job_id] = {**saved, "state": "FAILED", "lastupdate_time": 0}
    sim.state.set_state(job_id, "FAILED", now=sim.tick())
    outcome = await poll(inc)
    assert outcome.mode == "changed_since"
    assert (await inc.poll("prod")).ok
    tracking = inc.store.load_tracking("prod")
    assert tracking is not None and job_id not in tracking["missing"]


# --- the pure parts ----------------------------------------------------------------------------


def _job(job_id: str, state: str, updated: datetime, created: datetime | None = None) -> Job:
    return Job(job_id, state, 1, created or updated, updated)


def test_a_bounded_settled_listing_replaces_lookups_only_when_cheaper() -> None:
    settled = [(START + timedelta(minutes=i)).timestamp() for i in range(500)]
    at = START + timedelta(minutes=490, seconds=20, milliseconds=250)
    recent = [(f"d{i}", at + timedelta(seconds=i)) for i in range(8)]
    plan = plan_resolution(recent, settled, 100)
    # One page over 490:20..490:28 (no stored settled job in it) beats 8 lookups.
    ((window,),) = [plan.windows]
    assert (window.since, window.until) == (
        START + timedelta(minutes=490, seconds=20),
        START + timedelta(minutes=490, seconds=28),
    )
    assert window.job_ids == tuple(sorted(j for j, _ in recent)) and window.pages == 1
    assert plan.lookups == () and plan.cost == 1
    # Spread out, each alone among settled jobs: lookups (3 < a page each).
    spread = [(f"o{i}", START + timedelta(minutes=200 * i, seconds=30)) for i in range(3)]
    assert plan_resolution(spread, settled, 100) == ResolutionPlan((), ("o0", "o1", "o2"))
    # An old straggler no longer drags the window over all of history (its own lookup),
    # and a job without a create time is always looked up.
    mixed = plan_resolution([*recent, ("old", START), ("odd", None)], settled, 100)
    assert [w.job_ids for w in mixed.windows] == [window.job_ids]
    assert mixed.lookups == ("old", "odd") and mixed.cost == 3
    # A window of 450 stored settled jobs (5 pages) loses to 3 lookups, wins over 8.
    wide = [(f"w{i}", START + timedelta(minutes=10 + 150 * i, seconds=30)) for i in range(3)]
    assert plan_resolution(wide, settled, 100).cost == 3
    assert plan_resolution(recent[:1], settled, 100) == ResolutionPlan((), ("d0",))


def _brute_force_cost(times: list[datetime], settled: list[datetime], page_size: int) -> int:
    """The cheapest cover over every split of the create-time order into runs."""
    from functools import cache

    def pages(i: int, j: int) -> int:
        since = times[i].replace(microsecond=0)
        until = times[j - 1].replace(microsecond=0) + timedelta(seconds=1)
        inside = sum(1 for t in settled if since <= t <= until)
        return max(1, math.ceil((inside + j - i) / page_size))

    @cache
    def best(i: int) -> int:
        if i == 0:
            return 0
        return min(best(j) + (i - j if i - j == 1 else min(i - j, pages(j, i))) for j in range(i))

    return best(len(times))


_offsets = st.integers(0, 40_000)  # milliseconds: a few jobs share a second


@given(
    departed=st.lists(st.one_of(st.none(), _offsets), max_size=7),
    settled=st.lists(_offsets, max_size=40),
    page_size=st.integers(1, 6),
)
@settings(max_examples=300, deadline=None)
def test_the_resolution_plan_covers_each_departed_job_once_and_never_costs_more(
    departed: list[int | None], settled: list[int], page_size: int
) -> None:
    def at(ms: int) -> datetime:
        return START + timedelta(milliseconds=ms)

    jobs = [(f"d{i}", None if ms is None else at(ms)) for i, ms in enumerate(departed)]
    created = sorted(at(ms) for ms in settled)
    plan = plan_resolution(jobs, [t.timestamp() for t in created], page_size)
    planned = [j for w in plan.windows for j in w.job_ids] + list(plan.lookups)
    assert sorted(planned) == sorted(j for j, _ in jobs)  # every one, exactly once
    assert plan.cost <= len(jobs)  # never dearer than a lookup each
    when = dict(jobs)
    for window in plan.windows:
        assert len(window.job_ids) >= 2
        assert all(window.since <= when[j] <= window.until for j in window.job_ids)  # type: ignore[operator]
        inside = sum(1 for t in created if window.since <= t <= window.until)
        assert window.pages == max(1, math.ceil((inside + len(window.job_ids)) / page_size))
        assert window.pages < len(window.job_ids)  # only where it beats the lookups
    assert all(when[j] is not None for w in plan.windows for j in w.job_ids)
    # And it is the cheapest cover by runs of create time.
    timed = sorted(t for _, t in jobs if t is not None)
    untimed = sum(1 for _, t in jobs if t is None)
    assert plan.cost == _brute_force_cost(timed, created, page_size) + untimed


def test_a_mass_settlement_is_planned_in_units_and_still_covered() -> None:
    departed = [(f"m{i:05d}", START + timedelta(seconds=i)) for i in range(5000)]
    plan = plan_resolution(departed, [(START - timedelta(days=1)).timestamp()], 100)
    assert sorted(j for w in plan.windows for j in w.job_ids) == [j for j, _ in departed]
    assert plan.cost == 50 and plan.lookups == ()


def test_ignored_create_until_is_caught() -> None:
    jobs = [_job(f"j{i}", "SUCCEED", START, START + timedelta(minutes=i)) for i in range(5)]
    assert not created_until_check(START + timedelta(minutes=4))(_pages(jobs)[0])
    reason = created_until_check(START + timedelta(minutes=3))(_pages(jobs)[0]) or ""
    assert "ignores create_until" in reason


def _pages(jobs: list[Job], size: int = 100) -> list[JobsPage]:
    return [JobsPage(len(jobs), tuple(jobs[i : i + size])) for i in range(0, len(jobs), size)]


def _rejected(check: PageCheck, jobs: list[Job]) -> bool:
    return any(check(page) for page in _pages(jobs))


@given(
    total=st.integers(1, 450),
    changed=st.integers(0, 450),
    order=st.sampled_from(["update_asc", "create_desc", "shuffled"]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=150, deadline=None)
def test_changed_since_verdict_holds_whatever_the_number_of_changes(
    total: int, changed: int, order: str, seed: int
) -> None:
    """Hundreds of changes between two cycles never read as "update_since ignored"; an API
    that ignores it is caught whenever some job did not change, and when every job did the
    listing it gave is complete anyway."""
    rng = random.Random(seed)
    since = START
    changed = min(changed, total)
    moved = set(rng.sample(range(total), changed))
    jobs = [
        _job(
            f"j{i:04d}",
            "PROCESSING",
            since + timedelta(seconds=rng.randrange(0, 60))
            if i in moved
            else since - timedelta(seconds=rng.randrange(1, 86400)),
            START - timedelta(days=3) + timedelta(minutes=i),
        )
        for i in range(total)
    ]
    if order == "update_asc":
        jobs.sort(key=lambda j: (j.lastupdate_time, j.job_id))
    elif order == "create_desc":
        jobs.sort(key=lambda j: j.create_time or START, reverse=True)
    else:
        rng.shuffle(jobs)
    check = updated_since_check(since)
    honoured = [j for j in jobs if j.lastupdate_time is not None and j.lastupdate_time >= since]
    assert not _rejected(check, honoured)  # never misfires, whatever len(honoured)
    if changed < total:
        assert _rejected(check, jobs)  # an ignored filter is always caught
    else:
        assert not _rejected(check, jobs)  # ...and when it is not, nothing is lost
        assert {j.job_id for j in jobs} == {j.job_id for j in honoured}


def test_ignored_state_and_create_filters_are_caught_on_the_page_that_shows_it() -> None:
    jobs = [_job(f"j{i}", "SUCCEED", START, START + timedelta(minutes=i)) for i in range(250)]
    jobs[230] = _job("late", "PROCESSING", START, START + timedelta(minutes=230))
    assert not state_check({"SUCCEED"})(_pages(jobs)[0])
    assert "ignores state" in (state_check({"SUCCEED"})(_pages(jobs)[2]) or "")
    assert "ignores create_since" in (
        created_since_check(START + timedelta(minutes=1))(_pages(jobs)[0]) or ""
    )
    assert not created_since_check(START)(_pages(jobs)[0])


def test_only_documented_states_are_ever_sent_as_filters() -> None:
    config = load_config_text(
        CONFIG.format(
            endpoint="http://127.0.0.1:9",
            project=PROJECT,
            full_scan_every="1h",
            storage="/nonexistent/x.db",
            rate=5,
        ),
        "x.yaml",
        {"TEST_AK": AK, "TEST_SK": SK},
        check_url,
    )
    (source,) = config.sources
    sent = set(active_states(source)) | set(settled_states(source))
    assert sent <= DOCUMENTED_STATES
    assert "USER_RESULT_REVIEW" not in sent and "USER_REVIEW_REJECT" not in sent
    assert len(DOCUMENTED_STATES) == 14
