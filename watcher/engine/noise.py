"""Noise control: silences, quiet hours, grouping and per-channel rate limits.

Pure decisions over plain data, in the spirit of Alertmanager's notify pipeline: each stage
says *why* it holds an alert back, and nothing is ever dropped: held alerts stay queued,
rate-limited ones are folded into the next message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from zoneinfo import ZoneInfo

from watcher.engine.messages import compose
from watcher.engine.rules import field_of
from watcher.model import (
    Alert,
    BodyFormat,
    ChannelPolicy,
    Event,
    NotifyType,
    OutboxItem,
    QuietHours,
    RuleConfig,
    Silence,
)


def group_key(event: Event, rule: RuleConfig) -> str:
    """Which alerts of a rule may share a message: the values of the rule's `group_by`."""
    return "|".join(f"{name}={_group_value(event, rule, name)}" for name in rule.group_by)


def _group_value(event: Event, rule: RuleConfig, name: str) -> object:
    if name == "rule":
        return rule.name
    return field_of(event, name)


# --- silences ---------------------------------------------------------------------------

LABEL_FIELDS = (
    "source",
    "kind",
    "job_id",
    "voice_name",
    "batch_name",
    "job_type",
    "state",
    "previous_state",
    "tag",
)


def labels_for(event: Event) -> dict[str, str]:
    """What silences can match on besides the alert's rule and channel."""
    out: dict[str, str] = {}
    for name in LABEL_FIELDS:
        value = field_of(event, name)
        if value is not None:
            out[name] = str(value)
    return out


# What `silence add --match` accepts: the labels plus the alert's rule and channel.
SILENCE_FIELDS = (*LABEL_FIELDS, "rule", "channel")


def silenced_by(alert: Alert, silences: Sequence[Silence], now: datetime) -> Silence | None:
    """The first active silence every matcher of which matches the alert, if any."""
    values = {**alert.labels, "rule": alert.rule, "channel": alert.channel}
    for silence in silences:
        if not silence.starts_at <= now < silence.ends_at:
            continue
        if all(
            name in values and fnmatchcase(values[name], pattern)
            for name, pattern in silence.matchers
        ):
            return silence
    return None


# --- quiet hours --------------------------------------------------------------------------


def quiet_until(quiet: QuietHours, now: datetime) -> datetime | None:
    """When the quiet window that `now` falls in ends, or None outside the window."""
    zone = ZoneInfo(quiet.timezone)
    local = now.astimezone(zone)
    start = local.replace(hour=quiet.start.hour, minute=quiet.start.minute, second=0, microsecond=0)
    end = local.replace(hour=quiet.end.hour, minute=quiet.end.minute, second=0, microsecond=0)
    if quiet.start == quiet.end:
        return None
    if quiet.start < quiet.end:  # same-day window, e.g. 12:00-14:00
        return end.astimezone(now.tzinfo) if start <= local < end else None
    # The window spans midnight, e.g. 22:00-07:00.
    if local >= start:
        return (end + timedelta(days=1)).astimezone(now.tzinfo)
    if local < end:
        return end.astimezone(now.tzinfo)
    return None


# --- planning messages --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One apprise notification: a single alert, or several folded together."""

    channel: str
    items: tuple[OutboxItem, ...]
    title: str
    body: str
    notify_type: NotifyType
    body_format: BodyFormat
    group_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Held:
    item_id: int
    until: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    messages: tuple[Message, ...]
    held: tuple[Held, ...]

    @property
    def next_wake(self) -> datetime | None:
        return min((h.until for h in self.held), default=None)


