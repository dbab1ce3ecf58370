"""The state database against real SQLite files in tmp_path."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcher import store as store_module
from watcher.errors import StoreError
from watcher.model import (
    Alert,
    BodyFormat,
    Event,
    EventKind,
    ExtraFields,
    Job,
    NotifyType,
    OutboxStatus,
    SentMessage,
    Snapshot,
)
from watcher.store import SCHEMA_VERSION, Store
from watcher.store.rows import from_micros, micros, ts
from watcher.store.snapshots import _SELECT_ROWS

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def job(job_id: str = "job-1", state: str = "PROCESSING", **kw: Any) -> Job:
    return Job(job_id=job_id, state=state, **kw)


def snapshot(*jobs: Job, source: str = "cn", at: datetime = T0) -> Snapshot:
    return Snapshot(source=source, taken_at=at, jobs={j.job_id: j for j in jobs})


def event(j: Job, previous: str | None = "WAITING", at: datetime = T0, source: str = "cn") -> Event:
    return Event(
        kind=EventKind.TRANSITION,
        source=source,
        detected_at=at,
        reason=f"{previous} -> {j.state}",
        job=j,
        previous_state=previous,
    )


def alert(ev: Event, channel: str = "ops", rule: str = "all", at: datetime = T0) -> Alert:
    return Alert(
        event_key=ev.key,
        source=ev.source,
        job_id=ev.job.job_id if ev.job else None,
        rule=rule,
        channel=channel,
        title=f"{ev.job.job_id if ev.job else ev.source}: {ev.reason}",
        body="body",
        notify_type=NotifyType.INFO,
        body_format=BodyFormat.TEXT,
        created_at=at,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "watcher.db")


@pytest.fixture
def store(db_path: str) -> Any:
    with Store.open(db_path) as s:
        yield s


# --- jobs ----------------------------------------------------------------------------------


def test_jobs_round_trip_exactly_with_extra_and_utc_times(store: Store) -> None:
    full = Job(
        job_id="j1",
        state="USER_REVIEW_REJECT",
        reject_times=2,
        create_time=datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        lastupdate_time=datetime(2024, 1, 3, 11, 0, tzinfo=timezone(timedelta(hours=8))),
        voice_name="小明",
        job_type="BASIC",
        batch_name="batch-7",
        job_failed_code="MSS.001",
        job_failed_reason="noise",
        asset_id="a-1",
        extra={"tags": ["a", "b"], "nested": {"x": 1.5, "y": None}, "flag": True, "n": 3},
    )
    bare = job("j2", "CREATING")
    store.commit_cycle("cn", snapshot(full, bare), [], [], now=T0)

    loaded = store.load_jobs("cn")

    assert loaded == {"j1": full, "j2": bare}
    assert loaded["j1"].lastupdate_time is not None
    assert loaded["j1"].lastupdate_time.utcoffset() == timedelta(0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
aware_times = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))]),
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    state=st.text(min_size=1, max_size=12),
    reject_times=st.none() | st.integers(0, 10**6),
    lastupdate=st.none() | aware_times,
    extra=st.dictionaries(st.text(max_size=6), json_values, max_size=4),
)
def test_any_job_round_trips(
    store: Store,
    state: str,
    reject_times: int | None,
    lastupdate: datetime | None,
    extra: dict[str, Any],
) -> None:
    original = Job(
        job_id="j", state=state, reject_times=reject_times, lastupdate_time=lastupdate, extra=extra
    )
    store.commit_cycle("cn", snapshot(original), [], [], now=T0)
    assert store.load_jobs("cn") == {"j": original}
    # As parse builds it (ExtraFields, not a dict): written and read back the same.
    compact = dataclasses.replace(original, job_id="k", extra=ExtraFields.of(extra))
    store.commit_cycle("cn", snapshot(original, compact), [], [], now=T0)
    assert store.load_jobs("cn") == {"j": original, "k": compact}


def test_store_has_a_column_for_every_job_field(store: Store) -> None:
    # A new Job field needs a column and a migration, or it would silently not round-trip.
    columns = {row[1] for row in store._conn.execute("PRAGMA table_info(jobs)")}
    assert set(Job.__dataclass_fields__) <= columns


def test_source_without_a_completed_scan_has_no_baseline(store: Store) -> None:
    store.record_source_poll("cn", ok=False, now=T0, error="timeout")

    assert store.has_baseline("cn") is False
    assert store.load_jobs("cn") is None


def test_empty_scan_is_a_baseline_with_no_jobs(store: Store) -> None:
    store.commit_cycle("cn", snapshot(), [], [], now=T0)

    assert store.has_baseline("cn") is True
    assert store.load_jobs("cn") == {}


def test_commit_replaces_the_snapshot_of_one_source_only(store: Store) -> None:
    store.commit_cycle("cn", snapshot(job("a"), job("b")), [], [], now=T0)
    store.commit_cycle("eu", snapshot(job("x"), source="eu"), [], [], now=T0)

    changed = job("b", "SUCCEED")
    store.commit_cycle("cn", snapshot(changed, job("c")), [], [], now=T0 + timedelta(minutes=1))

    assert store.load_jobs("cn") == {"b": changed, "c": job("c")}
    assert store.load_jobs("eu") == {"x": job("x")}


def test_stored_rows_come_in_create_time_order_from_the_covering_index(store: Store) -> None:
    # Job ids in reverse of their create order: the primary key's order is not the scan's.
    ids = [f"job-{9 - n}" for n in range(10)]
    jobs = [job(j, create_time=T0 + timedelta(minutes=n)) for n, j in enumerate(ids)]
    store.commit_cycle("cn", snapshot(*jobs), [], [], now=T0)

    stored = store.load_stored("cn")

    assert stored is not None
    assert list(stored.rows()) == ids
    assert stored.materialise() == {j.job_id: j for j in jobs}
    # Read from the index alone, in its order: no walk of the wide rows, no sort.
    with store._db.reading("explain") as conn:
        plan = " ".join(
            str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {_SELECT_ROWS}", ("cn",))
        )
    assert "COVERING INDEX jobs_by_create" in plan
    assert "TEMP B-TREE" not in plan


def test_commit_of_a_snapshot_from_another_source_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="snapshot"):
        store.commit_cycle("cn", snapshot(job(), source="eu"), [], [], now=T0)


# --- atomicity and idempotency -------------------------------------------------------------


def test_failing_alert_rolls_back_the_whole_cycle(store: Store) -> None:
    store.commit_cycle("cn", snapshot(job("a")), [], [], now=T0)
    moved = job("a", "SUCCEED")
    ev = event(moved, "PROCESSING")
    good = alert(ev, channel="ops")
    # sqlite cannot bind an arbitrary object: the failure happens after jobs and events were
    # written inside the transaction.
    broken = dataclasses.replace(alert(ev, channel="mail"), title=object())  # type: ignore[arg-type]

    with pytest.raises(StoreError, match="save the poll cycle"):
        store.commit_cycle("cn", snapshot(moved, job("new")), [ev], [good, broken], now=T0)

    assert store.load_jobs("cn") == {"a": job("a")}
    assert store.job_history("a") == []
    assert store.outbox_counts()[OutboxStatus.PENDING] == 0
    assert store.source_status()[0].last_cycle_at == T0


def test_naive_datetime_rolls_back_and_says_why(store: Store) -> None:
    ev = event(job("a"))
    naive = dataclasses.replace(alert(ev), created_at=datetime(2024, 1, 1))

    with pytest.raises(ValueError, match="naive"):
        store.commit_cycle("cn", snapshot(job("a")), [ev], [naive], now=T0)

    assert store.has_baseline("cn") is False


def test_same_alert_twice_is_queued_once(store: Store) -> None:
    ev = event(job("a", "SUCCEED"))
    first = alert(ev)
    again = dataclasses.replace(first, created_at=T0 + timedelta(minutes=5), body="re-rendered")

    assert store.commit_cycle("cn", snapshot(job("a", "SUCCEED")), [ev], [first], now=T0) == 1
    assert store.commit_cycle("cn", snapshot(job("a", "SUCCEED")), [ev], [again], now=T0) == 0

    (item,) = store.list_outbox([OutboxStatus.PENDING])
    assert item.alert == first


def test_one_event_to_two_channels_queues_two_alerts(store: Store) -> None:
    ev = event(job("a", "SUCCEED"))
    queued = store.commit_cycle(
        "cn", snapshot(job("a", "SUCCEED")), [ev], [alert(ev, "ops"), alert(ev, "mail")], now=T0
    )
    assert queued == 2


# --- outbox --------------------------------------------------------------------------------


def queue(store: Store, *jobs_states: tuple[str, str], channel: str = "ops") -> list[int]:
    """Queue one alert per (job, state), each a separate cycle; return outbox ids."""
    for n, (job_id, state) in enumerate(jobs_states):
        at = T0 + timedelta(seconds=n)
        j = job(job_id, state)
        ev = event(j, at=at)
        store.commit_cycle("cn", snapshot(j), [ev], [alert(ev, channel, at=at)], now=at)
    return [item.id for item in store.list_outbox([OutboxStatus.PENDING])]


def test_pending_alerts_come_in_detection_order(store: Store) -> None:
    ids = queue(store, ("a", "WAITING"), ("b", "WAITING"), ("a", "PROCESSING"), ("a", "SUCCEED"))

    pending = store.list_outbox([OutboxStatus.PENDING])

    assert [item.id for item in pending] == ids == sorted(ids)
    assert [item.alert.title.split(":")[0] for item in pending] == ["a", "b", "a", "a"]
    # A new alert is due at its creation (per-job order and retries: engine/pipeline.py).
    assert [item.next_attempt_at for item in pending] == [
        T0 + timedelta(seconds=n) for n in range(4)
    ]


def test_failed_alert_backs_off_with_attempts_error_delay_and_time_spent(store: Store) -> None:
    (item_id,) = queue(store, ("a", "SUCCEED"))
    retry_at = T0 + timedelta(seconds=30)

    store.mark_failed(item_id, T0, "channel 'ops': delivery failed", retry_at, retry_delay=30.0)

    (item,) = store.list_outbox([OutboxStatus.PENDING])
    assert (item.attempts, item.last_error, item.next_attempt_at) == (
        1,
        "channel 'ops': delivery failed",
        retry_at,
    )
    assert (item.retry_delay, item.elapsed) == (30.0, 0.0)
    store.mark_failed(
        item_id, retry_at, "again", retry_at + timedelta(minutes=1), retry_delay=60, elapsed=31.5
    )
    (item,) = store.list_outbox([OutboxStatus.PENDING])
    assert (item.attempts, item.retry_delay, item.elapsed) == (2, 60.0, 31.5)


def test_sent_alert_is_never_due_again(store: Store) -> None:
    (item_id,) = queue(store, ("a", "SUCCEED"))
    sent_at = T0 + timedelta(seconds=3)

    store.mark_sent_many([item_id], sent_at)

    assert store.list_outbox([OutboxStatus.PENDING]) == []
    (item,) = store.list_outbox([OutboxStatus.SENT])
    assert (item.status, item.sent_at, item.attempts) == (OutboxStatus.SENT, sent_at, 1)


def test_dead_alerts_stay_until_retried(store: Store) -> None:
    a, b, c = queue(store, ("a", "SUCCEED"), ("b", "SUCCEED"), ("c", "SUCCEED"))
    for item_id in (a, b, c):
        store.mark_failed(item_id, T0, "down", T0, retry_delay=1.0, elapsed=5.0)
        store.mark_dead(item_id, T0, "gave up after 24h")
    later = T0 + timedelta(hours=1)

    assert store.list_outbox([OutboxStatus.PENDING]) == []
    assert store.outbox_counts() == {
        OutboxStatus.PENDING: 0,
        OutboxStatus.SENT: 0,
        OutboxStatus.DEAD: 3,
        OutboxStatus.SILENCED: 0,
    }
    assert store.list_outbox([OutboxStatus.DEAD])[0].attempts == 2

    assert store.retry_dead(b, later) == 1
    (revived,) = store.list_outbox([OutboxStatus.PENDING])
    assert (revived.id, revived.attempts, revived.last_error) == (b, 0, "gave up after 24h")
    # A fresh start: due now, no backoff, no time spent trying.
    assert (revived.next_attempt_at, revived.retry_delay, revived.elapsed) == (later, None, 0)

    assert store.retry_dead(None, later) == 2
    assert store.retry_dead(None, later) == 0
    assert [i.id for i in store.list_outbox([OutboxStatus.PENDING])] == [a, b, c]


def test_marking_an_unknown_item_is_an_error(store: Store) -> None:
    with pytest.raises(StoreError, match="outbox item 42 does not exist"):
        store.mark_failed(42, T0, "down", T0)


def test_list_outbox_filters_by_status(store: Store) -> None:
    a, b = queue(store, ("a", "SUCCEED"), ("b", "SUCCEED"))
    store.mark_sent_many([a], T0)

    assert [i.id for i in store.list_outbox([OutboxStatus.SENT, OutboxStatus.PENDING])] == [a, b]
    assert store.list_outbox([]) == []


def test_prune_forgets_old_history_but_never_a_pending_alert(store: Store) -> None:
    old_sent, old_dead, old_pending, recent = queue(
        store, ("a", "SUCCEED"), ("b", "FAILED"), ("d", "FAILED"), ("c", "SUCCEED")
    )
    store.mark_sent_many([old_sent], T0, channel="ops", group_keys=["k"])
    store.mark_dead(old_dead, T0, "gave up")
    cutoff = T0 + timedelta(seconds=3)  # after the first three events, before the fourth

    # Three events, a sent and a dead alert, one send-log row.
    assert store.prune(cutoff) == 6
    assert store.prune(cutoff) == 0

    assert [i.id for i in store.list_outbox(list(OutboxStatus))] == [old_pending, recent]
    assert store.send_log(T0 - timedelta(days=1)) == []
    assert store.job_history("a") == []
    assert len(store.job_history("c")) == 1


def test_prune_goes_in_batches(store: Store) -> None:
    queue(store, *((f"j{n}", "SUCCEED") for n in range(7)))
    cutoff = T0 + timedelta(days=1)
    assert [store.prune(cutoff, batch=3) for _ in range(4)] == [3, 3, 1, 0]


def test_send_log_keeps_each_message_with_its_channel_and_group_keys(store: Store) -> None:
    a, b, c = queue(store, ("a", "SUCCEED"), ("b", "SUCCEED"), ("c", "SUCCEED"))
    store.mark_sent_many([a, b], T0, channel="ops", group_keys=["g1", "g2"])
    store.mark_sent_many([c], T0 + timedelta(seconds=30), channel="mail", group_keys=["g3"])

    assert store.send_log(T0) == [
        SentMessage("ops", ("g1", "g2"), T0),
        SentMessage("mail", ("g3",), T0 + timedelta(seconds=30)),
    ]
    assert store.send_log(T0 + timedelta(seconds=1)) == [
        SentMessage("mail", ("g3",), T0 + timedelta(seconds=30))
    ]


# --- sources and history -------------------------------------------------------------------


def test_source_status_tracks_polls_and_failures(store: Store) -> None:
    store.commit_cycle("cn", snapshot(job("a"), job("b")), [], [], now=T0)
    store.record_source_poll("cn", ok=True, now=T0)
    t1, t2 = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    store.record_source_poll("cn", ok=False, now=t1, error="HTTP 503")
    store.record_source_poll("cn", ok=False, now=t2, error="timeout")
    store.record_source_poll("eu", ok=False, now=t2, error="auth")

    cn, eu = store.source_status()

    assert (cn.name, cn.baseline_at, cn.last_ok_at, cn.last_poll_at) == ("cn", T0, T0, t2)
    assert (cn.last_error, cn.last_error_at, cn.consecutive_failures, cn.job_count) == (
        "timeout",
        t2,
        2,
        2,
    )
    assert (eu.baseline_at, eu.job_count, eu.consecutive_failures) == (None, 0, 1)

    store.record_source_poll("cn", ok=True, now=t2)
    assert store.source_status()[0].consecutive_failures == 0


def test_job_history_links_events_to_their_alerts(store: Store) -> None:
    j1 = job("a", "PROCESSING")
    ev1 = event(j1, "WAITING", at=T0)
    store.commit_cycle("cn", snapshot(j1), [ev1], [alert(ev1, "ops")], now=T0)
    j2 = job("a", "SUCCEED")
    t1 = T0 + timedelta(minutes=1)
    ev2 = event(j2, "PROCESSING", at=t1)
    store.commit_cycle("cn", snapshot(j2), [ev2], [alert(ev2, "ops"), alert(ev2, "mail")], now=t1)
    ops_item = store.list_outbox([OutboxStatus.PENDING])[1]
    store.mark_sent_many([ops_item.id], t1)

    first, second = store.job_history("a")

    assert (first.previous_state, first.state, first.kind, first.detected_at) == (
        "WAITING",
        "PROCESSING",
        "transition",
        T0,
    )
    assert [(d.channel, d.status) for d in first.alerts] == [("ops", OutboxStatus.PENDING)]
    assert [(d.channel, d.status) for d in second.alerts] == [
        ("ops", OutboxStatus.SENT),
        ("mail", OutboxStatus.PENDING),
    ]
    assert second.event_key == ev2.key
    assert store.job_history("a", source="eu") == []
    assert store.job_history("missing") == []


def test_event_subject_sequence_and_details_are_kept_in_history(store: Store) -> None:
    j = job("a", "PROCESSING")
    reminders = [
        dataclasses.replace(
            event(j), kind=EventKind.STUCK, sequence=n, details={"for": "2h", "at": T0}
        )
        for n in (1, 2)
    ]
    queued = store.commit_cycle(
        "cn", snapshot(j), reminders, [alert(ev) for ev in reminders], now=T0
    )

    first, second = store.job_history("a")
    assert queued == 2  # each repetition of a reminder is its own alert
    assert (first.sequence, second.sequence) == (1, 2)
    assert first.details == {"for": "2h", "at": str(T0)}
    assert len(first.alerts) == len(second.alerts) == 1


def test_source_event_without_job_is_recorded(store: Store) -> None:
    ev = Event(kind=EventKind.SOURCE_UNHEALTHY, source="cn", detected_at=T0, reason="5 failures")
    assert store.commit_cycle("cn", snapshot(), [ev], [alert(ev)], now=T0) == 1
    assert store.list_outbox([OutboxStatus.PENDING])[0].alert.job_id is None


# --- the file ------------------------------------------------------------------------------


def test_reopened_store_continues_where_it_stopped(db_path: str) -> None:
    with Store.open(db_path) as s:
        (a, b) = queue(s, ("a", "PROCESSING"), ("b", "SUCCEED"))
        s.mark_sent_many([a], T0)
    with Store.open(db_path) as s:
        assert s.has_baseline("cn")
        assert s.load_jobs("cn") == {"b": job("b", "SUCCEED")}
        assert [i.id for i in s.list_outbox([OutboxStatus.PENDING])] == [b]
        # Re-detecting the already queued change after a restart queues nothing new.
        j = job("b", "SUCCEED")
        ev = event(j, at=T0 + timedelta(seconds=1))
        assert s.commit_cycle("cn", snapshot(j), [ev], [alert(ev, at=ev.detected_at)], now=T0) == 0


def test_new_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "watcher.db"
    with Store.open(str(path)) as s:
        queue(s, ("a", "SUCCEED"))
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        wal = Path(f"{path}-wal")
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700


def test_existing_directory_permissions_are_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    with Store.open(str(tmp_path / "watcher.db")):
        pass
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_garbage_file_is_reported_with_path_and_hint(tmp_path: Path) -> None:
    path = tmp_path / "watcher.db"
    path.write_bytes(b"this is not sqlite at all\n" * 200)

    with pytest.raises(StoreError) as info:
        Store.open(str(path))

    assert str(path) in str(info.value)
    assert "not a SQLite database" in str(info.value)
    assert "move it aside or restore a backup" in str(info.value)


def test_truncated_database_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "watcher.db"
    with Store.open(str(path)) as s:
        for n in range(30):
            queue(s, (f"job-{n}", "SUCCEED"))
        s._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    assert len(data) > 4 * 4096
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(StoreError) as info:
        Store.open(str(path))

    assert str(path) in str(info.value)
    assert "move it aside or restore a backup" in str(info.value)


def test_parent_that_is_a_file_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")

    blocker.chmod(0o644)

    for path in (blocker / "watcher.db", blocker / "sub" / "watcher.db"):
        with pytest.raises(StoreError, match=f"{blocker} is a file, not a directory"):
            Store.open(str(path))
    assert stat.S_IMODE(blocker.stat().st_mode) == 0o644


def test_directory_as_database_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a regular file"):
        Store.open(str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_reported(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="directory is read-only") as info:
            Store.open(str(ro / "watcher.db"))
        assert str(ro / "watcher.db") in str(info.value)
    finally:
        ro.chmod(0o700)


def test_directory_that_refuses_files_is_reported_even_for_root() -> None:
    # sysfs refuses new files even for root, so this runs where chmod tricks cannot.
    path = "/sys/metastudio-watcher-test.db"
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        pass
    else:
        os.unlink(path)
        pytest.skip("/sys accepts files here")

    with pytest.raises(StoreError, match="directory is read-only") as info:
        Store.open(path)

    assert path in str(info.value)


def test_database_from_a_newer_version_is_refused(db_path: str) -> None:
    with Store.open(db_path) as s:
        s._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    with pytest.raises(StoreError, match="newer metastudio-watcher"):
        Store.open(db_path)


# --- migrations ----------------------------------------------------------------------------


def test_empty_sqlite_file_is_migrated_from_v0(tmp_path: Path) -> None:
    path = tmp_path / "watcher.db"
    sqlite3.connect(path).close()

    with Store.open(str(path)) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.outbox_counts()[OutboxStatus.PENDING] == 0


def test_v1_file_is_upgraded_keeping_its_data(tmp_path: Path) -> None:
    # A file exactly as version 1 of this module left it, with a queued alert in it.
    path = tmp_path / "watcher.db"
    conn = sqlite3.connect(path)
    for statement in store_module._MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO outbox (alert_id, event_key, source, job_id, rule, channel, title, body, "
        "notify_type, body_format, created_at, next_attempt_at, updated_at) VALUES "
        "('id1', 'k', 'cn', 'a', 'r', 'ops', 't', 'b', 'info', 'text', ?, ?, ?)",
        (T0.isoformat(),) * 3,
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    with Store.open(str(path)) as s:
        assert s.schema_version == SCHEMA_VERSION == len(store_module._MIGRATIONS)
        indexes = {row[0] for row in s._conn.execute("SELECT name FROM sqlite_master")}
        assert {"events_by_job", "outbox_by_event", "outbox_by_job"} <= indexes
        (item,) = s.list_outbox([OutboxStatus.PENDING])
        assert item.alert.title == "t"
        # v3 backfills queued_at so give_up_after still has a start for old alerts.
        assert item.queued_at == T0


def test_v12_file_with_text_times_is_upgraded_to_the_same_instants(tmp_path: Path) -> None:
    # Up to v12 job times were ISO text as ts() wrote it; v13 makes them integers. Every
    # instant, to the microsecond, before and after the epoch, must come through unchanged,
    # with the baseline, and a later scan must find nothing changed.
    path = tmp_path / "watcher.db"
    times = [
        datetime(2024, 12, 23, 11, 37, 44, 784000, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
        datetime(2099, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 3, 1, 8, 0, tzinfo=timezone(timedelta(hours=8))),
    ]
    conn = sqlite3.connect(path)
    for step in store_module._MIGRATIONS[:12]:
        for statement in step:
            conn.execute(statement)
    conn.execute("INSERT INTO sources (name, baseline_at) VALUES ('cn', ?)", (T0.isoformat(),))
    conn.executemany(
        "INSERT INTO jobs (source, job_id, state, create_time, lastupdate_time, batch_name, "
        "digest) VALUES ('cn', ?, 'AUDITING', ?, ?, 'b', 7)",
        [(f"j{i}", ts(t), ts(t + timedelta(seconds=1))) for i, t in enumerate(times)]
        + [("none", None, None)],
    )
    conn.execute("PRAGMA user_version = 12")
    conn.commit()
    conn.close()

    with Store.open(str(path)) as s:
        assert s.schema_version == SCHEMA_VERSION
        loaded = s.load_jobs("cn")
        assert loaded is not None
        for i, t in enumerate(times):
            assert loaded[f"j{i}"].create_time == t
            assert loaded[f"j{i}"].lastupdate_time == t + timedelta(seconds=1)
        assert loaded["none"].create_time is None
        kinds = s._conn.execute(
            "SELECT DISTINCT typeof(create_time) FROM jobs WHERE job_id != 'none'"
        ).fetchall()
        assert kinds == [("integer",)]
        indexes = {row[0] for row in s._conn.execute("SELECT name FROM sqlite_master")}
        assert {"jobs_by_state", "jobs_by_batch", "jobs_by_create"} <= indexes
        stored = s.load_stored("cn")
        assert stored is not None
        assert stored.rows()["j0"][3] == times[0].timestamp()
        assert s.has_baseline("cn")


@settings(max_examples=300)
@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone.min]),
    )
)
def test_job_times_are_stored_as_microseconds_exactly_and_in_order(when: datetime) -> None:
    # Far from the epoch a float of seconds is off by microseconds: the whole range must
    # come back exact, as UTC, and one microsecond later must store one more.
    stored = micros(when)
    assert from_micros(stored) == when
    assert from_micros(stored).utcoffset() == timedelta(0)
    assert micros(when + timedelta(microseconds=1)) == stored + 1


def test_a_naive_job_time_is_refused_by_the_store() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        micros(datetime(2024, 1, 1))


def test_failed_migration_leaves_the_old_version(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "watcher.db"
    broken = (*store_module._MIGRATIONS, ("CREATE TABLE events (x)",))
    monkeypatch.setattr(store_module, "_MIGRATIONS", broken)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(broken))

    with pytest.raises(StoreError, match=f"migrate the schema to v{len(broken)}"):
        Store.open(str(path))

    monkeypatch.undo()
    with Store.open(str(path)) as s:
        assert s.schema_version == SCHEMA_VERSION


# --- the daemon lock -----------------------------------------------------------------------


def test_second_exclusive_open_is_refused_with_the_holders_pid(db_path: str) -> None:
    with Store.open(db_path, exclusive=True):
        with pytest.raises(StoreError) as info:
            Store.open(db_path, exclusive=True)
        assert f"another metastudio-watcher is already using {db_path}" in str(info.value)
        assert f"(pid {os.getpid()})" in str(info.value)
        # Readers such as `status` do not need the lock.
        with Store.open(db_path) as reader:
            assert reader.outbox_counts()[OutboxStatus.DEAD] == 0

    with Store.open(db_path, exclusive=True):
        pass  # released on close
    assert stat.S_IMODE(os.stat(f"{db_path}.lock").st_mode) == 0o600


def test_lock_is_held_against_another_process(db_path: str) -> None:
    script = textwrap.dedent(
        """
        import sys
        from watcher.errors import StoreError
        from watcher.store import Store
        try:
            Store.open(sys.argv[1], exclusive=True)
        except StoreError as err:
            print(err)
            sys.exit(3)
        """
    )
    with Store.open(db_path, exclusive=True):
        refused = subprocess.run(  # noqa: S603
            [sys.executable, "-c", script, db_path],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=Path(__file__).resolve().parent.parent,
            check=False,
        )
    allowed = subprocess.run(  # noqa: S603
        [sys.executable, "-c", script, db_path],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )

    assert refused.returncode == 3, refused.stderr
    assert f"(pid {os.getpid()})" in refused.stdout
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


# --- silences and grouping -----------------------------------------------------------------


def test_silences_are_stored_listed_and_expired(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "s.db")) as s:
        added = s.add_silence(
            [("voice_name", "shop-*"), ("rule", "failures")],
            starts_at=T0,
            ends_at=T0 + timedelta(hours=2),
            comment="re-recording",
            now=T0,
        )
        assert s.list_silences(active_at=T0 + timedelta(hours=1)) == [added]
        assert s.list_silences(active_at=T0 + timedelta(hours=3)) == []
        assert s.expire_silence(added.id, T0 + timedelta(minutes=5))
        assert not s.expire_silence(added.id, T0 + timedelta(minutes=6))
        assert s.list_silences(active_at=T0 + timedelta(minutes=10)) == []
        assert [x.comment for x in s.list_silences()] == ["re-recording"]


def test_silenced_alert_is_recorded_and_never_due(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "s.db")) as s:
        a = alert(event(job("a1")))
        s.commit_cycle("cn", Snapshot("cn", T0, {}), [], [a], now=T0)
        (item,) = s.list_outbox([OutboxStatus.PENDING])
        s.mark_silenced(item.id, 7, T0)
        assert s.list_outbox([OutboxStatus.PENDING]) == []
        assert s.outbox_counts()[OutboxStatus.SILENCED] == 1


def test_group_key_round_trips(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "s.db")) as s:
        a = dataclasses.replace(
            alert(event(job("g1"))),
            group_key="source=cn|batch_name=spring",
            labels={"voice_name": "shop-anna", "state": "FAILED"},
        )
        s.commit_cycle("cn", Snapshot("cn", T0, {}), [], [a], now=T0)
        (item,) = s.list_outbox([OutboxStatus.PENDING])
        assert item.alert == a


def test_one_message_marks_all_its_alerts_sent_at_once(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "s.db")) as s:
        alerts = [alert(event(job(f"m{n}"))) for n in range(3)]
        s.commit_cycle("cn", Snapshot("cn", T0, {}), [], alerts, now=T0)
        s.mark_sent_many([i.id for i in s.list_outbox([OutboxStatus.PENDING])], T0)
        assert s.outbox_counts()[OutboxStatus.SENT] == 3
        assert s.list_outbox([OutboxStatus.PENDING]) == []


def test_delta_commit_writes_only_what_changed_and_matches_a_full_commit(tmp_path: Path) -> None:
    jobs = {f"j{n}": job(f"j{n}", "PROCESSING", reject_times=1) for n in range(50)}
    with Store.open(str(tmp_path / "s.db")) as s:
        s.commit_cycle("cn", Snapshot("cn", T0, jobs), [], [], now=T0)
        nxt = dict(jobs)
        nxt["j1"] = job("j1", "SUCCEED", reject_times=1)
        del nxt["j2"]
        nxt["new"] = job("new", "CREATING")
        s.commit_cycle("cn", Snapshot("cn", T0, nxt), [], [], now=T0, previous=jobs)
        assert s.load_jobs("cn") == nxt


def test_poll_cursor_and_scan_progress_survive_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "cursor.db")
    with Store.open(path) as s:
        assert s.load_cursor("prod") is None
        s.save_scan_progress("prod", 3, 1000, baseline=True, now=T0)
        (progress,) = s.poll_strategies().values()
        assert (progress.pages_done, progress.pages_total, progress.baseline) == (3, 1000, True)
        s.save_cursor("prod", {"watermark": T0.isoformat(), "gone": ["a"]}, "active_set")
    with Store.open(path) as s:
        assert s.load_cursor("prod") == {"watermark": T0.isoformat(), "gone": ["a"]}
        polling = s.poll_strategies()["prod"]
        # A saved cursor means the scan landed: its progress is cleared.
        assert polling.strategy == "active_set" and polling.pages_done is None


def _index_sql(s: Store) -> list[tuple[str, str]]:
    return s._conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' "
        "AND sql IS NOT NULL ORDER BY name"
    ).fetchall()


def test_a_large_baseline_leaves_the_indexes_as_the_schema_has_them(tmp_path: Path) -> None:
    """A first baseline drops the secondary indexes for its writes and creates them again
    after (one sort instead of two B-tree updates per row); a failed one changes nothing."""
    with Store.open(str(tmp_path / "w.db")) as s:
        before = _index_sql(s)
        assert [name for name, _ in before] == ["jobs_by_batch", "jobs_by_create", "jobs_by_state"]
        many = [job(f"job-{n:05d}", "SUCCEED", batch_name=f"b{n % 7}") for n in range(12_000)]
        bad = job("job-99999", "FAILED", extra={"odd": object()})  # not JSON: the write fails
        with pytest.raises(ValueError, match="not JSON-compatible"):
            s.commit_cycle("cn", snapshot(*many, bad), [], [], now=T0)
        assert _index_sql(s) == before and s.load_jobs("cn") is None
        s.commit_cycle("cn", snapshot(*many), [], [], now=T0)
        assert _index_sql(s) == before
        assert s._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = s._conn.execute(
            "SELECT count(*) FROM jobs INDEXED BY jobs_by_batch WHERE source = 'cn' "
            "AND batch_name = 'b3'"
        ).fetchone()[0]
        assert rows == len([j for j in many if j.batch_name == "b3"])


def test_batch_memory_is_a_row_per_batch_written_only_where_it_changed(store: Store) -> None:
    a, b = ["sig-a", "t", "t", None, {}, []], ["sig-b", "t", "t", "sig-b", {"SUCCEED": 2}, []]
    store.commit_cycle(
        "cn", snapshot(job("a")), [], [], now=T0, tracking={"missing": {}},
        batches=({"a": a, "b": b}, [], True),
    )  # fmt: skip
    assert store.load_tracking("cn") == {"missing": {}, "batches": {"a": a, "b": b}}
    blob = store._conn.execute("SELECT tracking FROM sources WHERE name = 'cn'").fetchone()[0]
    assert "batches" not in json.loads(blob)  # kept apart: the blob stays small
    a2 = ["sig-a2", *a[1:]]
    store.commit_cycle(
        "cn", snapshot(job("a")), [], [], now=T0, tracking={"missing": {}},
        batches=({"a": a2}, ["b"], False),
    )  # fmt: skip
    assert store.load_tracking("cn") == {"missing": {}, "batches": {"a": a2}}
    # All of it, replacing what was stored (a process's first write).
    store.commit_events(
        "cn", [], [], now=T0, tracking={"missing": {}}, batches=({"c": b}, [], True)
    )
    assert store.load_tracking("cn") == {"missing": {}, "batches": {"c": b}}


def test_an_older_blob_with_batches_is_still_read(store: Store) -> None:
    old = {"missing": {}, "batches": {"x": ["sig", "t", "t", None, {}, []]}}
    store.commit_cycle("cn", snapshot(job("a")), [], [], now=T0, tracking=old)
    assert store.load_tracking("cn") == old


async def test_call_runs_inline_while_the_store_is_free_and_in_a_thread_while_it_is_held(
    store: Store,
) -> None:
    # From the event loop: a free store costs no thread hop; a held one (a large commit in
    # its worker thread) is waited for in a thread, never on the loop.
    loop_thread = threading.get_ident()
    ran_on: list[int] = []

    def counts() -> dict[OutboxStatus, int]:
        ran_on.append(threading.get_ident())
        return store.outbox_counts()

    assert (await store.call(counts))[OutboxStatus.PENDING] == 0
    assert ran_on == [loop_thread]

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.held():
            held.set()
            release.wait(5)

    holder = asyncio.get_running_loop().run_in_executor(None, hold)
    assert await asyncio.to_thread(held.wait, 5)
    waiting = asyncio.ensure_future(store.call(counts))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # it waits for the holder, and the loop goes on meanwhile
    release.set()
    assert (await waiting)[OutboxStatus.PENDING] == 0
    await holder
    assert ran_on[1] != loop_thread


async def test_a_call_whose_caller_is_cancelled_still_lands_and_close_waits_for_it(
    db_path: str,
) -> None:
    # A stop cancels the delivery pass; a sent mark already waiting for the store (behind a
    # large commit) must still be written, or the alert goes again after the restart.
    store = Store.open(db_path)
    (item,) = queue(store, ("a", "FAILED"))
    loop = asyncio.get_running_loop()
    held = asyncio.Event()

    def commit_for_a_while() -> None:
        with store.held():
            loop.call_soon_threadsafe(held.set)
            time.sleep(0.3)  # the "commit": releases on its own while close() waits

    # The commit runs in the loop's executor, as the daemon's does; with its one worker
    # busy, a call queued there behind it would be dropped by the cancel.
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    holder = loop.run_in_executor(None, commit_for_a_while)
    await asyncio.wait_for(held.wait(), 5)
    mark = asyncio.ensure_future(store.call(store.mark_sent_many, [item], T0))
    await asyncio.sleep(0.05)
    mark.cancel()  # the stop
    with pytest.raises(asyncio.CancelledError):
        await mark
    store.close()  # waits for the holder, then for the mark
    await holder
    with Store.open(db_path) as reopened:
        assert reopened.list_outbox([OutboxStatus.PENDING]) == []
        assert [i.id for i in reopened.list_outbox([OutboxStatus.SENT])] == [item]
