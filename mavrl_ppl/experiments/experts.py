"""Expert teachers for the control envs: train an SB3 DQN, measure its greedy return, save it as package data.

``python -m mavrl_ppl.experiments.experts --env CartPole-v1 [--timesteps N] [--seed S]`` trains a DQN with the
hyper-parameters of :data:`DQN_SETTINGS` (the well-known rl-baselines3-zoo DQN settings for these envs), keeps the
checkpoint with the best mean greedy return on a few evaluation episodes seen during training (the expert is the
simulated teacher: it may know the true reward), measures the kept network's greedy return on ``--episodes`` fresh
episodes, and writes ``mavrl_ppl/experts/<env>.zip`` plus a record in ``mavrl_ppl/experts/experts.json`` from which
``mavrl_ppl/experts/README.md`` is regenerated. The zips are committed, so fitting never needs retraining.

Boltzmann teachers act with ``softmax(beta * Q)``, ``Q`` the expert's ``q_net`` output
(:class:`mavrl_ppl.feedback.control_teacher.ControlTeacher`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mavrl_ppl.envs.experts import EXPERTS_DIR, expert_path, load_expert  # noqa: F401 (re-exported)

#: The zoo's Acrobot-v1 settings; LunarLander-v3 uses the same ones here.
_ACROBOT_LIKE: dict[str, Any] = {
    "n_timesteps": 100_000,
    "learning_rate": 6.3e-4,
    "batch_size": 128,
    "buffer_size": 50_000,
    "learning_starts": 0,
    "gamma": 0.99,
    "target_update_interval": 250,
    "train_freq": 4,
    "gradient_steps": -1,
    "exploration_fraction": 0.12,
    "exploration_final_eps": 0.1,
    "net_arch": [256, 256],
}

#: DQN hyper-parameters per env (rl-baselines3-zoo's ``dqn.yml`` for CartPole-v1, Acrobot-v1 and LunarLander),
#: with the default budget ``n_timesteps``. ``net_arch`` stays at the zoo's [256, 256].
DQN_SETTINGS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "n_timesteps": 50_000,
        "learning_rate": 2.3e-3,
        "batch_size": 64,
        "buffer_size": 100_000,
        "learning_starts": 1000,
        "gamma": 0.99,
        "target_update_interval": 10,
        "train_freq": 256,
        "gradient_steps": 128,
        "exploration_fraction": 0.16,
        "exploration_final_eps": 0.04,
        "net_arch": [256, 256],
    },
    "Acrobot-v1": _ACROBOT_LIKE,
    "LunarLander-v3": dict(_ACROBOT_LIKE),
}


def greedy_returns(model, env_id: str, episodes: int, seed: int) -> np.ndarray:
    """Undiscounted TRUE returns of ``model``'s greedy policy on ``episodes`` episodes (vectorised over envs).

    Args:
        model: anything with SB3's ``predict(obs, deterministic=True)``.
        env_id: gymnasium id.
        episodes: number of complete episodes.
        seed: seeds the episodes' initial states (episode ``i`` of env ``j`` is reproducible).
    """
    from mavrl_ppl.analysis.retrain import evaluate_true_return

    return evaluate_true_return(model, env_id, episodes, seed)


def train_expert(
    env_id: str,
    *,
    timesteps: int | None = None,
    seed: int = 0,
    eval_every: int = 10_000,
    eval_episodes: int = 10,
    progress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Train a DQN expert and keep the checkpoint with the best mean greedy return seen at the evaluations.

    Args:
        env_id: one of :data:`DQN_SETTINGS`.
        timesteps: environment steps (default: the settings' ``n_timesteps``).
        seed: seeds the DQN and its env.
        eval_every: environment steps between checkpoint evaluations.
        eval_episodes: greedy episodes per checkpoint evaluation.
        progress: show SB3's progress bar.

    Returns:
        ``(model, info)`` with ``info`` holding the settings, the timesteps, the wall time and the evaluation trace.
    """
    import gymnasium as gym
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    settings = dict(DQN_SETTINGS[env_id])
    budget = int(timesteps or settings.pop("n_timesteps"))
    settings.pop("n_timesteps", None)
    net_arch = settings.pop("net_arch")
    model = DQN("MlpPolicy", gym.make(env_id), policy_kwargs={"net_arch": net_arch}, seed=seed, device="cpu",
                verbose=0, **settings)
    trace: list[tuple[int, float]] = []
    best: dict[str, Any] = {"score": -np.inf, "state": None, "step": 0}

    class KeepBest(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every == 0:
                self._evaluate()
            return True

        def _evaluate(self) -> None:
            score = float(greedy_returns(model, env_id, eval_episodes, seed + 10_000 + len(trace)).mean())
            trace.append((int(self.num_timesteps), score))
            if score >= best["score"]:
                best.update(score=score, step=int(self.num_timesteps),
                            state={k: v.clone() for k, v in model.policy.state_dict().items()})

        def _on_training_end(self) -> None:
            if not trace or trace[-1][0] != self.num_timesteps:
                self._evaluate()

    t0 = time.perf_counter()
    model.learn(total_timesteps=budget, callback=KeepBest(), progress_bar=progress)
    model.policy.load_state_dict(best["state"])
    wall = time.perf_counter() - t0
    info = {"env": env_id, "seed": seed, "timesteps": budget, "train_seconds": wall, "kept_step": best["step"],
            "eval_trace": trace, "settings": {**settings, "net_arch": net_arch}}
    return model, info


def strip_optimizer(model) -> None:
    """Replace the DQN's optimizer by a fresh one (no Adam moments), halving the saved zip; the expert is only
    ever used for its Q-values (continuing its training would restart Adam's moment estimates)."""
    policy = model.policy
    policy.optimizer = policy.optimizer_class(policy.q_net.parameters(), lr=model.lr_schedule(1.0),
                                              **policy.optimizer_kwargs)


def save_expert(model, env_id: str) -> Path:
    """Write ``model`` (optimizer stripped) atomically to :func:`expert_path`."""
    strip_optimizer(model)
    EXPERTS_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=EXPERTS_DIR) as tmp:
        staged = Path(tmp) / "expert.zip"
        model.save(staged)
        staged.replace(expert_path(env_id))
    return expert_path(env_id)


