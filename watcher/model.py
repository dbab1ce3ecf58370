"""Plain data shared by every layer: jobs, snapshots, events, alerts and the parsed config.

Only the standard library here; everything is frozen so the core can be pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from sys import intern
from typing import Any

# MetaStudio's states are an open set: the API may add values, so they stay strings.
CREATING = "CREATING"
SYSTEM_AUDITING = "SYSTEM_AUDITING"
AUDITING = "AUDITING"
WAITING_SPLIT = "WAITING_SPLIT"
SPLITTING = "SPLITTING"
SPLIT_FAILED = "SPLIT_FAILED"
ANNOTATING = "ANNOTATING"
WAITING = "WAITING"
PROCESSING = "PROCESSING"
RESULT_REVIEW = "RESULT_REVIEW"
AUDIT_FAILED = "AUDIT_FAILED"
UPLOADING = "UPLOADING"
FAILED = "FAILED"
SUCCEED = "SUCCEED"
USER_RESULT_REVIEW = "USER_RESULT_REVIEW"
USER_REVIEW_REJECT = "USER_REVIEW_REJECT"

KNOWN_STATES: frozenset[str] = frozenset(
    {
        CREATING,
        SYSTEM_AUDITING,
        AUDITING,
        WAITING_SPLIT,
        SPLITTING,
        SPLIT_FAILED,
        ANNOTATING,
        WAITING,
        PROCESSING,
        RESULT_REVIEW,
        AUDIT_FAILED,
        UPLOADING,
        FAILED,
        SUCCEED,
        USER_RESULT_REVIEW,
        USER_REVIEW_REJECT,
    }
)
# The 14 values the list API page documents for its `state` filter: the only ones ever sent
# (an API validating the parameter answers 400 MSS.00000003 to any other). The USER_* states
# come back from some regions but are not documented filter values.
DOCUMENTED_STATES: frozenset[str] = KNOWN_STATES - {USER_RESULT_REVIEW, USER_REVIEW_REJECT}
FAILURE_STATES: frozenset[str] = frozenset({AUDIT_FAILED, SPLIT_FAILED, FAILED})
SETTLED_STATES: frozenset[str] = frozenset({SUCCEED, FAILED})

# Fields of a job we never keep, log or send: personal data and signed links. The SDK's
# `training_input_source_url` ("the URL of the user's raw input data": their voice
# recordings) is a bucket link of the same kind as the authorisation letter's.
DROPPED_JOB_FIELDS: frozenset[str] = frozenset(
    {"phone", "voice_authorization_url", "training_input_source_url"}
)


class ExtraFields(Mapping[str, Any]):
    """A job's other fields, read-only: the names in one tuple shared by every job of the
    same shape, the values in another. 144 bytes for the seven fields a simulated job has
    and 176 for the eleven a real one has, against 272 and 464 for a dict: the largest
    part of a job held in memory, and a 1M-job baseline holds a million of them (fewer
    instances: jobs whose values are the same strings share one, see `of`)."""

    __slots__ = ("_keys", "_values")

    def __init__(self, fields: Mapping[str, Any]) -> None:
        keys = tuple(fields)
        # (Written out: this runs once per job parsed or read back.)
        self._keys = _SHAPES.get(keys) or _shared_shape(keys)
        self._values = tuple(fields.values())

    @classmethod
    def of(cls, fields: Mapping[str, Any]) -> ExtraFields:
        """`fields` as ExtraFields: itself if it is one, one shared instance when empty, and
        one shared instance per combination of string values (see `_SHARED`)."""
        if type(fields) is cls:
            return fields
        if not fields:
            return NO_EXTRA_FIELDS
        return cls.shared(tuple(fields), tuple(fields.values()))

    @classmethod
    def shared(cls, keys: tuple[str, ...], values: tuple[Any, ...]) -> ExtraFields:
        """The fields `keys` = `values` (as sent: short strings are interned here, and only
        when no shared instance has them already, which is the usual case of a job parsed
        or read back: its values are then looked up, not copied or interned)."""
        if not keys:
            return NO_EXTRA_FIELDS
        global _shared_hits, _MAX_SHARED  # the process-wide table's state (see _SHARED)
        try:
            shared = _SHARED.get((keys, values))
        except TypeError:  # a list or an object among the values: this job's own
            shared = None
            hashable = False
        else:
            hashable = True
            if shared is not None:
                _shared_hits += 1
                return shared
        # 100k jobs share a handful of values: one string object each, not 100k copies.
        values = tuple(intern(v) if type(v) is str and len(v) <= 32 else v for v in values)
        made = cls.__new__(cls)
        made._keys = _SHAPES.get(keys) or _shared_shape(keys)
        made._values = values
        if hashable and all(type(v) is str for v in values):
            key = (made._keys, values)  # the shape's one tuple of names, not this job's
            if len(_SHARED) < _MAX_SHARED:
                _SHARED[key] = made
            elif _shared_hits < len(_SHARED):
                # Full, and it served fewer jobs than it holds: these values do not repeat
                # (a field unique to each job), so it is only memory. Let it go for good.
                _SHARED.clear()
                _MAX_SHARED = 0
        return made

    def __getitem__(self, key: str) -> Any:
        # A linear search: a job has a dozen fields at most, and a lookup is rare (a rule's
        # `where:` on an extra field); cheaper than a per-job hash table in memory and time.
        try:
            return self._values[self._keys.index(key)]
        except ValueError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ExtraFields) and other._keys is self._keys:
            return self._values == other._values
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like the dict it stands for

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(self._keys, self._values))  # noqa: B905 (equal lengths by construction)

    @property
    def names(self) -> tuple[str, ...]:
        """The field names in order: one tuple shared by every job of this shape."""
        return self._keys


# One tuple of names per shape of job (a few per tenant). Bounded: an API sending ever new
# field names would otherwise grow it without end; past the bound a job keeps its own.
_SHAPES: dict[tuple[str, ...], tuple[str, ...]] = {}
_MAX_SHAPES = 1024


def _shared_shape(keys: tuple[str, ...]) -> tuple[str, ...]:
    if len(_SHAPES) < _MAX_SHAPES:
        return _SHAPES.setdefault(keys, keys)
    return keys


NO_EXTRA_FIELDS = ExtraFields({})

# The jobs of a tenant share a few combinations of these values (its users, sex, language,
# tag...), so one instance serves each, as one string object serves each repeated value: at
# a 1M-job baseline that took over 100 MB off the peak (~20 MB with 4,096 entries, then 593
# -> 486 MB with 65,536). Only combinations of strings are kept: 1, 1.0 and True are equal
# keys, and each job's stored `extra` must say what the API sent (a value of another type
# never equals a string, so looking one up is safe). Bounded, at ~0.45 KB an entry with its
# strings: a field unique to each job (a linked job's id, a user per job) would otherwise
# grow it without end; and once full, dropped if it has served fewer jobs than it holds.
# The simulator's jobs have 16,000 combinations.
_SHARED: dict[tuple[tuple[str, ...], tuple[Any, ...]], ExtraFields] = {}
_MAX_SHARED = 65536
_shared_hits = 0


@dataclass(frozen=True, slots=True, init=False)
class Job:
    """One voice-training job as the API last showed it (personal data already dropped)."""

    job_id: str
    state: str
    reject_times: int | None = None
    create_time: datetime | None = None
    lastupdate_time: datetime | None = None
    voice_name: str | None = None
    job_type: str | None = None
    batch_name: str | None = None
    job_failed_code: str | None = None
    job_failed_reason: str | None = None
    asset_id: str | None = None
    # Every other field the API sent, as it sent it (forward compatible), minus DROPPED_JOB_FIELDS.
    extra: Mapping[str, Any] = field(default_factory=dict)
    # A stable 64-bit digest of what the API sent (see metastudio.parse.job_digest), kept with
    # the stored job so that a scan recognises an unchanged job without parsing it. Not part
    # of the job's identity: None (a job built in code) only means "compare in full".
    digest: int | None = field(default=None, compare=False, repr=False)

    def __init__(
        self,
        job_id: str,
        state: str,
        reject_times: int | None = None,
        create_time: datetime | None = None,
        lastupdate_time: datetime | None = None,
        voice_name: str | None = None,
        job_type: str | None = None,
        batch_name: str | None = None,
        job_failed_code: str | None = None,
        job_failed_reason: str | None = None,
        asset_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        digest: int | None = None,
    ) -> None:
        # Each slot set by its own descriptor: the generated __init__ of a frozen dataclass
        # goes through object.__setattr__ per field, 3.85 µs a job against 2.1 µs here, and
        # every job parsed or read back from the store is built here (a million in a 1M-job
        # baseline). Still frozen: assignment after this raises FrozenInstanceError.
        _set_job_id(self, job_id)
        _set_state(self, state)
        _set_reject_times(self, reject_times)
        _set_create_time(self, create_time)
        _set_lastupdate_time(self, lastupdate_time)
        _set_voice_name(self, voice_name)
        _set_job_type(self, job_type)
        _set_batch_name(self, batch_name)
        _set_job_failed_code(self, job_failed_code)
        _set_job_failed_reason(self, job_failed_reason)
        _set_asset_id(self, asset_id)
        _set_extra(self, NO_EXTRA_FIELDS if extra is None else extra)
        _set_digest(self, digest)

    def field_value(self, name: str) -> Any:
        """A job field by its API name, for rule `where:` matching and templates."""
        if name in _JOB_ATTRS:
            return getattr(self, name)
        return self.extra.get(name)

    def as_dict(self) -> dict[str, Any]:
        """The job as the API named its fields (times as datetimes)."""
        out: dict[str, Any] = dict(self.extra)
        for name in _JOB_ATTRS:
            if name != "extra":
                out[name] = getattr(self, name)
        return out


_JOB_ATTRS = frozenset(Job.__dataclass_fields__) - {"extra", "digest"}


def _slot_setter(name: str) -> Callable[[Job, Any], None]:
    """The setter of one of Job's slots (a member descriptor), which bypasses frozenness."""
    setter: Callable[[Job, Any], None] = Job.__dict__[name].__set__
    return setter


