"""systemd/metastudio-watcher.service: `systemd-analyze verify` and `security`.

Needs systemd-analyze (Debian: `apt-get install -y systemd`). Skipped when it is
missing on a developer machine, a failure when it is missing in CI.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from ._support import UNIT_FILE, find_tool, tool_missing

UNIT_NAME = UNIT_FILE.name
EXEC_PATH = "/usr/local/bin/metastudio-watcher"
CONFIG = "/etc/metastudio-watcher/config.yaml"
MAX_EXPOSURE = 2.0
EXPOSURE_RE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    exe = find_tool("systemd-analyze")
    if exe is None:
        tool_missing("systemd-analyze not installed (apt-get install -y systemd)")
    return exe


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Unknown keys and bad values are logged at "warning"; drop only info and
    # debug chatter (whatever CI's environment says) so that "empty stderr"
    # means "nothing to complain about".
    env.update(
        SYSTEMD_LOG_LEVEL="notice",
        SYSTEMD_LOG_COLOR="0",
        SYSTEMD_COLORS="0",
        SYSTEMD_PAGER="cat",
        LC_ALL="C.UTF-8",
    )
    return env


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argv, no shell
        args,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=_env(),
        timeout=120,
        check=False,
    )


def _stage_unit(tmp_path: Path, text: str) -> Path:
    """Copy the unit to tmp_path with ExecStart pointing at an existing stub.

    `verify` fails when the ExecStart binary does not exist or is not
    executable; the real path only exists once the package is installed.
    """
    assert f"ExecStart={EXEC_PATH} " in text
    stub = tmp_path / "metastudio-watcher"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / UNIT_NAME
    unit.write_text(text.replace(f"{EXEC_PATH} ", f"{stub} "))
    return unit


@pytest.fixture
def staged_unit(tmp_path: Path) -> Path:
    return _stage_unit(tmp_path, UNIT_FILE.read_text())


def _verify(exe: str, unit: Path) -> subprocess.CompletedProcess[str]:
    # --man=no: do not look up Documentation= man pages (none installed here).
    # --recursive-errors=no: judge this unit only, not the host's target units.
    return _run(exe, "verify", "--man=no", "--recursive-errors=no", str(unit))


def test_verify_is_clean(systemd_analyze: str, staged_unit: Path) -> None:
    proc = _verify(systemd_analyze, staged_unit)
    assert proc.returncode == 0, proc.stderr
    # Unknown keys and unparsable values are only warnings (exit 0), so the
    # stderr must be empty too.
    assert proc.stderr == "", proc.stderr


def test_verify_catches_unknown_keys(systemd_analyze: str, tmp_path: Path) -> None:
    """Control: the empty-stderr criterion does detect a typo'd setting."""
    text = UNIT_FILE.read_text().replace("[Service]\n", "[Service]\nProtectSystm=strict\n", 1)
    proc = _verify(systemd_analyze, _stage_unit(tmp_path, text))
    assert "Unknown key" in proc.stderr
    assert "ProtectSystm" in proc.stderr


def test_security_exposure(systemd_analyze: str, staged_unit: Path) -> None:
    proc = _run(
        systemd_analyze,
        "security",
        "--no-pager",
        "--offline=true",
        "--threshold=20",  # exposure x10: fail above 2.0
        str(staged_unit),
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    match = EXPOSURE_RE.search(output)
    assert match, f"no overall exposure line in output:\n{output}"
    score = float(match.group(1))
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n{output}"


# --- Static checks of the settings the daemon relies on ----------------------


def _parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"setting outside a section: {raw!r}"
        assert not line.endswith("\\"), "keep settings on one line"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in _parse_unit(UNIT_FILE.read_text())["Service"]:
        out.setdefault(key, []).append(value)
    return out


SINGLE_SETTINGS = {
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "120",
    "Restart": "on-failure",
    "RestartSec": "10s",
    "RestartPreventExitStatus": "78",
    "DynamicUser": "yes",
    "StateDirectory": "metastudio-watcher",
    "StateDirectoryMode": "0700",
    "ConfigurationDirectory": "metastudio-watcher",
    "ProtectSystem": "strict",
    "NoNewPrivileges": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallArchitectures": "native",
    "MemoryDenyWriteExecute": "yes",
    "UMask": "0077",
    "ExecStart": f"{EXEC_PATH} run -c {CONFIG}",
}


def test_reload_validates_before_signalling(service: dict[str, list[str]]) -> None:
    """A rejected config must make `systemctl reload` fail, not report success."""
    assert service["ExecReload"] == [
        f"+/usr/bin/env -u CREDENTIALS_DIRECTORY {EXEC_PATH} check -c {CONFIG}",
        "/bin/kill -HUP $MAINPID",
    ]


@pytest.mark.parametrize(("key", "expected"), list(SINGLE_SETTINGS.items()))
def test_service_setting(service: dict[str, list[str]], key: str, expected: str) -> None:
    assert service.get(key) == [expected]


def test_credentials(service: dict[str, list[str]]) -> None:
    assert sorted(service["LoadCredential"]) == [
        "ak:/etc/metastudio-watcher/ak",
        "sk:/etc/metastudio-watcher/sk",
    ]


def test_syscall_filter(service: dict[str, list[str]]) -> None:
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]


def test_no_capabilities(service: dict[str, list[str]]) -> None:
    assert service["CapabilityBoundingSet"] == [""]
    assert service["AmbientCapabilities"] == [""]


def test_no_ip_address_deny(service: dict[str, list[str]]) -> None:
    # The cloud endpoints and alert targets are public and not known in
    # advance: an IP deny list would silently break polling and alerting.
    assert "IPAddressDeny" not in service
    assert service.get("PrivateNetwork", ["no"]) == ["no"]