def _write_readme(records: dict[str, dict[str, Any]]) -> None:
    lines = [
        "# Expert teachers (committed; fitting never retrains them)",
        "",
        "Each zip is a stable-baselines3 DQN (`DQN.load(path)`), trained by",
        "`python -m mavrl_ppl.experiments.experts --env <ENV> [--timesteps N] [--seed S]` with the",
        "rl-baselines3-zoo DQN hyper-parameters listed in `mavrl_ppl.experiments.experts.DQN_SETTINGS`",
        "(net_arch [256, 256], CPU, one torch thread; the optimizer state is not saved). During training the",
        "greedy policy is evaluated every 10k steps on 10 episodes and the best checkpoint is kept (the expert is",
        "the simulated teacher, so it may use the true reward). The return below is the kept network's greedy,",
        "undiscounted TRUE return on fresh episodes. Wall times were measured on a 2-core machine shared with other",
        "jobs (load average ~5), so they overstate the cost on an idle machine.",
        "Simulated teachers act with softmax(beta * Q), Q = the expert's `q_net` output.",
        "",
        "| env | timesteps | seed | kept step | train wall time | episodes | greedy return mean ± sd | recorded |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for env_id, r in sorted(records.items()):
        lines.append(
            f"| {env_id} | {r['timesteps']} | {r['seed']} | {r['kept_step']} | {r['train_seconds']:.0f} s | "
            f"{r['episodes']} | {r['return_mean']:.1f} ± {r['return_sd']:.1f} | {r['recorded']} |"
        )
    lines += ["", "Full records (settings, evaluation trace during training): `experts.json`.", ""]
    (EXPERTS_DIR / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mavrl_ppl.experiments.experts", description=__doc__.split("\n\n")[0])
    p.add_argument("--env", required=True, choices=sorted(DQN_SETTINGS))
    p.add_argument("--timesteps", type=int, default=None, help="environment steps (default: the env's setting)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=50, help="fresh greedy episodes for the recorded return")
    p.add_argument("--eval-every", type=int, default=10_000, help="steps between checkpoint evaluations")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    model, info = train_expert(args.env, timesteps=args.timesteps, seed=args.seed, eval_every=args.eval_every,
                               progress=args.progress)
    returns = greedy_returns(model, args.env, args.episodes, seed=args.seed + 1_000_000)
    info.update(episodes=args.episodes, return_mean=float(returns.mean()), return_sd=float(returns.std(ddof=1)),
                recorded=datetime.now(UTC).strftime("%Y-%m-%d"))
    save_expert(model, args.env)
    records_path = EXPERTS_DIR / "experts.json"
    records = json.loads(records_path.read_text()) if records_path.exists() else {}
    records[args.env] = info
    records_path.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    _write_readme(records)
    print(f"{args.env}: greedy return {info['return_mean']:.1f} ± {info['return_sd']:.1f} over {args.episodes} "
          f"episodes; trained {info['timesteps']} steps in {info['train_seconds']:.0f} s; "
          f"wrote {expert_path(args.env)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
