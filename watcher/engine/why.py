"""Why a job failed, as data and as words: the detail APIs' answers shaped for alerts.

Pure. `why` is a plain mapping kept in the event's details and the store (see
watcher.metastudio.details for the calls); `why_lines` says it in short lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from watcher.engine.shorten import MAX_TEXT, shorten
from watcher.model import AUDIT_FAILED, FAILED, SPLIT_FAILED, Event, EventKind, Job

AUDIT_RESULT = "audit-result"
OP_LOGS = "op-logs"
# Per failure, at most this many recordings are kept (a rejected batch may list hundreds).
MAX_ERRORS = 20
_EXPLAINED_KINDS = frozenset({EventKind.TRANSITION, EventKind.NEW, EventKind.REJECTED_AGAIN})


def detail_resource(event: Event) -> str | None:
    """Which detail API explains this event: the review result for a rejected review, the
    operation log for a failed split or training; None for anything else."""
    job = event.job
    if job is None or event.kind not in _EXPLAINED_KINDS:
        return None
    if job.state == AUDIT_FAILED:
        return AUDIT_RESULT
    if job.state in (FAILED, SPLIT_FAILED):
        return OP_LOGS
    return None


def failure_key(job: Job) -> str:
    """One failure of one job: a later rejection of the same job is a new failure."""
    return failure_key_of(job.job_id, job.state, job.reject_times, job.lastupdate_time)


def failure_key_of(
    job_id: str, state: str, reject_times: int | None, lastupdate_time: datetime | None
) -> str:
    """`failure_key` from a job's stored columns (the status page reads rows, not Jobs)."""
    stamp = lastupdate_time.isoformat() if lastupdate_time else ""
    return f"{job_id}|{state}|{reject_times}|{stamp}"


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def from_audit_result(body: Mapping[str, Any]) -> dict[str, Any]:
    """The review result as `why`: rejected recordings and the reviewer's message. The
    attachment's signed download link is dropped here, so it is never kept or shown."""
    system = body.get("system_audit_result") or {}
    admin = body.get("admin_audit_result") or {}
    raw_errors = system.get("errors") if isinstance(system, Mapping) else None
    errors = [
        {
            "audio_name": _text(e.get("audio_name")),
            "text_name": _text(e.get("text_name")),
            "error_code": _text(e.get("error_code")),
            "error_message": _text(e.get("error_message")),
        }
        for e in (raw_errors if isinstance(raw_errors, list) else [])
        if isinstance(e, Mapping)
    ]
    admin = admin if isinstance(admin, Mapping) else {}
    return {
        "available": True,
        "source": AUDIT_RESULT,
        "errors": errors[:MAX_ERRORS],
        "errors_total": len(errors),
        "reviewer_message": _text(admin.get("message")),
        "attachment_name": _text(admin.get("attachment_name")),
        "failure_reasons": [],
    }


def from_op_logs(body: Mapping[str, Any]) -> dict[str, Any]:
    """The operation log as `why`: the algorithm's and reviewers' failure reasons, in order."""
    operations = body.get("operations")
    reasons: list[str] = []
    actions: list[str] = []
    for op in operations if isinstance(operations, list) else []:
        if not isinstance(op, Mapping):
            continue
        if op.get("action"):
            actions.append(str(op["action"]))
        info = op.get("external_info")
        if not isinstance(info, Mapping):
            continue
        for key in ("algorithm_failure_reason", "admin_audit_failure_reason"):
            reason = _text(info.get(key))
            if reason is not None and reason not in reasons:
                reasons.append(reason)
    return {
        "available": True,
        "source": OP_LOGS,
        "errors": [],
        "reviewer_message": None,
        "failure_reasons": reasons,
        "last_action": actions[-1] if actions else None,
    }


def unavailable(resource: str, problem: str) -> dict[str, Any]:
    """`why` when the detail could not be had in time: the alert says so and goes out."""
    return {"available": False, "source": resource, "problem": problem}


def why_lines(why: Any, limit: int = MAX_TEXT) -> list[str]:
    """The fetched failure detail as short lines (recordings, reviewer, reasons)."""
    if not isinstance(why, Mapping):
        return []
    if not why.get("available", True):
        problem = shorten(str(why.get("problem") or "unknown"), limit)
        return [f"detail unavailable ({why.get('source') or 'detail API'}): {problem}"]
    lines = []
    for error in why.get("errors") or []:
        name = error.get("audio_name") or error.get("text_name") or "recording"
        if error.get("audio_name") and error.get("text_name"):
            name = f"{error['audio_name']} ({error['text_name']})"
        code = error.get("error_code")
        text = " ".join(p for p in (code, error.get("error_message")) if p)
        lines.append(shorten(f"{name}: {text or 'rejected'}", limit))
    total = why.get("errors_total")
    if isinstance(total, int) and total > len(why.get("errors") or []):
        lines.append(f"… {total - len(why.get('errors') or [])} more recordings rejected")
    if why.get("reviewer_message"):
        lines.append(shorten(f"reviewer: {why['reviewer_message']}", limit))
    for reason in why.get("failure_reasons") or []:
        lines.append(shorten(f"reason: {reason}", limit))
    if not lines:
        lines.append(f"{why.get('source') or 'the detail API'} gave no further detail")
    return lines
