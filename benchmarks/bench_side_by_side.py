"""`once` side by side with a naive SDK poller and a minimal aiohttp loop, per API behaviour.

Run by `make bench`; writes benchmarks/RESULTS.md. Not a test: numbers depend on the machine.

Each tool is a whole process (start-up, imports and, for the watcher, the store load
included), measured by the kernel (`wait4` rusage: user+system CPU, peak RSS) and by wall
clock, against one simulator in its own process. Each round first changes 0.1 % of the jobs,
then runs every tool once, in a rotating order; the table gives medians over the rounds and
the median of the per-round ratios. The daemon's cycle is measured in a warm process by
bench_polling.py (one idle cycle after the baseline, behaviour full).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
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


def watcher_once(config: str) -> list[str]:
    return [sys.executable, "-m", "watcher", "once", "-c", config, "--log-level", "warning"]


def bench_size(n: int, rounds: int, change: float) -> dict[str, Any]:
    sim = bench_polling.start_simulator(n, 0.01)
    url = sim.url
    results: dict[str, Any] = {"jobs": n, "behaviours": {}}
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            sdk = [sys.executable, str(HERE / "sdk_poller.py"), "--endpoint", url]
            sdk += ["--project-id", PROJECT, "--state-file", str(tmp / "sdk.json")]
            minimal = [sys.executable, str(HERE / "minimal_loop.py"), "--endpoint", url]
            minimal += ["--project-id", PROJECT]
            for behaviour in BEHAVIOURS:
                post(f"{url}/_sim/config", {"api_behaviour": behaviour})
                full_cfg = config_file(tmp, url, f"full-{behaviour}", "0")
                inc_cfg = config_file(tmp, url, f"inc-{behaviour}", "1h")
                baseline = measure(watcher_once(full_cfg))
                measure(watcher_once(inc_cfg))  # its own baseline
                measure(sdk)  # the SDK poller's first run writes its state file
                tools = {
                    "sdk": sdk,
                    "minimal": minimal,
                    "watcher_full": watcher_once(full_cfg),
                    "watcher_once": watcher_once(inc_cfg),
                }
                runs: dict[str, list[Run]] = {name: [] for name in tools}
                requests: list[int] = []
                for r in range(rounds):
                    post(
                        f"{url}/_bench/churn", {"advance": 0, "changes": max(1, round(n * change))}
                    )
                    names = list(tools)
                    names = names[r % len(names) :] + names[: r % len(names)]
                    for name in names:
                        before = stats(url)["requests"]
                        runs[name].append(measure(tools[name]))
                        if name == "watcher_once":
                            requests.append(stats(url)["requests"] - before)
                results["behaviours"][behaviour] = {
                    "baseline": baseline,
                    "runs": runs,
                    "once_requests": requests,
                }
                print(f"{n} {behaviour}: done", flush=True)
            post(f"{url}/_sim/config", {"api_behaviour": "full"})
            cycle = bench_polling.run_mode(url, "incremental", rounds, 0, 0)
            results["idle_cycle_cpu"] = [row["cpu"] for row in cycle["cycles"]]
            results["idle_cycle_requests"] = [row["requests"] for row in cycle["cycles"]]
    finally:
        sim.stop()
    return results


def med(values: list[float]) -> float:
    return statistics.median(values)


def ratio(runs: dict[str, list[Run]], a: str, b: str, what: str) -> float:
    """Median over rounds of the per-round ratio a/b."""
    return med([getattr(x, what) / getattr(y, what) for x, y in zip(runs[a], runs[b], strict=True)])


def report(results: list[dict[str, Any]], rounds: int, command: str) -> str:
    lines = [
        "# Benchmark: the watcher's `once` side by side with a naive SDK poller and a minimal loop",
        "",
        "Written by `benchmarks/bench_side_by_side.py` (`make bench`); do not edit by hand.",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {bench_polling.machine()}",
        f"- rounds: {rounds} per size and behaviour; 1 % of jobs active, 0.1 % changed per round",
        "",
        "Tools, each a whole process against the same simulator (its own process):",
        "`sdk` = benchmarks/sdk_poller.py (huaweicloudsdkmetastudio, pages one after the",
        "other, states compared with a JSON file); `minimal` = benchmarks/minimal_loop.py",
        "(aiohttp, signs, fetches 4 at a time, json.loads, nothing else); `watcher full` =",
        "`once` with `full_scan_every: 0` (a steady full scan: store load, diff, commit included);",
        "`watcher once` = `once` with the default incremental polling after the round's changes.",
        "CPU is user+system from `wait4`; RSS is the peak. Ratios are medians of per-round ratios.",
        "",
    ]
    for res in results:
        n = res["jobs"]
        lines += [f"## {n:,} jobs", ""]
        lines += [
            "| behaviour | tool | wall (median) | CPU (median) | peak RSS | requests |",
            "|---|---|---|---|---|---|",
        ]
        for behaviour, b in res["behaviours"].items():
            runs = b["runs"]
            for name in ("sdk", "minimal", "watcher_full", "watcher_once"):
                rs = runs[name]
                reqs = med(b["once_requests"]) if name == "watcher_once" else "-"
                lines.append(
                    f"| {behaviour} | {name.replace('_', ' ')} | {med([r.wall for r in rs]):.2f} s "
                    f"| {med([r.cpu for r in rs]):.2f} s | {max(r.rss_mb for r in rs):.0f} MB "
                    f"| {reqs} |"
                )
            base = b["baseline"]
            lines.append(
                f"| {behaviour} | watcher first baseline | {base.wall:.2f} s | {base.cpu:.2f} s "
                f"| {base.rss_mb:.0f} MB | - |"
            )
        lines += ["", "Ratios (median of per-round ratios; target in brackets):", ""]
        lines += [
            "| behaviour | full/sdk wall (≤ 0.33) | full/sdk CPU (≤ 0.33) "
            "| full/minimal CPU (≤ 1.5) | once/sdk wall | once/sdk CPU "
            "| RSS per job, full (≤ 0.5 KB) | baseline/full CPU (≤ 2) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for behaviour, b in res["behaviours"].items():
            runs = b["runs"]
            rss_kb = max(r.rss_mb for r in runs["watcher_full"]) * 1024 / n
            base_ratio = b["baseline"].cpu / med([r.cpu for r in runs["watcher_full"]])
            lines.append(
                f"| {behaviour} | {ratio(runs, 'watcher_full', 'sdk', 'wall'):.2f} "
                f"| {ratio(runs, 'watcher_full', 'sdk', 'cpu'):.2f} "
                f"| {ratio(runs, 'watcher_full', 'minimal', 'cpu'):.2f} "
                f"| {ratio(runs, 'watcher_once', 'sdk', 'wall'):.2f} "
                f"| {ratio(runs, 'watcher_once', 'sdk', 'cpu'):.2f} "
                f"| {rss_kb:.2f} KB | {base_ratio:.2f} |"
            )
        cpu = res["idle_cycle_cpu"]
        lines += [
            "",
            f"Daemon cycle with nothing changed (behaviour full, warm process, {len(cpu)} "
            f"cycles): median {med(cpu) * 1000:.0f} ms CPU, "
            f"{med(res['idle_cycle_requests']):.0f} request(s) (target at 1M jobs: ≤ 50 ms).",
            "",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--change", type=float, default=0.001)
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    command = "python benchmarks/bench_side_by_side.py " + " ".join(sys.argv[1:])
    results = [bench_size(int(s), args.rounds, args.change) for s in args.sizes.split(",")]
    text = report(results, args.rounds, command.strip())
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
