"""The status page's HTTP side: routes, credentials, security headers, query parameters.

GET (and HEAD) only: aiohttp answers every other method with 405, and the read model's
connection is `mode=ro`, so nothing reachable from here can change the state file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from watcher.errors import StoreError
from watcher.model import KNOWN_STATES, EventKind, OutboxStatus
from watcher.web import views
from watcher.web.auth import is_loopback
from watcher.web.page import StatusPage
from watcher.web.readmodel import EventFilter
from watcher.web.render import STATIC, render_html, render_json

__all__ = ["OPEN_PATHS", "SECURITY_HEADERS", "StatusPage", "install"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Probes must work without credentials (kubelet, systemd, Docker HEALTHCHECK).
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_CHALLENGE = ('Bearer realm="metastudio-watcher"', 'Basic realm="metastudio-watcher"')
_MAX_PARAM = 200
_MAX_LIMIT = 500


class _BadRequest(Exception):
    """A query parameter the user can fix; the message says how."""


_PAGE: web.AppKey[StatusPage] = web.AppKey("status_page")


def install(app: web.Application, page: StatusPage) -> None:
    """Add the page, the API and the guards (credentials, headers) to `app`."""
    app[_PAGE] = page
    app.middlewares.append(_guard)
    get = app.router.add_get
    get("/", _overview)
    get("/batch", _batch)
    get("/job", _job)
    get("/events", _events)
    get("/static/{name}", _static)
    get("/api/v1/overview", _api_overview)
    get("/api/v1/sources", _api_sources)
    get("/api/v1/jobs", _api_jobs)
    get("/api/v1/job", _api_job)
    get("/api/v1/batches", _api_batches)
    get("/api/v1/batch", _api_batch)
    get("/api/v1/events", _api_events)
    get("/api/v1/outbox", _api_outbox)

    async def close(app: web.Application) -> None:
        page.model.close()

    app.on_cleanup.append(close)


# --- guards --------------------------------------------------------------------------------


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    page = request.app[_PAGE]
    response: web.StreamResponse
    if not _expected_host(page, request):
        response = web.Response(status=403, text="403: unexpected Host header\n")
    elif not await _allowed(page, request):
        response = web.Response(status=401, text="401: credentials required\n")
        for challenge in _CHALLENGE:
            response.headers.add("WWW-Authenticate", challenge)
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = web.Response(status=exc.status, text=f"{exc.status}: {exc.reason}\n")
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except StoreError as err:
            response = _error(request, 503, "The state file cannot be read", page.scrub(str(err)))
        except _BadRequest as err:
            response = _error(request, 400, "Bad request", str(err))
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _expected_host(page: StatusPage, request: web.Request) -> bool:
    """Without credentials the page is for this machine only: a request naming another host
    is a web page elsewhere reaching loopback through DNS rebinding, and is refused."""
    if page.verifier is not None or request.path in OPEN_PATHS:
        return True
    try:
        host = request.url.host
    except ValueError:
        return False
    return host is not None and is_loopback(host.strip("[]"))


async def _allowed(page: StatusPage, request: web.Request) -> bool:
    if page.verifier is None or request.path in OPEN_PATHS:
        return True
    header = request.headers.get("Authorization")
    if header and header.lstrip().lower().startswith("basic "):
        # scrypt costs ~0.1 s of CPU: off the event loop, so polling never waits for it.
        return await asyncio.to_thread(page.verifier.allows, header)
    return page.verifier.allows(header)


def _error(request: web.Request, status: int, heading: str, message: str) -> web.Response:
    if request.path.startswith("/api/"):
        return _json({"error": message}, status)
    return _html(request, "error.html", status=status, heading=heading, message=message)


# --- responses -----------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=render_json(data), status=status, content_type="application/json", charset="utf-8"
    )


def _html(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    page = request.app[_PAGE]
    now = page.clock()
    body = render_html(
        template,
        now_text=now.astimezone(UTC).strftime("%H:%M:%S UTC"),
        refresh_seconds=page.refresh_seconds,
        page=template.removesuffix(".html"),
        **context,
    )
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


async def _static(request: web.Request) -> web.Response:
    found = STATIC.get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound()
    body, kind = found
    response = web.Response(body=body, content_type=kind)
    response.headers["Cache-Control"] = "max-age=300"
    return response


# --- parameters ----------------------------------------------------------------------------


def _param(request: web.Request, name: str) -> str | None:
    value = request.query.get(name, "").strip()
    if len(value) > _MAX_PARAM:
        raise _BadRequest(f"{name}: at most {_MAX_PARAM} characters")
    return value or None


def _required(request: web.Request, name: str) -> str:
    value = _param(request, name)
    if value is None:
        raise _BadRequest(f"missing query parameter {name!r}")
    return value


def _int(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    text = _param(request, name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise _BadRequest(f"{name}: expected a whole number from {low} to {high}")
    return int(text)


def _time(request: web.Request, name: str) -> datetime | None:
    text = _param(request, name)
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _BadRequest(
            f"{name}: expected a time like 2026-12-01T09:30 (UTC) or 2026-12-01T09:30:00+08:00"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _event_filter(request: web.Request) -> EventFilter:
    kind = _param(request, "kind")
    if kind is not None and kind not in {k.value for k in EventKind}:
        raise _BadRequest(f"kind: unknown event kind; expected one of {', '.join(EventKind)}")
    limit = _int(request, "limit", 50, 1, _MAX_LIMIT)
    return EventFilter(
        source=_param(request, "source"),
        kind=kind,
        state=_param(request, "state"),
        batch=_param(request, "batch"),
        job_id=_param(request, "job"),
        since=_time(request, "since"),
        until=_time(request, "until"),
        before_id=_int(request, "before", None, 1, 2**62),
        limit=limit if limit is not None else 50,
    )


# --- data ----------------------------------------------------------------------------------


def _overview_data(page: StatusPage) -> dict[str, Any]:
    model, now = page.model, page.clock()
    sources = model.sources()
    return dict(
        page.scrub(
            views.overview(
                sources=sources,
                infos=page.infos(),
                batches=model.batches(),
                stuck=model.stuck_jobs(sources=sources),
                events=model.events(EventFilter(limit=15)),
                outbox=model.outbox_counts(now),
                silences=model.active_silences(now),
                now=now,
            )
        )
    )


def _batch_data(page: StatusPage, source: str, name: str) -> dict[str, Any] | None:
    batch = page.model.batch(source, name)
    if batch is None:
        return None
    jobs = page.model.batch_jobs(source, name)
    view = views.batch_view(batch, jobs, page.clock(), page.model.whys(jobs))
    view["truncated"] = len(jobs) < batch.total
    return dict(page.scrub(view))


def _job_data(page: StatusPage, source: str, job_id: str) -> dict[str, Any] | None:
    job = page.model.job(source, job_id)
    timeline = page.model.job_timeline(source, job_id)
    if job is None and not timeline:
        return None
    alerts = page.model.job_alerts(source, job_id)
    why = page.model.whys([job]).get(job_id) if job is not None else None
    view = views.job_view(job, source, job_id, timeline, alerts, page.clock(), why)
    return dict(page.scrub(view))


def _events_data(page: StatusPage, wanted: EventFilter) -> dict[str, Any]:
    rows = page.model.events(wanted)
    return dict(page.scrub(views.events_view(rows, wanted.limit, page.clock())))


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    # SQLite work off the event loop: polling and delivery never wait for a page.
    return await asyncio.to_thread(fn, *args)


# --- pages ---------------------------------------------------------------------------------


async def _overview(request: web.Request) -> web.Response:
    data = await _in_thread(_overview_data, request.app[_PAGE])
    return _html(request, "overview.html", view=data)


async def _batch(request: web.Request) -> web.Response:
    source, name = _required(request, "source"), _required(request, "name")
    data = await _in_thread(_batch_data, request.app[_PAGE], source, name)
    if data is None:
        return _error(
            request, 404, "No such batch", f"No job of source {source} is in batch {name}."
        )
    return _html(request, "batch.html", view=data)


async def _job(request: web.Request) -> web.Response:
    source, job_id = _required(request, "source"), _required(request, "id")
    data = await _in_thread(_job_data, request.app[_PAGE], source, job_id)
    if data is None:
        return _error(request, 404, "No such job", f"Source {source} has no job {job_id}.")
    return _html(request, "job.html", view=data)


async def _events(request: web.Request) -> web.Response:
    page = request.app[_PAGE]
    wanted = _event_filter(request)
    data = await _in_thread(_events_data, page, wanted)
    names = [s.name for s in page.config().sources]
    query = {k: v for k, v in request.query.items() if v.strip() and k != "before"}
    form = {
        "source": wanted.source,
        "kind": wanted.kind,
        "state": wanted.state,
        "batch": wanted.batch,
        "before": wanted.before_id,
        "since_input": _input_time(wanted.since),
        "until_input": _input_time(wanted.until),
        "any": bool(query),
        "query_without_before": query,
        "query_next": {**query, "before": data["next_before"]},
    }
    choices = {
        "sources": names,
        "kinds": [k.value for k in EventKind],
        "states": sorted(KNOWN_STATES),
    }
    return _html(request, "events.html", view=data, f=form, choices=choices)


def _input_time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


# --- API -----------------------------------------------------------------------------------


async def _api_overview(request: web.Request) -> web.Response:
    return _json(await _in_thread(_overview_data, request.app[_PAGE]))


async def _api_sources(request: web.Request) -> web.Response:
    page = request.app[_PAGE]

    def build() -> dict[str, Any]:
        now = page.clock()
        return dict(
            page.scrub(
                {
                    "now": now.isoformat(timespec="seconds"),
                    "sources": views.source_views(page.model.sources(), page.infos(), now),
                }
            )
        )

    return _json(await _in_thread(build))


async def _api_jobs(request: web.Request) -> web.Response:
    page = request.app[_PAGE]
    limit = _int(request, "limit", 100, 1, _MAX_LIMIT) or 100
    after_text = _param(request, "after")
    after = None
    if after_text is not None:
        after_source, sep, after_id = after_text.partition(":")
        if not sep:
            raise _BadRequest("after: expected SOURCE:JOB_ID (the 'next' value of a page)")
        after = (after_source, after_id)
    source, state, batch = (
        _param(request, "source"),
        _param(request, "state"),
        _param(request, "batch"),
    )

    def build() -> dict[str, Any]:
        now = page.clock()
        rows = page.model.jobs(source=source, state=state, batch=batch, after=after, limit=limit)
        last = rows[-1] if len(rows) == limit else None
        return dict(
            page.scrub(
                {
                    "now": now.isoformat(timespec="seconds"),
                    "jobs": [views.job_summary(j, now) for j in rows],
                    "next": f"{last.source}:{last.job_id}" if last else None,
                }
            )
        )

    return _json(await _in_thread(build))


async def _api_job(request: web.Request) -> web.Response:
    source, job_id = _required(request, "source"), _required(request, "id")
    data = await _in_thread(_job_data, request.app[_PAGE], source, job_id)
    if data is None:
        return _json({"error": f"source {source} has no job {job_id}"}, 404)
    return _json(data)


async def _api_batches(request: web.Request) -> web.Response:
    page = request.app[_PAGE]
    source = _param(request, "source")
    only_open = _param(request, "open") in ("1", "true", "yes")
    limit = _int(request, "limit", 100, 1, _MAX_LIMIT) or 100
    offset = _int(request, "offset", 0, 0, 10**9) or 0

    def build() -> dict[str, Any]:
        now = page.clock()
        rows = [b for b in page.model.batches(source=source) if b.open or not only_open]
        view = views.batches_view(rows[offset : offset + limit], now)
        view["total"] = len(rows)
        view["next_offset"] = offset + limit if offset + limit < len(rows) else None
        return dict(page.scrub(view))

    return _json(await _in_thread(build))


async def _api_batch(request: web.Request) -> web.Response:
    source, name = _required(request, "source"), _required(request, "name")
    found = await _in_thread(_batch_data, request.app[_PAGE], source, name)
    if found is None:
        return _json({"error": f"no job of source {source} is in batch {name}"}, 404)
    return _json(found)


async def _api_events(request: web.Request) -> web.Response:
    wanted = _event_filter(request)
    return _json(await _in_thread(_events_data, request.app[_PAGE], wanted))


async def _api_outbox(request: web.Request) -> web.Response:
    page = request.app[_PAGE]
    limit = _int(request, "limit", 100, 1, _MAX_LIMIT) or 100
    unsent: Sequence[str] = (OutboxStatus.PENDING.value, OutboxStatus.DEAD.value)

    def build() -> dict[str, Any]:
        now = page.clock()
        counts = page.model.outbox_counts(now)
        rows = page.model.outbox(unsent, limit)
        return dict(page.scrub(views.outbox_view(counts, rows, now)))

    return _json(await _in_thread(build))
