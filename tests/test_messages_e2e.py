"""Messages as people and machines receive them: daemon, simulator, webhook and SMTP on loopback.

The daemon polls the simulator, groups what changed and delivers through apprise: json:// to
an aiohttp receiver, mailto:// (HTML) to aiosmtpd. The tests read what arrived.
"""

from __future__ import annotations

import json
import random
import shlex
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from tests.receivers import SmtpReceiver, WebhookReceiver, json_url, mailto_url
from watcher.cli import main
from watcher.config import load_config_text
from watcher.daemon import Watcher
from watcher.metastudio.client import RetryPolicy
from watcher.model import Config
from watcher.notify import Notifier, check_url
from watcher.simulator.app import create_app
from watcher.simulator.details import DETAILS_KEY, DetailService
from watcher.simulator.runner import serve_app
from watcher.simulator.state import SimulatorState
from watcher.store import Store

AK, SK, PROJECT = "TESTAKTESTAKTESTAK02", "test-secret-key-messages-0123456", "proj-msg"
FAST = RetryPolicy(attempts=2, initial_backoff=0.01, max_backoff=0.02, max_retry_after=0.05)
CAPTURE = Path(__file__).parent / "captured"

CONFIG = """
sources:
  - name: prod
    endpoint: {endpoint}
    project_id: {project}
    ak: ${{TEST_AK}}
    sk: ${{TEST_SK}}
    poll_interval: 60s
    request_timeout: 2s
    enrich_timeout: {enrich_timeout}
channels:
  hook: ["{hook}"]
  machines: ["{machines}"]
  mail: ["{mail}"]
  batch_hook: ["{batch_hook}"]
  slack_style: ["{slack_style}"]
  capped: ["{capped}"]
rules:
  - name: failures
    on: [AUDIT_FAILED, SPLIT_FAILED, FAILED]
    notify: [hook]
  - name: failures-json
    on: [AUDIT_FAILED, SPLIT_FAILED, FAILED]
    notify: [machines]
    format: json
  - name: failures-mail
    on: [AUDIT_FAILED, SPLIT_FAILED, FAILED]
    notify: [mail]
    format: html
  - name: failures-capped
    on: [AUDIT_FAILED, SPLIT_FAILED, FAILED]
    notify: [capped]
    group_limit: 1
  - name: failures-slack
    on: [AUDIT_FAILED, SPLIT_FAILED, FAILED]
    notify: [slack_style]
    format: markdown
  - name: batches
    events: [batch_settled, batch_updated]
    notify: [batch_hook]
  - name: blind
    events: [source_unhealthy, source_recovered]
    notify: [batch_hook]
storage: {storage}
"""


@dataclass
class World:
    sim: SimulatorState
    hook: WebhookReceiver
    smtp: SmtpReceiver
    config: Config
    session: aiohttp.ClientSession
    now: datetime
    opened: list[tuple[Store, Notifier]] = field(default_factory=list)
    details: DetailService | None = None  # the simulator's audit-result/op-logs faults

    def watcher(self) -> Watcher:
        store = Store.open(self.config.storage)
        notifier = Notifier(self.config.channels, send_timeout=3.0)
        self.opened.append((store, notifier))
        return Watcher(
            self.config,
            store,
            notifier,
            self.session,
            clock=lambda: self.now,
            rng=random.Random(1),
            retry=FAST,
        )

    def close(self) -> None:
        for store, notifier in self.opened:
            notifier.close()
            store.close()
        self.opened.clear()

    def posts(self, path: str) -> list[dict[str, object]]:
        return [
            json.loads(r.body) for r in self.hook.requests if r.path == path and r.answered == 200
        ]


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    with SmtpReceiver() as receiver:
        yield receiver


