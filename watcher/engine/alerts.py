"""From events to alerts: match rules, render messages, one alert per rule × channel.

Pure. A rendering failure does not drop the alert: the default template is used and the
problem is returned so the shell can log it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from watcher.engine.messages import alert_facts, json_document
from watcher.engine.noise import group_key, labels_for
from watcher.engine.rules import matching_rules
from watcher.engine.templates import render
from watcher.model import Alert, BodyFormat, Event, RuleConfig


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    rule: str
    event_key: str
    error: str


@dataclass(frozen=True, slots=True)
class Routed:
    alerts: tuple[Alert, ...]
    problems: tuple[TemplateProblem, ...]


def route(
    events: Iterable[Event], rules: Sequence[RuleConfig], *, config_path: str | None = None
) -> Routed:
    """Every alert the events produce under the rules, in event order."""
    alerts: list[Alert] = []
    problems: list[TemplateProblem] = []
    for event in events:
        for rule in matching_rules(rules, event):
            rendered = render(event, rule)
            if rendered.error is not None:
                problems.append(TemplateProblem(rule.name, event.key, rendered.error))
            labels = labels_for(event)
            facts = alert_facts(event, rule, config_path=config_path)
            body = rendered.body
            if rule.format is BodyFormat.JSON:
                # For machines: the same document a group gets, with one entry.
                body = json_document([facts["alert"]])
            for channel in rule.notify:
                alerts.append(
                    Alert(
                        event_key=event.key,
                        source=event.source,
                        job_id=event.job.job_id if event.job is not None else None,
                        rule=rule.name,
                        channel=channel,
                        title=rendered.title,
                        body=body,
                        notify_type=rendered.notify_type,
                        body_format=rule.format,
                        created_at=event.detected_at,
                        group_key=group_key(event, rule),
                        labels=labels,
                        facts=facts,
                    )
                )
    return Routed(tuple(alerts), tuple(problems))
