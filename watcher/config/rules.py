"""The `rules:` section: which events (states, transitions, kinds, job fields) go to which
channels, how they are worded, grouped and repeated; stuck-rule combinations checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from watcher.config.reader import Reader, suggest
from watcher.config.yaml_loader import Map, Seq, at_index, at_key, kind
from watcher.model import BodyFormat, EventKind, RuleConfig

RULE_KEYS = (
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
# A rule without on: matches a change to any state (RuleConfig requires `on`, so this is the
# one place that default is written).
EVERY_STATE: tuple[str, ...] = ("*",)
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RulesSection(Reader):
    """Reads `rules:` into `RuleConfig`s, checking each names defined channels."""

    def rules(
        self, value: Any, path: str, channels: Mapping[str, object]
    ) -> tuple[RuleConfig, ...]:
        if not isinstance(value, Seq):
            self.fail(path, f"expected a list of rules (got {kind(value)})")
        first_seen: dict[str, int] = {}
        out = []
        for index, item in enumerate(value):
            rule = self.rule(item, at_index(path, index), channels)
            self.unique_name(rule.name, at_index(path, index), first_seen, "rule")
            out.append(rule)
        return tuple(out)

    def rule(self, value: Any, path: str, channels: Mapping[str, object]) -> RuleConfig:
        rule = self.mapping(value, path, "a mapping of rule settings", RULE_KEYS)
        name_path = at_key(path, "name")
        name = self.nonempty(self.require(rule, path, "name"), name_path).value
        if not name.isprintable():
            self.fail(name_path, "a rule name must be one line of printable text")
        # Only the keys the file gives: RuleConfig states every default (read in the file's
        # documented key order, so the first problem reported stays the same).
        given: dict[str, Any] = {}
        on = EVERY_STATE
        if "on" in rule:
            on = self.states(rule["on"], at_key(path, "on"))
        if "from" in rule:
            from_states = self.states(rule["from"], at_key(path, "from"))
            if from_states != EVERY_STATE:  # from: '*' is no condition at all
                given["from_states"] = from_states
        if "events" in rule:
            given["events"] = self.events(rule["events"], at_key(path, "events"))
        if "where" in rule:
            given["where"] = self.where(rule["where"], at_key(path, "where"))
        notify = self.notify(self.require(rule, path, "notify"), at_key(path, "notify"), channels)
        if "title" in rule:
            given["title"] = self.text(rule["title"], at_key(path, "title")).value
        if "body" in rule:
            given["body"] = self.text(rule["body"], at_key(path, "body")).value
        if "format" in rule:
            choices = [member.value for member in BodyFormat]
            given["format"] = BodyFormat(
                self.choice(rule["format"], at_key(path, "format"), choices, "format")
            )
        if "continue" in rule:
            given["stop"] = not self.boolean(rule["continue"], at_key(path, "continue"))
        if "for" in rule:
            given["for_"] = self.duration(rule["for"], at_key(path, "for"))
        if "repeat" in rule:
            given["repeat"] = self.duration(rule["repeat"], at_key(path, "repeat"))
        self.stuck_combination(
            rule, path, on, given.get("events"), given.get("for_"), given.get("repeat")
        )
        if "urgent" in rule:
            given["urgent"] = self.boolean(rule["urgent"], at_key(path, "urgent"))
        if "group_by" in rule:
            given["group_by"] = self.group_by(rule["group_by"], at_key(path, "group_by"))
        if "group_wait" in rule:
            given["group_wait"] = self.duration(rule["group_wait"], at_key(path, "group_wait"))
        if "group_interval" in rule:
            given["group_interval"] = self.duration(
                rule["group_interval"], at_key(path, "group_interval")
            )
        given.update(self.group_message(rule, path))
        if given.get("format") is BodyFormat.JSON and given.get("body") is not None:
            # The JSON document is the body; a template there would be silently ignored.
            self.fail(
                at_key(path, "body"),
                "format: json sends the JSON document as the body; remove body: (title: "
                "still applies) or use another format",
            )
        return RuleConfig(name=name, on=on, notify=notify, **given)

    def group_message(self, rule: Map, path: str) -> dict[str, Any]:
        """A rule's templates and list length for grouped messages, those the file gives."""
        given: dict[str, Any] = {}
        if "group_title" in rule:
            given["group_title"] = self.text(rule["group_title"], at_key(path, "group_title")).value
        if "group_body" in rule:
            given["group_body"] = self.text(rule["group_body"], at_key(path, "group_body")).value
        if "group_limit" in rule:
            given["group_limit"] = int(
                self.positive_number(rule["group_limit"], at_key(path, "group_limit"), integer=True)
            )
        return given

    def stuck_combination(
        self,
        rule: Map,
        path: str,
        on: tuple[str, ...],
        events: tuple[EventKind, ...] | None,
        for_: timedelta | None,
        repeat: timedelta | None,
    ) -> None:
        """`for:`/`repeat:` only where they can mean something (else stuck alerts misfire)."""
        if repeat is not None and for_ is None:
            self.fail(at_key(path, "repeat"), "repeat: needs for: (it repeats a stuck alert)")
        if for_ is None:
            if events is not None and EventKind.STUCK in events:
                self.fail(
                    at_key(path, "events"),
                    "the stuck event needs for: (how long a job may stay in the on: states)",
                )
            return
        for_path = at_key(path, "for")
        if "on" not in rule or on == ("*",):
            self.fail(
                for_path,
                "for: needs on: naming the states a job may get stuck in (not '*'), e.g. "
                "on: [AUDITING]",
            )
        if "SUCCEED" in on:
            self.fail(at_key(path, "on"), "a job in SUCCEED is finished: it cannot be stuck (for:)")
        if events is not None and EventKind.STUCK not in events:
            self.fail(
                at_key(path, "events"),
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
                    f"unknown event kind {text.shown!r}{suggest(text.value, kinds)}; "
                    f"expected one of: {', '.join(kinds)}",
                )
            out.append(EventKind(text.value))
        return tuple(out)

    def where(self, value: Any, path: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        if not isinstance(value, Map):
            self.fail(
                path, f"expected a mapping of job field to values or globs (got {kind(value)})"
            )
        out = []
        for field_name, raw in value.items():
            field_path = at_key(path, field_name)
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
                    f"unknown channel {text.shown!r}{suggest(text.value, known)}; "
                    f"defined channels: {', '.join(known)}",
                )
            out.append(text.value)
        return tuple(out)
