"""The document's top level: which sections there are, the order they are read in, and the
`Config` they make; optional keys left out take the defaults the model dataclasses state.
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Any

from watcher.config.channels import ChannelsSection
from watcher.config.files import storage_problem
from watcher.config.http import HttpSection
from watcher.config.ranges import MIN_RETENTION
from watcher.config.rules import RulesSection
from watcher.config.scalars import format_duration
from watcher.config.sources import SourcesSection
from watcher.config.yaml_loader import Map, at_key
from watcher.model import Config, DeliveryConfig, FirstRun, RuleConfig

TOP_KEYS = (
    "sources",
    "channels",
    "rules",
    "storage",
    "first_run",
    "delivery",
    "http",
    "retention",
)
DELIVERY_KEYS = ("retry_initial", "retry_max", "give_up_after", "send_timeout")
# `Config.storage` is required (every caller names one); a file without `storage:` gets this,
# relative to the config file's directory.
DEFAULT_STORAGE = "./metastudio-watcher.db"


class SchemaReader(SourcesSection, ChannelsSection, RulesSection, HttpSection):
    """Turns the parsed document into a `Config`, failing at the first problem."""

    def config(self, document: Any) -> Config:
        top = self.mapping(document, "", "a mapping with keys " + ", ".join(TOP_KEYS), TOP_KEYS)
        channels = self.channels(top.get("channels", Map(top.line)), "channels")
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
        # Only the keys the file gives: Config states every default.
        given: dict[str, Any] = {}
        if "first_run" in top:
            choices = [member.value for member in FirstRun]
            given["first_run"] = FirstRun(
                self.choice(top["first_run"], "first_run", choices, "mode")
            )
        if "delivery" in top:
            given["delivery"] = self.delivery(top["delivery"], "delivery")
        if "http" in top:
            given["http_listen"], given["http_auth"] = self.http(top["http"], "http")
        if "retention" in top:
            given["retention"] = self.duration(top["retention"], "retention", MIN_RETENTION)
        return Config(
            path=self.file,
            sources=sources,
            channels=MappingProxyType(channels),
            rules=rules,
            storage=storage,
            channel_policies=MappingProxyType(dict(self.channel_policies)),
            lines=MappingProxyType({k: v for k, v in self.lines.items() if k}),
            secrets=frozenset(self.secrets),
            **given,
        )

    def delivery(self, value: Any, path: str) -> DeliveryConfig:
        delivery = self.mapping(value, path, "a mapping of delivery settings", DELIVERY_KEYS)
        values = {key: self.duration(raw, at_key(path, key)) for key, raw in delivery.items()}
        result = DeliveryConfig(**values)
        if result.retry_initial > result.retry_max:
            key = "retry_initial" if "retry_initial" in delivery else "retry_max"
            self.fail(
                at_key(path, key),
                f"retry_initial ({format_duration(result.retry_initial)}) must not be longer "
                f"than retry_max ({format_duration(result.retry_max)})",
            )
        return result
