"""Snapshots: the jobs table, the last committed listing of every source, one row per job.

Written only inside a cycle's transaction (see `Store.commit_cycle`), and only where a job
changed; read whole by the daemon at start and by the CLI's `jobs`/`status`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping

from watcher.jobsets import Row, StoredJobs
from watcher.model import Job, Snapshot
from watcher.store.database import Database
from watcher.store.rows import job_to_row, row_to_job

_COLUMNS = """job_id, state, reject_times, create_time, lastupdate_time, voice_name, job_type,
           batch_name, job_failed_code, job_failed_reason, asset_id, extra, digest"""
_SELECT_JOBS = f"SELECT {_COLUMNS} FROM jobs WHERE source = ? ORDER BY job_id"  # noqa: S608
# Served by the covering index jobs_by_create (migration v12): in its order, with no sort.
_SELECT_ROWS = (
    "SELECT job_id, digest, state, batch_name, create_time / 1000000.0 FROM jobs WHERE source = ? "
    "ORDER BY create_time"
)
# SQLite's default limit on bound parameters is 32766 (999 before 3.32): stay well under.
_IDS_PER_QUERY = 500
# Rewrites a job row only when something changed, so an idle cycle writes almost nothing.
_UPSERT_JOB = """
    INSERT INTO jobs (source, job_id, state, reject_times, create_time, lastupdate_time,
                      voice_name, job_type, batch_name, job_failed_code, job_failed_reason,
                      asset_id, extra, digest)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (source, job_id) DO UPDATE SET
        state = excluded.state, reject_times = excluded.reject_times,
        create_time = excluded.create_time, lastupdate_time = excluded.lastupdate_time,
        voice_name = excluded.voice_name, job_type = excluded.job_type,
        batch_name = excluded.batch_name, job_failed_code = excluded.job_failed_code,
        job_failed_reason = excluded.job_failed_reason, asset_id = excluded.asset_id,
        extra = excluded.extra, digest = excluded.digest
    WHERE state IS NOT excluded.state OR reject_times IS NOT excluded.reject_times
        OR create_time IS NOT excluded.create_time
        OR lastupdate_time IS NOT excluded.lastupdate_time
        OR voice_name IS NOT excluded.voice_name OR job_type IS NOT excluded.job_type
        OR batch_name IS NOT excluded.batch_name
        OR job_failed_code IS NOT excluded.job_failed_code
        OR job_failed_reason IS NOT excluded.job_failed_reason
        OR asset_id IS NOT excluded.asset_id OR extra IS NOT excluded.extra
        OR digest IS NOT excluded.digest
