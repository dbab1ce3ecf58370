"""The documented limits of config values (README, "Configuration ranges"), in one place.

Outside them a value breaks at run time, so `check` refuses it; keyed by the key's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

MIN_POLL_INTERVAL = timedelta(seconds=5)
# History older than this is pruned; an hour at least, so recent history is always there.
MIN_RETENTION = timedelta(hours=1)
# The detail APIs need a moment: below this every alert would go out without its reason.
MIN_ENRICH_TIMEOUT = timedelta(seconds=1)
MIN_TOKEN_LENGTH = 16

# Outside these a value breaks at run time (datetime overflow on every poll or send,
# gigabytes of page buffers, a watcher that is blind for days, retries every few seconds).
DURATION_RANGES: Mapping[str, tuple[timedelta, timedelta]] = {
    "poll_interval": (MIN_POLL_INTERVAL, timedelta(days=1)),
    "request_timeout": (timedelta(milliseconds=100), timedelta(minutes=10)),
    "full_scan_every": (timedelta(seconds=5), timedelta(days=7)),
    "for": (timedelta(minutes=1), timedelta(days=90)),
    "repeat": (timedelta(minutes=1), timedelta(days=90)),
    "group_wait": (timedelta(milliseconds=1), timedelta(hours=1)),
    "group_interval": (timedelta(milliseconds=1), timedelta(days=1)),
    "retry_initial": (timedelta(milliseconds=1), timedelta(hours=1)),
    "retry_max": (timedelta(milliseconds=1), timedelta(days=1)),
    "give_up_after": (timedelta(milliseconds=1), timedelta(days=90)),
    "send_timeout": (timedelta(milliseconds=100), timedelta(minutes=10)),
}
# Any other duration (keys added later): long enough for anything, short enough that adding it
# to a timestamp can never overflow.
DURATION_CAP = timedelta(days=365)
NUMBER_RANGES: Mapping[str, tuple[float, float]] = {
    "max_requests_per_second": (0.1, 1000.0),
    "page_concurrency": (1, 64),
    "max_per_minute": (1, 10_000),
}

MAX_CONFIG_BYTES = 1024 * 1024
# Far more than any real config (a rule set of thousands of lines has a few thousand values),
# far less than an alias bomb: beyond this the reader would take minutes and gigabytes.
MAX_CONFIG_VALUES = 200_000
MAX_CREDENTIAL_FILE = 64 * 1024
