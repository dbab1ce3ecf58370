"""The delivery pipeline: each stage alone (what passes, what it holds, and why), then `plan`."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from hypothesis import given
from hypothesis import strategies as st

from watcher.engine.pipeline import (
    Group,
    Held,
    grouping,
    job_order,
    plan,
    quiet_hours,
    rate_limit,
    retry_schedule,
    silence,
)
from watcher.model import (
    Alert,
    BodyFormat,
    ChannelPolicy,
    NotifyType,
    OutboxItem,
    OutboxStatus,
    QuietHours,
    RuleConfig,
    SentMessage,
    Silence,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULE = RuleConfig(name="failures", on=("AUDIT_FAILED",), notify=("ops",))
RULES = {"failures": RULE}
KEY = "source=prod|rule=failures"


def item(
    n: int,
    *,
    job: str | None = None,
    rule: str = "failures",
    channel: str = "ops",
    key: str = KEY,
    created: datetime = NOW,
    attempts: int = 0,
) -> OutboxItem:
    alert = Alert(
        event_key=f"k{n}",
        source="prod",
        job_id=job or f"job{n}",
        rule=rule,
        channel=channel,
        title=f"AUDIT_FAILED: voice job job{n}",
        body="body",
        notify_type=NotifyType.FAILURE,
        body_format=BodyFormat.TEXT,
        created_at=created,
        group_key=key,
        labels={"job_id": job or f"job{n}"},
    )
    return OutboxItem(n, alert, OutboxStatus.PENDING, attempts, created)


def ids(items: object) -> list[int]:
    return [i.id for i in items]  # type: ignore[attr-defined]


def reasons(held: tuple[Held, ...]) -> dict[int, str]:
    return {h.item_id: h.reason for h in held}


def sent(channel: str, *keys: str, ago: float) -> SentMessage:
    return SentMessage(channel, keys, NOW - timedelta(seconds=ago))


# --- stages ----------------------------------------------------------------------------------


def test_silence_stage_takes_matching_alerts_out_for_good() -> None:
    s = Silence(7, (("job_id", "job2"),), NOW - timedelta(hours=1), NOW + timedelta(hours=1))
    passed, silenced = silence([item(1), item(2)], [s], NOW)
    assert ids(passed) == [1]
    assert [(x.item.id, x.silence.id) for x in silenced] == [(2, 7)]


def test_retry_stage_holds_an_alert_for_its_remaining_wait() -> None:
    step = retry_schedule([item(1, attempts=2), item(2)], {1: timedelta(seconds=40)}, NOW)
    assert ids(step.passed) == [2]
    (held,) = step.held
    assert held.until == NOW + timedelta(seconds=40)
    assert held.reason == "attempt 3 in 40s"


def test_job_order_holds_later_alerts_of_a_held_job_for_as_long() -> None:
    blocker = Held(item(1, job="a"), NOW + timedelta(minutes=3), "quiet hours on channel ops")
    step = job_order(
        [item(2, job="a"), item(3, job="b"), item(4, job="a", channel="chat")], [blocker]
    )
    assert ids(step.passed) == [3, 4]  # another job; the same job on another channel
    (held,) = step.held
    assert held.item_id == 2
    assert held.until == blocker.until
    assert held.reason == "waits for alert 1 about the same job (quiet hours on channel ops)"


def test_job_order_lets_an_earlier_alert_pass_a_later_held_one() -> None:
    blocker = Held(item(5, job="a"), NOW + timedelta(minutes=3), "grouping")
    assert ids(job_order([item(2, job="a")], [blocker]).passed) == [2]


def test_quiet_hours_stage_holds_until_the_window_ends_but_not_urgent_rules() -> None:
    policies = {"ops": ChannelPolicy(quiet_hours=QuietHours(time(11, 0), time(13, 0)))}
    urgent = RuleConfig(name="urgent", on=("*",), notify=("ops",), urgent=True)
    items = [item(1), item(2, rule="urgent"), item(3, channel="chat")]
    step = quiet_hours(items, {"failures": RULE, "urgent": urgent}, policies, NOW)
    assert ids(step.passed) == [2, 3]
    (held,) = step.held
    assert (held.item_id, held.until) == (1, datetime(2026, 11, 25, 13, 0, tzinfo=UTC))
    assert held.reason == "quiet hours on channel ops"


def test_grouping_stage_waits_for_group_wait_from_the_oldest_alert() -> None:
    rule = RuleConfig(name="failures", on=("*",), notify=("ops",), group_wait=timedelta(minutes=1))
    items = [item(1, created=NOW - timedelta(seconds=30)), item(2)]
    step = grouping(items, {"failures": rule}, [], NOW)
    assert step.passed == ()
    assert {h.until for h in step.held} == {NOW + timedelta(seconds=30)}
    assert set(reasons(step.held).values()) == {f"grouping ({KEY})"}
    later = grouping(items, {"failures": rule}, [], NOW + timedelta(seconds=31))
    assert [(g.keys, ids(g.items)) for g in later.passed] == [((KEY,), [1, 2])]


def test_grouping_stage_spaces_a_group_by_its_interval_from_the_send_log() -> None:
    rule = RuleConfig(
        name="failures", on=("*",), notify=("ops",), group_interval=timedelta(minutes=5)
    )
    log = [sent("ops", KEY, ago=120), sent("chat", KEY, ago=10)]
    step = grouping([item(1)], {"failures": rule}, log, NOW)
    (held,) = step.held
    assert held.until == NOW + timedelta(minutes=3)
    assert held.reason == f"grouping ({KEY})"


def test_grouping_stage_counts_a_send_logged_ahead_of_the_clock_as_now() -> None:
    # The wall clock stepped back an hour: the interval runs from now, not from the future.
    rule = RuleConfig(
        name="failures", on=("*",), notify=("ops",), group_interval=timedelta(minutes=5)
    )
    step = grouping([item(1)], {"failures": rule}, [sent("ops", KEY, ago=-3600)], NOW)
    assert [h.until for h in step.held] == [NOW + timedelta(minutes=5)]


def test_alerts_of_an_unknown_rule_go_alone() -> None:
    step = grouping([item(1, rule="gone"), item(2, rule="gone")], RULES, [], NOW)
    assert [ids(g.items) for g in step.passed] == [[1], [2]]


def groups(*members: tuple[str, list[int]]) -> list[Group]:
    return [Group("ops", (key,), tuple(item(n, key=key) for n in ns)) for key, ns in members]


def test_rate_limit_stage_folds_the_excess_into_the_last_allowed_message() -> None:
    policies = {"ops": ChannelPolicy(max_per_minute=3)}
    batch = groups(("a", [1]), ("b", [2]), ("c", [3]), ("d", [4]))
    step = rate_limit(batch, policies, [sent("ops", "x", ago=10)], NOW)
    assert [(g.keys, ids(g.items)) for g in step.passed] == [
        (("a",), [1]),
        (("b", "c", "d"), [2, 3, 4]),
    ]
    assert step.held == ()


def test_rate_limit_stage_holds_everything_once_the_window_is_full() -> None:
    policies = {"ops": ChannelPolicy(max_per_minute=2)}
    log = [sent("ops", "x", ago=50), sent("ops", "y", ago=5), sent("chat", "z", ago=1)]
    step = rate_limit(groups(("a", [1]), ("b", [2])), policies, log, NOW)
    assert step.passed == ()
    assert {h.until for h in step.held} == {NOW + timedelta(seconds=10)}
    assert reasons(step.held) == {
        1: "rate limit of 2/min on channel ops",
        2: "rate limit of 2/min on channel ops",
    }


def test_rate_limit_window_ignores_sends_older_than_a_minute() -> None:
    policies = {"ops": ChannelPolicy(max_per_minute=1)}
    step = rate_limit(groups(("a", [1])), policies, [sent("ops", "x", ago=61)], NOW)
    assert [ids(g.items) for g in step.passed] == [[1]]


# --- the whole pipeline ----------------------------------------------------------------------


def run(items: list[OutboxItem], **kw: object) -> tuple[list[list[int]], dict[int, str]]:
    args: dict[str, object] = {"rules": RULES, "policies": {}}
    args.update(kw)
    p = plan(items, NOW, **args)  # type: ignore[arg-type]
    return [ids(m.items) for m in p.messages], reasons(p.held)


def test_default_rule_groups_by_source_and_rule_but_waits_for_nothing() -> None:
    assert run([item(1), item(2), item(3)]) == ([[1, 2, 3]], {})


def test_single_alert_goes_out_as_rendered() -> None:
    (message,) = plan([item(1)], NOW, rules=RULES, policies={}).messages
    assert (message.title, message.body, message.group_keys) == (
        "AUDIT_FAILED: voice job job1",
        "body",
        (KEY,),
    )


def test_a_retry_wait_holds_the_later_alerts_of_its_job() -> None:
    items = [item(1, job="a", key="k1"), item(2, job="a", key="k2"), item(3, key="k3")]
    messages, held = run(items, waits={1: timedelta(seconds=30)})
    assert messages == [[3]]
    assert held == {
        1: "attempt 1 in 30s",
        2: "waits for alert 1 about the same job (attempt 1 in 30s)",
    }


def test_quiet_hours_hold_non_urgent_alerts_and_keep_job_order() -> None:
    quiet = {"ops": ChannelPolicy(quiet_hours=QuietHours(time(11, 0), time(13, 0)))}
    urgent = RuleConfig(name="urgent", on=("*",), notify=("ops",), urgent=True)
    items = [
        item(1, job="a"),
        item(2, job="a", rule="urgent", key="u"),  # same job: must wait for item 1
        item(3, job="b", rule="urgent", key="u"),
    ]
    messages, held = run(items, rules={"failures": RULE, "urgent": urgent}, policies=quiet)
    assert messages == [[3]]
    assert held == {
        1: "quiet hours on channel ops",
        2: "waits for alert 1 about the same job (quiet hours on channel ops)",
    }


def test_a_group_waiting_for_more_holds_later_alerts_about_its_jobs() -> None:
    slow = RuleConfig(name="failures", on=("*",), notify=("ops",), group_wait=timedelta(minutes=1))
    fast = RuleConfig(name="done", on=("*",), notify=("ops",))
    items = [
        item(1, job="a"),  # grouped, waits a minute
        item(2, job="a", rule="done", key="done"),  # about the same job: must not overtake
        item(3, job="b", rule="done", key="done2"),
    ]
    p = plan(items, NOW, rules={"failures": slow, "done": fast}, policies={})
    assert [ids(m.items) for m in p.messages] == [[3]]
    assert sorted(h.item_id for h in p.held) == [1, 2]
    assert p.next_wake == NOW + timedelta(minutes=1)


def test_interleaved_groups_still_send_one_job_in_detection_order() -> None:
    # Group x holds alerts 1 (job a) and 4 (job b); group y holds 2 (job b) and 3 (job a).
    # Whichever goes first, one job would be out of order: alert 4 waits for the next pass.
    items = [
        item(1, job="a", key="x"),
        item(2, job="b", key="y"),
        item(3, job="a", key="y"),
        item(4, job="b", key="x"),
    ]
    messages, held = run(items)
    assert messages == [[1], [2, 3]]
    assert held == {
        4: "waits for alert 2 about the same job (goes after an earlier alert in another message)"
    }


def test_rate_limit_across_the_send_log_of_a_previous_process() -> None:
    # What a restart sees: the log says two messages went out 20 s ago.
    policies = {"ops": ChannelPolicy(max_per_minute=2)}
    log = [sent("ops", "a", ago=20), sent("ops", "b", ago=20)]
    p = plan([item(1)], NOW, rules=RULES, policies=policies, sent=log)
    assert p.messages == ()
    assert p.next_wake == NOW + timedelta(seconds=40)


def test_plan_reports_silenced_alerts_and_never_sends_them() -> None:
    s = Silence(3, (("rule", "failures"),), NOW - timedelta(1), NOW + timedelta(1))
    p = plan([item(1), item(2)], NOW, rules=RULES, policies={}, silences=[s])
    assert p.messages == ()
    assert [x.item.id for x in p.silenced] == [1, 2]


@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(["k1", "k2", "k3"]), st.booleans()),
        min_size=1,
        max_size=12,
    ),
    st.integers(min_value=1, max_value=3),
)
def test_nothing_is_lost_or_doubled_and_each_job_keeps_its_order(
    spec: list[tuple[str, str, bool]], limit: int
) -> None:
    items = [item(n, job=job, key=key) for n, (job, key, _) in enumerate(spec, start=1)]
    waits = {
        n: timedelta(seconds=5) for n, (_, _, backing_off) in enumerate(spec, 1) if backing_off
    }
    policies = {"ops": ChannelPolicy(max_per_minute=limit)}
    p = plan(items, NOW, rules=RULES, policies=policies, waits=waits)
    out = [i.id for m in p.messages for i in m.items]
    # Every alert is either in exactly one message or held, never both, never neither.
    assert sorted(out + [h.item_id for h in p.held]) == [i.id for i in items]
    assert len(p.messages) <= limit
    # In send order, each job's alerts go oldest first, and none goes past a held one.
    by_job: dict[str, list[int]] = {}
    for m in p.messages:
        for i in sorted(m.items, key=lambda x: x.id):
            by_job.setdefault(i.alert.job_id or "", []).append(i.id)
    for job, sent_ids in by_job.items():
        assert sent_ids == sorted(sent_ids)
        first_held = min((h.item_id for h in p.held if h.item.alert.job_id == job), default=None)
        assert first_held is None or max(sent_ids) < first_held
