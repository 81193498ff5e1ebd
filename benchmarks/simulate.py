"""Time the simulation of the paper's grid feedback data sets (REFERENCE §3), teachers included.

Run from the repository root::

    python benchmarks/simulate.py             # prints a table and updates benchmarks/RESULTS.md
    python benchmarks/simulate.py --no-write  # prints only

The headline workload is what a grid run does before fitting: build the teacher (exact value iteration
for Q*) and simulate pref 64 / demo 1 / rating 64 / stop 256 with ``simulate_feedback``, for grid_trap,
grid_cliff and grid_sparse (10x10, gamma 0.95). The reference implementation spends ~24 s on its data
simulation (REFERENCE §4); the target here is under 1 s for all three grids together. Every figure is the
median over ``--repeats`` timed runs; each run repeats the workload until it lasts at least ~50 ms, so fast
workloads are not dominated by timer resolution. Only this script's section of RESULTS.md is replaced.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import RESULTS, fmt, machine, timed, write_section

from mavrl_ppl.envs import make_tabular
from mavrl_ppl.feedback import TabularTeacher, load_feedback, save_feedback, simulate_feedback
from mavrl_ppl.planning import value_iteration

SECTION = "## Simulation (issue 2)"
GRIDS = ("grid_trap", "grid_cliff", "grid_sparse")
PAPER_COUNTS = {"pref": 64, "demo": 1, "rating": 64, "stop": 256}
TARGET_SECONDS = 1.0


def paper_data(name: str, seed: int) -> dict:
    """Teacher construction (value iteration) plus the fixed-allocation feedback set for one grid.

    Args:
        name: grid name (``grid_trap``, ...).
        seed: seed of the simulation.
    """
    teacher = TabularTeacher(make_tabular(name))
    return simulate_feedback(teacher, PAPER_COUNTS, np.random.default_rng(seed))


def workloads(seed: int, scratch: Path) -> list[tuple[str, Callable[[], object]]]:
    """The timed workloads, ``(label, zero-argument callable)``; the first is the headline.

    Args:
        seed: simulation seed (the same in every run, so every run does the same work).
        scratch: a directory for the save/load workload's file.
    """
    out: list[tuple[str, Callable[[], object]]] = [
        (
            "all three grids: teacher + pref 64 / demo 1 / rating 64 / stop 256",
            lambda: [paper_data(name, seed) for name in GRIDS],
        )
    ]
    out += [(f"{name}: teacher + feedback set", lambda n=name: paper_data(n, seed)) for name in GRIDS]
    trap = make_tabular("grid_trap")
    out.append(
        ("grid_trap: value iteration alone", lambda: value_iteration(trap.transitions, trap.rewards, trap.gamma))
    )
    teacher = TabularTeacher(trap)
    out.append(
        (
            "grid_trap: feedback set alone (teacher built)",
            lambda: simulate_feedback(teacher, PAPER_COUNTS, np.random.default_rng(seed)),
        )
    )
    for name, count in PAPER_COUNTS.items():
        out.append(
            (
                f"grid_trap: {name} {count} alone",
                lambda n=name, c=count: simulate_feedback(teacher, {n: c}, np.random.default_rng(seed)),
            )
        )
    data = paper_data("grid_trap", seed)
    path = scratch / "feedback.nc"
    out.append(("grid_trap: save_feedback (validate + NetCDF write)", lambda: save_feedback(path, data)))
    out.append(("grid_trap: load_feedback (NetCDF read + validate)", lambda: load_feedback(path)))
    return out


def render_section(rows: list[tuple[str, list[float], int]], info: dict[str, str], repeats: int, command: str) -> str:
    """The Markdown section (header included) for RESULTS.md.

    Args:
        rows: ``(label, seconds per call of each run, calls per run)`` per workload; the first is the headline.
        info: :func:`machine` output.
        repeats: timed runs per workload.
        command: the command line that produced the numbers.
    """
    headline = statistics.median(rows[0][1])
    verdict = "meets" if headline < TARGET_SECONDS else "MISSES"
    lines = [
        SECTION,
        "",
        f"Command: `{command}` (10x10 grids, gamma 0.95, paper allocation pref 64 / demo 1 / rating 64 /",
        f"stop 256 via `simulate_feedback`; median of {repeats} timed runs, each repeating the call for at",
        "least 50 ms). A teacher's construction includes exact value iteration for Q*.",
        "",
        f"Machine: {info['nproc']} cores (`nproc`), {info['cpu']}, Python {info['python']},",
        f"numpy {info['numpy']}, {info['platform']}. Recorded {time.strftime('%Y-%m-%d')}.",
        "",
        f"Headline: the full simulation for all three grids takes {fmt(headline)} (median), which {verdict}",
        f"the {TARGET_SECONDS:.0f} s target (the reference spends ~24 s simulating one grid's data).",
        "",
        "| workload | median | min | max | calls per run |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, runs, number in rows:
        median = statistics.median(runs)
        lines.append(f"| {label} | {fmt(median)} | {fmt(min(runs))} | {fmt(max(runs))} | {number} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and (unless ``--no-write``) update RESULTS.md.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        0 if the headline workload meets the target, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per workload (median reported)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    info = machine()
    print(f"{info['nproc']} cores, {info['cpu']}, Python {info['python']}, numpy {info['numpy']}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, fn in workloads(args.seed, Path(scratch)):
            runs, number = timed(fn, args.repeats)
            rows.append((label, runs, number))
            print(f"{label:<70} {fmt(statistics.median(runs)):>10}  ({number} calls per run)", flush=True)
    command = "python benchmarks/simulate.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    section = render_section(rows, info, args.repeats, command)
    if not args.no_write:
        write_section(section, SECTION)
        print(f"updated {RESULTS}")
    return 0 if statistics.median(rows[0][1]) < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
