"""The fake MetaStudio HTTP API: the signed list/show endpoints and a `/_sim/` control interface.

Behaves like the API gateway in front of MetaStudio (signature, clock skew, project checks).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from watcher.metastudio import signer
from watcher.model import DOCUMENTED_STATES
from watcher.simulator.details import add_detail_routes
from watcher.simulator.state import ApiBehaviour, SimulatorState, to_ms

Clock = Callable[[], datetime]
STATE_KEY = web.AppKey("state", SimulatorState)
_MAX_SKEW = timedelta(minutes=15)
_FILTERS_EXACT = ("job_id", "voice_name", "tag", "job_type", "batch_name")
_SORT_FIELDS = {"create_time": "create_time", "update_time": "lastupdate_time"}
_MAX_OFFSET = 2147483647
_CACHED_LISTINGS = 8  # queries kept per version when the state caches listings


class _ApiFailure(Exception):
    """An error response the gateway or service would send."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _parse_rfc3339(value: str, name: str) -> int:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _ApiFailure(400, "MSS.00000003", f"invalid parameter {name}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return to_ms(when)


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise _ApiFailure(
            400, "MSS.00000003", f"invalid parameter {name}: must be between {low} and {high}"
        )
    return value


_PAGING = ("offset", "limit")


def request_kind(query: Mapping[str, str]) -> str:
    """`list` plus the filters used, sorted: `list?create_since&state`, `list?update_since`."""
    names = sorted(k for k in query if k not in _PAGING and k not in ("sort_key", "sort_dir"))
    return "list" + ("?" + "&".join(names) if names else "")


_DOCUMENTED_FILTERS = ("state", "create_since", "create_until", *_FILTERS_EXACT)


def honoured_query(behaviour: ApiBehaviour, query: Mapping[str, str]) -> dict[str, str]:
    """The part of `query` a region with `behaviour` acts on; the rest it accepts and ignores.

    DOCUMENTED validates `state` like an API that checks the parameter against the page.
    """
    if behaviour is ApiBehaviour.FULL:
        return dict(query)
    if behaviour is ApiBehaviour.PLAIN:
        return {k: v for k, v in query.items() if k in _FILTERS_EXACT}
    if (states := query.get("state")) is not None:
        for value in states.split(","):
            if value.strip() not in DOCUMENTED_STATES:
                raise _ApiFailure(400, "MSS.00000003", "invalid parameter state")
    return {k: v for k, v in query.items() if k in _DOCUMENTED_FILTERS}


def select_jobs(state: SimulatorState, query: Mapping[str, str]) -> list[dict[str, Any]]:
    """The jobs matching the filters the simulated region honours, in its order (no paging)."""
    query = honoured_query(state.api_behaviour, query)
    if not state.cache_listings:
        return _select(state, query)
    key = tuple(sorted((k, v) for k, v in query.items() if k not in _PAGING))
    if state.listing_cache_version != state.version:
        state.listing_cache.clear()
        state.listing_cache_version = state.version
    if (cached := state.listing_cache.get(key)) is not None:
        return cached
    jobs = _select(state, query)
    if len(state.listing_cache) >= _CACHED_LISTINGS:
        state.listing_cache.pop(next(iter(state.listing_cache)))  # the oldest query
    state.listing_cache[key] = jobs
    return jobs


def _select(state: SimulatorState, query: Mapping[str, str]) -> list[dict[str, Any]]:
    jobs = list(state.jobs.values())
    if states := query.get("state"):
        wanted = {s.strip() for s in states.split(",") if s.strip()}
        jobs = [job for job in jobs if job.get("state") in wanted]
    for name in _FILTERS_EXACT:
        if (value := query.get(name)) is not None:
            jobs = [job for job in jobs if job.get(name) == value]
    for name, field, later in (
        ("create_since", "create_time", True),
        ("create_until", "create_time", False),
        ("update_since", "lastupdate_time", True),
        ("update_until", "lastupdate_time", False),
    ):
        if (value := query.get(name)) is not None:
            bound = _parse_rfc3339(value, name)
            jobs = [job for job in jobs if (job[field] >= bound if later else job[field] <= bound)]
    sort_key = query.get("sort_key", "create_time")
    sort_dir = query.get("sort_dir", "desc")
    if sort_key not in _SORT_FIELDS or sort_dir not in ("asc", "desc"):
        raise _ApiFailure(400, "MSS.00000003", "invalid parameter sort_key or sort_dir")
    field = _SORT_FIELDS[sort_key]
    jobs.sort(key=lambda job: (job[field], job["job_id"]), reverse=sort_dir == "desc")
    return jobs


def _error(status: int, code: str, message: str, request_id: str) -> web.Response:
    body = {"error_code": code, "error_msg": message, "request_id": request_id}
    return web.json_response(body, status=status)


