"""`metastudio-watcher demo`: the whole product against the built-in simulator, no cloud account.

Starts the simulator and a small webhook receiver that prints each alert, writes a config that
points the daemon at both, and runs the real daemon until Ctrl-C (or `--duration`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from watcher.app import Root
from watcher.logs import configure
from watcher.recorder import Unrecorded
from watcher.simulator.runner import start_simulator

log = structlog.get_logger(__name__)

_ICONS = {"failure": "✖", "success": "✔", "warning": "!", "info": "·"}

DEMO_CONFIG = """\
# Written by `metastudio-watcher demo`: the daemon watches the built-in simulator.
sources:
  - name: demo
    endpoint: {endpoint}
    project_id: {project_id}
    ak: ${{DEMO_AK}}
    sk: ${{DEMO_SK}}
    poll_interval: {poll_interval}
channels:
  terminal: ["json://127.0.0.1:{receiver_port}/alerts"]
rules:
  - name: failures
    on: [AUDIT_FAILED, SPLIT_FAILED, FAILED]
    notify: [terminal]
    group_wait: 3s                    # failures of one poll arrive as one message
  - name: recovered
    events: [recovered]
    notify: [terminal]
    continue: false
  - name: done
    on: [SUCCEED]
    notify: [terminal]
  - name: batches
    events: [batch_settled, batch_updated]
    notify: [terminal]
  - name: watcher-blind
    events: [source_unhealthy, source_recovered]
    notify: [terminal]
delivery:
  send_timeout: 10s
storage: {storage}
"""


def chat_block(payload: Mapping[str, Any], received_at: datetime) -> str:
    """One message as a person would see it in a chat window: a header, then the body."""
    icon = _ICONS.get(str(payload.get("type")), "·")
    title = str(payload.get("title", "")).strip()
    lines = str(payload.get("message", "")).strip().splitlines()
    stamp = received_at.astimezone().strftime("%H:%M:%S")
    out = [f"╭─ {stamp}  {icon} {title}"]
    out += [f"│ {line}" for line in lines]
    out.append("╰─")
    return "\n".join(out)


async def _printing_receiver() -> tuple[web.AppRunner, int]:
    async def alerts(request: web.Request) -> web.Response:
        payload = await request.json()
        # One print per message, so blocks never interleave.
        print("\n" + chat_block(payload, datetime.now(UTC)), flush=True)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/alerts", alerts)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, int(port)


async def run_demo(
    *,
    jobs: int,
    step_every: float,
    poll_interval: str,
    seed: int,
    duration: float | None,
    logs: bool = False,
    log_format: str | None = None,
    root: Root | None = None,
) -> int:
    """The demo, wired by `root` (the command line's; a new one, if none, masks this run's
    lines with its own redactor)."""
    if root is None:
        root = Root()
        configure(level="info" if logs else "warning", fmt=log_format, redactor=root.redactor)
    elif not logs:
        # A chat window, not a log: the daemon's event and debug lines only when asked for.
        configure(level="warning", fmt=log_format)
    project_id = "demo-project"
    ak = "DEMO" + secrets.token_hex(8).upper()
    sk = secrets.token_hex(20)
    sim_runner, endpoint = await start_simulator(
        "127.0.0.1",
        0,
        jobs=jobs,
        step_every=step_every,
        seed=seed,
        project_id=project_id,
        ak=ak,
        sk=sk,
    )
    receiver, receiver_port = await _printing_receiver()
    with tempfile.TemporaryDirectory(prefix="metastudio-watcher-demo-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(
            DEMO_CONFIG.format(
                endpoint=endpoint,
                project_id=project_id,
                poll_interval=poll_interval,
                receiver_port=receiver_port,
                storage=Path(tmp) / "demo.db",
            )
        )
        config = root.load(str(path), {"DEMO_AK": ak, "DEMO_SK": sk})
        print(
            f"demo: simulator at {endpoint} with {jobs} jobs stepping every {step_every}s; "
            f"polling every {poll_interval}. The first poll is a silent baseline; alerts "
            "follow as jobs change state, one block per message. Ctrl-C stops "
            "(--logs shows the daemon's log too).",
            file=sys.stderr,
            flush=True,
        )
        store = root.open_store(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if duration is not None:
            loop.call_later(duration, stop.set)
        try:
            async with root.session(config) as session:
                app = root.build_app(config, store, session, metrics=Unrecorded())  # none served
                try:
                    await app.watcher.run(stop)
                finally:
                    app.close()
        finally:
            store.close()
            with contextlib.suppress(Exception):
                await receiver.cleanup()
            with contextlib.suppress(Exception):
                await sim_runner.cleanup()
    print("demo: stopped", file=sys.stderr)
    return 0
