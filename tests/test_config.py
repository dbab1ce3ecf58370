"""Tests of watcher.config: a full round trip, every error's exact message, and fuzzing."""

from __future__ import annotations

import os
import stat
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.config import (
    DEFAULT_STORAGE,
    config_warnings,
    describe_credentials,
    load_config,
    load_config_text,
    parse_duration,
    parse_listen,
)
from watcher.errors import ConfigError
from watcher.model import BodyFormat, Config, EventKind, FirstRun, Secret

ENV = {"CLOUD_SDK_AK": "AKFROMENV", "CLOUD_SDK_SK": "SKFROMENV"}
SRC = "sources:\n  - name: prod\n    region: cn-north-4\n    project_id: p1\n"  # lines 1-4
CH = "channels:\n  ops: json://localhost/hook\n"
RULE = "rules:\n  - name: r\n"

FULL = textwrap.dedent(
    """\
    # metastudio-watcher
    sources:
      - name: prod
        region: cn-north-4
        project_id: ${HUAWEICLOUD_PROJECT_ID}
        ak: ${MY_AK}
        sk_file: sk.txt
        app_user_id: ${APP_USER:-watcher}
        poll_interval: 1h30m
        filters:
          state: [FAILED, SUCCEED]
          job_id: 0600
      - name: lab
        endpoint: http://127.0.0.1:8080/
        project_id: 0600
        security_token: TOKEN123
        ak: AKINLINE
        sk: SKINLINE
        request_timeout: 500ms
    channels:
      ops:
        - json://localhost/hook
        - slack://T000/B000/${SLACK_TOKEN}
      pager: "pover://user@${PO_TOKEN}"
    rules:
      - name: failed jobs
        on: [FAILED, AUDIT_FAILED]
        from: PROCESSING
        events: [transition, rejected_again]
        where:
          voice_name: "promo-*"
          tag: [ADVERTISE, LIVE]
        notify: [ops, pager]
        title: "Job {{ job.job_id }} costs $$5"
        format: markdown
        continue: false
        urgent: TRUE
      - name: stuck
        on: PROCESSING
        for: 2h
        repeat: 1d
        notify: ops
      - name: everything
        on: "*"
        notify: ops
    storage: state/watch.db
    first_run: summary
    delivery:
      retry_initial: 10s
      retry_max: 5m
      give_up_after: 2d
      send_timeout: 15
    """
)
FULL_ENV = {
    "HUAWEICLOUD_PROJECT_ID": "0a1b2c",
    "MY_AK": "AKFROMVAR",
    "SLACK_TOKEN": "xoxb-slack-secret",
    "PO_TOKEN": "pushover-secret",
}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative config paths ("w.yaml") resolve in tmp_path."""
    monkeypatch.chdir(tmp_path)


def load(text: str, env: dict[str, str] | None = None) -> Config:
    return load_config_text(text, "w.yaml", ENV if env is None else env)


# --- the good path ------------------------------------------------------------------------


def test_full_config_round_trip(tmp_path: Path) -> None:
    config_file = tmp_path / "w.yaml"
    config_file.write_text(FULL)
    (tmp_path / "sk.txt").write_text("SKFROMFILE\n")

    config = load_config(str(config_file), FULL_ENV)

    prod, lab = config.sources
    assert prod.name == "prod"
    assert prod.endpoint == "https://metastudio.cn-north-4.myhuaweicloud.com"
    assert prod.region == "cn-north-4"
    assert prod.project_id == "0a1b2c"
    assert prod.ak.secret.reveal() == "AKFROMVAR"
    assert prod.ak.origin == "config ${MY_AK}"
    assert prod.sk.secret.reveal() == "SKFROMFILE"
    assert prod.sk.origin == f"file {tmp_path / 'sk.txt'}"
    assert prod.security_token is None
    assert prod.app_user_id == "watcher"
    assert prod.poll_interval == timedelta(hours=1, minutes=30)
    assert prod.request_timeout == timedelta(seconds=30)
    assert prod.filters == (("state", "FAILED,SUCCEED"), ("job_id", "0600"))

    assert lab.endpoint == "http://127.0.0.1:8080"
    assert lab.region is None
    assert lab.project_id == "0600"
    assert lab.ak.origin == "config"
    assert lab.security_token is not None
    assert lab.security_token.secret.reveal() == "TOKEN123"
    assert lab.poll_interval == timedelta(seconds=60)
    assert lab.request_timeout == timedelta(milliseconds=500)

    assert config.channels == {
        "ops": (Secret("json://localhost/hook"), Secret("slack://T000/B000/xoxb-slack-secret")),
        "pager": (Secret("pover://user@pushover-secret"),),
    }

    failed, stuck, everything = config.rules
    assert failed.name == "failed jobs"
    assert failed.on == ("FAILED", "AUDIT_FAILED")
    assert failed.from_states == ("PROCESSING",)
    assert failed.events == (EventKind.TRANSITION, EventKind.REJECTED_AGAIN)
    assert failed.where == (("voice_name", ("promo-*",)), ("tag", ("ADVERTISE", "LIVE")))
    assert failed.notify == ("ops", "pager")
    assert failed.title == "Job {{ job.job_id }} costs $5"
    assert failed.body is None
    assert failed.format is BodyFormat.MARKDOWN
    assert failed.stop is True
    assert failed.urgent is True
    assert stuck.on == ("PROCESSING",)
    assert stuck.for_ == timedelta(hours=2)
    assert stuck.repeat == timedelta(days=1)
    assert stuck.events is None
    assert stuck.stop is False
    assert everything.on == ("*",)

    assert config.storage == str(tmp_path / "state" / "watch.db")
    assert config.first_run is FirstRun.SUMMARY
    assert config.delivery.retry_initial == timedelta(seconds=10)
    assert config.delivery.retry_max == timedelta(minutes=5)
    assert config.delivery.give_up_after == timedelta(days=2)
    assert config.delivery.send_timeout == timedelta(seconds=15)

    assert config.lines["sources[0].poll_interval"] == 9
    assert config.lines["sources[1]"] == 13
    assert config.lines["channels.ops[1]"] == 23
    assert config.lines["rules[0].title"] == 34
    assert config.lines["rules[2].on"] == 44
    assert config.lines["delivery.send_timeout"] == 52

    assert config.secrets == {
        "AKFROMVAR",
        "SKFROMFILE",
        "AKINLINE",
        "SKINLINE",
        "TOKEN123",
        "json://localhost/hook",
        "slack://T000/B000/xoxb-slack-secret",
        "xoxb-slack-secret",
        "pover://user@pushover-secret",
        "pushover-secret",
    }
    assert describe_credentials(config) == [
        f"source prod: ak from config ${{MY_AK}}, sk from file {tmp_path / 'sk.txt'}",
        "source lab: ak from config, sk from config, security token from config",
    ]
    # Config.secrets itself shows in repr(config) (model contract); the rest never does.
    assert "SKFROMFILE" not in repr(config.sources) + repr(config.channels)


def test_defaults_for_a_minimal_config(tmp_path: Path) -> None:
    config = load_config_text(SRC, str(tmp_path / "w.yaml"), ENV)
    assert config.storage == str(tmp_path / "metastudio-watcher.db")
    assert DEFAULT_STORAGE == "./metastudio-watcher.db"
    assert config.first_run is FirstRun.BASELINE
    assert config.rules == ()
    assert config.channels == {}
    assert config.sources[0].ak.origin == "env CLOUD_SDK_AK"
    assert config.sources[0].sk.origin == "env CLOUD_SDK_SK"
    assert config.delivery.retry_max == timedelta(minutes=10)


def test_env_credentials_bring_the_env_security_token() -> None:
    env = {**ENV, "CLOUD_SDK_SECURITY_TOKEN": "TMPTOKEN"}
    config = load_config_text(SRC, "w.yaml", env)
    token = config.sources[0].security_token
    assert token is not None
    assert token.origin == "env CLOUD_SDK_SECURITY_TOKEN"


def test_env_security_token_is_ignored_when_the_config_names_keys() -> None:
    env = {"CLOUD_SDK_SECURITY_TOKEN": "TMPTOKEN"}
    config = load_config_text(SRC + "    ak: AK1\n    sk: SK1\n", "w.yaml", env)
    assert config.sources[0].security_token is None


def test_default_used_when_variable_unset_or_empty() -> None:
    text = SRC.replace("p1", "${PID:-fallback}")
    assert load(text).sources[0].project_id == "fallback"
    assert load(text, {**ENV, "PID": ""}).sources[0].project_id == "fallback"
    assert load(text, {**ENV, "PID": "real"}).sources[0].project_id == "real"


def test_credential_file_found_under_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ak").write_text("AKFILE\r\n")
    env = {**ENV, "CREDENTIALS_DIRECTORY": str(creds)}
    config = load_config_text(SRC + "    ak_file: ak\n", "w.yaml", env)
    assert config.sources[0].ak.secret.reveal() == "AKFILE"
    assert config.sources[0].ak.origin == f"file {creds / 'ak'}"


def test_on_is_a_key_and_yes_no_stay_strings() -> None:
    text = (
        SRC
        + CH
        + RULE
        + "    on: [FAILED]\n    notify: ops\n    where:\n      x: [yes, no, on, off]\n"
    )
    rule = load_config_text(text, "w.yaml", ENV).rules[0]
    assert rule.on == ("FAILED",)
    assert rule.where == (("x", ("yes", "no", "on", "off")),)


def test_leading_zero_is_never_octal() -> None:
    text = SRC + "    poll_interval: 0600\n    filters:\n      job_id: 0600\n"
    source = load_config_text(text, "w.yaml", ENV).sources[0]
    assert source.poll_interval == timedelta(seconds=600)  # decimal, never 384
    assert source.filters == (("job_id", "0600"),)


def test_sexagesimal_stays_a_string() -> None:
    text = SRC + "    filters:\n      batch_name: 1:30:00\n"
    assert load_config_text(text, "w.yaml", ENV).sources[0].filters == (("batch_name", "1:30:00"),)


def test_env_variables_expand_into_durations_and_booleans() -> None:
    text = (
        SRC + "    poll_interval: ${POLL:-2m}\n" + CH + RULE + "    notify: ops\n    urgent: ${U}\n"
    )
    config = load_config_text(text, "w.yaml", {**ENV, "U": "true"})
    assert config.sources[0].poll_interval == timedelta(minutes=2)
    assert config.rules[0].urgent is True


def test_memory_storage_is_kept_as_is() -> None:
    assert load_config_text(SRC + "storage: ':memory:'\n", "w.yaml", ENV).storage == ":memory:"


def test_url_validator_sees_each_expanded_url() -> None:
    seen: list[str] = []

    def accept(url: str) -> None:
        seen.append(url)

    text = SRC + "channels:\n  ops: [json://a, 'json://b/${T}']\n"
    load_config_text(text, "w.yaml", {**ENV, "T": "tok"}, accept)
    assert seen == ["json://a", "json://b/tok"]


# --- every error, with its exact message ---------------------------------------------------

KNOWN = (
    "ANNOTATING, AUDITING, AUDIT_FAILED, CREATING, FAILED, PROCESSING, RESULT_REVIEW, SPLITTING, "
    "SPLIT_FAILED, SUCCEED, SYSTEM_AUDITING, UPLOADING, USER_RESULT_REVIEW, USER_REVIEW_REJECT, "
    "WAITING, WAITING_SPLIT"
)
TOP_KEYS = "sources, channels, rules, storage, first_run, delivery, http, retention"
SOURCE_KEYS = (
    "name, region, endpoint, project_id, ak, ak_file, sk, sk_file, security_token, "
    "security_token_file, app_user_id, poll_interval, request_timeout, filters, "
    "full_scan_every, settled_states, max_requests_per_second, page_concurrency, "
    "batch_quiet, enrich_timeout"
)
FILTER_KEYS = "state, job_id, voice_name, tag, job_type, batch_name, create_since, create_until"
EVENT_KINDS = (
    "transition, rejected_again, new, vanished, reappeared, stuck, recovered, batch_settled, "
    "batch_updated, source_unhealthy, source_recovered, summary"
)
REGION_HINT = (
    "known regions: cn-east-3, cn-north-4 "
    "(for another region set endpoint: https://metastudio.REGION.myhuaweicloud.com)"
)

BAD: list[tuple[str, str, str]] = [
    (
        "yaml_syntax",
        "sources: [a, b\n",
        "w.yaml:2: invalid YAML: while parsing a flow sequence: "
        "expected ',' or ']', but got '<stream end>'",
    ),
    (
        "tab_indentation",
        "sources:\n\t- name: prod\n",
        "w.yaml:2: invalid YAML: tab characters are not allowed for indentation in YAML; "
        "use spaces",
    ),
    (
        "duplicate_key",
        SRC + "    poll_interval: 30s\n    poll_interval: 60s\n",
        "w.yaml:6: sources[0].poll_interval: duplicate key 'poll_interval' (first at line 5)",
    ),
    (
        "duplicate_top_key",
        SRC + "storage: a.db\nstorage: b.db\n",
        "w.yaml:6: storage: duplicate key 'storage' (first at line 5)",
    ),
    (
        "unknown_top_key",
        SRC + "rule:\n  - name: x\n",
        f"w.yaml:5: rule: unknown key 'rule' (did you mean 'rules'?); expected one of: {TOP_KEYS}",
    ),
    (
        "unknown_source_key",
        SRC + "    poll_intervall: 30s\n",
        "w.yaml:5: sources[0].poll_intervall: unknown key 'poll_intervall' "
        f"(did you mean 'poll_interval'?); expected one of: {SOURCE_KEYS}",
    ),
    (
        "sources_not_a_list",
        "sources:\n  name: prod\n",
        "w.yaml:1: sources: expected a list of sources (got a mapping)",
    ),
    ("sources_empty", "sources: []\n", "w.yaml:1: sources: expected at least one source"),
    ("sources_missing", CH, "w.yaml:1: missing required key 'sources'"),
    (
        "top_level_not_a_mapping",
        "- a\n- b\n",
        f"w.yaml:1: expected a mapping with keys {TOP_KEYS} (got a list)",
    ),
    (
        "empty_file",
        "# nothing here\n",
        "w.yaml:1: the configuration is empty: expected a mapping with at least 'sources'",
    ),
    (
        "poll_interval_a_list",
        SRC + "    poll_interval: [1]\n",
        "w.yaml:5: sources[0].poll_interval: expected a duration like 30s, 5m, 1h (got a list)",
    ),
    (
        "bad_duration",
        SRC + "    poll_interval: 5 minutes\n",
        "w.yaml:5: sources[0].poll_interval: expected a duration like 30s, 5m, 1h "
        "(got '5 minutes')",
    ),
    (
        "duration_units_out_of_order",
        SRC + "    poll_interval: 30m1h\n",
        "w.yaml:5: sources[0].poll_interval: expected a duration like 30s, 5m, 1h (got '30m1h')",
    ),
    (
        "float_duration_is_not_a_number",
        SRC + "    request_timeout: 1.5\n",
        "w.yaml:5: sources[0].request_timeout: expected a duration like 30s, 5m, 1h (got '1.5')",
    ),
    (
        "poll_interval_too_short",
        SRC + "    poll_interval: 2s\n",
        "w.yaml:5: sources[0].poll_interval: must be at least 5s",
    ),
    (
        "request_timeout_zero",
        SRC + "    request_timeout: 0s\n",
        "w.yaml:5: sources[0].request_timeout: must be longer than 0s",
    ),
    (
        "unknown_state_in_on",
        SRC + CH + RULE + "    on: [FAILED, AUDIT_FAIL]\n    notify: ops\n",
        "w.yaml:9: rules[0].on[1]: unknown state 'AUDIT_FAIL' (did you mean 'AUDIT_FAILED'?)",
    ),
    (
        "lower_case_state",
        SRC + CH + RULE + "    on: failed\n    notify: ops\n",
        "w.yaml:9: rules[0].on: unknown state 'failed' (did you mean 'FAILED'?)",
    ),
    (
        "unknown_state_in_from",
        SRC + CH + RULE + "    on: FAILED\n    from: [PROCESING]\n    notify: ops\n",
        "w.yaml:10: rules[0].from[0]: unknown state 'PROCESING' (did you mean 'PROCESSING'?)",
    ),
    (
        "on_yes_is_the_string_yes",
        SRC + CH + RULE + "    on: yes\n    notify: ops\n",
        f"w.yaml:9: rules[0].on: unknown state 'yes'; known states: {KNOWN}",
    ),
    (
        "star_mixed_with_states",
        SRC + CH + RULE + "    on: ['*', FAILED]\n    notify: ops\n",
        "w.yaml:9: rules[0].on[0]: '*' matches every state: use it alone",
    ),
    (
        "unknown_event_kind",
        SRC + CH + RULE + "    events: [stuk]\n    notify: ops\n",
        "w.yaml:9: rules[0].events[0]: unknown event kind 'stuk' (did you mean 'stuck'?); "
        f"expected one of: {EVENT_KINDS}",
    ),
    (
        "unknown_channel",
        SRC + CH + RULE + "    notify: [opz]\n",
        "w.yaml:9: rules[0].notify[0]: unknown channel 'opz' (did you mean 'ops'?); "
        "defined channels: ops",
    ),
    (
        "no_channels_defined",
        SRC + RULE + "    notify: [ops]\n",
        "w.yaml:7: rules[0].notify[0]: unknown channel 'ops': no channels are defined "
        "(add them under channels:)",
    ),
    (
        "notify_missing",
        SRC + CH + RULE + "    on: FAILED\n",
        "w.yaml:8: rules[0]: missing required key 'notify'",
    ),
    (
        "notify_a_mapping",
        SRC + CH + RULE + "    notify: {ops: 1}\n",
        "w.yaml:9: rules[0].notify: expected a list of channel names (got a mapping)",
    ),
    (
        "notify_empty",
        SRC + CH + RULE + "    notify: []\n",
        "w.yaml:9: rules[0].notify: expected a list of channel names (got an empty list)",
    ),
    (
        "duplicate_rule_name",
        SRC + CH + RULE + "    notify: ops\n  - name: r\n    notify: ops\n",
        "w.yaml:10: rules[1].name: duplicate rule name 'r' (first at line 8)",
    ),
    (
        "duplicate_source_name",
        SRC + "  - name: prod\n    region: cn-east-3\n    project_id: p2\n",
        "w.yaml:5: sources[1].name: duplicate source name 'prod' (first at line 2)",
    ),
    (
        "unknown_region_close",
        SRC.replace("cn-north-4", "cn-north-1"),
        "w.yaml:3: sources[0].region: unknown region 'cn-north-1' (did you mean 'cn-north-4'?); "
        + REGION_HINT,
    ),
    (
        "unknown_region_far",
        SRC.replace("cn-north-4", "ap-southeast-1"),
        f"w.yaml:3: sources[0].region: unknown region 'ap-southeast-1'; {REGION_HINT}",
    ),
    (
        "no_region_nor_endpoint",
        "sources:\n  - name: prod\n    project_id: p1\n",
        "w.yaml:2: sources[0]: missing required key 'region' (or 'endpoint')",
    ),
    (
        "endpoint_with_path",
        "sources:\n  - name: prod\n    endpoint: https://x.example.com/v1\n    project_id: p1\n",
        "w.yaml:3: sources[0].endpoint: expected an endpoint like "
        "https://metastudio.cn-north-4.myhuaweicloud.com (http(s)://host[:port], no path)",
    ),
    (
        "missing_env_var",
        SRC.replace("p1", "${HUAWEICLOUD_PROJECT_ID}"),
        "w.yaml:4: sources[0].project_id: environment variable HUAWEICLOUD_PROJECT_ID is not set",
    ),
    (
        "malformed_reference",
        SRC.replace("p1", "${1X}"),
        "w.yaml:4: sources[0].project_id: malformed ${...} reference (write $$ for a literal $)",
    ),
    (
        "project_id_missing",
        "sources:\n  - name: prod\n    region: cn-north-4\n",
        "w.yaml:2: sources[0]: missing required key 'project_id'",
    ),
    (
        "project_id_empty",
        SRC.replace("p1", "''"),
        "w.yaml:4: sources[0].project_id: expected a non-empty string (got an empty string)",
    ),
    (
        "continue_yes_is_not_a_boolean",
        SRC + CH + RULE + "    notify: ops\n    continue: yes\n",
        "w.yaml:10: rules[0].continue: expected true or false (got 'yes')",
    ),
    (
        "unknown_format",
        SRC + CH + RULE + "    notify: ops\n    format: rst\n",
        "w.yaml:10: rules[0].format: unknown format 'rst'; expected one of: "
        "text, markdown, html, json",
    ),
    (
        "unknown_first_run",
        SRC + "first_run: baseline_\n",
        "w.yaml:5: first_run: unknown mode 'baseline_' (did you mean 'baseline'?); "
        "expected one of: baseline, notify, summary",
    ),
    (
        "unknown_filter",
        SRC + "    filters:\n      status: FAILED\n",
        "w.yaml:6: sources[0].filters.status: unknown key 'status' (did you mean 'state'?); "
        f"expected one of: {FILTER_KEYS}",
    ),
    (
        "unknown_filter_state",
        SRC + "    filters:\n      state: [FAILED, DONE]\n",
        f"w.yaml:6: sources[0].filters.state[1]: unknown state 'DONE'; known states: {KNOWN}",
    ),
    (
        "retry_initial_above_retry_max",
        SRC + "delivery:\n  retry_initial: 1h\n  retry_max: 5m\n",
        "w.yaml:6: delivery.retry_initial: retry_initial (3600s) must not be longer "
        "than retry_max (300s)",
    ),
    (
        "channel_name_not_an_identifier",
        SRC + "channels:\n  'ops team': json://x\n",
        "w.yaml:6: channels.ops team: a channel name must be a simple identifier "
        "(letters, digits, '_', '-')",
    ),
    (
        "channel_url_without_scheme",
        SRC + "channels:\n  ops: [json://x, not-a-url]\n",
        "w.yaml:6: channels.ops[1]: invalid apprise URL (…): expected scheme://… (an apprise URL)",
    ),
    (
        "where_nested_list",
        SRC + CH + RULE + "    notify: ops\n    where:\n      tag: [[a]]\n",
        "w.yaml:11: rules[0].where.tag[0]: expected a string (got a list)",
    ),
    (
        "merge_keys_rejected",
        SRC + "base: &b {a: 1}\nx:\n  <<: *b\n",
        "w.yaml:7: invalid YAML: YAML merge keys (<<) are not supported",
    ),
    (
        "explicit_float_tag",
        SRC + "    poll_interval: !!float 1.5\n",
        "w.yaml:5: invalid YAML: unsupported YAML tag '!!float'",
    ),
    (
        "python_tag_never_constructed",
        "sources: !!python/object/apply:os.system [echo hi]\n",
        "w.yaml:1: invalid YAML: unsupported YAML tag '!!python/object/apply:os.system'",
    ),
    (
        "two_documents",
        SRC + "---\n" + SRC,
        "w.yaml:5: invalid YAML: expected a single document in the stream: "
        "but found another document",
    ),
    (
        "boolean_key",
        SRC + "true: 1\n",
        "w.yaml:5: invalid YAML: keys must be strings, found true",
    ),
    (
        "control_character",
        SRC + "storage: a\x07b\n",
        "w.yaml:5: invalid YAML: unacceptable character #x0007",
    ),
    (
        "ak_and_ak_file",
        SRC + "    ak: a\n    ak_file: f\n",
        "w.yaml:6: sources[0].ak_file: set either 'ak' or 'ak_file', not both",
    ),
    (
        "ak_with_whitespace",
        SRC + "    ak: 'AK with space'\n",
        "w.yaml:5: sources[0].ak: the access key from config contains whitespace "
        "or control characters",
    ),
    (
        "urgent_a_list",
        SRC + CH + RULE + "    notify: ops\n    urgent: [true]\n",
        "w.yaml:10: rules[0].urgent: expected true or false (got a list)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_message(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(text)
    assert str(info.value) == expected


def test_missing_credentials() -> None:
    with pytest.raises(ConfigError) as info:
        load(SRC, {})
    assert str(info.value) == (
        "w.yaml:2: sources[0].ak: no access key: set 'ak' or 'ak_file', "
        "or the environment variable CLOUD_SDK_AK"
    )


def test_missing_secret_key_only() -> None:
    with pytest.raises(ConfigError) as info:
        load(SRC + "    ak: AK1\n", {})
    assert str(info.value) == (
        "w.yaml:2: sources[0].sk: no secret key: set 'sk' or 'sk_file', "
        "or the environment variable CLOUD_SDK_SK"
    )


def test_unreadable_credential_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(SRC + "    sk_file: missing.txt\n")
    assert str(info.value) == (
        f"w.yaml:5: sources[0].sk_file: cannot read credential file {tmp_path / 'missing.txt'}: "
        "No such file or directory"
    )


def test_credential_file_relative_to_credentials_directory() -> None:
    with pytest.raises(ConfigError) as info:
        load(SRC + "    sk_file: sk\n", {**ENV, "CREDENTIALS_DIRECTORY": "/nonexistent/creds"})
    assert str(info.value) == (
        "w.yaml:5: sources[0].sk_file: cannot read credential file /nonexistent/creds/sk: "
        "No such file or directory"
    )


def test_empty_credential_file(tmp_path: Path) -> None:
    (tmp_path / "sk").write_text("\n")
    with pytest.raises(ConfigError) as info:
        load(SRC + "    sk_file: sk\n")
    assert str(info.value) == (
        f"w.yaml:5: sources[0].sk_file: the secret key from file {tmp_path / 'sk'} is empty"
    )


def test_missing_config_file_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(missing, ENV)
    assert (
        str(info.value)
        == f"{missing}: cannot read the configuration file: No such file or directory"
    )


def test_config_file_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path), ENV)
    assert str(info.value) == (
        f"{tmp_path}: the configuration must be a regular file (this is a directory)"
    )


def test_invalid_url_shows_only_the_scheme_and_never_the_secret() -> None:
    def reject_slack(url: str) -> str | None:
        return f"cannot parse {url}" if url.startswith("slack") else None

    text = SRC + "channels:\n  ops:\n    - json://x\n    - slack://T0/B0/${SLACK_TOKEN}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "w.yaml", {**ENV, "SLACK_TOKEN": "xoxb-123"}, reject_slack)
    assert (
        str(info.value)
        == "w.yaml:8: channels.ops[1]: invalid apprise URL (slack://…): cannot parse slack://…"
    )
    assert "xoxb-123" not in str(info.value)


SECRET = "s3cr3t-VALUE"


@pytest.mark.parametrize(
    "text",
    [
        SRC + "    ak: ${AK}\n    poll_interval: ${AK}\n",
        SRC + "    ak: ${AK}\n    sk: ${AK} x\n",
        SRC + "first_run: ${AK}\n",
        SRC + "channels:\n  ops: 'json://h/${AK}'\n" + RULE + "    notify: ${AK}\n",
        SRC + "channels:\n  ops: 'x${AK}'\n",
        SRC + "    region: ${AK}\n",
        SRC.replace("cn-north-4", "${AK}"),
        SRC + CH + RULE + "    notify: ops\n    urgent: ${AK}\n",
        SRC + CH + RULE + "    notify: ops\n    on: ${AK}\n",
        SRC + CH + RULE + "    notify: ops\n    events: ${AK}\n",
    ],
)
def test_secrets_never_appear_in_error_messages(text: str, tmp_path: Path) -> None:
    (tmp_path / "ak").write_text(SECRET)
    with pytest.raises(ConfigError) as info:
        load(text, {**ENV, "AK": SECRET})
    assert SECRET not in str(info.value)


def test_secret_from_file_never_in_error(tmp_path: Path) -> None:
    (tmp_path / "ak").write_text(f"{SECRET}\nsecond line\n")
    with pytest.raises(ConfigError) as info:
        load(SRC + "    ak_file: ak\n")
    assert SECRET not in str(info.value)
    assert "contains whitespace" in str(info.value)


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("2d", timedelta(days=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1m500ms", timedelta(minutes=1, milliseconds=500)),
        ("90", timedelta(seconds=90)),
        ("0600", timedelta(seconds=600)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "s", "5 m", "1.5h", "-5s", "5M", "1h1h", "30m1h", "999999999d999999999h"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected a duration like 30s, 5m, 1h|too long"):
        parse_duration(text)


# --- file permissions ------------------------------------------------------------------------


def test_config_warnings_for_a_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(SRC)
    os.chmod(path, 0o644)
    assert config_warnings(str(path)) == [
        f"{path} is readable by other users (mode 0644) and may hold credentials: "
        f"run chmod 600 {path}"
    ]
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    assert config_warnings(str(path)) == []
    assert config_warnings(str(tmp_path / "missing.yaml")) == []


# --- fuzzing ---------------------------------------------------------------------------------


def _attempt(text: str) -> None:
    """Either a Config or a ConfigError that points into the file; any other exception fails."""
    error: ConfigError | None = None
    try:
        load_config_text(text, "w.yaml", ENV)
    except ConfigError as err:
        error = err
    if error is not None:
        assert error.file == "w.yaml"
        assert error.line is not None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    _attempt(text)


FULL_LINES = FULL.splitlines(keepends=True)
YAMLISH = st.sampled_from(
    ["", "~", "[]", "{}", "yes", "0600", "1:30", "*a", "&a x", "!!int 1", "${X}", "$$", "'", "- "]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, len(FULL_LINES) - 1), max_size=60),
    st.lists(st.tuples(st.integers(0, len(FULL_LINES) - 1), YAMLISH), max_size=4),
)
def test_mangled_configs_raise_only_config_error(
    order: list[int], replacements: list[tuple[int, str]]
) -> None:
    lines = [FULL_LINES[index] for index in order]
    for index, text in replacements:
        if index < len(lines):
            key, _, _ = lines[index].partition(":")
            lines[index] = f"{key}: {text}\n"
    _attempt("".join(lines))


def test_deep_nesting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load("x: " + "[" * 5000 + "]" * 5000 + "\n")


def test_recursive_alias_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load("sources: &a [*a]\n")


def test_billion_laughs_is_cheap() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(ConfigError, match="expands to 1234567900 values through YAML aliases"):
        load("\n".join(lines) + "\n")


# --- http: ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("'[::1]:9464'", ("::1", 9464)),
        ("127.0.0.2:0", ("127.0.0.2", 0)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_http_listen_fills_config(listen: str, expected: tuple[str, int]) -> None:
    config = load(SRC + f"http:\n  listen: {listen}\n")
    assert config.http_listen == listen.strip("'")
    assert parse_listen(listen.strip("'")) == expected
    assert config.lines["http.listen"] == 6


def test_http_listen_defaults_to_off() -> None:
    assert load(SRC).http_listen is None


def test_http_listen_from_environment() -> None:
    config = load(SRC + "http:\n  listen: ${LISTEN:-127.0.0.1:9464}\n")
    assert config.http_listen == "127.0.0.1:9464"


BAD_HTTP: list[tuple[str, str, str]] = [
    (
        "port_out_of_range",
        "http:\n  listen: 127.0.0.1:70000\n",
        "w.yaml:6: http.listen: the port must be a number from 0 to 65535 (got '70000')",
    ),
    (
        "port_not_a_number",
        "http:\n  listen: 'localhost:http'\n",
        "w.yaml:6: http.listen: the port must be a number from 0 to 65535 (got 'http')",
    ),
    (
        "empty_host",
        "http:\n  listen: ':9464'\n",
        "w.yaml:6: http.listen: the host is empty: write 127.0.0.1:PORT for this machine only, "
        "or 0.0.0.0:PORT for every interface",
    ),
    (
        "no_port",
        "http:\n  listen: 127.0.0.1\n",
        "w.yaml:6: http.listen: expected HOST:PORT like 127.0.0.1:9464 or [::1]:9464 "
        "(got '127.0.0.1')",
    ),
    (
        "ipv6_without_brackets",
        "http:\n  listen: '::1:9464'\n",
        "w.yaml:6: http.listen: an IPv6 address needs brackets, as in [::1]:9464 (got '::1:9464')",
    ),
    (
        "not_ipv6_in_brackets",
        "http:\n  listen: '[localhost]:9464'\n",
        "w.yaml:6: http.listen: expected an IPv6 address inside [] (got 'localhost')",
    ),
    (
        "listen_a_number",
        "http:\n  listen: [9464]\n",
        "w.yaml:6: http.listen: expected HOST:PORT (got a list)",
    ),
    (
        "unknown_key",
        "http:\n  listen_on: 127.0.0.1:9464\n",
        "w.yaml:6: http.listen_on: unknown key 'listen_on' (did you mean 'listen'?); "
        "expected one of: listen, auth",
    ),
    (
        "not_a_mapping",
        "http: 127.0.0.1:9464\n",
        "w.yaml:5: http: expected a mapping of HTTP settings (got a string)",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in BAD_HTTP], ids=[c[0] for c in BAD_HTTP]
)
def test_bad_http_message(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(SRC + text)
    assert str(info.value) == expected
