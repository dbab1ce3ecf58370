"""Documented MetaStudio error codes explained in alerts and CLI errors; others unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources

import pytest

from tests.test_cli import Servers, cli, our_lines, servers  # noqa: F401 (fixture)
from watcher.engine.alerts import route
from watcher.engine.messages import compose
from watcher.errorcodes import explain, table_source, with_explanation
from watcher.model import Event, EventKind, Job, RuleConfig

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def test_the_table_names_its_source_and_every_entry_is_complete() -> None:
    assert "huaweicloud.com" in table_source()
    raw = json.loads(resources.files("watcher").joinpath("data/mss_error_codes.json").read_text())
    assert len(raw["codes"]) >= 10
    for code, entry in raw["codes"].items():
        assert code.startswith("MSS.")
        assert all(entry[k] for k in ("message", "description", "action", "action_en"))


def test_a_documented_code_says_meaning_and_action() -> None:
    found = explain("MSS.00000003")
    assert found is not None
    assert found.line() == (
        "MSS.00000003 means: Invalid parameter (请求参数无效); what to do: send correct "
        "request parameters (请填写正确的请求参数)"
    )


def test_unknown_codes_pass_unchanged() -> None:
    assert explain("MSS.00000104") is None
    assert with_explanation("training failed", "MSS.00000104") == "training failed"
    assert with_explanation("no code", None) == "no code"


def failed_event(code: str) -> Event:
    job = Job(
        job_id="j1",
        state="FAILED",
        voice_name="v",
        job_failed_code=code,
        job_failed_reason="missing file",
    )
    return Event(EventKind.TRANSITION, "prod", NOW, "r", job=job, previous_state="PROCESSING")


def test_single_and_grouped_alerts_explain_a_documented_failure_code() -> None:
    rule = RuleConfig(name="f", on=("*",), notify=("ops",))
    alerts = list(route([failed_event("MSS.45000001"), failed_event("MSS.999")], [rule]).alerts)
    assert "MSS.45000001 means: 缺少文件 (用户缺少资产文件); what to do: " in alerts[0].body
    assert "means:" not in alerts[1].body
    body = compose("ops", [alerts[0].group_key], alerts, [1, 2]).body
    assert "    MSS.45000001 means: 缺少文件" in body
    assert body.count("means:") == 1


def test_cli_error_explains_the_apis_code(
    servers: Servers,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault = {"kind": "status", "status": 400, "error_code": "MSS.00000003", "error_msg": "bad"}
    servers.loop.call(servers.sim.faults.append, fault)
    code, _, err = cli(capsys, "once", "-c", servers.config())
    assert code == 1
    (line,) = our_lines(err)
    assert "(MSS.00000003): bad" in line
    assert line.endswith(
        "MSS.00000003 means: Invalid parameter (请求参数无效); what to do: send correct "
        "request parameters (请填写正确的请求参数)"
    )
