"""Message rendering: an event and a rule become a title, a body and a notify type.

Pure. User templates run in Jinja2's immutable sandbox (no file, environment or attribute
escapes); a template that fails at run time falls back to the default and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from watcher.engine.diff import format_duration
from watcher.model import (
    FAILURE_STATES,
    SUCCEED,
    BodyFormat,
    Event,
    EventKind,
    Job,
    NotifyType,
    RuleConfig,
)


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str
    body: str
    notify_type: NotifyType
    # Set when the rule's own template failed and the default was used instead.
    error: str | None = None


def notify_type_for(event: Event) -> NotifyType:
    """failure for *_FAILED/FAILED, success for SUCCEED, warning for trouble, info otherwise."""
    if event.kind is EventKind.SOURCE_UNHEALTHY:
        return NotifyType.FAILURE
    if event.kind in (EventKind.RECOVERED, EventKind.SOURCE_RECOVERED):
        return NotifyType.SUCCESS
    if event.kind in (EventKind.STUCK, EventKind.VANISHED):
        return NotifyType.WARNING
    if event.kind is EventKind.BATCH_SETTLED:
        counts = event.details.get("counts", {})
        failed = any(n for state, n in counts.items() if state in FAILURE_STATES)
        return NotifyType.WARNING if failed else NotifyType.SUCCESS
    state = event.job.state if event.job is not None else None
    if state in FAILURE_STATES:
        return NotifyType.FAILURE
    if state == SUCCEED:
        return NotifyType.SUCCESS
    return NotifyType.INFO


def _format_datetime(value: Any, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    if value is None:
        return "unknown"
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value / 1000 if value > 10**11 else value, UTC)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime(fmt)
    return str(value)


def _format_duration(value: Any) -> str:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, int | float):
        return format_duration(timedelta(seconds=value))
    return str(value)


@cache
def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["datetime"] = _format_datetime
    env.filters["duration"] = _format_duration
    return env


@lru_cache(maxsize=256)
def compile_template(source: str, body_format: BodyFormat) -> jinja2.Template:
    """Parse a template once (parsing costs milliseconds, rendering microseconds); raises
    jinja2.TemplateError on bad syntax."""
    return _environment(body_format is BodyFormat.HTML).from_string(source)


def template_context(event: Event) -> dict[str, Any]:
    job: Mapping[str, Any] = event.job.as_dict() if event.job is not None else {}
    return {
        "job": dict(job),
        "event": {
            "kind": str(event.kind),
            "source": event.source,
            "previous_state": event.previous_state,
            "state": event.job.state if event.job is not None else None,
            "reason": event.reason,
            "note": event.note,
            "detected_at": event.detected_at,
        },
        "source": event.source,
    }


DEFAULT_TITLE = (
    "{% if job %}{{ event.state }}: voice job {{ job.job_id }}"
    "{% if job.voice_name %} ({{ job.voice_name }}){% endif %}"
    # Job-less events (a settled batch, a source gone blind) say what happened in the title.
    "{% else %}{{ event.reason | truncate(200) }}{% endif %}"
)

DEFAULT_BODY = """\
{% if job %}
{{ job.job_id }}: {{ event.previous_state or "(new)" }} → {{ event.state }} \
[{{ event.kind }}]
voice: {{ job.voice_name or "-" }} · type: {{ job.job_type or "-" }}\
{% if job.batch_name %} · batch: {{ job.batch_name }}{% endif %}

{% if job.job_failed_code or job.job_failed_reason %}
failure: {{ job.job_failed_code or "-" }} {{ job.job_failed_reason or "" }}
{% endif %}
{% if job.reject_times %}
reject_times: {{ job.reject_times }}
{% endif %}
{% endif %}
{{ event.reason }}
{% if event.note %}
note: {{ event.note }}
{% endif %}
source: {{ source }} · detected {{ event.detected_at | datetime }}"""


def render(event: Event, rule: RuleConfig | None = None) -> Rendered:
    """Render an event with a rule's templates, falling back to the defaults on error."""
    body_format = rule.format if rule is not None else BodyFormat.TEXT
    context = template_context(event)
    kind = notify_type_for(event)
    title_src = rule.title if rule is not None and rule.title else DEFAULT_TITLE
    body_src = rule.body if rule is not None and rule.body else DEFAULT_BODY
    try:
        title = compile_template(title_src, body_format).render(context)
        body = compile_template(body_src, body_format).render(context)
    except Exception as err:  # any template failure falls back, never crashes
        # Not only TemplateError: `{{ 'n=' + job.reject_times }}` raises a plain TypeError.
        fallback = render(event, None)
        return Rendered(fallback.title, fallback.body, kind, error=_describe(err))
    return Rendered(_one_line(title), body.strip(), kind)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe(err: Exception) -> str:
    line = getattr(err, "lineno", None)
    where = f" (template line {line})" if line else ""
    message = getattr(err, "message", None) or str(err)
    return f"{type(err).__name__}: {message}{where}"


def sample_event(now: datetime) -> Event:
    """A realistic failed-review event that `check` renders every template against."""
    job = Job(
        job_id="sample-job-0001",
        state="AUDIT_FAILED",
        reject_times=2,
        create_time=now - timedelta(hours=5),
        lastupdate_time=now,
        voice_name="shop-voice-sample",
        job_type="BASIC",
        batch_name="sample-batch",
        job_failed_code="MSS.00000012",
        job_failed_reason="audio too noisy",
        extra={"tag": "ECOMMERCE", "language": "CN", "sex": "FEMALE", "create_type": "PACKAGE"},
    )
    return Event(
        EventKind.TRANSITION,
        "sample-source",
        now,
        "job sample-job-0001 went from AUDITING to AUDIT_FAILED",
        job=job,
        previous_state="AUDITING",
    )


def check_rule_templates(rule: RuleConfig, now: datetime) -> list[tuple[str, str]]:
    """Problems in a rule's templates as (field, message): syntax, and rendering a sample."""
    problems: list[tuple[str, str]] = []
    context = template_context(sample_event(now))
    for name, source in (("title", rule.title), ("body", rule.body)):
        if not source:
            continue
        try:
            compile_template(source, rule.format).render(context)
        except jinja2.TemplateSyntaxError as err:
            problems.append(
                (name, f"template syntax error at template line {err.lineno}: {err.message}")
            )
        except Exception as err:  # report whatever the template raises
            problems.append((name, f"template fails on a sample job: {_describe(err)}"))
    return problems
