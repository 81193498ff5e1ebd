"""The NUTS reference posterior on the paper grids (issue 4): convergence, score and wall time per seed.

Run from the repository root::

    python benchmarks/nuts.py --seeds 0 --envs grid_cliff,grid_sparse,grid_trap   # one seed per grid
    python benchmarks/nuts.py --seeds 0-9                                           # the full table
    python benchmarks/nuts.py --seeds 0 --num-warmup 500 --num-samples 500 --no-write
    python benchmarks/nuts.py --seeds 0-9 --from-records   # tabulate the NUTS runs of the baseline table

Each run simulates the paper's fixed allocation (pref 64 / demo 1 / rating 64 / stop 256; 10x10, gamma 0.95) with
``simulate_feedback(..., np.random.default_rng(seed))``, samples 4 chains x 1000 draws after 500 warm-up (defaults)
and scores the posterior-mean reward (greedy policy, exact value under the true reward). Before the runs it times the
two ``Q*`` schemes of the model (``q_method``). Only this script's section of RESULTS.md is replaced, after every run;
a ``### Notes`` subsection already in it is kept as written.

``--from-records [DIR]`` samples nothing: it tabulates the NUTS runs of the baseline table from its cell records
(``DIR/<env>_seed<S>.json``, default ``benchmarks/baseline_table_records``, written by
``python benchmarks/baseline_table.py``), i.e. runs of the fit command with its defaults (the same data: the fit
command simulates with ``np.random.default_rng(seed)`` too, and the same ``NutsSettings`` defaults). Their wall time
is the fit command's ``total_seconds`` (simulation, sampling, diagnostics, plots and writing; not the interpreter's
start).

Targets (issue 4): R-hat <= 1.01, bulk ESS >= 400 on every parameter, 0 divergences, mean normalised score >= 100 on
cliff/sparse and >= 95 on trap, <= 60 s wall per run on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime
from functools import partial
from pathlib import Path

from _common import RESULTS, TABLE_RECORDS, kept_notes, machine, mean_se, write_section

from mavrl_ppl.baselines.mcmc import NutsSettings, run_nuts, set_host_devices
from mavrl_ppl.baselines.mcmc.init import MODE_SEARCHES
from mavrl_ppl.experiments.baseline_table import parse_seeds, record_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0", help="e.g. 0-9 or 0,1,2 (default 0)")
    parser.add_argument("--envs", default="grid_cliff,grid_sparse,grid_trap", help="comma-separated grid names")
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--num-warmup", type=int, default=NutsSettings.num_warmup)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--max-tree-depth", type=int, default=NutsSettings.max_tree_depth)
    parser.add_argument("--warmup-max-tree-depth", type=int, default=NutsSettings.warmup_max_tree_depth)
    parser.add_argument("--target-accept", type=float, default=0.8)
    parser.add_argument("--dense-mass", action="store_true", help="adapt a dense mass matrix (NutsSettings.dense_mass)")
    parser.add_argument("--init", default="mode", help="chain starts: mode or prior (NutsSettings.init)")
    parser.add_argument("--init-scale", type=float, default=0.25, help="NutsSettings.init_scale")
    parser.add_argument("--devices", type=int, default=None, help="host devices (default: one per core)")
    parser.add_argument("--stop-lapse", type=float, default=0.0,
                        help="simulate and fit stops with this lapse rate (feedback/stop.py; 0 = the paper's model)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--from-records", type=Path, nargs="?", const=TABLE_RECORDS, default=None,
                        help="tabulate the NUTS runs of the baseline table's cell records instead of sampling")
    args = parser.parse_args(argv)
    devices = set_host_devices(args.devices)  # before anything runs on JAX

    import jax
    import numpy as np
    import numpyro

    from mavrl_ppl.analysis.metrics import evaluate_reward
    from mavrl_ppl.envs import make_tabular
    from mavrl_ppl.feedback import TabularTeacher, simulate_feedback

    command = "python benchmarks/nuts.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    envs = [e.strip() for e in args.envs.split(",") if e.strip()]
    seeds = parse_seeds([args.seeds])
    counts = {"pref": 64, "demo": 1, "rating": 64, "stop": 256}
    info = {**machine(), "jax": jax.__version__, "numpyro": numpyro.__version__, "devices": str(devices)}
    q_rows = q_scheme_timings()
    for row in q_rows:
        print("Q* scheme", row, flush=True)
    if args.from_records is not None:
        rows = [row_from_record(args.from_records, env, seed) for env in envs for seed in seeds]
        for row in rows:
            print(row, flush=True)
        if not args.no_write:
            write_section(section(command, info, args, q_rows, rows, RESULTS), SECTION)
        return 0
    rows = []
    for env in envs:
        for seed in seeds:
            start = time.perf_counter()
            mdp = make_tabular(env)
            feedback = simulate_feedback(TabularTeacher(mdp), counts, np.random.default_rng(seed),
                                         {"stop": {"lapse": args.stop_lapse}})
            settings = NutsSettings(
                num_chains=args.num_chains,
                num_warmup=args.num_warmup,
                num_samples=args.num_samples,
                max_tree_depth=args.max_tree_depth,
                warmup_max_tree_depth=args.warmup_max_tree_depth,
                target_accept_prob=args.target_accept,
                dense_mass=args.dense_mass,
                seed=seed,
                progress_bar=False,
                init=args.init,
                init_scale=args.init_scale,
            )
            result = run_nuts(mdp, feedback, settings)
            mean = result.idata.posterior["reward"].mean(("chain", "draw")).values.reshape(-1)
            metrics = evaluate_reward(mdp, mdp.with_group_rewards(mean))
            row = {
                "env": env,
                "seed": seed,
                "lapse": args.stop_lapse,
                **result.diagnostics,
                "score": metrics["normalized_score"],
                "epic": metrics["epic"],
                "wall": time.perf_counter() - start,
            }
            rows.append(row)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            if not args.no_write:
                write_section(section(command, info, args, q_rows, rows, RESULTS), SECTION)
    return 0


def row_from_record(records: Path, env: str, seed: int) -> dict:
    """The table row of the NUTS run in a baseline-table cell record (its ``metrics.json``)."""
    path = record_path(records, env, seed)
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (run benchmarks/baseline_table.py for seed {seed} first)")
    metrics = json.loads(path.read_text())["runs"]["nuts"]["metrics"]
    keys = ("rhat_max", "ess_bulk_min", "ess_tail_min", "divergences", "tree_depth_max", "step_size_mean", "rhat_lp",
            "mean_steps", "init_seconds")
    return {"env": env, "seed": seed, **{k: metrics.get(k, float("nan")) for k in keys},
            "score": metrics["normalized_score"], "epic": metrics["epic"], "wall": metrics["total_seconds"]}


SECTION = "## NUTS baseline (issue 4)"


def q_scheme_timings() -> list[dict]:
    """Time value + gradient of ``Q*`` (10x10 grid_trap, gamma 0.95, p_rand 0 and 0.2) for both schemes, and their
    sup-norm error against numpy value iteration, on 5 standard-normal rewards."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mavrl_ppl.baselines.mcmc.devices import enable_x64
    from mavrl_ppl.envs import make_tabular
    from mavrl_ppl.planning import jax_backend as planning
    from mavrl_ppl.planning import value_iteration

    enable_x64()  # nothing switches float64 on at import any more; the Q* timings need it

    out = []
    for p_rand in (0.0, 0.2):
        mdp = make_tabular("grid_trap", p_rand=p_rand)
        dynamics = planning.make_dynamics(mdp.transitions)
        groups = planning.successor_groups(dynamics, mdp.reward_groups)
        sweeps = planning.sweeps_for_tolerance(mdp.gamma, 1e-6, 5.0)
        schemes = {
            "exact (policy iteration + exact evaluation)": partial(
                planning.q_star_exact, dynamics=dynamics, gamma=mdp.gamma
            ),
            f"sweeps ({sweeps} value-iteration sweeps)": partial(
                planning.q_star_sweeps, dynamics=dynamics, gamma=mdp.gamma, num_sweeps=sweeps
            ),
        }
        thetas = np.random.default_rng(0).normal(size=(5, mdp.num_groups))
        for name, q_fn in schemes.items():
            to_q = partial(_q_of_theta, q_fn=q_fn, dynamics=dynamics, groups=groups)
            value_and_grad = jax.jit(jax.value_and_grad(lambda t, to_q=to_q: jnp.sum(jnp.sin(to_q(t)))))
            error = 0.0
            for theta in thetas:
                exact = value_iteration(mdp.transitions, theta[mdp.reward_groups], mdp.gamma, tol=1e-13)
                error = max(error, float(np.abs(np.asarray(to_q(jnp.asarray(theta))) - exact).max()))
            theta = jnp.asarray(thetas[0])
            jax.block_until_ready(value_and_grad(theta))
            times = []
            for _ in range(5):
                begin = time.perf_counter()
                for _ in range(200):
                    jax.block_until_ready(value_and_grad(theta))
                times.append((time.perf_counter() - begin) / 200)
            out.append({"p_rand": p_rand, "scheme": name, "ms": 1e3 * sorted(times)[2], "error": error})
    return out


