"""End to end: the daemon's cycle against the simulator, a webhook and an SMTP server.

Real parts on loopback only: the simulator checks signatures and pages like the API, apprise
posts to an aiohttp receiver (json://) and mails an aiosmtpd server (mailto://), state lives
in a SQLite file. The tests assert on what arrived.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.receivers import SmtpReceiver, WebhookReceiver, json_url, mailto_url
from watcher import daemon
from watcher.config import load_config_text
from watcher.daemon import Watcher
from watcher.engine import cycle
from watcher.jobsets import StoredJobs
from watcher.metastudio.client import RetryPolicy
from watcher.model import Config, Event, EventKind, Job, OutboxStatus
from watcher.notify import Notifier, check_url
from watcher.simulator.app import create_app
from watcher.simulator.runner import serve_app
from watcher.simulator.state import SimulatorState
from watcher.store import Store

AK, SK, PROJECT = "TESTAKTESTAKTESTAK01", "test-secret-key-0123456789abcdef", "proj-e2e"
T = TypeVar("T")
FAST = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02, max_retry_after=0.05)

CONFIG = """
sources:
  - name: prod
    endpoint: {endpoint}
    project_id: {project}
    ak: ${{TEST_AK}}
    sk: ${{TEST_SK}}
    poll_interval: 60s
    request_timeout: 2s
channels:
  hook: ["{hook}"]
  mail: ["{mail}"]
rules:
  - name: failures
    on: [AUDIT_FAILED, SPLIT_FAILED, FAILED]
    notify: [hook, mail]
  - name: done
    on: [SUCCEED]
    notify: [hook]
storage: {storage}
delivery:
  retry_initial: 1s
  retry_max: 2s
  send_timeout: 3s
