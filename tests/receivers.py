"""Real notification receivers on loopback for tests: an aiohttp webhook and an aiosmtpd server.

Apprise URLs pointing at them come from `json_url` and `mailto_url`; any test in the project may
use them (delivery, daemon end-to-end, CLI `test-notify`).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiosmtpd.controller import Controller


def json_url(base_url: str, path: str = "/hook") -> str:
    """An apprise `json://` URL that posts to `base_url + path` (http only)."""
    host = base_url.removeprefix("http://").rstrip("/")
    return f"json://{host}{path}"


def mailto_url(
    host: str,
    port: int,
    to: str,
    *,
    sender: str = "watcher@example.com",
) -> str:
    """An apprise `mailto://` URL for a plain, unauthenticated local SMTP server.

    `mode=insecure` turns off STARTTLS/SSL; with no user and password apprise skips LOGIN,
    which is what an aiosmtpd without auth wants. Addresses are %-encoded: apprise would
    otherwise take an `@` in the query for the end of the user:password part.
    """
    return (
        f"mailto://{host}:{port}?mode=insecure"
        f"&from={quote(sender, safe='')}&to={quote(to, safe='')}"
    )


@dataclass
class ReceivedRequest:
    """One HTTP request as the webhook saw it, whatever it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int | None  # status sent back; None when the connection was dropped or hung


@dataclass
class _Plan:
    fail: list[int] = field(default_factory=list)
    hang: list[float] = field(default_factory=list)


class WebhookReceiver:
    """An aiohttp server on 127.0.0.1 that records JSON posts and misbehaves on request.

    `received` holds the JSON bodies it accepted (2xx); `requests` holds every request,
    including the ones it failed, hung on or dropped.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port: int | None = None
        self.received: list[dict[str, Any]] = []
        self.requests: list[ReceivedRequest] = []
        self.refuse = False  # True: drop every connection without an answer
        self._plan = _Plan()
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Event()

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("WebhookReceiver is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        """Listen on a free port; return the base URL (`http://127.0.0.1:PORT`)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a hanging handler must not keep stop() waiting.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next `n` requests with `status` (after recording them)."""
        self._plan.fail.extend([status] * n)

    def hang_next(self, n: int, seconds: float) -> None:
        """Hold the next `n` requests for `seconds` before answering 200."""
        self._plan.hang.extend([seconds] * n)

    def recover(self) -> None:
        """Answer every request normally from now on (planned failures and hangs dropped)."""
        self._plan = _Plan()
        self.refuse = False

    async def wait_for(self, count: int, within: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least `count` bodies were accepted; return them all."""
        deadline = time.monotonic() + within
        while len(self.received) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"webhook got {len(self.received)} of {count} posts")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                continue
        return list(self.received)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        record = ReceivedRequest(
            method=request.method,
            path=request.path_qs,
            headers=dict(request.headers),
            body=body,
            answered=None,
        )
        self.requests.append(record)
        if self.refuse:
            if request.transport is not None:
                request.transport.abort()  # the client sees a reset, not an HTTP answer
            return web.Response(status=503)
        if self._plan.hang:
            await asyncio.sleep(self._plan.hang.pop(0))
        if self._plan.fail:
            record.answered = self._plan.fail.pop(0)
            return web.Response(status=record.answered, text="planned failure")
        try:
            payload = await request.json() if body else {}
        except ValueError:
            record.answered = 400
            return web.Response(status=400, text="not JSON")
        self.received.append(payload)
        self._arrived.set()
        record.answered = 200
        return web.json_response({"ok": True})


class _Collect:
    def __init__(self, receiver: SmtpReceiver) -> None:
        self._receiver = receiver

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self._receiver.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self._receiver.messages.append(message)
        return "250 Message accepted for delivery"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SmtpReceiver:
    """aiosmtpd on 127.0.0.1: plain SMTP, no TLS, no auth. Runs in its own thread.

    `messages` holds every accepted mail as an `EmailMessage`; `envelopes` the (from, to) pairs.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self._controller: Controller | None = None

    def start(self) -> tuple[str, int]:
        """Start listening (blocks briefly until ready); return (host, port)."""
        # The Controller connects to its own port to check readiness, so it needs a real one.
        self.port = _free_port(self.host)
        self._controller = Controller(
            _Collect(self), hostname=self.host, port=self.port, auth_require_tls=False
        )
        self._controller.start()
        return self.host, self.port

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def wait_for(self, count: int, within: float = 5.0) -> list[EmailMessage]:
        """Wait until at least `count` mails arrived; return them all."""
        deadline = time.monotonic() + within
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"smtp got {len(self.messages)} of {count} mails")
            await asyncio.sleep(0.02)
        return list(self.messages)
