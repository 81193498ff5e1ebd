"""SVI on the paper grids: normalised score, EPIC and fit time over seeds, all four types and each type alone.

One documented hyper-parameter set for every grid and cell: ``SVISettings()`` defaults (no per-seed or per-cell
tuning on the true reward). Data: the paper allocation pref 64 / demo 1 / rating 64 / stop 256 simulated with
``np.random.default_rng(seed)``; a single-type cell fits exactly that type's items of the same data set.
Also times the whole default command (``python -m mavrl_ppl.fit``) and its peak memory.

Usage: ``python benchmarks/svi.py [--seeds 0-9] [--envs grid_cliff,grid_sparse,grid_trap] [--cells all,pref,...]
[--q-model planner|network] [--jobs 2] [--command-runs 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
from _common import machine, mean_se, write_section

from mavrl_ppl.experiments.baseline_table import parse_seeds

PAPER = {"pref": 64, "demo": 1, "rating": 64, "stop": 256}
CELLS = ("all", "pref", "demo", "rating", "stop")
PAPER_SVI = {"grid_cliff": 100.0, "grid_sparse": 100.0, "grid_trap": 95.3}  # REFERENCE §4 (best-of-trials)


def one_fit(env: str, seed: int, cell: str, q_model: str) -> dict:
    """Simulate, fit with the default settings, score the posterior mean. Runs in a worker process."""
    import torch

    from mavrl_ppl.analysis.metrics import evaluate_reward
    from mavrl_ppl.envs import make_tabular
    from mavrl_ppl.feedback import TabularTeacher, simulate_feedback
    from mavrl_ppl.feedback.teachers import one_hot_features
    from mavrl_ppl.inference.svi import SVISettings, fit_svi, posterior_draws

    torch.set_num_threads(1)
    mdp = make_tabular(env)
    feedback = simulate_feedback(TabularTeacher(mdp), PAPER, np.random.default_rng(seed))
    if cell != "all":
        feedback = {cell: feedback[cell]}
    settings = SVISettings(progress_bar=False, q_model=q_model)
    result = fit_svi(feedback, settings, seed=seed, mdp=mdp)
    reward, _, _ = posterior_draws(result.model, one_hot_features(mdp.num_states), settings.num_posterior_samples,
                                   torch.Generator().manual_seed(seed))
    metrics = evaluate_reward(mdp, mdp.with_group_rewards(reward.mean(axis=(0, 1))))
    return {"env": env, "seed": seed, "cell": cell, "score": metrics["normalized_score"], "epic": metrics["epic"],
            "fit_seconds": result.fit_seconds, "steps": result.steps}


def command_runs(repeats: int) -> list[dict]:
    """Wall time and peak RSS of the default command, each in a fresh interpreter."""
    rows = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mavrl_ppl.fit", "--quiet", "--out", f"{tmp}/run"], check=True,
                           capture_output=True)
            wall = time.perf_counter() - t0
            metrics = json.loads(Path(f"{tmp}/run/metrics.json").read_text())
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux; max over children
        rows.append({"wall": wall, "fit": metrics["fit_seconds"], "score": metrics["normalized_score"],
                     "peak_mb": peak_mb})
    return rows


def time_command(repeats: int) -> None:
    """Whole-command wall time, fit time and peak memory of the default fit, in its own RESULTS.md section."""
    info = machine()
    cmd = command_runs(repeats)
    header = "## SVI default command timing (issue 3)"
    text = "\n".join([
        header, "",
        f"Command: `python benchmarks/svi.py --only-command --command-runs {repeats}`: `python -m mavrl_ppl.fit "
        "--quiet` (SVI, grid_trap, paper allocation, seed 0) in a fresh interpreter each time.", "",
        f"Machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}. Load average at start: "
        f"{info['load']}; at end: {machine()['load']}. Recorded {datetime.now():%Y-%m-%d %H:%M}.", "",
        "| run | command wall | fit | peak RSS | score |", "|---:|---:|---:|---:|---:|",
        *(f"| {i} | {c['wall']:.1f} s | {c['fit']:.1f} s | {c['peak_mb']:.0f} MB | {c['score']:.1f} |"
          for i, c in enumerate(cmd)),
        "", f"Median: command {np.median([c['wall'] for c in cmd]):.1f} s, "
        f"fit {np.median([c['fit'] for c in cmd]):.1f} s "
        "(targets: fit <= 5 s, command <= 15 s, peak memory <= 1.5 GB).",
    ]) + "\n"
    write_section(text, header)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--envs", default="grid_cliff,grid_sparse,grid_trap")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--q-model", default="planner")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--command-runs", type=int, default=3)
    parser.add_argument("--only-command", action="store_true",
                        help="only time the default command (its own section), e.g. again on an idle machine")
    args = parser.parse_args()
    if args.only_command:
        time_command(args.command_runs or 5)
        return
    seeds, envs, cells = parse_seeds([args.seeds]), args.envs.split(","), args.cells.split(",")
    info = machine()
    t0 = time.perf_counter()
    jobs = [(env, seed, cell, args.q_model) for env in envs for cell in cells for seed in seeds]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(one_fit, *zip(*jobs, strict=True)))
    sweep_wall = time.perf_counter() - t0
    cmd = command_runs(args.command_runs) if args.command_runs else []

    lines = [
        f"## SVI on the paper grids (issue 3, q_model={args.q_model})",
        "",
        f"Command: `python benchmarks/svi.py --seeds {args.seeds} --envs {args.envs} --cells {args.cells} "
        f"--q-model {args.q_model} --jobs {args.jobs} --command-runs {args.command_runs}`. Settings: `SVISettings()` "
        "defaults, one set for every grid and cell (nothing tuned per seed or cell, nothing selected on the true "
        "reward: checkpoints are chosen by held-out posterior-predictive log-likelihood). Data: paper allocation "
        "pref 64 / demo 1 / rating 64 / stop 256, `np.random.default_rng(seed)`; single-type cells fit that type's "
        "items of the same data. Score = normalised score of the greedy policy for the posterior-mean reward "
        "(1000 guide draws).",
        "",
        f"Machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}, {info['platform']}. "
        f"Load average at start: {info['load']}; at end: {machine()['load']} (other jobs shared the 2 cores, "
        f"so fit seconds are inflated). {args.jobs} fits in parallel; sweep wall {sweep_wall:.0f} s. "
        f"Recorded {datetime.now():%Y-%m-%d %H:%M}.",
        "",
        "Mean ± standard error over seeds (normalised score % / EPIC / fit seconds):",
        "",
        "| env | " + " | ".join(cells) + " | paper all-four |",
        "|---|" + "---:|" * (len(cells) + 1),
    ]
    for env in envs:
        cellstr = []
        for cell in cells:
            sel = [r for r in rows if r["env"] == env and r["cell"] == cell]
            cellstr.append(f"{mean_se([r['score'] for r in sel])} / {mean_se([r['epic'] for r in sel])} / "
                           f"{np.median([r['fit_seconds'] for r in sel]):.1f} s")
        lines.append(f"| {env} | " + " | ".join(cellstr) + f" | {PAPER_SVI.get(env, float('nan'))} |")
    lines += ["", "Per seed, all four types (score / fit seconds / steps):", "",
              "| env | " + " | ".join(str(s) for s in seeds) + " |", "|---|" + "---:|" * len(seeds)]
    for env in envs:
        sel = {r["seed"]: r for r in rows if r["env"] == env and r["cell"] == "all"}
        if sel:
            lines.append(f"| {env} | " + " | ".join(
                f"{sel[s]['score']:.1f} / {sel[s]['fit_seconds']:.1f} / {sel[s]['steps']}" for s in seeds) + " |")
    if cmd:
        lines += ["", f"Default command `python -m mavrl_ppl.fit` (grid_trap, all four types, seed 0), {len(cmd)} "
                  "fresh runs: median whole-command wall "
                  f"{np.median([c['wall'] for c in cmd]):.1f} s (runs: "
                  + ", ".join(f"{c['wall']:.1f}" for c in cmd) + " s), median fit "
                  f"{np.median([c['fit'] for c in cmd]):.1f} s, peak RSS {max(c['peak_mb'] for c in cmd):.0f} MB, "
                  f"score {cmd[0]['score']:.1f}. Targets: fit <= 5 s, command <= 15 s, peak memory <= 1.5 GB."]
    text = "\n".join(lines) + "\n"
    write_section(text, lines[0])
    print(text)
    (Path(os.environ.get("SVI_BENCH_JSON", "/dev/null"))).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
