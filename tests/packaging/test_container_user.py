"""The Dockerfile's file-permission scheme, without an engine: as an arbitrary UID in group 0
(OpenShift), with root:root 0640 config and credentials and the state directory the image
makes (2770, 10001:0), the real CLI reads its config and creates and uses its state file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging._support import tool_missing

ARBITRARY_UID = 1000123456  # what OpenShift's restricted SCC hands out: no passwd entry


@pytest.fixture
def as_arbitrary_uid() -> list[str]:
    if os.geteuid() != 0:
        tool_missing("switching to an arbitrary UID needs root")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        tool_missing("setpriv not installed (util-linux)")
    return [setpriv, f"--reuid={ARBITRARY_UID}", "--regid=0", "--clear-groups", "--"]


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory others may traverse (pytest's own tree is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mw-container-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_arbitrary_uid_in_group_0_reads_root_owned_files_and_writes_state(
    as_arbitrary_uid: list[str], open_tmp: Path
) -> None:
    tmp_path = open_tmp
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o755)
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 10001, 0)
    state.chmod(0o2770)  # as `install -d -m 2770 -o 10001 -g 0` in the Dockerfile
    for name, value in (("ak", "AKCONTAINER000000000"), ("sk", "container-secret-key-00000")):
        (secrets / name).write_text(value + "\n")
    config = etc / "config.yaml"
    config.write_text(
        "sources:\n  - name: prod\n    region: cn-north-4\n    project_id: p1\n"
        "    ak_file: ak\n    sk_file: sk\n"
        f"storage: {state / 'state.db'}\n"
    )
    for path in (config, secrets / "ak", secrets / "sk"):
        os.chown(path, 0, 0)
        path.chmod(0o640)  # the README's advice: root-owned, group 0 may read
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(state),
        "TMPDIR": str(state),
        "CREDENTIALS_DIRECTORY": str(secrets),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    python = [sys.executable, "-m", "watcher"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own CLI under setpriv
            [*as_arbitrary_uid, *python, *args, "-c", str(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    check = run("check")
    assert check.returncode == 0, check.stderr
    assert f"ak from file {secrets / 'ak'}" in check.stdout
    added = run("silence", "add", "--match", "job_id=x", "--for", "1h")  # creates the store
    assert added.returncode == 0, added.stderr
    db = state / "state.db"
    assert db.stat().st_uid == ARBITRARY_UID
    listed = run("silence", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"job_id=x"' in listed.stdout
    # Control: the same files at 0600 (the old advice) are unreadable for that UID.
    (secrets / "ak").chmod(0o600)
    refused = run("check")
    assert refused.returncode == 78
    assert "Permission denied" in refused.stderr


def test_read_only_root_with_only_the_state_directory_writable(
    as_arbitrary_uid: list[str], open_tmp: Path
) -> None:
    """`docker run --read-only`: / remounted read-only in a private mount namespace, the
    state directory bind-mounted writable, HOME and TMPDIR pointing at it as the image sets."""
    unshare = shutil.which("unshare")
    if unshare is None:
        tool_missing("unshare not installed (util-linux)")
    state = open_tmp / "state"
    state.mkdir()
    os.chown(state, 10001, 0)
    state.chmod(0o2770)
    config = open_tmp / "config.yaml"
    config.write_text(
        "sources:\n  - name: prod\n    region: cn-north-4\n    project_id: p1\n"
        "    ak: AKREADONLY0000000000\n    sk: read-only-secret-key-000000\n"
        f"storage: {state / 'state.db'}\n"
    )
    config.chmod(0o640)
    command = [*as_arbitrary_uid, sys.executable, "-m", "watcher", "silence", "add"]
    inner = " ".join([*command, "--match", "job_id=x", "-c", str(config)])
    script = (
        f"mount --make-rprivate / && mount --bind {state} {state} && "
        "mount -o remount,bind,ro / && "
        "! touch /ro-probe 2>/dev/null && "  # the root really is read-only
        f"env -i PATH=/usr/bin:/bin HOME={state} TMPDIR={state} PYTHONDONTWRITEBYTECODE=1 {inner}"
    )
    result = subprocess.run(  # noqa: S603 - unshare, our own script
        [unshare, "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("silence 1 added until")
    assert (state / "state.db").stat().st_uid == ARBITRARY_UID
