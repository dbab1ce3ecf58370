"""watcher.config's run-time limits: ranges, control characters, stuck-rule combinations,
storage that cannot be SQLite, and the config file itself (regular, at most 1 MiB).

Each bad value here is one the issue saw break a running daemon after `check` said ok.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from watcher.config import (
    MAX_CONFIG_BYTES,
    _filesystem_type,
    load_config,
    load_config_text,
    storage_problem,
)
from watcher.errors import ConfigError

ENV = {"CLOUD_SDK_AK": "AKFROMENV", "CLOUD_SDK_SK": "SKFROMENV", "NL": "p\n1"}
BASE = """\
sources:
  - name: prod
    region: cn-north-4
    project_id: p1
channels:
  ops: json://localhost/hook
rules:
  - name: r
    on: [AUDITING]
    notify: [ops]
"""


def with_source(line: str) -> str:
    return BASE.replace("    project_id: p1\n", "    project_id: p1\n" + line, 1)


def with_rule(line: str) -> str:
    return BASE + line


def with_top(line: str) -> str:
    return BASE + line


def error_of(text: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, str(tmp_path / "c.yaml"), ENV)
    return str(info.value).removeprefix(str(tmp_path / "c.yaml") + ":")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            with_source("    poll_interval: 999999999d\n"),
            "5: sources[0].poll_interval: must be from 5s to 1d (got 999999999d)",
        ),
        (
            with_rule("    group_wait: 999999999999\n"),
            "11: rules[0].group_wait: must be from 1ms to 1h (got 999999999999s)",
        ),
        (
            with_rule("    group_interval: 2d\n"),
            "11: rules[0].group_interval: must be from 1ms to 1d (got 2d)",
        ),
        (
            with_top("delivery:\n  retry_initial: 999999999d\n"),
            "12: delivery.retry_initial: must be from 1ms to 1h (got 999999999d)",
        ),
        (
            with_top("delivery:\n  retry_max: 500d\n"),
            "12: delivery.retry_max: must be from 1ms to 1d (got 500d)",
        ),
        (
            with_top("delivery:\n  give_up_after: 999999999999\n"),
            "12: delivery.give_up_after: must be from 1ms to 90d (got 999999999999s)",
        ),
        (
            with_top("delivery:\n  send_timeout: 1d\n"),
            "12: delivery.send_timeout: must be from 100ms to 10m (got 1d)",
        ),
        (
            with_source("    request_timeout: 1h\n"),
            "5: sources[0].request_timeout: must be from 100ms to 10m (got 1h)",
        ),
        (
            with_source("    full_scan_every: 30d\n"),
            "5: sources[0].full_scan_every: must be from 5s to 7d (got 30d)",
        ),
        (
            with_source("    page_concurrency: 100000000\n"),
            "5: sources[0].page_concurrency: must be from 1 to 64 (got 100000000)",
        ),
        (
            with_source("    max_requests_per_second: 0.0000001\n"),
            "5: sources[0].max_requests_per_second: must be from 0.1 to 1000 (got 1e-07)",
        ),
        (
            with_source("    max_requests_per_second: 1e9\n"),
            "5: sources[0].max_requests_per_second: must be from 0.1 to 1000 (got 1e+09)",
        ),
        (
            BASE.replace("  ops: json://localhost/hook\n", "  ops:\n    urls: json://h/x\n") + "",
            None,
        ),
    ],
)
def test_values_outside_their_documented_range_are_refused(
    text: str, expected: str | None, tmp_path: Path
) -> None:
    if expected is None:  # the long channel form, in range: accepted
        load_config_text(text, str(tmp_path / "c.yaml"), ENV)
        return
    assert error_of(text, tmp_path) == expected


def test_channel_rate_limit_has_a_range(tmp_path: Path) -> None:
    text = BASE.replace(
        "  ops: json://localhost/hook\n",
        "  ops:\n    urls: json://localhost/hook\n    max_per_minute: 1000000\n",
    )
    assert error_of(text, tmp_path) == (
        "8: channels.ops.max_per_minute: must be from 1 to 10000 (got 1000000)"
    )


def test_range_edges_are_accepted(tmp_path: Path) -> None:
    text = with_source(
        "    poll_interval: 1d\n    request_timeout: 10m\n    page_concurrency: 64\n"
        "    max_requests_per_second: 0.1\n    full_scan_every: 7d\n"
    ) + ("    for: 90d\n    repeat: 1m\n    group_wait: 1h\n")
    config = load_config_text(text, str(tmp_path / "c.yaml"), ENV)
    assert config.sources[0].page_concurrency == 64
    assert config.rules[0].for_ is not None and config.rules[0].for_.days == 90


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            BASE.replace("project_id: p1", 'project_id: "p1\\n"'),
            "4: sources[0].project_id: contains the control character U+000A; remove it",
        ),
        (
            BASE.replace("project_id: p1", "project_id: ${NL}"),
            "4: sources[0].project_id: contains the control character U+000A (from a ${VAR}); "
            "remove it",
        ),
        (
            BASE.replace("json://localhost/hook", '"json://localhost/ho\\tok"'),
            "6: channels.ops: contains the control character U+0009; remove it",
        ),
        (
            BASE.replace("name: prod", 'name: "prod"\n    app_user_id: "a\\u0000b"'),
            "3: sources[0].app_user_id: contains the control character U+0000; remove it",
        ),
        (
            BASE.replace("  - name: r\n", '  - name: "r\\u2028x"\n'),
            "8: rules[0].name: contains the control character U+2028; remove it",
        ),
        (
            with_top('storage: "state\\u001b.db"\n'),
            "11: storage: contains the control character U+001B; remove it",
        ),
    ],
)
def test_control_characters_in_identifiers_and_urls_are_refused(
    text: str, expected: str, tmp_path: Path
) -> None:
    assert error_of(text, tmp_path) == expected


def test_templates_may_span_lines(tmp_path: Path) -> None:
    text = with_rule('    title: "a"\n    body: "line 1\\nline 2"\n')
    config = load_config_text(text, str(tmp_path / "c.yaml"), ENV)
    assert config.rules[0].body == "line 1\nline 2"


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            "  - name: s\n    for: 2h\n    notify: [ops]\n",
            "12: rules[1].for: for: needs on: naming the states a job may get stuck in "
            "(not '*'), e.g. on: [AUDITING]",
        ),
        (
            "  - name: s\n    on: '*'\n    for: 2h\n    notify: [ops]\n",
            "13: rules[1].for: for: needs on: naming the states a job may get stuck in "
            "(not '*'), e.g. on: [AUDITING]",
        ),
        (
            "  - name: s\n    on: [AUDITING]\n    repeat: 2h\n    notify: [ops]\n",
            "13: rules[1].repeat: repeat: needs for: (it repeats a stuck alert)",
        ),
        (
            "  - name: s\n    on: [SUCCEED, AUDITING]\n    for: 2h\n    notify: [ops]\n",
            "12: rules[1].on: a job in SUCCEED is finished: it cannot be stuck (for:)",
        ),
        (
            "  - name: s\n    on: [AUDITING]\n    events: [transition]\n    for: 2h\n"
            "    notify: [ops]\n",
            "13: rules[1].events: for: only raises stuck events: add stuck to events: or drop for:",
        ),
        (
            "  - name: s\n    on: [AUDITING]\n    events: [stuck]\n    notify: [ops]\n",
            "13: rules[1].events: the stuck event needs for: (how long a job may stay in the "
            "on: states)",
        ),
        (
            "  - name: s\n    on: [AUDITING]\n    for: 10s\n    notify: [ops]\n",
            "13: rules[1].for: must be from 1m to 90d (got 10s)",
        ),
    ],
)
def test_for_and_repeat_only_in_valid_combinations(
    rule: str, expected: str, tmp_path: Path
) -> None:
    assert error_of(BASE + rule, tmp_path) == expected


def test_a_valid_stuck_rule_is_accepted(tmp_path: Path) -> None:
    rule = "  - name: s\n    on: [AUDITING]\n    events: [stuck]\n    for: 2h\n    repeat: 1d\n"
    config = load_config_text(BASE + rule + "    notify: [ops]\n", str(tmp_path / "c.yaml"), ENV)
    assert config.rules[1].repeat is not None


def test_storage_that_cannot_be_a_sqlite_file(tmp_path: Path) -> None:
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    cases = {
        "/dev/null": "/dev/null is a device; storage must be a regular file path",
        "/proc/self/state.db": "/proc/self/state.db is under /proc, which cannot hold a SQLite "
        "database; use a file path",
        str(tmp_path): f"{tmp_path} is a directory; storage must be a regular file path",
        str(a_file / "state.db"): f"{a_file} is a file, so {a_file}/state.db cannot be created "
        "under it",
        str(a_file / "deeper" / "state.db"): f"{a_file} is a file, so {a_file}/deeper/state.db "
        "cannot be created under it",
    }
    for storage, problem in cases.items():
        assert storage_problem(storage) == problem, storage
        text = BASE + f"storage: {storage}\n"
        assert error_of(text, tmp_path) == f"11: storage: {problem}"
    assert storage_problem(str(tmp_path / "new" / "dir" / "state.db")) is None
    assert storage_problem("/dev/shm/state.db") is None  # a tmpfs: SQLite works there
    if _filesystem_type("/dev") == "devtmpfs":
        assert storage_problem("/dev/state.db") == (
            "/dev is on a devtmpfs file system, which cannot hold a SQLite database; use a "
            "file path"
        )
    assert storage_problem(":memory:") is None
    if os.geteuid() != 0:  # root may write anywhere: the access check only binds others
        locked.chmod(0o500)
        assert storage_problem(str(locked / "state.db")) == (
            f"the directory {locked} is not writable by this user; fix it or move storage"
        )


def test_a_fifo_as_config_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        load_config(str(fifo), ENV)
    assert str(info.value) == f"{fifo}: the configuration must be a regular file (this is a FIFO)"


def test_a_device_as_config_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/dev/zero", ENV)
    assert str(info.value) == (
        "/dev/zero: the configuration must be a regular file (this is a device)"
    )


def test_a_config_over_one_mebibyte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(BASE + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), ENV)
    size = path.stat().st_size
    assert str(info.value) == (
        f"{path}: the configuration file is {size} bytes; at most 1048576 (1 MiB) is accepted"
    )
    exact = tmp_path / "edge.yaml"
    exact.write_text(BASE + "#" * (MAX_CONFIG_BYTES - len(BASE)))
    assert exact.stat().st_size == MAX_CONFIG_BYTES
    assert load_config(str(exact), ENV).sources[0].name == "prod"


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ENV, **(env_extra or {})}
    return subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
        [sys.executable, "-m", "watcher", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_check_on_a_fifo_and_a_50_mb_config_through_the_cli(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    result = _cli("check", "-c", str(fifo))
    assert result.returncode == 78
    assert result.stderr.strip().endswith("must be a regular file (this is a FIFO)")
    big = tmp_path / "big.yaml"
    with big.open("w") as out:
        out.write(BASE)
        for _ in range(50):
            out.write("#" * (1024 * 1024 - 1) + "\n")
    started = time.monotonic()
    result = _cli("check", "-c", str(big))
    elapsed = time.monotonic() - started
    assert result.returncode == 78
    assert "at most 1048576 (1 MiB) is accepted" in result.stderr
    assert "Traceback" not in result.stderr
    # Refused from its size alone; the launch of Python dominates. (The issue saw 444 s.)
    assert elapsed < 30


@pytest.mark.parametrize("storage", ["/dev/null", "/proc/state.db", "DIR", "FILE/state.db"])
def test_run_refuses_bad_storage_with_78(storage: str, tmp_path: Path) -> None:
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "DIR").mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(BASE + f"storage: {storage}\n")
    for command in ("check", "run"):
        result = _cli(command, "-c", str(config))
        assert result.returncode == 78, (command, result.stderr)
        assert f"{config}:11: storage: " in result.stderr
        assert "Traceback" not in result.stderr


def test_an_unknown_job_type_filter_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    text = with_source("    filters:\n      job_type: BASICS\n")
    assert error_of(text, tmp_path) == (
        "6: sources[0].filters.job_type: unknown job type 'BASICS' (did you mean 'BASIC'?); "
        "expected one of: BASIC, MIDDLE, ADVANCE, THIRD_PARTY, THIRD_PARTY_LJZN, FLEXUS"
    )
    config = load_config_text(
        with_source("    filters:\n      job_type: FLEXUS\n"), str(tmp_path / "c.yaml"), ENV
    )
    assert config.sources[0].filters == (("job_type", "FLEXUS"),)


def test_an_alias_bomb_is_refused_before_it_is_walked(tmp_path: Path) -> None:
    """A few kB that expand to 10^9 values through aliases: refused in linear time."""
    text = with_rule("    where:\n      a: &a [" + ", ".join(["x"] * 1000) + "]\n")
    text += "".join(f"      f{i}: *a\n" for i in range(1000))
    assert len(text) < 20_000
    assert error_of(text, tmp_path) == (
        "1: the configuration expands to 1002017 values through YAML aliases (*name); "
        "at most 200000 are accepted"
    )


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    text = with_rule("    where:\n      voice_name: &v [shop-*, news-*]\n      tag: *v\n")
    assert load_config_text(text, str(tmp_path / "c.yaml"), ENV).rules[0].where[1] == (
        "tag",
        ("shop-*", "news-*"),
    )


def test_root_group_readable_config_is_not_a_warning(tmp_path: Path) -> None:
    """root:root 0640 is the container recipe (the process runs in group 0)."""
    from watcher.config import config_warnings

    path = tmp_path / "c.yaml"
    path.write_text(BASE)
    path.chmod(0o640)
    expected = (
        []
        if path.stat().st_gid == 0
        else [
            f"{path} is readable by other users (mode 0640) and may hold credentials: "
            f"run chmod 600 {path}"
        ]
    )
    assert config_warnings(str(path)) == expected
    path.chmod(0o644)
    assert len(config_warnings(str(path))) == 1
