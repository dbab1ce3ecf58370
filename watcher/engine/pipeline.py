"""The delivery pipeline: which pending alerts go out now, as which messages, and why others wait.

Pure stages over plain data, applied in one ordered place (`plan`), as in Alertmanager's notify
pipeline: silence, retry schedule, per-job order, quiet hours, grouping, rate limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from watcher.engine.noise import Message, quiet_until, render_group, silenced_by
from watcher.model import (
    Alert,
    ChannelPolicy,
    OutboxItem,
    RuleConfig,
    SentMessage,
    Silence,
)

RATE_WINDOW = timedelta(minutes=1)
T = TypeVar("T")

# One job's alerts on one channel: they reach that channel in the order they were detected.
Lane = tuple[str, str, str]  # (channel, source, job_id)


def lane(alert: Alert) -> Lane | None:
    """The per-job order lane of an alert; job-less alerts (source health) have none."""
    return (alert.channel, alert.source, alert.job_id) if alert.job_id else None


@dataclass(frozen=True, slots=True)
class Held:
    """An alert that stays queued until at least `until`, and why."""

    item: OutboxItem
    until: datetime
    reason: str

    @property
    def item_id(self) -> int:
        return self.item.id


@dataclass(frozen=True, slots=True)
class Silenced:
    item: OutboxItem
    silence: Silence


@dataclass(frozen=True, slots=True)
class Group:
    """Alerts of one channel that go out as one message; `keys` are their group keys."""

    channel: str
    keys: tuple[str, ...]
    items: tuple[OutboxItem, ...]

    @property
    def first_id(self) -> int:
        return min(i.id for i in self.items)


@dataclass(frozen=True, slots=True)
class Step(Generic[T]):
    """What one stage lets through, and what it holds back (with the reason)."""

    passed: tuple[T, ...]
    held: tuple[Held, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    messages: tuple[Message, ...]
    held: tuple[Held, ...]
    silenced: tuple[Silenced, ...] = ()

    @property
    def next_wake(self) -> datetime | None:
        return min((h.until for h in self.held), default=None)


# --- the stages, in pipeline order -------------------------------------------------------------


def silence(
    items: Sequence[OutboxItem], silences: Sequence[Silence], now: datetime
) -> tuple[tuple[OutboxItem, ...], tuple[Silenced, ...]]:
    """Alerts an active silence matches never go out; the rest pass."""
    passed: list[OutboxItem] = []
    silenced: list[Silenced] = []
    for item in items:
        match = silenced_by(item.alert, silences, now) if silences else None
        if match is None:
            passed.append(item)
        else:
            silenced.append(Silenced(item, match))
    return tuple(passed), tuple(silenced)


def retry_schedule(
    items: Sequence[OutboxItem], waits: Mapping[int, timedelta], now: datetime
) -> Step[OutboxItem]:
    """An alert backing off after a failed send waits out its delay.

    `waits` says how long each one still has to wait; the shell measures it on a monotonic
    clock, so a step of the wall clock neither stalls nor rushes a retry.
    """
    passed: list[OutboxItem] = []
    held: list[Held] = []
    for item in items:
        wait = waits.get(item.id, timedelta(0))
        if wait > timedelta(0):
            held.append(Held(item, now + wait, f"attempt {item.attempts + 1} in {_secs(wait)}"))
        else:
            passed.append(item)
    return Step(tuple(passed), tuple(held))


def job_order(items: Sequence[OutboxItem], blockers: Iterable[Held]) -> Step[OutboxItem]:
    """The per-job order rule, the only place it is written: an alert waits while an earlier
    alert in its lane (same channel, source and job) is held, for as long as that one."""
    first: dict[Lane, Held] = {}
    for held in blockers:
        key = lane(held.item.alert)
        if key is not None and (key not in first or held.item.id < first[key].item.id):
            first[key] = held
    passed: list[OutboxItem] = []
    waiting: list[Held] = []
    for item in items:
        key = lane(item.alert)
        blocker = first.get(key) if key is not None else None
        if blocker is not None and blocker.item.id < item.id:
            reason = f"waits for alert {blocker.item.id} about the same job ({blocker.reason})"
            waiting.append(Held(item, blocker.until, reason))
        else:
            passed.append(item)
    return Step(tuple(passed), tuple(waiting))


def quiet_hours(
    items: Sequence[OutboxItem],
    rules: Mapping[str, RuleConfig],
    policies: Mapping[str, ChannelPolicy],
    now: datetime,
) -> Step[OutboxItem]:
    """A channel's quiet hours hold its alerts until they end, except urgent rules'."""
    passed: list[OutboxItem] = []
    held: list[Held] = []
    for item in items:
        alert = item.alert
        rule = rules.get(alert.rule)
        policy = policies.get(alert.channel)
        until = None
        if policy is not None and policy.quiet_hours is not None and not (rule and rule.urgent):
            until = quiet_until(policy.quiet_hours, now)
        if until is None:
            passed.append(item)
        else:
            held.append(Held(item, until, f"quiet hours on channel {alert.channel}"))
    return Step(tuple(passed), tuple(held))


def grouping(
    items: Sequence[OutboxItem],
    rules: Mapping[str, RuleConfig],
    sent: Sequence[SentMessage],
    now: datetime,
) -> Step[Group]:
    """Alerts of one rule with the same group key share a message, after `group_wait` (from
    the group's oldest alert) and at most one message per `group_interval` (from the send log).
    """
    last_sent: dict[tuple[str, str], datetime] = {}
    for message in sent:
        # A send logged ahead of the clock (it stepped back) counts as sent now.
        at = min(message.sent_at, now)
        for key in message.group_keys:
            known = last_sent.get((message.channel, key))
            if known is None or at > known:
                last_sent[(message.channel, key)] = at
    groups: dict[tuple[str, str], list[OutboxItem]] = {}
    for item in sorted(items, key=lambda i: i.id):
        alert = item.alert
        key = alert.group_key if alert.rule in rules and alert.group_key else f"#{item.id}"
        groups.setdefault((alert.channel, key), []).append(item)
    passed: list[Group] = []
    held: list[Held] = []
    for (channel, key), members in groups.items():
        rule = rules.get(members[0].alert.rule)
        wait_until = None
        if rule is not None and rule.group_wait:
            wait_until = min(i.alert.created_at for i in members) + rule.group_wait
        last = last_sent.get((channel, key))
        if rule is not None and rule.group_interval and last is not None:
            wait_until = max(wait_until or now, last + rule.group_interval)
        if wait_until is not None and wait_until > now:
            held.extend(Held(i, wait_until, f"grouping ({key})") for i in members)
        else:
            passed.append(Group(channel, (key,), tuple(members)))
    return Step(tuple(passed), tuple(held))


def rate_limit(
    groups: Sequence[Group],
    policies: Mapping[str, ChannelPolicy],
    sent: Sequence[SentMessage],
    now: datetime,
) -> Step[Group]:
    """At most `max_per_minute` messages per channel (counted in the send log); what is over
    the limit is folded into the last message allowed, and nothing is dropped."""
    by_channel: dict[str, list[Group]] = {}
    for group in sorted(groups, key=lambda g: g.first_id):
        by_channel.setdefault(group.channel, []).append(group)
    passed: list[Group] = []
    held: list[Held] = []
    for channel, batch in by_channel.items():
        policy = policies.get(channel)
        limit = policy.max_per_minute if policy is not None else None
        if limit is None:
            passed.extend(batch)
            continue
        # A send logged ahead of the clock (it stepped back) counts as sent now.
        window = [
            at
            for m in sent
            if m.channel == channel and now - (at := min(m.sent_at, now)) < RATE_WINDOW
        ]
        room = limit - len(window)
        if room <= 0:
            until = min(window) + RATE_WINDOW
            reason = f"rate limit of {limit}/min on channel {channel}"
            held.extend(Held(i, until, reason) for g in batch for i in g.items)
            continue
        passed.extend(batch[: room - 1])
        rest = batch[room - 1 :]
        if rest:
            passed.append(
                Group(
                    channel,
                    tuple(k for g in rest for k in g.keys),
                    tuple(i for g in rest for i in g.items),
                )
            )
    return Step(tuple(passed), tuple(held))


# --- the pipeline ------------------------------------------------------------------------------


def plan(
    pending: Sequence[OutboxItem],
    now: datetime,
    *,
    rules: Mapping[str, RuleConfig],
    policies: Mapping[str, ChannelPolicy],
    silences: Sequence[Silence] = (),
    sent: Sequence[SentMessage] = (),
    waits: Mapping[int, timedelta] | None = None,
) -> Plan:
    """Decide what goes out now, as which messages, and what waits (and until when).

    `pending` is the whole pending outbox, `sent` the recent send log, `waits` how long each
    backing-off alert still waits. After every stage that holds something back, `job_order`
    holds the later alerts of the same jobs too.
    """
    items = tuple(sorted(pending, key=lambda i: i.id))
    items, silenced = silence(items, silences, now)
    held: list[Held] = []

    def keep_order(
        step_passed: Sequence[OutboxItem], step_held: Sequence[Held]
    ) -> list[OutboxItem]:
        held.extend(step_held)
        ordered = job_order(step_passed, held)
        held.extend(ordered.held)
        return list(ordered.passed)

    step = retry_schedule(items, waits or {}, now)
    ready = keep_order(step.passed, step.held)
    step = quiet_hours(ready, rules, policies, now)
    ready = keep_order(step.passed, step.held)
    grouped = grouping(ready, rules, sent, now)
    groups = _regroup(grouped.passed, keep_order(_members(grouped.passed), grouped.held))
    limited = rate_limit(groups, policies, sent, now)
    groups = _regroup(limited.passed, keep_order(_members(limited.passed), limited.held))
    messages = _in_job_order(groups, held, now)
    return Plan(tuple(messages), tuple(held), silenced)


def _members(groups: Sequence[Group]) -> list[OutboxItem]:
    return [i for g in groups for i in g.items]


def _regroup(groups: Sequence[Group], kept: Sequence[OutboxItem]) -> list[Group]:
    """The groups with only the members `job_order` let through (empty groups go)."""
    ids = {i.id for i in kept}
    out = []
    for group in groups:
        members = tuple(i for i in group.items if i.id in ids)
        if members:
            out.append(Group(group.channel, group.keys, members))
    return out


def _in_job_order(groups: Sequence[Group], held: list[Held], now: datetime) -> list[Message]:
    """Each channel's messages go one after another, oldest first. Two groups can interleave
    one job's alerts (5 and 9 in one, 7 in the other): the later alert then waits for the
    next pass, so the send order is still the detection order."""
    messages: list[Message] = []
    ordered = sorted(groups, key=lambda g: g.first_id)
    for index, group in enumerate(ordered):
        later = [
            Held(i, now, "goes after an earlier alert in another message")
            for g in ordered[index + 1 :]
            for i in g.items
        ]
        step = job_order(group.items, [*later, *held])
        held.extend(step.held)
        if step.passed:
            messages.append(render_group(group.channel, list(group.keys), step.passed))
    return messages


def _secs(delta: timedelta) -> str:
    return f"{delta.total_seconds():.0f}s"
