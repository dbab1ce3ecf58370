"""The scalar syntaxes config values are written in: durations and HOST:PORT addresses.

Parsing, and the short exact forms error messages show them in (durations, quoted values).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from datetime import timedelta

DURATION_EXPECTED = "expected a duration like 30s, 5m, 1h"
LISTEN_EXPECTED = "expected HOST:PORT like 127.0.0.1:9464 or [::1]:9464"

DURATION_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))
_DURATION = re.compile(
    r"(?:(\d{1,9})d)?(?:(\d{1,9})h)?(?:(\d{1,9})m)?(?:(\d{1,9})s)?(?:(\d{1,9})ms)?"
)
_BARE_SECONDS = re.compile(r"\d{1,12}")
_LISTEN = re.compile(r"(?:\[(?P<ipv6>[^\]]*)\]|(?P<host>[^\[\]:]*)):(?P<port>[^:]*)")


def parse_duration(text: str) -> timedelta:
    """`30s`, `5m`, `1h30m`, `2d`, `500ms` or bare seconds (`90`) as a timedelta.

    Units go from largest to smallest, each at most once; ValueError says what was expected.
    """
    if _BARE_SECONDS.fullmatch(text):
        return timedelta(seconds=int(text))
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"{DURATION_EXPECTED} (got {shorten(text)!r})")
    millis = 0
    for (_, factor), amount in zip(DURATION_UNITS, match.groups(), strict=True):
        if amount is not None:
            millis += int(amount) * factor
    try:
        return timedelta(milliseconds=millis)
    except OverflowError:
        raise ValueError(f"duration {shorten(text)!r} is too long") from None


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT` as (host, port); port 0 asks the kernel for a free one.

    ValueError says what was expected.
    """
    match = _LISTEN.fullmatch(text)
    if match is None and text.count(":") > 1 and "[" not in text:
        raise ValueError(
            f"an IPv6 address needs brackets, as in [::1]:9464 (got {shorten(text)!r})"
        )
    if match is None:
        raise ValueError(f"{LISTEN_EXPECTED} (got {shorten(text)!r})")
    port_text = match.group("port")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"the port must be a number from 0 to 65535 (got {shorten(port_text)!r})")
    host = match.group("host")
    if host is None:
        host = match.group("ipv6")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"expected an IPv6 address inside [] (got {shorten(host)!r})"
            ) from None
    elif not host.strip():
        raise ValueError(
            "the host is empty: write 127.0.0.1:PORT for this machine only, "
            "or 0.0.0.0:PORT for every interface"
        )
    elif any(char.isspace() or not char.isprintable() or char == "/" for char in host):
        raise ValueError(f"expected a host name or IP address (got {shorten(host)!r})")
    return host, int(port_text)


def shorten(text: str) -> str:
    return text if len(text) <= 40 else text[:39] + "…"


def control_character(value: str) -> str | None:
    """`U+000A` for the first control/line-separator character in `value`, else None."""
    for char in value:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return f"U+{ord(char):04X}"
    return None


def format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds}s"


def range_duration(value: timedelta) -> str:
    """Exact and short, in the largest unit that divides it: 10m, 90d, 1500ms."""
    millis = value // timedelta(milliseconds=1)
    for unit, factor in DURATION_UNITS:
        if millis % factor == 0:
            return f"{millis // factor}{unit}"
    return f"{millis}ms"
