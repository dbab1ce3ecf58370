"""Polling strategies against the simulator's three API behaviours, on one virtual clock.

Each region gets the cheapest strategy it really supports: found out by refusals and by
evidence on the pages, within the same cycle, never as a failed poll; remembered in the
store so a fresh process (cron `once`) continues from it; re-verified after a while.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.test_incremental import AK, PROJECT, SK, START, Sim, events, poll, populate
from watcher import daemon
from watcher.http import Readiness, bound_port, start_http
from watcher.model import SETTLED_STATES
from watcher.simulator.app import create_app
from watcher.simulator.runner import serve_app
from watcher.simulator.state import ApiBehaviour, SimulatorState


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Sim]:
    state = SimulatorState(seed=13)
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


def demotions(watcher: daemon.Watcher, strategy: str) -> float:
    value = watcher.metrics.registry.get_sample_value(
        "watcher_strategy_demotions_total", {"source": "prod", "strategy": strategy}
    )
    return value or 0.0


def active_ids(sim: Sim) -> list[str]:
    return [j for j, job in sorted(sim.state.jobs.items()) if job["state"] not in SETTLED_STATES]


async def test_documented_region_falls_back_in_the_same_cycle_and_sends_documented_states(
    sim: Sim,
) -> None:
    populate(sim, 300)
    sim.state.api_behaviour = ApiBehaviour.DOCUMENTED
    # A job in a state the page does not document as a filter value: watched by lookups.
    odd = active_ids(sim)[0]
    sim.state.set_state(odd, "USER_RESULT_REVIEW", now=sim.clock())
    full, inc = sim.watcher("full", "0"), sim.watcher("inc", "1h")
    await poll(full)
    await poll(inc)
    sim.tick()
    failing = active_ids(sim)[1:4]
    for job_id in failing:
        sim.state.set_state(job_id, "FAILED", now=sim.clock())
    with capture_logs() as logs:
        outcome = await poll(inc)
    assert outcome.mode == "active_set"  # had update_since ignored, same cycle
    assert demotions(inc, "changed_since") == 1
    assert [e["strategy"] for e in logs if e["event"] == "strategy_demoted"] == ["changed_since"]
    await poll(full)
    assert events(inc) == events(full)
    assert {e[1] for e in events(inc) if e[3] == "FAILED"} == set(failing)
    # Every state= filter sent was documented: the region validates and would answer 400.
    shows = []
    for _ in range(4):
        sim.tick()
        before = sim.state.requests_by_kind["show"]
        outcome = await poll(inc)
        assert outcome.mode == "active_set"
        shows.append(sim.state.requests_by_kind["show"] - before)
    assert shows == [1, 1, 1, 1]  # the USER_RESULT_REVIEW job, looked up each cycle
    sim.state.set_state(odd, "FAILED", now=sim.tick())
    await poll(inc)
    await poll(full)
    assert ("transition", odd, "USER_RESULT_REVIEW", "FAILED") in events(inc)
    assert events(inc) == events(full)
    assert demotions(inc, "changed_since") == 1
    assert demotions(inc, "active_set") == 0


async def test_a_refusal_demotes_the_strategy_and_is_never_a_failed_poll(sim: Sim) -> None:
    populate(sim, 200)
    inc = sim.watcher("inc", "10m")
    await poll(inc)
    job_id = active_ids(sim)[0]
    sim.state.set_state(job_id, "FAILED", now=sim.tick())
    sim.state.faults.append(
        {"kind": "status", "status": 400, "error_code": "MSS.00000003", "error_msg": "bad"}
    )
    outcome = await poll(inc)
    assert (outcome.ok, outcome.mode) == (True, "active_set")
    assert ("transition", job_id, "PROCESSING", "FAILED") in events(inc)
    assert demotions(inc, "changed_since") == 1
    polls_failed = inc.metrics.registry.get_sample_value(
        "watcher_polls_total", {"source": "prod", "outcome": "error"}
    )
    assert polls_failed == 0
    modes = []
    for _ in range(12):
        sim.tick()
        modes.append((await poll(inc)).mode)
    # Demoted until the scheduled full scan; the cycle after it verifies again, and the
    # region answers update_since again: used from then on.
    assert modes == ["active_set"] * 8 + ["full"] + ["changed_since"] * 3


async def test_plain_region_gets_full_scans_and_is_reverified_after_the_hold(sim: Sim) -> None:
    populate(sim, 250)
    sim.state.api_behaviour = ApiBehaviour.PLAIN
    inc = sim.watcher("inc", "10m")
    await poll(inc)
    job_id = active_ids(sim)[0]
    sim.state.set_state(job_id, "FAILED", now=sim.tick())
    outcome = await poll(inc)
    assert (outcome.ok, outcome.mode) == (True, "full")
    assert ("transition", job_id, "PROCESSING", "FAILED") in events(inc)
    assert demotions(inc, "changed_since") == demotions(inc, "active_set") == 1
    pages = math.ceil(len(sim.state.jobs) / 100)
    # The probes cost a page or two each: changed_since 1, active_set's two listings.
    assert outcome.requests <= pages + 3
    costs = []
    for cycle in range(12):
        sim.tick()
        if cycle == 8:
            sim.state.api_behaviour = ApiBehaviour.FULL  # the region is upgraded
        outcome = await poll(inc)
        costs.append((outcome.mode, outcome.requests))
    # Full scans only, no probing, until the demotions expire; then changed_since is used.
    assert costs[:8] == [("full", pages)] * 8
    assert costs[9:] == [("changed_since", 1)] * 3
    assert demotions(inc, "changed_since") == 1


async def test_changed_since_holds_with_hundreds_of_changes_between_cycles(sim: Sim) -> None:
    populate(sim, 600, active_every=2)
    full, inc = sim.watcher("full", "0"), sim.watcher("inc", "1h")
    await poll(full)
    await poll(inc)
    rng = random.Random(4)
    for _ in range(3):
        sim.tick()
        for job_id in rng.sample(active_ids(sim), 150):
            sim.state.set_state(
                job_id, rng.choice(["FAILED", "SUCCEED", "WAITING"]), now=sim.clock()
            )
        for _ in range(120):  # a burst of new jobs, newest first would fill page one
            sim.state.add_job(now=sim.clock(), state="CREATING")
        outcome = await poll(inc)
        await poll(full)
        assert outcome.mode == "changed_since"
        assert outcome.requests >= 3  # several pages of changes, still trusted
        assert events(inc) == events(full)
    assert demotions(inc, "changed_since") == 0


async def test_burst_of_new_jobs_in_a_documented_region_still_demotes_correctly(sim: Sim) -> None:
    populate(sim, 400)
    sim.state.api_behaviour = ApiBehaviour.DOCUMENTED
    full, inc = sim.watcher("full", "0"), sim.watcher("inc", "1h")
    await poll(full)
    await poll(inc)
    sim.tick()
    for _ in range(150):  # page one (newest first) holds only jobs changed since the bound
        sim.state.add_job(now=sim.clock(), state="CREATING")
    outcome = await poll(inc)
    await poll(full)
    assert outcome.mode == "active_set"  # caught on page two
    assert events(inc) == events(full)


# --- once from cron -----------------------------------------------------------------------------


async def test_a_second_once_after_few_changes_makes_at_most_three_requests(sim: Sim) -> None:
    populate(sim, 10_000)
    await poll(sim.watcher("cron", "1h"))  # the baseline, in its own "process"
    sim.tick()
    for job_id in active_ids(sim)[:10]:  # 0.1 %
        sim.state.set_state(job_id, "FAILED", now=sim.clock())
    before = sim.state.requests
    outcome = await poll(sim.watcher("cron", "1h"))  # a new process on the same state file
    assert outcome.mode == "changed_since"
    assert sim.state.requests - before == outcome.requests <= 3
    assert outcome.events == 10


async def test_once_in_a_documented_region_costs_the_active_pages_plus_three(sim: Sim) -> None:
    populate(sim, 10_000, active_every=100)  # 1 % active
    sim.state.api_behaviour = ApiBehaviour.DOCUMENTED
    await poll(sim.watcher("cron", "1h"))
    active = len(active_ids(sim))
    rng = random.Random(8)
    costs = []
    for _ in range(3):
        sim.tick()
        moving = rng.sample(active_ids(sim), 4)
        sim.state.set_state(moving[0], "SUCCEED", now=sim.clock())  # leaves the active set
        for job_id in moving[1:]:
            sim.state.set_state(job_id, "WAITING", now=sim.clock())
        before = sim.state.requests
        outcome = await poll(sim.watcher("cron", "1h"))
        assert outcome.mode == "active_set"
        costs.append(sim.state.requests - before)
    assert all(cost <= math.ceil(active / 100) + 3 for cost in costs), costs
    # Only the first `once` probed update_since; the demotion was remembered by the others.
    assert sim.state.requests_by_kind["list?update_since"] == 1


async def documented_region(sim: Sim) -> daemon.Watcher:
    """The simulator acting as a region that honours only what the page documents, with the
    baselines taken and update_since found ignored by `once` (and remembered): the
    full-scan watcher every cycle is compared with."""
    sim.state.api_behaviour = ApiBehaviour.DOCUMENTED
    full = sim.watcher("full", "0")
    await poll(full)
    await poll(sim.watcher("cron", "1h"))
    sim.tick()
    await poll(sim.watcher("cron", "1h"))  # finds update_since ignored, remembers it
    return full


async def test_jobs_created_since_the_last_cycle_are_listed_once_not_twice(sim: Sim) -> None:
    """The active listing stops where the created-since one starts: 150 new jobs in flight
    cost the created-since listing's two pages, not two more of the active listing too."""
    populate(sim, 1_000, active_every=10)  # 100 in flight: one page
    full = await documented_region(sim)
    sim.tick()
    for _ in range(150):
        sim.state.add_job(now=sim.clock() - timedelta(seconds=20), state="CREATING")
    moving = active_ids(sim)[:3]
    for job_id in moving:  # older jobs moving on, and one settling
        sim.state.set_state(job_id, "WAITING", now=sim.clock())
    sim.state.set_state(moving[0], "SUCCEED", now=sim.clock())
    before = dict(sim.state.requests_by_kind)
    outcome = await poll(sim.watcher("cron", "1h"))
    spent = {k: v - before.get(k, 0) for k, v in sim.state.requests_by_kind.items()}
    assert outcome.mode == "active_set"
    assert spent["list?create_since"] == 2  # the 150 new ones, in any state
    assert spent["list?create_until&state"] == 1  # the 100 in flight before them, not 250
    await poll(full)
    assert events(sim.watcher("cron", "1h")) == events(full)  # nothing lost, nothing false
    new = [e for e in events(full) if e[0] == "new"]
    assert len(new) == 150