"""


@dataclass
class World:
    sim: SimulatorState
    hook: WebhookReceiver
    smtp: SmtpReceiver
    config: Config
    session: aiohttp.ClientSession
    now: datetime

    def watcher(self) -> Watcher:
        store = Store.open(self.config.storage)
        notifier = Notifier(self.config.channels, send_timeout=3.0)
        self._opened.append((store, notifier))
        return Watcher(
            self.config,
            store,
            notifier,
            self.session,
            clock=lambda: self.now,
            monotonic=lambda: self.now.timestamp(),  # the test's time moves both clocks
            rng=random.Random(1),
            retry=FAST,
        )

    def close(self) -> None:
        for store, notifier in self._opened:
            notifier.close()
            store.close()

    def __post_init__(self) -> None:
        self._opened: list[tuple[Store, Notifier]] = []


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    with SmtpReceiver() as receiver:
        yield receiver


@pytest.fixture
async def world(tmp_path: Path, smtp: SmtpReceiver) -> AsyncIterator[World]:
    sim = SimulatorState(seed=3)
    start = datetime.now(UTC)
    runner: web.AppRunner
    runner, endpoint = await serve_app(create_app(sim, project_id=PROJECT, ak=AK, sk=SK))
    hook = WebhookReceiver()
    base = await hook.start()
    host, port = smtp.host, smtp.port
    text = CONFIG.format(
        endpoint=endpoint,
        project=PROJECT,
        hook=json_url(base),
        mail=mailto_url(host, port, "ops@example.com"),
        storage=tmp_path / "state.db",
    )
    config = load_config_text(
        text, str(tmp_path / "config.yaml"), {"TEST_AK": AK, "TEST_SK": SK}, check_url
    )
    async with aiohttp.ClientSession() as session:
        w = World(sim, hook, smtp, config, session, start)
        try:
            yield w
        finally:
            w.close()
    await hook.stop()
    await runner.cleanup()


def titles(w: World) -> list[str]:
    return [m["title"] for m in w.hook.received]


async def test_baseline_is_silent_then_each_change_is_alerted_once(world: World) -> None:
    jobs = [world.sim.add_job(state="AUDITING") for _ in range(3)]
    watcher = world.watcher()
    (outcome,) = await watcher.once()
    assert outcome.ok
    assert outcome.baseline
    assert world.hook.received == []

    world.sim.set_state(jobs[0]["job_id"], "AUDIT_FAILED")
    world.sim.set_state(jobs[1]["job_id"], "SUCCEED")
    world.sim.set_state(jobs[2]["job_id"], "WAITING_SPLIT")  # no rule: no alert
    await watcher.once()
    await world.hook.wait_for(2)
    await world.smtp.wait_for(1)
    assert sorted(titles(world)) == sorted(
        [
            f"AUDIT_FAILED: voice job {jobs[0]['job_id']} ({jobs[0]['voice_name']})",
            f"SUCCEED: voice job {jobs[1]['job_id']} ({jobs[1]['voice_name']})",
        ]
    )
    failed = next(m for m in world.hook.received if m["type"] == "failure")
    assert "AUDITING → AUDIT_FAILED" in failed["message"]
    assert jobs[0]["job_failed_code"] in failed["message"]
    (mail,) = world.smtp.messages
    assert jobs[0]["job_id"] in mail["Subject"]

    # Nothing changed: nothing is sent again.
    await watcher.once()
    await watcher.once()
    assert len(world.hook.received) == 2
    assert len(world.smtp.messages) == 1


async def test_alerts_never_carry_phone_or_credentials(world: World) -> None:
    job = world.sim.add_job(state="AUDITING")
    watcher = world.watcher()
    await watcher.once()
    world.sim.set_state(job["job_id"], "FAILED")
    await watcher.once()
    await world.hook.wait_for(1)
    await world.smtp.wait_for(1)
    everything = repr(world.hook.requests) + "".join(m.as_string() for m in world.smtp.messages)
    assert job["phone"] not in everything
    assert SK not in everything
    assert AK not in everything


async def test_failed_page_discards_the_cycle_and_loses_nothing(world: World) -> None:
    jobs = [world.sim.add_job(state="PROCESSING") for _ in range(150)]  # two pages
    watcher = world.watcher()
    await watcher.once()
    world.sim.set_state(jobs[120]["job_id"], "FAILED")  # on the second page
    # The second page fails every attempt: the cycle is discarded whole.
    world.sim.faults.extend([{}] + [{"kind": "status", "status": 503}] * FAST.attempts)
    (outcome,) = await watcher.once()
    assert not outcome.ok
    assert world.hook.received == []
    # The API recovers: the change is still seen, exactly once.
    await watcher.once()
    await world.hook.wait_for(1)
    await watcher.once()
    assert titles(world) == [f"FAILED: voice job {jobs[120]['job_id']} ({jobs[120]['voice_name']})"]


async def test_malformed_body_never_produces_a_false_vanish_or_alert(world: World) -> None:
    for _ in range(5):
        world.sim.add_job(state="PROCESSING")
    watcher = world.watcher()
    await watcher.once()
    world.sim.faults.extend([{"kind": "missing_jobs"}, {"kind": "html"}, {"kind": "truncated"}])
    (outcome,) = await watcher.once()
    assert not outcome.ok
    await watcher.once()
    assert world.hook.received == []


async def test_restart_neither_repeats_nor_forgets(world: World) -> None:
    a = world.sim.add_job(state="AUDITING")
    b = world.sim.add_job(state="AUDITING")
    first = world.watcher()
    await first.once()
    world.sim.set_state(a["job_id"], "AUDIT_FAILED")
    await first.once()
    await world.hook.wait_for(1)
    world.close()  # the daemon stops

    world.sim.set_state(b["job_id"], "SPLIT_FAILED")  # changes while it is down
    second = world.watcher()
    await second.once()
    await world.hook.wait_for(2)
    await second.once()
    assert [t.split(":")[0] for t in titles(world)] == ["AUDIT_FAILED", "SPLIT_FAILED"]


async def test_rejected_again_in_the_same_state_is_alerted(world: World) -> None:
    job = world.sim.add_job(state="AUDITING")
    watcher = world.watcher()
    await watcher.once()
    world.sim.set_state(job["job_id"], "AUDIT_FAILED")
    await watcher.once()
    # Re-uploaded and rejected again between two polls: same state, reject_times grew.
    world.sim.set_state(job["job_id"], "UPLOADING")
    world.sim.set_state(job["job_id"], "SYSTEM_AUDITING")
    world.sim.set_state(job["job_id"], "AUDIT_FAILED")
    await watcher.once()
    await world.hook.wait_for(2)
    assert [m["title"] for m in world.hook.received] == [
        f"AUDIT_FAILED: voice job {job['job_id']} ({job['voice_name']})"
    ] * 2
    assert "rejected_again" in world.hook.received[1]["message"]


async def test_new_job_after_baseline_is_alerted_in_its_state(world: World) -> None:
    watcher = world.watcher()
    await watcher.once()
    job = world.sim.add_job(state="FAILED")
    await watcher.once()
    await world.hook.wait_for(1)
    assert titles(world) == [f"FAILED: voice job {job['job_id']} ({job['voice_name']})"]


async def test_failed_send_stays_queued_and_is_retried(world: World) -> None:
    job = world.sim.add_job(state="PROCESSING")
    watcher = world.watcher()
    await watcher.once()
    world.sim.set_state(job["job_id"], "SUCCEED")
    world.hook.fail_next(1, status=500)
    await watcher.once()
    assert world.hook.received == []
    assert len(world.hook.requests) == 1  # apprise itself did not retry
    # Before the backoff has passed nothing is resent.
    await watcher.deliver()
    assert len(world.hook.requests) == 1
    world.now += timedelta(seconds=5)
    await watcher.deliver()
    await world.hook.wait_for(1)
    await watcher.deliver()
    assert len(world.hook.received) == 1


async def test_alerts_about_one_job_arrive_in_detection_order(world: World) -> None:
    job = world.sim.add_job(state="AUDITING")
    watcher = world.watcher()
    await watcher.once()
    world.hook.refuse = True  # the webhook is down for a while
    world.sim.set_state(job["job_id"], "AUDIT_FAILED")
    await watcher.once()
    world.sim.set_state(job["job_id"], "UPLOADING")
    world.sim.set_state(job["job_id"], "SUCCEED")
    world.now += timedelta(seconds=1)
    await watcher.once()
    world.hook.refuse = False
    for _ in range(6):
        world.now += timedelta(seconds=5)
        await watcher.deliver()
    await world.hook.wait_for(2)
    assert [m["title"].split(":")[0] for m in world.hook.received] == ["AUDIT_FAILED", "SUCCEED"]


async def test_a_batch_failing_together_is_one_message(world: World) -> None:
    jobs = [world.sim.add_job(state="AUDITING", batch_name="spring") for _ in range(25)]
    watcher = world.watcher()
    await watcher.once()
    for job in jobs:
        world.sim.set_state(job["job_id"], "AUDIT_FAILED")
    await watcher.once()
    (message,) = await world.hook.wait_for(1)
    assert message["title"] == "25 voice job alerts (rule failures, source prod)"
    tail = message["message"].splitlines()[-1]
    assert tail.startswith("+5 more not listed here; all of them: metastudio-watcher alerts ")
    assert message["type"] == "failure"
    await watcher.once()
    assert len(world.hook.received) == 1


async def test_silenced_alerts_are_recorded_not_sent(world: World) -> None:
    loud = world.sim.add_job(state="AUDITING", voice_name="news-bob")
    quiet = world.sim.add_job(state="AUDITING", voice_name="shop-anna")
    watcher = world.watcher()
    await watcher.once()
    watcher.store.add_silence(
        [("voice_name", "shop-*")],
        starts_at=world.now,
        ends_at=world.now + timedelta(hours=2),
        comment="re-recording the shop voices",
        now=world.now,
    )
    world.sim.set_state(loud["job_id"], "FAILED")
    world.sim.set_state(quiet["job_id"], "FAILED")
    await watcher.once()
    await world.hook.wait_for(1)
    await watcher.once()
    assert titles(world) == [f"FAILED: voice job {loud['job_id']} (news-bob)"]
    assert watcher.store.outbox_counts()[OutboxStatus.SILENCED] == 2  # hook and mail


async def test_a_new_watcher_remembers_the_last_good_poll(world: World) -> None:
    # After a reload the new Watcher must not look stale to /readyz before its first poll.
    first = world.watcher()
    await first.once()
    second = world.watcher()
    assert second.last_ok() == {"prod": world.now}


async def test_unknown_states_and_fields_pass_through_and_are_logged_once(world: World) -> None:
    from structlog.testing import capture_logs

    job = world.sim.add_job(state="AUDITING", brand_new_field={"x": 1})
    watcher = world.watcher()
    with capture_logs() as logs:
        await watcher.once()
        world.sim.set_state(job["job_id"], "QUANTUM_REVIEW")
        await watcher.once()
        await watcher.once()
    seen = [(e["event"], e.get("state") or e.get("field")) for e in logs if "seen" in e["event"]]
    assert seen == [
        ("unknown_field_seen", "brand_new_field"),
        ("unknown_state_seen", "QUANTUM_REVIEW"),
    ]
    stored = watcher.store.load_jobs("prod")
    assert stored is not None
    assert stored[job["job_id"]].state == "QUANTUM_REVIEW"
    assert stored[job["job_id"]].extra["brand_new_field"] == {"x": 1}


async def test_a_poll_that_outlives_its_deadline_is_abandoned_without_committing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = world.sim.add_job(state="AUDITING")
    watcher = world.watcher()
    await watcher.once()
    world.sim.set_state(job["job_id"], "FAILED")
    monkeypatch.setattr(Watcher, "_cycle_deadline", staticmethod(lambda state: 0.3))
    world.sim.faults.append({"kind": "hang", "seconds": 1.5})
    (outcome,) = await watcher.once()
    assert not outcome.ok
    assert "was abandoned" in str(outcome.error)
    assert world.hook.received == []
    monkeypatch.undo()
    await watcher.once()  # the change is still found, once
    await world.hook.wait_for(1)
    assert titles(world) == [f"FAILED: voice job {job['job_id']} ({job['voice_name']})"]


async def test_a_running_watcher_prunes_history_past_retention(world: World) -> None:
    watcher = world.watcher()
    old = Event(EventKind.SOURCE_UNHEALTHY, "prod", world.now - timedelta(days=31), "long ago")
    recent = Event(EventKind.SOURCE_UNHEALTHY, "prod", world.now - timedelta(days=29), "lately")
    watcher.store.commit_events("prod", [old, recent], [], now=world.now, tracking={})
    stop = asyncio.Event()
    running = asyncio.create_task(watcher.run(stop))

    def kept() -> list[str]:
        rows = watcher.store._query_all("read", "SELECT reason FROM events ORDER BY id")
        return [row[0] for row in rows]

    for _ in range(100):
        if "long ago" not in kept():
            break
        await asyncio.sleep(0.05)
    stop.set()
    await running
    assert kept()[:1] == ["lately"]  # 30 days by default; newer events stay


async def test_a_full_scan_parses_and_writes_only_what_changed_even_after_a_restart(
    world: World,
) -> None:
    jobs = [world.sim.add_job(state="AUDITING") for _ in range(30)]
    source = replace(world.config.sources[0], full_scan_every=timedelta(0))  # always full
    world.config = replace(world.config, sources=(source,))

    def written(logs: list[dict[str, object]]) -> list[object]:
        return [e["jobs_written"] for e in logs if e["event"] == "cycle_committed"]

    watcher = world.watcher()
    await watcher.once()  # the baseline writes every job, each with its digest
    world.sim.set_state(jobs[0]["job_id"], "AUDIT_FAILED")
    world.sim.set_state(jobs[1]["job_id"], "SUCCEED")
    with capture_logs() as logs:
        (outcome,) = await watcher.once()
    assert outcome.ok and outcome.mode == "full" and outcome.jobs == 30
    assert written(logs) == [2]
    await world.hook.wait_for(2)

    world.close()  # a fresh process reads the rows back compact and goes on from them
    world.sim.set_state(jobs[2]["job_id"], "FAILED")
    second = world.watcher()
    with capture_logs() as logs:
        await second.once()
    assert written(logs) == [1]
    await world.hook.wait_for(3)
    with capture_logs() as logs:
        await second.once()
    assert written(logs) == [0]
    assert sorted(t.split(":")[0] for t in titles(world)) == ["AUDIT_FAILED", "FAILED", "SUCCEED"]
    stored = second.store.load_jobs("prod")
    assert stored is not None and stored[jobs[2]["job_id"]].state == "FAILED"
    assert all(job.digest is not None for job in stored.values())


async def test_after_a_baseline_the_daemon_holds_no_full_job_and_goes_on_from_the_rows(
    world: World,
) -> None:
    # Memory at 1M jobs: a baseline's full `Job`s (~0.5 KB each) must not outlive its commit,
    # or the compact rows the next cycle builds sit beside them (800 MB against 645 MB).
    ids = {world.sim.add_job(state="SUCCEED")["job_id"] for _ in range(40)}
    watcher = world.watcher()
    (outcome,) = await watcher.once()
    assert outcome.ok and outcome.baseline and outcome.jobs == 40
    gc.collect()
    assert [o for o in gc.get_objects() if type(o) is Job and o.job_id in ids] == []

    changed = next(iter(sorted(ids)))
    world.sim.set_state(changed, "FAILED")
    (again,) = await watcher.once()  # from the rows read back, as after a restart
    assert again.ok and again.jobs == 40
    await world.hook.wait_for(1)
    assert [t.split(":")[0] for t in titles(world)] == ["FAILED"]


class LoopProbe:
    """Wraps steps so each blocks its thread until the event loop has run meanwhile: called
    on the loop's own thread, a step could never go on (and fails after five seconds)."""

    def __init__(self) -> None:
        self.waiting: list[threading.Event] = []
        self.passed: list[str] = []

    def around(self, name: str, fn: Callable[..., T]) -> Callable[..., T]:
        def gated(*args: object, **kwargs: object) -> T:
            turn = threading.Event()
            self.waiting.append(turn)
            if not turn.wait(5):
                raise AssertionError(f"{name} ran on the event loop and stalled it")
            self.passed.append(name)
            return fn(*args, **kwargs)

        return gated

    async def run(self) -> None:
        while True:
            while self.waiting:
                self.waiting.pop().set()
            await asyncio.sleep(0.001)


