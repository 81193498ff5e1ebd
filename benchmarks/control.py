"""Control environments (issue 6): all four feedback types at the paper's allocation, SVI, PPO retraining, true return.

Run from the repository root::

    python benchmarks/control.py --envs CartPole-v1 --seeds 0-4
    python benchmarks/control.py --envs Acrobot-v1 --seeds 0-4 --ppo-timesteps 200000
    python benchmarks/control.py --envs CartPole-v1 --seeds 0 --no-write        # try without touching RESULTS.md

Each run is exactly ``python -m mavrl_ppl.fit --env <ENV> --seed <S>`` (same settings; one documented
hyper-parameter set for every env and seed, never tuned on the true return): simulate the paper's allocation with the
committed expert DQN as teacher, fit SVI (encoder on observation + one-hot action), retrain PPO on the posterior-mean
reward for a fixed budget, evaluate the FINAL policy's true return over ``--eval-episodes`` episodes. Every run's
metrics are kept in ``benchmarks/control_runs.json`` (keyed by env, seed and settings) and this script's section of
RESULTS.md is rewritten from all recorded runs after every run; a ``### Notes`` subsection in it is kept.

Targets (issue 6): normalised score CartPole >= 97, Acrobot >= 95; <= 5 minutes per CartPole seed end to end on a
2-core machine; LunarLander reported as measured.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
from _common import kept_notes, machine, write_section

from mavrl_ppl.experiments.baseline_table import parse_seeds

HEADER = "## Control environments (issue 6)"
RUNS = Path(__file__).resolve().parent / "control_runs.json"
TARGETS = {"CartPole-v1": 97.0, "Acrobot-v1": 95.0}


def run_one(env_id: str, seed: int, ppo_timesteps: int | None, eval_episodes: int, svi: dict) -> dict:
    """One end-to-end run with the command's own code path (:func:`mavrl_ppl.runs.run`); returns its metrics."""
    from mavrl_ppl import runs

    config = runs.resolve_config({"env": env_id, "seed": seed, "svi": svi, "ppo_timesteps": ppo_timesteps,
                                  "eval_episodes": eval_episodes})
    with tempfile.TemporaryDirectory() as tmp:
        result = runs.run(config, Path(tmp) / "run")
    return {**result.metrics, "svi": config["svi"]}


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def section(runs: list[dict], notes: str | None) -> str:
    m = machine()
    commands = "; ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", "?") for r in runs))
    lines = [
        HEADER,
        "",
        f"Commands: {commands}. Each run = `python -m mavrl_ppl.fit --env <ENV> --seed <S>` (paper allocation, all",
        "four types; the committed expert DQN as teacher; SVI with the encoder on observation + one-hot action; PPO on",
        "the posterior-mean reward minus its value in the absorbing state; final PPO policy, never a checkpoint chosen",
        "by the true reward; true undiscounted return; normalised with REFERENCE §4). SVI settings: the package",
        "defaults overridden by `runs.CONTROL_SVI` (the exact values are listed per env below).",
        "",
        f"Machine: {m['nproc']} cores (`nproc`), {m['cpu']}, Python {m['python']}, shared with other work (load "
        f"average at the last write: {m['load']}). Recorded {datetime.now():%Y-%m-%d %H:%M}.",
        "",
        "| env | seeds | normalised score mean ± SE | per seed | mean return | PPO steps | simulate | fit | retrain "
        "| evaluate | total per seed | target |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    by_env: dict[str, list[dict]] = {}
    for r in runs:
        by_env.setdefault(r["env"], []).append(r)
    for env_id, rs in by_env.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        score = np.array([r["normalized_score"] for r in rs])
        ret = np.array([r["mean_return"] for r in rs])

        def t(key: str, rs: list[dict] = rs) -> str:
            return f"{np.mean([r[key] for r in rs]):.0f} s"

        target = TARGETS.get(env_id)
        verdict = "as measured" if target is None else (
            f">= {target:.0f}: {'met' if score.mean() >= target else 'NOT met'}")
        lines.append(
            f"| {env_id} | {len(rs)} | {score.mean():.1f} ± {_se(score):.1f} | "
            f"{', '.join(f'{s:.1f}' for s in score)} | {ret.mean():.1f} | {rs[0]['ppo_timesteps']} | "
            f"{t('simulate_seconds')} | {t('fit_seconds')} | {t('retrain_seconds')} | {t('evaluate_seconds')} | "
            f"{t('total_seconds')} | {verdict} |"
        )
    lines += ["", "Settings per env (identical for every seed; behaviour = the queried segments' policies, 0 = uniform "
              "random, b > 0 = softmax(b * Q_expert), mixed over the stream's envs):", ""]
    for env_id, rs in by_env.items():
        svi = rs[0]["svi"]
        behaviour = sorted({str(r.get("behaviour_beta", "not recorded")) for r in rs})
        lines.append(f"- {env_id}: behaviour {' / '.join(behaviour)}; SVI "
                     + ", ".join(f"{k}={v}" for k, v in sorted(svi.items())))
    if notes:
        lines += ["", notes.rstrip("\n")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", default="CartPole-v1")
    p.add_argument("--seeds", default="0-4")
    p.add_argument("--ppo-timesteps", type=int, default=None, help="default: the env's (runs.DEFAULT_PPO_TIMESTEPS)")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--svi", default="{}", help="JSON of SVISettings overrides of runs.CONTROL_SVI (recorded)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    svi = json.loads(args.svi)
    command = "python benchmarks/control.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    for env_id in args.envs.split(","):
        for seed in parse_seeds([args.seeds]):
            metrics = run_one(env_id, seed, args.ppo_timesteps, args.eval_episodes, svi)
            metrics["command"] = command
            print(json.dumps({k: metrics[k] for k in ("env", "seed", "normalized_score", "mean_return",
                                                      "simulate_seconds", "fit_seconds", "retrain_seconds",
                                                      "evaluate_seconds", "total_seconds")}), flush=True)
            if args.no_write:
                continue
            runs = json.loads(RUNS.read_text()) if RUNS.exists() else []  # re-read: other runs may have written
            runs = [r for r in runs if not (r["env"] == env_id and r["seed"] == seed)] + [metrics]
            RUNS.write_text(json.dumps(runs, indent=1, sort_keys=True, default=float) + "\n")
            write_section(section(runs, kept_notes(HEADER)), HEADER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