async def make_world(
    tmp_path: Path, smtp: SmtpReceiver, *, enrich_timeout: str = "2s"
) -> AsyncIterator[World]:
    sim = SimulatorState(seed=5)
    worlds: list[World] = []  # the simulator's clock is the world's (tests move it)
    start = datetime.now(UTC)

    def clock() -> datetime:
        return worlds[0].now if worlds else start

    app = create_app(sim, project_id=PROJECT, ak=AK, sk=SK, clock=clock)
    runner, endpoint = await serve_app(app)
    hook = WebhookReceiver()
    base = await hook.start()
    text = CONFIG.format(
        endpoint=endpoint,
        project=PROJECT,
        hook=json_url(base, "/chat"),
        machines=json_url(base, "/machines"),
        batch_hook=json_url(base, "/batches"),
        slack_style=json_url(base, "/markdown"),
        capped=json_url(base, "/capped"),
        mail=mailto_url(smtp.host, smtp.port, "ops@example.com"),
        storage=tmp_path / "state.db",
        enrich_timeout=enrich_timeout,
    )
    (tmp_path / "config.yaml").write_text(text)
    config = load_config_text(
        text, str(tmp_path / "config.yaml"), {"TEST_AK": AK, "TEST_SK": SK}, check_url
    )
    async with aiohttp.ClientSession() as session:
        w = World(sim, hook, smtp, config, session, start, details=app[DETAILS_KEY])
        worlds.append(w)
        try:
            yield w
        finally:
            w.close()
    await hook.stop()
    await runner.cleanup()


@pytest.fixture
async def world(tmp_path: Path, smtp: SmtpReceiver) -> AsyncIterator[World]:
    async for w in make_world(tmp_path, smtp):
        yield w


async def three_failures(world: World) -> list[dict[str, object]]:
    jobs = [world.sim.add_job(state="AUDITING") for _ in range(2)]
    jobs.append(world.sim.add_job(state="PROCESSING"))
    watcher = world.watcher()
    await watcher.once()  # baseline
    world.sim.set_state(str(jobs[0]["job_id"]), "AUDIT_FAILED")
    world.sim.set_state(str(jobs[1]["job_id"]), "AUDIT_FAILED")
    world.sim.set_state(str(jobs[2]["job_id"]), "FAILED")
    await watcher.once()
    await world.hook.wait_for(2)
    await world.smtp.wait_for(1)
    return jobs


async def test_grouped_chat_message_lists_each_job_with_states_code_and_reason(
    world: World,
) -> None:
    jobs = await three_failures(world)
    (chat,) = world.posts("/chat")
    body = str(chat["message"])
    assert chat["title"] == "3 voice job alerts (rule failures, source prod)"
    assert body.splitlines()[0] == (
        "2 AUDIT_FAILED: 2× audio review failed: background noise too high"
        " · 1 FAILED: 1× training failed: internal error"
    )
    for job, previous in zip(jobs, ["AUDITING", "AUDITING", "PROCESSING"], strict=True):
        line = next(x for x in body.splitlines() if x.startswith(f"- {job['job_id']} "))
        assert (
            f"({job['voice_name']}): {previous} → {world.sim.jobs[str(job['job_id'])]['state']}"
            in line
        )
        assert str(world.sim.jobs[str(job["job_id"])]["job_failed_code"]) in line
    _capture("slack-style-group.txt", f"{chat['title']}\n\n{body}\n")


async def test_markdown_channel_gets_a_bold_summary_and_escaped_lines(world: World) -> None:
    jobs = await three_failures(world)
    (post,) = world.posts("/markdown")
    body = str(post["message"])
    assert body.startswith("**2 AUDIT_FAILED: 2× audio review failed: background noise too high")
    assert all(f"- {j['job_id']} " in body for j in jobs)
    assert "    - " in body  # the why: a nested list under its job
    _capture("slack-style-markdown.md", f"{post['title']}\n\n{body}\n")


async def test_json_channel_gets_one_document_with_structured_jobs(world: World) -> None:
    jobs = await three_failures(world)
    (post,) = world.posts("/machines")
    doc = json.loads(str(post["message"]))
    assert doc["version"] == 1
    assert {a["job"]["job_id"] for a in doc["alerts"]} == {j["job_id"] for j in jobs}
    for entry in doc["alerts"]:
        assert entry["rule"] == "failures-json"
        assert entry["source"] == "prod"
        assert entry["previous_state"] in ("AUDITING", "PROCESSING")
        assert entry["job"]["job_failed_code"]
        assert "phone" not in entry["job"]
    assert all(str(j["phone"]) not in str(post) for j in jobs)
    _capture("json-payload.json", json.dumps(post, ensure_ascii=False, indent=2) + "\n")


