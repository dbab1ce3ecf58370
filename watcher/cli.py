"""Command line: argument parsing, exit codes, and the one-line error a user sees.

Exit codes: 0 ok, 1 runtime failure, 2 usage error, 75 (EX_TEMPFAIL) when `once` polled every
source but could not deliver an alert (it stays queued: the next run retries), 78 config error
(EX_CONFIG, so systemd's RestartPreventExitStatus=78 stops a restart loop on a broken config).
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import os
import socket
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from watcher import __version__, statelock
from watcher.advice import advice
from watcher.app import Root, tune_memory
from watcher.config import (
    config_warnings,
    describe_credentials,
    parse_duration,
    parse_listen,
)
from watcher.engine.diff import format_duration
from watcher.engine.holds import Hold, explain_holds
from watcher.engine.messages import entry_of, job_line, json_document, summary_line
from watcher.engine.noise import SILENCE_FIELDS
from watcher.engine.pipeline import RATE_WINDOW
from watcher.engine.probe import Facts, ProbeError, probe_event
from watcher.engine.rules import match
from watcher.engine.templates import check_rule_templates, render
from watcher.engine.why import why_lines
from watcher.errorcodes import with_explanation
from watcher.errors import ConfigError, StoreError, UsageError, WatcherError
from watcher.logs import configure
from watcher.model import (
    KNOWN_STATES,
    BodyFormat,
    Config,
    Event,
    EventKind,
    NotifyType,
    OutboxItem,
    OutboxStatus,
)
from watcher.readiness import readiness
from watcher.recorder import Unrecorded
from watcher.store import HistoryEntry, PollStrategy, SourceStatus, Store

# aiohttp, apprise (watcher.notify) and the daemon are imported by the commands that use
# them: `health`, the container's HEALTHCHECK, runs every minute and must stay cheap.

EX_OK, EX_FAILURE, EX_USAGE, EX_TEMPFAIL, EX_CONFIG = 0, 1, 2, 75, 78
DEFAULT_CONFIG = "config.yaml"
# `health` calls a source stale after this many poll intervals without a successful poll,
# the same grace the daemon's /readyz gives.
STALE_AFTER_INTERVALS = 3.0
HEALTH_HTTP_TIMEOUT = 2.0
TEST_TITLE = "metastudio-watcher test message — ignore"

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metastudio-watcher",
        description="Watch Huawei Cloud MetaStudio voice-training jobs and alert on changes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, defaults=True)
    # The same options after the command too (`run -c FILE --log-format json`).
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="YAML config file")
        return p

    with_config(add_command("run", help="run the daemon until SIGTERM/SIGINT"))
    once = with_config(add_command("once", help="one poll-and-deliver cycle, then exit"))
    once.add_argument("--json", action="store_true", help="the cycle's outcome as JSON")
    check = with_config(add_command("check", help="validate a config without touching the network"))
    check.add_argument("--json", action="store_true", help="the result (or the errors) as JSON")
    demo = add_command("demo", help="run against the built-in simulator (no cloud account)")
    demo.add_argument("--jobs", type=int, default=30, help="jobs the simulator starts with")
    demo.add_argument("--step-every", type=float, default=4.0, help="simulator step, seconds")
    demo.add_argument("--poll-interval", default="5s", help="daemon poll interval")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    demo.add_argument("--logs", action="store_true", help="show the daemon's log lines too")
    outbox = with_config(add_command("outbox", help="list pending and dead alerts"))
    outbox.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    outbox.add_argument("id", nargs="?", type=int, help="with retry: one dead alert's id")
    outbox.add_argument("--all", action="store_true", help="with retry: every dead alert")
    outbox.add_argument("--json", action="store_true")
    rt = with_config(add_command("route", help="which rules and channels an event reaches"))
    rt.add_argument("--state", help="the job's new state (job events only)")
    rt.add_argument("--from", dest="from_state", help="the state it came from (transition)")
    rt.add_argument("--event", default="transition", choices=[k.value for k in EventKind])
    rt.add_argument("--job-type")
    rt.add_argument("--voice-name")
    rt.add_argument("--batch-name")
    rt.add_argument("--source", default="sample-source")
    rt.add_argument("--json", action="store_true", help="each rule's decision as JSON")
    alerts = with_config(
        add_command("alerts", help="the alerts one grouped message carried (its +N more line)")
    )
    alerts.add_argument("--channel", required=True)
    alerts.add_argument("--group", action="append", default=[], metavar="KEY")
    alerts.add_argument("--ids", required=True, metavar="FIRST-LAST", help="outbox id span")
    alerts.add_argument("--json", action="store_true", help="the JSON document (format: json)")
    status = with_config(add_command("status", help="per source: last poll, errors, jobs"))
    status.add_argument("--json", action="store_true")
    jobs = with_config(add_command("jobs", help="list the tracked jobs"))
    jobs.add_argument("--state", help="only jobs in this state (e.g. AUDIT_FAILED)")
    jobs.add_argument("--source", help="only jobs of this source")
    jobs.add_argument("--json", action="store_true")
    history = with_config(add_command("history", help="every event and alert about a job"))
    history.add_argument("job_id", metavar="JOB_ID")
    history.add_argument("--source", help="only events of this source")
    history.add_argument("--json", action="store_true")
    health = with_config(
        add_command(
            "health",
            help="exit 0 when every source polled successfully lately (Docker HEALTHCHECK)",
        )
    )
    health.add_argument("--json", action="store_true")
    test_notify = with_config(
        add_command("test-notify", help="send a test message to every channel (or one)")
    )
    test_notify.add_argument("--channel", help="only this channel")
    test_notify.add_argument("--json", action="store_true")
    silence = with_config(add_command("silence", help="add, list or expire silences"))
    silence.add_argument("action", nargs="?", choices=["list", "add", "expire"], default="list")
    silence.add_argument("id", nargs="?", type=int, help="with expire: the silence's id")
    silence.add_argument(
        "--match",
        action="append",
        metavar="FIELD=VALUE",
        help="with add (repeatable, all must match; globs allowed): " + ", ".join(SILENCE_FIELDS),
    )
    silence.add_argument("--for", dest="duration", default="2h", help="with add: e.g. 2h, 1d")
    silence.add_argument("--comment", default="", help="with add: why, for the next person")
    silence.add_argument("--all", action="store_true", help="with list: expired ones too")
    silence.add_argument("--json", action="store_true")
    return parser


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Options every command takes; without `defaults` they leave the main parser's alone."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--log-level", default=default("info"), choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        default=default(None),
        help="default: console on a terminal, JSON lines otherwise",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="show tracebacks of unexpected errors",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The composition root: the commands load configs and build the app through it, and its
    # redactor (handed to the logging chain here) masks every line and error we print.
    args.root = root = Root()
    fmt = configure(level=args.log_level, fmt=args.log_format, redactor=root.redactor)
    # The daemon commands' stderr is a log stream (journald, a container's log): in JSON mode
    # their fatal line is a JSON log record too. Other commands talk to a person.
    args.structured_errors = fmt == "json" and args.command in _LOG_STREAM_COMMANDS
    command: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
    try:
        return command(args)
    except WatcherError as err:
        _say(args, root.redactor.redact(err.message), exit_code=err.exit_code)
        return err.exit_code
    except KeyboardInterrupt:
        return EX_OK
    except BrokenPipeError:
        # `metastudio-watcher jobs | head`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK
    except Exception as err:  # a bug: say so in one line unless --debug
        if args.debug:
            raise
        _say(
            args,
            f"internal error ({type(err).__name__}); run again with --debug for the traceback",
            exit_code=EX_FAILURE,
        )
        return EX_FAILURE


_LOG_STREAM_COMMANDS = frozenset({"run", "once"})


def _say(args: argparse.Namespace, message: str, *, exit_code: int | None = None) -> None:
    """One error line on stderr: `metastudio-watcher: …`, or a JSON record in a log stream."""
    if getattr(args, "structured_errors", False):
        fields: dict[str, Any] = {} if exit_code is None else {"exit_code": exit_code}
        log.error(message, **fields)
    else:
        print(f"metastudio-watcher: {message}", file=sys.stderr)


def _load(args: argparse.Namespace, *, validate_urls: bool = True) -> Config:
    root: Root = args.root
    return root.load(args.config, validate_urls=validate_urls)


def cmd_check(args: argparse.Namespace) -> int:
    from watcher.notify import mask_url

    if args.json:
        return _check_json(args)
    config = _load(args)
    problems = template_problems(config)
    for warning in [*config_warnings(args.config), *advice(config)]:
        print(f"warning: {warning}")
    if problems:
        for problem in problems:
            print(problem.message, file=sys.stderr)
        return EX_CONFIG
    print(f"{args.config}: ok")
    print(f"  sources: {len(config.sources)}")
    for source in config.sources:
        print(f"    {source.name}: {source.endpoint} every {_interval(source.poll_interval)}")
    for line in describe_credentials(config):
        print(f"  {line}")
    print(f"  channels: {len(config.channels)}")
    for name, urls in config.channels.items():
        print(f"    {name}: {', '.join(mask_url(u.reveal()) for u in urls)}")
    print(f"  rules: {len(config.rules)} ({', '.join(r.name for r in config.rules)})")
    print(f"  storage: {config.storage}")
    if config.http_listen:
        print(f"  http: status page, /api/v1, /healthz /readyz /metrics on {config.http_listen}")
        print(f"  http auth: {_http_auth_text(config)}")
    return EX_OK


def _check_json(args: argparse.Namespace) -> int:
    """`check --json`: {"ok": true, ...} or {"ok": false, "errors": [...]}, exit 0 or 78."""
    from watcher.notify import mask_url

    try:
        config = _load(args)
        problems = template_problems(config)
    except ConfigError as err:
        config, problems = None, [err]
    warnings = config_warnings(args.config)
    if config is None or problems:
        _print_json(
            {
                "ok": False,
                "config": args.config,
                "errors": [_config_error_json(p, args.root) for p in problems],
                "warnings": warnings,
            }
        )
        return EX_CONFIG
    _print_json(
        {
            "ok": True,
            "config": args.config,
            "warnings": warnings,
            "sources": [
                {
                    "name": source.name,
                    "endpoint": source.endpoint,
                    "poll_interval_seconds": source.poll_interval.total_seconds(),
                    "ak_from": source.ak.origin,
                    "sk_from": source.sk.origin,
                    "security_token_from": (
                        source.security_token.origin if source.security_token else None
                    ),
                }
                for source in config.sources
            ],
            "channels": {
                name: [mask_url(u.reveal()) for u in urls] for name, urls in config.channels.items()
            },
            "rules": [rule.name for rule in config.rules],
            "storage": config.storage,
            "http_listen": config.http_listen,
        }
    )
    return EX_OK


def _config_error_json(err: ConfigError, root: Root) -> dict[str, Any]:
    return {
        "file": err.file,
        "line": err.line,
        "key": err.key,
        "problem": root.redactor.redact(err.problem),
        "message": root.redactor.redact(err.message),
    }


def _http_auth_text(config: Config) -> str:
    """What protects the page, for `check` (never the token or the hash)."""
    auth = config.http_auth
    if auth is None:
        return "none (loopback only)"
    parts = ["bearer token"] if auth.token else []
    if auth.basic_user:
        parts.append(f"basic user {auth.basic_user}")
    return ", ".join(parts) + "; /healthz and /readyz stay open"


def template_problems(config: Config) -> list[ConfigError]:
    now = datetime.now(UTC)
    out = []
    for index, rule in enumerate(config.rules):
        for name, message in check_rule_templates(rule, now):
            key = f"rules[{index}].{name}"
            out.append(ConfigError(message, file=config.path, line=config.lines.get(key), key=key))
    return out


def _open_for_daemon(root: Root, config: Config) -> Store:
    """The state file, locked, once the config's templates render (for `run`, a channel URL
    apprise refuses already stopped the load, before it polls or listens)."""
    problems = template_problems(config)
    if problems:
        raise problems[0]
    return root.open_store(config)


def cmd_once(args: argparse.Namespace) -> int:
    tune_memory()
    root: Root = args.root
    # Channel URLs are checked by apprise when a message goes (the notifier is deferred):
    # a cron cycle with nothing to send never imports it. `check` checks them all.
    config = _load(args, validate_urls=False)
    store = _open_for_daemon(root, config)

    async def go() -> int:
        async with root.session(config) as session:
            # Nothing scrapes a cron cycle: what it would count is never read (see recorder).
            app = root.build_app(config, store, session, metrics=Unrecorded())
            try:
                watcher = app.watcher
                # Watcher.once(), keeping the delivery pass's outcome for the exit code.
                outcomes = await asyncio.gather(*(watcher.poll(s.name) for s in config.sources))
                delivery = await watcher.deliver()
            finally:
                app.close()
        failures = [o for o in outcomes if not o.ok]
        undelivered = delivery.failed + delivery.dead
        if undelivered:
            # The URLs were not checked up front (that imports apprise): now that a send
            # failed, one apprise refuses is the config error it is, with its FILE:LINE,
            # after every other channel has had its messages (nothing is lost: they wait).
            _load(args)
        code = EX_FAILURE if failures else EX_TEMPFAIL if undelivered else EX_OK
        if args.json:
            _print_json(
                {
                    "sources": [
                        {"source": o.source, "ok": o.ok, "error": o.error} for o in outcomes
                    ],
                    "sent": delivery.sent,
                    "failed": delivery.failed,
                    "dead": delivery.dead,
                    "exit_code": code,
                }
            )
        for outcome in failures:
            error = outcome.error
            text = with_explanation(str(error), error.code if error is not None else None)
            _say(args, f"source {outcome.source}: {text}")
        if undelivered:
            _say(
                args,
                f"{undelivered} alert(s) could not be delivered ({delivery.failed} will be "
                f"retried, {delivery.dead} dead-lettered); `outbox` lists them",
            )
        return code

    try:
        return asyncio.run(go())
    finally:
        store.close()


def cmd_run(args: argparse.Namespace) -> int:
    from watcher.daemon import serve

    tune_memory()
    root: Root = args.root
    config = _load(args)
    store = _open_for_daemon(root, config)

    def reload_config(path: str) -> Config:
        # Its secrets join the root's redactor at once, even if its templates are refused:
        # every secret any loaded config held stays masked.
        new = root.load(path)
        problems = template_problems(new)
        if problems:
            raise problems[0]
        return new

    try:
        return asyncio.run(serve(args.config, config, store, root=root, load_config=reload_config))
    finally:
        store.close()


def cmd_demo(args: argparse.Namespace) -> int:
    from watcher.demo import run_demo  # the simulator is only imported when asked for

    tune_memory()
    return asyncio.run(
        run_demo(
            jobs=args.jobs,
            step_every=args.step_every,
            poll_interval=args.poll_interval,
            seed=args.seed,
            duration=args.duration,
            logs=args.logs or args.log_level != "info",
            log_format=args.log_format,
            root=args.root,
        )
    )


def cmd_outbox(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.action == "retry":
        if args.id is None and not args.all:
            print("metastudio-watcher: outbox retry needs an ID or --all", file=sys.stderr)
            return EX_USAGE
        with Store.open(config.storage) as store:
            count = store.retry_dead(None if args.all else args.id, datetime.now(UTC))
        if count == 0 and args.id is not None:
            print(f"metastudio-watcher: no dead alert with id {args.id}", file=sys.stderr)
            return EX_FAILURE
        # The daemon looks at the outbox at least once a minute, sooner after its next poll.
        if args.json:
            _print_json({"queued": count})
        else:
            print(f"{count} alert(s) queued again")
        return EX_OK
    now = datetime.now(UTC)
    with _open_reader(config) as store:
        items = store.list_outbox([OutboxStatus.PENDING, OutboxStatus.DEAD])
        holds = _holds(config, store, [i for i in items if i.status is OutboxStatus.PENDING], now)
    rows: list[dict[str, Any]] = [
        {
            "id": i.id,
            "status": str(i.status),
            "channel": i.alert.channel,
            "source": i.alert.source,
            "job_id": i.alert.job_id,
            "rule": i.alert.rule,
            "attempts": i.attempts,
            "next_attempt_at": i.next_attempt_at.isoformat(),
            "held": _hold_json(holds.get(i.id)),
            "last_error": i.last_error,
            "title": i.alert.title,
        }
        for i in items
    ]
    if args.json:
        _print_json(rows)
        return EX_OK
    if not rows:
        print("outbox empty: nothing pending, nothing dead")
        return EX_OK
    table = [
        [
            str(item.id),
            str(item.status),
            item.alert.channel,
            str(item.attempts),
            _next_try(item, holds.get(item.id), now),
            _held_by(holds.get(item.id)),
            item.alert.title,
            item.last_error or "",
        ]
        for item in items
    ]
    headers = ["ID", "STATUS", "CHANNEL", "ATTEMPTS", "NEXT TRY", "HELD BY", "TITLE", "LAST ERROR"]
    _print_table(headers, table)
    return EX_OK


def _holds(
    config: Config, store: Store, pending: list[OutboxItem], now: datetime
) -> dict[int, Hold]:
    """What holds each pending alert back, replayed from the store (see engine.holds)."""
    if not pending:
        return {}
    span = max([RATE_WINDOW, *(r.group_interval for r in config.rules)])
    return explain_holds(
        pending,
        now,
        rules={r.name: r for r in config.rules},
        policies=config.channel_policies,
        silences=store.list_silences(active_at=now),
        sent=store.send_log(now - span),
    )


def _hold_json(hold: Hold | None) -> dict[str, str] | None:
    return None if hold is None else {"until": _iso(hold.until) or "", "reason": hold.reason}


def _next_try(item: OutboxItem, hold: Hold | None, now: datetime) -> str:
    if item.status is not OutboxStatus.PENDING:
        return "-"
    return _until(hold.until if hold is not None else item.next_attempt_at, now)


def _held_by(hold: Hold | None) -> str:
    return "-" if hold is None else f"{hold.reason} until {_minutes(hold.until)}"


def cmd_route(args: argparse.Namespace) -> int:
    """Which rules and channels an event reaches, decided by the daemon's own matching."""
    for option, value in (("--state", args.state), ("--from", args.from_state)):
        if value is not None:
            _known_state(value, option, globs=False)
    config = _load(args)
    now = datetime.now(UTC)
    facts = Facts(
        EventKind(args.event),
        args.source,
        state=args.state,
        from_state=args.from_state,
        job_type=args.job_type,
        voice_name=args.voice_name,
        batch_name=args.batch_name,
    )
    try:
        event = probe_event(facts, now)
    except ProbeError as err:
        raise UsageError(str(err)) from None
    if args.json:
        return _route_json(config, event)
    print(f"event: {event.kind} · {event.reason}")
    matched = 0
    for decision in match(config.rules, event):
        mark = "MATCH" if decision.matched else "  -  "
        print(f"{mark} {decision.rule.name}: {decision.reason}")
        if decision.matched:
            matched += 1
            rendered = render(event, decision.rule)
            print(f"      channels: {', '.join(decision.rule.notify)}")
            print(f"      title: {rendered.title}")
            for line in rendered.body.splitlines():
                print(f"      | {line}")
    if not matched:
        print("no rule matches: this event would not be sent anywhere")
    return EX_OK


