"""Message composition: what one notification says, for one alert or a whole group of them.

Pure. Every alert carries its facts (the JSON entry below); a message is composed from them:
a one-line summary, one line per job with the why, a capped tail that names the command
listing the rest, or one JSON document for machines.
"""

from __future__ import annotations

import html
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from watcher.engine.shorten import MAX_TEXT, shorten
from watcher.engine.templates import render_group_templates
from watcher.engine.why import why_lines
from watcher.errorcodes import explain
from watcher.model import (
    DROPPED_JOB_FIELDS,
    FAILURE_STATES,
    Alert,
    BodyFormat,
    Event,
    Job,
    NotifyType,
    RuleConfig,
)

DOCUMENT_VERSION = 1
# How many alerts a grouped message lists: a chat window shows a screenful, an email all.
CHAT_LIST_LIMIT = 20
FULL_LIST_LIMIT = 200
TOP_REASONS = 3
_SEVERITY = [NotifyType.INFO, NotifyType.SUCCESS, NotifyType.WARNING, NotifyType.FAILURE]
# Fields never put into a message or a document, whatever the API adds (signed links).
_NEVER_SHOWN = DROPPED_JOB_FIELDS | {"attachment_url"}


def _plain(value: Any) -> Any:
    """A JSON-able copy: datetimes as ISO 8601, mappings and sequences walked."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if str(k) not in _NEVER_SHOWN}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def job_document(job: Job) -> dict[str, Any]:
    """Every job field the watcher keeps (phone and signed links are never kept)."""
    return {k: _plain(v) for k, v in sorted(job.as_dict().items()) if k not in _NEVER_SHOWN}


def alert_entry(event: Event, rule: str) -> dict[str, Any]:
    """One alert as the JSON document lists it (`format: json`, and every message's facts)."""
    return {
        "kind": str(event.kind),
        "source": event.source,
        "rule": rule,
        "previous_state": event.previous_state,
        "state": event.job.state if event.job is not None else None,
        "reason": event.reason,
        "why": _plain(event.details.get("why")),
        "detected_at": event.detected_at.isoformat(),
        "job": job_document(event.job) if event.job is not None else None,
    }


def alert_facts(
    event: Event, rule: RuleConfig, *, config_path: str | None = None
) -> dict[str, Any]:
    """What an alert keeps for composing messages later, after restarts and reloads."""
    compose: dict[str, Any] = {"limit": rule_list_limit(rule)}
    if config_path:
        compose["config"] = config_path
    if rule.group_title:
        compose["group_title"] = rule.group_title
    if rule.group_body:
        compose["group_body"] = rule.group_body
    return {"alert": alert_entry(event, rule.name), "compose": compose}


def rule_list_limit(rule: RuleConfig) -> int:
    if rule.group_limit is not None:
        return rule.group_limit
    return FULL_LIST_LIMIT if rule.format in (BodyFormat.HTML, BodyFormat.JSON) else CHAT_LIST_LIMIT


def json_document(entries: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(
        {"version": DOCUMENT_VERSION, "alerts": list(entries)}, ensure_ascii=False, indent=2
    )


def entry_of(alert: Alert) -> dict[str, Any]:
    """An alert's JSON entry; alerts queued before facts existed get one from their labels."""
    entry = alert.facts.get("alert")
    if isinstance(entry, Mapping):
        return dict(entry)
    labels = alert.labels
    # No job fields kept: the line is the alert's title, as messages said before.
    return {
        "kind": labels.get("kind"),
        "source": alert.source,
        "rule": alert.rule,
        "previous_state": labels.get("previous_state"),
        "state": labels.get("state"),
        "reason": alert.title,
        "why": None,
        "detected_at": alert.created_at.isoformat(),
        "job": None,
    }


# --- summaries ----------------------------------------------------------------------------


def counts_by_state(entries: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Alerts per job state (job-less alerts count under their event kind)."""
    counts: dict[str, int] = {}
    for entry in entries:
        key = str(entry.get("state") or entry.get("kind") or "alert")
        counts[key] = counts.get(key, 0) + 1
    return counts


def failure_reason(entry: Mapping[str, Any]) -> str | None:
    """A failed job's reason in words (code only when there are no words), else None."""
    job = entry.get("job") or {}
    if entry.get("state") not in FAILURE_STATES:
        return None
    reason = job.get("job_failed_reason") or job.get("job_failed_code")
    return shorten(str(reason), 80) if reason else "no reason given"


def summary_line(entries: Sequence[Mapping[str, Any]]) -> str:
    """ "5 AUDIT_FAILED: 3× background noise too high, 2× … · 2 FAILED": biggest first."""
    counts = counts_by_state(entries)
    parts = []
    for state in sorted(counts, key=lambda s: (-counts[s], s)):
        reasons: dict[str, int] = {}
        for entry in entries:
            if str(entry.get("state") or entry.get("kind")) == state:
                reason = failure_reason(entry)
                if reason is not None:
                    reasons[reason] = reasons.get(reason, 0) + 1
        text = f"{counts[state]} {state}"
        if reasons:
            top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
            shown = [f"{n}× {r}" for r, n in top[:TOP_REASONS]]
            if len(top) > TOP_REASONS:
                shown.append(f"{sum(n for _, n in top[TOP_REASONS:])}× other reasons")
            text += ": " + ", ".join(shown)
        parts.append(text)
    return " · ".join(parts)


def context_line(entries: Sequence[Mapping[str, Any]]) -> str:
    """Where and when: sources, batches and the detection time (or span) of a group."""
    sources = sorted({str(e.get("source")) for e in entries if e.get("source")})
    batches = sorted(
        {str(e["job"]["batch_name"]) for e in entries if (e.get("job") or {}).get("batch_name")}
    )
    times = sorted(t for e in entries if isinstance(t := _when(e.get("detected_at")), datetime))
    parts = [f"source {', '.join(sources)}"] if sources else []
    if batches:
        shown = ", ".join(shorten(b, 40) for b in batches[:5])
        more = f" and {len(batches) - 5} more" if len(batches) > 5 else ""
        parts.append(f"batch{'es' if len(batches) > 1 else ''} {shown}{more}")
    if times:
        first, last = (t.astimezone(UTC) for t in (times[0], times[-1]))
        span = first.strftime("%Y-%m-%d %H:%M")
        if last.strftime("%H:%M") != first.strftime("%H:%M"):
            span += "–" + last.strftime("%H:%M")
        parts.append(f"detected {span} UTC")
    return " · ".join(parts)


def _when(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def detail_lines(entry: Mapping[str, Any]) -> list[str]:
    """Under a job's line: the failure code's documented meaning, then the fetched why."""
    job = entry.get("job") or {}
    found = explain(job.get("job_failed_code")) if entry.get("state") in FAILURE_STATES else None
    meaning = [shorten(found.line(), 2 * MAX_TEXT)] if found is not None else []
    return meaning + why_lines(entry.get("why"))


def job_line(entry: Mapping[str, Any]) -> str:
    """`job-1 (Lei): AUDITING → AUDIT_FAILED · MSS.00000012 background noise too high`."""
    job = entry.get("job")
    if not job:
        return shorten(str(entry.get("reason") or entry.get("kind") or "alert"), 2 * MAX_TEXT)
    voice = f" ({shorten(str(job['voice_name']), 40)})" if job.get("voice_name") else ""
    previous = entry.get("previous_state") or "new"
    line = f"{job.get('job_id')}{voice}: {previous} → {entry.get('state')}"
    kind = entry.get("kind")
    if kind not in ("transition", "new", None):
        line += f" [{kind}]"
    failure = " ".join(
        str(p) for p in (job.get("job_failed_code"), job.get("job_failed_reason")) if p
    )
    if failure and entry.get("state") in FAILURE_STATES:
        line += f" · {shorten(failure)}"
    return line


# --- whole messages -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Composed:
    title: str
    body: str
    notify_type: NotifyType
    body_format: BodyFormat  # never JSON: apprise sends a JSON document as text


def sendable(body_format: BodyFormat) -> BodyFormat:
    return BodyFormat.TEXT if body_format is BodyFormat.JSON else body_format


def list_command(
    channel: str, keys: Sequence[str], ids: Sequence[int], config: str | None = None
) -> str:
    """The command that prints exactly the alerts of this message: its config, channel,
    group keys and the span of outbox ids it carried."""
    parts = ["metastudio-watcher", "alerts"]
    if config:
        parts += ["-c", shlex.quote(config)]
    parts += ["--channel", shlex.quote(channel)]
    for key in keys:
        if not key.startswith("#"):  # "#id": an ungrouped alert, found by its id alone
            parts += ["--group", shlex.quote(key)]
    if ids:
        parts += ["--ids", f"{min(ids)}-{max(ids)}"]
    return " ".join(parts)


def compose(
    channel: str, keys: Sequence[str], alerts: Sequence[Alert], ids: Sequence[int]
) -> Composed:
    """One message for alerts that go out together (in outbox order)."""
    if len(alerts) == 1:
        alert = alerts[0]
        return Composed(alert.title, alert.body, alert.notify_type, sendable(alert.body_format))
    entries = [entry_of(a) for a in alerts]
    formats = {a.body_format for a in alerts}
    body_format = formats.pop() if len(formats) == 1 else BodyFormat.TEXT
    severity = max(alerts, key=lambda a: _SEVERITY.index(a.notify_type)).notify_type
    rules = sorted({a.rule for a in alerts})
    sources = sorted({a.source for a in alerts})
    about = f"rule {rules[0]}" if len(rules) == 1 else f"{len(rules)} rules"
    title = f"{len(alerts)} voice job alerts ({about}, source {', '.join(sources)})"
    if body_format is BodyFormat.JSON:
        return Composed(title, json_document(entries), severity, BodyFormat.TEXT)
    own_title, own_body = _group_templates(alerts, body_format, entries)
    title = own_title or title
    if own_body is not None:
        return Composed(title, own_body, severity, body_format)
    limit = min(_limit(a) for a in alerts)
    summary = summary_line(entries)
    more = len(entries) - limit if len(entries) > limit else 0
    command = list_command(channel, keys, ids, _config_of(alerts[0]))
    context = context_line(entries)
    if body_format is BodyFormat.HTML:
        body = _html_body(summary, entries[:limit], more, command, context)
    elif body_format is BodyFormat.MARKDOWN:
        body = _markdown_body(summary, entries[:limit], more, command, context)
    else:
        body = _text_body(summary, entries[:limit], more, command, context)
    return Composed(title, body, severity, body_format)


def _group_templates(
    alerts: Sequence[Alert], body_format: BodyFormat, entries: Sequence[Mapping[str, Any]]
) -> tuple[str | None, str | None]:
    """The first alert's rule templates, if its rule set group_title/group_body."""
    facts = alerts[0].facts.get("compose")
    if not isinstance(facts, Mapping):
        return None, None
    title, body = facts.get("group_title"), facts.get("group_body")
    if not title and not body:
        return None, None
    return render_group_templates(
        title if isinstance(title, str) else None,
        body if isinstance(body, str) else None,
        body_format,
        entries,
        counts_by_state(entries),
    )


def _config_of(alert: Alert) -> str | None:
    compose_facts = alert.facts.get("compose")
    config = compose_facts.get("config") if isinstance(compose_facts, Mapping) else None
    return config if isinstance(config, str) else None


def _limit(alert: Alert) -> int:
    compose_facts = alert.facts.get("compose") or {}
    limit = compose_facts.get("limit") if isinstance(compose_facts, Mapping) else None
    return int(limit) if isinstance(limit, int) and limit > 0 else CHAT_LIST_LIMIT


def _more(more: int, command: str) -> str:
    return f"+{more} more not listed here; all of them: {command}"


def _text_body(
    summary: str, entries: Sequence[Mapping[str, Any]], more: int, command: str, context: str
) -> str:
    lines = [summary, ""]
    for entry in entries:
        lines.append(f"- {job_line(entry)}")
        lines.extend(f"    {w}" for w in detail_lines(entry))
    if context:
        lines += ["", context]
    if more:
        lines += ["", _more(more, command)]
    return "\n".join(lines)


_MARKDOWN_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\`*[]<>#|~"})
# An underscore inside a word (AUDIT_FAILED) is no emphasis in CommonMark: left alone.
_LOOSE_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def _md(text: str) -> str:
    """User text made literal in markdown: reasons and names may hold * _ [ ] or #."""
    return _LOOSE_UNDERSCORE.sub(r"\\_", text.translate(_MARKDOWN_SPECIAL))


def _markdown_body(
    summary: str, entries: Sequence[Mapping[str, Any]], more: int, command: str, context: str
) -> str:
    lines = [f"**{_md(summary)}**", ""]
    for entry in entries:
        lines.append(f"- {_md(job_line(entry))}")
        lines.extend(f"    - {_md(w)}" for w in detail_lines(entry))
    if context:
        lines += ["", f"_{_md(context)}_"]
    if more:
        lines += ["", f"+{more} more not listed here; all of them: `{command.replace('`', '')}`"]
    return "\n".join(lines)


def _html_body(
    summary: str, entries: Sequence[Mapping[str, Any]], more: int, command: str, context: str
) -> str:
    out = [f"<p><b>{html.escape(summary)}</b></p>", "<ul>"]
    for entry in entries:
        item = html.escape(job_line(entry))
        why = detail_lines(entry)
        if why:
            item += "<ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in why) + "</ul>"
        out.append(f"<li>{item}</li>")
    out.append("</ul>")
    if context:
        out.append(f"<p><small>{html.escape(context)}</small></p>")
    if more:
        out.append(
            f"<p>+{more} more not listed here; all of them: <code>{html.escape(command)}</code></p>"
        )
    return "\n".join(out)
