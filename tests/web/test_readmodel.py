"""watcher.web.readmodel on a real SQLite file: answers, index use, and no way to write."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.web.conftest import NOW, populate
from watcher.errors import StoreError
from watcher.store import Store
from watcher.web.readmodel import EventFilter, ReadModel


@pytest.fixture
def model(tmp_path: Path) -> ReadModel:
    path = str(tmp_path / "state.db")
    populate(path)
    return ReadModel(path)


def test_aggregates_from_the_store(model: ReadModel) -> None:
    (prod,) = model.sources()
    assert prod.by_state == {
        "AUDITING": 1,
        "AUDIT_FAILED": 1,
        "PROCESSING": 1,
        "SUCCEED": 3,
        "WAITING": 1,
    }
    spring = model.batch("prod", "spring-sale")
    assert spring is not None
    assert (spring.total, spring.succeeded, spring.failed, spring.in_progress) == (4, 2, 1, 1)
    assert {b.name for b in model.batches() if not b.open} == {"done-batch"}
    assert [j.job_id for j in model.stuck_jobs(limit=2)] == ["a3", "f00d"]
    counts = model.outbox_counts(NOW)
    assert (counts.pending, counts.held, counts.dead, counts.silenced) == (0, 1, 1, 0)
    assert model.stuck_jobs(limit=2, sources=model.sources()) == model.stuck_jobs(limit=2)
    assert [s.comment for s in model.active_silences(NOW)] == ["maintenance"]


def test_event_filters_combine(model: ReadModel) -> None:
    assert len(model.events(EventFilter())) == 3
    assert [e.job_id for e in model.events(EventFilter(batch="spring-sale"))] == ["f00d", "f00d"]
    assert model.events(EventFilter(batch="spring-sale", source="lab")) == []
    assert [e.state for e in model.events(EventFilter(kind="transition", limit=1))] == [
        "PROCESSING"
    ]
    newest = model.events(EventFilter(limit=1))[0]
    older = model.events(EventFilter(before_id=newest.id))
    assert [e.id for e in older] == [newest.id - 1, newest.id - 2]
    assert model.events(EventFilter(since=NOW)) == []


def test_job_timeline_and_alerts(model: ReadModel) -> None:
    timeline = model.job_timeline("prod", "f00d")
    assert [(e.previous_state, e.state) for e in timeline] == [
        ("CREATING", "AUDITING"),
        ("AUDITING", "AUDIT_FAILED"),
    ]
    alerts = model.job_alerts("prod", "f00d")
    assert [(a.event_id, a.alert.channel, a.alert.status) for a in alerts] == [
        (timeline[1].id, "ops", "sent"),
        (timeline[1].id, "lead", "dead"),
    ]


# Each query the pages run, with parameters; none may scan a table row by row.
PLANS = [
    (
        "SELECT source, state, count(*) FROM jobs INDEXED BY jobs_by_state GROUP BY source, state",
        (),
    ),
    (
        "SELECT source, batch_name, json_group_object(state, n), min(first), max(last) "
        "FROM (SELECT source, batch_name, state, count(*) AS n, min(create_time) AS first, "
        "max(lastupdate_time) AS last FROM jobs INDEXED BY jobs_by_batch "
        "WHERE batch_name IS NOT NULL GROUP BY source, batch_name, state) "
        "GROUP BY source, batch_name",
        (),
    ),
    (
        "SELECT * FROM jobs INDEXED BY jobs_by_state WHERE source = ? AND state = ? "
        "AND lastupdate_time IS NOT NULL ORDER BY lastupdate_time LIMIT 10",
        ("prod", "AUDITING"),
    ),
    (
        "SELECT * FROM events INDEXED BY events_by_kind WHERE kind = ? ORDER BY id DESC LIMIT 50",
        ("x",),
    ),
    (
        "SELECT * FROM events INDEXED BY events_by_state WHERE state = ? ORDER BY id DESC LIMIT 50",
        ("x",),
    ),
    (
        "SELECT * FROM events INDEXED BY events_by_source WHERE source = ? "
        "ORDER BY id DESC LIMIT 50",
        ("x",),
    ),
    ("SELECT count(*) FROM outbox INDEXED BY outbox_due WHERE status = ?", ("dead",)),
]


@pytest.mark.parametrize(("sql", "args"), PLANS)
def test_page_queries_use_an_index(model: ReadModel, sql: str, args: tuple[str, ...]) -> None:
    plan = " | ".join(row[-1] for row in model._all("EXPLAIN QUERY PLAN " + sql, args))
    assert "INDEX" in plan, plan
    assert "TEMP B-TREE FOR ORDER BY" not in plan, plan


def test_the_connection_cannot_write(model: ReadModel) -> None:
    with pytest.raises(StoreError, match=r"readonly|read-only|attempt to write"):
        model._all("DELETE FROM jobs")
    with pytest.raises(StoreError):
        model._all("CREATE TABLE x (y)")
    with Store.open(model.path) as store:
        assert len(store.list_jobs()) == 7


def test_a_missing_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot"):
        ReadModel(str(tmp_path / "nope.db")).sources()
    assert not (tmp_path / "nope.db").exists()


def test_readers_see_commits_made_after_they_opened(model: ReadModel) -> None:
    assert len(model.events(EventFilter())) == 3
    conn = sqlite3.connect(model.path)
    conn.execute(
        "INSERT INTO events (event_key, kind, source, job_id, reason, detected_at) "
        "VALUES ('k', 'new', 'prod', 'a1', 'r', ?)",
        (NOW.isoformat(),),
    )
    conn.commit()
    conn.close()
    assert len(model.events(EventFilter())) == 4


def test_time_windows_are_exact_at_their_edges(model: ReadModel) -> None:
    events = model.events(EventFilter())
    times = sorted({e.detected_at for e in events})
    assert model.events(EventFilter(until=times[0])) == []  # until is exclusive
    assert [e.detected_at for e in model.events(EventFilter(since=times[-1]))] == [times[-1]]
    middle = model.events(EventFilter(since=times[1], until=times[-1]))
    assert {e.detected_at for e in middle} == {times[1]}
    both = model.events(EventFilter(since=times[0], until=times[-1], kind="transition"))
    assert len(both) == 2
