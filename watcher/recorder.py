"""What polling and delivery report as they work (polls, API errors, jobs, events, alerts,
scans): the `Recorder` they are given, and `Unrecorded`, the one of a process nobody scrapes.

`watcher.metrics.Metrics` is the recorder of `run`, behind /metrics. `once` from cron serves
nothing and exits after its cycle, so what it would count is never read: it records nothing
and never imports prometheus_client (~13 ms of start-up, and ~1 MB of a 100k-job
baseline's peak, which was just over the 100 MB it must stay under).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Protocol

# An alert's delivery outcomes, as the `watcher_alerts_total` counter labels them.
ALERT_OUTCOMES = frozenset({"sent", "failed", "dead"})


def check_outcome(outcome: str) -> None:
    """A caller's mistake either way, scraped or not: found in `once` as in `run`."""
    if outcome not in ALERT_OUTCOMES:
        raise ValueError(f"alert outcome must be one of sent, failed, dead (got {outcome!r})")


class Recorder(Protocol):
    """What the daemon and delivery call as things happen: `Metrics` or `Unrecorded`."""

    def add_sources(self, sources: Iterable[str]) -> None: ...
    def add_channels(self, channels: Iterable[str]) -> None: ...
    def poll_finished(self, source: str, ok: bool, seconds: float, now: datetime) -> None: ...
    def api_error(self, source: str, code: str | None) -> None: ...
    def jobs_by_state(self, source: str, counts: Mapping[str, int]) -> None: ...
    def event(self, source: str, kind: str) -> None: ...
    def alert(self, channel: str, outcome: str) -> None: ...
    def outbox_depth(self, counts: Mapping[str, int], held: int = 0) -> None: ...
    def incremental_miss(self, source: str) -> None: ...
    def strategy_demoted(self, source: str, strategy: str) -> None: ...
    def scan_progress(
        self, source: str, done: int, total: int | None, *, baseline: bool
    ) -> None: ...
    def scan_finished(self, source: str) -> None: ...


class Unrecorded:
    """The recorder of `once`: every report is dropped (the alert outcome still checked)."""

    def add_sources(self, sources: Iterable[str]) -> None:
        pass

    def add_channels(self, channels: Iterable[str]) -> None:
        pass

    def poll_finished(self, source: str, ok: bool, seconds: float, now: datetime) -> None:
        pass

    def api_error(self, source: str, code: str | None) -> None:
        pass

    def jobs_by_state(self, source: str, counts: Mapping[str, int]) -> None:
        pass

    def event(self, source: str, kind: str) -> None:
        pass

    def alert(self, channel: str, outcome: str) -> None:
        check_outcome(outcome)

    def outbox_depth(self, counts: Mapping[str, int], held: int = 0) -> None:
        pass

    def incremental_miss(self, source: str) -> None:
        pass

    def strategy_demoted(self, source: str, strategy: str) -> None:
        pass

    def scan_progress(self, source: str, done: int, total: int | None, *, baseline: bool) -> None:
        pass

    def scan_finished(self, source: str) -> None:
        pass
