"""Logging set-up: our lines and libraries' through one structlog chain, secrets redacted.

Every configured secret (AK, SK, tokens, channel URLs and the values substituted into them)
is masked in every line, whichever logger wrote it: apprise and urllib3 print tokens at DEBUG.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, TextIO, cast

import structlog

MASK = "****"
# Secrets shorter than this are not masked: "a" would mask every letter a in every line.
_MIN_SECRET_LEN = 4


class Redactor:
    """Replaces each known secret with ****. The set only grows: a reload adds the new
    config's secrets and keeps the old ones, which an alert or a retry in flight may still
    carry (and the notifier's URL parts, which it registers once, stay masked)."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these from now on, as well as every secret registered before (there is no
        way to drop one: the composition root only ever adds)."""
        new = {s for s in secrets if len(s) >= _MIN_SECRET_LEN} - self._secrets
        if new:
            self._secrets |= new
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
            if key not in _NOT_SECRET_KEYS:
                event_dict[key] = self.redact_value(value)
        return event_dict


# Set by the logging chain itself, never from data: a secret that happens to be a common word
# ("watcher") must not garble which module logged.
_NOT_SECRET_KEYS = frozenset({"logger", "level", "timestamp"})


# The redactor the composition root (watcher.app.Root) handed to configure(): the chain masks
# with it. A later configure() that only changes the level or format keeps it.
_redactor = Redactor()


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

    def fileno(self) -> int:
        return sys.stderr.fileno()


# sd-daemon(3) priorities: journald reads a leading <N> as the line's syslog level.
_JOURNAL_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def journal_priority(levelno: int) -> int:
    """The syslog priority for a logging level (levels between two take the more severe)."""
    for level in sorted(_JOURNAL_PRIORITY, reverse=True):
        if levelno >= level:
            return _JOURNAL_PRIORITY[level]
    return 7


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when `stream` is the journal's stream socket that systemd named in JOURNAL_STREAM.

    systemd sets JOURNAL_STREAM=DEV:INODE of the socket it connected to stdout/stderr; a child
    whose stderr was redirected elsewhere inherits the variable, so compare the descriptor.
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """Every record, ours or a library's, rendered by one chain (the redactor masks every
    value, a library's message included); with `journal`, each line led by its sd-daemon
    priority."""

    def __init__(self, *, journal: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self._journal:
            return text
        prefix = f"<{journal_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def configure(
    *,
    level: str = "info",
    fmt: str | None = None,
    stream: TextIO | None = None,
    redactor: Redactor | None = None,
) -> str:
    """Set up structlog and stdlib logging once per process (and again on reload).

    `redactor` is the composition root's: it masks every line (kept from the last call if
    not given; it is the root that registers secrets in it, never this module).

    Our lines and every library's (apprise, asyncio, warnings) go through the stdlib root
    handler and one structlog renderer: in JSON mode each stderr line is one JSON object whose
    `logger` names where it came from. Returns the format chosen (`json` or `console`).
    """
    global _redactor
    if redactor is not None:
        _redactor = redactor
    out: TextIO = stream or cast(TextIO, _CurrentStderr())
    if fmt is None:
        fmt = "console" if out.isatty() else "json"
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any
    if fmt == "json":
        # Chinese voice names stay readable: no \uXXXX escapes.
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            timestamper,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        _Formatter(
            journal=stream_is_journal(out),
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _drop_personal_fields,
                structlog.processors.format_exc_info,
                _redactor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Off and on again: re-installs the hook even if something replaced showwarning since.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    # apprise says "Sent JSON POST notification." at INFO for every send, which our own
    # alert_sent line already says with more context: keep its chatter for --log-level debug.
    logging.getLogger("apprise").setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
    return fmt