_set_job_id = _slot_setter("job_id")
_set_state = _slot_setter("state")
_set_reject_times = _slot_setter("reject_times")
_set_create_time = _slot_setter("create_time")
_set_lastupdate_time = _slot_setter("lastupdate_time")
_set_voice_name = _slot_setter("voice_name")
_set_job_type = _slot_setter("job_type")
_set_batch_name = _slot_setter("batch_name")
_set_job_failed_code = _slot_setter("job_failed_code")
_set_job_failed_reason = _slot_setter("job_failed_reason")
_set_asset_id = _slot_setter("asset_id")
_set_extra = _slot_setter("extra")
_set_digest = _slot_setter("digest")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every job of one source at one moment, from one complete, consistent scan."""

    source: str
    taken_at: datetime
    jobs: Mapping[str, Job]


class EventKind(StrEnum):
    TRANSITION = "transition"
    REJECTED_AGAIN = "rejected_again"
    NEW = "new"
    VANISHED = "vanished"
    REAPPEARED = "reappeared"
    STUCK = "stuck"
    RECOVERED = "recovered"
    BATCH_SETTLED = "batch_settled"
    BATCH_UPDATED = "batch_updated"  # a settled batch changed and settled again
    SOURCE_UNHEALTHY = "source_unhealthy"
    SOURCE_RECOVERED = "source_recovered"
    SUMMARY = "summary"


@dataclass(frozen=True, slots=True)
class Event:
    """Something a person may want to hear about, with the reason in words."""

    kind: EventKind
    source: str
    detected_at: datetime
    reason: str
    job: Job | None = None
    previous_state: str | None = None
    note: str | None = None
    # What a job-less event is about (a batch name), and which repetition of a reminder
    # (`stuck` with `repeat:`) this is: both are part of the event's identity.
    subject: str | None = None
    sequence: int = 0
    # Extra facts for templates (e.g. a settled batch's counts); plain JSON-like values.
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Stable identity of the change: re-detecting it after a crash gives the same key."""
        job = self.job
        seq = f"#{self.sequence}" if self.sequence else ""
        if job is None:
            subject = self.subject if self.subject is not None else self.detected_at.isoformat()
            return f"{self.source}|{self.kind}|{subject}{seq}"
        marker = ""
        if job.lastupdate_time is not None:
            marker = job.lastupdate_time.isoformat()
        return (
            f"{self.source}|{job.job_id}|{self.kind}|{self.previous_state}>{job.state}"
            f"|{job.reject_times}|{marker}{seq}" + (f"|{self.subject}" if self.subject else "")
        )


