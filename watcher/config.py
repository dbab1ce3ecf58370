"""YAML file -> `Config`: strict parsing, `${VAR}` expansion and validation.

Every problem is a `ConfigError` pointing at `FILE:LINE: key`, and no secret ever shows in one.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
import unicodedata
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time, timedelta
from types import MappingProxyType
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from watcher.errors import ConfigError
from watcher.metastudio.regions import REGION_ENDPOINTS
from watcher.model import (
    DEFAULT_RETENTION,
    KNOWN_STATES,
    BodyFormat,
    ChannelPolicy,
    Config,
    Credential,
    DeliveryConfig,
    EventKind,
    FirstRun,
    HttpAuth,
    QuietHours,
    RuleConfig,
    Secret,
    SourceConfig,
)
from watcher.web.auth import is_loopback, parse_password_hash

__all__ = [
    "DEFAULT_STORAGE",
    "KNOWN_REGIONS",
    "config_warnings",
    "describe_credentials",
    "load_config",
    "load_config_text",
    "parse_duration",
    "parse_listen",
    "storage_problem",
]

KNOWN_REGIONS: Mapping[str, str] = REGION_ENDPOINTS
DEFAULT_STORAGE = "./metastudio-watcher.db"
MIN_POLL_INTERVAL = timedelta(seconds=5)
DURATION_EXPECTED = "expected a duration like 30s, 5m, 1h"
LISTEN_EXPECTED = "expected HOST:PORT like 127.0.0.1:9464 or [::1]:9464"

UrlValidator = Callable[[str], str | None]

_TOP_KEYS = (
    "sources",
    "channels",
    "rules",
    "storage",
    "first_run",
    "delivery",
    "http",
    "retention",
)
# History older than this is pruned; an hour at least, so recent history is always there.
MIN_RETENTION = timedelta(hours=1)
_SOURCE_KEYS = (
    "name",
    "region",
    "endpoint",
    "project_id",
    "ak",
    "ak_file",
    "sk",
    "sk_file",
    "security_token",
    "security_token_file",
    "app_user_id",
    "poll_interval",
    "request_timeout",
    "filters",
    "full_scan_every",
    "settled_states",
    "max_requests_per_second",
    "page_concurrency",
    "batch_quiet",
    "enrich_timeout",
)
_FILTER_KEYS = (
    "state",
    "job_id",
    "voice_name",
    "tag",
    "job_type",
    "batch_name",
    "create_since",
    "create_until",
)
_RULE_KEYS = (
    "name",
    "on",
    "from",
    "events",
    "where",
    "notify",
    "title",
    "body",
    "format",
    "continue",
    "for",
    "repeat",
    "urgent",
    "group_by",
    "group_wait",
    "group_interval",
    "group_title",
    "group_body",
    "group_limit",
)
_CHANNEL_KEYS = ("urls", "max_per_minute", "quiet_hours", "timezone")
# The list API's job_type values (API reference, ListVoiceTrainingJob).
_JOB_TYPES = ("BASIC", "MIDDLE", "ADVANCE", "THIRD_PARTY", "THIRD_PARTY_LJZN", "FLEXUS")
_QUIET_HOURS = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)-([01]?\d|2[0-3]):([0-5]\d)")
_DELIVERY_KEYS = ("retry_initial", "retry_max", "give_up_after", "send_timeout")
_HTTP_KEYS = ("listen", "auth")
_HTTP_AUTH_KEYS = ("token", "token_file", "basic")
_HTTP_BASIC_KEYS = ("user", "password_hash")
DEFAULT_LISTEN = "127.0.0.1:9464"
MIN_TOKEN_LENGTH = 16

# (config key, environment fallback, words for messages)
_CREDENTIALS = (
    ("ak", "CLOUD_SDK_AK", "access key"),
    ("sk", "CLOUD_SDK_SK", "secret key"),
    ("security_token", "CLOUD_SDK_SECURITY_TOKEN", "security token"),
)
_MAX_CREDENTIAL_FILE = 64 * 1024
# Channel schemes apprise dropped, and what to use instead (apprise's plugins/workflows.py).
_REMOVED_SCHEMES = {
    "msteams": (
        "msteams:// (Office 365 connector webhooks) was removed in apprise 2; Microsoft Teams "
        "now takes workflows://HOST/WORKFLOW/SIGNATURE (a Teams Workflows webhook)"
    ),
}

_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CHANNEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

_DURATION_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))
_DURATION = re.compile(
    r"(?:(\d{1,9})d)?(?:(\d{1,9})h)?(?:(\d{1,9})m)?(?:(\d{1,9})s)?(?:(\d{1,9})ms)?"
)
_BARE_SECONDS = re.compile(r"\d{1,12}")

# The documented ranges (README, "Configuration ranges"). Outside them a value breaks at run
# time (datetime overflow on every poll or send, gigabytes of page buffers, a watcher that is
# blind for days, retries every few seconds), so `check` refuses it. Keyed by the key's name.
_DURATION_RANGES: Mapping[str, tuple[timedelta, timedelta]] = {
    "poll_interval": (timedelta(seconds=5), timedelta(days=1)),
    "request_timeout": (timedelta(milliseconds=100), timedelta(minutes=10)),
    "full_scan_every": (timedelta(seconds=5), timedelta(days=7)),
    "for": (timedelta(minutes=1), timedelta(days=90)),
    "repeat": (timedelta(minutes=1), timedelta(days=90)),
    "group_wait": (timedelta(milliseconds=1), timedelta(hours=1)),
    "group_interval": (timedelta(milliseconds=1), timedelta(days=1)),
    "retry_initial": (timedelta(milliseconds=1), timedelta(hours=1)),
    "retry_max": (timedelta(milliseconds=1), timedelta(days=1)),
    "give_up_after": (timedelta(milliseconds=1), timedelta(days=90)),
    "send_timeout": (timedelta(milliseconds=100), timedelta(minutes=10)),
}
# Any other duration (keys added later): long enough for anything, short enough that adding it
# to a timestamp can never overflow.
_DURATION_CAP = timedelta(days=365)
_NUMBER_RANGES: Mapping[str, tuple[float, float]] = {
    "max_requests_per_second": (0.1, 1000.0),
    "page_concurrency": (1, 64),
    "max_per_minute": (1, 10_000),
}
# Where a line break is meaningful: templates. Everywhere else (names, ids, URLs, paths) a
# control character makes every request or send fail, forever.
_MULTILINE_KEYS = frozenset({"title", "body"})
MAX_CONFIG_BYTES = 1024 * 1024
# Far more than any real config (a rule set of thousands of lines has a few thousand values),
# far less than an alias bomb: beyond this the reader would take minutes and gigabytes.
MAX_CONFIG_VALUES = 200_000
_STORAGE_REFUSED_TREES = ("/proc", "/sys")
# File systems that cannot hold a database file (devtmpfs is /dev; /dev/shm is a tmpfs, fine).
_STORAGE_REFUSED_FS = frozenset(
    {
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "configfs",
        "pstore",
        "bpf",
        "mqueue",
        "fusectl",
        "binfmt_misc",
        "autofs",
        "efivarfs",
    }
)
_LISTEN = re.compile(r"(?:\[(?P<ipv6>[^\]]*)\]|(?P<host>[^\[\]:]*)):(?P<port>[^:]*)")


def parse_duration(text: str) -> timedelta:
    """`30s`, `5m`, `1h30m`, `2d`, `500ms` or bare seconds (`90`) as a timedelta.

    Units go from largest to smallest, each at most once; ValueError says what was expected.
    """
    if _BARE_SECONDS.fullmatch(text):
        return timedelta(seconds=int(text))
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"{DURATION_EXPECTED} (got {_shorten(text)!r})")
    millis = 0
    for (_, factor), amount in zip(_DURATION_UNITS, match.groups(), strict=True):
        if amount is not None:
            millis += int(amount) * factor
    try:
        return timedelta(milliseconds=millis)
    except OverflowError:
        raise ValueError(f"duration {_shorten(text)!r} is too long") from None


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT` as (host, port); port 0 asks the kernel for a free one.

    ValueError says what was expected.
    """
    match = _LISTEN.fullmatch(text)
    if match is None and text.count(":") > 1 and "[" not in text:
        raise ValueError(
            f"an IPv6 address needs brackets, as in [::1]:9464 (got {_shorten(text)!r})"
        )
    if match is None:
        raise ValueError(f"{LISTEN_EXPECTED} (got {_shorten(text)!r})")
    port_text = match.group("port")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"the port must be a number from 0 to 65535 (got {_shorten(port_text)!r})")
    host = match.group("host")
    if host is None:
        host = match.group("ipv6")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"expected an IPv6 address inside [] (got {_shorten(host)!r})"
            ) from None
    elif not host.strip():
        raise ValueError(
            "the host is empty: write 127.0.0.1:PORT for this machine only, "
            "or 0.0.0.0:PORT for every interface"
        )
    elif any(char.isspace() or not char.isprintable() or char == "/" for char in host):
        raise ValueError(f"expected a host name or IP address (got {_shorten(host)!r})")
    return host, int(port_text)


