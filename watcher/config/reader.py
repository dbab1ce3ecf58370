"""The reader's plumbing: where a key is, how a problem becomes `FILE:LINE: key: problem`,
and the typed getters (text, duration, number, choice, state) every section reads with.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NoReturn

from watcher.config.expansion import ExpansionError, Text, expand
from watcher.config.ranges import DURATION_CAP, DURATION_RANGES, NUMBER_RANGES
from watcher.config.scalars import (
    DURATION_EXPECTED,
    control_character,
    format_duration,
    parse_duration,
    range_duration,
    shorten,
)
from watcher.config.yaml_loader import Map, Seq, at_index, at_key, kind
from watcher.errors import ConfigError
from watcher.model import KNOWN_STATES, ChannelPolicy

UrlValidator = Callable[[str], str | None]

# Where a line break is meaningful: templates. Everywhere else (names, ids, URLs, paths) a
# control character makes every request or send fail, forever.
MULTILINE_KEYS = frozenset({"title", "body"})


def model_default(model: type[Any], name: str) -> Any:
    """The default the model dataclass states for `name`: the one place a default is written."""
    for spec in dataclasses.fields(model):
        if spec.name == name:
            if spec.default is not dataclasses.MISSING:
                return spec.default
            if spec.default_factory is not dataclasses.MISSING:
                return spec.default_factory()
            break
    raise LookupError(f"{model.__name__}.{name} has no default")


def suggest(word: str, choices: Sequence[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, or nothing."""
    lowered = {choice.lower(): choice for choice in choices}
    if word.lower() in lowered:
        return f" (did you mean {lowered[word.lower()]!r}?)"
    import difflib  # only a misspelt key or value needs it

    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


@dataclass
class Reader:
    """What every section reads with: the file's lines, the environment, the secrets seen so
    far; the sections (`schema.SchemaReader` and its bases) fail at the first problem."""

    file: str
    base_dir: str
    env: Mapping[str, str]
    lines: dict[str, int]
    validate_url: UrlValidator | None
    secrets: set[str] = field(default_factory=set)
    channel_policies: dict[str, ChannelPolicy] = field(default_factory=dict)

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

    def expand(self, raw: str, path: str, *, in_url: bool = False) -> Text:
        """Expand ${VAR}/${VAR:-default}. `in_url`: a value substituted into part of a URL is
        percent-encoded for where it lands (a password with @ / # % must still work)."""
        try:
            result = expand(raw, self.env, in_url=in_url)
        except ExpansionError as exc:
            self.fail(path, str(exc))
        self.no_control(result, path)
        return result

    def no_control(self, text: Text, path: str) -> None:
        """Names, ids, URLs and paths are one line: a control character breaks every use."""
        if path.rsplit(".", 1)[-1] in MULTILINE_KEYS:
            return
        found = control_character(text.value)
        if found is not None:
            origin = " (from a ${VAR})" if control_character(text.raw) is None else ""
            self.fail(path, f"contains the control character {found}{origin}; remove it")

    def mapping(self, value: Any, path: str, expected: str, keys: Sequence[str]) -> Map:
        if not isinstance(value, Map):
            self.fail(path, f"expected {expected} (got {kind(value)})")
        for key in value:
            if key not in keys:
                hint = suggest(key, keys)
                self.fail(
                    at_key(path, key),
                    f"unknown key {key!r}{hint}; expected one of: {', '.join(keys)}",
                )
        return value

    def require(self, mapping: Map, path: str, key: str, hint: str = "") -> Any:
        if key not in mapping:
            self.fail(path, f"missing required key {key!r}{hint}")
        return mapping[key]

    def text(self, value: Any, path: str, expected: str = "a string") -> Text:
        if not isinstance(value, str):
            self.fail(path, f"expected {expected} (got {kind(value)})")
        return self.expand(value, path)

    def nonempty(self, value: Any, path: str, expected: str = "a non-empty string") -> Text:
        text = self.text(value, path, expected)
        if not text.value.strip():
            self.fail(path, f"expected {expected} (got an empty string)")
        return text

    def texts(
        self, value: Any, path: str, expected: str, item: str = "a string"
    ) -> list[tuple[Text, str]]:
        """A list of strings (a single string counts as a one-item list), with item paths."""
        if isinstance(value, str):
            return [(self.expand(value, path), path)]
        if not isinstance(value, Seq):
            self.fail(path, f"expected {expected} (got {kind(value)})")
        if not value:
            self.fail(path, f"expected {expected} (got an empty list)")
        return [
            (self.text(entry, at_index(path, index), item), at_index(path, index))
            for index, entry in enumerate(value)
        ]

    def duration(self, value: Any, path: str, minimum: timedelta | None = None) -> timedelta:
        text = self.text(value, path, DURATION_EXPECTED.removeprefix("expected "))
        try:
            result = parse_duration(text.value)
        except ValueError:
            self.fail(path, f"{DURATION_EXPECTED} (got {text.shown!r})")
        if minimum is not None and result < minimum:
            self.fail(path, f"must be at least {format_duration(minimum)}")
        if minimum is None and result <= timedelta(0):
            self.fail(path, "must be longer than 0s")
        self.in_duration_range(result, path)
        return result

    def in_duration_range(self, value: timedelta, path: str) -> None:
        key = path.rsplit(".", 1)[-1]
        low, high = DURATION_RANGES.get(key, (timedelta(0), DURATION_CAP))
        if not low <= value <= high:
            self.fail(
                path,
                f"must be from {range_duration(low)} to {range_duration(high)} "
                f"(got {range_duration(value)})",
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
            hint = suggest(text.value, choices)
            self.fail(
                path, f"unknown {what} {text.shown!r}{hint}; expected one of: {', '.join(choices)}"
            )
        return text.value

    def state(self, text: Text, path: str) -> str:
        if text.value not in KNOWN_STATES:
            known = sorted(KNOWN_STATES)
            hint = suggest(text.value, known)
            if not hint:
                hint = f"; known states: {', '.join(known)}"
            self.fail(path, f"unknown state {text.shown!r}{hint}")
        return text.value

    def positive_number(self, value: Any, path: str, *, integer: bool = False) -> float:
        expected = "a whole number above 0" if integer else "a number above 0"
        if isinstance(value, bool):
            self.fail(path, f"expected {expected} (got {kind(value)})")
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
        low, high = NUMBER_RANGES.get(path.rsplit(".", 1)[-1], (0.0, math.inf))
        if not low <= number <= high:
            shown = str(int(number)) if integer else f"{number:g}"
            self.fail(path, f"must be from {low:g} to {high:g} (got {shown})")
        return number

    def unique_name(self, name: str, item_path: str, first_seen: dict[str, int], what: str) -> None:
        """Names identify sources and rules in alerts and logs: each may appear once."""
        name_path = at_key(item_path, "name")
        if name in first_seen:
            self.fail(
                name_path,
                f"duplicate {what} name {shorten(name)!r} (first at line {first_seen[name]})",
            )
        first_seen[name] = self.line(name_path)
