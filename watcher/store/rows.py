"""Rows <-> model: how jobs, events, alerts and times are written to and read from SQLite.

Pure codecs with no connection: every repository of the store encodes and decodes through these.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from watcher.model import (
    NO_EXTRA_FIELDS,
    Alert,
    BodyFormat,
    Event,
    ExtraFields,
    Job,
    NotifyType,
    OutboxItem,
    OutboxStatus,
)


def ts(value: datetime) -> str:
    """UTC ISO text of fixed width, so text order is time order in SQL comparisons."""
    if value.tzinfo is not UTC:  # parsed times are UTC already: the common case is cheap
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to the store; use UTC")
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def dt_or_none(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Within ±2**33 s of the epoch (the years 1697 to 2242) a float of seconds is exact to well
# under half a microsecond, so `fromtimestamp` gives the very instant back; beyond, the exact
# (and slower) timedelta sum.
_FLOAT_EXACT_US = 2**33 * 10**6


def micros(value: datetime) -> int:
    """A job's time as the store keeps it: integer microseconds since the epoch, exact.

    Job times are the one kind of time the store writes once per job (a million for a 1M-job
    baseline), and three indexes hold them: as integers a 100k-job baseline costs ~0.5 s
    less CPU than ISO text (`isoformat` is ~1.9 µs a time on a slow core) and the file is a
    quarter smaller. Integer order is time order, as the text's was."""
    if value.tzinfo is not UTC and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"naive datetime {value.isoformat()} given to the store; use UTC")
    return (value - _EPOCH) // _MICROSECOND


def micros_or_none(value: datetime | None) -> int | None:
    return None if value is None else micros(value)


def from_micros(value: int) -> datetime:
    if -_FLOAT_EXACT_US < value < _FLOAT_EXACT_US:
        return datetime.fromtimestamp(value / 1e6, UTC)
    return _EPOCH + timedelta(microseconds=value)


def from_micros_or_none(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def _as_dict(obj: Any) -> Any:
    """msgspec's hook for what it does not know: a job's ExtraFields, written as its dict."""
    if isinstance(obj, ExtraFields):
        return obj.as_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON-compatible")


# msgspec writes the same JSON (UTF-8 as is) about five times as fast as json: a 100k-job
# baseline encodes 100k of these. Keys sorted, by msgspec where it can (`order`, 0.19+,
# nested objects too), else here (the oldest msgspec we support has no `order`): either
# text reads back as the same `extra`.
try:
    _encode_sorted = msgspec.json.Encoder(order="sorted", enc_hook=_as_dict).encode
except TypeError:
    _plain = msgspec.json.Encoder().encode

    def _encode_sorted(obj: Any) -> bytes:
        return _plain(dict(sorted(obj.items())))


def job_to_row(job: Job) -> tuple[Any, ...]:
    try:
        extra = _encode_sorted(job.extra).decode() if job.extra else "{}"
    except (TypeError, ValueError, msgspec.EncodeError) as err:
        raise ValueError(f"job {job.job_id}: extra is not JSON-compatible: {err}") from err
    return (
        job.job_id,
        job.state,
        job.reject_times,
        micros_or_none(job.create_time),
        micros_or_none(job.lastupdate_time),
        job.voice_name,
        job.job_type,
        job.batch_name,
        job.job_failed_code,
        job.job_failed_reason,
        job.asset_id,
        extra,
        job.digest,
    )


def row_to_job(row: Sequence[Any]) -> Job:
    return Job(
        job_id=row[0],
        state=sys.intern(row[1]),
        reject_times=row[2],
        create_time=from_micros_or_none(row[3]),
        lastupdate_time=from_micros_or_none(row[4]),
        voice_name=row[5],
        job_type=row[6],
        batch_name=row[7],
        job_failed_code=row[8],
        job_failed_reason=row[9],
        asset_id=row[10],
        extra=_decode_extra(row[11]),
        digest=row[12] if len(row) > 12 else None,
    )


# msgspec decodes the stored `extra` objects about twice as fast as json with a pairs hook;
# interning afterwards keeps what the hook did (one string object per repeated value).
_decode_json = msgspec.json.Decoder().decode


def _decode_extra(text: str) -> ExtraFields:
    if text == "{}":
        return NO_EXTRA_FIELDS
    value = _decode_json(text)
    if not isinstance(value, dict):
        return NO_EXTRA_FIELDS
    # One instance per combination of values, interned where new, as parse does (keys are
    # already shared: msgspec caches short keys).
    return ExtraFields.shared(tuple(value), tuple(value.values()))


def event_to_row(event: Event) -> tuple[Any, ...]:
    job = event.job
    return (
        event.key,
        str(event.kind),
        event.source,
        None if job is None else job.job_id,
        event.previous_state,
        None if job is None else job.state,
        event.reason,
        event.note,
        ts(event.detected_at),
        event.subject,
        event.sequence,
        # History only: an odd value must not fail the cycle, so it is kept as its str().
        json.dumps(dict(event.details), sort_keys=True, ensure_ascii=False, default=str),
    )


def alert_to_row(alert: Alert) -> tuple[Any, ...]:
    created = ts(alert.created_at)
    return (
        alert.alert_id,
        alert.event_key,
        alert.source,
        alert.job_id,
        alert.rule,
        alert.channel,
        alert.title,
        alert.body,
        str(alert.notify_type),
        str(alert.body_format),
        created,
        created,  # due as soon as it is queued
        alert.group_key,
        json.dumps(dict(alert.labels), sort_keys=True, ensure_ascii=False),
        json.dumps(dict(alert.facts), ensure_ascii=False, default=str),  # document order
    )


def row_to_item(row: Sequence[Any]) -> OutboxItem:
    alert = Alert(
        event_key=row[1],
        source=row[2],
        job_id=row[3],
        rule=row[4],
        channel=row[5],
        title=row[6],
        body=row[7],
        notify_type=NotifyType(row[8]),
        body_format=BodyFormat(row[9]),
        created_at=dt(row[10]),
        group_key=row[17] or "",
        labels=json.loads(row[18] or "{}"),
        facts=json.loads(row[21] or "{}") if len(row) > 21 else {},
    )
    return OutboxItem(
        id=row[0],
        alert=alert,
        status=OutboxStatus(row[11]),
        attempts=row[12],
        next_attempt_at=dt(row[13]),
        last_error=row[14],
        sent_at=dt_or_none(row[15]),
        queued_at=dt_or_none(row[16]),
        retry_delay=row[19],
        elapsed=float(row[20] or 0.0),
    )
