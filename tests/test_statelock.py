"""One daemon per state file: the lock follows the file, not the path, and outlives its deletion."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from watcher.errors import StoreError
from watcher.statelock import holder
from watcher.store import Store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "watcher.db"


def test_a_second_daemon_through_a_symlink_is_refused(db: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.db"
    with Store.open(str(db), exclusive=True):
        link.symlink_to(db)
        with pytest.raises(StoreError, match=f"already using {link} \\(pid {os.getpid()}\\)"):
            Store.open(str(link), exclusive=True)


def test_a_symlinked_directory_and_dot_dot_name_the_same_file(db: Path, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    alias_dir = tmp_path / "alias"
    with Store.open(str(db), exclusive=True):
        alias_dir.symlink_to(db.parent)
        for alias in (alias_dir / db.name, tmp_path / "other" / ".." / "state" / db.name):
            with pytest.raises(StoreError, match="already using"):
                Store.open(str(alias), exclusive=True)


def test_a_deleted_state_directory_is_no_door_for_a_second_daemon(db: Path) -> None:
    with Store.open(str(db), exclusive=True) as first:
        assert first.file_problem() is None
        shutil.rmtree(db.parent)
        assert first.file_problem() == (
            f"{db}: the state directory {db.parent} was removed under the daemon"
        )
        assert holder(str(db)) == os.getpid()
        with pytest.raises(StoreError, match=f"already using {db} \\(pid {os.getpid()}\\)"):
            Store.open(str(db), exclusive=True)
        assert not db.parent.exists()  # the refused daemon created nothing
    # Once the first one stopped, the path is free again.
    assert holder(str(db)) is None
    Store.open(str(db), exclusive=True).close()


def test_a_deleted_or_replaced_state_file_is_reported(db: Path) -> None:
    with Store.open(str(db), exclusive=True) as first:
        db.unlink()
        assert first.file_problem() == f"{db}: the state file was deleted under the daemon"
        db.write_bytes(b"")
        assert first.file_problem() == f"{db}: the state file was replaced under the daemon"


def test_readers_need_no_lock_and_see_no_holder(db: Path) -> None:
    Store.open(str(db)).close()
    assert holder(str(db)) is None
    with Store.open(str(db), exclusive=True), Store.open(str(db)) as reader:
        assert reader.file_problem() is None  # only the daemon watches its file
