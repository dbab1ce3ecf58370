"""Why it failed: alerts carry the review result or operation log, never late, never lost.

The daemon asks the simulator's signed audit-result/op-logs endpoints; the simulator answers
slowly, fails or says 404 on request. The tests read what arrived at the webhook.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.receivers import SmtpReceiver
from tests.test_messages_e2e import World, _capture, make_world
from watcher.engine.why import failure_key
from watcher.model import Event, EventKind


@pytest.fixture
async def world(tmp_path: Path, smtp: SmtpReceiver) -> AsyncIterator[World]:
    async for w in make_world(tmp_path, smtp, enrich_timeout="1s"):
        yield w


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    with SmtpReceiver() as receiver:
        yield receiver


async def fail_one(
    world: World, state: str, *, reject_times: int = 2
) -> tuple[dict[str, object], float]:
    job = world.sim.add_job(state="AUDITING" if state == "AUDIT_FAILED" else "PROCESSING")
    watcher = world.watcher()
    await watcher.once()
    world.sim.set_state(str(job["job_id"]), state, reject_times=reject_times)
    started = time.monotonic()
    await watcher.once()
    took = time.monotonic() - started
    await world.hook.wait_for(2)
    return job, took


def chat(world: World) -> str:
    (post,) = world.posts("/chat")
    return str(post["message"])


async def test_review_failure_says_which_recordings_and_what_the_reviewer_wrote(
    world: World,
) -> None:
    await fail_one(world, "AUDIT_FAILED")
    body = chat(world)
    assert "why: " in body
    assert ".wav (" in body  # e.g. "017.wav (017.txt): MSS.00000102 录音…"
    assert "reviewer: " in body
    assert any("\u4e00" <= ch <= "\u9fff" for ch in body)  # the service's Chinese kept
    assert "Signature=" not in body and "attachment_url" not in body
    assert world.sim.requests_by_kind["audit-result"] == 1


async def test_training_failure_gives_the_algorithms_reason(world: World) -> None:
    await fail_one(world, "FAILED")
    body = chat(world)
    assert "reason: 训练失败：有效音频时长不足 (effective audio shorter than required)" in body
    assert world.sim.requests_by_kind["op-logs"] == 1


async def test_json_document_carries_why_as_data(world: World) -> None:
    await fail_one(world, "AUDIT_FAILED")
    (post,) = world.posts("/machines")
    (entry,) = json.loads(str(post["message"]))["alerts"]
    why = entry["why"]
    assert why["available"] is True
    assert why["source"] == "audit-result"
    assert why["errors"][0]["audio_name"].endswith(".wav")
    assert "attachment_url" not in json.dumps(why)
    _capture("json-single.json", json.dumps(post, ensure_ascii=False, indent=2) + "\n")
    (chat_post,) = world.posts("/chat")
    _capture("text-single.txt", f"{chat_post['title']}\n\n{chat_post['message']}\n")


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        ({"kind": "slow", "seconds": 5}, "no answer within 1s"),
        ({"kind": "status", "status": 400, "error_code": "MSS.00000001"}, "HTTP 400"),
        ({"kind": "missing"}, "HTTP 404"),
    ],
    ids=["slow", "failing", "absent"],
)
async def test_detail_trouble_never_delays_or_drops_the_alert(
    world: World, fault: dict[str, object], problem: str
) -> None:
    assert world.details is not None
    world.details.faults.append(fault)
    _, took = await fail_one(world, "AUDIT_FAILED")
    assert took < 3.0  # enrich_timeout 1s, plus the poll itself
    body = chat(world)
    assert "detail unavailable (audit-result): " in body
    assert problem in body
    assert "AUDITING → AUDIT_FAILED" in body


async def test_a_failure_is_asked_about_once_even_across_restarts(world: World) -> None:
    job = world.sim.add_job(state="AUDITING")
    first = world.watcher()
    await first.once()
    world.sim.set_state(str(job["job_id"]), "AUDIT_FAILED")
    await first.once()
    assert world.sim.requests_by_kind["audit-result"] == 1
    world.close()
    # A restart that sees the same failure again (e.g. it crashed before the commit).
    second = world.watcher()
    state = second._sources["prod"]
    stored = second.store.load_jobs("prod")
    assert stored is not None
    failed = stored[str(job["job_id"])]
    event = Event(
        EventKind.TRANSITION, "prod", world.now, "again", job=failed, previous_state="AUDITING"
    )
    (explained,) = await second._explain_failures(state, (event,))
    assert explained.details["why"]["available"] is True
    assert world.sim.requests_by_kind["audit-result"] == 1
    assert second.store.failure_detail("prod", failure_key(failed)) is not None


async def test_signed_attachment_links_never_reach_the_store_or_any_message(
    world: World,
) -> None:
    await fail_one(world, "AUDIT_FAILED", reject_times=3)
    world.close()
    raw = _database_bytes(world.config.storage)
    assert b"Signature=sim-" not in raw
    assert b"obs.example.com" not in raw
    everything = b"".join(r.body for r in world.hook.requests)
    assert b"obs.example.com" not in everything


def _database_bytes(storage: str) -> bytes:
    """The SQLite file and its WAL, as bytes on disk."""
    return b"".join(p.read_bytes() for p in Path(storage).parent.glob(Path(storage).name + "*"))