class SimulatorApi:
    """Request handlers bound to one state, project and key pair."""

    def __init__(
        self,
        state: SimulatorState,
        *,
        project_id: str,
        ak: str,
        sk: str,
        check_signature: bool,
        clock: Clock,
    ) -> None:
        self.state = state
        self.project_id = project_id
        self.ak = ak
        self.sk = sk
        self.check_signature = check_signature
        self.clock = clock

    # --- the API -------------------------------------------------------------------------

    def _check_auth(self, request: web.Request) -> None:
        if not self.check_signature:
            return
        headers = {k: v for k, v in request.headers.items()}
        auth_value = request.headers.get("Authorization")
        auth = signer.parse_authorization(auth_value) if auth_value else None
        bad = "Incorrect IAM authentication information: verify aksk signature fail"
        if auth is None or auth.access_key != self.ak:
            raise _ApiFailure(401, "APIGW.0301", bad)
        try:
            signed_at = datetime.strptime(
                request.headers.get("X-Sdk-Date", ""), signer.DATE_FORMAT
            ).replace(tzinfo=UTC)
        except ValueError:
            raise _ApiFailure(401, "APIGW.0301", bad) from None
        if abs(self.clock() - signed_at) > _MAX_SKEW:
            raise _ApiFailure(
                401, "APIGW.0303", "Incorrect app authentication information: request expired"
            )
        query = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
        ok = signer.verify(
            method=request.method,
            path=request.rel_url.raw_path,
            query=query,
            headers=headers,
            ak=self.ak,
            sk=self.sk,
        )
        if not ok:
            raise _ApiFailure(401, "APIGW.0301", bad)

    async def _play_fault(self, request: web.Request, request_id: str) -> web.StreamResponse | None:
        """Apply the next queued fault; a response to send instead of the real one, or None."""
        if not self.state.faults:
            return None
        fault = self.state.faults.pop(0)
        kind = fault.get("kind")
        if kind == "status":
            status = int(fault.get("status", 503))
            code = str(fault.get("error_code", "MSS.00000001"))
            message = str(fault.get("error_msg", "simulated failure"))
            resp = _error(status, code, message, request_id)
            if "retry_after" in fault:
                resp.headers["Retry-After"] = str(fault["retry_after"])
            return resp
        if kind == "html":
            html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
            return web.Response(text=html, content_type="text/html")
        if kind in ("truncated", "malformed", "missing_jobs"):
            real = await self._list(request)
            assert isinstance(real, web.Response) and real.body is not None
            raw = bytes(real.body)  # type: ignore[arg-type]
            if kind == "truncated":
                raw = raw[: max(1, len(raw) // 2)]
            elif kind == "malformed":
                raw = json.dumps({"count": "many", "jobs": {"job_id": 1}}).encode()
            else:
                raw = json.dumps({"count": json.loads(raw).get("count", 0)}).encode()
            return web.Response(body=raw, content_type="application/json")
        if kind == "hang":
            await asyncio.sleep(float(fault.get("seconds", 5)))
            return None
        if kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            # The connection is gone; aiohttp drops whatever is returned here.
            return web.Response(status=500)
        if kind == "insert_before_page":
            now = self.clock()
            oldest = min((job["create_time"] for job in self.state.jobs.values()), default=0)
            self.state.add_job(now=now, create_time=oldest - 1000, lastupdate_time=to_ms(now))
            return None
        if kind == "create_before_page":
            # A job created while a scan pages (`after` seconds from now): the listing grows.
            after = timedelta(seconds=float(fault.get("after", 0)))
            self.state.add_job(now=self.clock() + after)
            return None
        if kind == "delete_before_page":
            ordered = select_jobs(self.state, _query_dict(request))
            if ordered:
                self.state.remove_job(ordered[0]["job_id"])
            return None
        return None

    async def _list(self, request: web.Request) -> web.Response:
        query = _query_dict(request)
        self.state.requests_by_kind[request_kind(query)] += 1
        offset = _int_param(query, "offset", 0, 0, _MAX_OFFSET)
        limit = _int_param(query, "limit", 10, 1, 100)
        jobs = select_jobs(self.state, query)
        return web.json_response({"count": len(jobs), "jobs": jobs[offset : offset + limit]})

    async def _show(self, request: web.Request) -> web.Response:
        self.state.requests_by_kind["show"] += 1
        job = self.state.jobs.get(request.match_info["job_id"])
        if job is None:
            raise _ApiFailure(404, "MSS.00000004", "job not found")
        return web.json_response(job)

    async def _serve(self, request: web.Request, inner: str) -> web.StreamResponse:
        self.state.requests += 1
        request_id = uuid.uuid4().hex
        try:
            response = await self._play_fault(request, request_id)
            if response is None:
                self._check_auth(request)
                if request.match_info["project_id"] != self.project_id:
                    raise _ApiFailure(
                        403, "APIGW.0310", "The project is unavailable or does not match"
                    )
                response = await (self._list(request) if inner == "list" else self._show(request))
        except _ApiFailure as failure:
            response = _error(failure.status, failure.code, failure.message, request_id)
        response.headers["X-Request-Id"] = request_id
        response.headers["Date"] = format_datetime(self.clock(), usegmt=True)
        return response

    async def list_jobs(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "list")

    async def show_job(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "show")

    # --- the control interface -----------------------------------------------------------

    async def sim_add_job(self, request: web.Request) -> web.Response:
        fields = await _json_object(request)
        job = self.state.add_job(now=self.clock(), **fields)
        return web.json_response(job, status=201)

    async def sim_update_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        fields = await _json_object(request)
        if job_id not in self.state.jobs:
            raise web.HTTPNotFound(text=f"no job {job_id}")
        new_state = fields.pop("state", None)
        if new_state is None:
            job = self.state.update_fields(job_id, **fields)
        else:
            job = self.state.set_state(job_id, str(new_state), now=self.clock(), **fields)
        return web.json_response(job)

    async def sim_delete_job(self, request: web.Request) -> web.Response:
        self.state.remove_job(request.match_info["job_id"])
        return web.Response(status=204)

    async def sim_step(self, request: web.Request) -> web.Response:
        changes = self.state.step(self.clock())
        return web.json_response(
            {"changes": [{"job_id": j, "from": a, "to": b} for j, a, b in changes]}
        )

    async def sim_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": self.state.requests,
                "requests_by_kind": dict(self.state.requests_by_kind),
                "jobs": len(self.state.jobs),
                "faults_pending": len(self.state.faults),
                "ignore_update_filters": self.state.ignore_update_filters,
                "api_behaviour": str(self.state.api_behaviour),
            }
        )

    async def sim_config(self, request: web.Request) -> web.Response:
        """`POST /_sim/config {"api_behaviour": "documented"}`: act like another region
        (`full`, `documented`, `plain`; the older `{"ignore_update_filters": true}` means
        `documented`)."""
        fields = await _json_object(request)
        if "ignore_update_filters" in fields:
            self.state.ignore_update_filters = bool(fields["ignore_update_filters"])
        if "api_behaviour" in fields:
            try:
                self.state.api_behaviour = ApiBehaviour(str(fields["api_behaviour"]))
            except ValueError:
                choices = ", ".join(b.value for b in ApiBehaviour)
                raise web.HTTPBadRequest(text=f"api_behaviour must be one of {choices}") from None
        return web.json_response(
            {
                "ignore_update_filters": self.state.ignore_update_filters,
                "api_behaviour": str(self.state.api_behaviour),
            }
        )

    async def sim_faults(self, request: web.Request) -> web.Response:
        try:
            faults = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="body must be a JSON list of faults") from None
        if isinstance(faults, dict):
            faults = [faults]
        if not isinstance(faults, list) or not all(isinstance(f, dict) for f in faults):
            raise web.HTTPBadRequest(text="body must be a JSON list of faults")
        self.state.faults.extend(faults)
        return web.json_response({"faults_pending": len(self.state.faults)})


