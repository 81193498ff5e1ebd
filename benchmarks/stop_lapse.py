"""Which stop lapse samples cleanly (issue 19): NUTS divergences on the paper grids per lapse rate, from fit runs.

Run from the repository root::

    python benchmarks/stop_lapse.py --lapses 0.001,0.003,0.01 --envs grid_cliff,grid_sparse,grid_trap --seeds 0-4
    python benchmarks/stop_lapse.py --lapses 0.003 --seeds 0-4 --first-divergence   # drop a lapse at its first
    python benchmarks/stop_lapse.py --tabulate                                        # the records only, no fits

Each run is the fit command with its defaults (4 chains x 1000 draws after 500 warm-up, the paper's allocation on the
10x10 grid), data simulated AND modelled with the lapse: ``python -m mavrl_ppl.fit --inference nuts --env ENV --seed
SEED --simulate stop.lapse=L --allow-unconverged``. Runs go one at a time (each uses both cores). A run's
``metrics.json`` is kept as a record, ``benchmarks/stop_lapse_records/lapse<L>_<env>_seed<S>.json``, written as the
run finishes, and a recorded run is not fitted again: the measurement resumes where it stopped, on any machine.
``--first-divergence`` skips a lapse's remaining runs once one of its runs diverged (0 divergences everywhere is the
criterion, so one divergent run decides). The table goes into this script's RESULTS.md section.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from _common import RESULTS, kept_notes, machine, write_section

from mavrl_ppl.experiments.baseline_table import parse_seeds

RECORDS = Path(__file__).resolve().parent / "stop_lapse_records"
SECTION = "## Stop lapse and NUTS divergences (issue 19)"
COLUMNS = ("divergences", "rhat_max", "rhat_lp", "ess_bulk_min", "mean_steps", "step_size_mean", "normalized_score",
           "fit_seconds")


def record_path(lapse: float, env: str, seed: int) -> Path:
    return RECORDS / f"lapse{lapse:g}_{env}_seed{seed}.json"


def fit(lapse: float, env: str, seed: int, keep: Path | None = None) -> dict:
    """One NUTS fit through the command line; its metrics, with the lapse and the command added. ``keep``: a directory
    to keep the run in (``<keep>/nuts_lapse<L>_<env>_seed<S>``), e.g. to compare SVI with it on the same data."""
    with tempfile.TemporaryDirectory() as tmp:
        out = (keep or Path(tmp)) / (f"nuts_lapse{lapse:g}_{env}_seed{seed}" if keep else "run")
        command = [sys.executable, "-m", "mavrl_ppl.fit", "--inference", "nuts", "--env", env, "--seed", str(seed),
                   "--simulate", f"stop.lapse={lapse:g}", "--allow-unconverged", "--quiet", "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"error: {shlex.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        metrics = json.loads((out / "metrics.json").read_text())
    return {**metrics, "lapse": lapse, "command": shlex.join(["python", *command[1:-2]])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lapses", default="0.001,0.003,0.01", help="comma-separated lapse rates")
    parser.add_argument("--envs", default="grid_cliff,grid_sparse,grid_trap", help="comma-separated grid names")
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,1,2")
    parser.add_argument("--first-divergence", action="store_true",
                        help="skip a lapse's remaining runs once one of its runs diverged")
    parser.add_argument("--tabulate", action="store_true", help="fit nothing: tabulate the records")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here (default: deleted)")
    args = parser.parse_args(argv)
    lapses = [float(x) for x in args.lapses.split(",") if x.strip()]
    envs = [e.strip() for e in args.envs.split(",") if e.strip()]
    seeds = parse_seeds([args.seeds])
    RECORDS.mkdir(exist_ok=True)
    for lapse in lapses:
        diverged = any(json.loads(p.read_text())["divergences"] > 0 for p in RECORDS.glob(f"lapse{lapse:g}_*.json"))
        for env in envs:
            for seed in seeds:
                path = record_path(lapse, env, seed)
                if path.is_file() or args.tabulate or (diverged and args.first_divergence):
                    continue
                print(f"lapse {lapse:g} {env} seed {seed} ...", flush=True)
                info = machine()  # the load just before this run
                record = fit(lapse, env, seed, args.keep)
                record["machine"] = info
                record["recorded"] = datetime.now().isoformat(timespec="seconds")
                path.write_text(json.dumps(record, indent=1) + "\n")
                print({k: record.get(k) for k in COLUMNS}, flush=True)
                diverged = diverged or record["divergences"] > 0
    write_section(section(), SECTION)
    return 0


def section() -> str:
    """The RESULTS.md section: every record, then per lapse and env the runs with divergences."""
    records = [json.loads(p.read_text()) for p in sorted(RECORDS.glob("*.json"))]
    records.sort(key=lambda r: (r["lapse"], r["env"], r["seed"]))
    lines = [SECTION, "",
             "Command: `python benchmarks/stop_lapse.py` (module docstring); runs: `python -m mavrl_ppl.fit "
             "--inference nuts --env ENV --seed S --simulate stop.lapse=L` with every other setting at its default "
             "(4 chains x 1000 draws after 500 warm-up). Records: `benchmarks/stop_lapse_records/`. Mean steps = "
             "leapfrog steps per draw (machine-free work); fit = sampling with compilation and the start-up, on the "
             "machine named.",
             "", "| lapse | env | seed | divergences | R-hat max | log-density R-hat | bulk ESS min | mean steps | "
             "step size | score | fit | machine, load at start |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in records:
        m = r.get("machine", {})
        lines.append(f"| {r['lapse']:g} | {r['env']} | {r['seed']} | {r['divergences']} | {r['rhat_max']:.3f} | "
                     f"{r['rhat_lp']:.3f} | {r['ess_bulk_min']:.0f} | {r['mean_steps']:.0f} | "
                     f"{r['step_size_mean']:.4f} | {r['normalized_score']:.1f} | {r['fit_seconds']:.0f} s | "
                     f"{m.get('cpu', '?')}, {m.get('load', '?')} |")
    lines += ["", "Per lapse and env:", "", "| lapse | env | runs | runs with divergences | divergences (total) | "
              "worst R-hat | worst bulk ESS | median mean steps | median fit |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple[float, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["lapse"], r["env"]), []).append(r)
    for (lapse, env), rs in groups.items():
        steps = sorted(r["mean_steps"] for r in rs)
        fits = sorted(r["fit_seconds"] for r in rs)
        lines.append(f"| {lapse:g} | {env} | {len(rs)} | {sum(r['divergences'] > 0 for r in rs)} | "
                     f"{sum(r['divergences'] for r in rs)} | {max(r['rhat_max'] for r in rs):.3f} | "
                     f"{min(r['ess_bulk_min'] for r in rs):.0f} | {steps[len(steps) // 2]:.0f} | "
                     f"{fits[len(fits) // 2]:.0f} s |")
    notes = kept_notes(SECTION, RESULTS)
    return "\n".join(lines) + "\n" + (f"\n{notes}" if notes else "")


if __name__ == "__main__":
    sys.exit(main())