def load_config(
    path: str,
    env: Mapping[str, str] | None = None,
    *,
    validate_url: UrlValidator | None = None,
) -> Config:
    """Read and validate the config file; `validate_url` is apprise's URL checker, if any."""
    try:
        data = _read_config_bytes(path)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read the configuration file: {reason}", file=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("the configuration file is not UTF-8 text", file=path) from None
    return load_config_text(text, path, env, validate_url)


def _read_config_bytes(path: str) -> bytes:
    """The file's bytes, refusing anything but a regular file of at most MAX_CONFIG_BYTES.

    Opened non-blocking and checked with fstat on the open descriptor: a FIFO or a device as
    `-c` is refused at once instead of hanging, and nothing can be swapped in between.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = _file_kind(info.st_mode)
            raise ConfigError(
                f"the configuration must be a regular file (this is {what})", file=path
            )
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"the configuration file is {info.st_size} bytes; at most "
                f"{MAX_CONFIG_BYTES} (1 MiB) is accepted",
                file=path,
            )
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_CONFIG_BYTES:  # it grew while being read
                raise ConfigError(
                    f"the configuration file is larger than {MAX_CONFIG_BYTES} bytes (1 MiB)",
                    file=path,
                )
        return b"".join(chunks)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def storage_problem(path: str) -> str | None:
    """Why `path` cannot be the SQLite state file, or None. Checked by `check` and at start.

    A device, anything under /proc, /sys or /dev, a directory, a path under a file, and a file
    or directory this user cannot write all fail on the first poll, after start-up said ok.
    """
    if path == ":memory:":
        return None
    full = os.path.abspath(path)
    for tree in _STORAGE_REFUSED_TREES:
        if full == tree or full.startswith(tree + "/"):
            return f"{full} is under {tree}, which cannot hold a SQLite database; use a file path"
    try:
        info = os.stat(full)
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        return f"{_first_file_ancestor(full)} is a file, so {full} cannot be created under it"
    except OSError as exc:
        return f"cannot inspect {full}: {exc.strerror or type(exc).__name__}"
    if info is not None:
        if not stat.S_ISREG(info.st_mode):
            return f"{full} is {_file_kind(info.st_mode)}; storage must be a regular file path"
        if not os.access(full, os.R_OK | os.W_OK):
            return f"{full} is not writable by this user; fix its permissions or move storage"
    directory = os.path.dirname(full)
    while not os.path.isdir(directory):
        if os.path.lexists(directory):
            return f"{directory} is a file, so {full} cannot be created under it"
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    fs_type = _filesystem_type(directory)
    if fs_type in _STORAGE_REFUSED_FS:
        return (
            f"{directory} is on a {fs_type} file system, which cannot hold a SQLite database; "
            "use a file path"
        )
    if directory == os.path.dirname(full) and not os.access(directory, os.W_OK | os.X_OK):
        # SQLite writes a journal next to the file: the directory itself must be writable.
        return f"the directory {directory} is not writable by this user; fix it or move storage"
    return None


def _filesystem_type(directory: str) -> str | None:
    """The type of the file system `directory` is on, from /proc/self/mountinfo (None when
    that cannot be read, e.g. under systemd's ProcSubset=pid)."""
    try:
        real = os.path.realpath(directory)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            rows = mounts.read().splitlines()
    except OSError:
        return None
    best, best_type = "", None
    for row in rows:
        fields, sep, rest = row.partition(" - ")
        parts = fields.split()
        if not sep or len(parts) < 5 or not rest:
            continue
        point = parts[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, rest.split()[0]
    return best_type


def _first_file_ancestor(full: str) -> str:
    probe = os.path.dirname(full)
    found = probe
    while probe != os.path.dirname(probe):
        if os.path.lexists(probe) and not os.path.isdir(probe):
            found = probe
        probe = os.path.dirname(probe)
    return found


def _control_character(value: str) -> str | None:
    """`U+000A` for the first control/line-separator character in `value`, else None."""
    for char in value:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return f"U+{ord(char):04X}"
    return None


def load_config_text(
    text: str,
    path: str,
    env: Mapping[str, str] | None = None,
    validate_url: UrlValidator | None = None,
) -> Config:
    """Parse `text` as if read from `path` (relative paths in it resolve against its directory)."""
    document = _parse_yaml(text, path)
    lines: dict[str, int] = {}
    duplicates: list[ConfigError] = []
    if document is None:
        raise ConfigError(
            "the configuration is empty: expected a mapping with at least 'sources'",
            file=path,
            line=1,
        )
    try:
        expanded = _expanded_size(document, {})
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file=path, line=1) from None
    if expanded > MAX_CONFIG_VALUES:
        raise ConfigError(
            f"the configuration expands to {expanded} values through YAML aliases (*name); "
            f"at most {MAX_CONFIG_VALUES} are accepted",
            file=path,
            line=1,
        )
    _index(document, "", path, lines, duplicates, set())
    if duplicates:
        raise min(duplicates, key=lambda err: err.line or 0)
    reader = _Reader(
        file=path,
        base_dir=os.path.dirname(os.path.abspath(path)),
        env=os.environ if env is None else env,
        lines=lines,
        validate_url=validate_url,
    )
    return reader.config(document)


def config_warnings(path: str) -> list[str]:
    """Things worth telling the operator about the file itself (not errors): loose permissions."""
    try:
        info = os.stat(path)
    except OSError:
        return []  # load_config reports an unreadable file
    mode = info.st_mode
    # Group root may read: root:root 0640 is how a container (running in group 0) reads a
    # root-owned file, and on a host group 0 holds root alone.
    if mode & stat.S_IROTH or (mode & stat.S_IRGRP and info.st_gid != 0):
        return [
            f"{path} is readable by other users (mode {stat.S_IMODE(mode):04o}) and may hold "
            f"credentials: run chmod 600 {path}"
        ]
    return []


def describe_credentials(config: Config) -> list[str]:
    """Where each source's credentials come from, for `check` (never the values)."""
    out = []
    for source in config.sources:
        parts = [f"ak from {source.ak.origin}", f"sk from {source.sk.origin}"]
        if source.security_token is not None:
            parts.append(f"security token from {source.security_token.origin}")
        out.append(f"source {source.name}: {', '.join(parts)}")
    return out


# --- YAML ---------------------------------------------------------------------------------


class _Map(dict[str, Any]):
    """A YAML mapping that remembers where it starts, where each key is, and repeated keys."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}
        self.duplicates: list[tuple[str, int, int]] = []  # key, line, first line


class _Seq(list[Any]):
    """A YAML sequence that remembers the line of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 surprises, keeping the line of every key and item.

    Only `true`/`false` (any case) are booleans and only `~`/`null`/empty are null; everything
    else plain is a string (so `on`, `no`, `0600`, `1:30` stay as written). Other tags fail.
    """


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _construct_map(loader: _StrictLoader, node: Node) -> _Map:
    if not isinstance(node, MappingNode):
        raise ConstructorError(None, None, "expected a mapping", node.start_mark)
    mapping = _Map(_line(node))
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key == "<<" and isinstance(key_node, ScalarNode) and key_node.style is None:
            raise ConstructorError(
                None, None, "YAML merge keys (<<) are not supported", key_node.start_mark
            )
        if not isinstance(key, str):
            raise ConstructorError(
                None, None, f"keys must be strings, found {_kind(key)}", key_node.start_mark
            )
        value = loader.construct_object(value_node, deep=True)
        line = _line(key_node)
        if key in mapping:
            mapping.duplicates.append((key, line, mapping.key_lines[key]))
            continue
        mapping[key] = value
        mapping.key_lines[key] = line
    return mapping


def _construct_seq(loader: _StrictLoader, node: Node) -> _Seq:
    if not isinstance(node, SequenceNode):
        raise ConstructorError(None, None, "expected a sequence", node.start_mark)
    seq = _Seq(_line(node))
    for item in node.value:
        seq.append(loader.construct_object(item, deep=True))
        seq.item_lines.append(_line(item))
    return seq


def _construct_str(loader: _StrictLoader, node: Node) -> str:
    if not isinstance(node, ScalarNode):
        raise ConstructorError(None, None, "expected a scalar", node.start_mark)
    return loader.construct_scalar(node)


def _construct_bool(loader: _StrictLoader, node: Node) -> bool:
    value = _construct_str(loader, node).lower()
    if value not in ("true", "false"):
        raise ConstructorError(None, None, "expected true or false", node.start_mark)
    return value == "true"


def _construct_null(loader: _StrictLoader, node: Node) -> None:
    if _construct_str(loader, node) not in ("", "~", "null", "Null", "NULL"):
        raise ConstructorError(None, None, "expected null", node.start_mark)


def _construct_other(loader: _StrictLoader, node: Node) -> NoReturn:
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    raise ConstructorError(None, None, f"unsupported YAML tag {tag!r}", node.start_mark)


_StrictLoader.yaml_implicit_resolvers = {}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"),
    list("tTfF"),
)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_StrictLoader.yaml_constructors = {
    "tag:yaml.org,2002:map": _construct_map,
    "tag:yaml.org,2002:seq": _construct_seq,
    "tag:yaml.org,2002:str": _construct_str,
    "tag:yaml.org,2002:bool": _construct_bool,
    "tag:yaml.org,2002:null": _construct_null,
    None: _construct_other,
}
_StrictLoader.yaml_multi_constructors = {}


def _parse_yaml(text: str, path: str) -> Any:
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)  # the reader checks every character here already
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if "'\\t'" in problem:
            problem = "tab characters are not allowed for indentation in YAML; use spaces"
        elif exc.context and exc.problem:
            problem = f"{exc.context}: {exc.problem}"
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {problem}", file=path, line=line) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        problem = f"invalid YAML: unacceptable character #x{exc.character:04x}"
        raise ConfigError(problem, file=path, line=line) from None
    except yaml.YAMLError:
        raise ConfigError("invalid YAML", file=path, line=1) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file=path, line=1) from None
    finally:
        if loader is not None:
            loader.dispose()


def _expanded_size(value: Any, memo: dict[int, int]) -> int:
    """How many values the document holds once every alias is expanded (linear time: a shared
    node is measured once). An alias bomb fits in a few kB and expands to billions."""
    if not isinstance(value, _Map | _Seq):
        return 1
    if id(value) in memo:
        return memo[id(value)]
    memo[id(value)] = 1  # a recursive alias counts once; the reader refuses it later anyway
    children = value.values() if isinstance(value, _Map) else value
    memo[id(value)] = 1 + sum(_expanded_size(child, memo) for child in children)
    return memo[id(value)]


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _index(
    value: Any,
    path: str,
    file: str,
    lines: dict[str, int],
    duplicates: list[ConfigError],
    seen: set[int],
) -> None:
    """Record the line of every key and item, and every repeated key, walking shared nodes once."""
    if not isinstance(value, _Map | _Seq) or id(value) in seen:
        return
    seen.add(id(value))
    lines.setdefault(path, value.line)
    if isinstance(value, _Map):
        for key, line, first in value.duplicates:
            problem = f"duplicate key {key!r} (first at line {first})"
            duplicates.append(ConfigError(problem, file=file, line=line, key=_child(path, key)))
        for key, child in value.items():
            lines.setdefault(_child(path, key), value.key_lines[key])
            _index(child, _child(path, key), file, lines, duplicates, seen)
    else:
        for index, child in enumerate(value):
            lines.setdefault(_item(path, index), value.item_lines[index])
            _index(child, _item(path, index), file, lines, duplicates, seen)


# --- validation ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Text:
    """A scalar after `${VAR}` expansion, with what was substituted (for secrets and origins)."""

    value: str
    raw: str
    substituted: tuple[str, ...] = ()
    pure_var: str | None = None  # the raw text was exactly `${VAR}` and VAR was set

    @property
    def shown(self) -> str:
        """What an error message may quote: never a substituted value."""
        return _shorten(self.raw if self.substituted else self.value)


def _encodings(value: str) -> set[str]:
    return {value, urllib.parse.quote(value, safe=""), urllib.parse.quote(value, safe="/")}


def _url_part(raw: str, pos: int) -> str:
    """Which part of the URL written in `raw` the character at `pos` belongs to."""
    scheme = _URL_SCHEME.match(raw)
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


def _quote_for_url(raw: str, pos: int, value: str) -> str:
    part = _url_part(raw, pos)
    if part in ("userinfo", "query"):
        return urllib.parse.quote(value, safe="")
    if part == "path":
        return urllib.parse.quote(value, safe="/")
    return value  # host, port, fragment (#channel) and whole-URL values stay as written


def _shorten(text: str) -> str:
    return text if len(text) <= 40 else text[:39] + "…"


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _suggest(word: str, choices: Sequence[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, or nothing."""
    lowered = {choice.lower(): choice for choice in choices}
    if word.lower() in lowered:
        return f" (did you mean {lowered[word.lower()]!r}?)"
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


@dataclass
class _Reader:
    """Turns the parsed document into a `Config`, failing at the first problem."""

    file: str
    base_dir: str
    env: Mapping[str, str]
    lines: dict[str, int]
    validate_url: UrlValidator | None
    secrets: set[str] = field(default_factory=set)
    channel_policies: dict[str, ChannelPolicy] = field(default_factory=dict)

    # -- plumbing

    def fail(self, path: str, problem: str) -> NoReturn:
        raise ConfigError(problem, file=self.file, line=self.line(path), key=path or None)

    def line(self, path: str) -> int:
        probe = path
        while probe not in self.lines:
            cut = max(probe.rfind("."), probe.rfind("["))
            if cut <= 0:
                return self.lines.get("", 1)
            probe = probe[:cut]
        return self.lines[probe]

    def secret(self, value: str) -> None:
        if value:
            self.secrets.add(value)

    def expand(self, raw: str, path: str, *, in_url: bool = False) -> _Text:
        """Expand ${VAR}/${VAR:-default}. `in_url`: a value substituted into part of a URL is
        percent-encoded for where it lands (a password with @ / # % must still work)."""
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
                self.fail(path, "malformed ${...} reference (write $$ for a literal $)")
            name, default = match.group(1), match.group(2)
            value = self.env.get(name)
            if default is not None and not value:
                out.append(default)
            elif value is None:
                self.fail(path, f"environment variable {name} is not set")
            else:
                whole = match.group(0) == raw
                out.append(_quote_for_url(raw, dollar, value) if in_url and not whole else value)
                substituted.append(value)
                if whole:
                    pure_var = name
            pos = match.end()
        out.append(raw[pos:])
        result = _Text("".join(out), raw, tuple(substituted), pure_var)
        self.no_control(result, path)
        return result

    def no_control(self, text: _Text, path: str) -> None:
        """Names, ids, URLs and paths are one line: a control character breaks every use."""
        if path.rsplit(".", 1)[-1] in _MULTILINE_KEYS:
            return
        found = _control_character(text.value)
        if found is not None:
            origin = " (from a ${VAR})" if _control_character(text.raw) is None else ""
            self.fail(path, f"contains the control character {found}{origin}; remove it")

    def mapping(self, value: Any, path: str, expected: str, keys: Sequence[str]) -> _Map:
        if not isinstance(value, _Map):
            self.fail(path, f"expected {expected} (got {_kind(value)})")
        for key in value:
            if key not in keys:
                hint = _suggest(key, keys)
                self.fail(
                    _child(path, key),
                    f"unknown key {key!r}{hint}; expected one of: {', '.join(keys)}",
                )
        return value

    def require(self, mapping: _Map, path: str, key: str, hint: str = "") -> Any:
        if key not in mapping:
            self.fail(path, f"missing required key {key!r}{hint}")
        return mapping[key]

    def text(self, value: Any, path: str, expected: str = "a string") -> _Text:
        if not isinstance(value, str):
            self.fail(path, f"expected {expected} (got {_kind(value)})")
        return self.expand(value, path)

    def nonempty(self, value: Any, path: str, expected: str = "a non-empty string") -> _Text:
        text = self.text(value, path, expected)
        if not text.value.strip():
            self.fail(path, f"expected {expected} (got an empty string)")
        return text

    def texts(
        self, value: Any, path: str, expected: str, item: str = "a string"
    ) -> list[tuple[_Text, str]]:
        """A list of strings (a single string counts as a one-item list), with item paths."""
        if isinstance(value, str):
            return [(self.expand(value, path), path)]
        if not isinstance(value, _Seq):
            self.fail(path, f"expected {expected} (got {_kind(value)})")
        if not value:
            self.fail(path, f"expected {expected} (got an empty list)")
        return [
            (self.text(entry, _item(path, index), item), _item(path, index))
            for index, entry in enumerate(value)
        ]

    def duration(self, value: Any, path: str, minimum: timedelta | None = None) -> timedelta:
        text = self.text(value, path, DURATION_EXPECTED.removeprefix("expected "))
        try:
            result = parse_duration(text.value)
        except ValueError:
            self.fail(path, f"{DURATION_EXPECTED} (got {text.shown!r})")
        if minimum is not None and result < minimum:
            self.fail(path, f"must be at least {_format_duration(minimum)}")
        if minimum is None and result <= timedelta(0):
            self.fail(path, "must be longer than 0s")
        self.in_duration_range(result, path)
        return result

    def in_duration_range(self, value: timedelta, path: str) -> None:
        key = path.rsplit(".", 1)[-1]
        low, high = _DURATION_RANGES.get(key, (timedelta(0), _DURATION_CAP))
        if not low <= value <= high:
            self.fail(
                path,
                f"must be from {_range_duration(low)} to {_range_duration(high)} "
                f"(got {_range_duration(value)})",
            )

    def boolean(self, value: Any, path: str) -> bool:
        if isinstance(value, bool):
            return value
        text = self.text(value, path, "true or false")
        if text.value.lower() in ("true", "false"):
            return text.value.lower() == "true"
        self.fail(path, f"expected true or false (got {text.shown!r})")

    def choice(self, value: Any, path: str, choices: Sequence[str], what: str) -> str:
        text = self.text(value, path, f"one of {', '.join(choices)}")
        if text.value not in choices:
            hint = _suggest(text.value, choices)
            self.fail(
                path, f"unknown {what} {text.shown!r}{hint}; expected one of: {', '.join(choices)}"
            )
        return text.value

    def state(self, text: _Text, path: str) -> str:
        if text.value not in KNOWN_STATES:
            known = sorted(KNOWN_STATES)
            hint = _suggest(text.value, known)
            if not hint:
                hint = f"; known states: {', '.join(known)}"
            self.fail(path, f"unknown state {text.shown!r}{hint}")
        return text.value

    # -- the document

    def config(self, document: Any) -> Config:
        top = self.mapping(document, "", "a mapping with keys " + ", ".join(_TOP_KEYS), _TOP_KEYS)
        channels = self.channels(top.get("channels", _Map(top.line)), "channels")
        sources = self.sources(self.require(top, "", "sources"), "sources")
        rules: tuple[RuleConfig, ...] = ()
        if "rules" in top:
            rules = self.rules(top["rules"], "rules", channels)
        storage = DEFAULT_STORAGE
        if "storage" in top:
            storage = self.nonempty(top["storage"], "storage", "a file path").value
        if storage != ":memory:":
            storage = os.path.normpath(os.path.join(self.base_dir, storage))
        if (problem := storage_problem(storage)) is not None:
            self.fail("storage", problem)
        first_run = FirstRun.BASELINE
        if "first_run" in top:
            choices = [member.value for member in FirstRun]
            first_run = FirstRun(self.choice(top["first_run"], "first_run", choices, "mode"))
        delivery = DeliveryConfig()
        if "delivery" in top:
            delivery = self.delivery(top["delivery"], "delivery")
        http_listen, http_auth = None, None
        if "http" in top:
            http_listen, http_auth = self.http(top["http"], "http")
        retention = DEFAULT_RETENTION
        if "retention" in top:
            retention = self.duration(top["retention"], "retention", MIN_RETENTION)
        return Config(
            path=self.file,
            sources=sources,
            channels=MappingProxyType(channels),
            rules=rules,
            storage=storage,
            first_run=first_run,
            delivery=delivery,
            http_listen=http_listen,
            http_auth=http_auth,
            channel_policies=MappingProxyType(dict(self.channel_policies)),
            lines=MappingProxyType({k: v for k, v in self.lines.items() if k}),
            secrets=frozenset(self.secrets),
            retention=retention,
        )

    def channels(self, value: Any, path: str) -> dict[str, tuple[Secret, ...]]:
        if not isinstance(value, _Map):
            self.fail(
                path, f"expected a mapping of channel name to apprise URLs (got {_kind(value)})"
            )
        out: dict[str, tuple[Secret, ...]] = {}
        for name, urls in value.items():
            channel_path = _child(path, name)
            if not _CHANNEL_NAME.fullmatch(name):
                self.fail(
                    channel_path,
                    "a channel name must be a simple identifier (letters, digits, '_', '-')",
                )
            urls_path = channel_path
            if isinstance(urls, _Map):
                # Long form: {urls: [...], max_per_minute: N, quiet_hours: "22:00-07:00", ...}
                settings = self.mapping(urls, channel_path, "channel settings", _CHANNEL_KEYS)
                urls_path = _child(channel_path, "urls")
                urls = self.require(settings, channel_path, "urls")
                self.channel_policies[name] = self.channel_policy(settings, channel_path)
            items = self.texts(urls, urls_path, "an apprise URL or a list of them")
            out[name] = tuple(self.channel_url(text, item_path) for text, item_path in items)
        return out

    def channel_policy(self, settings: _Map, path: str) -> ChannelPolicy:
        max_per_minute = None
        if "max_per_minute" in settings:
            max_per_minute = int(
                self.positive_number(
                    settings["max_per_minute"], _child(path, "max_per_minute"), integer=True
                )
            )
        zone = "UTC"
        if "timezone" in settings:
            zone_path = _child(path, "timezone")
            zone = self.nonempty(settings["timezone"], zone_path).value
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                self.fail(
                    zone_path, f"unknown timezone {zone!r}: expected a name like Asia/Shanghai"
                )
        quiet = None
        if "quiet_hours" in settings:
            quiet_path = _child(path, "quiet_hours")
            text = self.nonempty(settings["quiet_hours"], quiet_path).value
            match = _QUIET_HOURS.fullmatch(text.replace(" ", ""))
            if match is None:
                self.fail(quiet_path, f"expected a daily window like 22:00-07:00 (got {text!r})")
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            if (h1, m1) == (h2, m2):
                self.fail(quiet_path, "the window is empty: start and end are the same time")
            quiet = QuietHours(time(h1, m1), time(h2, m2), zone)
        elif "timezone" in settings:
            self.fail(_child(path, "timezone"), "timezone only applies to quiet_hours")
        return ChannelPolicy(max_per_minute=max_per_minute, quiet_hours=quiet)

    def channel_url(self, text: _Text, path: str) -> Secret:
        text = self.expand(text.raw, path, in_url=True)
        self.secret(text.value)
        for value in text.substituted:
            # Logs may show the encoded form (apprise prints URLs): mask that too.
            for form in _encodings(value):
                self.secret(form)
        url = text.value
        scheme = _URL_SCHEME.match(url)
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
            substituted = {v for raw in text.substituted for v in _encodings(raw)}
            for secret in sorted(substituted, key=len, reverse=True):
                if secret:
                    problem = problem.replace(secret, "****")
            self.fail(path, f"invalid apprise URL ({shown}): {problem.strip()}")
        return Secret(url)

    def sources(self, value: Any, path: str) -> tuple[SourceConfig, ...]:
        if not isinstance(value, _Seq):
            self.fail(path, f"expected a list of sources (got {_kind(value)})")
        if not value:
            self.fail(path, "expected at least one source")
        first_seen: dict[str, int] = {}
        out = []
        for index, item in enumerate(value):
            source = self.source(item, _item(path, index))
            self.unique_name(source.name, _item(path, index), first_seen, "source")
            out.append(source)
        return tuple(out)

    def source(self, value: Any, path: str) -> SourceConfig:
        source = self.mapping(value, path, "a mapping of source settings", _SOURCE_KEYS)
        name = self.text(self.require(source, path, "name"), _child(path, "name")).value
        if not _SOURCE_NAME.fullmatch(name):
            self.fail(
                _child(path, "name"),
                "a source name must be letters, digits, '-', '_' or '.' (and not start with them)",
            )
        region, endpoint = self.endpoint(source, path)
        project_id = self.nonempty(
            self.require(source, path, "project_id"), _child(path, "project_id")
        ).value
        ak, sk, token = self.credentials(source, path)
        app_user_id = None
        if "app_user_id" in source:
            app_user_id = self.nonempty(source["app_user_id"], _child(path, "app_user_id")).value
        poll_interval = timedelta(seconds=60)
        if "poll_interval" in source:
            poll_interval = self.duration(
                source["poll_interval"], _child(path, "poll_interval"), MIN_POLL_INTERVAL
            )
        request_timeout = timedelta(seconds=30)
        if "request_timeout" in source:
            request_timeout = self.duration(
                source["request_timeout"], _child(path, "request_timeout")
            )
        filters: tuple[tuple[str, str], ...] = ()
        if "filters" in source:
            filters = self.filters(source["filters"], _child(path, "filters"))
        full_scan_every = timedelta(hours=1)
        if "full_scan_every" in source:
            full_scan_every = self.full_scan_every(
                source["full_scan_every"], _child(path, "full_scan_every"), poll_interval
            )
        settled_states: tuple[str, ...] = ("SUCCEED", "FAILED")
        if "settled_states" in source:
            settled_states = self.settled_states(
                source["settled_states"], _child(path, "settled_states")
            )
        max_rps = 5.0
        if "max_requests_per_second" in source:
            max_rps = self.positive_number(
                source["max_requests_per_second"], _child(path, "max_requests_per_second")
            )
        page_concurrency = 4
        if "page_concurrency" in source:
            page_concurrency = int(
                self.positive_number(
                    source["page_concurrency"], _child(path, "page_concurrency"), integer=True
                )
            )
        batch_quiet = timedelta(minutes=10)
        if "batch_quiet" in source:
            batch_quiet = self.duration(source["batch_quiet"], _child(path, "batch_quiet"))
        enrich_timeout = timedelta(seconds=10)
        if "enrich_timeout" in source:
            enrich_timeout = self.duration(
                source["enrich_timeout"], _child(path, "enrich_timeout"), timedelta(seconds=1)
            )
        return SourceConfig(
            name=name,
            endpoint=endpoint,
            region=region,
            project_id=project_id,
            ak=ak,
            sk=sk,
            security_token=token,
            app_user_id=app_user_id,
            poll_interval=poll_interval,
            filters=filters,
            request_timeout=request_timeout,
            full_scan_every=full_scan_every,
            settled_states=settled_states,
            max_requests_per_second=max_rps,
            page_concurrency=page_concurrency,
            batch_quiet=batch_quiet,
            enrich_timeout=enrich_timeout,
        )

    def full_scan_every(self, value: Any, path: str, poll_interval: timedelta) -> timedelta:
        """`0` (or `0s`) disables incremental polling; otherwise at least one poll interval."""
        if value == 0 or (isinstance(value, str) and value.strip() in ("0", "0s")):
            return timedelta(0)
        every = self.duration(value, path)
        if every < poll_interval:
            self.fail(
                path,
                f"must be 0 (always scan everything) or at least poll_interval "
                f"({_format_duration(poll_interval)})",
            )
        return every

    def settled_states(self, value: Any, path: str) -> tuple[str, ...]:
        items = self.texts(value, path, "a list of states")
        if not items:
            self.fail(path, "expected at least one state")
        return tuple(self.state(text, item_path) for text, item_path in items)

    def positive_number(self, value: Any, path: str, *, integer: bool = False) -> float:
        expected = "a whole number above 0" if integer else "a number above 0"
        if isinstance(value, bool):
            self.fail(path, f"expected {expected} (got {_kind(value)})")
        number: float
        if isinstance(value, int | float):
            number = value
        else:
            text = self.text(value, path, expected)
            try:
                number = int(text.value) if integer else float(text.value)
            except ValueError:
                self.fail(path, f"expected {expected} (got {text.shown!r})")
        if integer and number != int(number):
            self.fail(path, f"expected {expected} (got {number!r})")
        if not math.isfinite(number) or number <= 0:
            self.fail(path, f"expected {expected} (got {number!r})")
        low, high = _NUMBER_RANGES.get(path.rsplit(".", 1)[-1], (0.0, math.inf))
        if not low <= number <= high:
            shown = str(int(number)) if integer else f"{number:g}"
            self.fail(path, f"must be from {low:g} to {high:g} (got {shown})")
        return number

    def endpoint(self, source: _Map, path: str) -> tuple[str | None, str]:
        region: str | None = None
        shown = ""
        if "region" in source:
            region_text = self.nonempty(source["region"], _child(path, "region"))
            region, shown = region_text.value, region_text.shown
        if "endpoint" in source:
            endpoint_path = _child(path, "endpoint")
            endpoint = _normalise_endpoint(self.text(source["endpoint"], endpoint_path).value)
            if endpoint is None:
                self.fail(
                    endpoint_path,
                    "expected an endpoint like https://metastudio.cn-north-4.myhuaweicloud.com "
                    "(http(s)://host[:port], no path)",
                )
            return region, endpoint
        if region is None:
            self.fail(path, "missing required key 'region' (or 'endpoint')")
        if region not in KNOWN_REGIONS:
            known = sorted(KNOWN_REGIONS)
            self.fail(
                _child(path, "region"),
                f"unknown region {shown!r}{_suggest(region, known)}; known regions: "
                f"{', '.join(known)} (for another region set "
                "endpoint: https://metastudio.REGION.myhuaweicloud.com)",
            )
        return region, KNOWN_REGIONS[region]

    def credentials(
        self, source: _Map, path: str
    ) -> tuple[Credential, Credential, Credential | None]:
        found: dict[str, Credential | None] = {}
        for key, env_name, words in _CREDENTIALS:
            found[key] = self.credential(source, path, key, env_name, words)
        ak, sk = found["ak"], found["sk"]
        if ak is None or sk is None:
            raise AssertionError("credential() fails when ak or sk is missing")
        return ak, sk, found["security_token"]

    def credential(
        self, source: _Map, path: str, key: str, env_name: str, words: str
    ) -> Credential | None:
        file_key = f"{key}_file"
        if key in source and file_key in source:
            self.fail(_child(path, file_key), f"set either {key!r} or {file_key!r}, not both")
        if key in source:
            key_path = _child(path, key)
            text = self.text(source[key], key_path)
            origin = f"config ${{{text.pure_var}}}" if text.pure_var else "config"
            return self.checked_credential(text.value, origin, key_path, words)
        if file_key in source:
            file_path = _child(path, file_key)
            name = self.nonempty(source[file_key], file_path, "a file name").value
            full = self.credential_path(name)
            value = self.read_credential(full, file_path)
            return self.checked_credential(value, f"file {full}", file_path, words)
        if key == "security_token" and _names_key_pair(source):
            return None  # a temporary token only pairs with the key pair it was issued with
        from_env = self.env.get(env_name)
        if from_env is None:
            if key == "security_token":
                return None
            self.fail(
                _child(path, key),
                f"no {words}: set {key!r} or {file_key!r}, or the environment variable {env_name}",
            )
        return self.checked_credential(from_env, f"env {env_name}", _child(path, key), words)

    def checked_credential(self, value: str, origin: str, path: str, words: str) -> Credential:
        self.secret(value)
        if not value:
            self.fail(path, f"the {words} from {origin} is empty")
        if any(char.isspace() or not char.isprintable() for char in value):
            self.fail(path, f"the {words} from {origin} contains whitespace or control characters")
        return Credential(Secret(value), origin)

    def credential_path(self, name: str) -> str:
        if os.path.isabs(name):
            return name
        base = self.env.get("CREDENTIALS_DIRECTORY") or self.base_dir
        return os.path.normpath(os.path.join(base, name))

    def read_credential(self, full: str, path: str) -> str:
        try:
            with open(full, encoding="utf-8") as stream:
                content = stream.read(_MAX_CREDENTIAL_FILE + 1)
        except UnicodeDecodeError:
            self.fail(path, f"credential file {full} is not UTF-8 text")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            self.fail(path, f"cannot read credential file {full}: {reason}")
        if len(content) > _MAX_CREDENTIAL_FILE:
            self.fail(path, f"credential file {full} is too large to hold a credential")
        return content.rstrip("\r\n")

    def filters(self, value: Any, path: str) -> tuple[tuple[str, str], ...]:
        filters = self.mapping(value, path, "a mapping of API query parameters", _FILTER_KEYS)
        out = []
        for key, raw in filters.items():
            key_path = _child(path, key)
            if key == "state":
                items = self.texts(raw, key_path, "a state or a list of states")
                states = [self.state(text, item_path) for text, item_path in items]
                out.append((key, ",".join(states)))
            elif key == "job_type":
                # An unknown type filters every job out: the watcher would poll, see nothing
                # and never alert.
                out.append((key, self.choice(raw, key_path, _JOB_TYPES, "job type")))
            else:
                out.append((key, self.nonempty(raw, key_path).value))
        return tuple(out)

    def rules(
        self, value: Any, path: str, channels: Mapping[str, object]
    ) -> tuple[RuleConfig, ...]:
        if not isinstance(value, _Seq):
            self.fail(path, f"expected a list of rules (got {_kind(value)})")
        first_seen: dict[str, int] = {}
        out = []
        for index, item in enumerate(value):
            rule = self.rule(item, _item(path, index), channels)
            self.unique_name(rule.name, _item(path, index), first_seen, "rule")
            out.append(rule)
        return tuple(out)

    def unique_name(self, name: str, item_path: str, first_seen: dict[str, int], what: str) -> None:
        """Names identify sources and rules in alerts and logs: each may appear once."""
        name_path = _child(item_path, "name")
        if name in first_seen:
            self.fail(
                name_path,
                f"duplicate {what} name {_shorten(name)!r} (first at line {first_seen[name]})",
            )
        first_seen[name] = self.line(name_path)

    def rule(self, value: Any, path: str, channels: Mapping[str, object]) -> RuleConfig:
        rule = self.mapping(value, path, "a mapping of rule settings", _RULE_KEYS)
        name_path = _child(path, "name")
        name = self.nonempty(self.require(rule, path, "name"), name_path).value
        if not name.isprintable():
            self.fail(name_path, "a rule name must be one line of printable text")
        on: tuple[str, ...] = ("*",)
        if "on" in rule:
            on = self.states(rule["on"], _child(path, "on"))
        from_states = None
        if "from" in rule:
            from_states = self.states(rule["from"], _child(path, "from"))
            if from_states == ("*",):
                from_states = None
        events = None
        if "events" in rule:
            events = self.events(rule["events"], _child(path, "events"))
        where: tuple[tuple[str, tuple[str, ...]], ...] = ()
        if "where" in rule:
            where = self.where(rule["where"], _child(path, "where"))
        notify = self.notify(self.require(rule, path, "notify"), _child(path, "notify"), channels)
        title = body = None
        if "title" in rule:
            title = self.text(rule["title"], _child(path, "title")).value
        if "body" in rule:
            body = self.text(rule["body"], _child(path, "body")).value
        body_format = BodyFormat.TEXT
        if "format" in rule:
            choices = [member.value for member in BodyFormat]
            body_format = BodyFormat(
                self.choice(rule["format"], _child(path, "format"), choices, "format")
            )
        stop = False
        if "continue" in rule:
            stop = not self.boolean(rule["continue"], _child(path, "continue"))
        for_ = repeat = None
        if "for" in rule:
            for_ = self.duration(rule["for"], _child(path, "for"))
        if "repeat" in rule:
            repeat = self.duration(rule["repeat"], _child(path, "repeat"))
        self.stuck_combination(rule, path, on, events, for_, repeat)
        urgent = False
        if "urgent" in rule:
            urgent = self.boolean(rule["urgent"], _child(path, "urgent"))
        group_by: tuple[str, ...] = ("source", "rule")
        if "group_by" in rule:
            group_by = self.group_by(rule["group_by"], _child(path, "group_by"))
        group_wait = group_interval = timedelta(0)
        if "group_wait" in rule:
            group_wait = self.duration(rule["group_wait"], _child(path, "group_wait"))
        if "group_interval" in rule:
            group_interval = self.duration(rule["group_interval"], _child(path, "group_interval"))
        group_title, group_body, group_limit = self.group_message(rule, path)
        if body_format is BodyFormat.JSON and body is not None:
            # The JSON document is the body; a template there would be silently ignored.
            self.fail(
                _child(path, "body"),
                "format: json sends the JSON document as the body; remove body: (title: "
                "still applies) or use another format",
            )
        return RuleConfig(
            name=name,
            on=on,
            notify=notify,
            from_states=from_states,
            events=events,
            where=where,
            title=title,
            body=body,
            format=body_format,
            stop=stop,
            for_=for_,
            repeat=repeat,
            urgent=urgent,
            group_by=group_by,
            group_wait=group_wait,
            group_interval=group_interval,
            group_title=group_title,
            group_body=group_body,
            group_limit=group_limit,
        )

    def group_message(self, rule: _Map, path: str) -> tuple[str | None, str | None, int | None]:
        """A rule's templates and list length for grouped messages."""
        title = body = None
        if "group_title" in rule:
            title = self.text(rule["group_title"], _child(path, "group_title")).value
        if "group_body" in rule:
            body = self.text(rule["group_body"], _child(path, "group_body")).value
        limit = None
        if "group_limit" in rule:
            limit = int(
                self.positive_number(rule["group_limit"], _child(path, "group_limit"), integer=True)
            )
        return title, body, limit

    def stuck_combination(
        self,
        rule: _Map,
        path: str,
        on: tuple[str, ...],
        events: tuple[EventKind, ...] | None,
        for_: timedelta | None,
        repeat: timedelta | None,
    ) -> None:
        """`for:`/`repeat:` only where they can mean something (else stuck alerts misfire)."""
        if repeat is not None and for_ is None:
            self.fail(_child(path, "repeat"), "repeat: needs for: (it repeats a stuck alert)")
        if for_ is None:
            if events is not None and EventKind.STUCK in events:
                self.fail(
                    _child(path, "events"),
                    "the stuck event needs for: (how long a job may stay in the on: states)",
                )
            return
        for_path = _child(path, "for")
        if "on" not in rule or on == ("*",):
            self.fail(
                for_path,
                "for: needs on: naming the states a job may get stuck in (not '*'), e.g. "
                "on: [AUDITING]",
            )
        if "SUCCEED" in on:
            self.fail(_child(path, "on"), "a job in SUCCEED is finished: it cannot be stuck (for:)")
        if events is not None and EventKind.STUCK not in events:
            self.fail(
                _child(path, "events"),
                "for: only raises stuck events: add stuck to events: or drop for:",
            )

    def group_by(self, value: Any, path: str) -> tuple[str, ...]:
        out = []
        for text, item_path in self.texts(value, path, "a list of job fields"):
            if not _FIELD_NAME.fullmatch(text.value):
                self.fail(item_path, "expected a field name such as source, rule or batch_name")
            out.append(text.value)
        return tuple(out)

    def states(self, value: Any, path: str) -> tuple[str, ...]:
        items = self.texts(value, path, "a list of states or '*'")
        if len(items) == 1 and items[0][0].value == "*":
            return ("*",)
        out = []
        for text, item_path in items:
            if text.value == "*":
                self.fail(item_path, "'*' matches every state: use it alone")
            out.append(self.state(text, item_path))
        return tuple(out)

    def events(self, value: Any, path: str) -> tuple[EventKind, ...]:
        kinds = [kind.value for kind in EventKind]
        out = []
        for text, item_path in self.texts(value, path, "a list of event kinds"):
            if text.value not in kinds:
                self.fail(
                    item_path,
                    f"unknown event kind {text.shown!r}{_suggest(text.value, kinds)}; "
                    f"expected one of: {', '.join(kinds)}",
                )
            out.append(EventKind(text.value))
        return tuple(out)

    def where(self, value: Any, path: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        if not isinstance(value, _Map):
            self.fail(
                path, f"expected a mapping of job field to values or globs (got {_kind(value)})"
            )
        out = []
        for field_name, raw in value.items():
            field_path = _child(path, field_name)
            if not _FIELD_NAME.fullmatch(field_name):
                self.fail(field_path, "expected a job field name such as voice_name or tag")
            items = self.texts(raw, field_path, "a string or a list of strings")
            out.append((field_name, tuple(text.value for text, _ in items)))
        return tuple(out)

    def notify(self, value: Any, path: str, channels: Mapping[str, object]) -> tuple[str, ...]:
        out = []
        for text, item_path in self.texts(value, path, "a list of channel names"):
            if text.value not in channels:
                if not channels:
                    self.fail(
                        item_path,
                        f"unknown channel {text.shown!r}: no channels are defined "
                        "(add them under channels:)",
                    )
                known = sorted(channels)
                self.fail(
                    item_path,
                    f"unknown channel {text.shown!r}{_suggest(text.value, known)}; "
                    f"defined channels: {', '.join(known)}",
                )
            out.append(text.value)
        return tuple(out)

    def delivery(self, value: Any, path: str) -> DeliveryConfig:
        delivery = self.mapping(value, path, "a mapping of delivery settings", _DELIVERY_KEYS)
        values = {key: self.duration(raw, _child(path, key)) for key, raw in delivery.items()}
        result = DeliveryConfig(**values)
        if result.retry_initial > result.retry_max:
            key = "retry_initial" if "retry_initial" in delivery else "retry_max"
            self.fail(
                _child(path, key),
                f"retry_initial ({_format_duration(result.retry_initial)}) must not be longer "
                f"than retry_max ({_format_duration(result.retry_max)})",
            )
        return result

    def http(self, value: Any, path: str) -> tuple[str, HttpAuth | None]:
        http = self.mapping(value, path, "a mapping of HTTP settings", _HTTP_KEYS)
        listen_path = _child(path, "listen")
        listen = DEFAULT_LISTEN
        if "listen" in http:
            listen = self.nonempty(http["listen"], listen_path, "HOST:PORT").value
        try:
            host, _ = parse_listen(listen)
        except ValueError as exc:
            self.fail(listen_path, str(exc))
        auth = None
        if "auth" in http:
            auth = self.http_auth(http["auth"], _child(path, "auth"))
        elif not is_loopback(host):
            # The page shows job names, batches and failures: not for everyone on the network.
            self.fail(
                listen_path,
                f"listening on {host} (not loopback) needs http.auth: set auth.token or "
                "auth.token_file (or auth.basic), or listen on 127.0.0.1",
            )
        return listen, auth

    def http_auth(self, value: Any, path: str) -> HttpAuth:
        auth = self.mapping(value, path, "a mapping of HTTP credentials", _HTTP_AUTH_KEYS)
        if "token" in auth and "token_file" in auth:
            self.fail(_child(path, "token_file"), "set either 'token' or 'token_file', not both")
        token = None
        if "token" in auth or "token_file" in auth:
            key = "token" if "token" in auth else "token_file"
            key_path = _child(path, key)
            if key == "token":
                text = self.text(auth[key], key_path).value
            else:
                name = self.nonempty(auth[key], key_path, "a file name").value
                text = self.read_credential(self.credential_path(name), key_path)
            self.secret(text)
            if len(text) < MIN_TOKEN_LENGTH or any(c.isspace() for c in text):
                self.fail(
                    key_path,
                    f"the token must be at least {MIN_TOKEN_LENGTH} characters without spaces "
                    "(make one with: openssl rand -hex 32)",
                )
            token = Secret(text)
        user = password_hash = None
        if "basic" in auth:
            basic_path = _child(path, "basic")
            basic = self.mapping(
                auth["basic"], basic_path, "user and password_hash", _HTTP_BASIC_KEYS
            )
            user_path = _child(basic_path, "user")
            user = self.nonempty(self.require(basic, basic_path, "user"), user_path).value
            if ":" in user or not user.isprintable():
                self.fail(
                    user_path, "a basic-auth user name cannot contain ':' or control characters"
                )
            hash_path = _child(basic_path, "password_hash")
            hashed = self.nonempty(
                self.require(basic, basic_path, "password_hash"), hash_path, "an scrypt hash"
            ).value
            try:
                parse_password_hash(hashed)
            except ValueError as exc:
                self.fail(hash_path, str(exc))
            self.secret(hashed)
            password_hash = Secret(hashed)
        if token is None and user is None:
            self.fail(path, "expected 'token', 'token_file' or 'basic' (or drop http.auth)")
        return HttpAuth(token=token, basic_user=user, basic_password_hash=password_hash)


def _names_key_pair(source: _Map) -> bool:
    return any(key in source for key in ("ak", "ak_file", "sk", "sk_file"))


def _normalise_endpoint(text: str) -> str | None:
    """`scheme://host[:port]` when `text` is an http(s) origin without path, else None."""
    try:
        parts = urllib.parse.urlsplit(text.strip())
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        return None
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        return None
    return f"{parts.scheme.lower()}://{parts.netloc}"


def _format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds}s"


def _range_duration(value: timedelta) -> str:
    """Exact and short, in the largest unit that divides it: 10m, 90d, 1500ms."""
    millis = value // timedelta(milliseconds=1)
    for unit, factor in _DURATION_UNITS:
        if millis % factor == 0:
            return f"{millis // factor}{unit}"
    return f"{millis}ms"
