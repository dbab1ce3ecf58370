"""The composition root: run, once, demo and reload are wired by watcher.app alone, and the
redactor it owns grows across reloads (an old channel URL's token stays masked)."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.test_cli import HOOK_TOKEN, Servers, cli, logging_restored, start_servers
from watcher import demo
from watcher.app import App, Root
from watcher.cli import EX_OK
from watcher.daemon import Watcher, serve
from watcher.logs import configure
from watcher.sdnotify import SystemdNotifier

PACKAGE = Path(__file__).resolve().parents[1] / "watcher"
NEW_HOOK_TOKEN = "ReloadedHookToken4242"


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Servers]:
    yield from start_servers(tmp_path, monkeypatch)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


class Built:
    """Every App the root builds or rebuilds in a test, by wrapping the real methods."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.apps: list[App] = []
        self.rebuilt: list[App] = []
        build, rebuild = Root.build_app, App.rebuild

        def build_app(root: Root, *args: Any, **kwargs: Any) -> App:
            app = build(root, *args, **kwargs)
            self.apps.append(app)
            return app

        def rebuild_app(app: App, config: Any) -> App:
            new = rebuild(app, config)
            self.rebuilt.append(new)
            return new

        monkeypatch.setattr(Root, "build_app", build_app)
        monkeypatch.setattr(App, "rebuild", rebuild_app)

    @staticmethod
    def watcher_of(app: App) -> Watcher | None:
        """The app's Watcher if it built one (cached_property keeps it in the instance)."""
        watcher = app.__dict__.get("watcher")
        return watcher if isinstance(watcher, Watcher) else None


# --- who builds what -----------------------------------------------------------------------


def _calls(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                yield func.id
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                yield f"{func.value.id}.{func.attr}"
                if func.attr == "open" and any(
                    k.arg == "exclusive" and isinstance(k.value, ast.Constant) and k.value.value
                    for k in node.keywords
                ):
                    yield f"{func.value.id}.open(exclusive=True)"


def test_only_the_root_builds_the_watcher_notifier_session_and_daemon_store() -> None:
    wiring = {"Watcher", "Notifier", "aiohttp.ClientSession", "Store.open(exclusive=True)"}
    # Notifier and Watcher are the classes; their own modules define, never wire, them.
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "simulator" in path.parts:
            continue  # the simulator is the cloud's stand-in, not part of the app
        names = set(_calls(ast.parse(path.read_text()))) & wiring
        if names:
            found[str(path.relative_to(PACKAGE))] = names
    assert found == {"app.py": wiring}


def test_once_goes_through_the_root(
    servers: Servers, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    built = Built(monkeypatch)
    job = servers.add_job(state="AUDITING")
    config = servers.config()
    assert cli(capsys, "once", "-c", config)[0] == EX_OK
    servers.set_state(job["job_id"], "AUDIT_FAILED")
    assert cli(capsys, "once", "-c", config)[0] == EX_OK
    assert len(servers.titles()) == 1
    assert len(built.apps) == 2  # one app per `once`
    watchers = [built.watcher_of(app) for app in built.apps]
    assert all(w is not None and w.last_ok()["prod"] is not None for w in watchers), watchers


def test_the_demo_goes_through_the_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built = Built(monkeypatch)
    root = Root()
    configure(level="warning", fmt="json", redactor=root.redactor)
    code = asyncio.run(
        demo.run_demo(jobs=3, step_every=0.2, poll_interval="5s", seed=3, duration=2.5, root=root)
    )
    assert code == 0
    assert len(built.apps) == 1 and built.apps[0].root is root
    watcher = built.watcher_of(built.apps[0])
    assert watcher is not None and watcher.last_ok()["demo"] is not None
    # The demo's AK, SK and channel URL were registered with the root's redactor.
    assert root.redactor.redact(built.apps[0].config.sources[0].sk.secret.reveal()) == "****"
    capsys.readouterr()


# --- run and reload ------------------------------------------------------------------------


def _wait_for(out: io.StringIO, event: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in out.getvalue().splitlines():
            record = json.loads(line)
            if record.get("event") == event:
                return dict(record)
        time.sleep(0.05)
    raise AssertionError(f"no {event} in {out.getvalue()[-2000:]}")


def test_a_reload_rebuilds_through_the_root_and_the_old_url_token_stays_masked(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = Built(monkeypatch)
    path = Path(servers.config())
    out = io.StringIO()
    root = Root()
    configure(level="info", fmt="json", stream=out, redactor=root.redactor)
    config = root.load(str(path))
    store = root.open_store(config)
    log = structlog.get_logger("tests.test_app")
    moved = path.read_text().replace(HOOK_TOKEN, NEW_HOOK_TOKEN)

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        daemon = asyncio.create_task(
            serve(
                str(path),
                config,
                store,
                root=root,
                load_config=root.load,
                sd=SystemdNotifier.from_env({}),
            )
        )
        await loop.run_in_executor(None, _wait_for, out, "watcher_started")
        # The channel moves to a new URL: a new token, the old one gone from the config.
        await loop.run_in_executor(None, path.write_text, moved)
        os.kill(os.getpid(), signal.SIGHUP)
        await loop.run_in_executor(None, _wait_for, out, "config_reloaded")
        # An alert or a retry in flight may still carry the old URL, in our line or apprise's.
        log.warning("late_send", detail=f"posting to /hook/{HOOK_TOKEN}")
        logging.getLogger("apprise").warning("JSON POST URL: http://h/hook/%s", HOOK_TOKEN)
        log.warning("new_send", detail=f"posting to /hook/{NEW_HOOK_TOKEN}")
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(daemon, 30)

    try:
        assert asyncio.run(scenario()) == 0
    finally:
        store.close()
    text = out.getvalue()
    assert len(built.apps) == 1 and len(built.rebuilt) == 1
    old, new = built.apps[0], built.rebuilt[0]
    assert built.watcher_of(old) is not None and built.watcher_of(new) is not None
    assert new.store is old.store and new.metrics is old.metrics and new.memory is old.memory
    # The masking of the old token is owed to the root's memory: the new config lacks it.
    assert not any(HOOK_TOKEN in secret for secret in new.config.secrets)
    assert HOOK_TOKEN not in text and NEW_HOOK_TOKEN not in text
    lines = {(r := json.loads(line))["event"]: r for line in text.splitlines() if "****" in line}
    assert lines["late_send"]["detail"] == "posting to /hook/****"
    assert lines["new_send"]["detail"] == "posting to /hook/****"
    assert any("JSON POST URL" in event for event in lines)
