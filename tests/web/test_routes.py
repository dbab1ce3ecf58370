"""HTTP tests of the status page and API against a real server on loopback and a real file."""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
from typing import Any

import pytest

from tests.web.conftest import (
    AK,
    HOOK_TOKEN,
    PASSWORD,
    PHONE,
    SK,
    TOKEN,
    XSS,
    ServerFactory,
    basic_hash,
)
from watcher.store import Store
from watcher.web.routes import SECURITY_HEADERS

PAGES = [
    "/",
    "/batch?source=prod&name=spring-sale",
    "/batch?source=prod&name=%3Cb%3Ebold%3C%2Fb%3E",
    "/job?source=prod&id=f00d",
    "/job?source=prod&id=x55",
    "/events",
    "/events?source=prod&kind=transition&state=AUDIT_FAILED",
    "/events?batch=spring-sale",
]
APIS = [
    "/api/v1/overview",
    "/api/v1/sources",
    "/api/v1/jobs",
    "/api/v1/job?source=prod&id=f00d",
    "/api/v1/batches",
    "/api/v1/batch?source=prod&name=spring-sale",
    "/api/v1/events",
    "/api/v1/outbox",
]
LEAKS = (AK, SK, HOOK_TOKEN, PHONE, "SIGNEDSIG123", "bucket.example")


# --- pages ---------------------------------------------------------------------------------


async def test_overview_shows_sources_batches_stuck_jobs_outbox_and_silences(
    serve: ServerFactory,
) -> None:
    server = await serve()
    status, html, headers = await server.get("/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "prod" in html and "lab" in html
    # The strategy polling found out at run time and keeps in the store.
    assert "every 30s, changed_since (full scan every 1h)" in html
    assert "every 60s, full scan every poll" in html  # lab: full_scan_every 0
    assert "10s ago" in html  # last successful poll of prod
    assert "<title>SUCCEED: 3</title>" in html  # jobs by state as a bar
    # The open batch with its progress; the settled one is only counted.
    assert "2 succeeded · 1 failed · 1 in progress" in html
    assert "done-batch" not in html and "(1 settled)" not in html
    # Stuck longest: a3 (AUDITING for 4h) before f00d (AUDIT_FAILED for 2h); no SUCCEED job.
    stuck = html.split("Stuck longest")[1].split("Last events")[0]
    assert stuck.index("id=a3") < stuck.index("id=f00d")
    assert "id=a1" not in stuck
    assert "<b>1</b> held (retrying)" in html and "<b>1</b> dead" in html
    assert "<b>0</b> pending" in html
    assert "<code>voice_name=shop-*</code>" in html and "maintenance" in html
    assert "no jobs yet: first poll under way" in html  # lab never polled


async def test_batch_page_lists_every_job_failed_first_with_why(serve: ServerFactory) -> None:
    server = await serve()
    status, html, _ = await server.get("/batch?source=prod&name=spring-sale")
    assert status == 200
    ids = re.findall(r'id=(\w+)" class="mono"', html)
    assert ids == ["f00d", "a3", "a1", "a2"]
    assert "<code>MSS.0012</code> audio too noisy" in html
    assert "2 succeeded · 1 failed · 1 in progress · 4 jobs" in html
    # The first recordings the review rejected, and where the rest are.
    assert "003.wav: E07 背景噪音过大" in html and "007.wav: E02 文本与语音不符" in html
    assert "+2 more on the job page" in html


async def test_job_page_shows_timeline_failure_and_where_alerts_went(serve: ServerFactory) -> None:
    server = await serve()
    status, html, _ = await server.get("/job?source=prod&id=f00d")
    assert status == 200
    timeline = html.split("Timeline")[1]
    assert timeline.index("CREATING</span> → ") < timeline.index("AUDITING</span> → ")
    assert "2026-12-01 09:01:00" in timeline and "2026-12-01 10:00:00" in timeline
    assert "Why it failed" in html and "MSS.0012" in html
    why = html.split("Why it failed")[1].split("Timeline")[0]
    assert "from audit-result" in why
    for line in ("003.wav: E07 背景噪音过大", "007.wav: E02 文本与语音不符", "011.wav: E07"):
        assert line in why
    assert "reviewer: re-record in a quiet room" in why
    assert '<b>ops</b> <span class="muted">rule all</span> — sent at 2026-12-01 10:00:00' in html
    assert "<b>lead</b>" in html and "dead" in html


async def test_events_page_filters_and_pages(serve: ServerFactory) -> None:
    server = await serve()
    _, everything, _ = await server.get("/events")
    assert everything.count('<span class="kind">transition</span>') == 3
    _, failed, _ = await server.get("/events?state=AUDIT_FAILED")
    assert failed.count('<span class="kind">transition</span>') == 1
    _, none, _ = await server.get("/events?kind=stuck")
    assert "No events match these filters." in none
    _, first, _ = await server.get("/events?limit=2")
    assert first.count('<span class="kind">') == 2
    older = re.search(r'href="/events\?([^"]*before=\d+[^"]*)">older', first)
    assert older is not None
    _, second, _ = await server.get("/events?" + older.group(1).replace("&amp;", "&"))
    assert second.count('<span class="kind">') == 1
    assert "« newest" in second
    _, window, _ = await server.get("/events?since=2026-12-01T09:30&until=2026-12-01T11:00")
    assert window.count('<span class="kind">') == 1 and "id=f00d" in window


async def test_unknown_batch_and_job_are_404_pages(serve: ServerFactory) -> None:
    server = await serve()
    status, html, _ = await server.get("/batch?source=prod&name=nope")
    assert status == 404 and "No such batch" in html
    status, html, _ = await server.get("/job?source=prod&id=nope")
    assert status == 404 and "No such job" in html
    status, body = await server.json("/api/v1/job?source=prod&id=nope")
    assert status == 404 and "nope" in body["error"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/batch?source=prod", "missing query parameter 'name'"),
        ("/events?kind=bogus", "kind: unknown event kind"),
        ("/events?limit=0", "limit: expected a whole number from 1 to 500"),
        ("/events?since=yesterday", "since: expected a time like"),
        ("/api/v1/jobs?after=nocolon", "after: expected SOURCE:JOB_ID"),
        ("/api/v1/events?batch=" + "x" * 201, "batch: at most 200 characters"),
    ],
)
async def test_bad_parameters_are_400_with_a_reason(
    serve: ServerFactory, path: str, message: str
) -> None:
    server = await serve()
    status, text, _ = await server.get(path)
    assert status == 400
    assert message in html.unescape(text)


