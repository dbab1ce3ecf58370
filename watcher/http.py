"""The operator's HTTP endpoints: /healthz (process up), /readyz (sources fresh), /metrics.

`readiness()` decides, purely, from times passed in; `start_http()` only serves the answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web

from watcher.config import parse_listen
from watcher.errors import ConfigError
from watcher.metrics import Metrics
from watcher.readiness import Readiness, readiness

__all__ = ["Readiness", "bound_port", "readiness", "start_http"]

ReadinessProbe = Callable[[], "Readiness"]


_METRICS = web.AppKey("metrics", Metrics)
_READY: web.AppKey[ReadinessProbe] = web.AppKey("ready")


async def start_http(
    listen: str,
    metrics: Metrics,
    ready: ReadinessProbe,
    extend: Callable[[web.Application], None] | None = None,
) -> web.AppRunner:
    """Serve the endpoints on `listen` (`HOST:PORT`, `[::1]:PORT`; port 0 picks a free one).

    `extend` adds more to the app (the status page, `watcher.web.routes.install`).
    Stop with `await runner.cleanup()`; `bound_port(runner)` tells which port was taken.
    """
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(str(exc), key="http.listen") from None
    app = web.Application()
    app[_METRICS] = metrics
    app[_READY] = ready
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    if extend is not None:  # the status page: its routes and its credential check
        extend(app)
    # No access log: probes every few seconds would drown the watcher's own lines.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot listen on {listen}: {reason}", key="http.listen") from None
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the server listens on (useful after asking for port 0)."""
    address = runner.addresses[0]
    port: int = address[1]
    return port


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    state = request.app[_READY]()
    answer: dict[str, object] = {"ready": state.ready, "stale": list(state.stale)}
    if state.reason is not None:
        answer["reason"] = state.reason
    # A first scan of a large tenant takes a while: say how far it has got, not just "stale".
    if scans := request.app[_METRICS].scan_notes():
        answer["scans"] = scans
    body = json.dumps(answer)
    return web.Response(
        text=body + "\n", status=200 if state.ready else 503, content_type="application/json"
    )


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[_METRICS]
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})
