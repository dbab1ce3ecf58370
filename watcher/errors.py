"""The project's own exceptions: each carries a message a user can act on.

The CLI turns a `WatcherError` into one line and an exit code; anything else is a bug.
"""

from __future__ import annotations


class WatcherError(Exception):
    """Base of every error we raise on purpose. `str(err)` is safe to show to a user."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(WatcherError):
    """The configuration is wrong: `FILE:LINE: key: problem`. Exit 78 (EX_CONFIG)."""

    exit_code = 78

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.line = line
        self.key = key
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        prefix = f"{key}: " if key else ""
        super().__init__(f"{where}{prefix}{problem}")


class ApiError(WatcherError):
    """The MetaStudio API could not be read.

    `retryable` says whether trying again soon may help (5xx, timeouts, throttling);
    `code` is the gateway's or MetaStudio's error code when the API gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retryable = retryable
        self.retry_after = retry_after


class AuthError(ApiError):
    """Credentials were rejected (401/403): retrying at once will not help."""


class StoreError(WatcherError):
    """The state database cannot be opened, read or written."""


class DeliveryError(WatcherError):
    """A notification channel is misconfigured or could not be reached."""


class UsageError(WatcherError):
    """A command was called with arguments it cannot use. Exit 2, like argparse."""

    exit_code = 2
