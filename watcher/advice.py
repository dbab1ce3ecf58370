"""What `check` advises about a valid config: events that no rule would route anywhere.

Pure: warnings in words, never errors (exit 0). A watcher that cannot see must not be silent.
"""

from __future__ import annotations

from datetime import UTC, datetime

from watcher.engine.rules import matching_rules
from watcher.model import Config, Event, EventKind


def coverage_warnings(config: Config) -> list[str]:
    """Sources whose `source_unhealthy` no rule routes: revoked keys would alert nobody.
    Decided by the daemon's own rule matching, on the event it would raise."""
    now = datetime.now(UTC)
    blind = [
        source.name
        for source in config.sources
        if not matching_rules(
            config.rules,
            Event(EventKind.SOURCE_UNHEALTHY, source.name, now, "check", subject="check"),
        )
    ]
    if not blind:
        return []
    return [
        f"{config.path}: no rule covers source_unhealthy for source {', '.join(blind)}: if "
        "polling fails (revoked AK/SK, an outage) nobody hears of it; add a rule with "
        "`events: [source_unhealthy, source_recovered]`"
    ]


def advice(config: Config) -> list[str]:
    return coverage_warnings(config)
