"""`once` side by side with a naive SDK poller and a minimal aiohttp loop, per API behaviour.

Run by `make bench` (10k and 100k jobs) and `make bench-1m`; writes benchmarks/RESULTS.md,
keeping the sections of sizes it did not run. Not a test: numbers depend on the machine.

Each tool is a whole process (start-up, imports and, for the watcher, the store load
included), measured by the kernel (`wait4` rusage: user+system CPU, peak RSS) and by wall
clock, against one simulator in its own process. Each round first changes 0.1 % of the jobs,
then runs every tool once, in a rotating order; the table gives medians over the rounds and
the median of the per-round ratios. The daemon's cycle is measured in a warm daemon process
by bench_polling.run_mode: after its baseline, `--cycles` whole `Watcher.poll` cycles with
nothing changed, then as many with 0.1 % of the jobs changed (behaviour full by default).
A partial run (fewer behaviours, rounds or cycles) prints its tables and leaves RESULTS.md
alone unless `--output` says where to write.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import bench_polling  # noqa: E402

AK, SK, PROJECT = bench_polling.AK, bench_polling.SK, bench_polling.PROJECT
BEHAVIOURS = ("full", "documented", "plain")
CONFIG = """
sources:
  - name: bench
    endpoint: {url}
    project_id: {project}
    ak: ${{CLOUD_SDK_AK}}
    sk: ${{CLOUD_SDK_SK}}
    poll_interval: 60s
    request_timeout: 30s
    full_scan_every: {full_scan_every}
    max_requests_per_second: 1000
    page_concurrency: 4
channels:
  hook: ["json://{hook}/_bench/hook?method=POST"]
rules:
  - name: failures
    on: [FAILED]
    notify: [hook]