class NotifyType(StrEnum):
    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"


class BodyFormat(StrEnum):
    TEXT = "text"
    MARKDOWN = "markdown"
    HTML = "html"
    # One JSON document per message (see watcher.engine.messages); apprise sends it as text.
    JSON = "json"


@dataclass(frozen=True, slots=True)
class Alert:
    """A rendered message for one channel, ready for the outbox."""

    event_key: str
    source: str
    job_id: str | None
    rule: str
    channel: str
    title: str
    body: str
    notify_type: NotifyType
    body_format: BodyFormat
    created_at: datetime
    # Alerts of one channel with the same group key may go out as one message (rule group_by).
    group_key: str = ""
    # What silences match on: job_id, voice_name, batch_name, job_type, state, kind, tag...
    labels: Mapping[str, str] = field(default_factory=dict)
    # What the alert is about as plain JSON data (see watcher.engine.messages.alert_facts):
    # grouped messages, JSON bodies and `alerts --group` are composed from it.
    facts: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def alert_id(self) -> str:
        """Idempotency key: the same change, rule and channel always give the same id."""
        raw = f"{self.event_key}|{self.rule}|{self.channel}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"
    SILENCED = "silenced"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """An alert as the outbox holds it, with its delivery bookkeeping."""

    id: int
    alert: Alert
    status: OutboxStatus
    attempts: int
    next_attempt_at: datetime
    last_error: str | None = None
    sent_at: datetime | None = None
    # When it was queued (again, after `outbox retry`).
    queued_at: datetime | None = None
    # The backoff chosen after the last failed send (None: never failed), and how long
    # delivery has been tried so far, measured on monotonic clocks: `give_up_after` counts
    # this, so no step of the wall clock can dead-letter an alert or stall its retry.
    retry_delay: float | None = None
    elapsed: float = 0.0