# --- API -----------------------------------------------------------------------------------


async def test_api_sources_and_overview(serve: ServerFactory) -> None:
    server = await serve()
    status, body = await server.json("/api/v1/sources")
    assert status == 200
    prod, lab = body["sources"]
    assert (prod["name"], prod["health"], prod["jobs"]) == ("prod", "ok", 7)
    assert prod["by_state"]["SUCCEED"] == 3
    assert prod["last_ok_at"] == "2026-12-01T11:59:50+00:00"
    assert (lab["name"], lab["health"], lab["jobs"]) == ("lab", "starting", 0)
    _, overview = await server.json("/api/v1/overview")
    assert [b["name"] for b in overview["open_batches"]] == ["spring-sale", "<b>bold</b>"]
    assert overview["outbox"] == {"pending": 0, "held": 1, "dead": 1, "silenced": 0}


async def test_api_jobs_filters_and_pages_by_key(serve: ServerFactory) -> None:
    server = await serve()
    _, page1 = await server.json("/api/v1/jobs?limit=3")
    assert [j["job_id"] for j in page1["jobs"]] == ["a1", "a2", "a3"]
    _, page2 = await server.json(f"/api/v1/jobs?limit=3&after={page1['next']}")
    assert [j["job_id"] for j in page2["jobs"]] == ["f00d", "lone", "n1"]
    _, page3 = await server.json(f"/api/v1/jobs?limit=3&after={page2['next']}")
    assert [j["job_id"] for j in page3["jobs"]] == ["x55"] and page3["next"] is None
    _, failed = await server.json("/api/v1/jobs?state=AUDIT_FAILED")
    assert [j["job_id"] for j in failed["jobs"]] == ["f00d"]
    _, batch = await server.json("/api/v1/jobs?batch=spring-sale&source=prod")
    assert len(batch["jobs"]) == 4


