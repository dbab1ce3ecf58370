"""Bad configs through the CLI: each is refused with exit 78 and its exact `FILE:LINE: key:
problem` line, never a traceback; and a password with URL characters still works.

tests/test_config.py checks the loader's messages one by one; here every case goes through
`check` in a real process (forked from a pre-imported launcher for speed; a few through
`python -m watcher` itself), so argument parsing, exit codes and stderr are covered too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.reliability._support import ENV, Launcher, run_cli, run_forked
from watcher.config import load_config_text
from watcher.model import BodyFormat, NotifyType
from watcher.notify import Notifier, check_url

BASE = """\
sources:
  - name: prod
    region: cn-north-4
    project_id: p1
    ak: ${TEST_AK}
    sk: ${TEST_SK}
channels:
  ops: json://127.0.0.1:9/hook
rules:
  - name: r
    on: [FAILED]
    notify: [ops]
"""
STATES = (
    "ANNOTATING, AUDITING, AUDIT_FAILED, CREATING, FAILED, PROCESSING, RESULT_REVIEW, SPLITTING, "
    "SPLIT_FAILED, SUCCEED, SYSTEM_AUDITING, UPLOADING, USER_RESULT_REVIEW, USER_REVIEW_REJECT, "
    "WAITING, WAITING_SPLIT"
)
REGIONS = (
    "known regions: cn-east-3, cn-north-4 "
    "(for another region set endpoint: https://metastudio.REGION.myhuaweicloud.com)"
)
DURATION = "expected a duration like 30s, 5m, 1h"


def edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def extra(source: str = "", rule: str = "", top: str = "") -> str:
    text = BASE
    if source:
        text = text.replace("    sk: ${TEST_SK}\n", "    sk: ${TEST_SK}\n" + source, 1)
    if rule:
        text = text.replace("    notify: [ops]\n", "    notify: [ops]\n" + rule, 1)
    return text + top


# (id, config text, the exact line after "FILE:")
CASES: list[Any] = [
    (
        "yaml_unclosed_quote",
        edit("project_id: p1", "project_id: 'p1"),
        "13: invalid YAML: while scanning a quoted scalar: found unexpected end of stream",
    ),
    (
        "yaml_bad_indent",
        edit("    region: cn-north-4", "   region: cn-north-4"),
        "3: invalid YAML: while parsing a block collection: expected <block end>, "
        "but found '<block mapping start>'",
    ),
    (
        "yaml_tab",
        edit("    region", "\tregion"),
        "3: invalid YAML: tab characters are not allowed for indentation in YAML; use spaces",
    ),
    (
        "yaml_unclosed_flow",
        edit("on: [FAILED]", "on: [FAILED"),
        "12: invalid YAML: while parsing a flow sequence: expected ',' or ']', but got ':'",
    ),
    (
        "sources_a_string",
        "sources: prod\n",
        "1: sources: expected a list of sources (got a string)",
    ),
    (
        "source_a_list",
        edit("  - name: prod\n", "  - [name, prod]\n  - name: prod\n"),
        "2: sources[0]: expected a mapping of source settings (got a list)",
    ),
    (
        "duration_a_mapping",
        extra(source="    poll_interval: {every: 5m}\n"),
        f"7: sources[0].poll_interval: {DURATION} (got a mapping)",
    ),
    (
        "rules_a_mapping",
        BASE.split("rules:")[0] + "rules:\n  name: r\n",
        "9: rules: expected a list of rules (got a mapping)",
    ),
    (
        "unknown_top_key",
        BASE + "chanels: {}\n",
        "13: chanels: unknown key 'chanels' (did you mean 'channels'?); expected one of: "
        "sources, channels, rules, storage, first_run, delivery, http, retention",
    ),
    (
        "unknown_source_key",
        extra(source="    regoin: x\n"),
        "7: sources[0].regoin: unknown key 'regoin' (did you mean 'region'?); expected one of: ",
    ),
    (
        "unknown_rule_key",
        extra(rule="    notfy: [ops]\n"),
        "13: rules[0].notfy: unknown key 'notfy' (did you mean 'notify'?); expected one of: ",
    ),
    (
        "unknown_delivery_key",
        BASE + "delivery:\n  retry_intial: 5s\n",
        "14: delivery.retry_intial: unknown key 'retry_intial' (did you mean 'retry_initial'?); "
        "expected one of: retry_initial, retry_max, give_up_after, send_timeout",
    ),
    (
        "duration_in_words",
        extra(source="    poll_interval: ten minutes\n"),
        f"7: sources[0].poll_interval: {DURATION} (got 'ten minutes')",
    ),
    (
        "duration_negative",
        extra(source="    request_timeout: -5s\n"),
        f"7: sources[0].request_timeout: {DURATION} (got '-5s')",
    ),
    (
        "duration_rule_for",
        extra(rule="    for: 1 hour\n"),
        f"13: rules[0].for: {DURATION} (got '1 hour')",
    ),
    (
        "duration_zero_give_up",
        BASE + "delivery:\n  give_up_after: 0s\n",
        "14: delivery.give_up_after: must be longer than 0s",
    ),
    (
        "state_typo_in_on",
        edit("on: [FAILED]", "on: [FAILD]"),
        "11: rules[0].on[0]: unknown state 'FAILD' (did you mean 'FAILED'?)",
    ),
    (
        "state_unknown_in_from",
        edit("on: [FAILED]", "on: [FAILED]\n    from: [RUNNING]"),
        f"12: rules[0].from[0]: unknown state 'RUNNING'; known states: {STATES}",
    ),
    (
        "channel_typo",
        edit("notify: [ops]", "notify: [opps]"),
        "12: rules[0].notify[0]: unknown channel 'opps' (did you mean 'ops'?); "
        "defined channels: ops",
    ),
    (
        "channel_unknown_number",
        edit("notify: [ops]", "notify: [1]"),
        "12: rules[0].notify[0]: unknown channel '1'; defined channels: ops",
    ),
    (
        "channel_empty_list",
        edit("ops: json://127.0.0.1:9/hook", "ops: []"),
        "8: channels.ops: expected an apprise URL or a list of them (got an empty list)",
    ),
    (
        "apprise_unknown_scheme",
        edit("json://127.0.0.1:9/hook", "nosuchservice://abc"),
        "8: channels.ops: invalid apprise URL (nosuchservice://…): nosuchservice:// is not a "
        "service apprise knows, or the URL is malformed",
    ),
    pytest.param(
        "apprise_mailto_without_address",
        edit("json://127.0.0.1:9/hook", "'mailto://'"),
        "8: channels.ops: invalid apprise URL (mailto://…): invalid mailto:// URL: "
        "Invalid ~From~ email specified:",
    ),
    (
        "env_missing_in_url",
        edit("json://127.0.0.1:9/hook", "json://127.0.0.1:9/${NO_SUCH_VAR}"),
        "8: channels.ops: environment variable NO_SUCH_VAR is not set",
    ),
    (
        "env_missing_for_ak",
        edit("${TEST_AK}", "${NO_SUCH_AK}"),
        "5: sources[0].ak: environment variable NO_SUCH_AK is not set",
    ),
    (
        "region_close",
        edit("cn-north-4", "cn-north-9"),
        "3: sources[0].region: unknown region 'cn-north-9' (did you mean 'cn-north-4'?); "
        + REGIONS,
    ),
    (
        "region_far",
        edit("cn-north-4", "eu-west-0"),
        f"3: sources[0].region: unknown region 'eu-west-0'; {REGIONS}",
    ),
    (
        "endpoint_not_http",
        edit("    region: cn-north-4\n", "    endpoint: ftp://example.com\n"),
        "3: sources[0].endpoint: expected an endpoint like https://metastudio.cn-north-4."
        "myhuaweicloud.com (http(s)://host[:port], no path)",
    ),
    (
        "source_name_twice",
        edit(
            "channels:",
            "  - name: prod\n    region: cn-east-3\n    project_id: p2\n    ak: a\n"
            "    sk: b\nchannels:",
        ),
        "7: sources[1].name: duplicate source name 'prod' (first at line 2)",
    ),
    (
        "template_syntax_title",
        extra(rule="    title: '{{ job.job_id '\n"),
        "13: rules[0].title: template syntax error at template line 1: unexpected end of "
        "template, expected 'end of print statement'.",
    ),
    (
        "template_syntax_body",
        extra(rule="    body: '{% if job %}no end'\n"),
        "13: rules[0].body: template syntax error at template line 1: Unexpected end of template. "
        "Jinja was looking for the following tags: 'elif' or 'else' or 'endif'. The innermost "
        "block that needs to be closed is 'if'.",
    ),
    (
        "template_undefined_field",
        extra(rule="    title: '{{ job.no_such_field }}'\n"),
        "13: rules[0].title: template fails on a sample job: UndefinedError: 'dict object' has "
        "no attribute 'no_such_field'",
    ),
    pytest.param(
        "template_type_error",
        extra(rule="    title: \"{{ 'n=' + job.reject_times }}\"\n"),
        "13: rules[0].title: template fails on a sample job: TypeError: can only concatenate str "
        '(not "int") to str',
    ),
    pytest.param(
        "template_include",
        extra(rule="    body: \"{% include '/etc/passwd' %}\"\n"),
        "13: rules[0].body: template fails on a sample job: ",
    ),
    (
        "credential_file_missing",
        edit("    ak: ${TEST_AK}\n", "    ak_file: /nonexistent/ak.txt\n"),
        "5: sources[0].ak_file: cannot read credential file /nonexistent/ak.txt: "
        "No such file or directory",
    ),
    (
        "credential_file_is_a_directory",
        edit("    ak: ${TEST_AK}\n", "    ak_file: /\n"),
        "5: sources[0].ak_file: cannot read credential file /: Is a directory",
    ),
    (
        "http_listen_without_port",
        BASE + "http:\n  listen: localhost\n",
        "14: http.listen: expected HOST:PORT like 127.0.0.1:9464 or [::1]:9464 (got 'localhost')",
    ),
    (
        "first_run_unknown",
        BASE + "first_run: everything\n",
        "13: first_run: unknown mode 'everything'; expected one of: baseline, notify, summary",
    ),
]
# These go through `python -m watcher` itself (the entry point), the rest through the launcher.
VIA_ENTRY_POINT = {"yaml_tab", "unknown_top_key", "credential_file_missing"}


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    running = Launcher()
    try:
        yield running
    finally:
        running.close()


def case_id(case: Any) -> str:
    return str(case.values[0] if hasattr(case, "values") else case[0])


@pytest.mark.parametrize(("name", "text", "tail"), CASES, ids=[case_id(c) for c in CASES])
def test_bad_config_is_refused_with_its_line(
    name: str, text: str, tail: str, launcher: Launcher, tmp_path: Path
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    path.chmod(0o600)
    if name in VIA_ENTRY_POINT:
        result = run_cli("check", "-c", str(path))
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    else:
        code, stdout, stderr = run_forked(launcher, ["check", "-c", str(path)], tmp_path, name)
    assert "Traceback" not in stdout + stderr
    expected = f"{path}:{tail}"
    lines = [line.removeprefix("metastudio-watcher: ") for line in stderr.splitlines()]
    if tail.endswith(": "):  # a long list of choices follows
        assert any(line.startswith(expected) for line in lines), stderr
    else:
        assert expected in lines, stderr
    assert code == 78


def test_at_least_thirty_bad_configs() -> None:
    assert len(CASES) >= 30


# --- a password with URL characters, substituted from the environment -----------------------

PASSWORD = "p@ss/w#rd%41"


class _Login:
    """An aiosmtpd authenticator that records what it was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        if isinstance(data, LoginPassword):
            login, password = data.login.decode(), data.password.decode()
            self.seen.append((login, password))
            return AuthResult(success=password == PASSWORD)
        return AuthResult(success=False)