@dataclass(frozen=True, slots=True)
class SentMessage:
    """One message a channel accepted, as the send log keeps it (rate limits, group_interval)."""

    channel: str
    group_keys: tuple[str, ...]
    sent_at: datetime


# --- configuration ------------------------------------------------------------------------


class Secret:
    """A credential: its value never shows in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class Credential:
    """A secret and where it came from ("config", "env CLOUD_SDK_AK", "file /run/...")."""

    secret: Secret
    origin: str


@dataclass(frozen=True, slots=True)
class SourceConfig:
    name: str
    endpoint: str  # scheme://host[:port], resolved from region when not given
    region: str | None
    project_id: str
    ak: Credential
    sk: Credential
    security_token: Credential | None = None
    app_user_id: str | None = None
    poll_interval: timedelta = timedelta(seconds=60)
    filters: tuple[tuple[str, str], ...] = ()
    request_timeout: timedelta = timedelta(seconds=30)
    # Incremental polling (see watcher.metastudio.incremental): a full scan at start-up and
    # this often, cheap changed-since or active-set cycles in between; 0 disables them.
    full_scan_every: timedelta = timedelta(hours=1)
    # States assumed never to change again (active-set polling stops looking at them).
    settled_states: tuple[str, ...] = ("SUCCEED", "FAILED")
    # Client-side throttle per source: MetaStudio's list APIs allow ~10-20 req/s per tenant.
    max_requests_per_second: float = 5.0
    page_concurrency: int = 4
    # A batch is settled once all its jobs are terminal and none changed for this long.
    batch_quiet: timedelta = timedelta(minutes=10)
    # How long an alert may wait for the detail APIs (audit-result, op-logs) to say why.
    enrich_timeout: timedelta = timedelta(seconds=10)


class FirstRun(StrEnum):
    BASELINE = "baseline"
    NOTIFY = "notify"
    SUMMARY = "summary"


@dataclass(frozen=True, slots=True)
class RuleConfig:
    name: str
    on: tuple[str, ...]  # new states; ("*",) matches any
    notify: tuple[str, ...]  # channel names
    from_states: tuple[str, ...] | None = None
    events: tuple[EventKind, ...] | None = None  # None: every kind but stuck and vanished
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()  # field -> accepted values or globs
    title: str | None = None  # Jinja2 template; None: the default for the event kind
    body: str | None = None
    format: BodyFormat = BodyFormat.TEXT
    stop: bool = False  # `continue: false` in YAML: later rules do not see the event
    for_: timedelta | None = None  # stuck rules: how long in `on` states
    repeat: timedelta | None = None
    urgent: bool = False  # not held back by a channel's quiet hours
    group_by: tuple[str, ...] = ("source", "rule")
    group_wait: timedelta = timedelta(0)  # wait this long for more alerts of the group
    group_interval: timedelta = timedelta(0)  # at most one message per group this often
    # Grouped messages: Jinja2 templates over `alerts` and `counts`, and how many alerts
    # the body lists (None: 20 for chat formats, 200 for html and json).
    group_title: str | None = None
    group_body: str | None = None
    group_limit: int | None = None


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily window (local time of `timezone`) in which non-urgent alerts wait."""

    start: time
    end: time  # may be before start: the window spans midnight
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class ChannelPolicy:
    max_per_minute: int | None = None  # beyond it, alerts are folded into the next message
    quiet_hours: QuietHours | None = None


