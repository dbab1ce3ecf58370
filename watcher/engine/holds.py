"""Why each pending alert is not going out now, and until when: for `outbox` and `history`.

The delivery pipeline's own decisions (engine.pipeline.plan: silences, retry schedule, per-job
order, quiet hours, grouping, rate limits), replayed over what the store holds, purely.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from watcher.engine.delivery import first_wait
from watcher.engine.pipeline import plan
from watcher.model import ChannelPolicy, OutboxItem, RuleConfig, SentMessage, Silence

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
    silences: Sequence[Silence] = (),
    sent: Sequence[SentMessage] = (),
) -> dict[int, Hold]:
    """The hold of every pending item that a delivery pass at `now` would not send.

    Items absent from the result would go out now. Retry waits come from what is stored
    (`first_wait`), as a daemon that has just started would see them.
    """
    waits = {
        item.id: timedelta(seconds=wait) for item in pending if (wait := first_wait(item, now)) > 0
    }
    decided = plan(
        pending, now, rules=rules, policies=policies, silences=silences, sent=sent, waits=waits
    )
    holds: dict[int, Hold] = {}
    for held in decided.held:
        known = holds.get(held.item_id)
        if known is None or held.until > known.until:
            holds[held.item_id] = Hold(held.until, held.reason)
    for silenced in decided.silenced:
        silence = silenced.silence
        holds[silenced.item.id] = Hold(silence.ends_at, f"silence {silence.id}")
    return holds
