"""What one source's polling remembers between cycles (and runs): a frozen value that each
committed cycle replaces with the next one, never edits.

Strategies and their demotions live here too: which listing the next cycle may use.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from watcher.model import SourceConfig


class Strategy(StrEnum):
    CHANGED_SINCE = "changed_since"
    ACTIVE_SET = "active_set"
    # Every cheaper strategy is demoted: nothing but a full scan can be trusted.
    FULL_ONLY = "full_only"


# Tried in this order; the first one not demoted is used.
LADDER = (Strategy.CHANGED_SINCE, Strategy.ACTIVE_SET)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _from_iso(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Cursor:
    """What one source's incremental polling remembers between cycles (and runs: it is
    stored, so `once` from cron is as cheap as the daemon). Each change returns a new
    cursor; the mappings inside are never edited either."""

    # The API's time when the last committed listing started: every later change is newer.
    watermark: datetime | None = None
    last_full_at: datetime | None = None  # our clock
    full_count: int | None = None
    # Watermark of the last incremental cycle since the last full scan (None: none ran), so
    # the next full scan can tell what those cycles should have seen.
    covered_until: datetime | None = None
    # Jobs a lookup answered 404 for since the last full scan: not looked up again.
    gone: frozenset[str] = frozenset()
    # Strategies found unusable, until when (our clock), and why.
    demoted: Mapping[Strategy, datetime] = field(default_factory=dict)
    reasons: Mapping[Strategy, str] = field(default_factory=dict)
    # Strategies whose demotion was already logged as a warning: re-verification that
    # fails again is not news.
    noted: frozenset[Strategy] = frozenset()
    # The API's clock minus ours, in seconds, as last seen (for a full scan's create_until);
    # None until a listing has shown it.
    server_offset: float | None = None
    # Full scans come back in another order than asked (`sort_key`/`sort_dir` are not on the
    # API page: documented regions list newest first). Kept so it is said once, not per run.
    sort_ignored: bool = False

    def strategy_at(self, now: datetime) -> Strategy:
        """The cheapest strategy not demoted at `now`."""
        for strategy in LADDER:
            until = self.demoted.get(strategy)
            if until is None or now >= until:
                return strategy
        return Strategy.FULL_ONLY

    def is_news(self, strategy: Strategy) -> bool:
        """Whether demoting `strategy` now would be news (it was never demoted before)."""
        return strategy not in self.noted

    def demote(self, strategy: Strategy, *, now: datetime, hold: timedelta, reason: str) -> Cursor:
        """This cursor with `strategy` unused for `hold`."""
        return replace(
            self,
            demoted={**self.demoted, strategy: now + hold},
            reasons={**self.reasons, strategy: reason},
            noted=self.noted | {strategy},
        )

    def after_full_scan(
        self, *, now: datetime, server_time: datetime, count: int, reverify: bool = False
    ) -> Cursor:
        """The cursor after a committed full scan; `reverify` (a scheduled one) lifts every
        demotion, so the next cycle checks again whether the region honours the cheaper
        parameters."""
        return replace(
            self,
            watermark=server_time,
            last_full_at=now,
            full_count=count,
            covered_until=None,
            gone=frozenset(),
            demoted={} if reverify else self.demoted,
        )

    def after_increment(self, watermark: datetime, gone: Collection[str]) -> Cursor:
        """The cursor after a committed incremental cycle."""
        return replace(
            self, watermark=watermark, covered_until=watermark, gone=self.gone.union(gone)
        )

    def to_json(self, scope: str) -> dict[str, Any]:
        """Plain JSON for the store; `scope` fingerprints what the cursor is valid for."""
        return {
            "scope": scope,
            "watermark": _iso(self.watermark),
            "last_full_at": _iso(self.last_full_at),
            "full_count": self.full_count,
            "covered_until": _iso(self.covered_until),
            "gone": sorted(self.gone),
            "demoted": {str(k): _iso(v) for k, v in sorted(self.demoted.items())},
            "reasons": {str(k): v for k, v in sorted(self.reasons.items())},
            "noted": sorted(str(s) for s in self.noted),
            "server_offset": self.server_offset,
            "sort_ignored": self.sort_ignored,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, scope: str) -> Cursor:
        """A stored cursor, or a fresh one when there is none or it was for another scope
        (other filters, project or endpoint: its watermark would say nothing)."""
        if not data or data.get("scope") != scope:
            return cls()
        strategies = {s.value: s for s in Strategy}
        demoted: dict[Strategy, datetime] = {}
        for key, value in dict(data.get("demoted") or {}).items():
            until = _from_iso(value)
            if key in strategies and until is not None:
                demoted[strategies[key]] = until
        count = data.get("full_count")
        offset = data.get("server_offset")
        return cls(
            server_offset=float(offset) if isinstance(offset, int | float) else None,
            watermark=_from_iso(data.get("watermark")),
            last_full_at=_from_iso(data.get("last_full_at")),
            full_count=count if isinstance(count, int) else None,
            covered_until=_from_iso(data.get("covered_until")),
            gone=frozenset(str(j) for j in data.get("gone") or ()),
            demoted=demoted,
            reasons={
                strategies[k]: str(v)
                for k, v in dict(data.get("reasons") or {}).items()
                if k in strategies
            },
            noted=frozenset(strategies[k] for k in data.get("noted") or () if k in strategies),
            sort_ignored=data.get("sort_ignored") is True,
        )


def cursor_scope(source: SourceConfig) -> str:
    """What a stored cursor is valid for: the same listing of the same project."""
    filters = "&".join(f"{k}={v}" for k, v in sorted(source.filters))
    return f"{source.endpoint}|{source.project_id}|{filters}"
