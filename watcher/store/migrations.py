"""The schema: every migration the state file has gone through, in order, and applying them.

A file records its version in `PRAGMA user_version`; opening it runs each missing step in its
own transaction, so a failed step leaves the file at the version before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from watcher.errors import StoreError
from watcher.store.database import Database

log = structlog.get_logger()

# v13's conversion of one ISO text time ('2024-12-23T11:37:44.784000+00:00') to microseconds.
_TEXT_TO_MICROS = (
    "CASE WHEN typeof({column}) = 'text' "
    "THEN CAST(strftime('%s', {column}) AS INTEGER) * 1000000 "
    "+ CAST(substr({column}, 21, 6) AS INTEGER) ELSE {column} END"
)

# Each entry migrates the schema from version i to i + 1; never edit a released entry, append.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # v1: the whole schema.
    (
        """
        CREATE TABLE sources (
            name TEXT PRIMARY KEY,
            baseline_at TEXT,
            last_cycle_at TEXT,
            last_poll_at TEXT,
            last_ok_at TEXT,
            last_error_at TEXT,
            last_error TEXT,
            consecutive_failures INTEGER NOT NULL DEFAULT 0
        )
        """,
        """
        CREATE TABLE jobs (
            source TEXT NOT NULL,
            job_id TEXT NOT NULL,
            state TEXT NOT NULL,
            reject_times INTEGER,
            create_time TEXT,
            lastupdate_time TEXT,
            voice_name TEXT,
            job_type TEXT,
            batch_name TEXT,
            job_failed_code TEXT,
            job_failed_reason TEXT,
            asset_id TEXT,
            extra TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (source, job_id)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            event_key TEXT NOT NULL,
            kind TEXT NOT NULL,
            source TEXT NOT NULL,
            job_id TEXT,
            previous_state TEXT,
            state TEXT,
            reason TEXT NOT NULL,
            note TEXT,
            detected_at TEXT NOT NULL,
            subject TEXT,
            sequence INTEGER NOT NULL DEFAULT 0,
            details TEXT NOT NULL DEFAULT '{}'
        )
        """,
        """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            alert_id TEXT NOT NULL UNIQUE,
            event_key TEXT NOT NULL,
            source TEXT NOT NULL,
            job_id TEXT,
            rule TEXT NOT NULL,
            channel TEXT NOT NULL,
            title TEXT NOT NULL,
            body TEXT NOT NULL,
            notify_type TEXT NOT NULL,
            body_format TEXT NOT NULL,
            created_at TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sent', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            last_error TEXT,
            sent_at TEXT,
            updated_at TEXT NOT NULL
        )
        """,
        "CREATE INDEX outbox_due ON outbox (status, next_attempt_at, id)",
    ),
    # v2: lookups by job and by event for `history`, and per-job ordering of the outbox.
    (
        "CREATE INDEX events_by_job ON events (job_id, id)",
        "CREATE INDEX outbox_by_event ON outbox (event_key)",
        "CREATE INDEX outbox_by_job ON outbox (channel, source, job_id, id) "
        "WHERE status = 'pending'",
    ),
    # v3: the engine's memory per source (stuck reminders, failures, batches, health), and
    # when an alert was (re)queued, so `outbox retry` gives it a fresh `give_up_after`.
    (
        "ALTER TABLE sources ADD COLUMN tracking TEXT",
        "ALTER TABLE outbox ADD COLUMN queued_at TEXT",
        "UPDATE outbox SET queued_at = created_at",
    ),
    # v4: noise control. The outbox is rebuilt (SQLite cannot alter a CHECK) to admit the
    # 'silenced' status, and gains the alert's group key and labels; silences get a table.
    (
        """
        CREATE TABLE outbox_v4 (
            id INTEGER PRIMARY KEY,
            alert_id TEXT NOT NULL UNIQUE,
            event_key TEXT NOT NULL,
            source TEXT NOT NULL,
            job_id TEXT,
            rule TEXT NOT NULL,
            channel TEXT NOT NULL,
            title TEXT NOT NULL,
            body TEXT NOT NULL,
            notify_type TEXT NOT NULL,
            body_format TEXT NOT NULL,
            created_at TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sent', 'dead', 'silenced')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            last_error TEXT,
            sent_at TEXT,
            updated_at TEXT NOT NULL,
            queued_at TEXT,
            group_key TEXT NOT NULL DEFAULT '',
            labels TEXT NOT NULL DEFAULT '{}',
            silence_id INTEGER
        )
        """,
        "INSERT INTO outbox_v4 (id, alert_id, event_key, source, job_id, rule, channel, title, "
        "body, notify_type, body_format, created_at, status, attempts, next_attempt_at, "
        "last_error, sent_at, updated_at, queued_at) SELECT id, alert_id, event_key, source, "
        "job_id, rule, channel, title, body, notify_type, body_format, created_at, status, "
        "attempts, next_attempt_at, last_error, sent_at, updated_at, queued_at FROM outbox",
        "DROP TABLE outbox",
        "ALTER TABLE outbox_v4 RENAME TO outbox",
        "CREATE INDEX outbox_due ON outbox (status, next_attempt_at, id)",
        "CREATE INDEX outbox_by_event ON outbox (event_key)",
        "CREATE INDEX outbox_by_job ON outbox (channel, source, job_id, id) "
        "WHERE status = 'pending'",
        """
        CREATE TABLE silences (
            id INTEGER PRIMARY KEY,
            matchers TEXT NOT NULL,
            starts_at TEXT NOT NULL,
            ends_at TEXT NOT NULL,
            comment TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL
        )
        """,
    ),
    # v5: durable delivery memory. A send log (what went out on which channel and group,
    # when) for rate limits and group_interval across reloads and restarts; per alert the
    # backoff chosen and the time spent trying, so retries do not follow the wall clock;
    # indexes for pruning history by age in small batches.
    (
        "ALTER TABLE outbox ADD COLUMN retry_delay_s REAL",
        "ALTER TABLE outbox ADD COLUMN elapsed_s REAL NOT NULL DEFAULT 0",
        """
        CREATE TABLE send_log (
            id INTEGER PRIMARY KEY,
            channel TEXT NOT NULL,
            group_keys TEXT NOT NULL DEFAULT '[]',
            alerts INTEGER NOT NULL,
            sent_at TEXT NOT NULL
        )
        """,
        "CREATE INDEX send_log_by_time ON send_log (sent_at)",
        "CREATE INDEX events_by_time ON events (detected_at)",
        "CREATE INDEX outbox_done_by_time ON outbox (updated_at) "
        "WHERE status IN ('sent', 'dead', 'silenced')",
    ),
    # Status page (watcher.web): every aggregate it shows comes from one of these indexes,
    # so a page stays fast at 100k jobs and 1M events. Indexes only, nothing to migrate.
    (
        "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (source, state, lastupdate_time)",
        "CREATE INDEX IF NOT EXISTS jobs_by_batch ON jobs "
        "(source, batch_name, state, create_time, lastupdate_time)",
        "CREATE INDEX IF NOT EXISTS events_by_kind ON events (kind, id)",
        "CREATE INDEX IF NOT EXISTS events_by_state ON events (state, id)",
        "CREATE INDEX IF NOT EXISTS events_by_source ON events (source, id)",
    ),
    # poll cursors: what a source's next cycle needs (watermark, strategy, demotions) so a
    # `once` from cron is as cheap as the daemon, and how far a scan in flight has got.
    (
        """
        CREATE TABLE poll_cursors (
            source TEXT PRIMARY KEY,
            cursor TEXT NOT NULL DEFAULT '{}',
            strategy TEXT,
            scan_pages_done INTEGER,
            scan_pages_total INTEGER,
            scan_baseline INTEGER NOT NULL DEFAULT 0,
            scan_updated_at TEXT
        )
        """,
    ),
    # v8: alert facts and failure details: each alert keeps what it is about as JSON (grouped
    # messages, JSON bodies and `alerts` are composed from it), and what the detail APIs
    # said about a failure is kept once per failure, so a restart does not ask again.
    (
        "ALTER TABLE outbox ADD COLUMN facts TEXT NOT NULL DEFAULT '{}'",
        """
        CREATE TABLE failure_details (
            source TEXT NOT NULL,
            failure TEXT NOT NULL,
            why TEXT NOT NULL,
            fetched_at TEXT NOT NULL,
            PRIMARY KEY (source, failure)
        )
        """,
    ),
    # v9: a digest of each job as the API last sent it, so a full scan recognises the
    # unchanged jobs without parsing them or reading their rows (NULL: compare in full).
    ("ALTER TABLE jobs ADD COLUMN digest INTEGER",),
    # v10: batch memory in a row per batch, written only when it changed: in the tracking
    # blob, 5,000 batches made every cycle serialise and write ~1 MB (the blob keeps the rest;
    # batches found in an older blob are read, then moved here by the first save).
    (
        """
        CREATE TABLE batch_memory (
            source TEXT NOT NULL,
            name TEXT NOT NULL,
            memory TEXT NOT NULL,
            PRIMARY KEY (source, name)
        ) WITHOUT ROWID
        """,
    ),
    # v11: job digests are XXH3-64 instead of blake2b (a tenth of the CPU per job). An old
    # digest would only ever mismatch: NULL says "compare in full", and the next scan writes
    # the new ones (once, like the first scan after v9).
    ("UPDATE jobs SET digest = NULL",),
    # v12: what every cycle reads of every stored job (id, digest, state, batch), in the
    # order every API behaviour lists jobs in (create time): read from this index alone,
    # without SQLite sorting the table or walking its wide rows, a 100k-job `once` costs
    # ~5 % less CPU (the first baseline builds it: ~0.12 s at 100k). Index only.
    (
        "CREATE INDEX IF NOT EXISTS jobs_by_create ON jobs "
        "(source, create_time, job_id, digest, state, batch_name)",
    ),
    # v13: job times as integer microseconds since the epoch instead of ISO text (see
    # `rows.micros`: a baseline writes one per job into the table and three indexes, and
    # formatting them was a tenth of its CPU). A column's type is fixed when the table is
    # made, so the table is made again; the text, always `ts()`'s fixed-width UTC form,
    # converts exactly (whole seconds by strftime, then the six digits after the point).
    # A value already an integer (a file set back to an older version) is kept as it is.
    (
        """
        CREATE TABLE jobs_v13 (
            source TEXT NOT NULL,
            job_id TEXT NOT NULL,
            state TEXT NOT NULL,
            reject_times INTEGER,
            create_time INTEGER,
            lastupdate_time INTEGER,
            voice_name TEXT,
            job_type TEXT,
            batch_name TEXT,
            job_failed_code TEXT,
            job_failed_reason TEXT,
            asset_id TEXT,
            extra TEXT NOT NULL DEFAULT '{}',
            digest INTEGER,
            PRIMARY KEY (source, job_id)
        ) WITHOUT ROWID
        """,
        f"""
        INSERT INTO jobs_v13
        SELECT source, job_id, state, reject_times, {_TEXT_TO_MICROS.format(column="create_time")},
               {_TEXT_TO_MICROS.format(column="lastupdate_time")}, voice_name, job_type,
               batch_name, job_failed_code, job_failed_reason, asset_id, extra, digest
        FROM jobs
        """,  # noqa: S608 (our own SQL)
        "DROP TABLE jobs",
        "ALTER TABLE jobs_v13 RENAME TO jobs",
        "CREATE INDEX jobs_by_state ON jobs (source, state, lastupdate_time)",
        "CREATE INDEX jobs_by_batch ON jobs "
        "(source, batch_name, state, create_time, lastupdate_time)",
        "CREATE INDEX jobs_by_create ON jobs "
        "(source, create_time, job_id, digest, state, batch_name)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: Database) -> int:
    return int(db.query_one("read the schema version", "PRAGMA user_version")[0])


def migrate(db: Database, migrations: Sequence[Sequence[str]]) -> None:
    """Bring the file up to `len(migrations)`, refusing a file from a newer version."""
    known = len(migrations)
    found = schema_version(db)
    if found > known:
        raise StoreError(
            f"{db.path}: written by a newer metastudio-watcher (schema v{found}, this "
            f"version knows up to v{known}); upgrade, or point storage elsewhere"
        )
    for version in range(found, known):
        with db.transaction(f"migrate the schema to v{version + 1}") as conn:
            for statement in migrations[version]:
                conn.execute(statement)
            # PRAGMA takes no parameters; the value is our own integer.
            conn.execute(f"PRAGMA user_version = {version + 1}")
        # A new file goes through every step: only an upgrade is news.
        (log.info if found else log.debug)(
            "store_migrated", path=db.path, schema_version=version + 1
        )
