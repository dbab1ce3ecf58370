"""Turns the list API's raw JSON into `Job`s, dropping personal data on the way in.

Pure: any malformed input becomes an `ApiError(retryable=True)` whose message never quotes the body.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from sys import intern
from typing import Any

import msgspec
import xxhash

from watcher.errors import ApiError
from watcher.model import DROPPED_JOB_FIELDS, KNOWN_STATES, NO_EXTRA_FIELDS, ExtraFields, Job

# Above this a timestamp is in milliseconds: 10**11 s is the year 5138, 10**11 ms is 1973.
_MS_THRESHOLD = 10**11
_STR_FIELDS = (
    "voice_name",
    "job_type",
    "batch_name",
    "job_failed_code",
    "job_failed_reason",
    "asset_id",
)
_TIME_FIELDS = ("create_time", "lastupdate_time")
_TYPED_FIELDS = frozenset({"job_id", "state", "reject_times", *_STR_FIELDS, *_TIME_FIELDS})
_NOT_EXTRA = _TYPED_FIELDS | DROPPED_JOB_FIELDS
# Every TrainingJobInfo field the API page and the SDK 3.1.219 model document; anything
# else is new, kept as it is, and worth one log line.
DOCUMENTED_FIELDS = _TYPED_FIELDS | {
    "app_user_id", "sex", "language", "voice_authorization_url", "create_type", "tag",
    "phone", "dhtms_job_id", "allocated_resource", "output_language",
    "training_input_source_url", "is_remake", "assess_result", "is_ondemand_resource",
}  # fmt: skip


# The undocumented names of each shape of `extra` (a handful per tenant): asked for every job
# parsed, a whole baseline's, where sorting each job's names was a third of its engine pass.
_NOVEL_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {}
_MAX_NOVEL_SHAPES = 1024


def novelties(job: Job) -> tuple[str | None, tuple[str, ...]]:
    """The job's state if no documented one, and the names of undocumented fields it has."""
    state = job.state if job.state not in KNOWN_STATES else None
    extra = job.extra
    if type(extra) is not ExtraFields:
        return state, _undocumented(extra)
    shape = extra.names
    names = _NOVEL_NAMES.get(shape)
    if names is None:
        names = _undocumented(shape)
        if len(_NOVEL_NAMES) < _MAX_NOVEL_SHAPES:
            _NOVEL_NAMES[shape] = names
    return state, names


def _undocumented(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(k for k in names if k not in DOCUMENTED_FIELDS))


@dataclass(frozen=True, slots=True)
class JobsPage:
    """One page of the listing: `count` is the total matching the query, not the page size.

    `jobs` are the parsed jobs; `same` the ids listed whose digest matched what the caller
    already holds (not parsed: unchanged). `first_key`/`last_key` are the page's first and
    last sort key (epoch ms) and `unsorted` whether it was out of order within the page.
    """

    count: int
    jobs: tuple[Job, ...]
    same: tuple[str, ...] = ()
    first_key: float | None = None
    last_key: float | None = None
    unsorted: bool = False

    @property
    def size(self) -> int:
        """How many jobs the page listed, parsed or not."""
        return len(self.jobs) + len(self.same)


# What the caller holds: for a job id and the digest it is listed with, the caller's own id
# object when it holds that job with that digest (unchanged: not parsed), else None.
KnownDigests = Callable[[str, int], "str | None"]

_encode = msgspec.json.Encoder().encode
_DROPPED = tuple(DROPPED_JOB_FIELDS)


# XXH3-64 (python-xxhash): a well-tested 64-bit hash at ~0.05 µs per job against ~0.7 µs
# for blake2b, which a full scan of 1M jobs pays once per job. Not a MAC: it only has to tell
# the API's own job records apart, and the API is trusted for what it says anyway.
_xxh3 = xxhash.xxh3_64_intdigest
_SIGNED = 2**63  # XXH3 is unsigned; SQLite's INTEGER is signed 64-bit: shift, one to one


