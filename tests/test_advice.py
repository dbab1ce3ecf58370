"""`check` advice: a config that would let the watcher go blind silently says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.advice import coverage_warnings
from watcher.cli import main
from watcher.config import load_config_text

BASE = """
sources:
  - name: prod
    endpoint: http://127.0.0.1:9
    project_id: p
    ak: AKAKAKAKAKAKAKAKAKAK
    sk: secret-secret-secret-secret
channels:
  ops: "json://127.0.0.1:9/hook"
rules:
  - name: failures
    on: [FAILED]
    notify: [ops]
{extra}
storage: ":memory:"
"""


def warnings_for(extra: str) -> list[str]:
    return coverage_warnings(load_config_text(BASE.format(extra=extra), "w.yaml", {}))


def test_no_rule_for_source_unhealthy_is_a_warning_naming_the_fix() -> None:
    (warning,) = warnings_for("")
    assert "no rule covers source_unhealthy for source prod" in warning
    assert "events: [source_unhealthy, source_recovered]" in warning


def test_a_rule_for_it_silences_the_warning() -> None:
    extra = "  - name: blind\n    events: [source_unhealthy]\n    notify: [ops]\n"
    assert warnings_for(extra) == []


def test_a_state_rule_does_not_count_as_covering_it() -> None:
    # `on: [SUCCEED]` never matches a job-less event, in the daemon or here.
    extra = "  - name: all\n    on: [SUCCEED]\n    events: [source_unhealthy]\n    notify: [ops]\n"
    assert len(warnings_for(extra)) == 1


def test_check_prints_the_warning_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE.format(extra=""))
    path.chmod(0o600)
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning: " in out
    assert "source_unhealthy" in out


def test_check_says_msteams_moved_to_workflows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        BASE.format(extra="").replace(
            '"json://127.0.0.1:9/hook"', '"msteams://tokenA/tokenB/tokenC/tokenD"'
        )
    )
    path.chmod(0o600)
    assert main(["check", "-c", str(path)]) == 78
    err = capsys.readouterr().err
    assert "removed in apprise 2" in err
    assert "workflows://" in err
    assert "tokenB" not in err


ROOT = Path(__file__).resolve().parent.parent


def test_the_example_config_and_the_readme_walk_through_route_source_unhealthy() -> None:
    readme = (ROOT / "README.md").read_text()
    walk = readme.split("## Configuration walk-through", 1)[1]
    block = walk.split("```yaml\n", 1)[1].split("```", 1)[0]
    env = {
        name: "value-for-tests-0123456789"
        for name in ("HUAWEICLOUD_PROJECT_ID", "CLOUD_SDK_AK", "CLOUD_SDK_SK", "SLACK_A")
    }
    env.update(SLACK_B="B000", SLACK_C="XXXX", SMTP_PASSWORD="pw", HOOK_TOKEN="tok")
    env.update({k: "x" for k in ("DINGTALK_TOKEN", "WECOM_KEY", "FEISHU_TOKEN")})
    walk_config = load_config_text(block, str(ROOT / "walk.yaml"), env)
    assert coverage_warnings(walk_config) == []
    example_text = (ROOT / "config.example.yaml").read_text()
    example = load_config_text(example_text, str(ROOT / "config.example.yaml"), {})
    assert coverage_warnings(example) == []