def _route_json(config: Config, event: Event) -> int:
    """`route --json`: every rule's decision, and for the matching ones where it goes."""
    decisions = []
    for decision in match(config.rules, event):
        entry: dict[str, Any] = {
            "rule": decision.rule.name,
            "matched": decision.matched,
            "reason": decision.reason,
        }
        if decision.matched:
            rendered = render(event, decision.rule)
            entry.update(
                channels=list(decision.rule.notify), title=rendered.title, body=rendered.body
            )
        decisions.append(entry)
    _print_json(
        {
            "event": str(event.kind),
            "state": event.job.state if event.job else None,
            "rules": decisions,
        }
    )
    return EX_OK


# --- operator commands: read the store next to a running daemon ----------------------------


def cmd_alerts(args: argparse.Namespace) -> int:
    """Every alert of one grouped message, as the message would list it, none left out."""
    first, sep, last = str(args.ids).partition("-")
    if not (first.isdigit() and (not sep or last.isdigit())):
        raise UsageError(f"--ids {args.ids}: expected FIRST-LAST, e.g. --ids 12-57")
    span = (int(first), int(last) if sep else int(first))
    config = _load(args)
    with _open_reader(config) as store:
        items = store.alerts_of_group(args.channel, args.group, *span)
    entries = [entry_of(i.alert) for i in items]
    if args.json:
        print(json_document(entries))
        return EX_OK
    if not items:
        print("no such alerts: check --channel, --group and --ids against the message")
        return EX_FAILURE
    print(summary_line(entries))
    for item, entry in zip(items, entries, strict=True):
        print(f"{item.id:>6} {item.status:<8} {job_line(entry)}")
        for line in why_lines(entry.get("why")):
            print(f"{'':>16}{line}")
    return EX_OK


