"""Readiness, decided purely: a source is stale when it has not polled successfully lately.

Shared by the daemon's /readyz (watcher.http) and `health` (which must stay cheap: no aiohttp).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["Readiness", "readiness"]


@dataclass(frozen=True, slots=True)
class Readiness:
    """Ready when no source is stale; `stale` names the ones that are, in config order."""

    ready: bool
    stale: tuple[str, ...]
    reason: str | None = None  # not ready for a reason of its own (the state file went away)


def readiness(
    last_ok: Mapping[str, datetime | None],
    intervals: Mapping[str, timedelta],
    now: datetime,
    factor: float = 3.0,
) -> Readiness:
    """Each source in `intervals` is stale if it never succeeded or not within factor × interval.

    Several intervals of grace, so one slow or failed poll does not flap the probe.
    """
    stale = tuple(
        source
        for source, interval in intervals.items()
        if (last := last_ok.get(source)) is None or now - last > interval * factor
    )
    return Readiness(ready=not stale, stale=stale)