async def test_reading_deciding_and_committing_a_cycle_leave_the_event_loop_free(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At 1M jobs a baseline's engine pass and commit take tens of seconds and reading the
    # rows back a few: on the loop, /healthz, /readyz, /metrics, delivery and every other
    # source would stand still that long (a liveness probe restarts such a sidecar).
    jobs = [world.sim.add_job(state="AUDITING") for _ in range(5)]
    watcher = world.watcher()
    probe = LoopProbe()
    monkeypatch.setattr(daemon, "decide", probe.around("decide", cycle.decide))

    def gated(store: Store) -> None:
        monkeypatch.setattr(store, "load_stored", probe.around("read", store.load_stored))
        monkeypatch.setattr(store, "commit_cycle", probe.around("commit", store.commit_cycle))

    gated(watcher.store)
    loop_side = asyncio.create_task(probe.run())
    try:
        (first,) = await watcher.once()
        world.close()  # a fresh process: the rows are read back
        world.sim.set_state(jobs[0]["job_id"], "FAILED")
        second = world.watcher()
        gated(second.store)
        (again,) = await second.once()
    finally:
        loop_side.cancel()
    assert first.ok and first.baseline and again.ok and not again.baseline
    assert probe.passed == ["read", "decide", "commit"] * 2
    await world.hook.wait_for(1)
    assert [t.split(":")[0] for t in titles(world)] == ["FAILED"]


async def test_a_poll_cancelled_while_its_commit_runs_loses_and_doubles_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stop or a reload cancels polls; a commit already in its worker thread cannot be
    # stopped and finishes whole (cycle, then cursor): the next Watcher goes on from it.
    jobs = [world.sim.add_job(state="AUDITING") for _ in range(3)]
    watcher = world.watcher()
    await watcher.once()
    world.sim.set_state(jobs[1]["job_id"], "FAILED")
    entered, release = threading.Event(), threading.Event()
    real = watcher.store.commit_cycle

    def held_commit(*args: object, **kwargs: object) -> int:
        entered.set()
        assert release.wait(5)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(watcher.store, "commit_cycle", held_commit)
    poll = asyncio.create_task(watcher.poll("prod"))
    assert await asyncio.to_thread(entered.wait, 5)
    poll.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poll
    release.set()
    world.close()  # waits for the store: the commit in the thread finishes first

    after = world.watcher()
    (outcome,) = await after.once()
    assert outcome.ok and outcome.events == 0  # the change was committed, not seen again
    await world.hook.wait_for(1)
    (outcome,) = await after.once()
    assert outcome.ok and outcome.events == 0
    assert titles(world) == [f"FAILED: voice job {jobs[1]['job_id']} ({jobs[1]['voice_name']})"]


async def test_loop_side_store_calls_wait_for_a_commit_in_a_thread_not_on_the_loop(
    world: World,
) -> None:
    # A 1M-job baseline's commit holds the store from its thread for seconds. Meanwhile the
    # delivery pass, the watchdog's status line, retention and another poll's record all
    # need the store: waiting for it on the loop would stop /healthz and every send too.
    jobs = [world.sim.add_job(state="AUDITING") for _ in range(3)]
    watcher = world.watcher()
    await watcher.once()
    world.sim.set_state(jobs[0]["job_id"], "FAILED")
    assert (await watcher.poll("prod")).alerts == 2  # queued (webhook, mail), not yet sent
    held, release = threading.Event(), threading.Event()
    span: list[float] = []

    def big_commit() -> None:
        with watcher.store.held():
            held.set()
            span.append(time.monotonic())
            release.wait(5)
            span.append(time.monotonic())

    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.002)

    holder = asyncio.create_task(asyncio.to_thread(big_commit))
    assert await asyncio.to_thread(held.wait, 5)
    beat = asyncio.create_task(ticker())
    world.sim.faults.extend([{"kind": "status", "status": 503}] * FAST.attempts)
    calls = asyncio.gather(
        watcher.deliver(),
        watcher.status_line(),
        daemon.prune_history(watcher.store, world.now - timedelta(days=3650)),
        watcher.poll("prod"),  # fails: its record waits for the store too
    )
    await asyncio.sleep(0.3)
    assert not calls.done()  # every one is waiting for the store...
    release.set()
    delivered, status, pruned, failed = await calls
    await holder
    beat.cancel()
    # ...and the loop kept turning all the while.
    during = [t for t in ticks if span[0] < t < span[1]]
    assert len(during) >= 20, f"the loop turned {len(during)} times in the hold"
    assert delivered.sent == 2 and pruned == 0
    # (Read while the delivery pass ran: before its sends or after.)
    assert re.fullmatch(r"1 source\(s\), [02] alert\(s\) pending, 0 dead(; failing: prod)?", status)
    assert not failed.ok
    assert titles(world) == [f"FAILED: voice job {jobs[0]['job_id']} ({jobs[0]['voice_name']})"]
    assert watcher.store.source_status()[0].last_error is not None  # the failure was recorded


