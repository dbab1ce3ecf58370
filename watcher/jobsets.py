"""Mappings of jobs that cost what changed, not the tenant's size: the committed snapshot
held as compact rows (`StoredJobs`), a listing read against it (`Listed`), and a complete
snapshot built as the stored jobs plus a cycle's changes (`Overlay`).

All three are read-only `Mapping[str, Job]`s to the engine, so every pure function works on
them unchanged; the fast paths look for them by type and touch only what differs. A
`StoredJobs` materialises a `Job` only when one is read (from a loader the store passes in):
a full `Job` is ~0.5 KB (tracemalloc, a first baseline), a compact row ~0.25 KB.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

from watcher.model import SETTLED_STATES, Job

# digest (None: unknown, compare in full), state, batch_name, create_time (epoch seconds),
# and the job id: the one string object the rows' keys, and every listing of the job read
# against them, share (see `StoredJobs.unchanged`).
Row = tuple[int | None, str, str | None, float | None, str]
# Every stored job among `ids` (all of them when None), read in one go.
Loader = Callable[[Collection[str] | None], Mapping[str, Job]]


def row_of(job: Job) -> Row:
    created = job.create_time
    when = None if created is None else created.timestamp()
    return (job.digest, job.state, job.batch_name, when, job.job_id)


class StoredJobs(Mapping[str, Job]):
    """The last committed jobs of a source: a compact row each (digest, state, batch) in
    memory, the whole `Job` read from the store on first access.

    What a cycle reads stays held until the cycle is applied; then only jobs in flight
    stay (the next cycles read them: stuck rules, the active set), and a settled job is
    read again if it is ever needed. The shell calls `apply` after each committed cycle,
    so this stays exactly what is stored.
    """

    __slots__ = ("_cache", "_held", "_load", "_rows", "applied")

    def __init__(self, rows: dict[str, Row], load: Loader) -> None:
        self._rows = rows
        self._load = load
        self._cache: dict[str, Job] = {}
        # Only for `of`: the jobs behind the loader, which `apply` keeps up to date the way
        # a commit keeps the store.
        self._held: dict[str, Job] | None = None
        # The snapshot last applied to this one (see `apply`): the engine's index of the
        # last step describes it, so it describes this mapping too.
        self.applied: Mapping[str, Job] | None = None

    @classmethod
    def of(cls, jobs: Mapping[str, Job]) -> StoredJobs:
        """Jobs already in memory (tests, a fresh baseline): every row, no store behind."""
        held = dict(jobs)

        def load(ids: Collection[str] | None) -> Mapping[str, Job]:
            return held if ids is None else {j: held[j] for j in ids if j in held}

        stored = cls({j: row_of(job) for j, job in held.items()}, load)
        stored._held = held
        return stored

    # --- Mapping ------------------------------------------------------------------------

    def __getitem__(self, job_id: str) -> Job:
        job = self._cache.get(job_id)
        if job is not None:
            return job
        if job_id not in self._rows:
            raise KeyError(job_id)
        job = self._load((job_id,))[job_id]
        self._keep(job)
        return job

    def get(self, job_id: str, default: Any = None) -> Any:
        try:
            return self[job_id]
        except KeyError:
            return default

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def items(self) -> Any:
        """Every job: one read of the whole table (a slow path; the fast ones avoid it)."""
        return self.materialise().items()

    def values(self) -> Any:
        return self.materialise().values()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    # --- compact reads ------------------------------------------------------------------

    def digest_of(self, job_id: str) -> int | None:
        row = self._rows.get(job_id)
        return None if row is None else row[0]

    def unchanged(self, job_id: str, digest: int) -> str | None:
        """The held id of `job_id` when it is held with this digest, else None. A full scan
        keeps that object rather than the page's fresh copy of the same text: at 1M jobs the
        copies alone were 69 MB of its peak."""
        row = self._rows.get(job_id)
        return row[4] if row is not None and row[0] == digest else None

    def state_of(self, job_id: str) -> str | None:
        row = self._rows.get(job_id)
        return None if row is None else row[1]

    def rows(self) -> Mapping[str, Row]:
        return self._rows

    def materialise(self, ids: Iterable[str] | None = None) -> dict[str, Job]:
        """The jobs `ids` (every job when None), read in one go where not held."""
        if ids is None:
            loaded = dict(self._load(None))
            loaded.update(self._cache)
            return loaded
        wanted = [j for j in ids if j in self._rows]
        missing = [j for j in wanted if j not in self._cache]
        if missing:
            for job in self._load(missing).values():
                self._keep(job)
        return {j: self._cache[j] for j in wanted if j in self._cache}

    # --- the shell's side ----------------------------------------------------------------

    def apply(self, changed: Mapping[str, Job], removed: Iterable[str], snapshot: Any) -> None:
        """Make this what the store holds after a cycle committed `changed` and deleted
        `removed`; `snapshot` is the engine's view of that result (see `applied`)."""
        rows, cache, held = self._rows, self._cache, self._held
        for job_id in removed:
            rows.pop(job_id, None)
            cache.pop(job_id, None)
            if held is not None:
                held.pop(job_id, None)
        for job_id, job in changed.items():
            rows[job_id] = row_of(job)
            cache[job_id] = job
            if held is not None:
                held[job_id] = job
        for job_id in [j for j, job in cache.items() if job.state in SETTLED_STATES]:
            del cache[job_id]
        self.applied = snapshot

    def _keep(self, job: Job) -> None:
        self._cache[job.job_id] = job


