"""Storage faults through the CLI: corrupt, truncated, unwritable, full; migration; the lock.

Each failure must be one clear line naming the file with a hint, a non-zero exit, no
traceback, and no state written; a schema from an older version is migrated in place; and a
second daemon on the same file is refused while the first runs, naming its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability._support import (
    PYTHON,
    ROOT,
    BackgroundServers,
    alert_titles,
    cli_env,
    config_text,
    run_cli,
)
from watcher.simulator.state import SimulatorState
from watcher.store import _MIGRATIONS, SCHEMA_VERSION


@pytest.fixture
def servers() -> Iterator[BackgroundServers]:
    state = SimulatorState(seed=21)
    for _ in range(5):
        state.add_job(state="AUDITING")
    with BackgroundServers(state) as running:
        yield running


def write_config(tmp_path: Path, servers: BackgroundServers, storage: Path | str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(config_text(endpoint=servers.endpoint, hook=servers.hook_url, storage=storage))
    return path


def assert_clean_failure(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero, one `metastudio-watcher: …` line naming what is wrong, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("metastudio-watcher:")]
    # `once` writes its fatal line as a JSON log record when stderr is not a terminal.
    lines += [
        f"metastudio-watcher: {record['event']}"
        for line in result.stderr.splitlines()
        if line.startswith("{") and (record := json.loads(line)).get("logger") == "watcher.cli"
    ]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_garbage_state_file_is_refused_and_left_untouched(
    tmp_path: Path, servers: BackgroundServers
) -> None:
    db = tmp_path / "state.db"
    garbage = b"this is not a database\n" * 200
    db.write_bytes(garbage)
    result = run_cli("once", "-c", str(write_config(tmp_path, servers, db)))
    assert_clean_failure(result, str(db), "not a SQLite database", "move it aside")
    assert result.returncode == 1
    assert db.read_bytes() == garbage
    assert not Path(f"{db}-wal").exists()


def test_truncated_state_file_is_refused_and_left_untouched(
    tmp_path: Path, servers: BackgroundServers
) -> None:
    db = tmp_path / "state.db"
    cfg = write_config(tmp_path, servers, db)
    assert run_cli("once", "-c", str(cfg)).returncode == 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    result = run_cli("once", "-c", str(cfg))
    assert_clean_failure(result, str(db), "restore a backup")
    assert db.read_bytes() == data[: len(data) // 2]


@pytest.mark.parametrize(
    "where",
    [
        pytest.param("/sys/metastudio-watcher-test/state.db", id="sysfs_refuses_files"),
        pytest.param(
            "/proc/self/metastudio-watcher/state.db",
            id="procfs_refuses_dirs",
        ),
        pytest.param("FILE/state.db", id="parent_is_a_regular_file"),
    ],
)
def test_unwritable_location_is_named_with_a_hint(
    tmp_path: Path, servers: BackgroundServers, where: str
) -> None:
    blocker = tmp_path / "FILE"
    blocker.write_text("a file, not a directory")
    storage = where.replace("FILE", str(blocker))
    result = run_cli("once", "-c", str(write_config(tmp_path, servers, storage)))
    line = assert_clean_failure(result, storage)
    # Refused by the config check before anything is opened: a config error, exit 78.
    assert result.returncode == 78, result.stderr
    assert any(hint in line for hint in ("cannot hold a SQLite database", "is a file, so"))
    assert blocker.read_text() == "a file, not a directory"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(  # noqa: S603
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)  # noqa: S603


def fill_disk_and_fail_jobs(disk: Path, servers: BackgroundServers) -> list[str]:
    """Leave no byte free on `disk`, then make every job fail (alerts to commit)."""
    filler = disk / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as stream:
        while True:
            stream.write(b"\0" * 4096)
    jobs = sorted(servers.state.jobs)

    def fail_all() -> None:
        for job_id in jobs:
            servers.state.set_state(job_id, "AUDIT_FAILED", job_failed_reason="x" * 200)

    servers.call(fail_all)
    return jobs


def test_full_disk_fails_the_cycle_cleanly_and_loses_nothing(
    tiny_disk: Path, tmp_path: Path, servers: BackgroundServers
) -> None:
    db = tiny_disk / "state.db"
    cfg = write_config(tmp_path, servers, db)
    assert run_cli("once", "-c", str(cfg)).returncode == 0  # the baseline
    jobs = fill_disk_and_fail_jobs(tiny_disk, servers)
    result = run_cli("once", "-c", str(cfg))
    assert_clean_failure(result, str(db))
    assert servers.receiver.received == []

    (tiny_disk / "filler").unlink()  # space again: the same changes are found and sent, once
    assert run_cli("once", "-c", str(cfg)).returncode == 0
    assert run_cli("once", "-c", str(cfg)).returncode == 0
    titles = [t for p in servers.receiver.received for t in alert_titles(p)]
    assert sorted(t.split(" ")[3] for t in titles) == jobs


def test_full_disk_says_the_disk_is_full(
    tiny_disk: Path, tmp_path: Path, servers: BackgroundServers
) -> None:
    db = tiny_disk / "state.db"
    cfg = write_config(tmp_path, servers, db)
    assert run_cli("once", "-c", str(cfg)).returncode == 0
    fill_disk_and_fail_jobs(tiny_disk, servers)
    assert_clean_failure(run_cli("once", "-c", str(cfg)), str(db), "disk is full")


def test_state_file_of_an_older_version_is_migrated_keeping_its_baseline(
    tmp_path: Path, servers: BackgroundServers
) -> None:
    db = tmp_path / "state.db"
    jobs = servers.state.jobs
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for statement in _MIGRATIONS[0]:  # the v1 schema, as the first release wrote it
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO sources (name, baseline_at, last_cycle_at) VALUES ('prod', ?, ?)",
            ("2024-01-01T00:00:00.000000+00:00",) * 2,
        )
        conn.executemany(
            "INSERT INTO jobs (source, job_id, state, reject_times) VALUES ('prod', ?, ?, ?)",
            [(j["job_id"], j["state"], j["reject_times"]) for j in jobs.values()],
        )
        conn.commit()
    victim = sorted(jobs)[0]
    servers.call(lambda: servers.state.set_state(victim, "FAILED"))
    result = run_cli("once", "-c", str(write_config(tmp_path, servers, db)))
    assert result.returncode == 0, result.stderr
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    # Not a fresh baseline: the change since the old file's snapshot is alerted.
    assert [p["title"].split(":")[0] for p in servers.receiver.received] == ["FAILED"]
    assert victim in servers.receiver.received[0]["title"]


def test_second_daemon_on_the_same_file_is_refused_naming_the_first(
    tmp_path: Path, servers: BackgroundServers
) -> None:
    db = tmp_path / "state.db"
    cfg = write_config(tmp_path, servers, db)
    daemon = subprocess.Popen(  # noqa: S603
        [PYTHON, "-m", "watcher", "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env(),
        cwd=ROOT,
        text=True,
    )
    try:
        lock = Path(f"{db}.lock")
        deadline = time.monotonic() + 20
        while not (lock.exists() and lock.read_text().strip() == str(daemon.pid)):
            assert daemon.poll() is None, "the daemon stopped early"
            assert time.monotonic() < deadline, "the daemon never took its lock"
            time.sleep(0.05)
        result = run_cli("once", "-c", str(cfg))
        assert_clean_failure(
            result, f"another metastudio-watcher is already using {db} (pid {daemon.pid})"
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, stderr
    # The first one stopped: the next continues its state (no new baseline, changes alerted).
    victim = sorted(servers.state.jobs)[0]
    servers.call(lambda: servers.state.set_state(victim, "SPLIT_FAILED"))
    assert run_cli("once", "-c", str(cfg)).returncode == 0
    assert [p["title"].split(":")[0] for p in servers.receiver.received] == ["SPLIT_FAILED"]


def test_state_directory_and_files_are_private(tmp_path: Path, servers: BackgroundServers) -> None:
    db = tmp_path / "new" / "deeper" / "state.db"
    assert run_cli("once", "-c", str(write_config(tmp_path, servers, db))).returncode == 0
    assert (os.stat(db.parent).st_mode & 0o777) == 0o700
    assert (os.stat(db.parent.parent).st_mode & 0o777) == 0o700
    for path in db.parent.iterdir():
        assert (os.stat(path).st_mode & 0o077) == 0, f"{path} is readable by others"
    shutil.rmtree(db.parent.parent)