async def test_a_fresh_process_lays_out_the_stored_rows_in_the_order_a_scan_lists(
    world: World,
) -> None:
    # Performance wiring: a full scan looks every listed id up in the stored rows, cheaper
    # when they are in its listing's order (create time). Seen through the daemon's state.
    base = world.now - timedelta(days=1)
    made = [world.sim.add_job(state="SUCCEED", now=base + timedelta(minutes=n)) for n in range(20)]
    by_create = [job["job_id"] for job in made]
    assert by_create != sorted(by_create)  # random ids: the two orders differ
    await world.watcher().once()
    world.close()
    fresh = world.watcher()
    stored = fresh._previous_jobs(fresh._sources["prod"])
    assert isinstance(stored, StoredJobs)
    assert list(stored.rows()) == by_create


async def test_digests_of_an_older_scheme_are_rewritten_once_without_an_alert(
    world: World,
) -> None:
    # v11 changed how digests are computed: a state file from before has digests that can
    # never match. The upgrade clears them; the next scan compares in full, alerts on
    # nothing (nothing changed), writes every job once with its new digest, then none.
    jobs = [world.sim.add_job(state="AUDITING") for _ in range(12)]
    source = replace(world.config.sources[0], full_scan_every=timedelta(0))
    world.config = replace(world.config, sources=(source,))
    await world.watcher().once()
    world.close()
    conn = sqlite3.connect(world.config.storage)
    with conn:
        conn.execute("UPDATE jobs SET digest = digest + 1")  # as the old scheme left them
        conn.execute("PRAGMA user_version = 10")
    conn.close()

    def written(logs: list[dict[str, object]]) -> list[object]:
        return [e["jobs_written"] for e in logs if e["event"] == "cycle_committed"]

    upgraded = world.watcher()
    before = upgraded.store.load_jobs("prod")
    assert before is not None and all(job.digest is None for job in before.values())
    with capture_logs() as logs:
        (outcome,) = await upgraded.once()
    assert outcome.ok and outcome.events == 0 and outcome.alerts == 0
    assert written(logs) == [12]
    stored = upgraded.store.load_jobs("prod")
    assert stored is not None and sorted(stored) == sorted(j["job_id"] for j in jobs)
    assert all(isinstance(job.digest, int) for job in stored.values())
    with capture_logs() as logs:
        await upgraded.once()
    assert written(logs) == [0]  # the new digests match the listing: nothing parsed again
    assert titles(world) == []


