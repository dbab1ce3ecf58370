"""Config keys for messages and batches: parsed, defaulted, and checked with FILE:LINE."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from watcher.cli import main
from watcher.config import load_config_text
from watcher.errors import ConfigError

BASE = """\
sources:
  - name: prod
    endpoint: http://127.0.0.1:9
    project_id: p
    ak: AKAKAKAKAKAKAKAKAKAK
    sk: secret-secret-secret-secret
{source}channels:
  ops: "json://127.0.0.1:9/hook"
rules:
  - name: failures
    on: [FAILED]
    notify: [ops]
{rule}  - name: blind
    events: [source_unhealthy]
    notify: [ops]
storage: ":memory:"
"""


def load(source: str = "", rule: str = "") -> object:
    return load_config_text(BASE.format(source=source, rule=rule), "m.yaml", {})


def test_defaults_batch_quiet_10m_enrich_timeout_10s_no_group_templates() -> None:
    config = load_config_text(BASE.format(source="", rule=""), "m.yaml", {})
    (source,) = config.sources
    assert source.batch_quiet == timedelta(minutes=10)
    assert source.enrich_timeout == timedelta(seconds=10)
    rule = config.rules[0]
    assert (rule.group_title, rule.group_body, rule.group_limit) == (None, None, None)


def test_keys_are_read() -> None:
    config = load_config_text(
        BASE.format(
            source="    batch_quiet: 30m\n    enrich_timeout: 3s\n",
            rule="    group_title: '{{ counts | length }} states'\n"
            "    group_body: '{% for a in alerts %}{{ a.job.job_id }} {% endfor %}'\n"
            "    group_limit: 500\n    format: html\n",
        ),
        "m.yaml",
        {},
    )
    assert config.sources[0].batch_quiet == timedelta(minutes=30)
    assert config.sources[0].enrich_timeout == timedelta(seconds=3)
    assert config.rules[0].group_limit == 500
    assert config.rules[0].group_title == "{{ counts | length }} states"


@pytest.mark.parametrize(
    ("source", "rule", "message"),
    [
        ("    enrich_timeout: 0s\n", "", "m.yaml:7: sources[0].enrich_timeout: must be at least"),
        ("    batch_quiet: soon\n", "", "m.yaml:7: sources[0].batch_quiet: "),
        ("", "    group_limit: 0\n", "m.yaml:13: rules[0].group_limit: expected a whole number"),
        ("", "    group_title: [1]\n", "m.yaml:13: rules[0].group_title: "),
    ],
)
def test_bad_values_name_file_line_and_key(source: str, rule: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(source, rule)
    assert caught.value.message.startswith(message), caught.value.message


def test_check_renders_group_templates_against_a_sample_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE.format(source="", rule="    group_body: '{{ alerts[0].job.nope.x }}'\n"))
    path.chmod(0o600)
    assert main(["check", "-c", str(path)]) == 78
    err = capsys.readouterr().err
    assert "rules[0].group_body: template fails on a sample group" in err
    assert f"{path}:13:" in err
    good = BASE.format(
        source="",
        rule="    group_body: '{% for a in alerts %}{{ a.job.job_id }}{% endfor %} "
        "{{ counts.AUDIT_FAILED }}'\n",
    )
    path.write_text(good)
    assert main(["check", "-c", str(path)]) == 0


def test_a_json_rule_with_a_body_template_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load(rule="    format: json\n    body: '{{ job.job_id }}'\n")
    assert caught.value.message.startswith("m.yaml:14: rules[0].body: format: json sends")
