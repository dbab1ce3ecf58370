"""What a real `python -m watcher once` process imports: only what its cycle needs.

Each case runs `once` as a child process against the simulator and a webhook receiver on
loopback (tests/test_cli.py's servers), through a wrapper that writes the child's
`sys.modules` when it exits. A cycle with nothing to send must not load apprise (its plugins,
requests, oauthlib: ~0.25 s of CPU), jinja2 or the status page; a cycle that sends loads them
on first use and the message arrives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli import HOOK_TOKEN, Servers, start_servers
from watcher.app import COLLECTOR_THRESHOLDS
from watcher.cli import EX_CONFIG, EX_OK
from watcher.model import OutboxStatus
from watcher.store import Store

# Runs the package's __main__ like `python -m watcher`, and records the modules at exit
# (atexit runs after SystemExit, so the whole process is seen, delivery pass included).
WRAPPER = """\
import atexit, gc, json, runpy, sys

out = sys.argv.pop(1)


def arenas():  # glibc's malloc arenas, as its malloc_info reports them (None: not glibc)
    import ctypes, os, tempfile

    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_info") or not hasattr(libc, "gnu_get_libc_version"):
        return None
    libc.fopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    fd, path = tempfile.mkstemp()
    os.close(fd)
    stream = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    with open(path) as f:
        text = f.read()
    os.remove(path)
    return text.count("<heap nr=")


def dump():
    with open(out, "w") as f:
        json.dump(
            {"modules": sorted(sys.modules), "gc": gc.get_threshold(), "arenas": arenas()}, f
        )