async def test_a_listing_in_another_order_is_said_once_per_state_file_not_per_run(
    world: World,
) -> None:
    # Documented regions list newest first whatever sort_key says: normal, worth one line
    # when first seen and one when it changes, not one per cron `once`.
    for minutes in range(120):  # distinct create times: equal ones have no order to ignore
        world.sim.add_job(state="AUDITING", now=world.now - timedelta(minutes=minutes))
    source = replace(world.config.sources[0], full_scan_every=timedelta(0))
    world.config = replace(world.config, sources=(source,))
    world.sim.ignore_update_filters = True

    def said(logs: list[dict[str, object]]) -> list[object]:
        return [e["event"] for e in logs if str(e["event"]).startswith("sort_")]

    with capture_logs() as logs:
        for _ in range(3):  # three `once` processes on one state file
            await world.watcher().once()
            world.close()
    assert said(logs) == ["sort_not_honoured"]
    assert all(e["log_level"] == "info" for e in logs if e["event"] == "sort_not_honoured")
    with Store.open(world.config.storage) as store:
        cursor = store.load_cursor("prod")
    assert cursor is not None and cursor["sort_ignored"] is True

    world.sim.ignore_update_filters = False  # the region starts honouring it
    with capture_logs() as logs:
        for _ in range(2):
            await world.watcher().once()
            world.close()
    assert said(logs) == ["sort_honoured"]
    assert titles(world) == []


