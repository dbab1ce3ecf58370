"""The events `route` asks about: what the daemon would raise, built from a few facts.

Pure. Each kind gets the shape the engine gives it (a job or none, previous state, reason in
the same words), so the rule decisions `route` prints are the daemon's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from watcher.model import AUDIT_FAILED, SUCCEED, Event, EventKind, Job

# Kinds that are about one job; the others (batches, source health, digests) have none.
JOB_KINDS = frozenset(
    {
        EventKind.TRANSITION,
        EventKind.REJECTED_AGAIN,
        EventKind.NEW,
        EventKind.VANISHED,
        EventKind.REAPPEARED,
        EventKind.STUCK,
        EventKind.RECOVERED,
    }
)
PROBE_JOB_ID = "route-test-job"


class ProbeError(ValueError):
    """The facts given do not make an event the daemon could raise (a usage error)."""


@dataclass(frozen=True, slots=True)
class Facts:
    kind: EventKind
    source: str
    state: str | None = None
    from_state: str | None = None
    job_type: str | None = None
    voice_name: str | None = None
    batch_name: str | None = None


def probe_event(facts: Facts, now: datetime) -> Event:
    """The event the daemon would raise for these facts; ProbeError when they do not fit."""
    kind = facts.kind
    if kind not in JOB_KINDS:
        extra = [
            name
            for name, value in (
                ("--state", facts.state),
                ("--from", facts.from_state),
                ("--job-type", facts.job_type),
                ("--voice-name", facts.voice_name),
            )
            if value is not None
        ]
        if extra:
            raise ProbeError(f"{', '.join(extra)} do(es) not apply to {kind}: it is about no job")
        return _job_less(facts, now)
    if facts.state is None:
        raise ProbeError(f"{kind} is about a job: give its state with --state")
    if kind is EventKind.RECOVERED and facts.state != SUCCEED:
        raise ProbeError(f"recovered is a job reaching SUCCEED, not {facts.state}")
    job = Job(
        job_id=PROBE_JOB_ID,
        state=facts.state,
        reject_times=2 if kind is EventKind.REJECTED_AGAIN else 1,
        lastupdate_time=now,
        voice_name=facts.voice_name,
        job_type=facts.job_type,
        batch_name=facts.batch_name,
    )
    previous = facts.from_state
    reason: str
    note = None
    subject = None
    if kind is EventKind.TRANSITION:
        reason = f"job {job.job_id} went from {previous} to {job.state}"
        if previous is None:
            # Rules with from: need it; others match whatever the job came from.
            reason = f"job {job.job_id} went to {job.state} (from a state not given: --from)"
    elif kind is EventKind.REJECTED_AGAIN:
        previous = previous or job.state
        reason = f"job {job.job_id} is {job.state} again (reject_times 1 → 2)"
        note = "the job was re-submitted and failed again between two polls"
    elif kind is EventKind.NEW:
        reason = f"new job {job.job_id} first seen in state {job.state}"
    elif kind is EventKind.REAPPEARED:
        reason = f"job {job.job_id} is back, in state {job.state}"
    elif kind is EventKind.VANISHED:
        previous = job.state
        reason = f"job {job.job_id} ({job.state}) is no longer listed (3 complete scans in a row)"
    elif kind is EventKind.STUCK:
        previous = job.state
        reason = f"job {job.job_id} is {job.state} after 1d (a stuck rule's for:)"
        subject = None  # every stuck rule is asked; the daemon's event names one rule
    else:  # recovered
        previous = previous or AUDIT_FAILED
        reason = f"job {job.job_id} succeeded after 1 rejection, 2h after the first"
    return Event(
        kind,
        facts.source,
        now,
        reason,
        job=job,
        previous_state=previous,
        note=note,
        subject=subject,
    )


def _job_less(facts: Facts, now: datetime) -> Event:
    kind, source = facts.kind, facts.source
    batch = facts.batch_name or "sample-batch"
    if kind is EventKind.BATCH_SETTLED:
        counts = {"SUCCEED": 4, "FAILED": 1}
        return Event(
            kind,
            source,
            now,
            f"batch {batch} settled: 4 SUCCEED, 1 FAILED (MSS.00000104 training failed ×1)",
            subject=f"{batch}|settled",
            details={"batch_name": batch, "counts": counts},
        )
    if kind is EventKind.BATCH_UPDATED:
        return Event(
            kind,
            source,
            now,
            f"batch {batch} changed after it settled: was 4 SUCCEED, 1 FAILED, now 5 SUCCEED",
            subject=f"{batch}|update",
            details={"batch_name": batch, "counts": {"SUCCEED": 5}},
        )
    if kind is EventKind.SOURCE_UNHEALTHY:
        return Event(
            kind,
            source,
            now,
            f"source {source} has failed to poll for 3m: credentials rejected (APIGW.0301)",
            subject=f"unhealthy|{(now - timedelta(minutes=3)).isoformat()}",
        )
    if kind is EventKind.SOURCE_RECOVERED:
        return Event(
            kind,
            source,
            now,
            f"source {source} is polled successfully again after 12m",
            subject=f"recovered|{now.isoformat()}",
        )
    return Event(
        kind,
        source,
        now,
        f"{source}: watching 120 jobs: 3 jobs AUDIT_FAILED, 40 in progress, 77 SUCCEED",
        subject=f"summary|{now.isoformat()}",
    )
