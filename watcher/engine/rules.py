"""Rule matching: which configured rules an event satisfies, and why (or why not).

Pure. Rules are evaluated in order; a matching rule with `continue: false` stops the walk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from watcher.model import Event, EventKind, RuleConfig

# Kinds a rule sees when it does not list `events:`: the ones that need no extra setting.
DEFAULT_EVENT_KINDS: frozenset[EventKind] = frozenset(EventKind) - {
    EventKind.STUCK,
    EventKind.VANISHED,
}


@dataclass(frozen=True, slots=True)
class RuleDecision:
    """Whether one rule matched one event, with the reason in words (for logs and `route`)."""

    rule: RuleConfig
    matched: bool
    reason: str


def event_state(event: Event) -> str | None:
    """The state an event is about: the job's current state, if the event has a job."""
    return event.job.state if event.job is not None else None


def decide(rule: RuleConfig, event: Event) -> RuleDecision:
    """Does `rule` match `event`? Always says why, like Alertmanager's dedup stage."""
    kinds = frozenset(rule.events) if rule.events is not None else DEFAULT_EVENT_KINDS
    if rule.for_ is not None and rule.events is None:
        kinds = frozenset({EventKind.STUCK})
    if event.kind not in kinds:
        listed = ", ".join(sorted(str(k) for k in kinds))
        return RuleDecision(rule, False, f"event kind {event.kind} is not one of: {listed}")
    if event.kind is EventKind.STUCK and event.subject not in (None, rule.name):
        # A stuck event is raised by one rule's `for:` threshold and belongs to that rule.
        return RuleDecision(rule, False, f"stuck event belongs to rule {event.subject!r}")
    state = event_state(event)
    if "*" not in rule.on and (state is None or state not in rule.on):
        wanted = ", ".join(rule.on)
        if state is None:
            # A job-less event (a batch, a source) has no state: only `on: ["*"]` takes it.
            return RuleDecision(rule, False, f"{event.kind} is about no job; on: needs {wanted}")
        return RuleDecision(rule, False, f"state {state} is not one of on: {wanted}")
    if rule.from_states is not None and (
        event.previous_state is None or event.previous_state not in rule.from_states
    ):
        wanted = ", ".join(rule.from_states)
        if event.previous_state is None:
            return RuleDecision(rule, False, f"no previous state; from: needs {wanted}")
        return RuleDecision(
            rule, False, f"previous state {event.previous_state} is not one of from: {wanted}"
        )
    for name, patterns in rule.where:
        value = field_of(event, name)
        wanted = ", ".join(patterns)
        if value is None:
            return RuleDecision(rule, False, f"{name} is not set; where: needs {wanted}")
        if not any(fnmatchcase(str(value), p) for p in patterns):
            return RuleDecision(rule, False, f"{name} {value} does not match where: {wanted}")
    return RuleDecision(rule, True, "matched")


def field_of(event: Event, name: str) -> object:
    """An event's value for a rule, silence or grouping field: job fields, or source/kind."""
    if name == "source":
        return event.source
    if name == "kind":
        return str(event.kind)
    if name == "state":
        return event.job.state if event.job is not None else None
    if name in ("previous_state", "from"):
        return event.previous_state
    if event.job is None:
        return None
    return event.job.field_value(name)


def match(rules: Sequence[RuleConfig], event: Event) -> list[RuleDecision]:
    """Every rule's decision in order, stopping after a match whose rule says `continue: false`."""
    decisions: list[RuleDecision] = []
    for rule in rules:
        decision = decide(rule, event)
        decisions.append(decision)
        if decision.matched and rule.stop:
            break
    return decisions


def matching_rules(rules: Sequence[RuleConfig], event: Event) -> list[RuleConfig]:
    return [d.rule for d in match(rules, event) if d.matched]