def _open_reader(config: Config) -> Store:
    """The store without the daemon lock, so these commands work while the daemon runs."""
    if config.storage != ":memory:" and not os.path.exists(config.storage):
        pid = statelock.holder(config.storage)
        if pid is not None:
            raise StoreError(
                f"{config.storage}: the state file is gone, but a watcher (pid {pid}) still runs "
                "on it: it was deleted under the running daemon; restore it or restart the daemon"
            )
        raise StoreError(
            f"{config.storage}: no state database yet; the watcher has not run with this "
            "config (start it, or run `once`)"
        )
    return Store.open(config.storage)


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    with _open_reader(config) as store:
        known = {s.name: s for s in store.source_status()}
        by_state = store.jobs_by_state()
        counts = store.outbox_counts()
        polling = store.poll_strategies()
    now = datetime.now(UTC)
    intervals = {s.name: s.poll_interval for s in config.sources}
    # Configured sources in config order, then any the store still remembers.
    names = [*intervals, *(name for name in known if name not in intervals)]
    sources = [
        {
            **_source_json(name, known.get(name), intervals.get(name), by_state.get(name, {})),
            **_polling_json(polling.get(name)),
        }
        for name in names
    ]
    outbox = {str(status): count for status, count in counts.items()}
    if args.json:
        _print_json({"sources": sources, "outbox": outbox})
        return EX_OK
    table = []
    for name in names:
        status = known.get(name)
        interval = intervals.get(name)
        states = by_state.get(name, {})
        table.append(
            [
                name,
                _interval(interval) if interval is not None else "(not in config)",
                _ago(status.last_poll_at if status else None, now),
                _ago(status.last_ok_at if status else None, now),
                str(status.consecutive_failures if status else 0),
                str(sum(states.values())),
                ", ".join(f"{state} {n}" for state, n in states.items()) or "-",
            ]
        )
    headers = ["SOURCE", "EVERY", "LAST POLL", "LAST OK", "FAILURES", "JOBS", "BY STATE"]
    _print_table(headers, table)
    for name in names:
        status = known.get(name)
        if status is not None and status.consecutive_failures and status.last_error:
            print(
                f"{_clean(name)}: {status.consecutive_failures} failed poll(s) in a row, "
                f"last {_ago(status.last_error_at, now)}: {_clean(status.last_error)}"
            )
    for name in names:
        if (line := _polling_line(polling.get(name))) is not None:
            print(f"{_clean(name)}: {line}")
    pending = counts.get(OutboxStatus.PENDING, 0)
    dead = counts.get(OutboxStatus.DEAD, 0)
    # Statuses added later (silenced, ...) are shown when there is something in them.
    others = "".join(
        f", {count} {status}"
        for status, count in counts.items()
        if count and status not in (OutboxStatus.PENDING, OutboxStatus.DEAD, OutboxStatus.SENT)
    )
    hint = " (`outbox` lists them)" if pending or dead else ""
    print(f"outbox: {pending} pending, {dead} dead{others}{hint}")
    return EX_OK