def populate_in_flight(sim: Sim, n: int, spread: str) -> None:
    """`n` jobs over two years, 1 % in flight: `recent`, among the newest (nineteen in twenty
    of the newest jobs, plus one old one waiting for its user), or `uniform`, spread evenly
    over the two years (no tenant looks like that; the worst case)."""
    rng = random.Random(21)
    active = n // 100
    if spread == "uniform":
        in_flight = set(range(0, n, 100))
    else:
        in_flight = {0}  # the old one, created two years ago
        age = 0
        while len(in_flight) < active:
            if age % 20 != 19:
                in_flight.add(n - 1 - age)
            age += 1
    for i in range(n):
        created = START - timedelta(days=730) + timedelta(seconds=i * 730 * 86400 / n)
        if i in in_flight:
            state = "AUDIT_FAILED" if i == 0 and spread == "recent" else "PROCESSING"
        else:
            state = rng.choice(["SUCCEED", "SUCCEED", "FAILED"])
        sim.state.add_job(now=created, state=state)


@pytest.mark.parametrize("spread", ["recent", "uniform"])
async def test_a_documented_cycle_resolves_settled_jobs_cheaply_and_loses_none(
    sim: Sim, spread: str
) -> None:
    populate_in_flight(sim, 10_000, spread)
    full = await documented_region(sim)
    rng = random.Random(9)
    costs = []
    for round_ in range(4):
        sim.tick()
        now = sim.clock()
        oldest, *others = sorted(active_ids(sim), key=lambda j: sim.state.jobs[j]["create_time"])
        moving = rng.sample(others, 10)
        if round_ == 2:  # the oldest job in flight (waiting for its user) settles too
            moving[0] = oldest
        for job_id in moving[:6]:
            sim.state.set_state(job_id, rng.choice(["SUCCEED", "FAILED"]), now=now)
        for job_id in moving[6:]:
            sim.state.set_state(job_id, "WAITING", now=now)
        sim.state.add_job(now=now - timedelta(seconds=30), state="CREATING")
        fleeting = sim.state.add_job(now=now - timedelta(seconds=40), state="CREATING")
        sim.state.set_state(fleeting["job_id"], "FAILED", now=now - timedelta(seconds=10))
        active = len(active_ids(sim))
        before = dict(sim.state.requests_by_kind)
        outcome = await poll(sim.watcher("cron", "1h"))  # `once`: a new process each round
        spent = {
            k: v - before.get(k, 0)
            for k, v in sim.state.requests_by_kind.items()
            if k.startswith("list") or k == "show"  # not the failure details of alerts
        }
        assert outcome.mode == "active_set"
        assert sum(spent.values()) == outcome.requests
        costs.append((active, spent))
        await poll(full)
        cron = sim.watcher("cron", "1h")
        assert events(cron) == events(full), f"round {round_}"  # nothing lost, nothing false
        settled = {e[1] for e in events(full) if e[0] == "transition" and e[3] in SETTLED_STATES}
        assert set(moving[:6]) <= settled
    for round_, (active, spent) in enumerate(costs):
        listings = spent["list?create_until&state"] + spent["list?create_since"]
        if spread == "recent":
            # The settled jobs, among the newest, found by one bounded settled listing (and
            # the old one by its own lookup): the cost the issue sets, whatever else.
            assert sum(spent.values()) <= math.ceil(active / 100) + 3, spent
            assert spent["list?create_since&create_until&state"] == 1, spent
            assert spent.get("show", 0) == (1 if round_ == 2 else 0), spent
        # Either way never dearer than a lookup for each of the 6 settled jobs.
        assert sum(spent.values()) - listings <= 6, spent