class Listed(Mapping[str, Job]):
    """A complete listing read against `known`: the jobs that differ from it parsed, the
    rest (`same`) known by id only, and answered from `known` when read."""

    __slots__ = ("changed", "known", "same")

    def __init__(self, known: Mapping[str, Job], changed: dict[str, Job], same: set[str]):
        self.known = known
        self.changed = changed
        self.same = same

    def __getitem__(self, job_id: str) -> Job:
        job = self.changed.get(job_id)
        if job is not None:
            return job
        if job_id in self.same:
            return self.known[job_id]
        raise KeyError(job_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.changed or job_id in self.same

    def __iter__(self) -> Iterator[str]:
        yield from self.changed
        yield from self.same

    def __len__(self) -> int:
        return len(self.changed) + len(self.same)

    def keys(self) -> Any:
        return self.changed.keys() | self.same


class Overlay(Mapping[str, Job]):
    """A complete snapshot built as `base` with `touched` jobs laid over it and `absent`
    ones taken out: only those can differ from `base`, so a diff against `base` looks at
    them alone (a cycle's cost follows its changes). A view: nothing is copied."""

    __slots__ = ("absent", "base", "touched")

    def __init__(
        self,
        base: Mapping[str, Job],
        touched: Mapping[str, Job],
        absent: Collection[str] = frozenset(),
    ) -> None:
        self.base = base
        self.touched = touched
        self.absent = frozenset(absent)

    def over(self, previous: Mapping[str, Job] | None) -> bool:
        """Whether this overlay is laid on exactly `previous` (so only its changes differ)."""
        return previous is not None and self.base is previous

    def __getitem__(self, job_id: str) -> Job:
        job = self.touched.get(job_id)
        if job is not None:
            return job
        if job_id in self.absent:
            raise KeyError(job_id)
        return self.base[job_id]

    def __contains__(self, job_id: object) -> bool:
        if job_id in self.touched:
            return True
        return job_id not in self.absent and job_id in self.base

    def __iter__(self) -> Iterator[str]:
        absent, touched = self.absent, self.touched
        for job_id in self.base:
            if job_id not in absent:
                yield job_id
        for job_id in touched:
            if job_id not in self.base:
                yield job_id

    def __len__(self) -> int:
        base = self.base
        added = sum(1 for j in self.touched if j not in base)
        return len(base) - sum(1 for j in self.absent if j in base) + added

    def items(self) -> Any:
        return self.materialise().items()

    def values(self) -> Any:
        return self.materialise().values()

    def materialise(self) -> dict[str, Job]:
        """Every job as a plain dict (a slow path: one read of a stored base)."""
        base = self.base
        out = dict(base.materialise()) if isinstance(base, StoredJobs) else dict(base.items())
        for job_id in self.absent:
            out.pop(job_id, None)
        out.update(self.touched)
        return out

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