def _scan_note(done: int, total: int | None, *, baseline: bool) -> str:
    from watcher.metrics import scan_note  # prometheus_client stays out of light commands

    return scan_note(done, total, baseline=baseline)


def _polling_json(polling: PollStrategy | None) -> dict[str, Any]:
    """The strategy in use and the scan in flight (see `Store.poll_strategies`)."""
    scan = None
    if polling is not None and polling.pages_done is not None:
        scan = {
            "baseline": polling.baseline,
            "pages_done": polling.pages_done,
            "pages_total": polling.pages_total,
            "text": _scan_note(polling.pages_done, polling.pages_total, baseline=polling.baseline),
            "updated_at": _iso(polling.progress_at),
        }
    return {"strategy": polling.strategy if polling else None, "scan": scan}


def _polling_line(polling: PollStrategy | None) -> str | None:
    """`strategy active_set; baseline in progress: 12 of 1000 pages`, or None."""
    if polling is None:
        return None
    parts = []
    if polling.strategy:
        parts.append(f"strategy {polling.strategy}")
    if polling.pages_done is not None:
        parts.append(_scan_note(polling.pages_done, polling.pages_total, baseline=polling.baseline))
    return "; ".join(parts) or None


def _source_json(
    name: str,
    status: SourceStatus | None,
    interval: timedelta | None,
    states: Mapping[str, int],
) -> dict[str, Any]:
    return {
        "name": name,
        "configured": interval is not None,
        "poll_interval_seconds": interval.total_seconds() if interval is not None else None,
        "baseline_at": _iso(status.baseline_at if status else None),
        "last_poll_at": _iso(status.last_poll_at if status else None),
        "last_ok_at": _iso(status.last_ok_at if status else None),
        "last_error_at": _iso(status.last_error_at if status else None),
        "last_error": status.last_error if status else None,
        "consecutive_failures": status.consecutive_failures if status else 0,
        "jobs": sum(states.values()),
        "jobs_by_state": dict(states),
    }


