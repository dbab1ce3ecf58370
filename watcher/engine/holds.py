"""Why each pending alert is not going out now, and until when: for `outbox` and `history`.

The same decisions the delivery pass makes (silences, retry backoff, per-job order, quiet
hours, grouping, rate limits), replayed over what the store holds, purely.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from watcher.engine.delivery import deliverable
from watcher.engine.noise import plan, silenced_by
from watcher.model import ChannelPolicy, OutboxItem, RuleConfig, Silence

__all__ = ["Hold", "explain_holds"]


@dataclass(frozen=True, slots=True)
class Hold:
    """A pending alert held back: until when, and by what."""

    until: datetime
    reason: str


def explain_holds(
    pending: Sequence[OutboxItem],
    now: datetime,
    *,
    rules: Mapping[str, RuleConfig],
    policies: Mapping[str, ChannelPolicy],
    silences: Sequence[Silence],
    recent_sends: Mapping[str, Sequence[datetime]],
    group_sent: Mapping[tuple[str, str], datetime] | None = None,
) -> dict[int, Hold]:
    """The hold of every pending item that would not go out in a delivery pass at `now`.

    Items absent from the result would be sent now. `recent_sends` (message times per
    channel) and `group_sent` are the daemon's memory; from outside it, pass what the store
    shows (times of recent sends) and nothing for groups: a group_interval hold is then missed.
    """
    holds: dict[int, Hold] = {}
    unsilenced: list[OutboxItem] = []
    for item in pending:
        silence = silenced_by(item.alert, silences, now) if silences else None
        if silence is not None:
            holds[item.id] = Hold(silence.ends_at, f"silence {silence.id}")
        else:
            unsilenced.append(item)
    due = deliverable(unsilenced, now)
    due_ids = {item.id for item in due}
    for item in unsilenced:
        if item.id in due_ids:
            continue
        if item.next_attempt_at > now:
            why = f"retry after {item.attempts} failed attempt(s)" if item.attempts else "queued"
            holds[item.id] = Hold(item.next_attempt_at, why)
    decided = plan(
        due,
        now,
        rules=rules,
        policies=policies,
        recent_sends=recent_sends,
        group_sent=group_sent or {},
    )
    for held in decided.held:
        holds[held.item_id] = Hold(held.until, held.reason)
    # Due but behind an earlier alert about the same job on the same channel (per-job order).
    by_lane: dict[tuple[str, str], datetime] = {}
    for item in sorted(unsilenced, key=lambda i: i.id):
        if not item.alert.job_id:
            continue
        lane = (item.alert.channel, f"{item.alert.source}|{item.alert.job_id}")
        if lane in by_lane and item.id not in holds:
            holds[item.id] = Hold(by_lane[lane], "waits for an earlier alert about the same job")
        if item.id in holds:
            by_lane.setdefault(lane, holds[item.id].until)
    return holds
