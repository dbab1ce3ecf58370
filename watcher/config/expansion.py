"""`${VAR}` and `${VAR:-default}` expansion, remembering what was substituted (secrets).

A value substituted into part of a URL is percent-encoded for the part it lands in.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from watcher.config.scalars import shorten

URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ExpansionError(ValueError):
    """What is wrong with a `${...}` reference; the reader adds FILE:LINE: key."""


@dataclass(frozen=True, slots=True)
class Text:
    """A scalar after `${VAR}` expansion, with what was substituted (for secrets and origins)."""

    value: str
    raw: str
    substituted: tuple[str, ...] = ()
    pure_var: str | None = None  # the raw text was exactly `${VAR}` and VAR was set

    @property
    def shown(self) -> str:
        """What an error message may quote: never a substituted value."""
        return shorten(self.raw if self.substituted else self.value)


def expand(raw: str, env: Mapping[str, str], *, in_url: bool = False) -> Text:
    """Expand ${VAR}/${VAR:-default} from `env`; `$$` is a literal `$`.

    Raises ExpansionError for a malformed reference or an unset variable without default.
    """
    out: list[str] = []
    substituted: list[str] = []
    pure_var: str | None = None
    pos = 0
    while (dollar := raw.find("$", pos)) >= 0:
        out.append(raw[pos:dollar])
        following = raw[dollar + 1 : dollar + 2]
        if following == "$":
            out.append("$")
            pos = dollar + 2
            continue
        if following != "{":
            out.append("$")
            pos = dollar + 1
            continue
        match = _VAR_REF.match(raw, dollar)
        if match is None:
            raise ExpansionError("malformed ${...} reference (write $$ for a literal $)")
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if default is not None and not value:
            out.append(default)
        elif value is None:
            raise ExpansionError(f"environment variable {name} is not set")
        else:
            whole = match.group(0) == raw
            out.append(quote_for_url(raw, dollar, value) if in_url and not whole else value)
            substituted.append(value)
            if whole:
                pure_var = name
        pos = match.end()
    out.append(raw[pos:])
    return Text("".join(out), raw, tuple(substituted), pure_var)


def encodings(value: str) -> set[str]:
    """The forms a substituted value may take in a URL (and so in a log line)."""
    return {value, urllib.parse.quote(value, safe=""), urllib.parse.quote(value, safe="/")}


def url_part(raw: str, pos: int) -> str:
    """Which part of the URL written in `raw` the character at `pos` belongs to."""
    scheme = URL_SCHEME.match(raw)
    if scheme is None or pos < scheme.end():
        return "other"
    start = scheme.end()
    ends = [i for i in (raw.find(c, start) for c in "/?#") if i != -1]
    netloc_end = min(ends, default=len(raw))
    if pos < netloc_end:
        at = raw.rfind("@", start, netloc_end)
        return "userinfo" if at != -1 and pos < at else "host"
    query, fragment = raw.find("?", netloc_end), raw.find("#", netloc_end)
    if fragment != -1 and pos > fragment:
        return "fragment"
    if query != -1 and pos > query and (fragment == -1 or pos < fragment):
        return "query"
    return "path"


def quote_for_url(raw: str, pos: int, value: str) -> str:
    part = url_part(raw, pos)
    if part in ("userinfo", "query"):
        return urllib.parse.quote(value, safe="")
    if part == "path":
        return urllib.parse.quote(value, safe="/")
    return value  # host, port, fragment (#channel) and whole-URL values stay as written
