"""The simulator's jobs, their lifecycle and the faults queued for the next API requests.

Pure apart from its seeded random generator: time is always passed in.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from watcher import model

JOB_TYPES = ("BASIC", "MIDDLE", "ADVANCE", "THIRD_PARTY", "THIRD_PARTY_LJZN", "FLEXUS")
TAGS = ("ECOMMERCE", "NEWS", "MARKETING", "LIVE", "EDUCATION", "CUSTOMER", "STORYTELLING")
_VOICE_NAMES = ("晓晓", "Anna", "Lei", "Mei", "Oliver", "Sofia", "云健", "Yara", "Kenji", "Nadia")
_BATCHES = ("spring-campaign", "news-desk", "batch-2024-12", "support-voices")

# The happy path, one step at a time, and the chance of failing instead of taking the step.
_NEXT: dict[str, str] = {
    model.CREATING: model.SYSTEM_AUDITING,
    model.SYSTEM_AUDITING: model.AUDITING,
    model.AUDITING: model.WAITING_SPLIT,
    model.WAITING_SPLIT: model.SPLITTING,
    model.SPLITTING: model.ANNOTATING,
    model.ANNOTATING: model.WAITING,
    model.WAITING: model.PROCESSING,
    model.PROCESSING: model.RESULT_REVIEW,
    model.RESULT_REVIEW: model.SUCCEED,
    # After a failed review the user uploads again and the job goes round.
    model.AUDIT_FAILED: model.UPLOADING,
    model.UPLOADING: model.SYSTEM_AUDITING,
    model.SPLIT_FAILED: model.UPLOADING,
}
_FAILURE: dict[str, tuple[str, float]] = {
    model.SYSTEM_AUDITING: (model.AUDIT_FAILED, 0.12),
    model.AUDITING: (model.AUDIT_FAILED, 0.08),
    model.SPLITTING: (model.SPLIT_FAILED, 0.05),
    model.PROCESSING: (model.FAILED, 0.05),
}
FAILURE_DETAILS: dict[str, tuple[str, str]] = {
    model.AUDIT_FAILED: ("MSS.00000102", "audio review failed: background noise too high"),
    model.SPLIT_FAILED: ("MSS.00000103", "sentence splitting failed: text and audio differ"),
    model.FAILED: ("MSS.00000104", "training failed: internal error"),
}
# The API's documented range for reject_times; past it the job gives up.
MAX_REJECTS = 10


class ApiBehaviour(StrEnum):
    """How much of the list API's query the simulator honours (regions differ).

    FULL: everything, including the undocumented update_since/update_until/sort_key/sort_dir
    (the demo's default). DOCUMENTED: only what the API page documents (state, create_since,
    create_until, job_id, voice_name, tag, job_type, batch_name), newest created first, and
    `state` validated against the 14 documented values (400 MSS.00000003 otherwise). PLAIN:
    offset/limit and the exact-match filters only; state, create_* and update_* are ignored.
    """

    FULL = "full"
    DOCUMENTED = "documented"
    PLAIN = "plain"


def to_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


@dataclass(slots=True)
class SimulatorState:
    """Every job as the API would return it (raw dicts, `phone` included), plus faults to play."""

    seed: int = 0
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Consumed one per API request, in order: see `watcher.simulator.app` for the kinds.
    faults: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    # Requests per kind ("show", "list", "list?state", "list?update_since", ...): what a
    # polling strategy costs, for tests and the benchmark.
    requests_by_kind: Counter[str] = field(default_factory=Counter)
    # Which region to act like: see ApiBehaviour.
    api_behaviour: ApiBehaviour = ApiBehaviour.FULL
    # Memoise sorted listings between changes (large simulations). Only safe when every
    # change goes through this class's methods, which bump `version`.
    cache_listings: bool = False
    version: int = 0
    # The listings of the current `version`, by query, when cache_listings is on: a few
    # entries, so that two kinds of request interleaved in one cycle (the update filter and
    # the active set, say) do not evict each other and re-sort a million jobs per page.
    listing_cache: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = field(
        default_factory=dict, repr=False
    )
    listing_cache_version: int = -1
    rng: random.Random = field(init=False)
    _occurrences: dict[str, Counter[str]] = field(default_factory=dict)
    _serial: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def ignore_update_filters(self) -> bool:
        """The older switch: a region ignoring the undocumented parameters (DOCUMENTED)."""
        return self.api_behaviour is not ApiBehaviour.FULL

    @ignore_update_filters.setter
    def ignore_update_filters(self, value: bool) -> None:
        self.api_behaviour = ApiBehaviour.DOCUMENTED if value else ApiBehaviour.FULL

    def _new_job_id(self) -> str:
        self._serial += 1
        return f"{self.rng.getrandbits(64):016x}{self._serial:04d}"

    def add_job(self, *, now: datetime | None = None, **fields: Any) -> dict[str, Any]:
        """Create a job (random realistic values for any field not given) and return it."""
        when = to_ms(now or datetime.now(UTC))
        rng = self.rng
        job: dict[str, Any] = {
            "job_id": self._new_job_id(),
            "job_type": rng.choice(JOB_TYPES),
            "app_user_id": f"user{rng.randrange(1000):03d}",
            "voice_name": rng.choice(_VOICE_NAMES),
            "sex": rng.choice(("FEMALE", "MALE")),
            "language": "CN",
            "state": model.CREATING,
            "reject_times": 1,
            "create_time": when,
            "lastupdate_time": when,
            "voice_authorization_url": f"https://bucket.example/auth/{rng.getrandbits(32):08x}",
            "create_type": rng.choice(("PACKAGE", "SEGMENT")),
            "tag": rng.choice(TAGS),
            # Fake personal data, so leak tests have something to catch.
            "phone": f"138{rng.randrange(10**8):08d}",
            "batch_name": rng.choice(_BATCHES),
            "output_language": "CN",
        }
        job.update(fields)
        self.jobs[job["job_id"]] = job
        self.version += 1
        self._occurrences[job["job_id"]] = Counter({job["state"]: 1})
        return job

    def set_state(
        self, job_id: str, state: str, *, now: datetime | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Move a job to `state` as the real service would record it; KeyError if unknown."""
        job = self.jobs[job_id]
        seen = self._occurrences.setdefault(job_id, Counter())
        seen[state] += 1
        job["state"] = state
        # The API documents reject_times as how often the current state occurred in this job.
        job["reject_times"] = min(seen[state], MAX_REJECTS)
        job["lastupdate_time"] = to_ms(now or datetime.now(UTC))
        if state in model.FAILURE_STATES:
            code, reason = FAILURE_DETAILS.get(state, ("MSS.00000000", "failed"))
            job["job_failed_code"] = code
            job["job_failed_reason"] = reason
        else:
            job.pop("job_failed_code", None)
            job.pop("job_failed_reason", None)
        if state == model.SUCCEED:
            job["asset_id"] = f"asset-{self.rng.getrandbits(48):012x}"
        job.update(fields)
        self.version += 1
        return job

    def update_fields(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Change fields without a state change (nor a new lastupdate_time unless given)."""
        job = self.jobs[job_id]
        job.update(fields)
        self.version += 1
        return job

    def remove_job(self, job_id: str) -> None:
        self.version += 1
        self.jobs.pop(job_id, None)
        self._occurrences.pop(job_id, None)

    def next_state(self, state: str, reject_times: int) -> str | None:
        """Where a job in `state` goes on the next step; None once it has settled."""
        if state in model.SETTLED_STATES or state not in _NEXT:
            return None
        if state == model.AUDIT_FAILED and reject_times >= MAX_REJECTS:
            return model.FAILED
        failure = _FAILURE.get(state)
        if failure is not None and self.rng.random() < failure[1]:
            return failure[0]
        return _NEXT[state]

    def step(self, now: datetime) -> list[tuple[str, str, str]]:
        """Advance every unsettled job by one step; returns (job_id, old, new) per change."""
        changes: list[tuple[str, str, str]] = []
        for job_id in sorted(self.jobs):
            job = self.jobs[job_id]
            old = job["state"]
            new = self.next_state(old, int(job.get("reject_times") or 0))
            if new is not None:
                self.set_state(job_id, new, now=now)
                changes.append((job_id, old, new))
        return changes

    def populate(self, n: int, now: datetime) -> list[dict[str, Any]]:
        """Create `n` jobs spread over the last days, at varied points of their lifecycle."""
        created = []
        now_ms = to_ms(now)
        for _ in range(n):
            created_ms = now_ms - self.rng.randrange(1, 7 * 24 * 3600) * 1000
            job = self.add_job(now=now, create_time=created_ms, lastupdate_time=created_ms)
            for _ in range(self.rng.randrange(0, 6)):
                new = self.next_state(job["state"], int(job["reject_times"]))
                if new is None:
                    break
                self.set_state(job["job_id"], new, now=now)
            created.append(job)
        return created