def plan(
    ready: Sequence[OutboxItem],
    now: datetime,
    *,
    rules: Mapping[str, RuleConfig],
    policies: Mapping[str, ChannelPolicy],
    recent_sends: Mapping[str, Sequence[datetime]],
    group_sent: Mapping[tuple[str, str], datetime],
) -> Plan:
    """Decide what goes out now, as which messages, and what waits (and until when).

    `ready` are due items in per-job order (see `delivery.deliverable`); `recent_sends` the
    times of messages each channel sent lately; `group_sent` when each group last went out.
    """
    held: list[Held] = []
    blocked_lanes: dict[tuple[str, str], datetime] = {}
    groups: dict[tuple[str, str], list[OutboxItem]] = {}
    for item in sorted(ready, key=lambda i: i.id):
        alert = item.alert
        lane = (alert.channel, f"{alert.source}|{alert.job_id}") if alert.job_id else None
        if lane is not None and lane in blocked_lanes:
            held.append(
                Held(item.id, blocked_lanes[lane], "waits for an earlier alert about the same job")
            )
            continue
        rule = rules.get(alert.rule)
        policy = policies.get(alert.channel)
        until = None
        if policy is not None and policy.quiet_hours is not None and not (rule and rule.urgent):
            until = quiet_until(policy.quiet_hours, now)
        if until is not None:
            held.append(Held(item.id, until, f"quiet hours on channel {alert.channel}"))
            if lane is not None:
                blocked_lanes[lane] = until
            continue
        key = alert.group_key if (rule is not None and alert.group_key) else f"#{item.id}"
        groups.setdefault((alert.channel, key), []).append(item)

    waiting: dict[tuple[str, str], list[OutboxItem]] = {}
    for (channel, key), items in groups.items():
        rule = rules.get(items[0].alert.rule)
        wait_until = None
        if rule is not None and rule.group_wait:
            wait_until = min(i.alert.created_at for i in items) + rule.group_wait
        last = group_sent.get((channel, key))
        if rule is not None and rule.group_interval and last is not None:
            wait_until = max(wait_until or now, last + rule.group_interval)
        if wait_until is not None and wait_until > now:
            held.extend(Held(i.id, wait_until, f"grouping ({key})") for i in items)
            continue
        waiting[(channel, key)] = items
    ready_groups = _respect_job_order(waiting, held, {i.id: i for i in ready})

    messages: list[Message] = []
    for channel, batch in ready_groups.items():
        batch.sort(key=lambda kv: kv[1][0].id)
        policy = policies.get(channel)
        limit = policy.max_per_minute if policy is not None else None
        if limit is None:
            messages.extend(render_group(channel, [key], items) for key, items in batch)
            continue
        window = [t for t in recent_sends.get(channel, ()) if now - t < timedelta(minutes=1)]
        room = limit - len(window)
        if room <= 0:
            until = min(window) + timedelta(minutes=1)
            for _key, items in batch:
                held.extend(
                    Held(i.id, until, f"rate limit of {limit}/min on channel {channel}")
                    for i in items
                )
            continue
        for key, items in batch[: room - 1]:
            messages.append(render_group(channel, [key], items))
        rest = batch[room - 1 :]
        if rest:
            # Everything beyond the limit goes out together, in the last message allowed.
            messages.append(
                render_group(channel, [k for k, _ in rest], [i for _, its in rest for i in its])
            )
    return Plan(tuple(messages), tuple(held))


def _lane(item: OutboxItem) -> tuple[str, str] | None:
    alert = item.alert
    return (alert.channel, f"{alert.source}|{alert.job_id}") if alert.job_id else None


def _respect_job_order(
    groups: dict[tuple[str, str], list[OutboxItem]],
    held: list[Held],
    items_by_id: Mapping[int, OutboxItem],
) -> dict[str, list[tuple[str, list[OutboxItem]]]]:
    """Hold a group back while an older alert about one of its jobs is held: grouping may
    delay one rule's alert and not another's, and per-job order must survive that."""
    pending = dict(groups)
    changed = True
    while changed:
        changed = False
        oldest: dict[tuple[str, str], Held] = {}
        for h in held:
            lane = _lane(items_by_id[h.item_id])
            if lane is not None and (lane not in oldest or h.item_id < oldest[lane].item_id):
                oldest[lane] = h
        for group_id, items in list(pending.items()):
            blocker = next(
                (
                    oldest[lane]
                    for i in items
                    if (lane := _lane(i)) in oldest and oldest[lane].item_id < i.id
                ),
                None,
            )
            if blocker is not None:
                held.extend(
                    Held(i.id, blocker.until, "waits for an earlier alert about the same job")
                    for i in items
                )
                del pending[group_id]
                changed = True
    ready: dict[str, list[tuple[str, list[OutboxItem]]]] = {}
    for (channel, key), items in pending.items():
        ready.setdefault(channel, []).append((key, items))
    return ready


def render_group(channel: str, keys: Sequence[str], items: Sequence[OutboxItem]) -> Message:
    """One message for items that go out together; composed by `watcher.engine.messages`."""
    items = sorted(items, key=lambda i: i.id)
    composed = compose(channel, keys, [i.alert for i in items], [i.id for i in items])
    return Message(
        channel,
        tuple(items),
        composed.title,
        composed.body,
        composed.notify_type,
        composed.body_format,
        tuple(keys),
    )