async def test_email_gets_an_html_list_of_every_job(world: World) -> None:
    jobs = await three_failures(world)
    (mail,) = world.smtp.messages
    html_part = mail.get_body(preferencelist=("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert html.count("<li>") >= 3
    for job in jobs:
        assert str(job["job_id"]) in html
    assert "2 AUDIT_FAILED" in html
    _capture("email-group.html", f"Subject: {mail['Subject']}\n\n{html}\n")


async def test_alerts_command_prints_exactly_the_group(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = await three_failures(world)
    (capped,) = world.posts("/capped")
    world.close()
    listed = [line for line in str(capped["message"]).splitlines() if line.startswith("- ")]
    assert len(listed) == 1
    tail = str(capped["message"]).splitlines()[-1]
    assert tail.startswith("+2 more not listed here; all of them: metastudio-watcher alerts -c ")
    command = shlex.split(tail.split("all of them: ", 1)[1])
    assert command[0] == "metastudio-watcher"
    monkeypatch.setenv("TEST_AK", AK)
    monkeypatch.setenv("TEST_SK", SK)
    capsys.readouterr()
    assert main(command[1:]) == 0  # the command exactly as the message gave it
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(capped["message"]).splitlines()[0]
    listed = [line for line in out.splitlines() if any(str(j["job_id"]) in line for j in jobs)]
    assert len(listed) == 3


def _capture(name: str, text: str) -> None:
    """Keep what arrived, for the README's examples (tests/captured is not committed)."""
    CAPTURE.mkdir(exist_ok=True)
    (CAPTURE / name).write_text(text)


async def test_batch_settles_once_across_cycles_when_late_jobs_arrive(world: World) -> None:
    first = [world.sim.add_job(state="PROCESSING", batch_name="b5") for _ in range(3)]
    watcher = world.watcher()
    await watcher.once()  # baseline
    for job in first:
        world.sim.set_state(str(job["job_id"]), "SUCCEED", now=world.now)
    for minutes in (1, 2, 3):  # terminal, but the batch is not quiet yet
        world.now += timedelta(minutes=minutes)
        await watcher.once()
    late = [world.sim.add_job(state="PROCESSING", batch_name="b5", now=world.now) for _ in "ab"]
    for job in late:  # they appear already failed, with the simulator's reason
        world.sim.set_state(str(job["job_id"]), "FAILED", now=world.now)
    for _ in range(4):
        world.now += timedelta(minutes=4)
        await watcher.once()
    world.now += timedelta(minutes=30)
    await watcher.once()
    (post,) = world.posts("/batches")
    assert str(post["title"]).startswith(
        "batch b5 settled: 3 SUCCEED, 2 FAILED (MSS.00000104 training failed: internal error ×2)"
    )
    # Nothing changes any more: nothing more is said about the batch.
    for _ in range(3):
        world.now += timedelta(minutes=20)
        await watcher.once()
    assert len(world.posts("/batches")) == 1


async def test_crashing_polls_count_towards_source_unhealthy(world: World) -> None:
    world.sim.add_job(state="PROCESSING")
    watcher = world.watcher()
    await watcher.once()
    for minutes in (1, 2, 4):  # a bug in every poll for 3 minutes (3 poll intervals)
        world.now += timedelta(minutes=minutes)
        assert await watcher._poll_crashed("prod", KeyError("job_id"), 0.5)
    await watcher.deliver()
    (post,) = world.posts("/batches")
    assert str(post["title"]).startswith("source prod has failed to poll for 6m")
    assert "the poll crashed inside the watcher (KeyError)" in str(post["title"])
    world.now += timedelta(minutes=1)
    await watcher.once()
    recovered = world.posts("/batches")[-1]
    assert str(recovered["title"]).startswith("source prod is polled successfully again")