async def test_api_batches_batch_events_outbox(serve: ServerFactory) -> None:
    server = await serve()
    _, batches = await server.json("/api/v1/batches")
    assert {b["name"] for b in batches["batches"]} == {"spring-sale", "<b>bold</b>", "done-batch"}
    _, open_only = await server.json("/api/v1/batches?open=1")
    assert {b["name"] for b in open_only["batches"]} == {"spring-sale", "<b>bold</b>"}
    _, batch = await server.json("/api/v1/batch?source=prod&name=spring-sale")
    assert (batch["batch"]["succeeded"], batch["batch"]["failed"]) == (2, 1)
    assert [j["job_id"] for j in batch["jobs"]] == ["f00d", "a3", "a1", "a2"]
    _, events = await server.json("/api/v1/events?job=f00d")
    assert [e["state"] for e in events["events"]] == ["AUDIT_FAILED", "AUDITING"]
    _, limited = await server.json("/api/v1/events?limit=1")
    assert limited["next_before"] == limited["events"][0]["id"]
    _, outbox = await server.json("/api/v1/outbox")
    assert [(a["channel"], a["status"]) for a in outbox["unsent"]] == [
        ("lead", "dead"),
        ("ops", "held"),
    ]


# --- safety --------------------------------------------------------------------------------


async def test_every_value_is_escaped_in_pages_and_api(serve: ServerFactory) -> None:
    server = await serve()
    for path in [*PAGES, *APIS]:
        _, text, _ = await server.get(path)
        assert XSS not in text, path
        assert "<b>bold</b>" not in text, path
    _, html, _ = await server.get("/job?source=prod&id=x55")
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    _, raw, _ = await server.get("/api/v1/job?source=prod&id=x55")
    assert "\\u003cscript\\u003e" in raw
    _, body = await server.json("/api/v1/job?source=prod&id=x55")
    assert body["job"]["voice_name"] == XSS  # the value itself is kept, only its text escaped


async def test_no_secret_phone_or_signed_link_on_any_page_or_api(serve: ServerFactory) -> None:
    server = await serve()
    for path in [*PAGES, *APIS, "/api/v1/jobs?batch=spring-sale"]:
        status, text, _ = await server.get(path)
        assert status == 200, path
        assert [leak for leak in LEAKS if leak in text] == [], path


@pytest.mark.parametrize("path", [*PAGES[:1], APIS[0], "/nope", "/static/app.css"])
async def test_security_headers_on_every_response(serve: ServerFactory, path: str) -> None:
    server = await serve()
    _, _, headers = await server.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]


async def test_pages_have_no_inline_script_or_style(serve: ServerFactory) -> None:
    server = await serve()
    for path in PAGES:
        _, html, _ = await server.get(path)
        assert re.findall(r"<script(?![^>]*\bsrc=)", html) == [], path
        assert " style=" not in html and "<style" not in html, path
        assert not re.search(r"<[^>]+\son\w+=", html), path  # no inline event handlers


async def test_pages_reference_nothing_outside_the_watcher(serve: ServerFactory) -> None:
    server = await serve()
    for path in PAGES:
        _, page, _ = await server.get(path)
        for target in re.findall(r'(?:src|href|action)="([^"]*)"', page):
            assert target.startswith(("/", "?")) and not target.startswith("//"), (path, target)
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page


def _size(path: str) -> int:
    return os.stat(path).st_size


def _digest(path: str) -> str:
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_nothing_but_get_is_accepted_and_the_file_is_unchanged(
    serve: ServerFactory, method: str
) -> None:
    server = await serve()
    with Store.open(server.config.storage) as store:
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = _digest(server.config.storage)
    for path in [*PAGES, *APIS]:
        async with server.session.request(method, server.base + path) as response:
            assert response.status == 405, (method, path)
    for path in [*PAGES, *APIS]:
        await server.get(path)
    assert _digest(server.config.storage) == before
    assert _size(server.config.storage + "-wal") == 0