async def test_a_settled_listing_that_outgrows_its_estimate_gives_way_to_lookups(
    sim: Sim,
) -> None:
    populate(sim, 400)  # a minute apart over the past week, one in ten in flight
    sim.state.api_behaviour = ApiBehaviour.DOCUMENTED
    inc = sim.watcher("inc", "1h")
    await poll(inc)
    sim.tick()
    await poll(inc)  # update_since found ignored: active set from now on
    by_age = sorted(active_ids(sim), key=lambda j: sim.state.jobs[j]["create_time"])
    settling = by_age[30:33]  # neighbours: 19 stored settled jobs between them
    since = sim.state.jobs[settling[0]]["create_time"]
    # Settled jobs the store never saw, created among them (rows a region shows late):
    # the estimate says one page, the listing would take four.
    for k in range(350):
        sim.state.add_job(
            now=datetime.fromtimestamp((since + 1000 + k) / 1000, UTC), state="SUCCEED"
        )
    sim.tick()
    for job_id in settling:
        sim.state.set_state(job_id, "FAILED", now=sim.clock())
    before = dict(sim.state.requests_by_kind)
    with capture_logs() as logs:
        outcome = await poll(inc)
    spent = {k: v - before.get(k, 0) for k, v in sim.state.requests_by_kind.items()}
    assert outcome.mode == "active_set"
    assert spent["list?create_since&create_until&state"] == 1  # stopped on its first page
    assert spent["show"] == 3
    assert [e["event"] for e in logs if e["event"] == "settled_listing_over_budget"] == [
        "settled_listing_over_budget"
    ]
    assert {e[1] for e in events(inc) if e[3] == "FAILED"} == set(settling)
    assert demotions(inc, "active_set") == 0