def cmd_jobs(args: argparse.Namespace) -> int:
    if args.state is not None:
        _known_state(args.state, "--state", globs=False)
    config = _load(args)
    with _open_reader(config) as store:
        jobs = store.list_jobs(args.source, args.state)
    rows = [
        {
            "source": source,
            "job_id": job.job_id,
            "state": job.state,
            "reject_times": job.reject_times,
            "voice_name": job.voice_name,
            "job_type": job.job_type,
            "batch_name": job.batch_name,
            "lastupdate_time": _iso(job.lastupdate_time),
            "job_failed_code": job.job_failed_code,
            "job_failed_reason": job.job_failed_reason,
        }
        for source, job in jobs
    ]
    if args.json:
        _print_json(rows)
        return EX_OK
    if not rows:
        wanted = [
            f"state {args.state}" if args.state else "",
            f"source {args.source}" if args.source else "",
        ]
        where = " and ".join(w for w in wanted if w)
        print("no tracked jobs" + (f" with {where}" if where else ""))
        return EX_OK
    table = [
        [
            source,
            job.job_id,
            job.state,
            _text(job.reject_times),
            _text(job.voice_name),
            _text(job.job_type),
            _text(job.batch_name),
            _minutes(job.lastupdate_time),
        ]
        for source, job in jobs
    ]
    headers = ["SOURCE", "JOB_ID", "STATE", "REJECTS", "VOICE", "TYPE", "BATCH", "UPDATED (UTC)"]
    _print_table(headers, table)
    print(f"{len(rows)} job(s)")
    return EX_OK


