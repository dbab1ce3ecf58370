"""The store's alert facts and failure details: kept across reopen, bounded, found by group."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from watcher.engine.alerts import route
from watcher.model import Event, EventKind, Job, OutboxStatus, RuleConfig
from watcher.store import FAILURE_DETAIL_DAYS, Store

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_failure_details_survive_a_reopen_and_old_ones_are_pruned(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    with Store.open(path) as store:
        store.save_failure_detail("prod", "j1|AUDIT_FAILED", {"available": True, "errors": []}, NOW)
    with Store.open(path) as store:
        assert store.failure_detail("prod", "j1|AUDIT_FAILED") == {"available": True, "errors": []}
        assert store.failure_detail("other", "j1|AUDIT_FAILED") is None
        later = NOW + timedelta(days=FAILURE_DETAIL_DAYS + 1)
        store.save_failure_detail("prod", "j2|FAILED", {"available": True}, later)
        assert store.failure_detail("prod", "j1|AUDIT_FAILED") is None
        assert store.failure_detail("prod", "j2|FAILED") is not None


def test_alert_facts_round_trip_and_groups_are_found_by_channel_key_and_span(
    tmp_path: Path,
) -> None:
    events = [
        Event(
            EventKind.TRANSITION,
            "prod",
            NOW,
            f"job j{n} went from AUDITING to AUDIT_FAILED",
            job=Job(job_id=f"j{n}", state="AUDIT_FAILED", voice_name="晓晓"),
            previous_state="AUDITING",
        )
        for n in range(4)
    ]
    rules = [
        RuleConfig(name="a", on=("*",), notify=("ops",)),
        RuleConfig(name="b", on=("*",), notify=("mail",)),
    ]
    alerts = route(events, rules).alerts
    with Store.open(str(tmp_path / "s.db")) as store:
        store.commit_events("prod", events, alerts, now=NOW, tracking={})
        items = store.list_outbox([OutboxStatus.PENDING])
        assert {i.alert.facts["alert"]["job"]["voice_name"] for i in items} == {"晓晓"}
        ids = [i.id for i in items]
        group = store.alerts_of_group("ops", ["source=prod|rule=a"], min(ids), max(ids))
        assert [i.alert.job_id for i in group] == ["j0", "j1", "j2", "j3"]
        assert store.alerts_of_group("ops", ["source=prod|rule=b"], min(ids), max(ids)) == []
        assert len(store.alerts_of_group("mail", [], min(ids), max(ids))) == 4
