"""`format: json`: one JSON document per message, intact through apprise json://, form://, xml://."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import parse_qs

import pytest
from aiohttp import web

from watcher.engine.alerts import route
from watcher.engine.noise import render_group
from watcher.model import (
    BodyFormat,
    Event,
    EventKind,
    Job,
    NotifyType,
    OutboxItem,
    OutboxStatus,
    RuleConfig,
    Secret,
)
from watcher.notify import Notifier

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class AnyBody:
    """A loopback receiver that keeps every body whatever its content type."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append((request.content_type, await request.read()))
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])


@pytest.fixture
async def receiver() -> AsyncIterator[AnyBody]:
    r = AnyBody()
    await r.start()
    yield r
    assert r.runner is not None
    await r.runner.cleanup()


def one_alert_message() -> tuple[str, str]:
    job = Job(
        job_id="j-42",
        state="AUDIT_FAILED",
        voice_name="客服女声",
        job_failed_code="MSS.00000102",
        job_failed_reason="背景噪声过大 & <hum>",
        batch_name="spring",
        extra={"tag": "ECOMMERCE", "language": "CN"},
    )
    event = Event(
        EventKind.TRANSITION,
        "prod",
        NOW,
        "job j-42 went from AUDITING to AUDIT_FAILED",
        job=job,
        previous_state="AUDITING",
    )
    rule = RuleConfig(name="machines", on=("*",), notify=("m",), format=BodyFormat.JSON)
    (alert,) = route([event], [rule]).alerts
    message = render_group(
        "m", [alert.group_key], [OutboxItem(1, alert, OutboxStatus.PENDING, 0, NOW)]
    )
    assert message.body_format is BodyFormat.TEXT
    return message.title, message.body


def check_document(text: str) -> None:
    doc = json.loads(text)
    assert doc["version"] == 1
    (entry,) = doc["alerts"]
    assert entry["kind"] == "transition"
    assert entry["rule"] == "machines"
    assert entry["previous_state"] == "AUDITING"
    assert entry["state"] == "AUDIT_FAILED"
    assert entry["detected_at"] == NOW.isoformat()
    assert entry["why"] is None
    assert entry["job"]["voice_name"] == "客服女声"
    assert entry["job"]["job_failed_reason"] == "背景噪声过大 & <hum>"
    assert entry["job"]["tag"] == "ECOMMERCE"


@pytest.mark.parametrize("scheme", ["json", "form", "xml"])
async def test_single_alert_document_survives_each_apprise_body(
    scheme: str, receiver: AnyBody
) -> None:
    title, body = one_alert_message()
    check_document(body)
    url = Secret(f"{scheme}://127.0.0.1:{receiver.port}/in")
    notifier = Notifier({"m": (url,)}, send_timeout=5)
    try:
        result = await notifier.send("m", title, body, NotifyType.FAILURE, BodyFormat.TEXT)
    finally:
        notifier.close()
    assert result.ok, result.error
    ((_, raw),) = receiver.bodies
    if scheme == "json":
        message = json.loads(raw)["message"]
    elif scheme == "form":
        message = parse_qs(raw.decode())["message"][0]
    else:
        root = ET.fromstring(raw)  # noqa: S314 (our own loopback receiver's input)
        message = next(el.text for el in root.iter() if el.tag.endswith("Message"))
    assert message is not None
    check_document(message)