async def test_static_assets_are_served_from_the_package(serve: ServerFactory) -> None:
    server = await serve()
    status, css, headers = await server.get("/static/app.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css") and "--succeed" in css
    status, js, headers = await server.get("/static/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert "replaceChildren" in js
    status, _, _ = await server.get("/static/../store.py")
    assert status == 404


# --- empty states --------------------------------------------------------------------------


async def test_empty_store_says_what_happens_next(serve: ServerFactory) -> None:
    server = await serve(fill=False)
    _, html, _ = await server.get("/")
    assert html.count("no jobs yet: first poll under way") == 2
    assert "No open batches." in html
    assert "No job is waiting" in html
    assert "No events yet: the first poll is a silent baseline" in html
    assert "No active silences." in html
    _, events, _ = await server.get("/events")
    assert "No events yet" in events
    status, body = await server.json("/api/v1/overview")
    assert status == 200 and body["open_batches"] == [] and body["events"] == []


async def test_failed_first_poll_says_when_the_next_one_is(serve: ServerFactory) -> None:
    from tests.web.conftest import NOW

    server = await serve(fill=False)
    from datetime import timedelta

    with Store.open(server.config.storage) as store:
        store.record_source_poll("prod", False, NOW - timedelta(seconds=18), "AK/SK rejected")
    _, html, _ = await server.get("/")
    assert "no jobs yet: first poll in 12s" in html
    assert "AK/SK rejected" in html and "failing" in html


# --- credentials ---------------------------------------------------------------------------


def _basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


AUTH = (
    f"  auth:\n    token: {TOKEN}\n    basic:\n      user: ops\n      password_hash: '{{hash}}'\n"
)


async def _auth_server(serve: ServerFactory) -> Any:
    return await serve(AUTH.format(hash=basic_hash()), listen="0.0.0.0:0")


@pytest.mark.parametrize("path", [*PAGES[:1], APIS[0], "/metrics", "/static/app.css"])
async def test_without_credentials_everything_but_probes_is_401(
    serve: ServerFactory, path: str
) -> None:
    server = await _auth_server(serve)
    status, text, headers = await server.get(path)
    assert status == 401
    assert headers.getall("WWW-Authenticate") == [
        'Bearer realm="metastudio-watcher"',
        'Basic realm="metastudio-watcher"',
    ]
    assert "prod" not in text
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong-token-1234567890"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Token {TOKEN}"},
        _basic("ops", "wrong password"),
        _basic("root", PASSWORD),
        {"Authorization": "Basic !!!notbase64"},
    ],
)
async def test_wrong_credentials_are_401(serve: ServerFactory, headers: dict[str, str]) -> None:
    server = await _auth_server(serve)
    status, _, _ = await server.get("/api/v1/sources", headers=headers)
    assert status == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {TOKEN}"},
        _basic("ops", PASSWORD),
        _basic("anyone", TOKEN),  # a browser prompt can carry the token as the password
    ],
)
async def test_valid_credentials_open_pages_api_and_metrics(
    serve: ServerFactory, headers: dict[str, str]
) -> None:
    server = await _auth_server(serve)
    for path in ["/", "/api/v1/sources", "/metrics", "/static/app.js"]:
        status, _, _ = await server.get(path, headers=headers)
        assert status == 200, path
    # Remembered after the first scrypt check, and still right the second time.
    assert (await server.get("/", headers=headers))[0] == 200


async def test_probes_stay_open_with_auth(serve: ServerFactory) -> None:
    server = await _auth_server(serve)
    assert (await server.get("/healthz"))[0] == 200
    assert (await server.get("/readyz"))[0] == 200


async def test_api_batches_pages_by_offset(serve: ServerFactory) -> None:
    server = await serve()
    _, first = await server.json("/api/v1/batches?limit=2")
    assert (len(first["batches"]), first["total"], first["next_offset"]) == (2, 3, 2)
    _, rest = await server.json("/api/v1/batches?limit=2&offset=2")
    assert (len(rest["batches"]), rest["next_offset"]) == (1, None)
    names = {b["name"] for b in first["batches"] + rest["batches"]}
    assert names == {"spring-sale", "<b>bold</b>", "done-batch"}


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "192.168.1.9:9464"])
async def test_without_auth_a_foreign_host_header_is_refused(
    serve: ServerFactory, host: str
) -> None:
    # DNS rebinding: a web page elsewhere reaching 127.0.0.1 sends its own host name.
    server = await serve()
    for path in ["/", "/api/v1/overview", "/metrics"]:
        status, text, _ = await server.get(path, headers={"Host": host})
        assert status == 403, path
        assert "prod" not in text
    assert (await server.get("/healthz", headers={"Host": host}))[0] == 200


@pytest.mark.parametrize("host", ["localhost:9464", "127.0.0.1", "[::1]:9464"])
async def test_loopback_host_headers_are_served(serve: ServerFactory, host: str) -> None:
    server = await serve()
    assert (await server.get("/", headers={"Host": host}))[0] == 200
