"""What MetaStudio's documented error codes mean and what to do: the package's code table.

Pure lookups over `watcher/data/mss_error_codes.json` (its `source` names the page). Only
documented codes are listed; any other code passes through unchanged, unexplained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True, slots=True)
class Explanation:
    code: str
    message: str  # the documented error message
    description: str  # the documented description (Chinese, as the page has it)
    action: str  # the documented action (Chinese)
    action_en: str  # its English rendering

    def line(self) -> str:
        """One line for an alert or a CLI error."""
        meaning = self.message
        if self.description and self.description != self.message:
            meaning += f" ({self.description})"
        return f"{self.code} means: {meaning}; what to do: {self.action_en} ({self.action})"


def _read() -> dict[str, Any]:
    """The table file, read when a code is first explained (never at import: most runs
    explain none, and importlib.resources costs more than the lookup)."""
    from importlib import resources

    raw: dict[str, Any] = json.loads(
        resources.files("watcher").joinpath("data/mss_error_codes.json").read_text("utf-8")
    )
    return raw


@cache
def _table() -> dict[str, Explanation]:
    raw = _read()
    return {
        code: Explanation(
            code,
            str(entry["message"]),
            str(entry["description"]),
            str(entry["action"]),
            str(entry["action_en"]),
        )
        for code, entry in raw["codes"].items()
    }


def table_source() -> str:
    return str(_read()["source"])


def explain(code: str | None) -> Explanation | None:
    """The documented meaning of `code`, or None (unknown codes are not guessed at)."""
    if not code:
        return None
    return _table().get(code.strip().upper())


def with_explanation(text: str, code: str | None) -> str:
    """`text`, followed by what `code` means when it is documented; unchanged otherwise."""
    found = explain(code)
    return f"{text} — {found.line()}" if found is not None else text