def _query_dict(request: web.Request) -> dict[str, str]:
    # The last value wins for a repeated key, like most gateways.
    return {key: value for key, value in request.rel_url.query.items()}


async def _json_object(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="body must be a JSON object") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return data


def create_app(
    state: SimulatorState,
    *,
    project_id: str,
    ak: str,
    sk: str,
    check_signature: bool = True,
    clock: Clock = _utc_now,
) -> web.Application:
    """The simulator as an aiohttp application; `clock` is the server's idea of now."""
    api = SimulatorApi(
        state, project_id=project_id, ak=ak, sk=sk, check_signature=check_signature, clock=clock
    )
    app = web.Application()
    app[STATE_KEY] = state
    base = "/v1/{project_id}/voice-training-manage/user/jobs"
    app.router.add_get(base, api.list_jobs)
    app.router.add_get(base + "/{job_id}", api.show_job)
    app.router.add_post("/_sim/jobs", api.sim_add_job)
    app.router.add_post("/_sim/jobs/{job_id}", api.sim_update_job)
    app.router.add_delete("/_sim/jobs/{job_id}", api.sim_delete_job)
    app.router.add_post("/_sim/step", api.sim_step)
    app.router.add_get("/_sim/stats", api.sim_stats)
    app.router.add_post("/_sim/faults", api.sim_faults)
    app.router.add_post("/_sim/config", api.sim_config)
    add_detail_routes(app, api)  # audit-result and op-logs (watcher.simulator.details)
    return app
