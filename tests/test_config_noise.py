"""Config keys for noise control: rule grouping and channel rate limits and quiet hours."""

from __future__ import annotations

from datetime import time, timedelta

import pytest

from watcher.config import load_config_text
from watcher.errors import ConfigError
from watcher.model import ChannelPolicy, QuietHours

HEAD = """\
sources:
  - name: prod
    endpoint: http://127.0.0.1:9
    project_id: p
    ak: AKAKAKAKAKAK
    sk: SKSKSKSKSKSK
"""


def load(channels: str, rules: str = "") -> object:
    text = HEAD + channels + (rules or "rules:\n  - name: r\n    notify: [ops]\n")
    return load_config_text(text, "c.yaml", {})


def test_channel_long_form_with_rate_limit_and_quiet_hours() -> None:
    config = load_config_text(
        HEAD
        + """channels:
  ops:
    urls: ["json://127.0.0.1:9/x"]
    max_per_minute: 6
    quiet_hours: "22:00-07:30"
    timezone: Asia/Shanghai
  plain: json://127.0.0.1:9/y
rules:
  - name: batches
    events: [batch_settled]
    notify: [ops, plain]
    group_by: [source, batch_name]
    group_wait: 30s
    group_interval: 5m
""",
        "c.yaml",
        {},
    )
    assert [u.reveal() for u in config.channels["ops"]] == ["json://127.0.0.1:9/x"]
    assert config.channel_policies == {
        "ops": ChannelPolicy(6, QuietHours(time(22, 0), time(7, 30), "Asia/Shanghai"))
    }
    (rule,) = config.rules
    assert rule.group_by == ("source", "batch_name")
    assert rule.group_wait == timedelta(seconds=30)
    assert rule.group_interval == timedelta(minutes=5)


@pytest.mark.parametrize(
    ("channels", "expected"),
    [
        (
            "channels:\n  ops:\n    urls: [json://h/x]\n    quiet_hours: '22-07'\n",
            "c.yaml:10: channels.ops.quiet_hours: expected a daily window like 22:00-07:00 "
            "(got '22-07')",
        ),
        (
            "channels:\n  ops:\n    urls: [json://h/x]\n    quiet_hours: '22:00-07:00'\n"
            "    timezone: Mars/Olympus\n",
            "c.yaml:11: channels.ops.timezone: unknown timezone 'Mars/Olympus': "
            "expected a name like Asia/Shanghai",
        ),
        (
            "channels:\n  ops:\n    urls: [json://h/x]\n    max_per_minute: 0\n",
            "c.yaml:10: channels.ops.max_per_minute: expected a whole number above 0 (got 0)",
        ),
        (
            "channels:\n  ops:\n    url: [json://h/x]\n",
            "c.yaml:9: channels.ops.url: unknown key 'url' (did you mean 'urls'?); "
            "expected one of: urls, max_per_minute, quiet_hours, timezone",
        ),
        (
            "channels:\n  ops:\n    max_per_minute: 3\n",
            "c.yaml:8: channels.ops: missing required key 'urls'",
        ),
    ],
)
def test_bad_channel_settings(channels: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(channels)
    assert str(err.value) == expected


def test_bad_group_by_field() -> None:
    with pytest.raises(ConfigError) as err:
        load(
            "channels:\n  ops: json://h/x\n",
            "rules:\n  - name: r\n    notify: [ops]\n    group_by: [batch name]\n",
        )
    assert str(err.value) == (
        "c.yaml:12: rules[0].group_by[0]: expected a field name such as source, rule or batch_name"
    )


def test_secret_with_url_metacharacters_is_encoded_where_it_lands() -> None:
    import apprise

    password = "p@ss/w#rd%42:x"
    text = HEAD + (
        "channels:\n"
        "  mail: 'mailtos://alerts:${SMTP_PASSWORD}@smtp.example.com?to=ops@example.com'\n"
        "  whole: '${WHOLE_URL}'\n"
        "rules:\n  - name: r\n    notify: [mail, whole]\n"
    )
    env = {"SMTP_PASSWORD": password, "WHOLE_URL": "json://hooks.example.com:8080/x"}
    config = load_config_text(text, "c.yaml", env)
    url = config.channels["mail"][0].reveal()
    plugin = apprise.Apprise.instantiate(url)
    assert plugin.password == password
    assert plugin.host == "smtp.example.com"
    # A variable that is the whole URL is taken as written.
    assert config.channels["whole"][0].reveal() == "json://hooks.example.com:8080/x"
    assert password in config.secrets
    assert "p%40ss%2Fw%23rd%2542%3Ax" in config.secrets