# --- large tenants --------------------------------------------------------------------------------


async def test_a_slow_scan_that_progresses_is_never_abandoned(
    sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(sim, 2000)
    monkeypatch.setattr(daemon, "_PROGRESS_REPORT_EVERY", 0.05)
    # 20 pages at 25 requests/s (a burst of 25 first): far longer than the stall limit,
    # but a page arrives well within it every time.
    inc = sim.watcher("inc", "1h", rate=10, stall_limit=0.4)
    http = await start_http("127.0.0.1:0", inc.metrics, lambda: Readiness(False, ("prod",)))
    try:
        task = asyncio.ensure_future(inc.poll("prod"))
        await asyncio.sleep(0.6)
        url = f"http://127.0.0.1:{bound_port(http)}/readyz"
        async with sim.session.get(url) as resp:
            body = await resp.json()
        assert resp.status == 503
        note = body["scans"]["prod"]
        assert note.startswith("baseline in progress: ") and note.endswith(" of 20 pages")
        stored = inc.store.poll_strategies()["prod"]
        assert stored.baseline and stored.pages_total == 20 and 0 < (stored.pages_done or 0) < 20
        outcome = await task
    finally:
        await http.cleanup()
    assert outcome.ok and outcome.baseline and outcome.jobs == 2000
    assert inc.metrics.scan_notes() == {}
    assert inc.store.poll_strategies()["prod"].pages_done is None


async def test_a_scan_that_stops_making_progress_is_abandoned(sim: Sim) -> None:
    populate(sim, 500)
    inc = sim.watcher("inc", "1h", stall_limit=0.3)
    sim.state.faults += [{}, {}, {}, {"kind": "hang", "seconds": 1}]  # a page hangs
    outcome = await inc.poll("prod")
    assert not outcome.ok
    assert "made no progress for 0.3s" in str(outcome.error)
    assert "pages fetched) and was abandoned" in str(outcome.error)
    assert not inc.store.has_baseline("prod")


@pytest.mark.parametrize("behaviour", [ApiBehaviour.FULL, ApiBehaviour.DOCUMENTED])
async def test_jobs_created_while_a_full_scan_pages_do_not_spoil_it(
    sim: Sim, behaviour: ApiBehaviour
) -> None:
    populate(sim, 1000)
    sim.state.api_behaviour = behaviour
    inc = sim.watcher("inc", "1h")
    # The probe of the API's clock, then a job created before every page of the scan (a
    # little later each time, as the virtual clock does not move by itself):
    # newest first (documented) each one would shift every page, in create order each
    # would change the count.
    sim.state.faults += [{}] + [{"kind": "create_before_page", "after": 5}] * 40
    first = await inc.poll("prod")
    assert first.ok, first.error  # unbounded, three passes would shift and the poll fail
    assert first.baseline and first.jobs == 1000
    assert first.requests == 1 + 10  # the probe and one pass: nothing discarded
    sim.state.faults.clear()
    assert "list?create_until" in sim.state.requests_by_kind
    sim.tick()
    second = await poll(inc)
    assert second.jobs == len(sim.state.jobs) > 1000
    assert second.events == len(sim.state.jobs) - 1000  # each one `new`, on the next cycle


def test_a_bounded_full_scan_keeps_stored_jobs_created_after_its_bound() -> None:
    from watcher.engine.cycle import keep_created_after
    from watcher.model import Job

    bound = START
    stored = {
        "old": Job("old", "SUCCEED", 1, START - timedelta(days=1)),
        "late": Job("late", "CREATING", 1, START + timedelta(seconds=1)),
    }
    scanned = {"other": Job("other", "FAILED", 1, START - timedelta(hours=1))}
    kept = keep_created_after(stored, scanned, bound)
    # "old" is really absent (a miss); "late" could not be listed, so it is not.
    assert set(kept) == {"other", "late"}
    assert keep_created_after(stored, scanned, None) is scanned


async def test_a_demotion_outlives_a_cycle_that_then_fails(sim: Sim) -> None:
    # The demotion is decided while fetching, before the cycle knows whether it will
    # commit: the watcher keeps it, so the next cycle does not ask (and warn) again.
    populate(sim, 200)
    inc = sim.watcher("inc", "10m")
    await poll(inc)
    sim.tick()
    sim.state.faults.extend(
        [
            {"kind": "status", "status": 400, "error_code": "MSS.00000003", "error_msg": "bad"},
            {"kind": "status", "status": 403, "error_code": "APIGW.0301", "error_msg": "no"},
        ]
    )
    with capture_logs() as logs:
        failed = await inc.poll("prod")
        assert not failed.ok
        sim.tick()
        outcome = await poll(inc)
    assert outcome.mode == "active_set"
    assert demotions(inc, "changed_since") == 1
    assert [e["strategy"] for e in logs if e["event"] == "strategy_demoted"] == ["changed_since"]
