"""Pure shaping of read-model rows into what the pages and the API show, for one `now`.

Every view is a plain JSON-like dict; `scrub()` runs over all of it before it leaves, so the
HTML and the API show the same values and neither can carry a secret or a signed link.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from watcher.engine.why import why_lines
from watcher.model import FAILURE_STATES, SETTLED_STATES, SUCCEED
from watcher.web.readmodel import (
    AlertRow,
    BatchRow,
    EventRow,
    JobRow,
    OutboxCounts,
    OutboxRow,
    SilenceRow,
    SourceRow,
)

__all__ = [
    "SourceInfo",
    "WhyDetail",
    "batch_view",
    "batches_view",
    "event_view",
    "events_view",
    "format_age",
    "job_view",
    "outbox_view",
    "overview",
    "scrub",
    "source_views",
    "state_class",
    "why_failed",
]

# Any URL in free text: signed links (OBS, S3: ?Signature=...) and apprise URLs (tokens in
# the path) look like any other, so none is shown; the scheme stays, to say what it was.
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*)://[^\s\"'<>]+")
# Mainland-China mobile numbers, the format MetaStudio's `phone` holds.
_PHONE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?1[3-9]\d{9}(?!\d)")
_REVIEW_STATES = frozenset(
    {"SYSTEM_AUDITING", "AUDITING", "RESULT_REVIEW", "USER_RESULT_REVIEW", "USER_REVIEW_REJECT"}
)
MAX_OPEN_BATCHES = 20
_IDENTIFIERS = frozenset({"job_id", "asset_id", "source", "id", "now"})


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the config says about a source: how often it is polled and how."""

    name: str
    poll_interval: timedelta
    full_scan_every: timedelta


@dataclass(frozen=True, slots=True)
class WhyDetail:
    """Why a job failed, beyond the API's code and reason (audit results, op logs)."""

    summary: str
    items: tuple[str, ...] = ()


def why_failed(job: JobRow, why: Mapping[str, Any] | None) -> WhyDetail | None:
    """What the detail APIs said about the job's failure (the `why` its alert carried, read
    from the store's cache), in the alert's own words; None when nothing was asked."""
    if why is None or job.state not in FAILURE_STATES:
        return None
    source = why.get("source") or "the detail API"
    return WhyDetail(f"from {source}", tuple(why_lines(why)))


# --- scrubbing -----------------------------------------------------------------------------


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """`value` with every string cleaned: known secrets masked, URLs (signed links, apprise
    URLs) and phone numbers removed. Applied to whole views, so no field can be forgotten."""
    ordered = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)
    return _scrub(value, ordered)


def _scrub(value: Any, secrets: Sequence[str], free_text: bool = True) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, "****")
        if not free_text:
            return value  # an identifier: rewriting it would only break links
        value = _URL.sub(r"\1://[link removed]", value)
        return _PHONE.sub("[phone removed]", value)
    if isinstance(value, Mapping):
        return {k: _scrub(v, secrets, k not in _IDENTIFIERS) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, secrets, free_text) for v in value]
    return value


# --- small formatters ----------------------------------------------------------------------


