"""A populated state file and the real HTTP server (start_http + the status page) on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from watcher.config import load_config_text
from watcher.engine.why import failure_key
from watcher.http import Readiness, bound_port, start_http
from watcher.metrics import Metrics
from watcher.model import (
    Alert,
    BodyFormat,
    Config,
    Event,
    EventKind,
    Job,
    NotifyType,
    Snapshot,
)
from watcher.store import Store
from watcher.web.auth import hash_password
from watcher.web.routes import StatusPage, install

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
AK, SK = "AKWEBTEST0000000001", "SKWEBTESTSECRETVALUE00000000001"
HOOK_TOKEN = "hooktokenWEB77777777"
PHONE = "13812345678"
SIGNED = "https://bucket.example/auth/x.wav?Signature=SIGNEDSIG123&Expires=1"
XSS = "<script>alert('x')</script>"
TOKEN = "tok-" + "7" * 28
PASSWORD = "correct horse battery"


def config_text(storage: Path, extra: str = "") -> str:
    return (
        "sources:\n"
        "  - name: prod\n"
        "    endpoint: http://127.0.0.1:9\n"
        "    project_id: p1\n"
        f"    ak: {AK}\n"
        f"    sk: {SK}\n"
        "    poll_interval: 30s\n"
        "  - name: lab\n"
        "    endpoint: http://127.0.0.1:9\n"
        "    project_id: p2\n"
        f"    ak: {AK}\n"
        f"    sk: {SK}\n"
        "    full_scan_every: 0\n"
        "channels:\n"
        f"  ops: json://127.0.0.1:9/hook/{HOOK_TOKEN}\n"
        "rules:\n  - name: all\n    notify: [ops]\n"
        f"storage: {storage}\n"
        f"{extra}"
    )


def make_config(tmp_path: Path, extra: str = "") -> Config:
    path = tmp_path / "config.yaml"
    text = config_text(tmp_path / "state.db", extra)
    path.write_text(text)
    return load_config_text(text, str(path), env={})


def job(job_id: str, state: str, *, at: datetime = NOW, **fields: Any) -> Job:
    return Job(
        job_id=job_id,
        state=state,
        reject_times=fields.pop("reject_times", 1),
        create_time=fields.pop("create_time", at - timedelta(hours=5)),
        lastupdate_time=at,
        voice_name=fields.pop("voice_name", f"voice-{job_id}"),
        job_type="BASIC",
        **fields,
    )


def event(
    j: Job, previous: str | None, at: datetime, kind: EventKind = EventKind.TRANSITION
) -> Event:
    return Event(kind, "prod", at, f"{previous} -> {j.state}", job=j, previous_state=previous)


def alert(ev: Event, at: datetime, rule: str = "all", channel: str = "ops") -> Alert:
    return Alert(
        event_key=ev.key,
        source=ev.source,
        job_id=ev.job.job_id if ev.job else None,
        rule=rule,
        channel=channel,
        title=f"{ev.job.voice_name if ev.job else ''} is {ev.job.state if ev.job else ''}",
        body=f"body with {SIGNED}",
        notify_type=NotifyType.FAILURE,
        body_format=BodyFormat.TEXT,
        created_at=at,
    )


@dataclass
class Populated:
    path: str
    failed_job: str
    xss_job: str


def populate(path: str) -> Populated:
    """Two sources: prod with a batch in flight (one failure with alerts), lab never polled."""
    t0 = NOW - timedelta(hours=3)
    failed = job(
        "f00d",
        "AUDIT_FAILED",
        at=NOW - timedelta(hours=2),
        batch_name="spring-sale",
        job_failed_code="MSS.0012",
        job_failed_reason=f"audio too noisy; see {SIGNED} or call {PHONE}",
        extra={"tag": "shop", "attachment_url": SIGNED},
    )
    jobs = {
        "a1": job("a1", "SUCCEED", batch_name="spring-sale"),
        "a2": job("a2", "SUCCEED", batch_name="spring-sale"),
        "a3": job("a3", "AUDITING", at=NOW - timedelta(hours=4), batch_name="spring-sale"),
        "f00d": failed,
        "x55": job("x55", "PROCESSING", voice_name=XSS, batch_name="<b>bold</b>"),
        "n1": job("n1", "SUCCEED", batch_name="done-batch"),
        "lone": job("lone", "WAITING"),
    }
    with Store.open(path) as store:
        store.commit_cycle("prod", Snapshot("prod", t0, dict(jobs)), [], [], now=t0)
        auditing = job("f00d", "AUDITING", at=t0, batch_name="spring-sale")
        ev1 = event(auditing, "CREATING", t0 + timedelta(minutes=1))
        ev2 = event(failed, "AUDITING", NOW - timedelta(hours=2))
        ev3 = event(jobs["x55"], "WAITING", NOW - timedelta(minutes=5))
        a_sent, a_dead, a_held = (
            alert(ev2, ev2.detected_at),
            alert(ev2, ev2.detected_at, rule="hard", channel="lead"),
            alert(ev3, ev3.detected_at),
        )
        store.commit_cycle(
            "prod",
            Snapshot("prod", NOW, dict(jobs)),
            [ev1, ev2, ev3],
            [a_sent, a_dead, a_held],
            now=NOW - timedelta(minutes=5),
            previous=jobs,
        )
        # What the review-result API said about f00d's failure, as the alert explained it
        # (with a signed link and a phone number that must never reach a page).
        store.save_failure_detail(
            "prod",
            failure_key(failed),
            {
                "source": "audit-result",
                "errors": [
                    {"audio_name": "003.wav", "error_code": "E07", "error_message": "背景噪音过大"},
                    {
                        "audio_name": "007.wav",
                        "error_code": "E02",
                        "error_message": "文本与语音不符",
                    },
                    {"audio_name": "011.wav", "error_code": "E07", "error_message": "背景噪音过大"},
                ],
                "reviewer_message": f"re-record in a quiet room; sample {SIGNED} or call {PHONE}",
            },
            NOW - timedelta(hours=2),
        )
        store.save_cursor("prod", {}, "changed_since")
        items = {i.alert.alert_id: i for i in store.list_outbox(["pending"])}  # type: ignore[list-item]
        store.mark_sent_many([items[a_sent.alert_id].id], NOW - timedelta(hours=2))
        store.mark_dead(
            items[a_dead.alert_id].id,
            NOW - timedelta(hours=1),
            f"HTTP 500 from json://x/{HOOK_TOKEN}",
        )
        store.mark_failed(
            items[a_held.alert_id].id, NOW, "connection refused", NOW + timedelta(minutes=3)
        )
        store.record_source_poll("prod", True, NOW - timedelta(seconds=10))
        store.add_silence(
            [("voice_name", "shop-*")],
            starts_at=NOW - timedelta(hours=1),
            ends_at=NOW + timedelta(hours=1),
            comment="maintenance",
            now=NOW,
        )
    return Populated(path, "f00d", "x55")


@dataclass
class Server:
    base: str
    session: aiohttp.ClientSession
    config: Config

    async def get(self, path: str, **kw: Any) -> tuple[int, str, Any]:
        async with self.session.get(self.base + path, **kw) as response:
            return response.status, await response.text(), response.headers

    async def json(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.get(self.base + path, **kw) as response:
            return response.status, await response.json()


ServerFactory = Callable[..., Any]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """serve(extra_yaml="", populate=True) -> Server, on 127.0.0.1 with the page installed."""
    runners = []
    session = aiohttp.ClientSession()

    async def start(extra: str = "", fill: bool = True, listen: str = "127.0.0.1:0") -> Server:
        config = make_config(tmp_path, f"http:\n  listen: {listen}\n" + extra)
        if fill:
            populate(config.storage)
        else:
            Store.open(config.storage).close()
        page = StatusPage(lambda: config, clock=lambda: NOW)
        runner = await start_http(
            "127.0.0.1:0", Metrics(), lambda: Readiness(True, ()), lambda app: install(app, page)
        )
        runners.append(runner)
        return Server(f"http://127.0.0.1:{bound_port(runner)}", session, config)

    yield start
    await session.close()
    for runner in runners:
        await runner.cleanup()


def basic_hash() -> str:
    return hash_password(PASSWORD, ln=10)
