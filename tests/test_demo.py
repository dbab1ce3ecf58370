"""The demo reads like a chat window: one block per message, no log lines unless asked."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from tests.reliability._support import run_cli
from watcher.demo import chat_block

LOG_EVENTS = ("poll_finished", "event_detected", "alert_sent", "store_migrated", "[info")


def test_a_message_is_one_block_with_its_title_in_the_header() -> None:
    block = chat_block(
        {"type": "failure", "title": "2 voice job alerts", "message": "2 FAILED\n\n- j1: A → B"},
        datetime(2026, 11, 25, 12, 0, 5, tzinfo=UTC),
    )
    lines = block.splitlines()
    assert re.fullmatch(r"╭─ \d\d:\d\d:05  ✖ 2 voice job alerts", lines[0])
    assert lines[1:] == ["│ 2 FAILED", "│ ", "│ - j1: A → B", "╰─"]


def run_demo(*extra: str) -> str:
    result = run_cli(
        "demo",
        *extra,
        "--duration",
        "11",
        "--step-every",
        "0.3",
        "--poll-interval",
        "5s",
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout + result.stderr


def test_the_demo_shows_messages_and_no_log_lines_unless_asked() -> None:
    quiet = run_demo()
    assert "╭─ " in quiet and "╰─" in quiet
    assert "voice job" in quiet
    for event in LOG_EVENTS:
        assert event not in quiet, event
    loud = run_demo("--logs")
    assert "poll_finished" in loud