def format_age(seconds: float) -> str:
    """`45s`, `12m`, `3h20m`, `2d4h`: the two largest units, rounded down."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, _ = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def state_class(state: str | None) -> str:
    """The colour family of a state: succeed, failed, review, progress."""
    if state == SUCCEED:
        return "succeed"
    if state in FAILURE_STATES:
        return "failed"
    if state in _REVIEW_STATES:
        return "review"
    return "progress"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def _age(value: datetime | None, now: datetime) -> str | None:
    return None if value is None else format_age((now - value).total_seconds())


def _bar(counts: Mapping[str, int]) -> list[dict[str, Any]]:
    """Segments of a stacked bar over 1000 units (SVG rect x/width: no inline styles)."""
    order = {"succeed": 0, "failed": 1, "review": 2, "progress": 3}
    items = sorted(counts.items(), key=lambda kv: (order[state_class(kv[0])], kv[0]))
    return [
        {"state": state, "count": count, "x": x, "width": width, "class": state_class(state)}
        for (state, count), (x, width) in zip(items, _tile([n for _, n in items]), strict=True)
    ]


def _tile(counts: Sequence[int]) -> list[tuple[int, int]]:
    """(x, width) per count over 1000 units, rounding the running total so widths never go
    negative and always add up to exactly 1000."""
    total = sum(counts)
    if not total:
        return [(0, 0) for _ in counts]
    edges, running = [0], 0
    for count in counts:
        running += count
        edges.append(round(1000 * running / total))
    return [(edges[i], edges[i + 1] - edges[i]) for i in range(len(counts))]


# --- sources -------------------------------------------------------------------------------


def _strategy(info: SourceInfo | None, row: SourceRow | None = None) -> str | None:
    """The strategy polling uses (as found out at run time and kept in the store), with the
    full-scan period, and a scan in flight: `changed_since (full scan every 1h)`."""
    if info is None:
        return row.strategy if row is not None else None
    if info.full_scan_every <= timedelta(0):
        text = "full scan every poll"
    else:
        every = format_age(info.full_scan_every.total_seconds())
        used = row.strategy if row is not None and row.strategy else "incremental"
        text = f"{used} (full scan every {every})"
    if row is not None and row.scan_pages_done is not None:
        what = "baseline" if row.scan_baseline else "full scan"
        of = f" of {row.scan_pages_total}" if row.scan_pages_total is not None else ""
        text += f"; {what} in progress: {row.scan_pages_done}{of} pages"
    return text


def _health(row: SourceRow | None, info: SourceInfo | None, now: datetime) -> tuple[str, str]:
    if row is None or row.last_poll_at is None:
        return "starting", "not polled yet"
    if row.consecutive_failures:
        return "failing", f"{row.consecutive_failures} poll(s) failed in a row"
    if info is not None and row.last_ok_at and now - row.last_ok_at > info.poll_interval * 3:
        return "stale", "no successful poll within 3 poll intervals"
    return "ok", "polling"


def _empty_text(row: SourceRow | None, info: SourceInfo | None, now: datetime) -> str | None:
    if row is not None and row.jobs:
        return None
    next_in = None
    if info is not None and row is not None and row.last_poll_at is not None:
        next_in = format_age((row.last_poll_at + info.poll_interval - now).total_seconds())
    if row is None or row.baseline_at is None:
        if next_in is None:
            return "no jobs yet: first poll under way"
        return f"no jobs yet: first poll in {next_in}"
    return "no jobs in this source" + (f" (next poll in {next_in})" if next_in else "")


def source_views(
    rows: Sequence[SourceRow], infos: Sequence[SourceInfo], now: datetime
) -> list[dict[str, Any]]:
    """Configured sources first, in config order, then any the store still remembers."""
    by_name = {r.name: r for r in rows}
    info_by_name = {i.name: i for i in infos}
    names = [i.name for i in infos] + sorted(set(by_name) - set(info_by_name))
    out = []
    for name in names:
        row, info = by_name.get(name), info_by_name.get(name)
        health, why = _health(row, info, now)
        counts = row.by_state if row else {}
        out.append(
            {
                "name": name,
                "configured": info is not None,
                "health": health,
                "health_reason": why,
                "last_poll_at": _iso(row.last_poll_at if row else None),
                "last_poll_ago": _age(row.last_poll_at if row else None, now),
                "last_ok_at": _iso(row.last_ok_at if row else None),
                "last_ok_ago": _age(row.last_ok_at if row else None, now),
                "last_error": row.last_error if row and row.consecutive_failures else None,
                "poll_interval_s": int(info.poll_interval.total_seconds()) if info else None,
                "strategy": _strategy(info, row),
                "jobs": sum(counts.values()),
                "by_state": dict(counts),
                "bar": _bar(counts),
                "empty": _empty_text(row, info, now),
            }
        )
    return out


# --- jobs, batches, events ------------------------------------------------------------------


def job_summary(job: JobRow, now: datetime) -> dict[str, Any]:
    return {
        "source": job.source,
        "job_id": job.job_id,
        "state": job.state,
        "state_class": state_class(job.state),
        "voice_name": job.voice_name,
        "job_type": job.job_type,
        "batch_name": job.batch_name,
        "reject_times": job.reject_times,
        "create_time": _iso(job.create_time),
        "lastupdate_time": _iso(job.lastupdate_time),
        "in_state_for": _age(job.lastupdate_time, now),
        "job_failed_code": job.job_failed_code,
        "job_failed_reason": job.job_failed_reason,
        "asset_id": job.asset_id,
        "settled": job.state in SETTLED_STATES,
    }


def batch_summary(batch: BatchRow, now: datetime) -> dict[str, Any]:
    progress = {
        "succeeded": batch.succeeded,
        "failed": batch.failed,
        "in_progress": batch.in_progress,
    }
    total = batch.total or 1
    keys = ("succeeded", "failed", "in_progress")
    segments = [
        {"key": key, "count": progress[key], "x": x, "width": width}
        for key, (x, width) in zip(keys, _tile([progress[k] for k in keys]), strict=True)
    ]
    return {
        "source": batch.source,
        "name": batch.name,
        "total": batch.total,
        **progress,
        "open": batch.open,
        "percent_done": round(100 * (batch.succeeded + batch.failed) / total),
        "by_state": dict(batch.by_state),
        "segments": segments,
        "started_at": _iso(batch.started_at),
        "age": _age(batch.started_at, now),
        "updated_at": _iso(batch.updated_at),
    }


def event_view(event: EventRow, now: datetime) -> dict[str, Any]:
    return {
        "id": event.id,
        "kind": event.kind,
        "source": event.source,
        "job_id": event.job_id,
        "previous_state": event.previous_state,
        "state": event.state,
        "state_class": state_class(event.state) if event.state else None,
        "reason": event.reason,
        "note": event.note,
        "subject": event.subject,
        "detected_at": _iso(event.detected_at),
        "ago": _age(event.detected_at, now),
    }


def alert_view(alert: OutboxRow, now: datetime) -> dict[str, Any]:
    status = alert.status
    if status == "pending" and alert.next_attempt_at > now:
        status = "held"
    return {
        "id": alert.id,
        "source": alert.source,
        "job_id": alert.job_id,
        "rule": alert.rule,
        "channel": alert.channel,
        "status": status,
        "attempts": alert.attempts,
        "title": alert.title,
        "created_at": _iso(alert.created_at),
        "sent_at": _iso(alert.sent_at),
        "next_attempt_at": _iso(alert.next_attempt_at) if alert.status == "pending" else None,
        "last_error": alert.last_error,
    }


def _counts_view(counts: OutboxCounts) -> dict[str, int]:
    return {
        "pending": counts.pending,
        "held": counts.held,
        "dead": counts.dead,
        "silenced": counts.silenced,
    }


def _silence_view(silence: SilenceRow, now: datetime) -> dict[str, Any]:
    return {
        "id": silence.id,
        "matchers": [{"field": k, "value": v} for k, v in silence.matchers],
        "comment": silence.comment,
        "starts_at": _iso(silence.starts_at),
        "ends_at": _iso(silence.ends_at),
        "ends_in": format_age((silence.ends_at - now).total_seconds()),
    }


def overview(
    *,
    sources: Sequence[SourceRow],
    infos: Sequence[SourceInfo],
    batches: Sequence[BatchRow],
    stuck: Sequence[JobRow],
    events: Sequence[EventRow],
    outbox: OutboxCounts,
    silences: Sequence[SilenceRow],
    now: datetime,
) -> dict[str, Any]:
    """The front page: sources, open batches (oldest first), stuck jobs, recent events."""
    open_batches = sorted(
        (b for b in batches if b.open), key=lambda b: (b.started_at or now, b.source, b.name)
    )
    return {
        "now": _iso(now),
        "sources": source_views(sources, infos, now),
        "open_batches": [batch_summary(b, now) for b in open_batches[:MAX_OPEN_BATCHES]],
        "open_batches_more": max(0, len(open_batches) - MAX_OPEN_BATCHES),
        "settled_batches": sum(1 for b in batches if not b.open),
        "stuck": [job_summary(j, now) for j in stuck],
        "events": [event_view(e, now) for e in events],
        "outbox": _counts_view(outbox),
        "silences": [_silence_view(s, now) for s in silences],
    }


def batches_view(batches: Sequence[BatchRow], now: datetime) -> dict[str, Any]:
    return {"now": _iso(now), "batches": [batch_summary(b, now) for b in batches]}


def batch_view(
    batch: BatchRow,
    jobs: Sequence[JobRow],
    now: datetime,
    whys: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A batch and every job in it: failed first, then unsettled (longest waiting), then done."""

    def order(job: JobRow) -> tuple[int, str, str]:
        rank = 0 if job.state in FAILURE_STATES else (2 if job.state == SUCCEED else 1)
        when = job.lastupdate_time.isoformat() if job.lastupdate_time else ""
        return rank, when, job.job_id

    views = []
    for job in sorted(jobs, key=order):
        view = job_summary(job, now)
        why = why_failed(job, (whys or {}).get(job.job_id))
        view["why"] = None if why is None else {"summary": why.summary, "lines": list(why.items)}
        views.append(view)
    return {"now": _iso(now), "batch": batch_summary(batch, now), "jobs": views}


