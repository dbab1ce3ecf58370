"""Noise control's vocabulary: group keys, silence labels and matching, quiet windows, messages.

Pure predicates and message rendering over plain data; `watcher.engine.pipeline` applies them
as ordered stages, and nothing is ever dropped there: held alerts stay queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from zoneinfo import ZoneInfo

from watcher.engine.messages import compose
from watcher.engine.rules import field_of
from watcher.model import (
    Alert,
    BodyFormat,
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


# --- messages (the pipeline's stages are in watcher.engine.pipeline) ----------------------


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
