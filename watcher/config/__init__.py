"""YAML file -> `Config`: strict parsing, `${VAR}` expansion and validation.

Every problem is a `ConfigError` pointing at `FILE:LINE: key`, and no secret ever shows in one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from watcher.config.credentials import describe_credentials
from watcher.config.files import config_warnings, read_config_bytes, storage_problem
from watcher.config.files import filesystem_type as _filesystem_type
from watcher.config.http import DEFAULT_LISTEN
from watcher.config.ranges import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_VALUES,
    MIN_POLL_INTERVAL,
    MIN_RETENTION,
    MIN_TOKEN_LENGTH,
)
from watcher.config.reader import UrlValidator
from watcher.config.scalars import (
    DURATION_EXPECTED,
    LISTEN_EXPECTED,
    parse_duration,
    parse_listen,
)
from watcher.config.schema import DEFAULT_STORAGE, SchemaReader
from watcher.config.sources import KNOWN_REGIONS
from watcher.config.yaml_loader import expanded_size, index_lines, parse_yaml
from watcher.errors import ConfigError
from watcher.model import Config

# Reading order: files (the file, read safely) -> yaml_loader (strict YAML, lines kept) ->
# schema (the top level) and its sections sources, credentials, channels, rules, http, over
# reader (plumbing), expansion (${VAR}), scalars (durations, HOST:PORT) and ranges (limits).

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_STORAGE",
    "DURATION_EXPECTED",
    "KNOWN_REGIONS",
    "LISTEN_EXPECTED",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_VALUES",
    "MIN_POLL_INTERVAL",
    "MIN_RETENTION",
    "MIN_TOKEN_LENGTH",
    "UrlValidator",
    "_filesystem_type",
    "config_warnings",
    "describe_credentials",
    "load_config",
    "load_config_text",
    "parse_duration",
    "parse_listen",
    "storage_problem",
]


def load_config(
    path: str,
    env: Mapping[str, str] | None = None,
    *,
    validate_url: UrlValidator | None = None,
) -> Config:
    """Read and validate the config file; `validate_url` is apprise's URL checker, if any."""
    try:
        data = read_config_bytes(path)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read the configuration file: {reason}", file=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("the configuration file is not UTF-8 text", file=path) from None
    return load_config_text(text, path, env, validate_url)


def load_config_text(
    text: str,
    path: str,
    env: Mapping[str, str] | None = None,
    validate_url: UrlValidator | None = None,
) -> Config:
    """Parse `text` as if read from `path` (relative paths in it resolve against its directory)."""
    document = parse_yaml(text, path)
    lines: dict[str, int] = {}
    duplicates: list[ConfigError] = []
    if document is None:
        raise ConfigError(
            "the configuration is empty: expected a mapping with at least 'sources'",
            file=path,
            line=1,
        )
    try:
        expanded = expanded_size(document, {})
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file=path, line=1) from None
    if expanded > MAX_CONFIG_VALUES:
        raise ConfigError(
            f"the configuration expands to {expanded} values through YAML aliases (*name); "
            f"at most {MAX_CONFIG_VALUES} are accepted",
            file=path,
            line=1,
        )
    index_lines(document, "", path, lines, duplicates, set())
    if duplicates:
        raise min(duplicates, key=lambda err: err.line or 0)
    reader = SchemaReader(
        file=path,
        base_dir=os.path.dirname(os.path.abspath(path)),
        env=os.environ if env is None else env,
        lines=lines,
        validate_url=validate_url,
    )
    return reader.config(document)
