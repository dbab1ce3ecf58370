"""Logging set-up: structlog for our lines, stdlib logging for libraries, secrets redacted.

Every configured secret (AK, SK, tokens, channel URLs and the values substituted into them)
is masked in every line, whichever logger wrote it: apprise and urllib3 print tokens at DEBUG.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO, cast

import structlog

MASK = "****"
# Secrets shorter than this are not masked: "a" would mask every letter a in every line.
_MIN_SECRET_LEN = 4


class Redactor:
    """Replaces each known secret with ****; the set can be updated on config reload."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def update(self, secrets: Iterable[str]) -> None:
        """Mask exactly these secrets from now on (a reload replaces the set)."""
        self._secrets = {s for s in secrets if len(s) >= _MIN_SECRET_LEN}
        self._compile()

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these too (the notifier adds the token-like parts of channel URLs)."""
        self._secrets |= {s for s in secrets if len(s) >= _MIN_SECRET_LEN}
        self._compile()

    def _compile(self) -> None:
        values = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def redact(self, text: str) -> str:
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern is not None else text

    def redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.redact_value(v) for v in value)
        if isinstance(value, BaseException):
            return self.redact(f"{type(value).__name__}: {value}")
        return value

    # structlog processor
    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event_dict.items()):
            event_dict[key] = self.redact_value(value)
        return event_dict


REDACTOR = Redactor()


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return REDACTOR.redact(super().format(record))


def _drop_personal_fields(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # A job's phone number is personal data: it never reaches a log line, whatever logs it.
    event_dict.pop("phone", None)
    return event_dict


class _CurrentStderr(io.TextIOBase):
    """Whatever sys.stderr is at the moment of writing (it may be swapped, as tests do)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(*, level: str = "info", fmt: str | None = None, stream: TextIO | None = None) -> None:
    """Set up structlog and stdlib logging once per process (and again on reload)."""
    out: TextIO = stream or cast(TextIO, _CurrentStderr())
    if fmt is None:
        fmt = "console" if out.isatty() else "json"
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_personal_fields,
            structlog.processors.format_exc_info,
            REDACTOR,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # apprise says "Sent JSON POST notification." at INFO for every send, which our own
    # alert_sent line already says with more context: keep its chatter for --log-level debug.
    logging.getLogger("apprise").setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