def _q_of_theta(theta, *, q_fn, dynamics, groups):
    from mavrl_ppl.planning import jax_backend as planning

    return q_fn(planning.expected_reward(theta, dynamics, groups))


def section(command, info, args, q_rows, rows, results_path) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{command}`. Settings: {args.num_chains} chains x {args.num_samples} draws after "
        f"{args.num_warmup} warm-up, max tree depth {args.max_tree_depth} ({args.warmup_max_tree_depth} in warm-up), "
        f"target accept {args.target_accept}; "
        "data = paper allocation pref 64 / demo 1 / rating 64 / stop 256, `np.random.default_rng(seed)`, "
        f"stop lapse {args.stop_lapse} (0 = the paper's model); "
        "score = normalised score of the greedy policy for the posterior-mean reward; wall = data simulation + "
        "NUTS (compilation included) + log-likelihood + InferenceData; start-up = the part of it before sampling "
        f"({MODE_SEARCHES} Adam mode searches, Hessian, compilation: `init_seconds`); log-density R-hat = rank R-hat "
        "of the chains' log density (chains in separate basins).",
        "",
        f"Machine: {info['nproc']} cores (`nproc`), {info['cpu']}, Python {info['python']}, jax {info['jax']}, "
        f"numpyro {info['numpyro']}, {info['devices']} XLA host devices, {info['platform']}. "
        f"Load average at start: {info['load']}. Recorded {datetime.now():%Y-%m-%d %H:%M}.",
        "",
        "Q* inside the model (value and gradient of `sum(sin(Q*))` w.r.t. the 100 state rewards, median of 5 x 200 "
        "calls; error = sup-norm distance to numpy `value_iteration(tol=1e-13)` over 5 N(0,1) rewards):",
        "",
        "| p_rand | scheme | value + gradient | max error |",
        "|---:|---|---:|---:|",
        *[f"| {r['p_rand']} | {r['scheme']} | {r['ms']:.3f} ms | {r['error']:.1e} |" for r in q_rows],
        "",
        "| env | seed | R-hat max | log-density R-hat | bulk ESS min | tail ESS min | divergences | max depth "
        "| mean steps | step size | score | EPIC | start-up | wall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['env']} | {r['seed']} | {r['rhat_max']:.3f} | {r['rhat_lp']:.3f} | {r['ess_bulk_min']:.0f} "
            f"| {r['ess_tail_min']:.0f} | {r['divergences']} | {r['tree_depth_max']} | {r['mean_steps']:.0f} "
            f"| {r['step_size_mean']:.4f} | {r['score']:.1f} | {r['epic']:.3f} | {r['init_seconds']:.0f} s "
            f"| {r['wall']:.0f} s |"
        )
    lines += [
        "",
        "Per env: mean ± standard error over the seeds (targets: R-hat <= 1.01, bulk ESS >= 400, 0 divergences, "
        "score >= 100 cliff/sparse and >= 95 trap, wall <= 60 s):",
        "",
        "| env | runs | R-hat max (worst) | bulk ESS min (worst) | runs with divergences | divergences | score "
        "| EPIC | wall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for env in dict.fromkeys(r["env"] for r in rows):
        sub = [r for r in rows if r["env"] == env]
        lines.append(
            f"| {env} | {len(sub)} | {max(r['rhat_max'] for r in sub):.3f} | "
            f"{min(r['ess_bulk_min'] for r in sub):.0f} | {sum(r['divergences'] > 0 for r in sub)} | "
            f"{mean_se([r['divergences'] for r in sub], 1)} | {mean_se([r['score'] for r in sub], 1)} | "
            f"{mean_se([r['epic'] for r in sub], 3)} | {mean_se([r['wall'] for r in sub], 0)} s |"
        )
    notes = kept_notes(SECTION, results_path)
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