def cmd_history(args: argparse.Namespace) -> int:
    config = _load(args)
    now = datetime.now(UTC)
    with _open_reader(config) as store:
        entries = store.job_history(args.job_id, args.source)
        tracked = [] if entries else store.list_jobs(args.source)
        pending = [
            item
            for item in store.list_outbox([OutboxStatus.PENDING])
            if item.alert.job_id == args.job_id
            and (not args.source or item.alert.source == args.source)
        ]
        # Holds are decided over the whole outbox (rate limits and grouping span jobs), then
        # keyed by (event, rule, channel), which is how the history names its alerts.
        everything = store.list_outbox([OutboxStatus.PENDING]) if pending else []
        holds = _holds(config, store, everything, now)
        by_alert = {
            (i.alert.event_key, i.alert.rule, i.alert.channel): holds[i.id]
            for i in pending
            if i.id in holds
        }
    if args.json:
        _print_json([_history_json(entry, by_alert) for entry in entries])
    if not entries:
        current = [(source, job) for source, job in tracked if job.job_id == args.job_id]
        if not current:
            if not args.json:
                print(
                    f"metastudio-watcher: no events recorded for job {_clean(args.job_id)}, "
                    "and it is not tracked; `jobs` lists the tracked ones",
                    file=sys.stderr,
                )
            return EX_FAILURE
        if not args.json:
            for source, job in current:
                print(
                    f"job {_clean(job.job_id)} ({_clean(source)}): in {_clean(job.state)} since "
                    "the baseline or earlier; no events recorded"
                )
        return EX_OK
    if args.json:
        return EX_OK
    for entry in entries:
        change = (
            f"{entry.previous_state} → {entry.state}"
            if entry.previous_state is not None
            else (entry.state or "")
        )
        print(
            f"{_minutes(entry.detected_at)}  {_clean(entry.source)}  {entry.kind}  "
            f"{_clean(change)}".rstrip()
        )
        print(f"    reason: {_clean(entry.reason)}")
        if entry.note:
            print(f"    note: {_clean(entry.note)}")
        if not entry.alerts:
            print("    no alerts: no rule matched")
        for alert in entry.alerts:
            plural = "" if alert.attempts == 1 else "s"
            line = (
                f"    {alert.rule} → {alert.channel}: {alert.status}, "
                f"{alert.attempts} attempt{plural}"
            )
            if alert.sent_at is not None:
                line += f", sent {_minutes(alert.sent_at)}"
            hold = by_alert.get((entry.event_key, alert.rule, alert.channel))
            if hold is not None and alert.status is OutboxStatus.PENDING:
                line += f", held by {_held_by(hold)}"
            if alert.last_error:
                line += f", last error: {_clean(alert.last_error)}"
            print(line)
    return EX_OK


def _history_json(
    entry: HistoryEntry, holds: Mapping[tuple[str, str, str], Hold]
) -> dict[str, Any]:
    return {
        "detected_at": _iso(entry.detected_at),
        "source": entry.source,
        "job_id": entry.job_id,
        "kind": entry.kind,
        "previous_state": entry.previous_state,
        "state": entry.state,
        "reason": entry.reason,
        "note": entry.note,
        "details": dict(entry.details),
        "alerts": [
            {
                "rule": a.rule,
                "channel": a.channel,
                "status": str(a.status),
                "attempts": a.attempts,
                "sent_at": _iso(a.sent_at),
                "held": _hold_json(holds.get((entry.event_key, a.rule, a.channel)))
                if a.status is OutboxStatus.PENDING
                else None,
                "last_error": a.last_error,
            }
            for a in entry.alerts
        ],
    }


def cmd_health(args: argparse.Namespace) -> int:
    """Healthy when every configured source polled successfully within 3 of its intervals.

    Asks the daemon's /readyz when it serves one (its answer is the same rule, from memory);
    otherwise, or when it does not answer, reads the store, without the daemon's lock.
    """
    # No URL validation here: it imports apprise (seconds of CPU at --cpus 0.1), and the
    # daemon being checked validated its URLs when it loaded this config.
    config = _load(args, validate_urls=False)
    if config.http_listen:
        verdict = _health_over_http(config.http_listen)
        if verdict is not None:
            return _report_health(*verdict, as_json=args.json, via="http")
    return _report_health(*_health_from_store(config), as_json=args.json, via="store")


