"""Where a first baseline's CPU goes, part by part, in one process: what the ratio of a
baseline to a steady scan (RESULTS.md, target ≤ 2) is made of, and what no client can skip.

Not a test: numbers depend on the machine. `python benchmarks/bench_baseline_parts.py
[--jobs 100000] [--rounds 5]` builds the bench tenant of bench_side_by_side.py (the same
`populate`: 1 % in flight, batches of 200) in the simulator's state, lays its jobs out as
the list API's pages of 100, and times with `process_time`, median of the rounds:

- decode: msgspec, each page body into plain objects (what the minimal loop does);
- decode + digest: what a steady scan does with a job it already holds (no `Job` built);
- parse: the same pages into `Job`s, as a baseline must (less decode + digest);
- rows: each `Job` into its store row (`rows.job_to_row`);
- engine: the tracker's first pass over the jobs (`advance`, no stuck rule, as the bench's
  config), which a steady scan pays only for what changed;
- write: `Store.commit_cycle` of the whole snapshot into an empty state file (rows, SQLite's
  inserts, its three jobs indexes, the commit), and of it SQLite's own part (write - rows).

A steady full scan (RESULTS.md) costs about imports + HTTP + decode + digest + reading the
stored rows; a baseline adds parse + rows + engine + SQLite.

And a floor, not the watcher's path: `direct`, the same store rows made straight from each
decoded object (no `Job`, as a baseline that skipped the engine would), so that direct +
SQLite's part is the least any baseline writing these rows adds to a steady scan.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import xxhash

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_polling  # noqa: E402

from watcher.engine.tracker import Tracking, advance  # noqa: E402
from watcher.logs import configure  # noqa: E402
from watcher.metastudio.parse import parse_jobs_page  # noqa: E402
from watcher.model import DROPPED_JOB_FIELDS, Job, Snapshot  # noqa: E402
from watcher.simulator.state import SimulatorState  # noqa: E402
from watcher.store import Store  # noqa: E402
from watcher.store.rows import job_to_row  # noqa: E402

PAGE = 100
CONTENT_TYPE = "application/json"


def pages_of(n: int) -> list[bytes]:
    """The tenant's jobs as list responses of PAGE jobs, oldest first."""
    state = SimulatorState()
    bench_polling.populate(state, n, 0.01, datetime.now(UTC))
    jobs = sorted(state.jobs.values(), key=lambda j: (j["create_time"], j["job_id"]))
    encode = msgspec.json.encode
    return [
        encode({"count": len(jobs), "jobs": jobs[i : i + PAGE]}) for i in range(0, len(jobs), PAGE)
    ]


_STR_FIELDS = ("voice_name", "job_type", "batch_name", "job_failed_code", "job_failed_reason")
_TYPED = frozenset({"job_id", "state", "reject_times", "create_time", "lastupdate_time"})
_NOT_EXTRA = _TYPED | set(_STR_FIELDS) | {"asset_id"} | DROPPED_JOB_FIELDS
_encode_sorted = msgspec.json.Encoder(order="sorted").encode
_encode = msgspec.json.Encoder().encode


def direct_rows(bodies: list[bytes]) -> list[tuple[Any, ...]]:
    """Each job's store row (`rows.job_to_row`'s columns) straight from the decoded page,
    the digest included: the bench tenant's well-formed jobs only (ms times, str fields)."""
    decode = msgspec.json.Decoder().decode
    out: list[tuple[Any, ...]] = []
    for body in bodies:
        for item in decode(body)["jobs"]:
            for dropped in DROPPED_JOB_FIELDS:
                item.pop(dropped, None)
            digest = xxhash.xxh3_64_intdigest(_encode(item)) - 2**63
            get = item.get
            extra = {k: v for k, v in item.items() if k not in _NOT_EXTRA}
            created, updated = get("create_time"), get("lastupdate_time")
            out.append(
                (
                    item["job_id"],
                    item["state"],
                    get("reject_times"),
                    None if created is None else created * 1000,
                    None if updated is None else updated * 1000,
                    *(get(name) for name in _STR_FIELDS),
                    get("asset_id"),
                    _encode_sorted(extra).decode() if extra else "{}",
                    digest,
                )
            )
    return out


def timed(work: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    """Median CPU seconds of `work` over `rounds` (the collector off, as the watcher tunes
    it off the hot path), and the last round's result."""
    spent: list[float] = []
    result: Any = None
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        try:
            started = time.process_time()
            result = work()
            spent.append(time.process_time() - started)
        finally:
            gc.enable()
    return statistics.median(spent), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n, rounds = args.jobs, args.rounds
    configure(level="warning")  # the store's per-commit debug lines are not the output
    bodies = pages_of(n)
    decoder = msgspec.json.Decoder()

    def decode() -> None:
        for body in bodies:
            decoder.decode(body)

    def digest_only() -> None:
        for body in bodies:
            parse_jobs_page(body, CONTENT_TYPE, known=lambda job_id, _digest: job_id)

    def parse() -> dict[str, Job]:
        jobs: dict[str, Job] = {}
        for body in bodies:
            for job in parse_jobs_page(body, CONTENT_TYPE).jobs:
                jobs[job.job_id] = job
        return jobs

    t_decode, _ = timed(decode, rounds)
    t_digest, _ = timed(digest_only, rounds)
    t_parse, jobs = timed(parse, rounds)
    assert len(jobs) == n, len(jobs)
    t_rows, rows = timed(lambda: [job_to_row(job) for job in jobs.values()], rounds)
    t_direct, direct = timed(lambda: direct_rows(bodies), rounds)
    # The floor's rows are the watcher's own, column for column.
    assert sorted(direct) == sorted(rows), "direct rows differ from job_to_row's"
    t_direct -= t_digest  # beyond the decode + digest every scan pays
    now = datetime.now(UTC)
    snapshot = Snapshot("bench", now, jobs)
    t_engine, _ = timed(lambda: advance(None, Tracking(), snapshot, (), keep_index=False), rounds)

    writes: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            store = Store.open(str(Path(tmp) / f"state-{r}.db"))
            try:
                spent, _ = timed(
                    lambda store=store: store.commit_cycle(
                        "bench", snapshot, (), (), now=now, tracking={}, previous=None
                    ),
                    1,
                )
                writes.append(spent)
            finally:
                store.close()
    t_write = statistics.median(writes)
    t_sqlite = t_write - t_rows

    extra = (t_parse - t_digest) + t_rows + t_engine + t_sqlite
    print(f"{n:,} jobs, {len(bodies)} pages; CPU medians of {rounds} rounds")
    print(f"machine: {bench_polling.machine()}")
    print()
    print("| part | CPU | per job | what pays it |")
    print("|---|---|---|---|")
    table = (
        ("decode", t_decode, "every scan"),
        ("decode + digest", t_digest, "every scan"),
        ("parse into `Job`s (less decode + digest)", t_parse - t_digest, "a baseline"),
        ("store rows (`job_to_row`)", t_rows, "a baseline"),
        ("engine, first pass", t_engine, "a baseline"),
        ("SQLite: inserts, 3 indexes, commit (write - rows)", t_sqlite, "a baseline"),
        ("a baseline's extra work, all four", extra, ""),
        ("rows straight from the decoded objects (less decode + digest)", t_direct, "a floor"),
        ("a floor: those rows + SQLite (no `Job`, no engine)", t_direct + t_sqlite, "a floor"),
    )
    for label, seconds, who in table:
        print(f"| {label} | {seconds:.3f} s | {seconds / n * 1e6:.2f} µs | {who} |")


if __name__ == "__main__":
    main()