"""


def _job_id(job: Job) -> str:
    return job.job_id


# Below this many rows an index is cheap to keep up row by row.
_BULK_ROWS = 10_000


@contextlib.contextmanager
def _indexes_rebuilt_if_cheaper(conn: sqlite3.Connection, rows: int) -> Iterator[None]:
    """Inside the caller's transaction: when `rows` outnumber the rows already stored (a
    first baseline), drop the jobs table's secondary indexes for the writes and create them
    again after (SQLite sorts once instead of updating two B-trees per row: about a third
    of a 100k-job baseline's CPU). DDL is transactional: a failure leaves them as they were."""
    if rows < _BULK_ROWS or rows <= conn.execute("SELECT count(*) FROM jobs").fetchone()[0]:
        yield
        return
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' "
        "AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')  # our own schema's names
    yield
    for _, sql in indexes:
        conn.execute(sql)


def changed_jobs(snapshot: Snapshot, previous: Mapping[str, Job] | None) -> list[Job]:
    """The jobs of `snapshot` that differ from `previous` (all of them without it)."""
    if previous is None:
        return list(snapshot.jobs.values())
    if isinstance(previous, StoredJobs):
        # Equal digests mean equal jobs: no need to read 100k stored rows to compare them.
        digest_of = previous.digest_of
        return [j for k, j in snapshot.jobs.items() if j.digest is None or digest_of(k) != j.digest]
    # `is` first: unchanged jobs are the very objects held before (see the client).
    return [j for k, j in snapshot.jobs.items() if (old := previous.get(k)) is not j and old != j]


class Snapshots:
    """The jobs table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def load(self, source: str) -> dict[str, Job]:
        # Row by row, not fetchall(): 100k rows as tuples would briefly double the memory.
        with self._db.reading("read the jobs") as conn:
            cursor = conn.execute(_SELECT_JOBS, (source,))
            return {row[0]: row_to_job(row) for row in cursor}

    def load_stored(self, source: str) -> StoredJobs:
        """The jobs of `source` as compact rows, each `Job` read when first needed.

        In create-time order, the order a full scan lists them in (oldest or newest first,
        whatever the API honours). A full scan looks up every listed id in these rows; with
        rows, keys and hash entries laid out in memory in the order of the lookups, each
        lookup costs about a third (measured at 100k: 0.17 µs against 0.58 µs in job-id
        order, a random one). The covering index gives that order for free."""
        intern = sys.intern
        rows: dict[str, Row] = {}
        # Create times as epoch seconds, computed by SQLite (the column holds microseconds).
        with self._db.reading("read the jobs") as conn:
            for job_id, digest, state, batch, created in conn.execute(_SELECT_ROWS, (source,)):
                rows[job_id] = (
                    digest,
                    intern(state),
                    None if batch is None else intern(batch),
                    created,
                    job_id,
                )

        def load(ids: Collection[str] | None) -> dict[str, Job]:
            if ids is None:
                return self.load(source)
            out: dict[str, Job] = {}
            wanted = list(ids)
            with self._db.reading("read the jobs") as conn:
                for start in range(0, len(wanted), _IDS_PER_QUERY):
                    chunk = wanted[start : start + _IDS_PER_QUERY]
                    marks = ",".join("?" * len(chunk))
                    for row in conn.execute(
                        f"SELECT {_COLUMNS} FROM jobs WHERE source = ? AND job_id IN ({marks})",  # noqa: S608 (placeholders only)
                        (source, *chunk),
                    ):
                        out[row[0]] = row_to_job(row)
            return out

        return StoredJobs(rows, load)

    def write(
        self,
        conn: sqlite3.Connection,
        source: str,
        changed: Iterable[Job],
        removed: Iterable[str],
    ) -> None:
        """Inside the caller's transaction: write exactly `changed` and delete `removed`."""
        conn.executemany(
            "DELETE FROM jobs WHERE source = ? AND job_id = ?",
            [(source, job_id) for job_id in removed],
        )
        conn.executemany(_UPSERT_JOB, ((source, *job_to_row(job)) for job in changed))

    def replace(
        self,
        conn: sqlite3.Connection,
        snapshot: Snapshot,
        changed: list[Job],
        previous: Mapping[str, Job] | None,
    ) -> None:
        """Inside the caller's transaction: make the stored jobs of the source `snapshot`,
        writing only `changed` and deleting what left (`previous`, when given, is exactly
        what is stored, which spares reading the ids back)."""
        source = snapshot.source
        if previous is None:
            stored = {
                row[0]
                for row in conn.execute("SELECT job_id FROM jobs WHERE source = ?", (source,))
            }
        else:
            stored = set(previous)
        conn.executemany(
            "DELETE FROM jobs WHERE source = ? AND job_id = ?",
            [(source, job_id) for job_id in stored - snapshot.jobs.keys()],
        )
        # A generator: a 100k-job baseline never holds all its rows in memory at once. In
        # key order: appending to the table's B-tree costs a fraction of random inserts.
        # In place (the list is the caller's own, made for this write): a sorted copy was
        # 8 MB more at the peak of a 1M-job baseline.
        changed.sort(key=_job_id)
        with _indexes_rebuilt_if_cheaper(conn, len(changed)):
            conn.executemany(_UPSERT_JOB, ((source, *job_to_row(job)) for job in changed))

    def find(self, source: str | None, state: str | None) -> list[tuple[str, Job]]:
        rows = self._db.query_all(
            "read the jobs",
            "SELECT source, job_id, state, reject_times, create_time, lastupdate_time, "
            "voice_name, job_type, batch_name, job_failed_code, job_failed_reason, asset_id, "
            "extra, digest FROM jobs WHERE (:source IS NULL OR source = :source) "
            "AND (:state IS NULL OR state = :state) ORDER BY source, job_id",
            {"source": source, "state": state},
        )
        return [(row[0], row_to_job(row[1:])) for row in rows]

    def count_by_state(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for source, state, count in self._db.query_all(
            "read the jobs",
            "SELECT source, state, count(*) FROM jobs GROUP BY source, state ORDER BY 1, 2",
        ):
            out.setdefault(source, {})[state] = count
        return out