def _report_health(ok: bool, line: str, *, as_json: bool = False, via: str = "store") -> int:
    if as_json:
        _print_json({"healthy": ok, "message": line, "via": via})
        return EX_OK if ok else EX_FAILURE
    if ok:
        print(line)
        return EX_OK
    print(f"metastudio-watcher: {line}", file=sys.stderr)
    return EX_FAILURE


def _health_over_http(listen: str) -> tuple[bool, str] | None:
    """The daemon's own readiness, or None when it cannot be asked (then the store decides)."""
    # Here, not at import: every other command (`once` from cron first) goes without them.
    import http.client
    import urllib.error
    import urllib.request

    try:
        host, port = parse_listen(listen)
    except ValueError:
        return None
    if port == 0:
        return None  # a kernel-chosen port cannot be known from here
    if host in ("", "0.0.0.0"):  # noqa: S104 - a wildcard bind is reached on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/readyz"
    # No proxies: an http_proxy variable must not send a loopback probe elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=HEALTH_HTTP_TIMEOUT) as response:
            if response.status == 200:
                return True, f"ok: every source polled successfully lately (daemon at {url})"
            return None
    except urllib.error.HTTPError as err:
        with err:
            if err.code != 503:
                return None
            try:
                answer = json.loads(err.read())
                stale, reason = answer.get("stale", []), answer.get("reason")
            except (ValueError, AttributeError, OSError):
                return None
        if reason:
            return False, f"unhealthy: {_clean(str(reason))} (daemon at {url})"
        names = ", ".join(_clean(str(name)) for name in stale) or "unknown"
        return False, f"unhealthy: no successful poll lately from: {names} (daemon at {url})"
    except (OSError, http.client.HTTPException):  # refused, timed out, not HTTP at all
        return None


def _health_from_store(config: Config) -> tuple[bool, str]:
    now = datetime.now(UTC)
    last_ok: dict[str, datetime | None] = {}
    if config.storage == ":memory:" or os.path.exists(config.storage):
        with Store.open(config.storage) as store:
            last_ok = {s.name: s.last_ok_at for s in store.source_status()}
    intervals = {s.name: s.poll_interval for s in config.sources}
    verdict = readiness(last_ok, intervals, now, factor=STALE_AFTER_INTERVALS)
    if verdict.ready:
        return True, f"ok: {len(intervals)} source(s) polled successfully lately"
    parts = []
    for name in verdict.stale:
        when = last_ok.get(name)
        limit = _interval(intervals[name] * STALE_AFTER_INTERVALS)
        if when is None:
            parts.append(f"{name} (never polled successfully)")
        else:
            parts.append(f"{name} (last ok {_ago(when, now)}, limit {limit})")
    return False, f"unhealthy: stale source(s): {', '.join(parts)}"


def cmd_test_notify(args: argparse.Namespace) -> int:
    config = _load(args)
    names = list(config.channels)
    if args.channel is not None:
        if args.channel not in config.channels:
            print(
                f"metastudio-watcher: no channel {args.channel!r} in {args.config} "
                f"(channels: {', '.join(names) or 'none'})",
                file=sys.stderr,
            )
            return EX_USAGE
        names = [args.channel]
    if not names:
        print(f"metastudio-watcher: {args.config} defines no channels", file=sys.stderr)
        return EX_FAILURE
    root: Root = args.root
    notifier = root.notifier(config, names)
    body = (
        f"A test message from metastudio-watcher on {socket.gethostname()} "
        f"(config {os.path.abspath(args.config)}). Nothing happened; no action needed."
    )

    async def send_all() -> list[tuple[str, bool, str | None]]:
        results = await asyncio.gather(
            *(notifier.send(n, TEST_TITLE, body, NotifyType.INFO, BodyFormat.TEXT) for n in names)
        )
        return [(n, r.ok, r.error) for n, r in zip(names, results, strict=True)]

    try:
        outcomes = asyncio.run(send_all())
        notifier_masked = {name: notifier.masked_urls(name) for name in names}
        masked = {name: ", ".join(urls) for name, urls in notifier_masked.items()}
    finally:
        notifier.close()
    failed = sum(1 for _, ok, _ in outcomes if not ok)
    if args.json:
        _print_json(
            [
                {
                    "channel": name,
                    "ok": ok,
                    "urls": list(notifier_masked[name]),
                    "error": None if ok else root.redactor.redact(error or "delivery failed"),
                }
                for name, ok, error in outcomes
            ]
        )
        return EX_FAILURE if failed else EX_OK
    for name, ok, error in outcomes:
        if ok:
            print(f"ok      {name}: {masked[name]}")
        else:
            reason = root.redactor.redact(error or "delivery failed")
            print(f"FAILED  {name}: {masked[name]}: {reason}")
    if failed:
        print(f"metastudio-watcher: {failed} of {len(names)} channel(s) failed", file=sys.stderr)
        return EX_FAILURE
    return EX_OK


# --- output helpers ------------------------------------------------------------------------


