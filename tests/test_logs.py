"""watcher.logs: one JSON object per stderr line whoever logs, journald priorities, and a
redactor that never forgets a secret."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from watcher.logs import Redactor, configure, journal_priority, stream_is_journal


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)


def test_library_and_stdlib_lines_are_json_objects_naming_their_logger() -> None:
    out = io.StringIO()
    configure(level="info", fmt="json", stream=out)
    structlog.get_logger("watcher.daemon").info("poll_ok", voice_name="客服小美")
    logging.getLogger("apprise").warning("Failed to send JSON POST notification to %s", "x")
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    lines = out.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["logger"], r["level"]) for r in records] == [
        ("watcher.daemon", "info"),
        ("apprise", "warning"),
        ("asyncio", "error"),
        ("py.warnings", "warning"),
    ]
    assert records[1]["event"] == "Failed to send JSON POST notification to x"
    assert records[0]["voice_name"] == "客服小美"
    assert "客服小美" in lines[0]  # kept as is, not \u-escaped
    assert all("timestamp" in r for r in records)


def test_an_unnamed_logger_is_named_after_its_module() -> None:
    out = io.StringIO()
    configure(fmt="json", stream=out)
    structlog.get_logger().info("hello")
    assert json.loads(out.getvalue())["logger"] == __name__


def test_exceptions_stay_inside_the_one_json_line() -> None:
    out = io.StringIO()
    configure(fmt="json", stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("aiohttp.client").exception("request failed")
        structlog.get_logger("watcher.x").exception("ours failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert all("ValueError: boom" in json.loads(line)["exception"] for line in lines)


def test_secrets_masked_in_library_lines_and_the_redactor_only_grows() -> None:
    out = io.StringIO()
    redactor = Redactor()
    configure(fmt="json", stream=out, redactor=redactor)
    redactor.add(["old-hook-token-1234"])
    redactor.add(["url-part-from-notifier"])
    redactor.add(["new-hook-token-5678"])  # a reload: nothing registered before is dropped
    logging.getLogger("apprise").warning(
        "posting to json://h/old-hook-token-1234/url-part-from-notifier?t=new-hook-token-5678"
    )
    text = out.getvalue()
    assert "old-hook-token" not in text
    assert "url-part-from-notifier" not in text
    assert "new-hook-token" not in text
    assert text.count("****") == 3


def test_a_later_configure_keeps_the_redactor_it_was_handed() -> None:
    out = io.StringIO()
    redactor = Redactor()
    configure(fmt="json", stream=out, redactor=redactor)
    configure(level="warning", fmt="json", stream=out)  # as `demo` does: only the level changes
    redactor.add(["hook-token-after-reconfigure"])
    logging.getLogger("apprise").warning("posting to json://h/hook-token-after-reconfigure")
    assert "hook-token-after-reconfigure" not in out.getvalue()
    assert "****" in out.getvalue()


def test_redactor_keeps_every_earlier_secret() -> None:
    redactor = Redactor()
    redactor.add(["alpha-secret"])
    redactor.add(["beta-secret"])
    redactor.add([])
    assert redactor.redact("alpha-secret beta-secret") == "**** ****"


def test_journal_priorities_follow_sd_daemon() -> None:
    assert [journal_priority(n) for n in (10, 20, 25, 30, 40, 50)] == [7, 6, 6, 4, 3, 2]


def test_journal_stream_must_match_the_descriptor(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        info = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        assert stream_is_journal(a, env)
        assert not stream_is_journal(b, env)  # stderr redirected elsewhere: no prefixes
        assert not stream_is_journal(a, {})
        assert not stream_is_journal(a, {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journal(io.StringIO(), env)


def test_a_process_whose_stderr_is_the_journal_stream_prefixes_every_line(
    tmp_path: Path,
) -> None:
    """A real process with stderr on a stream socket, as systemd connects it to journald."""
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    info = os.fstat(writer.fileno())
    code = (
        "import logging, structlog\n"
        "from watcher.logs import configure\n"
        "configure(level='debug', fmt='json')\n"
        "structlog.get_logger('watcher.t').debug('d')\n"
        "structlog.get_logger('watcher.t').info('i')\n"
        "logging.getLogger('apprise').warning('w')\n"
        "structlog.get_logger('watcher.t').error('e')\n"
        "logging.getLogger('x').critical('c')\n"
    )
    env = {**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
    with writer, reader:
        subprocess.run(  # noqa: S603 - this interpreter, fixed code
            [sys.executable, "-c", code], stderr=writer, env=env, check=True, timeout=60
        )
        writer.close()
        data = b""
        while chunk := reader.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    assert [json.loads(line[3:])["event"] for line in lines] == ["d", "i", "w", "e", "c"]


def test_without_journal_stream_lines_are_plain_json(tmp_path: Path) -> None:
    code = (
        "import logging\nfrom watcher.logs import configure\n"
        "configure(fmt='json')\nlogging.getLogger('apprise').warning('w')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["JOURNAL_STREAM"] = "1:1"  # inherited from a parent, but stderr is a pipe here
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(result.stderr)["logger"] == "apprise"
