"""The sdist carries what an operator needs beside the code, and the metadata says so."""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.packaging._support import REPO_ROOT


def test_sdist_carries_licence_example_unit_and_container_build(tmp_path: Path) -> None:
    subprocess.run(  # noqa: S603 - `build` from this venv, fixed arguments
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (sdist,) = tmp_path.glob("metastudio_watcher-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        pkg_info = archive.extractfile(f"{sdist.name.removesuffix('.tar.gz')}/PKG-INFO")
        assert pkg_info is not None
        metadata = email.parser.BytesParser().parse(pkg_info)
    for wanted in (
        "LICENSE",
        "config.example.yaml",
        "systemd/metastudio-watcher.service",
        "Dockerfile",
        ".dockerignore",
        "requirements.lock",
        "watcher/cli.py",
    ):
        assert wanted in names, wanted
    assert "Apache License" in (REPO_ROOT / "LICENSE").read_text()
    assert metadata["License-Expression"] == "Apache-2.0"
    classifiers = metadata.get_all("Classifier") or []
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert metadata["Requires-Python"] == ">=3.11"
    assert "apprise>=2.0" in (metadata.get_all("Requires-Dist") or [])
