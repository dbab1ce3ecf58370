"""CPU cost of `metastudio-watcher health`, the container's HEALTHCHECK (target: <= 0.3 s).

Runs the real command N times (default 20) against a config with channels (so an apprise
import would show) and prints the median and worst user+system CPU per run.
Usage: .venv/bin/python benchmarks/bench_health.py [N]
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = """\
sources:
  - name: prod
    region: cn-north-4
    project_id: p1
    ak: AKAKAKAKAKAKAKAKAKAK
    sk: SKSKSKSKSKSKSKSKSKSKSKSKSKSKSK
channels:
  ops: json://127.0.0.1:9/hook
  mail: mailto://user:pass@smtp.example.com?to=a@example.com
rules:
  - name: all
    notify: [ops, mail]
storage: {storage}
"""


def cpu_of_one_run(command: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, capture_output=True, check=False)  # noqa: S603 - our own CLI
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    exe = str(Path(sys.executable).with_name("metastudio-watcher"))
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(CONFIG.format(storage=Path(tmp) / "state.db"))
        command = [exe, "health", "-c", str(config)]
        costs = [cpu_of_one_run(command) for _ in range(runs)]
    print(f"health: {runs} runs on {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    print(f"  CPU per run: median {statistics.median(costs):.3f} s, worst {max(costs):.3f} s")
    return 0 if statistics.median(costs) <= 0.3 else 1


if __name__ == "__main__":
    sys.exit(main())
