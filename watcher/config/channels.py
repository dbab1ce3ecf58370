"""The `channels:` section: apprise URLs (secrets, `${VAR}`s percent-encoded where they land)
and each channel's policy (max_per_minute, quiet_hours in a timezone).
"""

from __future__ import annotations

import re
from datetime import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from watcher.config.expansion import URL_SCHEME, Text, encodings
from watcher.config.reader import Reader
from watcher.config.yaml_loader import Map, at_key, kind
from watcher.model import ChannelPolicy, QuietHours, Secret

CHANNEL_KEYS = ("urls", "max_per_minute", "quiet_hours", "timezone")
_CHANNEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_QUIET_HOURS = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)-([01]?\d|2[0-3]):([0-5]\d)")
# Channel schemes apprise dropped, and what to use instead (apprise's plugins/workflows.py).
_REMOVED_SCHEMES = {
    "msteams": (
        "msteams:// (Office 365 connector webhooks) was removed in apprise 2; Microsoft Teams "
        "now takes workflows://HOST/WORKFLOW/SIGNATURE (a Teams Workflows webhook)"
    ),
}


class ChannelsSection(Reader):
    """Reads `channels:`; the long form's policies go to `channel_policies`."""

    def channels(self, value: Any, path: str) -> dict[str, tuple[Secret, ...]]:
        if not isinstance(value, Map):
            self.fail(
                path, f"expected a mapping of channel name to apprise URLs (got {kind(value)})"
            )
        out: dict[str, tuple[Secret, ...]] = {}
        for name, urls in value.items():
            channel_path = at_key(path, name)
            if not _CHANNEL_NAME.fullmatch(name):
                self.fail(
                    channel_path,
                    "a channel name must be a simple identifier (letters, digits, '_', '-')",
                )
            urls_path = channel_path
            if isinstance(urls, Map):
                # Long form: {urls: [...], max_per_minute: N, quiet_hours: "22:00-07:00", ...}
                settings = self.mapping(urls, channel_path, "channel settings", CHANNEL_KEYS)
                urls_path = at_key(channel_path, "urls")
                urls = self.require(settings, channel_path, "urls")
                self.channel_policies[name] = self.channel_policy(settings, channel_path)
            items = self.texts(urls, urls_path, "an apprise URL or a list of them")
            out[name] = tuple(self.channel_url(text, item_path) for text, item_path in items)
        return out

    def channel_policy(self, settings: Map, path: str) -> ChannelPolicy:
        # Only the keys the file gives: ChannelPolicy and QuietHours state the defaults.
        given: dict[str, Any] = {}
        if "max_per_minute" in settings:
            given["max_per_minute"] = int(
                self.positive_number(
                    settings["max_per_minute"], at_key(path, "max_per_minute"), integer=True
                )
            )
        zone: dict[str, str] = {}
        if "timezone" in settings:
            zone_path = at_key(path, "timezone")
            name = self.nonempty(settings["timezone"], zone_path).value
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                self.fail(
                    zone_path, f"unknown timezone {name!r}: expected a name like Asia/Shanghai"
                )
            zone["timezone"] = name
        if "quiet_hours" in settings:
            quiet_path = at_key(path, "quiet_hours")
            text = self.nonempty(settings["quiet_hours"], quiet_path).value
            match = _QUIET_HOURS.fullmatch(text.replace(" ", ""))
            if match is None:
                self.fail(quiet_path, f"expected a daily window like 22:00-07:00 (got {text!r})")
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            if (h1, m1) == (h2, m2):
                self.fail(quiet_path, "the window is empty: start and end are the same time")
            given["quiet_hours"] = QuietHours(time(h1, m1), time(h2, m2), **zone)
        elif "timezone" in settings:
            self.fail(at_key(path, "timezone"), "timezone only applies to quiet_hours")
        return ChannelPolicy(**given)

    def channel_url(self, text: Text, path: str) -> Secret:
        text = self.expand(text.raw, path, in_url=True)
        self.secret(text.value)
        for value in text.substituted:
            # Logs may show the encoded form (apprise prints URLs): mask that too.
            for form in encodings(value):
                self.secret(form)
        url = text.value
        scheme = URL_SCHEME.match(url)
        shown = f"{scheme.group(1)}://…" if scheme else "…"
        problem: str | None = None if scheme else "expected scheme://… (an apprise URL)"
        if problem is None and self.validate_url is not None:
            problem = self.validate_url(url)
        if problem is not None and scheme is not None:
            problem = _REMOVED_SCHEMES.get(scheme.group(1).lower(), problem)
        if problem is not None:
            # The validator already keeps the URL's own parts out; mask what ${VAR}s brought
            # in (masking the whole URL too would garble "mailto://" in the message itself).
            if scheme is not None and url[scheme.end() :]:
                problem = problem.replace(url, shown)
            substituted = {v for raw in text.substituted for v in encodings(raw)}
            for secret in sorted(substituted, key=len, reverse=True):
                if secret:
                    problem = problem.replace(secret, "****")
            self.fail(path, f"invalid apprise URL ({shown}): {problem.strip()}")
        return Secret(url)
