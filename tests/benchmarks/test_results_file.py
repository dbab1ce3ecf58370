"""benchmarks/RESULTS.md as bench_side_by_side.py writes it: sections per size, merged.

No benchmark runs here: the report is built from given runs, so only the file's logic is tested.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_side_by_side as bench

OLD_FORMAT = """\
# Benchmark: an older file

- command: `python benchmarks/bench_side_by_side.py`
- date: 2026-12-01T22:25:46+00:00
- machine: 2 CPUs (Intel(R) Xeon(R) Processor), Python 3.11.7, Linux
- rounds: 5 per size and behaviour; 1 % of jobs active, 0.1 % changed per round

## 10,000 jobs

| behaviour | tool | wall (median) |
| full | sdk | 0.69 s |

## 100,000 jobs

| behaviour | tool | wall (median) |
| full | sdk | 5.69 s |
"""


def result(n: int, *, idle_cpu: float, date: str = "2026-12-02T01:00:00+00:00") -> dict[str, Any]:
    def runs(wall: float, cpu: float, rss: float) -> list[bench.Run]:
        return [bench.Run(wall, cpu, rss, ""), bench.Run(wall * 1.1, cpu * 1.1, rss, "")]

    cycle = {"cpu": idle_cpu, "wall": idle_cpu * 2, "requests": 1, "events": 0}
    return {
        "jobs": n,
        "rounds": 2,
        "date": date,
        "elapsed_s": 600.0,
        "load": "1.00 / 1.00 / 1.00 before, 1.00 / 1.00 / 1.00 after",
        "populate_s": 12.0,
        "simulator_rss_mb": 1100.0,
        "behaviours": {
            "full": {
                "runs": {
                    "sdk": runs(80.0, 50.0, 400.0),
                    "minimal": runs(25.0, 10.0, 1400.0),
                    "watcher_full": runs(60.0, 40.0, 1000.0),
                    "watcher_once": runs(30.0, 20.0, 480.0),
                    "watcher_baseline": [
                        bench.Run(90.0, 60.0, 700.0, ""),
                        bench.Run(99.0, 132.0, 650.0, ""),
                    ],
                },
                "once_requests": [2, 2],
            }
        },
        "cycles": {
            "full": {
                "idle_cycles": [cycle] * 5,
                "cycles": [{**cycle, "cpu": idle_cpu * 5, "events": 1000}] * 5,
                "rss_mb": 800.0,
            }
        },
    }


def test_a_run_replaces_its_sizes_and_keeps_the_others_with_their_date() -> None:
    text = bench.report([result(1_000_000, idle_cpu=0.04)], "cmd --sizes 1000000", OLD_FORMAT)
    sections = bench.kept_sections(text)
    assert sorted(sections) == [10_000, 100_000, 1_000_000]
    assert "- date: 2026-12-01T22:25:46+00:00" in sections[10_000]
    assert "| full | sdk | 5.69 s |" in sections[100_000]
    assert "- measured: 2026-12-02T01:00:00+00:00, `cmd --sizes 1000000`" in sections[1_000_000]
    rerun = bench.report([result(100_000, idle_cpu=0.01)], "cmd --sizes 100000", text)
    again = bench.kept_sections(rerun)
    assert again[1_000_000] == sections[1_000_000]
    assert again[10_000] == sections[10_000]
    assert "5.69 s" not in again[100_000]
    assert rerun.count("## 100,000 jobs") == 1


def test_the_1m_section_states_the_cycle_target_and_the_absolute_rss_target() -> None:
    met = bench.report_size(result(1_000_000, idle_cpu=0.04), "cmd")
    assert "measured median 40.0 ms: met." in met
    assert "peak RSS full / once / first baseline (≤ 500 MB)" in met
    # The first baseline is a `once` too: its peak is shown against the same target.
    assert "| 1000 / 480 / 700 MB | 1.02 / 0.49 / 0.72 KB |" in met
    # Its runs, one a round, by their medians; its ratio the median of the per-round ratios
    # (60/40 and 132/44), not the median of one over the median of the other (96/42).
    assert "| full | watcher first baseline | 94.50 s | 96.00 s | 700 MB | - |" in met
    assert met.count("| 2.25 |") == 1
    missed = bench.report_size(result(1_000_000, idle_cpu=0.8), "cmd")
    assert "measured median 800.0 ms: NOT met." in missed
    assert "(≤ 100 MB)" in bench.report_size(result(100_000, idle_cpu=0.01), "cmd")


@pytest.mark.parametrize(
    ("rounds", "cycles", "behaviours", "cycle_behaviours", "fit"),
    [
        (5, 5, ["full", "documented", "plain"], ["full"], True),
        (1, 5, ["full", "documented", "plain"], ["full"], False),
        (5, 3, ["full", "documented", "plain"], ["full"], False),
        (5, 5, ["documented"], ["full"], False),
        (5, 5, ["full", "documented", "plain"], ["plain"], False),
    ],
)
def test_only_a_complete_run_is_fit_for_results_md(
    rounds: int, cycles: int, behaviours: list[str], cycle_behaviours: list[str], fit: bool
) -> None:
    assert bench.complete(rounds, cycles, behaviours, cycle_behaviours) is fit


def test_a_cycles_only_run_replaces_the_daemon_cycle_and_keeps_the_once_tables() -> None:
    text = bench.report([result(1_000_000, idle_cpu=0.0624)], "cmd --sizes 1000000")
    cycles_only = {**result(1_000_000, idle_cpu=0.004, date="2026-12-03T00:00:00+00:00")}
    cycles_only["behaviours"] = {}
    rerun = bench.report([cycles_only], "cmd --cycles-only", text)
    section = bench.kept_sections(rerun)[1_000_000]
    assert "- measured: 2026-12-02T01:00:00+00:00, `cmd --sizes 1000000`" in section
    assert "- daemon cycle measured: 2026-12-03T00:00:00+00:00, `cmd --cycles-only`" in section
    assert "| full | watcher full | 63.00 s |" in section  # the once table, as it was
    assert "measured median 4.0 ms: met." in section
    assert "62.4 ms" not in section
    assert section.count(bench.CYCLE_HEAD) == 1
    # And again: still one note and one cycle table.
    again = bench.kept_sections(bench.report([cycles_only], "cmd --cycles-only", rerun))
    assert again[1_000_000].count("- daemon cycle measured:") == 1
    assert again[1_000_000].count(bench.CYCLE_HEAD) == 1


def test_a_section_says_which_jobs_its_rounds_changed() -> None:
    uniform = bench.report_size(result(100_000, idle_cpu=0.01), "cmd")
    assert "the jobs each round changes: at random among those in flight" in uniform
    fifo = bench.report_size({**result(100_000, idle_cpu=0.01), "order": "oldest"}, "cmd")
    assert "the jobs each round changes: the oldest in flight first" in fifo


def test_polling_requests_are_told_from_the_detail_calls_behind_failure_alerts() -> None:
    before = {"list?create_since": 10, "show": 1, "op-logs": 4, "audit-result": 2}
    after = {
        "list?create_since": 12,
        "list?create_until&state": 97,
        "show": 2,
        "op-logs": 11,
        "audit-result": 3,
    }
    assert bench.split_requests(before, after) == (2 + 97 + 1, 7 + 1)


def test_the_documented_rows_say_polling_plus_details_and_the_bound_each_round() -> None:
    res = result(1_000_000, idle_cpu=0.04)
    res["behaviours"]["documented"] = {
        **res["behaviours"]["full"],
        "once_requests": [102, 104],
        "once_details": [9, 7],
        # ⌈10,000/100⌉ + 3 = 103 and ⌈10,050/100⌉ + 3 = 104: each round its own bound.
        "active": [10_000, 10_050],
    }
    section = bench.report_size(res, "cmd")
    assert "| documented | watcher once | 31.50 s | 21.00 s | 480 MB | 103 + 8 details |" in section
    assert "≤ ⌈in flight/100⌉ + 3 = 103–104; measured 102–104 (median 103)" in section
    assert "within it in 2 of 2 rounds: met." in section
    res["behaviours"]["documented"]["once_requests"] = [102, 105]
    assert "within it in 1 of 2 rounds: NOT met." in bench.report_size(res, "cmd")
    # The full behaviour's run has no bound, and an old result without details still reads.
    assert "| full | watcher once | 31.50 s | 21.00 s | 480 MB | 2 |" in section
