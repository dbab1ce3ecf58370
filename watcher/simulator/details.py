"""The simulator's two detail endpoints: a job's review result and its operation log.

`GET …/jobs/{job_id}/audit-result` and `…/op-logs`, signed and checked like the list call,
with realistic bilingual content derived from the job, and their own fault queue.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from watcher import model

if TYPE_CHECKING:
    from watcher.simulator.app import SimulatorApi

# (error_message as the service writes it, Chinese first) per rejected-recording problem.
_RECORDING_PROBLEMS = (
    "录音背景噪声过大，请在安静环境中重新录制 (background noise too high)",
    "录音内容与文本不一致 (speech does not match the text)",
    "录音音量过低 (volume too low)",
    "录音存在爆音 (clipping detected)",
)
_REVIEWER_MESSAGES = (
    "第{n:03d}句录音与文本不一致，请按文本重新录制。Recording {n:03d} does not match its "
    "text; please re-record it.",
    "多条录音有明显回声，请更换录音环境。Several recordings echo; please record in a quieter room.",
)
_ALGORITHM_REASONS = {
    model.FAILED: "训练失败：有效音频时长不足 (effective audio shorter than required)",
    model.SPLIT_FAILED: "切分失败：文本与音频无法对齐 (text and audio could not be aligned)",
}


@dataclass(slots=True)
class DetailService:
    """The two endpoints' state: faults to play, one per request, in order.

    Fault kinds: {"kind": "slow", "seconds": 3}, {"kind": "status", "status": 503,
    "error_code": "MSS.00000001"}, {"kind": "missing"} (answers 404 whatever the job)."""

    api: SimulatorApi
    faults: list[dict[str, Any]] = field(default_factory=list)

    async def audit_result(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "audit-result")

    async def op_logs(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "op-logs")

    async def control(self, request: web.Request) -> web.Response:
        """`POST /_sim/detail-faults [{...}]`: queue faults for the detail endpoints."""
        faults = await request.json()
        self.faults.extend(faults if isinstance(faults, list) else [faults])
        return web.json_response({"faults_pending": len(self.faults)})

    async def _serve(self, request: web.Request, resource: str) -> web.StreamResponse:
        # The gateway's failure type lives with the list endpoints (app imports this module).
        from watcher.simulator.app import _ApiFailure, _error

        api = self.api
        # Counted by kind only: `requests` stays the listing cost that polling tests measure.
        api.state.requests_by_kind[resource] += 1
        request_id = uuid.uuid4().hex
        response: web.StreamResponse
        try:
            response = await self._answer(request, resource, request_id)
        except _ApiFailure as failure:
            response = _error(failure.status, failure.code, failure.message, request_id)
        response.headers["X-Request-Id"] = request_id
        response.headers["Date"] = format_datetime(api.clock(), usegmt=True)
        return response

    async def _answer(
        self, request: web.Request, resource: str, request_id: str
    ) -> web.StreamResponse:
        from watcher.simulator.app import _ApiFailure, _error

        fault = self.faults.pop(0) if self.faults else {}
        if fault.get("kind") == "slow":
            await asyncio.sleep(float(fault.get("seconds", 5)))
        if fault.get("kind") == "status":
            code = str(fault.get("error_code", "MSS.00000001"))
            return _error(int(fault.get("status", 503)), code, "simulated failure", request_id)
        self.api._check_auth(request)
        if request.match_info["project_id"] != self.api.project_id:
            raise _ApiFailure(403, "APIGW.0310", "The project is unavailable or does not match")
        job = self.api.state.jobs.get(request.match_info["job_id"])
        if job is None or fault.get("kind") == "missing":
            raise _ApiFailure(404, "MSS.00000004", "job not found")
        if resource == "audit-result":
            return web.json_response(audit_result(job))
        query = request.rel_url.query
        offset, limit = int(query.get("offset", "0")), int(query.get("limit", "10"))
        return web.json_response(op_logs(job, offset, limit))


DETAILS_KEY = web.AppKey("details", DetailService)


def _rng(job: dict[str, Any]) -> random.Random:
    # The same job always tells the same story (a seeded generator per job and rejection).
    return random.Random(f"{job['job_id']}|{job.get('reject_times')}")


def audit_result(job: dict[str, Any]) -> dict[str, Any]:
    """What review said: per-recording errors, and the reviewer's words on later rejections."""
    if job.get("state") != model.AUDIT_FAILED:
        return {}
    rng = _rng(job)
    when = int(job.get("lastupdate_time") or 0) // 1000
    numbers = sorted(rng.sample(range(1, 120), rng.randint(1, 3)))
    errors = [
        {
            "audio_name": f"{n:03d}.wav",
            "text_name": f"{n:03d}.txt",
            "error_code": job.get("job_failed_code") or "MSS.00000102",
            "error_message": rng.choice(_RECORDING_PROBLEMS),
        }
        for n in numbers
    ]
    out: dict[str, Any] = {"system_audit_result": {"audit_time": when, "errors": errors}}
    if int(job.get("reject_times") or 1) >= 2 or rng.random() < 0.5:
        out["admin_audit_result"] = {
            "message": rng.choice(_REVIEWER_MESSAGES).format(n=numbers[0]),
            "attachment_name": "review-notes.pdf",
            # A signed download link: the watcher must never log or show it.
            "attachment_url": (
                f"https://obs.example.com/review/{job['job_id']}.pdf"
                f"?AccessKeyId=SIMULATED&Signature=sim-{rng.getrandbits(64):016x}"
            ),
            "audit_time": when,
        }
    return out


def op_logs(job: dict[str, Any], offset: int, limit: int) -> dict[str, Any]:
    """The job's history as the service logs it, with the failure reason on the failing step."""
    created = int(job.get("create_time") or 0) // 1000
    updated = int(job.get("lastupdate_time") or 0) // 1000
    steps: list[dict[str, Any]] = [
        {"time": created, "action": "CREATE_JOB", "operator": "USER", "external_info": {}},
        {"time": created + 5, "action": "COMMIT_JOB", "operator": "USER", "external_info": {}},
    ]
    state = job.get("state")
    if state in _ALGORITHM_REASONS:
        steps.append(
            {"time": created + 60, "action": "SYSTEM_AUDIT_PASS", "operator": "SYSTEM"}
            | {"external_info": {}}
        )
        steps.append(
            {
                "time": updated,
                "action": "AUDIT_NOT_PASS" if state == model.SPLIT_FAILED else "TRAINING_FINISH",
                "operator": "SYSTEM",
                "external_info": {
                    "review_id_list": [f"rv-{job['job_id'][-6:]}"],
                    "algorithm_failure_reason": _ALGORITHM_REASONS[str(state)],
                },
            }
        )
    return {"count": len(steps), "operations": steps[offset : offset + limit]}


def add_detail_routes(app: web.Application, api: SimulatorApi) -> DetailService:
    service = DetailService(api)
    app[DETAILS_KEY] = service
    base = "/v1/{project_id}/voice-training-manage/user/jobs/{job_id}"
    app.router.add_get(base + "/audit-result", service.audit_result)
    app.router.add_get(base + "/op-logs", service.op_logs)
    app.router.add_post("/_sim/detail-faults", service.control)
    return service
