"""The committed expert DQNs of the control envs (package data): where they live and how to load one.

They are the simulated teachers of :mod:`mavrl_ppl.feedback.control_teacher`;
``python -m mavrl_ppl.experiments.experts`` trains and saves them.
"""

from __future__ import annotations

from pathlib import Path

EXPERTS_DIR = Path(__file__).resolve().parent.parent / "experts"


def expert_path(env_id: str) -> Path:
    """Where the committed expert of ``env_id`` lives (package data)."""
    return EXPERTS_DIR / f"{env_id}.zip"


def load_expert(env_id: str):
    """The committed expert DQN of ``env_id`` (CPU).

    Raises:
        FileNotFoundError: no expert was trained for this env (names the command that makes one).
    """
    from stable_baselines3 import DQN

    path = expert_path(env_id)
    if not path.exists():
        raise FileNotFoundError(
            f"no expert for {env_id} at {path}; train one with `python -m mavrl_ppl.experiments.experts --env {env_id}`"
        )
    return DQN.load(path, device="cpu")