class _Inbox:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 OK"


@pytest.fixture
def smtp_with_login() -> Iterator[tuple[int, _Login, _Inbox]]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    login, inbox = _Login(), _Inbox()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, authenticator=login, auth_require_tls=False
    )
    controller.start()
    try:
        yield port, login, inbox
    finally:
        controller.stop()


async def send_with(value: str, port: int) -> bool:
    text = BASE.replace(
        "json://127.0.0.1:9/hook",
        f"'mailto://watcher:${{SMTP_PASS}}@127.0.0.1:{port}?mode=insecure"
        "&from=watcher%40example.com&to=ops%40example.com'",
    )
    config = load_config_text(text, "mail.yaml", {**ENV, "SMTP_PASS": value}, check_url)
    notifier = Notifier(config.channels, send_timeout=2.0)
    try:
        result = await notifier.send("ops", "t", "b", NotifyType.INFO, BodyFormat.TEXT)
    finally:
        notifier.close()
    await asyncio.sleep(0)
    return result.ok


async def test_password_with_url_characters_from_env_reaches_the_smtp_server_intact(
    smtp_with_login: tuple[int, _Login, _Inbox],
) -> None:
    port, login, inbox = smtp_with_login
    # The value is taken literally: the loader quotes it for the URL, apprise unquotes it.
    assert await send_with(PASSWORD, port)
    assert login.seen == [("watcher", PASSWORD)]
    assert inbox.count == 1