atexit.register(dump)
sys.argv[0] = "watcher"
runpy.run_module("watcher", run_name="__main__", alter_sys=True)
"""
# Heavy and unused by a cycle that sends nothing (the status page is off in these configs).
NOT_FOR_A_QUIET_CYCLE = (
    "apprise",
    "requests",
    "urllib3",
    "oauthlib",
    "jinja2",
    "watcher.web.routes",
    "aiohttp.web",  # the metrics and status server: `run` only
    "watcher.http",
    "prometheus_client",  # nothing scrapes a cron cycle (watcher.recorder)
)


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Servers]:
    yield from start_servers(tmp_path, monkeypatch)


def run_once(servers: Servers, config: str) -> tuple[int, str, set[str]]:
    """`once` in a child process: (exit code, stderr, the modules it had imported)."""
    wrapper = servers.tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    modules = servers.tmp_path / "modules.json"
    modules.unlink(missing_ok=True)
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, str(wrapper), str(modules), "once", "-c", config],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"},
    )
    seen = json.loads(modules.read_text())
    THRESHOLDS[:] = seen["gc"]
    ARENAS[:] = [seen["arenas"]]
    return done.returncode, done.stderr, set(seen["modules"])


THRESHOLDS: list[int] = []  # the collector's, as the last run_once's child had them
ARENAS: list[int | None] = []  # glibc's malloc arenas in it at exit (None: not glibc)


def loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


def test_a_cycle_with_nothing_to_send_never_imports_apprise_or_jinja2(servers: Servers) -> None:
    job = servers.add_job(state="AUDITING")
    config = servers.config()
    code, err, modules = run_once(servers, config)  # the silent baseline
    assert code == EX_OK, err
    assert loaded(modules, "watcher.daemon") and loaded(modules, "aiohttp")  # it did poll
    assert not [p for p in NOT_FOR_A_QUIET_CYCLE if loaded(modules, p)], err
    # A change no rule routes (the only rule is on failures): an event, no alert.
    servers.set_state(job["job_id"], "SUCCEED")
    code, err, modules = run_once(servers, config)
    assert code == EX_OK, err
    assert '"events": 1' in err and '"alerts": 0' in err  # the poll_finished line
    assert not [p for p in NOT_FOR_A_QUIET_CYCLE if loaded(modules, p)], err
    assert servers.hook.received == []
    assert tuple(THRESHOLDS) == COLLECTOR_THRESHOLDS  # tuned, as the composition root does


def test_a_cycle_that_sends_imports_apprise_then_and_the_message_arrives(
    servers: Servers,
) -> None:
    job = servers.add_job(state="AUDITING")
    config = servers.config()
    assert run_once(servers, config)[0] == EX_OK
    servers.set_state(job["job_id"], "AUDIT_FAILED")
    code, err, modules = run_once(servers, config)
    assert code == EX_OK, err
    assert servers.titles() == [f"AUDIT_FAILED: voice job {job['job_id']} ({job['voice_name']})"]
    assert servers.hook.requests[0].path == f"/hook/{HOOK_TOKEN}"
    assert loaded(modules, "apprise") and loaded(modules, "jinja2")
    assert not loaded(modules, "prometheus_client")  # sending counts nothing anyone reads
    # Only the json:// plugin, not apprise's ~190 (watcher.notify.PLUGIN_MODULES).
    plugins = {m for m in modules if m.startswith("apprise.plugins.") and m.count(".") == 2}
    assert "apprise.plugins.custom_json" in plugins
    assert not plugins & {"apprise.plugins.slack", "apprise.plugins.twitter"}, sorted(plugins)
    assert HOOK_TOKEN not in err


def test_a_url_apprise_refuses_fails_its_sends_in_once_and_the_alert_stays_queued(
    servers: Servers,
) -> None:
    """`once` leaves the URL check to the first send (`check` does it up front): the refused
    channel's alert waits in the outbox, the other channel's message still goes, and the
    exit is the config error (78, FILE:LINE) the refused URL is."""
    job = servers.add_job(state="AUDITING")
    config = servers.config(
        extra_channels='  bad: ["bogus://host/BogusSecretPath77"]\n',
        extra_rules="  - name: to-bad\n    on: [AUDIT_FAILED]\n    notify: [bad]\n",
    )
    assert run_once(servers, config)[0] == EX_OK
    servers.set_state(job["job_id"], "AUDIT_FAILED")
    code, err, _ = run_once(servers, config)
    assert code == EX_CONFIG, err
    assert f"{config}:" in err and "channels.bad" in err and "bogus" in err
    assert len(servers.titles()) == 1  # the good channel was not held up
    with Store.open(str(servers.storage)) as store:
        (pending,) = store.list_outbox([OutboxStatus.PENDING])
    assert pending.alert.channel == "bad"
    assert pending.last_error is not None
    assert "channel 'bad'" in pending.last_error
    assert "bogus:// is not a service apprise knows" in pending.last_error
    assert "BogusSecretPath77" not in err + pending.last_error
    assert "Traceback" not in err


def test_a_polling_process_keeps_one_malloc_arena_with_its_worker_thread(
    servers: Servers,
) -> None:
    # A cycle decides and commits in a worker thread; glibc would give that thread an arena
    # of its own (+45 MB at a 1M-job daemon's peak). The control: a thread, untuned.
    for _ in range(150):
        servers.add_job(state="AUDITING")
    config = servers.config()
    assert run_once(servers, config)[0] == EX_OK
    if ARENAS[0] is None:
        pytest.skip("not glibc: its own allocator, nothing to tune")
    assert ARENAS == [1]
    control = WRAPPER.replace(
        'runpy.run_module("watcher", run_name="__main__", alter_sys=True)',
        "import threading\n"
        "t = threading.Thread(target=lambda: [bytearray(700) for _ in range(10_000)])\n"
        "t.start(); t.join()",
    )
    (servers.tmp_path / "control.py").write_text(control)
    out = servers.tmp_path / "control.json"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, str(servers.tmp_path / "control.py"), str(out)], check=True, env=env
    )
    assert json.loads(out.read_text())["arenas"] >= 2  # untuned, a thread gets its own
