"""`route` answers as the daemon decides, for every event kind, in words (no Python reprs)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from watcher.cli import EX_OK, EX_USAGE, main
from watcher.config import load_config
from watcher.engine.alerts import route
from watcher.engine.probe import JOB_KINDS, Facts, probe_event
from watcher.model import EventKind

CONFIG = """
sources:
  - name: prod
    endpoint: http://127.0.0.1:9
    project_id: p
    ak: AKAKAKAKAKAKAKAKAKAK
    sk: secret-secret-secret-secret
channels:
  ops: "json://127.0.0.1:9/hook"
  pipeline: "json://127.0.0.1:9/pipeline"
rules:
  - name: done
    on: [SUCCEED]
    notify: [pipeline]
  - name: everything
    on: ["*"]
    # Every kind but stuck: a stuck event needs for: and named on: states (see `stuck`).
    events: [transition, rejected_again, new, vanished, reappeared, recovered,
             batch_settled, batch_updated, source_unhealthy, source_recovered, summary]
    notify: [ops]
  - name: stuck
    on: [AUDITING]
    for: 1d
    notify: [ops]
storage: ":memory:"
"""

ARGS = {
    EventKind.TRANSITION: ["--state", "SUCCEED", "--from", "UPLOADING"],
    EventKind.REJECTED_AGAIN: ["--state", "AUDIT_FAILED"],
    EventKind.NEW: ["--state", "SUCCEED"],
    EventKind.VANISHED: ["--state", "SUCCEED"],
    EventKind.REAPPEARED: ["--state", "SUCCEED"],
    EventKind.STUCK: ["--state", "AUDITING"],
    EventKind.RECOVERED: ["--state", "SUCCEED"],
}


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    path.chmod(0o600)
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kind", list(EventKind), ids=str)
def test_route_answers_for_every_kind_without_python_internals(
    kind: EventKind, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "route", "-c", config, "--event", str(kind), *ARGS.get(kind, []))
    assert code == EX_OK, err
    for internal in ("<EventKind", "None", "EventKind.", "[]", "{'"):
        assert internal not in out
    assert out.startswith(f"event: {kind} · ")
    assert f"MATCH {'stuck' if kind is EventKind.STUCK else 'everything'}: matched" in out
    if kind not in JOB_KINDS:
        assert "route-test-job" not in out
        assert f"  -   done: {kind} is about no job; on: needs SUCCEED" in out


@pytest.mark.parametrize("kind", list(EventKind), ids=str)
def test_route_decides_what_the_daemon_routes(kind: EventKind, config: str) -> None:
    """The rules `route` prints as MATCH are those the daemon's `route()` sends alerts for."""
    loaded = load_config(config)
    args = ARGS.get(kind, [])
    state = args[args.index("--state") + 1] if "--state" in args else None
    from_state = args[args.index("--from") + 1] if "--from" in args else None
    event = probe_event(Facts(kind, "prod", state, from_state), datetime.now(UTC))
    rules = {a.rule for a in route([event], loaded.rules).alerts}
    expected = {"everything"}
    # `done` lists no events: every kind but stuck and vanished, and only with a SUCCEED job.
    if kind in JOB_KINDS - {EventKind.VANISHED} and state == "SUCCEED":
        expected.add("done")
    if kind is EventKind.STUCK:
        expected = {"stuck"}
    assert rules == expected


def test_state_is_refused_where_it_does_not_apply(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "route", "-c", config, "--event", "batch_settled", "--state", "FAILED"
    )
    assert code == EX_USAGE
    assert "--state do(es) not apply to batch_settled" in err


def test_job_events_need_a_state(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "route", "-c", config, "--event", "transition")
    assert code == EX_USAGE
    assert "give its state with --state" in err