def _interval(delta: timedelta) -> str:
    """`1m`, `90s`: short, and exact (format_duration rounds 90s down to 1m)."""
    text = format_duration(delta)
    try:
        if parse_duration(text) == delta:
            return text
    except ValueError:
        pass
    seconds = delta.total_seconds()
    return f"{seconds:g}s"


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat()


def _minutes(when: datetime | None) -> str:
    return "-" if when is None else when.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "never"
    delta = now - when
    if delta < timedelta(seconds=1):
        return "just now"
    return f"{format_duration(delta)} ago"


def _until(when: datetime, now: datetime) -> str:
    delta = when - now
    return "now" if delta < timedelta(seconds=1) else f"in {format_duration(delta)}"


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _clean(text: str) -> str:
    """API and store text for a terminal: no control characters (no escapes, no line breaks)."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _width(text: str) -> int:
    """Terminal columns `text` takes: CJK voice names are two columns per character."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    cleaned = [[_clean(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(_width(row[i]) for row in cleaned) for i in range(len(headers))]
    for row in cleaned:
        cells = [
            cell + " " * (width - _width(cell)) for cell, width in zip(row, widths, strict=True)
        ]
        print("  ".join(cells).rstrip())


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# --- silences ------------------------------------------------------------------------------


def cmd_silence(args: argparse.Namespace) -> int:
    config = _load(args)
    now = datetime.now(UTC)
    if args.action == "add":
        matchers = [_matcher(text) for text in args.match or []]
        if not matchers:
            print("metastudio-watcher: silence add needs --match FIELD=VALUE", file=sys.stderr)
            return EX_USAGE
        try:
            length = parse_duration(args.duration)
        except ValueError as err:
            print(f"metastudio-watcher: --for: {err}", file=sys.stderr)
            return EX_USAGE
        # Adding creates the state file if needed: a silence set up before the first run counts.
        with Store.open(config.storage) as store:
            silence = store.add_silence(
                matchers, starts_at=now, ends_at=now + length, comment=args.comment, now=now
            )
        if args.json:
            _print_json(
                {
                    "id": silence.id,
                    "matchers": [f"{k}={v}" for k, v in silence.matchers],
                    "starts_at": silence.starts_at.isoformat(),
                    "ends_at": silence.ends_at.isoformat(),
                    "comment": silence.comment,
                }
            )
            return EX_OK
        print(f"silence {silence.id} added until {silence.ends_at:%Y-%m-%d %H:%M} UTC")
        return EX_OK
    if args.action == "expire":
        if args.id is None:
            print("metastudio-watcher: silence expire needs an ID", file=sys.stderr)
            return EX_USAGE
        with Store.open(config.storage) as store:
            expired = store.expire_silence(args.id, now)
        if not expired:
            print(f"metastudio-watcher: no active silence with id {args.id}", file=sys.stderr)
            return EX_FAILURE
        if args.json:
            _print_json({"id": args.id, "expired": True})
        else:
            print(f"silence {args.id} expired")
        return EX_OK
    with _open_reader(config) as store:
        silences = store.list_silences(active_at=None if args.all else now)
    rows: list[dict[str, Any]] = [
        {
            "id": s.id,
            "matchers": [f"{k}={v}" for k, v in s.matchers],
            "starts_at": s.starts_at.isoformat(),
            "ends_at": s.ends_at.isoformat(),
            "active": s.starts_at <= now < s.ends_at,
            "comment": s.comment,
        }
        for s in silences
    ]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EX_OK
    if not rows:
        print("no silences" + ("" if args.all else " active (--all shows expired ones)"))
        return EX_OK
    _print_table(
        ["ID", "MATCHERS", "ENDS (UTC)", "ACTIVE", "COMMENT"],
        [
            [
                str(r["id"]),
                " ".join(r["matchers"]),
                str(r["ends_at"])[:16].replace("T", " "),
                "yes" if r["active"] else "no",
                str(r["comment"]),
            ]
            for r in rows
        ],
    )
    return EX_OK


def _matcher(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise UsageError(f"--match expects FIELD=VALUE (got {text!r})")
    if name not in SILENCE_FIELDS:
        raise UsageError(
            f"--match: unknown field {name!r}; expected one of: {', '.join(SILENCE_FIELDS)}"
        )
    if name == "state":
        _known_state(value, "--match state")
    return name, value


def _known_state(value: str, option: str, *, globs: bool = True) -> str:
    """A state name (or a glob matching at least one), else a usage error with a suggestion:
    `AUDIT_FAIL` silently matching nothing would hide a typo until the alert storm."""
    states = sorted(KNOWN_STATES)
    if globs and any(char in value for char in "*?["):
        if any(fnmatch.fnmatchcase(state, value) for state in states):
            return value
        raise UsageError(f"{option}: {value!r} matches no known state; known: {', '.join(states)}")
    if value in KNOWN_STATES:
        return value
    import difflib  # only a mistyped state needs it

    close = difflib.get_close_matches(value.upper(), states, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(states)}"
    raise UsageError(f"{option}: unknown state {value!r}{hint}")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check": cmd_check,
    "once": cmd_once,
    "run": cmd_run,
    "demo": cmd_demo,
    "outbox": cmd_outbox,
    "route": cmd_route,
    "alerts": cmd_alerts,
    "status": cmd_status,
    "silence": cmd_silence,
    "jobs": cmd_jobs,
    "history": cmd_history,
    "health": cmd_health,
    "test-notify": cmd_test_notify,
}
