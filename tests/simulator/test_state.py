"""The simulator's lifecycle: every step gives a documented state and sensible bookkeeping.

Pure: no server, times passed in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from watcher import model
from watcher.simulator.state import SimulatorState, to_ms

NOW = datetime(2024, 12, 12, 8, 0, tzinfo=UTC)


def test_populate_creates_varied_jobs_with_personal_data_to_catch() -> None:
    state = SimulatorState(seed=3)
    jobs = state.populate(40, NOW)
    assert len(state.jobs) == 40
    assert len({j["job_type"] for j in jobs}) > 2
    assert len({j["voice_name"] for j in jobs}) > 2
    assert all(j["phone"].startswith("138") for j in jobs)
    assert all(j["state"] in model.KNOWN_STATES for j in jobs)
    assert all(j["create_time"] > 10**11 for j in jobs)


def test_same_seed_gives_the_same_jobs() -> None:
    a, b = SimulatorState(seed=5), SimulatorState(seed=5)
    assert a.populate(10, NOW) == b.populate(10, NOW)


def test_steps_only_produce_known_states_and_jobs_eventually_settle() -> None:
    state = SimulatorState(seed=11)
    state.populate(60, NOW)
    seen: set[str] = set()
    for i in range(80):
        for _, old, new in state.step(NOW + timedelta(minutes=i)):
            assert old not in model.SETTLED_STATES
            assert new in model.KNOWN_STATES
            seen.add(new)
    assert all(j["state"] in model.SETTLED_STATES for j in state.jobs.values())
    assert {model.SUCCEED, model.AUDIT_FAILED, model.UPLOADING} <= seen


def test_entering_a_failure_state_again_bumps_reject_times() -> None:
    state = SimulatorState(seed=1)
    job = state.add_job(now=NOW)
    state.set_state(job["job_id"], model.AUDIT_FAILED, now=NOW)
    assert job["reject_times"] == 1
    assert job["job_failed_code"].startswith("MSS.")
    state.set_state(job["job_id"], model.UPLOADING, now=NOW)
    assert "job_failed_code" not in job
    later = NOW + timedelta(minutes=5)
    state.set_state(job["job_id"], model.AUDIT_FAILED, now=later)
    assert job["reject_times"] == 2
    assert job["lastupdate_time"] == to_ms(later)


def test_succeeding_sets_an_asset_id_and_remove_forgets_the_job() -> None:
    state = SimulatorState(seed=1)
    job = state.add_job(now=NOW, state=model.RESULT_REVIEW)
    state.step(NOW)
    assert job["state"] == model.SUCCEED
    assert job["asset_id"]
    state.remove_job(job["job_id"])
    assert state.jobs == {}
