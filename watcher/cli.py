"""Command line: argument parsing, exit codes, and the one-line error a user sees.

Exit codes: 0 ok, 1 runtime failure, 2 usage error, 78 config error (EX_CONFIG, so systemd's
RestartPreventExitStatus=78 stops a restart loop on a broken config).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from watcher import __version__
from watcher.config import config_warnings, describe_credentials, load_config
from watcher.daemon import Watcher, serve, session_timeout
from watcher.engine.rules import match
from watcher.engine.templates import check_rule_templates, render
from watcher.errors import ConfigError, WatcherError
from watcher.logs import REDACTOR, configure
from watcher.model import Config, Event, EventKind, Job, OutboxStatus
from watcher.notify import Notifier, check_url, mask_url
from watcher.store import Store

EX_OK, EX_FAILURE, EX_USAGE, EX_CONFIG = 0, 1, 2, 78
DEFAULT_CONFIG = "config.yaml"

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metastudio-watcher",
        description="Watch Huawei Cloud MetaStudio voice-training jobs and alert on changes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        default=None,
        help="default: console on a terminal, JSON lines otherwise",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="YAML config file")
        return p

    with_config(sub.add_parser("run", help="run the daemon until SIGTERM/SIGINT"))
    with_config(sub.add_parser("once", help="one poll-and-deliver cycle, then exit"))
    with_config(sub.add_parser("check", help="validate a config without touching the network"))
    demo = sub.add_parser("demo", help="run against the built-in simulator (no cloud account)")
    demo.add_argument("--jobs", type=int, default=30, help="jobs the simulator starts with")
    demo.add_argument("--step-every", type=float, default=2.0, help="simulator step, seconds")
    demo.add_argument("--poll-interval", default="5s", help="daemon poll interval")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    outbox = with_config(sub.add_parser("outbox", help="list pending and dead alerts"))
    outbox.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    outbox.add_argument("id", nargs="?", type=int, help="with retry: one dead alert's id")
    outbox.add_argument("--all", action="store_true", help="with retry: every dead alert")
    outbox.add_argument("--json", action="store_true")
    rt = with_config(sub.add_parser("route", help="which rules and channels an event reaches"))
    rt.add_argument("--state", required=True)
    rt.add_argument("--from", dest="from_state")
    rt.add_argument("--event", default="transition", choices=[k.value for k in EventKind])
    rt.add_argument("--job-type")
    rt.add_argument("--voice-name")
    rt.add_argument("--batch-name")
    rt.add_argument("--source", default="sample-source")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(level=args.log_level, fmt=args.log_format)
    command: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
    try:
        return command(args)
    except WatcherError as err:
        print(f"metastudio-watcher: {REDACTOR.redact(err.message)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return EX_OK
    except Exception as err:  # a bug: say so in one line unless --debug
        if args.debug:
            raise
        print(
            f"metastudio-watcher: internal error ({type(err).__name__}); "
            "run again with --debug for the traceback",
            file=sys.stderr,
        )
        return EX_FAILURE


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config, validate_url=check_url)
    REDACTOR.update(config.secrets)
    return config


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    problems = template_problems(config)
    for warning in config_warnings(args.config):
        print(f"warning: {warning}")
    if problems:
        for problem in problems:
            print(problem.message, file=sys.stderr)
        return EX_CONFIG
    print(f"{args.config}: ok")
    print(f"  sources: {len(config.sources)}")
    for source in config.sources:
        print(f"    {source.name}: {source.endpoint} every {source.poll_interval}")
    for line in describe_credentials(config):
        print(f"  {line}")
    print(f"  channels: {len(config.channels)}")
    for name, urls in config.channels.items():
        print(f"    {name}: {', '.join(mask_url(u.reveal()) for u in urls)}")
    print(f"  rules: {len(config.rules)} ({', '.join(r.name for r in config.rules)})")
    print(f"  storage: {config.storage}")
    return EX_OK


def template_problems(config: Config) -> list[ConfigError]:
    now = datetime.now(UTC)
    out = []
    for index, rule in enumerate(config.rules):
        for name, message in check_rule_templates(rule, now):
            key = f"rules[{index}].{name}"
            out.append(ConfigError(message, file=config.path, line=config.lines.get(key), key=key))
    return out


def _open_for_daemon(config: Config) -> tuple[Store, Notifier]:
    problems = template_problems(config)
    if problems:
        raise problems[0]
    store = Store.open(config.storage, exclusive=True)
    try:
        notifier = _notifier(config)
    except BaseException:
        store.close()
        raise
    return store, notifier


def cmd_once(args: argparse.Namespace) -> int:
    config = _load(args)
    store, notifier = _open_for_daemon(config)

    async def go() -> int:
        async with aiohttp.ClientSession(timeout=session_timeout(config)) as session:
            watcher = Watcher(config, store, notifier, session)
            outcomes = await watcher.once()
        failures = [o for o in outcomes if not o.ok]
        for outcome in failures:
            print(f"metastudio-watcher: source {outcome.source}: {outcome.error}", file=sys.stderr)
        return EX_FAILURE if failures else EX_OK

    try:
        return asyncio.run(go())
    finally:
        notifier.close()
        store.close()


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    store, notifier = _open_for_daemon(config)
    notifier.close()  # serve() builds its own, and a new one on every reload

    def reload_config(path: str) -> Config:
        new = load_config(path, validate_url=check_url)
        problems = template_problems(new)
        if problems:
            raise problems[0]
        REDACTOR.update(config.secrets | new.secrets)
        return new

    try:
        return asyncio.run(
            serve(
                args.config,
                config,
                store,
                load_config=reload_config,
                notifier_factory=_notifier,
            )
        )
    finally:
        store.close()


def _notifier(config: Config) -> Notifier:
    return Notifier(config.channels, send_timeout=config.delivery.send_timeout.total_seconds())


def cmd_demo(args: argparse.Namespace) -> int:
    from watcher.demo import run_demo  # the simulator is only imported when asked for

    return asyncio.run(
        run_demo(
            jobs=args.jobs,
            step_every=args.step_every,
            poll_interval=args.poll_interval,
            seed=args.seed,
            duration=args.duration,
        )
    )


def cmd_outbox(args: argparse.Namespace) -> int:
    config = _load(args)
    with Store.open(config.storage) as store:
        if args.action == "retry":
            if args.id is None and not args.all:
                print("metastudio-watcher: outbox retry needs an ID or --all", file=sys.stderr)
                return EX_USAGE
            count = store.retry_dead(None if args.all else args.id, datetime.now(UTC))
            print(f"{count} alert(s) queued again")
            return EX_OK
        items = store.list_outbox([OutboxStatus.PENDING, OutboxStatus.DEAD])
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
            "last_error": i.last_error,
            "title": i.alert.title,
        }
        for i in items
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EX_OK
    if not rows:
        print("outbox empty: nothing pending, nothing dead")
        return EX_OK
    for row in rows:
        print(
            f"{row['id']:>6} {row['status']:<8} {row['channel']:<12} {row['attempts']:>3}x "
            f"{row['title']}" + (f"  ({row['last_error']})" if row["last_error"] else "")
        )
    return EX_OK


def cmd_route(args: argparse.Namespace) -> int:
    config = _load(args)
    now = datetime.now(UTC)
    job = Job(
        job_id="route-test-job",
        state=args.state,
        reject_times=1,
        lastupdate_time=now,
        voice_name=args.voice_name,
        job_type=args.job_type,
        batch_name=args.batch_name,
    )
    event = Event(
        EventKind(args.event),
        args.source,
        now,
        f"job route-test-job went from {args.from_state} to {args.state}",
        job=job,
        previous_state=args.from_state,
    )
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check": cmd_check,
    "once": cmd_once,
    "run": cmd_run,
    "demo": cmd_demo,
    "outbox": cmd_outbox,
    "route": cmd_route,
}
