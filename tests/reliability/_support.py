"""Shared parts of the reliability suite: servers on a background loop, configs, the CLI.

Real things on 127.0.0.1 only. `SOAK=1` (see `make soak`) raises the counts of the long tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from tests.receivers import WebhookReceiver, json_url
from watcher.simulator.app import create_app
from watcher.simulator.runner import serve_app
from watcher.simulator.state import SimulatorState

T = TypeVar("T")

SOAK = os.environ.get("SOAK", "") not in ("", "0")
ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

AK = "RELIABILITYAK0000001"
SK = "reliability-secret-key-0123456789abcdef"
PROJECT = "proj-reliability"
ENV = {"TEST_AK": AK, "TEST_SK": SK}

# The job-state rules every scenario uses; vanished jobs are alerted too, so that a false
# "vanished" (a partial scan taken for a complete one) would show up as an extra alert.
# Grouped per job: a message may still carry several alerts (about one job), but never a
# "+N more" tail that would hide alerts from the count (the soak runs make large batches).
RULES = """\
rules:
  - name: failures
    on: [AUDIT_FAILED, SPLIT_FAILED, FAILED]
    notify: [hook]
    group_by: [source, rule, job_id]
  - name: done
    on: [SUCCEED]
    notify: [hook]
    group_by: [source, rule, job_id]
  - name: gone
    events: [vanished]
    notify: [hook]
    group_by: [source, rule, job_id]
"""

CONFIG = (
    """\
sources:
  - name: prod
    endpoint: {endpoint}
    project_id: {project}
    ak: ${{TEST_AK}}
    sk: ${{TEST_SK}}
    poll_interval: 60s
    request_timeout: {request_timeout}
    full_scan_every: 0
    max_requests_per_second: 1000
channels:
  hook: ["{hook}"]
"""
    + RULES
    + """\
storage: {storage}
delivery:
  retry_initial: 1s
  retry_max: 2s
  give_up_after: {give_up_after}
  send_timeout: {send_timeout}
"""
)


def config_text(
    *,
    endpoint: str,
    hook: str,
    storage: Path | str,
    request_timeout: str = "5s",
    send_timeout: str = "5s",
    give_up_after: str = "24h",
) -> str:
    return CONFIG.format(
        endpoint=endpoint,
        project=PROJECT,
        hook=hook,
        storage=storage,
        request_timeout=request_timeout,
        send_timeout=send_timeout,
        give_up_after=give_up_after,
    )


_GROUP_TITLE = re.compile(r"^\d+ voice job alerts \(")


# A grouped message's line about one job: "- JOB (VOICE): PREVIOUS → STATE …" (see
# watcher.engine.messages.job_line); indented lines under it are its why.
_GROUP_LINE = re.compile(r"- (?P<job>\S+?)(?: \((?P<voice>.*?)\))?: \S+ → (?P<state>\S+)")


def alert_titles(payload: Mapping[str, Any]) -> list[str]:
    """The alerts one received message carries: itself, or each job line of a grouped message,
    as the default title of that alert ("STATE: voice job JOB (VOICE)").

    A group too large to list every alert ("+N more") cannot be checked alert by alert.
    """
    title = str(payload.get("title", ""))
    if not _GROUP_TITLE.match(title):
        return [title]
    lines = str(payload.get("message", "")).replace("<br>", "").splitlines()
    if any(line.startswith("+") and " more" in line for line in lines):
        raise AssertionError(f"grouped message too large to verify: {title}")
    out = []
    for line in lines:
        if not line.startswith("- "):
            continue
        found = _GROUP_LINE.match(line)
        if found is None:
            out.append(line[2:])  # a job-less alert: its reason
            continue
        voice = f" ({found['voice']})" if found["voice"] else ""
        out.append(f"{found['state']}: voice job {found['job']}{voice}")
    return out


def alert_counts(received: list[dict[str, Any]]) -> Counter[str]:
    """How often each alert (by title: state, job id and voice) arrived, groups unpacked."""
    return Counter(title for payload in received for title in alert_titles(payload))


def repeated_messages(received: list[dict[str, Any]], expected: Counter[str]) -> int:
    """Messages that carried at least one alert already delivered as often as expected."""
    seen: Counter[str] = Counter()
    repeats = 0
    for payload in received:
        titles = alert_titles(payload)
        if any(seen[t] >= expected[t] for t in titles):
            repeats += 1
        seen.update(titles)
    return repeats


class BackgroundServers:
    """The simulator and a webhook receiver on an event loop in a thread of their own.

    The test's thread stays free to run blocking CLI subprocesses; `call()` runs a function on
    the servers' loop (the only place the simulator state may be touched while they serve).
    """

    def __init__(
        self,
        state: SimulatorState,
        receiver: WebhookReceiver | None = None,
        middlewares: tuple[Callable[..., Awaitable[web.StreamResponse]], ...] = (),
    ) -> None:
        self.state = state
        self.receiver = receiver or WebhookReceiver()
        self._middlewares = middlewares
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.endpoint = ""
        self.hook_base = ""

    def __enter__(self) -> BackgroundServers:
        self._thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    async def _start(self) -> None:
        app = create_app(self.state, project_id=PROJECT, ak=AK, sk=SK)
        app.middlewares.extend(self._middlewares)
        self._runner, self.endpoint = await serve_app(app)
        self.hook_base = await self.receiver.start()

    async def _stop(self) -> None:
        await self.receiver.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapped() -> T:
            return fn()

        return self.run(wrapped())

    @property
    def hook_url(self) -> str:
        return json_url(self.hook_base)


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: ours, the test keys, no proxies, unbuffered."""
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    env.update(ENV)
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_PROXY"] = "127.0.0.1,localhost"
    if extra:
        env.update(extra)
    return env


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m watcher ARGS` in a subprocess; output captured as text."""
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [PYTHON, "-m", "watcher", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        cwd=cwd or ROOT,
        check=False,
    )


class Launcher:
    """Talks to `_forkserver`: start a CLI run, wait (with a deadline) for its exit code."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [PYTHON, "-m", "tests.reliability._forkserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=cli_env(),
            bufsize=0,
        )
        self._buffer = b""
        assert self._readline(60) == "ready"

    def _readline(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError("the launcher died")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def start(self, argv: list[str], stdout: Path, stderr: Path) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(("\t".join([str(stdout), str(stderr), *argv]) + "\n").encode())
        line = self._readline(30)
        assert line is not None and line.startswith("pid "), line
        return int(line.split()[1])

    def wait(self, timeout: float) -> int | None:
        line = self._readline(timeout)
        if line is None:
            return None
        assert line.startswith("exit "), line
        return int(line.split()[1])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_forked(
    launcher: Launcher, argv: list[str], workdir: Path, name: str
) -> tuple[int, str, str]:
    """One CLI run in a process forked by `launcher`: (exit code, stdout, stderr)."""
    out, err = workdir / f"{name}.out", workdir / f"{name}.err"
    launcher.start(argv, out, err)
    code = launcher.wait(60)
    assert code is not None, f"{name}: the CLI run hung"
    return code, out.read_text(), err.read_text()


@contextlib.contextmanager
def memory_dir(fallback: Path) -> Iterator[Path]:
    """A directory on tmpfs (/dev/shm) when there is one, else `fallback`.

    For state files of long fault runs: the store fsyncs every commit, which on a busy disk
    costs more than the rest of a cycle. A SIGKILL does not lose the page cache, so crash
    safety is tested just as well; only power loss would need the disk.
    """
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        yield fallback
        return
    path = Path(tempfile.mkdtemp(prefix="metastudio-watcher-test-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
