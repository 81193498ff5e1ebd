"""Scale-out (issue 22): the same baseline table with 1 local process, 2 local processes and a 2-worker Dask
``LocalCluster``, into RESULTS.md with the wall time of each and the executor's overhead per fit.

Run from the repository root::

    python benchmarks/scaleout.py                               # the issue's table: 3 grids x seeds 0-2, defaults
    python benchmarks/scaleout.py --env-size 4 --seeds 0         # a reduced size (say which in RESULTS.md: it does)
    python benchmarks/scaleout.py --configs dask2 --no-write     # one configuration, print only

Each configuration runs ``python -m mavrl_ppl.experiments.baseline_table`` from scratch in its own directory
(``--out``/<configuration>, emptied first: nothing is reused) as a separate command, so its wall time includes the
command's start, every fit, and the table's assembly: ``local1`` = ``--jobs 1``, ``local2`` = ``--jobs 2`` (a fresh
worker process per fit), ``dask2`` = ``--cluster local:2`` (two long-lived single-threaded Dask worker processes,
started by the command). The configurations run one after another, never together.

Per configuration it records the wall time, the fits run, the sum of the runs' own ``total_seconds`` (settings,
simulation, fit and writing, measured inside each fit) and the *overhead per fit* = (P x wall - sum of total_seconds)
/ fits with P = 1, 2, 2 worker slots: the slot time not spent inside a fit (interpreter start and imports of a fresh
process, scheduling, waiting on a dependency, assembling the table). It also checks that the three tables hold the
same numbers (the fits are seeded; NUTS gets the same devices everywhere).

Separately (``--overhead-tasks``, default 40) it times trivial tasks (``time.sleep(0)``) through the executor: the
Dask ``LocalCluster``'s start, and the round trip per task through it and through the local process pool (a spawned
interpreter per task), which is the executor's own overhead without any fit.

The issue's table is 3 grids (10 x 10) x 3 seeds, 54 fits with the default SVI and NUTS settings: about half an hour
per configuration on a 2-core machine, mostly NUTS. ``--env-size`` and ``--seeds`` make it smaller; the section
states the size that was run.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import xarray as xr
from _common import kept_notes, machine, write_section

from mavrl_ppl.netcdf import ENGINE

SECTION = "## Scale-out: local processes vs Dask (issue 22)"
CONFIGS = {"local1": (["--jobs", "1"], 1), "local2": (["--jobs", "2"], 2), "dask2": (["--cluster", "local:2"], 2)}
COMPARED = ("normalized_score", "epic", "run_status")


def run_table(config: str, args: argparse.Namespace) -> dict[str, object]:
    """One configuration's table, from scratch; its figures."""
    out = args.out / config
    shutil.rmtree(out, ignore_errors=True)
    flags, slots = CONFIGS[config]
    cmd = [sys.executable, "-m", "mavrl_ppl.experiments.baseline_table", "--envs", *args.envs, "--seeds", args.seeds,
           "--out", str(out), "--quiet", *flags]
    if args.env_size is not None:
        cmd += ["--env-size", str(args.env_size)]
    for name in ("svi_config", "nuts_config"):
        if getattr(args, name) is not None:
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    load = machine()["load"]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{config}: exit {result.returncode}\n{result.stderr[-3000:]}")
    ds = xr.load_dataset(out / "baseline_table.nc", engine=ENGINE)
    fits = int(ds.attrs["fits_run"])
    fit_total = float(ds.attrs["runs_total_seconds"])
    return {"config": config, "wall": wall, "fits": fits, "fit_total": fit_total, "slots": slots,
            "overhead": (slots * wall - fit_total) / max(fits, 1), "load": load, "ds": ds,
            "statuses": sorted(set(ds["run_status"].values.ravel().tolist()))}


def same_numbers(tables: list[xr.Dataset]) -> str:
    """Whether every table holds the same scores, EPICs and statuses (and the largest difference if not)."""
    worst = 0.0
    for ds in tables[1:]:
        for name in COMPARED:
            a, b = tables[0][name].values, ds[name].values
            if a.dtype.kind in "fc":
                both = np.isfinite(a) & np.isfinite(b)
                if (np.isfinite(a) != np.isfinite(b)).any():
                    return f"no ({name}: missing in one table)"
                worst = max(worst, float(np.max(np.abs(a[both] - b[both]), initial=0.0)))
            elif (a != b).any():
                return f"no ({name} differs)"
    return "yes, identical" if worst == 0.0 else f"nearly (largest difference {worst:.3g})"


