"""The Optuna fixed-allocation table (issue 7): one study per grid x subset cell, then the table, with wall times.

Run from the repository root::

    python benchmarks/sweep.py --trials 25 --seeds 2 --eval-seeds 5 --workers 2      # the full 3 x 11 table
    python benchmarks/sweep.py --envs grid_trap --subsets pref,all --trials 2 --seeds 1 --eval-seeds 2 \\
        --max-steps 20 --storage /tmp/s.journal --results /tmp/RESULTS.md           # a smoke test

For every cell it runs the real command, ``python -m mavrl_ppl.experiments.sweep --env ENV --subset SUBSET --mode
fixed --storage STORAGE --trials N --seeds K`` (``--workers`` processes joining the same study), then
``python -m mavrl_ppl.experiments.tables --storage STORAGE --kind fixed`` re-evaluates each study's best
hyper-parameters on fresh seeds 100.. and builds the table. The studies persist in the journal: rerunning continues
them (a cell that already has N trials costs nothing), so the run can be interrupted and resumed.

It replaces its own section ("Optuna fixed-allocation table") of RESULTS.md (or ``--results``) with the command, the
machine, the wall time of each stage, the table with its caption, and the comparison with REFERENCE §4.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from _common import RESULTS, machine, write_section

from mavrl_ppl.netcdf import ENGINE

SECTION = "## Optuna fixed-allocation table (issue 7)"
GRIDS = ("grid_cliff", "grid_sparse", "grid_trap")
# REFERENCE §4 (best of hundreds of Optuna trials per cell, selected on the reported score itself).
PUBLISHED = {
    "grid_cliff": {"pref": 59.2, "demo": 80.4, "rating": 41.1, "stop": 84.1, "all": 100.0},
    "grid_sparse": {"pref": 80.0, "demo": 95.0, "rating": 58.8, "stop": 90.0, "all": 100.0},
    "grid_trap": {"pref": 78.3, "demo": 46.5, "rating": 60.4, "stop": 46.1, "all": 95.3},
}


def run(cmd: list[str]) -> float:
    """Run a command (its output passes through); returns its wall time, raises on a non-zero exit."""
    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def run_workers(cmd: list[str], workers: int) -> float:
    """Run ``workers`` copies of one sweep command on the same study; returns the wall time."""
    print(f"$ {shlex.join(cmd)}  (x{workers})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd) for _ in range(workers)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise subprocess.CalledProcessError(max(codes), cmd)
    return time.perf_counter() - t0


def comparison(ds, envs: list[str]) -> list[str]:
    """Markdown rows: ours vs REFERENCE §4 on the columns the paper reports."""
    cols = ["pref", "demo", "rating", "stop", "all"]
    lines = ["| env | " + " | ".join(f"{c if c != 'all' else 'all four'} (ours / paper)" for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for env in envs:
        cells = []
        for c in cols:
            mean = float(ds.score_mean.sel(env=env, subset=c)) if env in ds.env and c in ds.subset else float("nan")
            paper = PUBLISHED.get(env, {}).get(c)
            ours = "—" if mean != mean else f"{mean:.1f}"
            cells.append(f"{ours} / {paper if paper is not None else '—'}")
        lines.append(f"| {env} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    from mavrl_ppl.experiments.budget import ALL_SUBSETS, subset_name

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default=",".join(GRIDS), help="comma-separated grids (default the three)")
    parser.add_argument("--subsets", default=",".join(ALL_SUBSETS), help="comma-separated subsets (default all 11)")
    parser.add_argument("--trials", type=int, default=25, help="finished trials per study")
    parser.add_argument("--seeds", type=int, default=2, help="seeds averaged per trial")
    parser.add_argument("--eval-seeds", type=int, default=5, help="fresh seeds per table cell (100..)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per study")
    parser.add_argument("--objective", choices=["nll", "score"], default="nll")
    parser.add_argument("--storage", default="runs/bench_fixed.journal", help="journal file or RDB URL")
    parser.add_argument("--out", default="runs/tables/bench_fixed", help="where the table files go")
    parser.add_argument("--max-steps", type=int, default=None, help="override SVISettings.max_steps (smoke tests)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results file to update")
    parser.add_argument("--no-write", action="store_true", help="leave the results file alone")
    args = parser.parse_args(argv)
    envs = [e.strip() for e in args.envs.split(",") if e.strip()]
    subsets = [subset_name(s) for s in args.subsets.split(",") if s.strip()]
    info = machine()
    started = datetime.now().strftime("%Y-%m-%d %H:%M")
    command = "python benchmarks/sweep.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    extra = ["--max-steps", str(args.max_steps)] if args.max_steps is not None else []

    t_all = time.perf_counter()
    study_seconds: dict[tuple[str, str], float] = {}
    for env in envs:
        for subset in subsets:
            cmd = [sys.executable, "-m", "mavrl_ppl.experiments.sweep", "--env", env, "--subset", subset, "--mode",
                   "fixed", "--storage", args.storage, "--trials", str(args.trials), "--seeds", str(args.seeds),
                   "--objective", args.objective, *extra]
            study_seconds[(env, subset)] = run_workers(cmd, args.workers)
    sweep_seconds = time.perf_counter() - t_all
    table_cmd = [sys.executable, "-m", "mavrl_ppl.experiments.tables", "--storage", args.storage, "--kind", "fixed",
                 "--objective", args.objective, "--seeds", str(args.eval_seeds), "--envs", ",".join(envs),
                 "--out", args.out]
    table_seconds = run(table_cmd)
    total = time.perf_counter() - t_all

    import xarray as xr

    ds = xr.load_dataset(Path(args.out) / "table.nc", engine=ENGINE)
    markdown = (Path(args.out) / "table.md").read_text().rstrip("\n")
    per_study = sorted(study_seconds.values())
    lines = [
        SECTION, "",
        f"Command: `{command}`. Each cell: `python -m mavrl_ppl.experiments.sweep --env ENV --subset SUBSET --mode "
        f"fixed --storage {args.storage} --trials {args.trials} --seeds {args.seeds} --objective {args.objective}"
        f"{' ' + shlex.join(extra) if extra else ''}` ({args.workers} worker process(es) per study); then "
        f"`python -m mavrl_ppl.experiments.tables --storage {args.storage} --kind fixed --seeds {args.eval_seeds}`.",
        "",
        f"Machine: {info['nproc']} cores (`nproc`), {info['cpu']}, Python {info['python']}, numpy {info['numpy']}, "
        f"{info['platform']}. Load average at start: {info['load']}. Recorded {started}.",
        "",
        f"Wall time: studies {sweep_seconds:.0f} s in total ({len(per_study)} studies; per study median "
        f"{per_study[len(per_study) // 2]:.0f} s, max {per_study[-1]:.0f} s), table (re-evaluation of "
        f"{len(per_study)} cells x {args.eval_seeds} seeds) {table_seconds:.0f} s, total {total:.0f} s.",
        "",
        markdown,
        "",
        "Against REFERENCE §4 (the paper's cells are the best of hundreds of trials judged on the reported score; "
        "ours select on held-out feedback and are re-evaluated on fresh seeds, so they are not inflated by "
        "selection):",
        "",
        *comparison(ds, envs),
    ]
    if args.no_write:
        print("\n".join(lines))
    else:
        write_section("\n".join(lines), SECTION, args.results)
        print(f"updated {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
