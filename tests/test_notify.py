"""The apprise adapter against real receivers on loopback: a webhook and an SMTP server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.receivers import SmtpReceiver, WebhookReceiver, json_url, mailto_url
from watcher.errors import DeliveryError
from watcher.model import BodyFormat, NotifyType, Secret
from watcher.notify import (
    PLUGIN_MODULES,
    Notifier,
    SendResult,
    check_url,
    instantiate,
    mask_url,
    plugin_class,
)

SLACK = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#ops"
SLACK_TOKENS = ("T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ")


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    with SmtpReceiver() as receiver:
        yield receiver


def notifier(send_timeout: float = 5.0, **channels: str) -> Notifier:
    return Notifier(
        {name: [Secret(url)] for name, url in channels.items()}, send_timeout=send_timeout
    )


async def send(n: Notifier, channel: str = "ops", title: str = "Job j1 failed") -> SendResult:
    return await n.send(channel, title, "reason: noise", NotifyType.FAILURE, BodyFormat.TEXT)


# --- delivery ------------------------------------------------------------------------------


async def test_json_send_arrives_with_title_body_and_type(webhook: WebhookReceiver) -> None:
    n = notifier(ops=json_url(webhook.base_url, "/hook/TOKEN123"))
    try:
        result = await send(n)
    finally:
        n.close()

    assert result == SendResult(True, None)
    (post,) = webhook.received
    assert (post["title"], post["message"], post["type"]) == (
        "Job j1 failed",
        "reason: noise",
        "failure",
    )
    assert webhook.requests[0].path == "/hook/TOKEN123"


async def test_mail_arrives_at_the_smtp_server(smtp: SmtpReceiver) -> None:
    n = notifier(mail=mailto_url(smtp.host, smtp.port, "ops@example.com"))
    try:
        result = await n.send(
            "mail", "Job j1 succeeded", "all good", NotifyType.SUCCESS, BodyFormat.TEXT
        )
    finally:
        n.close()

    assert result.ok, result.error
    (message,) = await smtp.wait_for(1)
    assert message["Subject"] == "Job j1 succeeded"
    assert message["To"] == "ops@example.com"
    assert message["From"].addresses[0].addr_spec == "watcher@example.com"
    plain = message.get_body(("plain",))
    assert plain is not None
    assert "all good" in plain.get_content()


async def test_server_error_fails_once_without_apprise_retrying(webhook: WebhookReceiver) -> None:
    # retry=3 in the URL is overridden: the outbox owns retries.
    n = notifier(ops=json_url(webhook.base_url, "/hook/TOKEN123") + "?retry=3")
    webhook.fail_next(5, status=500)
    try:
        result = await send(n)
    finally:
        n.close()

    assert result.ok is False
    assert result.error is not None
    assert result.error.startswith("channel 'ops': delivery failed")
    assert "500" in result.error
    assert "TOKEN123" not in result.error
    assert len(webhook.requests) == 1
    assert webhook.received == []


async def test_refused_connection_is_a_safe_failure(webhook: WebhookReceiver) -> None:
    n = notifier(ops=json_url(webhook.base_url, "/hook/TOKEN123"))
    webhook.refuse = True
    try:
        result = await send(n)
    finally:
        n.close()

    assert result.ok is False
    assert result.error is not None
    assert "TOKEN123" not in result.error


async def test_hanging_receiver_costs_a_thread_not_the_event_loop(
    webhook: WebhookReceiver,
) -> None:
    n = notifier(send_timeout=0.5, ops=json_url(webhook.base_url))
    webhook.hang_next(1, seconds=3.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        result = await send(n)
    finally:
        elapsed = time.monotonic() - started
        ticking.cancel()
        n.close()

    assert result.ok is False
    assert 0.3 < elapsed < 1.5
    assert ticks >= 20  # the loop kept running the whole time
    # After the hang, the next send goes through normally.
    n2 = notifier(send_timeout=0.5, ops=json_url(webhook.base_url))
    try:
        assert (await send(n2)).ok
    finally:
        n2.close()


async def test_channels_are_independent(webhook: WebhookReceiver) -> None:
    async with WebhookReceiver() as broken:
        broken.fail_next(1)
        n = notifier(
            ops=json_url(webhook.base_url, "/ops"), pager=json_url(broken.base_url, "/pager")
        )
        try:
            pager, ops = await asyncio.gather(send(n, "pager"), send(n, "ops"))
        finally:
            n.close()

    assert pager.ok is False
    assert pager.error is not None
    assert pager.error.startswith("channel 'pager'")
    assert ops == SendResult(True, None)
    assert [r.path for r in webhook.requests] == ["/ops"]
    assert [r.path for r in broken.requests] == ["/pager"]


async def test_channel_with_two_urls_sends_to_both(webhook: WebhookReceiver) -> None:
    n = Notifier(
        {
            "ops": [
                Secret(json_url(webhook.base_url, "/a")),
                Secret(json_url(webhook.base_url, "/b")),
            ]
        }
    )
    try:
        assert (await send(n)).ok
    finally:
        n.close()
    assert sorted(r.path for r in webhook.requests) == ["/a", "/b"]


async def test_unknown_channel_and_closed_notifier_fail_softly(webhook: WebhookReceiver) -> None:
    n = notifier(ops=json_url(webhook.base_url))

    assert await send(n, "nope") == SendResult(False, "channel 'nope' is not configured")
    n.close()
    assert await send(n) == SendResult(False, "channel 'ops': notifier is closed")
    assert webhook.requests == []


def test_bad_url_fails_at_construction_naming_channel_without_secrets() -> None:
    with pytest.raises(DeliveryError) as info:
        Notifier({"ops": [Secret("json://localhost/ok")], "pager": [Secret("bogus://x/SECRET99")]})

    assert "'pager'" in str(info.value)
    assert "SECRET99" not in str(info.value)


async def test_a_deferred_notifier_refuses_a_bad_url_at_its_first_send(
    webhook: WebhookReceiver,
) -> None:
    ops = json_url(webhook.base_url)
    n = Notifier({"ops": [Secret(ops)], "pager": [Secret("bogus://x/SECRET99")]}, deferred=True)
    try:
        assert n.channels == ("ops", "pager")
        assert n._channels == {}  # nothing set up before a send
        refused = await send(n, "pager")
        assert await send(n, "pager") == refused  # refused again, the same way
        assert await send(n) == SendResult(True, None)
        with pytest.raises(DeliveryError, match="'pager'"):
            n.masked_urls("pager")
        assert n.masked_urls("ops") == (mask_url(ops),)
    finally:
        n.close()

    assert not refused.ok and refused.error is not None
    assert refused.error.startswith("channel 'pager': bogus://")
    assert "is not a service apprise knows" in refused.error
    assert "SECRET99" not in refused.error
    assert len(webhook.received) == 1


def test_a_deferred_notifier_still_refuses_a_channel_without_urls() -> None:
    with pytest.raises(DeliveryError, match="'ops' has no URLs"):
        Notifier({"ops": []}, deferred=True)


def test_channel_without_urls_is_refused() -> None:
    with pytest.raises(DeliveryError, match="'ops' has no URLs"):
        Notifier({"ops": []})


def test_services_get_bounded_sockets_no_retry_and_split_overflow() -> None:
    n = Notifier(
        {
            "ops": [Secret("json://localhost/hook?retry=5&rto=120&cto=60")],
            "sms": [Secret("json://localhost/sms?overflow=truncate")],
        },
        send_timeout=7,
    )
    try:
        (ops,) = n._channels["ops"].apprise
        (sms,) = n._channels["sms"].apprise
    finally:
        n.close()

    assert (ops.retry, ops.socket_connect_timeout, ops.socket_read_timeout) == (0, 7, 7)
    assert ops.overflow_mode == "split"
    assert "cto=7" in ops.url() and "rto=7" in ops.url()
    assert sms.overflow_mode == "truncate"  # an explicit choice in the URL wins
    # send_timeout is the read timeout, not apprise's 4 s default; connect keeps its 4 s.
    assert (sms.socket_connect_timeout, sms.socket_read_timeout) == (4, 7)


async def test_a_webhook_slower_than_apprise_default_is_delivered_once(
    webhook: WebhookReceiver,
) -> None:
    # 6 s to answer, send_timeout 10 s: apprise's own 4 s read timeout would fail it, and the
    # outbox would send it again although it had arrived.
    n = notifier(send_timeout=10.0, ops=json_url(webhook.base_url))
    webhook.hang_next(1, seconds=6.0)
    started = time.monotonic()
    try:
        result = await send(n)
    finally:
        n.close()

    assert result.ok, result.error
    assert time.monotonic() - started >= 6.0
    assert len(webhook.requests) == 1
    assert [r.answered for r in webhook.requests] == [200]
    assert len(webhook.received) == 1


# --- URL checks and masking ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "json://localhost:8080/hook",
        SLACK,
        "https://hooks.slack.com/services/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",
        "mailto://user:pass@example.com?to=ops%40example.com",
        "tgram://123456789:ABCDEFG/12345",
    ],
)
def test_check_url_accepts_what_apprise_accepts(url: str) -> None:
    assert check_url(url) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("not a url", "not an apprise URL"),
        ("bogus://host/SECRETPATH", "bogus:// is not a service apprise knows"),
        ("slack://T1JJ3T3L2/A1BRTD4JD/", "invalid slack:// URL"),
        ("mailto://user:supersecret@example.com?mode=nonsense", "invalid mailto:// URL"),
    ],
)
def test_check_url_explains_without_secrets(url: str, problem: str) -> None:
    found = check_url(url)

    assert found is not None
    assert problem in found
    for secret in ("SECRETPATH", "T1JJ3T3L2", "A1BRTD4JD", "supersecret"):
        assert secret not in found


def test_mask_url_hides_the_token_in_a_json_path() -> None:
    masked = mask_url(
        "json://hooks.example.com/api/TOKEN1234567890?+Authorization=Bearer%20abcdef&-key=qwerty"
    )

    assert masked.startswith("json://hooks.example.com/")
    for secret in ("TOKEN1234567890", "abcdef", "qwerty"):
        assert secret not in masked


def test_mask_url_hides_slack_tokens() -> None:
    for url in (SLACK, "slack://xoxb-1234-1234-abc124abc124/#general"):
        masked = mask_url(url)
        assert masked.startswith("slack://")
        for secret in (*SLACK_TOKENS, "xoxb-1234-1234-abc124abc124"):
            assert secret not in masked


def test_mask_url_hides_the_mail_password() -> None:
    masked = mask_url("mailto://user:supersecret@example.com?to=ops%40example.com")

    assert "supersecret" not in masked
    assert "example.com" in masked


def test_mask_url_hides_secrets_of_urls_apprise_rejects() -> None:
    masked = mask_url("bogus://user:hunter22@example.com/PATHTOKEN99?token=abcdef")

    assert masked.startswith("bogus://")
    for secret in ("hunter22", "PATHTOKEN99", "abcdef"):
        assert secret not in masked


def test_the_one_plugin_table_matches_what_apprise_itself_maps() -> None:
    """Each scheme watcher.notify loads from one module is the scheme apprise maps to that
    module's class once it has loaded all of its plugins."""
    from apprise.manager_plugins import NotificationManager

    manager = NotificationManager()
    for scheme, module in PLUGIN_MODULES.items():
        plugin = manager[scheme]
        assert (plugin.__module__ + ".").startswith(f"apprise.plugins.{module}."), scheme
        assert plugin_class(scheme) is plugin, scheme


@pytest.mark.parametrize(
    "url",
    [
        "json://localhost:8080/hook/T0ken1234?method=POST",
        "forms://user:pw@example.com/path",
        "xml://localhost/x",
        "mailto://user:pass@example.com?to=ops%40example.com",
        SLACK,
        "dingtalk://SeCrEtToKeN1/",
        "wecombot://BoTkEy12345",
        "feishu://TOKEN123456",
        "tgram://123456789:ABCDEFG/12345",
        "ntfys://ntfy.example.com/topic",
        "https://hooks.slack.com/services/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",
        "slack://T1JJ3T3L2/A1BRTD4JD/",  # refused by the plugin: None both ways
    ],
)
def test_instantiate_gives_what_apprise_gives(url: str) -> None:
    import apprise

    asset = apprise.AppriseAsset(storage_mode="memory")
    ours = instantiate(url, asset)
    theirs = apprise.Apprise.instantiate(url, asset=asset)
    assert type(ours) is type(theirs)
    if theirs is not None:
        assert ours.url(privacy=True) == theirs.url(privacy=True)
        assert ours.url() == theirs.url()
