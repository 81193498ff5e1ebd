"""Time the exact tabular solvers and the reward metrics on the paper's 10x10 grids.

Run from the repository root::

    python benchmarks/value_iteration.py            # prints a table and updates benchmarks/RESULTS.md
    python benchmarks/value_iteration.py --no-write # prints only

Every figure is the median over ``--repeats`` timed runs; each run calls the workload enough times to last
at least ~50 ms, so per-call times of fast workloads are not dominated by timer resolution. Only this script's
own section of RESULTS.md is replaced; other sections are kept as they are.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
from _common import RESULTS, fmt, machine, timed, write_section

from mavrl_ppl.analysis import epic_distance, evaluate_reward, greedy_policy_for
from mavrl_ppl.envs import make_tabular, uniform_policy
from mavrl_ppl.planning import policy_evaluation, value_iteration

SECTION = "## Value iteration and metrics (issue 2)"


def workloads(seed: int) -> list[tuple[str, Callable[[], object]]]:
    """The timed workloads: ``(label, zero-argument callable)``.

    Args:
        seed: seed of the random "posterior draws" used by the batched workloads.
    """
    rng = np.random.default_rng(seed)
    out: list[tuple[str, Callable[[], object]]] = []
    for name in ("grid_sparse", "grid_cliff", "grid_trap"):
        mdp = make_tabular(name)
        out.append(
            (
                f"value_iteration {name} (p_rand 0)",
                lambda m=mdp: value_iteration(m.transitions, m.rewards, m.gamma),
            )
        )
    noisy = make_tabular("grid_trap", p_rand=0.1)
    out.append(
        (
            "value_iteration grid_trap (p_rand 0.1)",
            lambda m=noisy: value_iteration(m.transitions, m.rewards, m.gamma),
        )
    )
    trap = make_tabular("grid_trap")
    draws = trap.with_group_rewards(trap.group_rewards + rng.normal(size=(100, trap.num_groups)))
    out.append(
        (
            "value_iteration grid_trap, batch of 100 rewards",
            lambda m=trap, r=draws: value_iteration(m.transitions, r, m.gamma),
        )
    )
    out.append(
        (
            "policy_evaluation grid_trap (linear solve)",
            lambda m=trap: policy_evaluation(m.transitions, m.rewards, m.gamma, uniform_policy(m)),
        )
    )
    out.append(("greedy_policy_for grid_trap", lambda m=trap, r=draws[0]: greedy_policy_for(m, r)))
    out.append(("evaluate_reward grid_trap (score, regret, EPIC)", lambda m=trap, r=draws[0]: evaluate_reward(m, r)))
    out.append(("epic_distance 10x10, one pair", lambda m=trap, r=draws[0]: epic_distance(m.rewards, r, m.gamma)))
    out.append(
        (
            "epic_distance 10x10, 100 posterior draws (batched)",
            lambda m=trap, r=draws: epic_distance(m.rewards, r, m.gamma),
        )
    )
    return out


def render_section(rows: list[tuple[str, float, int]], info: dict[str, str], repeats: int, command: str) -> str:
    """The Markdown section (header included, trailing blank line) for RESULTS.md."""
    lines = [
        SECTION,
        "",
        f"Command: `{command}` (numpy, float64; 10x10 grids, gamma 0.95; median of {repeats} timed runs,",
        "each run repeating the call for at least 50 ms).",
        "",
        f"Machine: {info['nproc']} cores (`nproc`), {info['cpu']}, Python {info['python']},",
        f"numpy {info['numpy']}, {info['platform']}. Load average (1/5/15 min) at start: {info['load']}.",
        f"Recorded {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "| workload | median per call | calls per run |",
        "|---|---:|---:|",
    ]
    for label, seconds, number in rows:
        lines.append(f"| {label} | {fmt(seconds)} | {number} |")
    lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per workload (median reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random reward draws")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    info = machine()
    print(f"{info['nproc']} cores, {info['cpu']}, Python {info['python']}, numpy {info['numpy']}, load {info['load']}")
    rows = []
    for label, fn in workloads(args.seed):
        runs, number = timed(fn, args.repeats)
        seconds = statistics.median(runs)
        rows.append((label, seconds, number))
        print(f"{label:55s} {fmt(seconds):>12s}  ({number} calls per run)")
    if not args.no_write:
        command = "python benchmarks/value_iteration.py" + (f" --repeats {args.repeats}" if args.repeats != 7 else "")
        write_section(render_section(rows, info, args.repeats, command), SECTION)
        print(f"wrote section {SECTION!r} of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
