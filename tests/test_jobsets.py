"""The job mappings that cost what changed: each behaves exactly as the plain dict it stands for."""

from __future__ import annotations

from collections.abc import Collection

from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.jobsets import Listed, Overlay, StoredJobs
from watcher.model import Job

IDS = [f"j{i}" for i in range(10)]
STATES = ["PROCESSING", "SUCCEED", "FAILED", "AUDITING"]
jobs_of = st.dictionaries(st.sampled_from(IDS), st.sampled_from(STATES)).map(
    lambda d: {j: Job(j, s, batch_name="b" if s == "FAILED" else None) for j, s in d.items()}
)


@settings(max_examples=200, deadline=None)
@given(jobs_of, jobs_of, st.sets(st.sampled_from(IDS)))
def test_an_overlay_is_the_dict_it_stands_for(
    base: dict[str, Job], touched: dict[str, Job], absent: set[str]
) -> None:
    absent -= touched.keys()  # an absent job is not also listed
    expected = {j: job for j, job in base.items() if j not in absent}
    expected.update(touched)
    for over in (base, StoredJobs.of(base)):
        view = Overlay(over, touched, absent)
        assert dict(view.items()) == expected
        assert sorted(view) == sorted(expected)
        assert len(view) == len(expected)
        assert all((j in view) == (j in expected) for j in IDS)
        assert all(view.get(j) == expected.get(j) for j in IDS)
        assert view.over(over) and not view.over(dict(expected))


@settings(max_examples=200, deadline=None)
@given(jobs_of, jobs_of, st.sets(st.sampled_from(IDS)))
def test_stored_jobs_after_apply_are_what_a_commit_stores(
    before: dict[str, Job], changed: dict[str, Job], removed: set[str]
) -> None:
    removed -= changed.keys()
    stored = StoredJobs.of(before)
    assert dict(stored.items()) == before
    view = Overlay(stored, changed, removed)
    stored.apply(changed, removed, view)
    expected = {j: job for j, job in before.items() if j not in removed} | changed
    assert dict(stored.items()) == expected and stored.applied is view
    assert {j: stored.state_of(j) for j in stored} == {j: job.state for j, job in expected.items()}
    assert all(stored[j] == job for j, job in expected.items())


def test_stored_jobs_read_a_job_only_when_asked_and_keep_only_those_in_flight() -> None:
    table = {
        "a": Job("a", "PROCESSING", digest=1),
        "b": Job("b", "SUCCEED", digest=2),
        "c": Job("c", "FAILED", digest=3),
    }
    reads: list[Collection[str] | None] = []

    def load(ids: Collection[str] | None) -> dict[str, Job]:
        reads.append(None if ids is None else sorted(ids))
        return dict(table) if ids is None else {j: table[j] for j in ids if j in table}

    stored = StoredJobs(
        {j: (job.digest, job.state, None, None, j) for j, job in table.items()}, load
    )
    # Membership, length, ids, digests and states come from the rows: no read.
    assert len(stored) == 3 and "b" in stored and "x" not in stored
    assert stored.digest_of("c") == 3 and stored.state_of("a") == "PROCESSING"
    assert stored.digest_of("x") is None and stored.get("x") is None
    # A listing's id is answered with the rows' own object, and only for an equal digest.
    assert stored.unchanged("c", 3) == "c"
    assert stored.unchanged("c", 4) is None and stored.unchanged("x", 3) is None
    own = "".join(["jo", "b-7"])  # equal to the literal below, another object
    one = StoredJobs({own: (9, "SUCCEED", None, None, own)}, load)
    assert one.unchanged("job-7", 9) is own
    assert reads == []
    assert stored.materialise(["a", "b", "x"]) == {"a": table["a"], "b": table["b"]}
    assert reads == [["a", "b"]]
    assert stored["a"] is table["a"] and stored["b"] is table["b"]
    assert reads == [["a", "b"]]  # held until the cycle is applied
    stored.apply({}, (), None)
    stored["a"], stored["b"]
    assert reads == [["a", "b"], ["b"]]  # the settled job was let go, the one in flight kept


def test_a_listing_answers_the_jobs_it_did_not_parse_from_what_is_known() -> None:
    known = {"a": Job("a", "SUCCEED"), "b": Job("b", "FAILED")}
    listed = Listed(known, {"c": Job("c", "CREATING")}, {"a"})
    assert dict(listed.items()) == {"a": known["a"], "c": Job("c", "CREATING")}
    assert listed["a"] is known["a"] and "b" not in listed and len(listed) == 2
    assert listed.keys() == {"a", "c"}
