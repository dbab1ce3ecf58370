"""The `sources:` section: where to poll (region or endpoint), as whom, how often, what for.

Optional keys the file leaves out take the defaults `SourceConfig` states.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from watcher.config.credentials import CredentialsSection
from watcher.config.ranges import MIN_ENRICH_TIMEOUT, MIN_POLL_INTERVAL
from watcher.config.reader import model_default, suggest
from watcher.config.scalars import format_duration
from watcher.config.yaml_loader import Map, Seq, at_index, at_key, kind
from watcher.metastudio.regions import REGION_ENDPOINTS
from watcher.model import SourceConfig

KNOWN_REGIONS: Mapping[str, str] = REGION_ENDPOINTS
SOURCE_KEYS = (
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
FILTER_KEYS = (
    "state",
    "job_id",
    "voice_name",
    "tag",
    "job_type",
    "batch_name",
    "create_since",
    "create_until",
)
# The list API's job_type values (API reference, ListVoiceTrainingJob).
JOB_TYPES = ("BASIC", "MIDDLE", "ADVANCE", "THIRD_PARTY", "THIRD_PARTY_LJZN", "FLEXUS")
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SourcesSection(CredentialsSection):
    """Reads `sources:` into `SourceConfig`s."""

    def sources(self, value: Any, path: str) -> tuple[SourceConfig, ...]:
        if not isinstance(value, Seq):
            self.fail(path, f"expected a list of sources (got {kind(value)})")
        if not value:
            self.fail(path, "expected at least one source")
        first_seen: dict[str, int] = {}
        out = []
        for index, item in enumerate(value):
            source = self.source(item, at_index(path, index))
            self.unique_name(source.name, at_index(path, index), first_seen, "source")
            out.append(source)
        return tuple(out)

    def source(self, value: Any, path: str) -> SourceConfig:
        source = self.mapping(value, path, "a mapping of source settings", SOURCE_KEYS)
        name = self.text(self.require(source, path, "name"), at_key(path, "name")).value
        if not _SOURCE_NAME.fullmatch(name):
            self.fail(
                at_key(path, "name"),
                "a source name must be letters, digits, '-', '_' or '.' (and not start with them)",
            )
        region, endpoint = self.endpoint(source, path)
        project_id = self.nonempty(
            self.require(source, path, "project_id"), at_key(path, "project_id")
        ).value
        ak, sk, token = self.credentials(source, path)
        # Only the keys the file gives: SourceConfig states every default (read in that order,
        # so the first problem reported stays the first in the file's key order).
        given: dict[str, Any] = {}
        if "app_user_id" in source:
            given["app_user_id"] = self.nonempty(
                source["app_user_id"], at_key(path, "app_user_id")
            ).value
        if "poll_interval" in source:
            given["poll_interval"] = self.duration(
                source["poll_interval"], at_key(path, "poll_interval"), MIN_POLL_INTERVAL
            )
        if "request_timeout" in source:
            given["request_timeout"] = self.duration(
                source["request_timeout"], at_key(path, "request_timeout")
            )
        if "filters" in source:
            given["filters"] = self.filters(source["filters"], at_key(path, "filters"))
        if "full_scan_every" in source:
            poll_interval = given.get("poll_interval", model_default(SourceConfig, "poll_interval"))
            given["full_scan_every"] = self.full_scan_every(
                source["full_scan_every"], at_key(path, "full_scan_every"), poll_interval
            )
        if "settled_states" in source:
            given["settled_states"] = self.settled_states(
                source["settled_states"], at_key(path, "settled_states")
            )
        if "max_requests_per_second" in source:
            given["max_requests_per_second"] = self.positive_number(
                source["max_requests_per_second"], at_key(path, "max_requests_per_second")
            )
        if "page_concurrency" in source:
            given["page_concurrency"] = int(
                self.positive_number(
                    source["page_concurrency"], at_key(path, "page_concurrency"), integer=True
                )
            )
        if "batch_quiet" in source:
            given["batch_quiet"] = self.duration(source["batch_quiet"], at_key(path, "batch_quiet"))
        if "enrich_timeout" in source:
            given["enrich_timeout"] = self.duration(
                source["enrich_timeout"], at_key(path, "enrich_timeout"), MIN_ENRICH_TIMEOUT
            )
        return SourceConfig(
            name=name,
            endpoint=endpoint,
            region=region,
            project_id=project_id,
            ak=ak,
            sk=sk,
            security_token=token,
            **given,
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
                f"({format_duration(poll_interval)})",
            )
        return every

    def settled_states(self, value: Any, path: str) -> tuple[str, ...]:
        items = self.texts(value, path, "a list of states")
        if not items:
            self.fail(path, "expected at least one state")
        return tuple(self.state(text, item_path) for text, item_path in items)

    def endpoint(self, source: Map, path: str) -> tuple[str | None, str]:
        region: str | None = None
        shown = ""
        if "region" in source:
            region_text = self.nonempty(source["region"], at_key(path, "region"))
            region, shown = region_text.value, region_text.shown
        if "endpoint" in source:
            endpoint_path = at_key(path, "endpoint")
            endpoint = normalise_endpoint(self.text(source["endpoint"], endpoint_path).value)
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
                at_key(path, "region"),
                f"unknown region {shown!r}{suggest(region, known)}; known regions: "
                f"{', '.join(known)} (for another region set "
                "endpoint: https://metastudio.REGION.myhuaweicloud.com)",
            )
        return region, KNOWN_REGIONS[region]

    def filters(self, value: Any, path: str) -> tuple[tuple[str, str], ...]:
        filters = self.mapping(value, path, "a mapping of API query parameters", FILTER_KEYS)
        out = []
        for key, raw in filters.items():
            key_path = at_key(path, key)
            if key == "state":
                items = self.texts(raw, key_path, "a state or a list of states")
                states = [self.state(text, item_path) for text, item_path in items]
                out.append((key, ",".join(states)))
            elif key == "job_type":
                # An unknown type filters every job out: the watcher would poll, see nothing
                # and never alert.
                out.append((key, self.choice(raw, key_path, JOB_TYPES, "job type")))
            else:
                out.append((key, self.nonempty(raw, key_path).value))
        return tuple(out)


def normalise_endpoint(text: str) -> str | None:
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