async def test_batch_memory_is_written_only_for_batches_that_changed(world: World) -> None:
    jobs = [world.sim.add_job(state="AUDITING", batch_name=f"b{i % 3}") for i in range(9)]
    watcher = world.watcher()
    await watcher.once()
    await watcher.once()  # the first write of a process is all of it; then only changes
    conn = watcher.store._conn
    conn.execute("CREATE TEMP TABLE written (name TEXT)")
    for trigger in (
        "CREATE TEMP TRIGGER batch_ins AFTER INSERT ON batch_memory "
        "BEGIN INSERT INTO written VALUES (NEW.name); END",
        "CREATE TEMP TRIGGER batch_upd AFTER UPDATE ON batch_memory "
        "BEGIN INSERT INTO written VALUES (NEW.name); END",
        "CREATE TEMP TRIGGER batch_del AFTER DELETE ON batch_memory "
        "BEGIN INSERT INTO written VALUES (OLD.name); END",
    ):
        conn.execute(trigger)

    def written() -> list[str]:
        names = [r[0] for r in conn.execute("SELECT name FROM written ORDER BY name")]
        conn.execute("DELETE FROM written")
        return names

    await watcher.once()  # nothing changed
    assert written() == []
    world.sim.set_state(jobs[1]["job_id"], "PROCESSING")  # a job of batch b1
    await watcher.once()
    assert written() == ["b1"]
    blob = conn.execute("SELECT tracking FROM sources WHERE name = 'prod'").fetchone()[0]
    assert "batches" not in json.loads(blob)
    tracking = watcher.store.load_tracking("prod")
    assert tracking is not None and sorted(tracking["batches"]) == ["b0", "b1", "b2"]
