"""The simulator's audit-result and op-logs endpoints: signed, realistic, and faultable."""

from __future__ import annotations

from tests.simulator.conftest import PROJECT, Sim
from watcher.engine.why import from_audit_result, from_op_logs

BASE = f"/v1/{PROJECT}/voice-training-manage/user/jobs"


async def test_audit_result_lists_rejected_recordings_in_two_languages(sim: Sim) -> None:
    job = sim.state.add_job(state="AUDITING")
    sim.state.set_state(job["job_id"], "AUDIT_FAILED", reject_times=2)
    status, body, _ = await sim.get([], path=f"{BASE}/{job['job_id']}/audit-result")
    assert status == 200
    errors = body["system_audit_result"]["errors"]
    assert errors
    assert all(e["audio_name"].endswith(".wav") and e["text_name"].endswith(".txt") for e in errors)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in errors[0]["error_message"])
    assert "(" in errors[0]["error_message"]  # the English gloss
    admin = body["admin_audit_result"]
    assert admin["message"] and admin["attachment_url"].startswith("https://")
    # The same job tells the same story on every call.
    assert (await sim.get([], path=f"{BASE}/{job['job_id']}/audit-result"))[1] == body
    why = from_audit_result(body)
    assert "attachment_url" not in str(why)
    assert why["reviewer_message"] == admin["message"]


async def test_op_logs_carry_the_algorithms_failure_reason_and_page(sim: Sim) -> None:
    job = sim.state.add_job(state="PROCESSING")
    sim.state.set_state(job["job_id"], "FAILED")
    path = f"{BASE}/{job['job_id']}/op-logs"
    status, body, _ = await sim.get([("limit", "10"), ("offset", "0")], path=path)
    assert status == 200
    assert body["count"] == len(body["operations"]) == 4
    assert body["operations"][0]["action"] == "CREATE_JOB"
    assert from_op_logs(body)["failure_reasons"] == [
        "训练失败：有效音频时长不足 (effective audio shorter than required)"
    ]
    _, page, _ = await sim.get([("limit", "2"), ("offset", "2")], path=path)
    assert [op["action"] for op in page["operations"]] == ["SYSTEM_AUDIT_PASS", "TRAINING_FINISH"]


async def test_detail_endpoints_check_the_signature_and_the_job(sim: Sim) -> None:
    job = sim.state.add_job(state="AUDITING")
    path = f"{BASE}/{job['job_id']}/audit-result"
    status, body, _ = await sim.get([], path=path, sk="wrong-secret")
    assert (status, body["error_code"]) == (401, "APIGW.0301")
    status, body, _ = await sim.get([], path=f"{BASE}/no-such-job/op-logs")
    assert (status, body["error_code"]) == (404, "MSS.00000004")
    status, body, _ = await sim.get([], path=path)
    assert (status, body) == (200, {})  # never reviewed: nothing to say


async def test_detail_faults_play_in_order(sim: Sim) -> None:
    job = sim.state.add_job(state="AUDITING")
    path = f"{BASE}/{job['job_id']}/audit-result"
    async with sim.session.post(
        sim.base_url + "/_sim/detail-faults",
        json=[{"kind": "status", "status": 503}, {"kind": "missing"}],
    ) as resp:
        assert (await resp.json())["faults_pending"] == 2
    assert (await sim.get([], path=path))[0] == 503
    assert (await sim.get([], path=path))[0] == 404
    assert (await sim.get([], path=path))[0] == 200
    assert sim.state.requests_by_kind["audit-result"] == 3