def task_overhead(n: int) -> dict[str, float]:
    """Seconds: LocalCluster start, and per trivial task through Dask and through the local process pool."""
    from mavrl_ppl.experiments.executor import Task, local_cluster, run_tasks

    tasks = [Task(f"t{i}", time.sleep, (0.0,)) for i in range(n)]
    start = time.perf_counter()
    cluster = local_cluster(2)
    started = time.perf_counter() - start
    try:
        run_tasks(tasks[:2], cluster=cluster, progress=False)  # warm the workers
        start = time.perf_counter()
        run_tasks(tasks, cluster=cluster, progress=False)
        dask = (time.perf_counter() - start) / n
    finally:
        cluster.close()
    start = time.perf_counter()
    run_tasks(tasks, jobs=2, progress=False)
    local = (time.perf_counter() - start) / n
    return {"cluster_start": started, "dask_per_task": dask, "local_per_task": local}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["grid_cliff", "grid_sparse", "grid_trap"])
    parser.add_argument("--seeds", default="0-2", help="e.g. 0-2 or 0")
    parser.add_argument("--env-size", type=int, default=None, help="grid side (default: the envs' own, 10)")
    parser.add_argument("--svi-config", type=Path, default=None, help="TOML [svi] settings (default: SVISettings())")
    parser.add_argument("--nuts-config", type=Path, default=None, help="TOML [nuts] settings (default: NutsSettings())")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=Path("runs/scaleout"), help="one directory per configuration")
    parser.add_argument("--overhead-tasks", type=int, default=40, help="trivial tasks timed per executor (0: skip)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    args.out = args.out.absolute()
    command = "python benchmarks/scaleout.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    before = machine()
    results = []
    for config in args.configs:
        results.append(run_table(config, args))
        r = results[-1]
        print(f"{config}: {r['wall']:.1f} s wall, {r['fits']} fits, runs' total_seconds {r['fit_total']:.1f} s, "
              f"overhead {r['overhead']:.2f} s per fit (load before {r['load']})", flush=True)
    overhead = task_overhead(args.overhead_tasks) if args.overhead_tasks > 0 else None
    after = machine()

    rows = ["| configuration | wall (s) | fits | sum of runs' total_seconds (s) | overhead per fit (s) | statuses | "
            "load average before |", "|---|---|---|---|---|---|---|"]
    labels = {"local1": "1 local process (`--jobs 1`)", "local2": "2 local processes (`--jobs 2`)",
              "dask2": "Dask LocalCluster, 2 workers (`--cluster local:2`)"}
    for r in results:
        rows.append(f"| {labels[str(r['config'])]} | {r['wall']:.1f} | {r['fits']} | {r['fit_total']:.1f} | "
                    f"{r['overhead']:.2f} | {', '.join(r['statuses'])} | {r['load']} |")
    by = {str(r["config"]): r for r in results}
    lines = [
        SECTION, "",
        f"Command: `{command}`. Size run: envs {', '.join(args.envs)}, seeds {args.seeds}, grid side "
        f"{args.env_size or 'default (10)'}, SVI {args.svi_config or 'defaults'}, NUTS {args.nuts_config or 'defaults'}"
        f" ({results[0]['fits'] if results else 0} fits per configuration).",
        "",
        f"Machine: {before['nproc']} cores (`nproc`), {before['cpu']}, Python {before['python']}. Load average "
        f"before: {before['load']}; after: {after['load']}. Recorded {datetime.now():%Y-%m-%d %H:%M}.",
        "", *rows, "",
        "Overhead per fit = (worker slots x wall - sum of the runs' own total_seconds) / fits: slot time outside the "
        "fits (a fresh process's start and imports, scheduling, waits on dependencies, the table's assembly).",
    ]
    if len(results) > 1:
        lines += ["", f"Same numbers in every table: {same_numbers([r['ds'] for r in results])}."]
    if "local2" in by and "dask2" in by:
        extra = (float(by["dask2"]["wall"]) - float(by["local2"]["wall"])) / max(int(by["dask2"]["fits"]), 1)
        lines += ["", f"Dask vs 2 local processes: {extra:+.2f} s of wall time per fit."]
    if overhead is not None:
        lines += ["", f"Trivial tasks ({args.overhead_tasks} x `time.sleep(0)`): LocalCluster(2) start "
                  f"{overhead['cluster_start']:.2f} s; per task {overhead['dask_per_task'] * 1e3:.1f} ms through "
                  f"Dask (warm workers), {overhead['local_per_task'] * 1e3:.0f} ms through the local pool (a spawned "
                  "interpreter per task)."]
    notes = kept_notes(SECTION)
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