def job_view(
    job: JobRow | None,
    source: str,
    job_id: str,
    timeline: Sequence[EventRow],
    alerts: Sequence[AlertRow],
    now: datetime,
    why: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One job: its fields, every event seen (oldest first), and each event's alerts."""
    by_event: dict[int, list[dict[str, Any]]] = {}
    for row in alerts:
        by_event.setdefault(row.event_id, []).append(alert_view(row.alert, now))
    entries = []
    for event in timeline:
        entry = event_view(event, now)
        entry["alerts"] = by_event.get(event.id, [])
        entries.append(entry)
    detail = why_failed(job, why) if job is not None else None
    return {
        "now": _iso(now),
        "source": source,
        "job_id": job_id,
        "job": job_summary(job, now) if job is not None else None,
        "failed": job is not None and (job.state in FAILURE_STATES or bool(job.job_failed_code)),
        "why": None if detail is None else {"summary": detail.summary, "lines": list(detail.items)},
        "timeline": entries,
    }


def events_view(events: Sequence[EventRow], limit: int, now: datetime) -> dict[str, Any]:
    return {
        "now": _iso(now),
        "events": [event_view(e, now) for e in events],
        "next_before": events[-1].id if len(events) == limit and events else None,
    }


def outbox_view(counts: OutboxCounts, unsent: Sequence[OutboxRow], now: datetime) -> dict[str, Any]:
    return {
        "now": _iso(now),
        "counts": _counts_view(counts),
        "unsent": [alert_view(a, now) for a in unsent],
    }
