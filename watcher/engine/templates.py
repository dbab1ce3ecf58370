"""Message rendering: an event and a rule become a title, a body and a notify type.

Pure. User templates run in Jinja2's immutable sandbox (no file, environment or attribute
escapes); a template that fails at run time falls back to the default and says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from watcher.engine.diff import format_duration
from watcher.engine.why import why_lines
from watcher.errorcodes import explain
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

# jinja2 is imported when a template is first compiled: a cycle that renders nothing (and
# rules with the default templates in `check`) never pays for it.
if TYPE_CHECKING:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment


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
    if event.kind in (EventKind.BATCH_SETTLED, EventKind.BATCH_UPDATED):
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
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["datetime"] = _format_datetime
    env.filters["duration"] = _format_duration
    env.filters["why_lines"] = why_lines
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
        # What the detail APIs said about a failure (None when not fetched for this event).
        "why": event.details.get("why"),
        # What the job's failure code means, when MetaStudio documents it (else None).
        "failure_meaning": _meaning(job.get("job_failed_code")),
    }


def _meaning(code: Any) -> str | None:
    found = explain(str(code)) if code else None
    return found.line() if found is not None else None


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
{% if failure_meaning %}
{{ failure_meaning }}
{% endif %}
{# Rejections matter while a job is rejected or just recovered, not on every SUCCEED. #}
{% if job.reject_times and (event.state in ("AUDIT_FAILED", "USER_REVIEW_REJECT") \
or event.kind in ("rejected_again", "recovered")) %}
rejected {{ job.reject_times }} time{{ "s" if job.reject_times != 1 else "" }} so far
{% endif %}
{% endif %}
{% for line in why | why_lines %}
{{ "why: " if loop.first else "     " }}{{ line }}
{% endfor %}
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
    body = body.strip()
    if body_format is BodyFormat.HTML and not (rule is not None and rule.body):
        # The default body is lines of text (escaped by autoescape): keep them lines in mail.
        body = "<br>\n".join(body.splitlines())
    return Rendered(_one_line(title), body, kind)


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


def _syntax_error() -> type[jinja2.TemplateSyntaxError]:
    """jinja2's syntax error class, for an `except` reached only once a template compiled."""
    import jinja2

    return jinja2.TemplateSyntaxError


def check_rule_templates(rule: RuleConfig, now: datetime) -> list[tuple[str, str]]:
    """Problems in a rule's templates as (field, message): syntax, and rendering a sample."""
    problems: list[tuple[str, str]] = []
    # The sample is built only for a rule with templates of its own (most use the defaults).
    context: dict[str, Any] | None = None
    for name, source in (("title", rule.title), ("body", rule.body)):
        if not source:
            continue
        if context is None:
            context = template_context(sample_event(now))
        try:
            compile_template(source, rule.format).render(context)
        except _syntax_error() as err:
            problems.append(
                (name, f"template syntax error at template line {err.lineno}: {err.message}")
            )
        except Exception as err:  # report whatever the template raises
            problems.append((name, f"template fails on a sample job: {_describe(err)}"))
    return problems + check_group_templates(rule, now)


# --- grouped messages ----------------------------------------------------------------------

_ENTRY_TIMES = ("create_time", "lastupdate_time")


def entry_context(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A single alert's template context, rebuilt from its stored JSON entry."""
    job = dict(entry.get("job") or {})
    for name in _ENTRY_TIMES:
        if isinstance(job.get(name), str):
            job[name] = _parse_time(job[name])
    return {
        "job": job,
        "event": {
            "kind": entry.get("kind"),
            "source": entry.get("source"),
            "previous_state": entry.get("previous_state"),
            "state": entry.get("state"),
            "reason": entry.get("reason"),
            "note": None,
            "detected_at": _parse_time(entry.get("detected_at")),
        },
        "source": entry.get("source"),
        "rule": entry.get("rule"),
        "why": entry.get("why"),
    }


def _parse_time(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def render_group_templates(
    title_src: str | None,
    body_src: str | None,
    body_format: BodyFormat,
    entries: Sequence[Mapping[str, Any]],
    counts: Mapping[str, int],
) -> tuple[str | None, str | None]:
    """A rule's group_title/group_body over `alerts` and `counts`; None where unset or failing
    (the default composition is used then: a message is never lost to a template)."""
    context = {"alerts": [entry_context(e) for e in entries], "counts": dict(counts)}
    out: list[str | None] = []
    for source in (title_src, body_src):
        if not source:
            out.append(None)
            continue
        try:
            out.append(compile_template(source, body_format).render(context))
        except Exception:  # a failing group template falls back, like a single one
            out.append(None)
    title, body = out
    return (_one_line(title) if title is not None else None), (
        body.strip() if body is not None else None
    )


def sample_group_entries(now: datetime) -> list[dict[str, Any]]:
    """Three alerts `check` renders group templates against: two failures and a success."""
    first = sample_event(now)
    job = first.job
    assert job is not None
    second = replace(
        first,
        job=replace(
            job,
            job_id="sample-job-0002",
            voice_name="客服女声",
            job_failed_reason="文本与语音不一致",
        ),
    )
    third = replace(
        first,
        job=replace(job, job_id="sample-job-0003", state="SUCCEED"),
        previous_state="PROCESSING",
    )
    return [_sample_entry(e) for e in (first, second, third)]


def _sample_entry(event: Event) -> dict[str, Any]:
    from watcher.engine.messages import alert_entry  # messages imports this module

    return alert_entry(event, "sample-rule")


def check_group_templates(rule: RuleConfig, now: datetime) -> list[tuple[str, str]]:
    """Problems in a rule's group_title/group_body, found by rendering a sample group."""
    if not (rule.group_title or rule.group_body):
        return []
    entries = sample_group_entries(now)
    counts: dict[str, int] = {}
    for entry in entries:
        counts[str(entry["state"])] = counts.get(str(entry["state"]), 0) + 1
    context = {"alerts": [entry_context(e) for e in entries], "counts": counts}
    problems: list[tuple[str, str]] = []
    for name, source in (("group_title", rule.group_title), ("group_body", rule.group_body)):
        if not source:
            continue
        try:
            compile_template(source, rule.format).render(context)
        except _syntax_error() as err:
            problems.append(
                (name, f"template syntax error at template line {err.lineno}: {err.message}")
            )
        except Exception as err:  # report whatever the template raises
            problems.append((name, f"template fails on a sample group: {_describe(err)}"))
    return problems