def job_digest(obj: Mapping[str, Any]) -> int:
    """A stable 64-bit digest of one TrainingJobInfo as the API sent it, personal data and
    signed links left out (a fresh signature must not read as a change). Equal digests mean
    equal jobs; keys in another order only cost a full comparison."""
    if not DROPPED_JOB_FIELDS.isdisjoint(obj):
        obj = {k: v for k, v in obj.items() if k not in DROPPED_JOB_FIELDS}
    return _xxh3(_encode(obj)) - _SIGNED


def _key_ms(value: object) -> float | None:
    """A create/update time as epoch milliseconds, for the listing's order check."""
    if type(value) is int and 0 < value < 10**14:
        return value if value > _MS_THRESHOLD else value * 1000
    when = parse_timestamp(value)
    return None if when is None else when.timestamp() * 1000


def parse_timestamp(value: object) -> datetime | None:
    """Seconds or milliseconds since the epoch (number or numeric string) as aware UTC."""
    if type(value) is int and 0 < value < 10**14:
        # The API's usual form, milliseconds: the fast path of every job of every scan.
        return datetime.fromtimestamp(value / 1000 if value > _MS_THRESHOLD else value, UTC)
    if isinstance(value, bool):
        return None
    number: float
    if isinstance(value, int | float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(number):
        return None
    if abs(number) > _MS_THRESHOLD:
        number = number / 1000
    try:
        return datetime.fromtimestamp(number, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def parse_job(obj: Mapping[str, Any], digest: int | None = None) -> Job:
    """One TrainingJobInfo; unknown fields go to `extra`, personal data is dropped."""
    job_id = obj.get("job_id")
    state = obj.get("state")
    if not isinstance(job_id, str) or not job_id:
        raise ApiError("a job in the response has no job_id", retryable=True)
    if not isinstance(state, str) or not state:
        raise ApiError(f"job {job_id} in the response has no state", retryable=True)
    # Interned (here and in `extra`): 100k jobs share a handful of values (CN, FEMALE,
    # PACKAGE, BASIC...), and one string object each instead of 100k copies is most of a
    # large snapshot's memory. (Keys need no interning: msgspec hands out one cached object
    # per short key.)
    get = obj.get
    return Job(
        job_id=job_id,
        state=intern(state),
        reject_times=_int_or_none(get("reject_times")),
        create_time=parse_timestamp(get("create_time")),
        lastupdate_time=parse_timestamp(get("lastupdate_time")),
        voice_name=_short_str(get("voice_name")),
        job_type=_short_str(get("job_type")),
        batch_name=_short_str(get("batch_name")),
        job_failed_code=_short_str(get("job_failed_code")),
        job_failed_reason=_short_str(get("job_failed_reason")),
        asset_id=_short_str(get("asset_id")),
        extra=_extra_of(obj),
        digest=job_digest(obj) if digest is None else digest,
    )


# For each shape of job object (its field names in order: a handful per tenant), the names
# of its other fields and a getter of their values: a job's `extra` is then one C call and
# one lookup of an instance shared by the jobs with the same values (see ExtraFields), not a
# dict built, interned and copied per job (2.0 µs against 0.6 µs a job, a third of a parse).
_Values = Callable[[Mapping[str, Any]], tuple[Any, ...]]
_EXTRA_PLANS: dict[tuple[str, ...], tuple[tuple[str, ...], _Values] | None] = {}
_MAX_EXTRA_PLANS = 1024


def _extra_of(obj: Mapping[str, Any]) -> ExtraFields:
    shape = tuple(obj)
    try:
        plan = _EXTRA_PLANS[shape]
    except KeyError:
        plan = _plan_extra(shape)
    if plan is None:
        return NO_EXTRA_FIELDS
    names, values_of = plan
    return ExtraFields.shared(names, values_of(obj))


def _plan_extra(shape: tuple[str, ...]) -> tuple[tuple[str, ...], _Values] | None:
    names = tuple(key for key in shape if key not in _NOT_EXTRA)
    plan: tuple[tuple[str, ...], _Values] | None = None
    if len(names) == 1:
        only = names[0]
        plan = (names, lambda obj: (obj[only],))
    elif names:
        plan = (names, itemgetter(*names))  # a tuple of the values, in one C call
    if len(_EXTRA_PLANS) < _MAX_EXTRA_PLANS:
        _EXTRA_PLANS[shape] = plan
    return plan


def _short_str(value: object) -> str | None:
    if type(value) is not str:
        return None
    return intern(value) if len(value) <= 32 else value


# msgspec decodes a page about twice as fast as json.loads, into the same plain objects, and
# fails on the same inputs (plus UTF-16/32 bodies and NaN, which the API never sends).
_decode = msgspec.json.Decoder().decode


def _describe_content_type(content_type: str | None) -> str:
    if not content_type:
        return "no content type"
    # Only the media type: parameters are not useful and keep the message short.
    return content_type.split(";", 1)[0].strip()[:60] or "no content type"


def parse_jobs_page(
    body: bytes,
    content_type: str | None,
    known: KnownDigests | None = None,
    sort_key: str = "create_time",
) -> JobsPage:
    """A whole `{"count": N, "jobs": [...]}` response body, or ApiError(retryable=True).

    With `known`, a job whose digest matches is not parsed, only listed in `same`: a steady
    full scan of 100k jobs then builds no object for the ones that did not change."""
    media = _describe_content_type(content_type)
    if "html" in media.lower():
        raise ApiError(f"response is not JSON ({media})", retryable=True)
    try:
        data = _decode(body)
    except (ValueError, RecursionError, msgspec.DecodeError):
        # ValueError covers truncated JSON and bytes that are not UTF-8/16/32 at all.
        stripped = body.lstrip()[:1]
        if stripped in (b"{", b"["):
            raise ApiError(
                f"response JSON is truncated or invalid ({len(body)} bytes, {media})",
                retryable=True,
            ) from None
        raise ApiError(f"response is not JSON ({media})", retryable=True) from None
    if not isinstance(data, dict):
        raise ApiError(
            f"response JSON is a {type(data).__name__}, expected an object", retryable=True
        )
    if "jobs" not in data:
        raise ApiError("response has no 'jobs' list", retryable=True)
    if "count" not in data:
        raise ApiError("response has no 'count'", retryable=True)
    count = data["count"]
    jobs = data["jobs"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ApiError("response 'count' is not a non-negative integer", retryable=True)
    if not isinstance(jobs, list):
        raise ApiError("response 'jobs' is not a list", retryable=True)
    parsed: list[Job] = []
    same: list[str] = []
    field = "lastupdate_time" if sort_key == "update_time" else "create_time"
    first: float | None = None
    last: float | None = None
    unsorted = False
    # Written out (job_digest and _key_ms inlined): this runs once per job of every scan.
    xxh3, encode, signed = _xxh3, _encode, _SIGNED
    for index, item in enumerate(jobs):
        if type(item) is not dict:
            raise ApiError(f"response jobs[{index}] is not an object", retryable=True)
        # Our own freshly decoded object: dropping personal data in place is the cheap way.
        pop = item.pop
        for dropped in _DROPPED:
            pop(dropped, None)
        digest = xxh3(encode(item)) - signed
        job_id = item.get("job_id")
        if (
            known is not None
            and type(job_id) is str
            and (held := known(job_id, digest)) is not None
        ):
            same.append(held)
        else:
            parsed.append(parse_job(item, digest))
        value = item.get(field)
        key = value if type(value) is int and _MS_THRESHOLD < value < 10**14 else _key_ms(value)
        if key is not None:
            if first is None:
                first = key
            elif last is not None and key < last:
                unsorted = True
            last = key
    return JobsPage(count, tuple(parsed), tuple(same), first, last, unsorted)
