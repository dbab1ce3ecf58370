"""The CLI as scripts use it: --json on the printing commands, `once`'s exit code when an
alert could not be delivered, state names checked with a suggestion, URLs as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.receivers import json_url
from tests.test_cli import HOOK_TOKEN, Servers, cli, restore_logging, servers
from watcher.cli import EX_CONFIG, EX_FAILURE, EX_OK, EX_TEMPFAIL, EX_USAGE, build_parser
from watcher.notify import mask_url

__all__ = ["restore_logging", "servers"]  # fixtures, used by name


@pytest.mark.parametrize(
    "argv",
    [
        ["check"],
        ["once"],
        ["route", "--state", "FAILED"],
        ["outbox"],
        ["outbox", "retry", "--all"],
        ["status"],
        ["jobs"],
        ["history", "JOB"],
        ["health"],
        ["test-notify"],
        ["silence", "list"],
        ["silence", "add", "--match", "state=FAILED"],
        ["silence", "expire", "1"],
    ],
)
def test_every_printing_command_takes_json(argv: list[str]) -> None:
    assert build_parser().parse_args([*argv, "--json"]).json is True


def test_check_json_ok_lists_what_was_understood_without_secrets(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "check", "-c", servers.config(), "--json")
    assert code == EX_OK
    result = json.loads(out)
    assert result["ok"] is True
    assert [s["name"] for s in result["sources"]] == ["prod"]
    assert result["sources"][0]["ak_from"] == "config ${CLI_TEST_AK}"
    assert result["rules"] == ["failures"]
    (url,) = result["channels"]["hook"]
    assert HOOK_TOKEN not in out
    assert "method=" not in url and "overflow=" not in url and "?" not in url


def test_check_json_errors_carry_file_line_and_key(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config = servers.config(interval="999999999d")
    code, out, err = cli(capsys, "check", "-c", config, "--json")
    assert code == EX_CONFIG
    assert err == ""
    result = json.loads(out)
    assert result["ok"] is False
    (error,) = result["errors"]
    assert (error["file"], error["line"], error["key"]) == (config, 7, "sources[0].poll_interval")
    assert error["problem"] == "must be from 5s to 1d (got 999999999d)"


def test_once_exits_75_and_says_so_when_an_alert_is_not_delivered(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    job = servers.add_job(state="PROCESSING")
    config = servers.config()
    assert cli(capsys, "once", "-c", config)[0] == EX_OK  # the baseline
    servers.set_state(job["job_id"], "FAILED")
    servers.hook.fail_next(1, status=500)
    code, out, err = cli(capsys, "once", "-c", config, "--json")
    assert code == EX_TEMPFAIL
    result = json.loads(out)
    assert (result["sent"], result["failed"], result["dead"]) == (0, 1, 0)
    assert result["exit_code"] == EX_TEMPFAIL
    assert result["sources"] == [{"source": "prod", "ok": True, "error": None}]
    assert "1 alert(s) could not be delivered (1 will be retried, 0 dead-lettered)" in err


def test_health_and_test_notify_as_json(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config = servers.config()
    code, out, _ = cli(capsys, "health", "-c", config, "--json")
    assert code == EX_FAILURE
    assert json.loads(out) == {
        "healthy": False,
        "message": "unhealthy: stale source(s): prod (never polled successfully)",
        "via": "store",
    }
    assert cli(capsys, "once", "-c", config)[0] == EX_OK
    code, out, _ = cli(capsys, "health", "-c", config, "--json")
    assert code == EX_OK
    assert json.loads(out)["healthy"] is True
    code, out, _ = cli(capsys, "test-notify", "-c", config, "--json")
    assert code == EX_OK
    (sent,) = json.loads(out)
    assert (sent["channel"], sent["ok"], sent["error"]) == ("hook", True, None)
    assert HOOK_TOKEN not in out


def test_silence_add_and_expire_as_json(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    config = servers.config()
    code, out, _ = cli(capsys, "silence", "add", "-c", config, "--match", "state=AUDIT_*", "--json")
    assert code == EX_OK
    added = json.loads(out)
    assert added["matchers"] == ["state=AUDIT_*"]
    code, out, _ = cli(capsys, "silence", "expire", str(added["id"]), "-c", config, "--json")
    assert (code, json.loads(out)) == (EX_OK, {"id": added["id"], "expired": True})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["jobs", "--state", "AUDIT_FAIL"],
            "--state: unknown state 'AUDIT_FAIL' (did you mean 'AUDIT_FAILED'?)",
        ),
        (
            ["jobs", "--state", "succeeded"],
            "--state: unknown state 'succeeded' (did you mean 'SUCCEED'?)",
        ),
        (["jobs", "--state", "AUDIT*"], "--state: unknown state 'AUDIT*'"),
        (
            ["route", "--state", "FAILD"],
            "--state: unknown state 'FAILD' (did you mean 'FAILED'?)",
        ),
        (
            ["route", "--state", "FAILED", "--from", "auditing"],
            "--from: unknown state 'auditing' (did you mean 'AUDITING'?)",
        ),
        (
            ["silence", "add", "--match", "state=AUDIT_FAIL"],
            "--match state: unknown state 'AUDIT_FAIL' (did you mean 'AUDIT_FAILED'?)",
        ),
        (["silence", "add", "--match", "state=NOPE*"], "--match state: 'NOPE*' matches no"),
    ],
)
def test_state_names_are_checked_with_a_suggestion(
    argv: list[str], message: str, servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, *argv, "-c", servers.config())
    assert code == EX_USAGE
    assert err.startswith(f"metastudio-watcher: {message}"), err
    assert out == ""


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # A webhook path may be its secret: masked, but nothing added.
        ("json://127.0.0.1:8080/hook", "json://127.0.0.1:8080/****"),
        ("json://127.0.0.1:8080/hook?method=PUT", "json://127.0.0.1:8080/****?method=PUT"),
        ("mailto://smtp.example.com?to=a@example.com&mode=ssl", None),
    ],
)
def test_masked_urls_show_only_the_arguments_the_user_wrote(url: str, shown: str | None) -> None:
    masked = mask_url(url)
    for added in ("overflow=", "retry=", "format=", "rto=", "cto=", "verify="):
        assert added not in masked, masked
    if shown is not None:
        assert masked == shown
    else:
        assert "?to=" in masked and "&mode=" in masked


def test_health_imports_neither_apprise_nor_aiohttp(servers: Servers) -> None:
    """The HEALTHCHECK runs every minute, often at --cpus 0.1: apprise alone costs ~0.4 s of
    CPU to import. benchmarks/bench_health.py measures the whole command."""
    code = (
        "import sys\nfrom watcher.cli import main\n"
        f"rc = main(['--log-level', 'error', 'health', '-c', {servers.config()!r}])\n"
        "print(rc, sorted(m for m in ('apprise', 'aiohttp', 'jinja2.sandbox') "
        "if m in sys.modules))\n"
    )
    env = {**os.environ, "CLI_TEST_AK": "A" * 20, "CLI_TEST_SK": "S" * 30}
    result = subprocess.run(  # noqa: S603 - this interpreter, fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.split("\n")[-2] in ("1 ['jinja2.sandbox']", "1 []"), result.stdout


def test_outbox_and_history_show_holds_with_their_end(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)), (now + timedelta(hours=2))
    window = f"{start:%H:%M}-{end:%H:%M}"
    config = servers.config(
        extra_channels=(
            f'  night:\n    urls: ["{json_url(servers.hook.base_url, "/night")}"]\n'
            f'    quiet_hours: "{window}"\n'
        ),
        extra_rules="  - name: at-night\n    on: [FAILED]\n    notify: [night]\n",
    )
    job = servers.add_job(state="PROCESSING")
    assert cli(capsys, "once", "-c", config)[0] == EX_OK
    servers.set_state(job["job_id"], "FAILED")
    assert cli(capsys, "once", "-c", config)[0] == EX_OK  # held is not undelivered
    ends = end.replace(second=0, microsecond=0)

    code, out, _ = cli(capsys, "outbox", "-c", config)
    assert code == EX_OK
    (row,) = [line for line in out.splitlines() if " night " in line]
    assert f"quiet hours on channel night until {ends:%Y-%m-%d %H:%M}Z" in row
    assert "  in 1h" in row or "  in 2h" in row  # NEXT TRY: when the window ends, not "now"
    code, out, _ = cli(capsys, "outbox", "-c", config, "--json")
    (item,) = json.loads(out)
    assert item["held"] == {"until": ends.isoformat(), "reason": "quiet hours on channel night"}

    code, out, _ = cli(capsys, "history", job["job_id"], "-c", config)
    assert (
        "at-night → night: pending, 0 attempts, held by quiet hours on channel night until "
        f"{ends:%Y-%m-%d %H:%M}Z" in out
    )
    code, out, _ = cli(capsys, "history", job["job_id"], "-c", config, "--json")
    alerts = [a for entry in json.loads(out) for a in entry["alerts"]]
    assert {a["channel"]: a["held"] for a in alerts}["night"]["reason"] == (
        "quiet hours on channel night"
    )
    assert {a["channel"]: a["held"] for a in alerts}["hook"] is None  # sent: no hold


def test_route_as_json(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "route", "-c", servers.config(), "--state", "AUDIT_FAILED", "--json")
    assert code == EX_OK
    result = json.loads(out)
    assert (result["event"], result["state"]) == ("transition", "AUDIT_FAILED")
    (rule,) = result["rules"]
    assert (rule["rule"], rule["matched"], rule["channels"]) == ("failures", True, ["hook"])
    assert rule["title"]
