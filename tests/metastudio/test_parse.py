"""Parsing the list response: typed fields, personal data dropped, every bad body an ApiError.

Pure functions, no I/O; hypothesis fuzzes bytes and JSON values.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.errors import ApiError
from watcher.metastudio import parse
from watcher.metastudio.parse import (
    job_digest,
    novelties,
    parse_job,
    parse_jobs_page,
    parse_timestamp,
)
from watcher.model import DROPPED_JOB_FIELDS, NO_EXTRA_FIELDS, ExtraFields, Job

RAW_JOB: dict[str, Any] = {
    "job_type": "BASIC",
    "job_id": "abcdefg",
    "app_user_id": "123qwe",
    "voice_name": "女声",
    "sex": "FEMALE",
    "state": "WAITING",
    "reject_times": 2,
    "asset_id": "my_asset_id",
    "job_failed_code": "MSS.00000000",
    "job_failed_reason": "error reason",
    "create_time": 1733990400000,
    "lastupdate_time": 1733990400,
    "voice_authorization_url": "https://bucket/data",
    "training_input_source_url": "https://bucket/input/abcdefg.zip?Signature=s1",
    "phone": "13800138000",
    "tag": "ECOMMERCE",
    "allocated_resource": {"resource_id": "r1", "charge_mode": "PERIODIC"},
}
DEC_12 = datetime(2024, 12, 12, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1733990400, DEC_12),
        (1733990400000, DEC_12),
        ("1733990400000", DEC_12),
        (1733990400.0, DEC_12),
        (" 1733990400 ", DEC_12),
        (None, None),
        (True, None),
        ("soon", None),
        (float("nan"), None),
        ("1e400", None),
        (10**30, None),
        ([1], None),
    ],
)
def test_timestamps_in_seconds_or_milliseconds_become_utc(value: object, expected: object) -> None:
    assert parse_timestamp(value) == expected


def test_parse_job_types_known_fields_and_drops_personal_data() -> None:
    job = parse_job(RAW_JOB)
    assert job.job_id == "abcdefg"
    assert job.state == "WAITING"
    assert job.reject_times == 2
    assert job.create_time == DEC_12
    assert job.lastupdate_time == DEC_12
    assert job.voice_name == "女声"
    assert job.asset_id == "my_asset_id"
    assert "phone" not in job.extra
    assert "voice_authorization_url" not in job.extra
    assert "training_input_source_url" not in job.extra  # the user's recordings: a link
    assert "Signature" not in repr(job)
    assert job.extra["allocated_resource"] == {"resource_id": "r1", "charge_mode": "PERIODIC"}
    assert job.extra["sex"] == "FEMALE"
    assert "13800138000" not in repr(job)


def test_jobs_of_a_page_share_their_field_names_and_repeated_values() -> None:
    # Memory at 1M jobs: the other fields' names once per shape, short values interned.
    first = parse_job({**RAW_JOB, "job_id": "a", "sex": "FEM" + "ALE"})
    second = parse_job({**RAW_JOB, "job_id": "b", "sex": "".join(["FE", "MALE"])})

    assert isinstance(first.extra, ExtraFields)
    assert list(first.extra) == list(second.extra)
    assert first.extra._keys is second.extra._keys
    assert first.extra["sex"] is second.extra["sex"]
    assert parse_job({"job_id": "j", "state": "W"}).extra is NO_EXTRA_FIELDS


_TYPED = {
    "job_id", "state", "reject_times", "create_time", "lastupdate_time", "voice_name",
    "job_type", "batch_name", "job_failed_code", "job_failed_reason", "asset_id",
}  # fmt: skip
_field_values = (
    st.none() | st.integers() | st.text(max_size=40) | st.lists(st.integers(), max_size=2)
)


@settings(max_examples=300)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["sex", "tag", "phone", "voice_name", "x_new", "language", "n"]),
            _field_values,
            max_size=5,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_extra_is_every_other_field_as_sent_in_api_order_for_any_shape(
    fields: list[dict[str, Any]],
) -> None:
    # Each shape's plan is made once and reused: jobs of one shape, of another, with one
    # other field, with none, with values no table can share (lists), in any order.
    for n, extra_fields in enumerate(fields):
        obj = {"job_id": f"j{n}", "state": "WAITING", **extra_fields}
        expected = {k: v for k, v in obj.items() if k not in _TYPED and k not in DROPPED_JOB_FIELDS}
        extra = parse_job(obj).extra
        assert list(extra.items()) == list(expected.items())
        assert json.dumps(dict(extra)) == json.dumps(expected)  # 1 is not True, types kept
        assert (extra is NO_EXTRA_FIELDS) is (not expected)


def test_the_plans_for_shapes_of_jobs_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parse, "_EXTRA_PLANS", {})
    monkeypatch.setattr(parse, "_MAX_EXTRA_PLANS", 3)
    for n in range(10):  # an API sending ever new field names: still right, and bounded
        job = parse_job({"job_id": "j", "state": "WAITING", f"new_{n}": n, "sex": "MALE"})
        assert dict(job.extra) == {f"new_{n}": n, "sex": "MALE"}

    assert len(parse._EXTRA_PLANS) == 3


def test_parse_job_keeps_unknown_states_as_strings() -> None:
    assert parse_job({"job_id": "j", "state": "BRAND_NEW_STATE"}).state == "BRAND_NEW_STATE"


@pytest.mark.parametrize(
    "raw",
    [
        {"state": "WAITING"},
        {"job_id": "", "state": "W"},
        {"job_id": "j"},
        {"job_id": 5, "state": "W"},
    ],
)
def test_parse_job_requires_job_id_and_state(raw: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as info:
        parse_job(raw)
    assert info.value.retryable


def test_wrongly_typed_known_fields_become_none() -> None:
    job = parse_job({"job_id": "j", "state": "W", "reject_times": "x", "voice_name": 3})
    assert job.reject_times is None
    assert job.voice_name is None


def test_page_parses_count_and_jobs() -> None:
    body = json.dumps({"count": 7, "jobs": [RAW_JOB]}).encode()
    page = parse_jobs_page(body, "application/json;charset=UTF-8")
    assert page.count == 7
    assert [j.job_id for j in page.jobs] == ["abcdefg"]


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "text/html", "not JSON (text/html)"),
        (b'{"count": 1, "jobs": [{"job_id": "a", "phone": "1380', "application/json", "truncated"),
        (b"", "application/json", "not JSON"),
        (b"[1, 2]", "application/json", "expected an object"),
        (b'{"count": 1}', "application/json", "no 'jobs'"),
        (b'{"jobs": []}', "application/json", "no 'count'"),
        (b'{"count": "many", "jobs": []}', "application/json", "'count'"),
        (b'{"count": 1, "jobs": {"a": 1}}', "application/json", "'jobs' is not a list"),
        (b'{"count": 1, "jobs": [3]}', None, "jobs[0]"),
    ],
)
def test_bad_pages_raise_retryable_errors_without_quoting_the_body(
    body: bytes, content_type: str | None, fragment: str
) -> None:
    with pytest.raises(ApiError) as info:
        parse_jobs_page(body, content_type)
    assert info.value.retryable
    assert fragment in info.value.message
    assert "1380" not in info.value.message


@settings(max_examples=300)
@given(body=st.binary(max_size=200), content_type=st.one_of(st.none(), st.text(max_size=30)))
def test_arbitrary_bytes_never_raise_anything_but_api_error(
    body: bytes, content_type: str | None
) -> None:
    with contextlib.suppress(ApiError):
        parse_jobs_page(body, content_type)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_job_like = st.fixed_dictionaries(
    {"job_id": _json | st.text(min_size=1, max_size=5), "state": _json | st.just("WAITING")},
    optional={
        "reject_times": _json,
        "create_time": _json | st.integers(),
        "lastupdate_time": _json | st.floats(),
        "voice_name": _json,
        "phone": _json,
    },
)


@settings(max_examples=300)
@given(
    value=_json
    | st.fixed_dictionaries({"count": _json, "jobs": st.lists(_job_like | _json, max_size=3)})
)
def test_arbitrary_json_never_raises_anything_but_api_error(value: object) -> None:
    try:
        page = parse_jobs_page(json.dumps(value).encode(), "application/json")
    except ApiError:
        return
    for job in page.jobs:
        assert "phone" not in job.extra


def test_deeply_nested_json_is_an_api_error_not_a_recursion_error() -> None:
    with pytest.raises(ApiError):
        parse_jobs_page(b"[" * 100_000 + b"]" * 100_000, "application/json")


# --- digests: recognising an unchanged job without parsing it --------------------------


def test_the_digest_is_stable_and_leaves_out_personal_data_and_signed_links() -> None:
    # Pinned: stored digests outlive the process; a different encoding would make every
    # stored job read as changed once (harmless, but a full rewrite of the state file).
    plain = {"job_id": "j1", "state": "SUCCEED", "create_time": 1700000000000}
    assert job_digest(plain) == job_digest(dict(plain))
    assert job_digest(plain) == -5629067869603727688  # XXH3-64, shifted (v11)
    with_secrets = {**plain, "phone": "13800000000", "voice_authorization_url": "https://x?sig=1"}
    resigned = {**with_secrets, "voice_authorization_url": "https://x?sig=2"}
    assert job_digest(with_secrets) == job_digest(resigned) == job_digest(plain)
    relinked = {**with_secrets, "training_input_source_url": "https://x/in.zip?Signature=2"}
    assert job_digest(relinked) == job_digest(plain)
    assert job_digest({**plain, "state": "FAILED"}) != job_digest(plain)
    assert job_digest({**plain, "tag": "NEWS"}) != job_digest(plain)  # any field counts
    assert -(2**63) <= job_digest(plain) < 2**63  # fits SQLite's INTEGER
    assert parse_job(with_secrets).digest == job_digest(plain)


def held(digests: dict[str, int]) -> Any:
    """A caller holding `digests`, answering with its own id objects (as StoredJobs does)."""
    ids = {job_id: job_id for job_id in digests}

    def unchanged(job_id: str, digest: int) -> str | None:
        return ids[job_id] if digests.get(job_id) == digest else None

    return unchanged


def test_a_page_read_against_known_digests_parses_only_what_changed() -> None:
    same = {**RAW_JOB, "job_id": "same"}
    moved = {**RAW_JOB, "job_id": "moved"}
    own_id = "".join(["sa", "me"])  # equal to the page's, not the same object
    known = {own_id: job_digest(same), "moved": job_digest({**moved, "state": "AUDITING"})}
    body = json.dumps({"count": 3, "jobs": [same, moved, {**RAW_JOB, "job_id": "new"}]})
    page = parse_jobs_page(body.encode(), "application/json", held(known))
    assert page.same == ("same",)
    # The caller's id object, not the page's copy: a scan holds no second copy of 1M ids.
    assert page.same[0] is own_id
    assert [job.job_id for job in page.jobs] == ["moved", "new"]
    assert page.size == 3 and page.count == 3
    assert all(job.digest is not None for job in page.jobs)


def test_a_page_reports_its_order_from_the_raw_times_parsed_or_not() -> None:
    def page(times: list[int], known: bool) -> Any:
        jobs = [{**RAW_JOB, "job_id": f"j{i}", "create_time": t} for i, t in enumerate(times)]
        digests = {j["job_id"]: job_digest(j) for j in jobs} if known else {}
        body = json.dumps({"count": len(jobs), "jobs": jobs}).encode()
        return parse_jobs_page(body, "application/json", held(digests))

    for known in (True, False):
        ordered = page([1700000000000, 1700000001000, 1700000002000], known)
        assert (ordered.first_key, ordered.last_key, ordered.unsorted) == (
            1700000000000,
            1700000002000,
            False,
        )
        # Seconds and milliseconds compare as the same instant.
        assert page([1700000000, 1700000001000], known).unsorted is False
        assert page([1700000002000, 1700000001000], known).unsorted is True


@settings(max_examples=60)
@given(
    st.dictionaries(
        st.sampled_from(["sex", "tag", "brand_new", "zz_other", "language", "phone_v2", "x"]),
        st.text(max_size=4),
        max_size=6,
    ),
    st.sampled_from(["AUDITING", "SUCCEED", "BRAND_NEW_STATE"]),
)
def test_novelties_of_a_parsed_job_are_those_of_its_fields_whatever_shape_came_first(
    fields: dict[str, str], state: str
) -> None:
    # Names are remembered per shape of `extra`: the answer must be the job's own, for the
    # first job of a shape and every later one, and the same as for a plain dict.
    expected = tuple(sorted(k for k in fields if k in {"brand_new", "zz_other", "phone_v2", "x"}))
    new_state = None if state != "BRAND_NEW_STATE" else state
    for _ in range(2):
        job = parse_job({"job_id": "j", "state": state, **fields})
        assert novelties(job) == (new_state, expected)
    assert novelties(Job(job_id="j", state=state, extra=dict(fields))) == (new_state, expected)
