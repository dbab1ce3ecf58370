"""Starts the simulator on a socket, with its lifecycle stepping on a timer.

Used by `python -m watcher.simulator`, by `make demo` and by end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import structlog
from aiohttp import web

from watcher.simulator.app import STATE_KEY, create_app
from watcher.simulator.state import ApiBehaviour, SimulatorState

log = structlog.get_logger()


def _stepper(every: float) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run_steps(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE_KEY]

        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                changes = state.step(datetime.now(UTC))
                log.debug("simulator_stepped", changes=len(changes))

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return run_steps


async def start_simulator(
    host: str,
    port: int,
    *,
    jobs: int,
    step_every: float | None,
    seed: int,
    project_id: str,
    ak: str,
    sk: str,
    api_behaviour: ApiBehaviour = ApiBehaviour.FULL,
    cache_listings: bool = False,
) -> tuple[web.AppRunner, str]:
    """Serve a simulator with `jobs` jobs, acting like a region with `api_behaviour`;
    returns the runner (to clean up) and its base URL. `cache_listings` keeps each filtered,
    sorted listing until the next change, so paging a large tenant does not re-sort it per
    page."""
    state = SimulatorState(seed=seed, api_behaviour=api_behaviour, cache_listings=cache_listings)
    state.populate(jobs, datetime.now(UTC))
    app = create_app(state, project_id=project_id, ak=ak, sk=sk)
    if step_every is not None and step_every > 0:
        app.cleanup_ctx.append(_stepper(step_every))
    return await serve_app(app, host, port)


async def serve_app(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Listen with `app` (port 0: any free port); returns the runner and its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"
    return runner, f"http://{bound_host}:{bound_port}"


async def serve_forever(
    host: str,
    port: int,
    *,
    jobs: int,
    step_every: float | None,
    seed: int,
    project_id: str,
    ak: str,
    sk: str,
    api_behaviour: ApiBehaviour = ApiBehaviour.FULL,
    cache_listings: bool = False,
) -> None:
    """Run until SIGINT or SIGTERM."""
    runner, base_url = await start_simulator(
        host,
        port,
        jobs=jobs,
        step_every=step_every,
        seed=seed,
        project_id=project_id,
        ak=ak,
        sk=sk,
        api_behaviour=api_behaviour,
        cache_listings=cache_listings,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"MetaStudio simulator on {base_url} (project_id {project_id}, {jobs} jobs, "
        f"API behaviour {api_behaviour}{', listings cached' if cache_listings else ''})",
        flush=True,
    )
    print(
        f"control interface: {base_url}/_sim/stats, /_sim/step, /_sim/faults, /_sim/config",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
