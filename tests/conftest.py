"""Suite-wide fixtures: every test starts with the logging configuration it found.

`cli.main()` configures structlog (level, format, stream) for the process; in-process CLI
tests would otherwise leave that behind, and a later `capture_logs()` would miss the
events the left-over level filters out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