@dataclass(frozen=True, slots=True)
class Silence:
    """Alerts matching every matcher are recorded as silenced, not sent, until `ends_at`."""

    id: int
    matchers: tuple[tuple[str, str], ...]  # field -> value or glob
    starts_at: datetime
    ends_at: datetime
    comment: str = ""


@dataclass(frozen=True, slots=True)
class HttpAuth:
    """Credentials for the HTTP endpoints: a bearer token, a basic-auth user, or both.

    The password is kept only as a hash (`$scrypt$…`, see `watcher.web.auth`)."""

    token: Secret | None = None
    basic_user: str | None = None
    basic_password_hash: Secret | None = None


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    retry_initial: timedelta = timedelta(seconds=30)
    retry_max: timedelta = timedelta(minutes=10)
    give_up_after: timedelta = timedelta(hours=24)
    send_timeout: timedelta = timedelta(seconds=30)


DEFAULT_RETENTION = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    sources: tuple[SourceConfig, ...]
    channels: Mapping[str, tuple[Secret, ...]]  # apprise URLs carry tokens: kept as secrets
    rules: tuple[RuleConfig, ...]
    storage: str
    first_run: FirstRun = FirstRun.BASELINE
    delivery: DeliveryConfig = DeliveryConfig()
    http_listen: str | None = None  # "127.0.0.1:9464": serve /healthz /readyz /metrics
    http_auth: HttpAuth | None = None  # who may read the status page, API and /metrics
    channel_policies: Mapping[str, ChannelPolicy] = field(default_factory=dict)
    # "rules[2].title" -> line in the file, so later checks can point at the right place.
    lines: Mapping[str, int] = field(default_factory=dict, repr=False)
    # Every secret value seen while loading (credentials, substituted ${VAR} values in URLs,
    # whole URLs): the log redactor masks each of them wherever it appears.
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    # How long history (events, sent, dead and silenced alerts, the send log) is kept.
    retention: timedelta = DEFAULT_RETENTION
