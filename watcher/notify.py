"""Delivery through apprise: one apprise object per channel, sends bounded in time and threads.

The only module that imports apprise, and only on first use: apprise with its plugins, requests
and oauthlib costs about 0.25 s of CPU, which a `once` with nothing to send must not pay.
Apprise never retries here (the outbox does), and no URL leaves this module unmasked: errors
and logs carry `mask_url` forms only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import structlog

from watcher.errors import DeliveryError
from watcher.model import BodyFormat, NotifyType, Secret

log = structlog.get_logger()

# Generic webhooks put their secret in the path, which apprise's privacy mode prints as is.
_PATH_SECRET_SCHEMES = frozenset({"json", "jsons", "xml", "xmls", "form", "forms"})
# Query arguments whose values are credentials whatever the service: `+` headers, `-` params.
_SECRET_ARG = re.compile(
    r"^[+\-:]|token|secret|pass|key|auth|sig|session|cookie|credential", re.IGNORECASE
)
_MIN_SECRET_LEN = 4  # shorter URL parts are too common to scrub from error texts
_MAX_DETAIL = 300
_GUARD_GRACE = 1.0  # seconds beyond the socket timeouts before a send is abandoned


@dataclass(frozen=True, slots=True)
class SendResult:
    """How one send went; `error` is safe to log and store (no URL secrets)."""

    ok: bool
    error: str | None = None


# --- URL checks and masking ----------------------------------------------------------------


def check_url(url: str) -> str | None:
    """None when apprise can use `url`, else a short problem (without the URL's secrets).

    apprise logs what it cannot parse, URL included, and this runs while the config is still
    being read, before the log redactor knows the secrets: its logger is muted meanwhile.
    """
    with _apprise_muted():
        return _check_url(url)


@contextlib.contextmanager
def _apprise_muted() -> Iterator[None]:
    logger = logging.getLogger("apprise")
    before = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = before


def url_secrets(url: str) -> set[str]:
    """The parts of a channel URL to mask in every log line: credentials and token-like
    path, host and query parts (apprise prints them in clear at DEBUG)."""
    split = urlsplit(url.replace("/#", "/%23"))
    out: set[str] = set()
    if "@" in split.netloc:
        userinfo = split.netloc.rpartition("@")[0]
        out.update(p for p in userinfo.split(":", 1) if p)
        out.add(userinfo)
    host = split.netloc.rpartition("@")[2]
    candidates = [host, *split.path.split("/")]
    candidates += [v for _, v in parse_qsl(split.query, keep_blank_values=True)]
    for key, value in parse_qsl(split.query, keep_blank_values=True):
        if _SECRET_KEY.search(key):
            out.add(value)
    out.update(c for c in candidates if _looks_like_token(unquote(c)))
    out.discard("")
    return out | {unquote(p) for p in out} | {quote(p, safe="") for p in out}


_SECRET_KEY = re.compile(r"token|key|secret|pass|auth|sig", re.IGNORECASE)


def _looks_like_token(text: str) -> bool:
    # Tokens mix letters and digits (T0ABCDEFG, a 24-char Slack secret); host names and
    # ordinary path words (hooks, metastudio, example.com) do not, or are short.
    bare = text.split(":")[0]
    if len(bare) >= 20 and "." not in bare:
        return True
    return (
        len(bare) >= 8
        and any(c.isdigit() for c in bare)
        and any(c.isalpha() for c in bare)
        and "." not in bare
    )


def _check_url(url: str) -> str | None:
    import apprise

    scheme = _scheme(url)
    if scheme is None:
        return "not an apprise URL: expected scheme://…"
    url_to_dict: Any = apprise.plugins.url_to_dict  # untyped in apprise
    if url_to_dict(url, secure_logging=True) is None:
        return f"{scheme}:// is not a service apprise knows, or the URL is malformed"
    try:
        plugin = apprise.Apprise.instantiate(url, asset=_asset(), suppress_exceptions=False)
    except Exception as err:  # plugins raise TypeError, ValueError, their own exceptions
        problem = _Scrubber([url]).clean(str(err)) or type(err).__name__
        return f"invalid {scheme}:// URL: {problem}"
    if plugin is None:
        return f"{scheme}:// is disabled on this system (a dependency may be missing)"
    return None


def mask_url(url: str) -> str:
    """The URL for display: passwords, tokens and webhook path secrets masked."""
    plugin: Any = instantiate(url, _asset())
    shown = str(plugin.url(privacy=True)) if plugin is not None else url
    masked = _mask_leftovers(shown, mask_userinfo=plugin is None, mask_path=plugin is None)
    return _only_written_args(masked, url)


def _only_written_args(shown: str, written: str) -> str:
    """Drop the query arguments apprise adds on its own (`method=POST&overflow=upstream&
    retry=0…`): the operator should recognise the URL they wrote, not apprise's defaults."""
    base, sep, query = shown.partition("?")
    if not sep:
        return shown
    own = {key.lower() for key, _ in parse_qsl(urlsplit(written).query, keep_blank_values=True)}
    kept = [part for part in query.split("&") if unquote(part.partition("=")[0]).lower() in own]
    return f"{base}?{'&'.join(kept)}" if kept else base


def _mask_leftovers(url: str, *, mask_userinfo: bool, mask_path: bool) -> str:
    """Mask what apprise's privacy form leaves: webhook paths, header and key arguments."""
    scheme = _scheme(url)
    if scheme is None:
        return "****"
    rest = url[len(scheme) + 3 :]
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    path, _, query = tail.partition("?")
    path, _, fragment = path.partition("#")
    if mask_userinfo:
        user, at, host = netloc.rpartition("@")
        if not _looks_like_host(host):
            host = _mask(host)  # slack://TOKEN/… and the like carry a token where a host goes
        netloc = (("****:****@" if ":" in user else "****@") if at else "") + host
    if mask_path or scheme in _PATH_SECRET_SCHEMES:
        path = "/".join(_mask(unquote(part)) for part in path.split("/"))
    args = [
        (key, _mask(value) if _SECRET_ARG.search(key) or mask_path else value)
        for key, value in parse_qsl(query, keep_blank_values=True)
    ]
    out = f"{scheme}://{netloc}{path}"
    if fragment:
        out += "#****"
    if args:
        out += "?" + "&".join(f"{quote(k, safe='+-:')}={quote(v, safe='.*')}" for k, v in args)
    return out


def _mask(value: str) -> str:
    """apprise's style: first and last character of a long token, stars for short ones."""
    if not value:
        return value
    if "..." in value or set(value) == {"*"}:
        return value  # apprise masked it already
    return f"{value[0]}...{value[-1]}" if len(value) >= 8 else "****"


def _looks_like_host(text: str) -> bool:
    name = text.rpartition(":")[0] if text.count(":") == 1 else text
    return name == "localhost" or "." in name or name.startswith("[")


def _scheme(url: str) -> str | None:
    match = re.match(r"^\s*([a-zA-Z][a-zA-Z0-9+.\-]*)://", url)
    return match.group(1).lower() if match else None


class _Scrubber:
    """Removes every credential-looking part of some URLs from a text (errors, log lines)."""

    def __init__(self, urls: Iterable[str]) -> None:
        parts: set[str] = set()
        for url in urls:
            parts.add(url)
            parts.update(_url_parts(url))
        self._parts = sorted((p for p in parts if len(p) >= _MIN_SECRET_LEN), key=len, reverse=True)

    def clean(self, text: str) -> str:
        for part in self._parts:
            text = text.replace(part, "****")
        return text[:_MAX_DETAIL]


def _url_parts(url: str) -> set[str]:
    """Userinfo, path segments, query values and fragment of `url`, raw and decoded."""
    try:
        split = urlsplit(url.replace("/#", "/%23"))
    except ValueError:
        return set()
    raw: set[str] = set()
    if "@" in split.netloc:
        userinfo = split.netloc.rpartition("@")[0]
        raw.update(userinfo.split(":", 1))
        raw.add(userinfo)
    raw.update(part for part in split.path.split("/") if part)
    raw.update(value for _, value in parse_qsl(split.query, keep_blank_values=True))
    if split.fragment:
        raw.add(split.fragment)
    # Slack-style hosts are tokens too (slack://T0/B0/XXX puts T0 in the host).
    if split.scheme.lower() not in ("json", "jsons", "xml", "xmls", "form", "forms", "mailto"):
        raw.add(split.netloc.rpartition("@")[2])
    return raw | {unquote(part) for part in raw} | {quote(part, safe="") for part in raw}


# --- sending -------------------------------------------------------------------------------


# apprise imports all of its ~190 plugins the first time it parses a URL (0.2-0.3 s of CPU
# and 11 MB, measured): a `once` from cron with one alert to send paid that on every run. For
# the services this product is used with, the one plugin module is imported instead; any other
# scheme, or a plugin that is not where this table says, takes apprise's own path.
# tests/test_notify.py holds the table against what apprise itself maps.
PLUGIN_MODULES: Mapping[str, str] = {
    "json": "custom_json",
    "jsons": "custom_json",
    "form": "custom_form",
    "forms": "custom_form",
    "xml": "custom_xml",
    "xmls": "custom_xml",
    "mailto": "email",
    "mailtos": "email",
    "slack": "slack",
    "dingtalk": "dingtalk",
    "wecombot": "wecombot",
    "feishu": "feishu",
    "lark": "lark",
    "discord": "discord",
    "tgram": "telegram",
    "ntfy": "ntfy",
    "ntfys": "ntfy",
    "pagerduty": "pagerduty",
    "opsgenie": "opsgenie",
    "mmost": "mattermost",
    "mmosts": "mattermost",
    "gchat": "google_chat",
    "workflow": "workflows",
    "workflows": "workflows",
}


def plugin_class(scheme: str) -> Any:
    """The plugin class for `scheme` from its one module, or None (then apprise's own path)."""
    module_name = PLUGIN_MODULES.get(scheme)
    if module_name is None:
        return None
    try:
        module = importlib.import_module(f"apprise.plugins.{module_name}")
    except ImportError:
        return None
    for value in vars(module).values():
        if not isinstance(value, type):
            continue
        schemas = getattr(value, "schemas", None)  # as apprise's own manager calls it
        if (
            (value.__module__ + ".").startswith(module.__name__ + ".")  # email: in .base
            and callable(schemas)
            and scheme in schemas(value)
        ):
            return value if getattr(value, "enabled", True) else None
    return None


def instantiate(url: str, asset: Any) -> Any:
    """What `apprise.Apprise.instantiate(url, asset=asset)` returns, without importing every
    plugin when the scheme's own one will do."""
    import apprise

    scheme = _scheme(url)
    found = plugin_class(scheme) if scheme is not None else None
    if found is None:
        return apprise.Apprise.instantiate(url, asset=asset)
    # As apprise.plugins.url_to_dict and Apprise.instantiate do it for one plugin.
    results = found.parse_url(url.replace("/#", "/%23"))
    if not results:
        return None
    results["tag"] = set()
    results["asset"] = asset
    try:
        return found(**results)
    except Exception:  # apprise's own instantiate turns a plugin's refusal into None
        return None


def _asset() -> Any:
    import apprise

    return apprise.AppriseAsset(
        # Services of one channel go one after another in the calling thread (our executor),
        # never in apprise's own shared pool.
        async_mode=False,
        # 0: no apprise deadline, so apprise does not move the call to its pool; our
        # wait_for and the socket timeouts bound it instead.
        service_timeout=0,
        default_service_retry=0,
        storage_mode="memory",
        secure_logging=True,
    )


@dataclass(frozen=True, slots=True)
class _Channel:
    name: str
    apprise: Any  # apprise.Apprise
    masked: tuple[str, ...]
    scrubber: _Scrubber


def _load_service(url: str, asset: Any, send_timeout: float) -> Any:
    """One apprise service set up for the outbox: no retries, bounded sockets, split overflow."""
    import apprise

    plugin = instantiate(url, asset)
    if plugin is None:
        return None
    # The outbox owns retries: an apprise retry would be invisible to it and double-count.
    plugin.retry = 0
    # send_timeout is the send timeout: a receiver may take up to that long to answer
    # (apprise's 4 s read default would fail, and so re-send, every slower webhook). A URL's
    # own shorter `rto`/`cto` stands; a longer one is capped. A hung endpoint frees its
    # worker thread once a socket timeout fires.
    lowered = url.lower()
    read = float(plugin.socket_read_timeout) if "rto=" in lowered else send_timeout
    plugin.socket_read_timeout = min(read, send_timeout)
    plugin.socket_connect_timeout = min(float(plugin.socket_connect_timeout), send_timeout)
    if "overflow=" not in url.lower():
        # Small-limit services (SMS, chat) get several messages rather than a cut one.
        plugin.overflow_mode = apprise.OverflowMode.SPLIT
    return plugin


def _load_channel(name: str, urls: Sequence[str], asset: Any, send_timeout: float) -> _Channel:
    """One channel's apprise object with every URL's service; DeliveryError if one is refused."""
    import apprise

    apprise_obj = apprise.Apprise(asset=asset)
    for url in urls:
        plugin = _load_service(url, asset, send_timeout)
        if plugin is None or not apprise_obj.add(plugin):
            problem = check_url(url) or "apprise rejected it"
            raise DeliveryError(f"channel {name!r}: {mask_url(url)}: {problem}")
    return _Channel(
        name=name,
        apprise=apprise_obj,
        masked=tuple(mask_url(url) for url in urls),
        scrubber=_Scrubber(urls),
    )


class Notifier:
    """Sends rendered alerts to named channels; one call is one attempt, never retried here.

    `deferred`: a channel's apprise services are set up on its first send (or `masked_urls`)
    rather than here, so a process that sends nothing never imports apprise. A refused URL
    then fails that channel's sends (the alerts stay queued) instead of the construction.
    """

    def __init__(
        self,
        channels: Mapping[str, Sequence[Secret]],
        *,
        send_timeout: float = 30.0,
        max_workers: int = 4,
        deferred: bool = False,
    ) -> None:
        if send_timeout <= 0:
            raise ValueError("send_timeout must be positive")
        self._send_timeout = send_timeout
        # The sockets end a slow send first (connect, then up to send_timeout for the
        # answer); this outer guard only catches a thread stuck elsewhere. It must outlast
        # them: a send that succeeds after we called it failed would be sent again.
        self._guard = 2 * send_timeout + _GUARD_GRACE
        self._urls: dict[str, tuple[str, ...]] = {}
        for name, secrets in channels.items():
            # apprise and urllib3 print URLs and token paths at DEBUG: the composition root
            # (watcher.app.Root.notifier) registers their url_secrets with the log redactor.
            urls = tuple(secret.reveal() for secret in secrets)
            if not urls:
                raise DeliveryError(f"channel {name!r} has no URLs; give it at least one")
            self._urls[name] = urls
        self._channels: dict[str, _Channel] = {}
        self._refused: dict[str, DeliveryError] = {}  # deferred channels apprise refused
        self._asset: Any = None
        if not deferred:
            for name in self._urls:
                self._channel(name)
        # Our own bounded pool: a send that hangs holds one of these threads until its socket
        # timeout, never the event loop, and never more than max_workers threads in total.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="notify"
        )
        self._closed = False

    def _channel(self, name: str) -> _Channel:
        """The channel's apprise services, set up on first use; raises DeliveryError (naming
        the channel and its masked URL) if apprise refuses one of its URLs."""
        ready = self._channels.get(name)
        if ready is not None:
            return ready
        refused = self._refused.get(name)
        if refused is not None:
            raise refused
        if self._asset is None:
            self._asset = _asset()
        urls = self._urls[name]
        try:
            ready = _load_channel(name, urls, self._asset, self._send_timeout)
        except DeliveryError as err:
            self._refused[name] = err
            raise
        self._channels[name] = ready
        log.debug("channel_loaded", channel=name, urls=list(ready.masked))
        return ready

    @property
    def guard_timeout(self) -> float:
        """The longest one send can take: how long a reload waits for sends in flight."""
        return self._guard

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self._urls)

    def masked_urls(self, channel: str) -> tuple[str, ...]:
        """The channel's URLs for display (`check-config`, `status`)."""
        return self._channel(channel).masked

    async def send(
        self,
        channel: str,
        title: str,
        body: str,
        notify_type: NotifyType,
        body_format: BodyFormat,
    ) -> SendResult:
        """Deliver one message to every URL of `channel`; ok only if all of them accepted it.

        Returns within connect + `send_timeout` (the socket timeouts), at worst within
        `guard_timeout`; only a send abandoned by that guard may still complete in its thread.
        """
        if channel not in self._urls:
            return SendResult(False, f"channel {channel!r} is not configured")
        try:
            target = self._channel(channel)
        except DeliveryError as err:
            return SendResult(False, str(err))
        import apprise

        call = functools.partial(
            target.apprise.notify,
            body=body,
            title=title,
            notify_type=apprise.NotifyType(notify_type.value),
            body_format=apprise.NotifyFormat(body_format.value),
        )
        loop = asyncio.get_running_loop()
        try:
            outcome = await asyncio.wait_for(
                loop.run_in_executor(self._executor, call), self._guard
            )
        except TimeoutError:
            return self._failed(target, f"no answer within {self._guard:g}s")
        except Exception as err:
            if self._closed:
                return SendResult(False, f"channel {channel!r}: notifier is closed")
            return self._failed(target, f"delivery crashed: {target.scrubber.clean(str(err))}")
        try:
            if outcome:
                return SendResult(True, None)
            details = _failure_details(outcome, target.scrubber)
        finally:
            outcome.close()  # releases the captured logs
        return self._failed(target, "delivery failed" + (f": {details}" if details else ""))

    def _failed(self, target: _Channel, problem: str) -> SendResult:
        error = f"channel {target.name!r}: {problem}"
        log.debug("notify_failed", channel=target.name, error=error)
        return SendResult(False, error)

    def close(self) -> None:
        """Stop taking sends; threads stuck in a send end with their socket timeout."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)


def _failure_details(outcome: Any, scrubber: _Scrubber) -> str:
    """The last warning of each failed service, e.g. `JSON: … error=500.`, scrubbed."""
    details = []
    for service in outcome:
        if service:
            continue
        status = getattr(getattr(service, "status", None), "name", "FAILURE").lower()
        warnings = [
            entry.message
            for entry in service.logs()
            if entry.level in ("WARNING", "ERROR", "CRITICAL")
        ]
        text = warnings[-1] if warnings else status
        details.append(f"{service.name}: {scrubber.clean(str(text))}")
    return "; ".join(details)[:_MAX_DETAIL]