storage: {storage}
"""


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    rss_mb: float
    out: str


def measure(args: list[str]) -> Run:
    """One process, to completion: wall time, user+system CPU and peak RSS (kernel's count)."""
    env = {**os.environ, "CLOUD_SDK_AK": AK, "CLOUD_SDK_SK": SK, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen(  # noqa: S603 (our own tools)
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{args[1:3]} failed ({proc.returncode}):\n{err[-2000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out)


def post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(  # noqa: S310 (loopback)
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req) as resp:  # noqa: S310
        return json.loads(resp.read())


def stats(url: str) -> Any:
    with urllib.request.urlopen(f"{url}/_sim/stats") as resp:  # noqa: S310
        return json.loads(resp.read())


def config_file(tmp: Path, url: str, name: str, full_scan_every: str) -> str:
    path = tmp / f"{name}.yaml"
    path.write_text(
        CONFIG.format(
            url=url,
            project=PROJECT,
            hook=url.removeprefix("http://"),
            storage=tmp / f"{name}.db",
            full_scan_every=full_scan_every,
        )
    )
    path.chmod(0o600)
    return str(path)


def empty_store(path: Path) -> None:
    """The store file and its WAL gone: the next `once` is a first baseline."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def watcher_once(config: str) -> list[str]:
    return [sys.executable, "-m", "watcher", "once", "-c", config, "--log-level", "warning"]


def bench_size(
    n: int,
    rounds: int,
    change: float,
    behaviours: list[str],
    cycles: int,
    cycle_behaviours: list[str],
    order: str = "uniform",
) -> dict[str, Any]:
    began = time.perf_counter()
    sim = bench_polling.start_simulator(n, 0.01)
    url = sim.url
    print(f"{n} jobs: simulator populated in {sim.started:.1f} s", flush=True)
    results: dict[str, Any] = {
        "jobs": n,
        "rounds": rounds,
        "behaviours": {},
        "cycles": {},
        "populate_s": sim.started,
        "order": order,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            sdk = [sys.executable, str(HERE / "sdk_poller.py"), "--endpoint", url]
            sdk += ["--project-id", PROJECT, "--state-file", str(tmp / "sdk.json")]
            minimal = [sys.executable, str(HERE / "minimal_loop.py"), "--endpoint", url]
            minimal += ["--project-id", PROJECT]
            for behaviour in behaviours:
                post(f"{url}/_sim/config", {"api_behaviour": behaviour})
                full_cfg = config_file(tmp, url, f"full-{behaviour}", "0")
                inc_cfg = config_file(tmp, url, f"inc-{behaviour}", "1h")
                base_cfg = config_file(tmp, url, f"base-{behaviour}", "0")
                progress(n, behaviour, "watcher full's baseline", measure(watcher_once(full_cfg)))
                progress(n, behaviour, "watcher once's baseline", measure(watcher_once(inc_cfg)))
                if not (tmp / "sdk.json").exists():  # its first run writes its state file
                    progress(n, behaviour, "sdk first run", measure(sdk))
                tools = {
                    "sdk": sdk,
                    "minimal": minimal,
                    "watcher_full": watcher_once(full_cfg),
                    "watcher_once": watcher_once(inc_cfg),
                    # A first baseline each round, on a store made empty just before: one
                    # run a behaviour varied by ±20 %, too much for a ratio against medians.
                    "watcher_baseline": watcher_once(base_cfg),
                }
                runs: dict[str, list[Run]] = {name: [] for name in tools}
                requests: list[int] = []
                details: list[int] = []
                active: list[int] = []
                for r in range(rounds):
                    churned = post(
                        f"{url}/_bench/churn",
                        {"advance": 0, "changes": max(1, round(n * change)), "order": order},
                    )
                    active.append(int(churned["active"]))
                    names = list(tools)
                    names = names[r % len(names) :] + names[: r % len(names)]
                    for name in names:
                        if name == "watcher_baseline":
                            empty_store(tmp / f"base-{behaviour}.db")
                        before = stats(url)["requests_by_kind"]
                        runs[name].append(measure(tools[name]))
                        progress(n, behaviour, f"round {r + 1} {name}", runs[name][-1])
                        if name == "watcher_once":
                            after = stats(url)["requests_by_kind"]
                            polling, why = split_requests(before, after)
                            requests.append(polling)
                            details.append(why)
                            spent = {k: v - before.get(k, 0) for k, v in after.items()}
                            print(
                                f"  {active[-1]} in flight; requests by kind:",
                                {k: v for k, v in sorted(spent.items()) if v},
                                flush=True,
                            )
                results["behaviours"][behaviour] = {
                    "runs": runs,
                    "once_requests": requests,
                    "once_details": details,
                    "active": active,
                }
            for behaviour in cycle_behaviours:
                post(f"{url}/_sim/config", {"api_behaviour": behaviour})
                changes = max(1, round(n * change))
                cycle = bench_polling.run_mode(url, "incremental", cycles, changes, 0, cycles)
                results["cycles"][behaviour] = cycle
                print(
                    f"{n} {behaviour}: daemon cycles: idle median "
                    f"{med([c['cpu'] for c in cycle['idle_cycles']]) * 1000:.1f} ms CPU",
                    flush=True,
                )
            post(f"{url}/_sim/config", {"api_behaviour": "full"})
    finally:
        results["simulator_rss_mb"] = sim.peak_rss_mb()
        sim.stop()
    results["elapsed_s"] = time.perf_counter() - began
    print(f"{n} jobs: done in {results['elapsed_s'] / 60:.1f} min", flush=True)
    return results


def split_requests(before: dict[str, int], after: dict[str, int]) -> tuple[int, int]:
    """What a run asked the simulator between two `requests_by_kind`: (polling, details).
    Polling is the list and the lookups by id, what issue 11's bounds count; details are
    the audit-result or op-logs call behind each failure's alert, which follow how many
    jobs failed, not how the region is polled."""
    polling = details = 0
    for kind, count in after.items():
        spent = count - before.get(kind, 0)
        if kind.startswith("list") or kind == "show":
            polling += spent
        else:
            details += spent
    return polling, details


def polling_bound(active: int) -> int:
    """Issue 11, point 5: a documented-behaviour cycle with 1 % in flight makes at most
    ⌈active/100⌉ + 3 requests."""
    return math.ceil(active / 100) + 3


def bound_line(polling: list[int], active: list[int]) -> str:
    """How the documented behaviour's polling requests stood against the point-5 bound, each
    round against its own number in flight."""
    within = sum(p <= polling_bound(a) for p, a in zip(polling, active, strict=True))
    bounds = sorted({polling_bound(a) for a in active})
    bound = f"{bounds[0]}" if len(bounds) == 1 else f"{bounds[0]}–{bounds[-1]}"
    verdict = "met" if within == len(polling) else "NOT met"
    return (
        f"Target, `watcher once` in behaviour documented (issue 11, point 5): polling "
        f"requests ≤ ⌈in flight/100⌉ + 3 = {bound}; measured {min(polling)}–{max(polling)} "
        f"(median {med(polling):.0f}), within it in {within} of {len(polling)} rounds: {verdict}."
    )


def progress(n: int, behaviour: str, what: str, run: Run) -> None:
    print(
        f"{n} {behaviour}: {what}: {run.wall:.2f} s wall, {run.cpu:.2f} s CPU, {run.rss_mb:.0f} MB",
        flush=True,
    )


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio(runs: dict[str, list[Run]], a: str, b: str, what: str) -> float:
    """Median over rounds of the per-round ratio a/b."""
    return med([getattr(x, what) / getattr(y, what) for x, y in zip(runs[a], runs[b], strict=True)])


# Issue 11, point 7: peak RSS of `once` in absolute form, where the issue gives one.
RSS_TARGET_MB = {100_000: 100, 1_000_000: 500}
CYCLE_TARGET_MS = 50.0  # a daemon cycle in (a) with nothing changed, at 1M jobs
# How a round picks the jobs it changes (bench_polling's churn `order`).
CHURN = {
    "uniform": "at random among those in flight",
    "oldest": "the oldest in flight first, as a training queue moves",
}
SECTION = re.compile(r"^## ([\d,]+) jobs\s*$")
PREAMBLE = """\
# Benchmark: the watcher's `once` side by side with a naive SDK poller and a minimal loop

Written by `benchmarks/bench_side_by_side.py` (`make bench`, `make bench-1m`); do not edit by
hand. A run rewrites the sections of the sizes it measured and keeps the others: each section
says when, how and on which machine it was measured.

Tools, each a whole process against the same simulator (its own process):
`sdk` = benchmarks/sdk_poller.py (huaweicloudsdkmetastudio, pages one after the
other, states compared with a JSON file); `minimal` = benchmarks/minimal_loop.py
(aiohttp, signs, fetches 4 at a time, json.loads, nothing else); `watcher full` =
`once` with `full_scan_every: 0` (a steady full scan: store load, diff, commit included);
`watcher once` = `once` with the default incremental polling after the round's changes.
`watcher first baseline` = `once` on an empty store (its own file, emptied before each run).
CPU is user+system from `wait4`; RSS is the peak. Ratios are medians of per-round ratios.
*API requests* of `watcher once`, as the simulator counted them: polling (the listings and
lookups by id) + details (the audit-result or op-logs call that says why a job failed, one
for each failure alerted, more when its log runs to several pages).
Each round first changes 0.1 % of the jobs (1 % are active), then runs every tool once, in a
rotating order. *Daemon cycle*: one `Watcher.poll` (fetch, decide, commit, report) in a warm
daemon process after its baseline, CPU by `process_time`; first the idle cycles (the clock
moves on 60 s, nothing changes), then as many with 0.1 % of the jobs changed before each.
*Longest loop stall*: the event loop's worst lateness on a 10 ms tick during the cycle, about
how long /healthz, /readyz or /metrics would have waited; the baseline's row is the
daemon's own first cycle.

Targets (issue 11, point 7): `watcher full` ≤ 1/3 of `sdk`'s wall time and CPU and ≤ 1.5×
`minimal`'s CPU at 100k; peak RSS ≤ 0.5 KB per job (≤ 100 MB at 100k, ≤ 500 MB at 1M); a
daemon cycle in behaviour full with nothing changed ≤ 50 ms CPU at 1M; first baseline ≤ 2× a
steady full scan at 100k. And point 5: `watcher once` in behaviour documented makes at most
⌈in flight/100⌉ + 3 polling requests (1 % of the jobs in flight).
"""


def report_size(res: dict[str, Any], command: str) -> str:
    """The section of one size, with how it was measured."""
    n = res["jobs"]
    lines = [
        f"## {n:,} jobs",
        "",
        f"- measured: {res['date']}, `{command}`, {res['elapsed_s'] / 60:.1f} min in all",
        f"- machine: {bench_polling.machine()}; load average {res['load']}",
        f"- rounds: {res['rounds']} per behaviour; simulator populated in "
        f"{res['populate_s']:.1f} s, its peak RSS {res['simulator_rss_mb']:.0f} MB; "
        f"the jobs each round changes: {CHURN[res.get('order', 'uniform')]}",
        "",
    ]
    if res["behaviours"]:
        lines += [
            "| behaviour | tool | wall (median) | CPU (median) | peak RSS | API requests |",
            "|---|---|---|---|---|---|",
        ]
    for behaviour, b in res["behaviours"].items():
        runs = b["runs"]
        for name in ("sdk", "minimal", "watcher_full", "watcher_once", "watcher_baseline"):
            rs = runs[name]
            reqs = "-"
            if name == "watcher_once":
                reqs = f"{med(b['once_requests']):.0f}"
                if b.get("once_details"):
                    reqs += f" + {med(b['once_details']):.0f} details"
            label = "watcher first baseline" if name == "watcher_baseline" else name
            lines.append(
                f"| {behaviour} | {label.replace('_', ' ')} | {med([r.wall for r in rs]):.2f} s "
                f"| {med([r.cpu for r in rs]):.2f} s | {max(r.rss_mb for r in rs):.0f} MB "
                f"| {reqs} |"
            )
    if res["behaviours"]:
        target = RSS_TARGET_MB.get(n)
        rss_head = f"≤ {target} MB" if target else "no absolute target at this size"
        lines += ["", "Ratios (median of per-round ratios; target in brackets):", ""]
        lines += [
            "| behaviour | full/sdk wall (≤ 0.33) | full/sdk CPU (≤ 0.33) "
            "| full/minimal CPU (≤ 1.5) | once/sdk wall | once/sdk CPU "
            f"| peak RSS full / once / first baseline ({rss_head}) "
            "| RSS per job, full / once / first baseline (≤ 0.5 KB) "
            "| baseline/full CPU (≤ 2) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for behaviour, b in res["behaviours"].items():
        runs = b["runs"]
        full_mb = max(r.rss_mb for r in runs["watcher_full"])
        once_mb = max(r.rss_mb for r in runs["watcher_once"])
        base_mb = max(r.rss_mb for r in runs["watcher_baseline"])  # a `once` on an empty store
        base_ratio = ratio(runs, "watcher_baseline", "watcher_full", "cpu")
        lines.append(
            f"| {behaviour} | {ratio(runs, 'watcher_full', 'sdk', 'wall'):.2f} "
            f"| {ratio(runs, 'watcher_full', 'sdk', 'cpu'):.2f} "
            f"| {ratio(runs, 'watcher_full', 'minimal', 'cpu'):.2f} "
            f"| {ratio(runs, 'watcher_once', 'sdk', 'wall'):.2f} "
            f"| {ratio(runs, 'watcher_once', 'sdk', 'cpu'):.2f} "
            f"| {full_mb:.0f} / {once_mb:.0f} / {base_mb:.0f} MB "
            f"| {full_mb * 1024 / n:.2f} / {once_mb * 1024 / n:.2f} / {base_mb * 1024 / n:.2f} KB "
            f"| {base_ratio:.2f} |"
        )
    if res["behaviours"] and n < 100_000:
        lines += ["", "(At this size the interpreter's own ~60 MB dominate the RSS per job.)"]
    documented = res["behaviours"].get("documented")
    if documented and documented.get("active"):
        lines += ["", bound_line(documented["once_requests"], documented["active"])]
    if res["cycles"]:
        lines += [
            "",
            "Daemon cycle (one whole `Watcher.poll` in a warm process; median, min–max over "
            "the cycles):",
            "",
            "| behaviour | cycle | cycles | CPU (median) | CPU min–max | wall (median) "
            "| requests (median) | events (median) | longest loop stall | daemon peak RSS |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for behaviour, cycle in res["cycles"].items():
        for label, rows in (
            ("nothing changed", cycle["idle_cycles"]),
            ("0.1 % changed", cycle["cycles"]),
        ):
            cpu = [float(row["cpu"]) * 1000 for row in rows]
            lines.append(
                f"| {behaviour} | {label} | {len(rows)} | {med(cpu):.1f} ms "
                f"| {min(cpu):.1f}–{max(cpu):.1f} ms "
                f"| {med([float(row['wall']) * 1000 for row in rows]):.1f} ms "
                f"| {med([row['requests'] for row in rows]):.0f} "
                f"| {med([row['events'] for row in rows]):.0f} "
                f"| {max(float(row.get('stall_ms', 0.0)) for row in rows):.0f} ms "
                f"| {cycle['rss_mb']:.0f} MB |"
            )
        if "stall_ms" in cycle.get("baseline", {}):
            base = cycle["baseline"]
            lines.append(
                f"| {behaviour} | its baseline | 1 | {float(base['cpu']) * 1000:.0f} ms | - "
                f"| {float(base['wall']) * 1000:.0f} ms | {base['requests']} | - "
                f"| {float(base['stall_ms']):.0f} ms | {cycle['rss_mb']:.0f} MB |"
            )
    if "full" in res["cycles"]:
        idle = med([float(row["cpu"]) * 1000 for row in res["cycles"]["full"]["idle_cycles"]])
        if n == 1_000_000:
            verdict = "met" if idle <= CYCLE_TARGET_MS else "NOT met"
            lines += [
                "",
                f"Target, daemon cycle in behaviour full with nothing changed at 1M jobs: "
                f"≤ {CYCLE_TARGET_MS:.0f} ms CPU; measured median {idle:.1f} ms: {verdict}.",
            ]
        else:
            lines += [
                "",
                f"(The ≤ {CYCLE_TARGET_MS:.0f} ms target is for 1M jobs; "
                f"here the idle median is {idle:.1f} ms.)",
            ]
    return "\n".join(lines) + "\n"


def kept_sections(old: str) -> dict[int, str]:
    """The sections of an earlier RESULTS.md by size; a section from before sections carried
    their own date gets the old file's date, command and machine lines."""
    header: list[str] = []
    sections: dict[int, list[str]] = {}
    current: list[str] = header
    for line in old.splitlines():
        if match := SECTION.match(line):
            current = sections.setdefault(int(match.group(1).replace(",", "")), [])
        current.append(line)
    provenance = [
        line
        for line in header
        if line.startswith(("- command:", "- date:", "- machine:", "- rounds:"))
    ]
    out = {}
    for n, body in sections.items():
        if not any(line.startswith("- measured:") for line in body) and provenance:
            body = [body[0], "", *provenance, *body[1:]]
        out[n] = "\n".join(body).rstrip() + "\n"
    return out


CYCLE_HEAD = "Daemon cycle (one whole"


def with_new_cycles(kept: str, res: dict[str, Any], command: str) -> str:
    """A kept section with only its daemon-cycle part measured again (`--cycles-only`): the
    `once` tables stay as measured then, and a line says when and how the cycles were."""
    fresh = report_size(res, command).splitlines()
    cycles = fresh[next(i for i, line in enumerate(fresh) if line.startswith(CYCLE_HEAD)) :]
    lines = kept.rstrip().splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith(CYCLE_HEAD)), len(lines))
    head = [line for line in lines[:end] if not line.startswith("- daemon cycle measured:")]
    at = max(i for i, line in enumerate(head) if line.startswith("- ")) + 1
    note = (
        f"- daemon cycle measured: {res['date']}, `{command}`, {res['elapsed_s'] / 60:.1f} min; "
        f"machine: {bench_polling.machine()}; load average {res['load']} (the `once` tables "
        "above are from the run measured before)"
    )
    body = [*head[:at], note, *head[at:]]
    while body and not body[-1].strip():
        body.pop()
    return "\n".join([*body, "", *cycles]) + "\n"


def report(results: list[dict[str, Any]], command: str, old: str = "") -> str:
    """The whole file: this run's sections and, for the sizes it did not run, the old ones."""
    sections = kept_sections(old)
    for res in results:
        n = res["jobs"]
        if not res["behaviours"] and n in sections:
            sections[n] = with_new_cycles(sections[n], res, command)
        else:
            sections[n] = report_size(res, command)
    return PREAMBLE + "".join("\n" + sections[n] for n in sorted(sections))


def complete(rounds: int, cycles: int, behaviours: list[str], cycle_bhv: list[str]) -> bool:
    """Whether a run is fit for RESULTS.md: every behaviour, ≥ 5 rounds and cycles, the
    daemon cycle in behaviour full."""
    return (
        set(behaviours) == set(BEHAVIOURS) and rounds >= 5 and cycles >= 5 and ("full" in cycle_bhv)
    )


def choices(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    picked = [v.strip() for v in value.split(",") if v.strip()]
    if unknown := [v for v in picked if v not in allowed]:
        raise SystemExit(f"{what}: unknown {', '.join(unknown)} (one of {', '.join(allowed)})")
    return picked


def loadavg() -> str:
    """The 1, 5 and 15 min load averages: other work on the machine shows in wall times."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--behaviours", default=",".join(BEHAVIOURS))
    parser.add_argument("--cycles", type=int, default=5, help="daemon cycles, each kind")
    parser.add_argument(
        "--cycle-behaviours", default="full", help="behaviours to measure the daemon cycle in"
    )
    parser.add_argument("--change", type=float, default=0.001)
    parser.add_argument(
        "--churn",
        choices=sorted(CHURN),
        default="uniform",
        help="which jobs a round changes; RESULTS.md is written only with the default",
    )
    parser.add_argument(
        "--cycles-only",
        action="store_true",
        help="measure only the daemon cycle (5 or more, behaviour full) and replace that part "
        "of the sizes' sections in RESULTS.md, keeping their `once` tables",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="file to write (sections of other sizes kept); default benchmarks/RESULTS.md, "
        "written only by a complete run (all behaviours, ≥ 5 rounds and cycles)",
    )
    args = parser.parse_args()
    behaviours = choices(args.behaviours, BEHAVIOURS, "--behaviours")
    cycle_bhv = choices(args.cycle_behaviours, BEHAVIOURS, "--cycle-behaviours")
    sizes = [int(s) for s in args.sizes.split(",")]
    output = args.output
    if args.cycles_only:
        behaviours = []
        if output is None and args.cycles >= 5 and "full" in cycle_bhv:
            output = str(HERE / "RESULTS.md")
    elif (
        output is None
        and args.churn == "uniform"
        and complete(args.rounds, args.cycles, behaviours, cycle_bhv)
    ):
        output = str(HERE / "RESULTS.md")
    command = " ".join(["python benchmarks/bench_side_by_side.py", *sys.argv[1:]])
    # Byte-compiled once, as any installed package is: with PYTHONDONTWRITEBYTECODE set (as
    # on the development machine) an editable checkout would otherwise recompile every
    # module in every `once` (~0.1 s each), which the SDK (site-packages) never pays.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "watcher")], check=True)  # noqa: S603
    results = []
    for n in sizes:
        before = loadavg()
        res = bench_size(
            n, args.rounds, args.change, behaviours, args.cycles, cycle_bhv, args.churn
        )
        results.append({**res, "load": f"{before} before, {loadavg()} after"})
    if output is None:
        print(report(results, command))
        print("a partial run (fewer behaviours, rounds or cycles): RESULTS.md not written")
        return
    path = Path(output)
    text = report(results, command, path.read_text() if path.exists() else "")
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
