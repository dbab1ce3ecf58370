"""`check` and a `once` cycle against the simulator with other installs of the package.

`make min-deps` builds a venv with exactly the declared minimum versions (Python 3.11) and
`make pythons` one per Python 3.11-3.13 found, from requirements.lock; each then runs this
module with WATCHER_TEST_PYTHONS naming their interpreters. Without it (a plain `pytest`)
there is nothing to run here; CI=1 makes that a failure rather than a skip.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.receivers import WebhookReceiver, json_url
from watcher.simulator.app import create_app
from watcher.simulator.runner import serve_app
from watcher.simulator.state import SimulatorState

T = TypeVar("T")
AK, SK, PROJECT = "INTERPAK0000000000", "interp-secret-key-000000000000", "interp-project"


def _pythons() -> list[str]:
    return [p for p in os.environ.get("WATCHER_TEST_PYTHONS", "").split(os.pathsep) if p]


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def servers() -> Iterator[tuple[str, WebhookReceiver, _Loop, list[str]]]:
    loop = _Loop()
    state = SimulatorState(seed=5)
    state.populate(6, datetime.now(UTC))
    runner, base = loop.run(serve_app(create_app(state, project_id=PROJECT, ak=AK, sk=SK)))
    hook = WebhookReceiver()
    loop.run(hook.start())
    try:
        yield base, hook, loop, sorted(state.jobs)
    finally:
        loop.run(hook.stop())
        loop.run(runner.cleanup())
        loop.stop()


def _version(python: str) -> str:
    out = subprocess.run(  # noqa: S603 - an interpreter named by the make target
        [
            python,
            "-c",
            "import sys, apprise, aiohttp; print(sys.version.split()[0], "
            "apprise.__version__, aiohttp.__version__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


@pytest.mark.parametrize("python", _pythons() or ["<none>"])
def test_check_and_once_with_each_install(
    python: str, servers: tuple[str, WebhookReceiver, _Loop, list[str]], tmp_path: Path
) -> None:
    if python == "<none>":
        # A plain `pytest` (make unit) has nothing to run here; the targets that build the
        # installs set WATCHER_TEST_PYTHONS and CI=1, so a missing interpreter fails there.
        pytest.skip("WATCHER_TEST_PYTHONS is not set: run `make min-deps` or `make pythons`")
    base, hook, loop, job_ids = servers
    config = tmp_path / "config.yaml"
    config.write_text(
        "sources:\n"
        f"  - name: sim\n    endpoint: {base}\n    project_id: {PROJECT}\n"
        f"    ak: {AK}\n    sk: {SK}\n    request_timeout: 5s\n"
        f"channels:\n  hook: {json_url(hook.base_url)}\n"
        "rules:\n  - name: all\n    on: '*'\n    notify: [hook]\n"
        f"storage: {tmp_path / 'state.db'}\nfirst_run: notify\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_SDK")}
    print(f"{python}: {_version(python)}")
    for command in ("check", "once"):
        result = subprocess.run(  # noqa: S603
            [python, "-m", "watcher", command, "-c", str(config), "--log-format", "json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
    # first_run: notify alerts on every job already there: `once` returned after delivering.
    received = loop.run(hook.wait_for(1, within=10))
    text = " ".join(str(body) for body in received)
    assert [job for job in job_ids if job not in text] == []
