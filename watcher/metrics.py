"""Prometheus metrics of the watcher: polls, API errors, jobs by state, events, alerts, outbox.

Each `Metrics` owns its own registry, so tests (and a reload) can make as many as they like.
Every series exists from the first scrape (0 until something happens), so alerts such as
"no successful poll for 15 minutes" fire on a deploy that never worked.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector

from watcher.model import KNOWN_STATES, EventKind, OutboxStatus
from watcher.recorder import ALERT_OUTCOMES, check_outcome

__all__ = ["ALERT_OUTCOMES", "CONTENT_TYPE", "Metrics"]

# The classic text format: every name here is a legal legacy name, and every Prometheus
# version accepts it without negotiation.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
POLL_OUTCOMES = ("ok", "error")
# The API errors an operator acts on (README, "Troubleshooting"), created at 0 per source so
# that increase() works from the first one; others appear when they happen.
KNOWN_API_CODES = ("APIGW.0301", "APIGW.0303", "APIGW.0308", "APIGW.0310", "none")
# Depth is what waits: pending (to be sent, retries included), held (quiet hours, grouping,
# rate limit) and dead. Sent and silenced rows are history, not depth.
OUTBOX_DEPTH_STATUSES = ("pending", "held", "dead")

# `*_created` series double every counter and nobody alerts on them.
disable_created_metrics()  # type: ignore[no-untyped-call]
# Polls page through the whole job list: seconds to minutes, not milliseconds.
_POLL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """What the daemon reports, in plain arguments (a `watcher.recorder.Recorder`); `render()`
    gives the text exposition."""

    content_type = CONTENT_TYPE

    def __init__(self, *, process: bool = True) -> None:
        """`process` adds the standard process_* metrics (memory, CPU, open files)."""
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            _ProcessCollector(registry=self.registry)
        r = self.registry
        self._polls = Counter(
            "watcher_polls", "Completed polls of a source", ["source", "outcome"], registry=r
        )
        self._poll_seconds = Histogram(
            "watcher_poll_duration_seconds",
            "Time one poll of a source took, successful or not",
            ["source"],
            buckets=_POLL_BUCKETS,
            registry=r,
        )
        self._api_errors = Counter(
            "watcher_api_errors",
            "Failed MetaStudio API reads, by error code ('none' when the API gave none)",
            ["source", "code"],
            registry=r,
        )
        self._jobs = Gauge(
            "watcher_jobs", "Jobs seen in the last successful poll", ["source", "state"], registry=r
        )
        self._events = Counter("watcher_events", "Events detected", ["source", "kind"], registry=r)
        self._alerts = Counter(
            "watcher_alerts",
            "Alert delivery attempts, by outcome (sent, failed, dead)",
            ["channel", "outcome"],
            registry=r,
        )
        self._outbox = Gauge(
            "watcher_outbox_depth", "Alerts in the outbox, by status", ["status"], registry=r
        )
        self._last_ok = Gauge(
            "watcher_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful poll of a source",
            ["source"],
            registry=r,
        )
        self._incremental_misses = Counter(
            "watcher_incremental_misses",
            "Incremental polls that had to fall back to a full scan",
            ["source"],
            registry=r,
        )
        self._demotions = Counter(
            "watcher_strategy_demotions",
            "Incremental strategies demoted because the API refused or ignored a parameter",
            ["source", "strategy"],
            registry=r,
        )
        self._scan_pages = Gauge(
            "watcher_scan_pages",
            "Pages of the scan in flight: fetched (done) and implied by its count (total)",
            ["source", "kind"],
            registry=r,
        )
        # source -> (pages done, pages total, first scan?) of the scan in flight, for /readyz.
        self.scans: dict[str, tuple[int, int | None, bool]] = {}
        self._source_up = Gauge(
            "watcher_source_up",
            "1 when the last poll of a source succeeded, 0 until one does and after a failure",
            ["source"],
            registry=r,
        )
        self._states_seen: dict[str, set[str]] = {}
        for status in OUTBOX_DEPTH_STATUSES:
            self._outbox.labels(status=status).set(0)

    def add_sources(self, sources: Iterable[str]) -> None:
        """Create each source's series at 0, so rates and staleness alerts work from the start."""
        for source in sources:
            for outcome in POLL_OUTCOMES:
                self._polls.labels(source=source, outcome=outcome)
            for code in KNOWN_API_CODES:
                self._api_errors.labels(source=source, code=code)
            for kind in EventKind:
                self._events.labels(source=source, kind=kind.value)
            for state in sorted(KNOWN_STATES):
                self._jobs.labels(source=source, state=state)
            self._states_seen.setdefault(source, set()).update(KNOWN_STATES)
            self._poll_seconds.labels(source=source)
            self._incremental_misses.labels(source=source)
            self._source_up.labels(source=source)
            self._last_ok.labels(source=source)

    def add_channels(self, channels: Iterable[str]) -> None:
        """Create each channel's delivery counters at 0."""
        for channel in channels:
            for outcome in sorted(ALERT_OUTCOMES):
                self._alerts.labels(channel=channel, outcome=outcome)

    def poll_finished(self, source: str, ok: bool, seconds: float, now: datetime) -> None:
        self._polls.labels(source=source, outcome="ok" if ok else "error").inc()
        self._poll_seconds.labels(source=source).observe(seconds)
        self._source_up.labels(source=source).set(1 if ok else 0)
        if ok:
            self._last_ok.labels(source=source).set(now.timestamp())

    def api_error(self, source: str, code: str | None) -> None:
        self._api_errors.labels(source=source, code=code or "none").inc()

    def jobs_by_state(self, source: str, counts: Mapping[str, int]) -> None:
        """Replace the source's counts; a state that emptied reads 0 rather than vanishing."""
        seen = self._states_seen.setdefault(source, set())
        for state in seen - counts.keys():
            self._jobs.labels(source=source, state=state).set(0)
        for state, count in counts.items():
            self._jobs.labels(source=source, state=state).set(count)
        seen.update(counts)

    def event(self, source: str, kind: str) -> None:
        self._events.labels(source=source, kind=str(kind)).inc()

    def alert(self, channel: str, outcome: str) -> None:
        check_outcome(outcome)
        self._alerts.labels(channel=channel, outcome=outcome).inc()

    def outbox_depth(self, counts: Mapping[str, int], held: int = 0) -> None:
        """Set the depth from the store's counts by status; `held` of the pending ones are
        held back by noise control (they count as held, not pending)."""
        pending = counts.get(OutboxStatus.PENDING.value, 0)
        self._outbox.labels(status="pending").set(max(0, pending - held))
        self._outbox.labels(status="held").set(min(held, pending))
        self._outbox.labels(status="dead").set(counts.get(OutboxStatus.DEAD.value, 0))

    def incremental_miss(self, source: str) -> None:
        self._incremental_misses.labels(source=source).inc()

    def strategy_demoted(self, source: str, strategy: str) -> None:
        self._demotions.labels(source=source, strategy=strategy).inc()

    def scan_progress(self, source: str, done: int, total: int | None, *, baseline: bool) -> None:
        """A scan of `source` is in flight: `done` pages of `total` (None: not known yet)."""
        self.scans[source] = (done, total, baseline)
        self._scan_pages.labels(source=source, kind="done").set(done)
        self._scan_pages.labels(source=source, kind="total").set(total or 0)

    def scan_finished(self, source: str) -> None:
        if self.scans.pop(source, None) is not None:
            self._scan_pages.labels(source=source, kind="done").set(0)
            self._scan_pages.labels(source=source, kind="total").set(0)

    def scan_notes(self) -> dict[str, str]:
        """Per source with a scan in flight: "baseline in progress: N of M pages"."""
        return {
            source: scan_note(done, total, baseline=baseline)
            for source, (done, total, baseline) in sorted(self.scans.items())
        }

    def render(self) -> bytes:
        return generate_latest(self.registry)


def scan_note(done: int, total: int | None, *, baseline: bool) -> str:
    """`baseline in progress: 12 of 1000 pages` (`full scan …` for a later one)."""
    what = "baseline" if baseline else "full scan"
    of = f" of {total}" if total is not None else ""
    return f"{what} in progress: {done}{of} pages"


class _ProcessCollector(ProcessCollector):
    """process_* also where /proc/stat is hidden (systemd's ProcSubset=pid, which the unit
    sets): the boot time comes from CLOCK_BOOTTIME instead of /proc/stat's btime."""

    def _boot_time(self) -> float:
        try:
            btime: float = super()._boot_time()  # type: ignore[no-untyped-call]
        except OSError:
            btime = 0.0
        if btime:
            return btime
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
