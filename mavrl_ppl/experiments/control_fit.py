"""One control-env run: simulate (or load) feedback, fit SVI, draw the posterior, retrain PPO, evaluate the true return.

:func:`fit_control` is what ``python -m mavrl_ppl.fit --env CartPole-v1`` (Acrobot-v1, LunarLander-v3) runs:

1. simulate: the committed expert DQN is the Boltzmann teacher (:class:`~mavrl_ppl.feedback.control_teacher.
   ControlTeacher`), segments of 32 steps, the paper's allocation unless ``config["feedback"]`` says otherwise; or
   the user's ``feedback.nc``;
2. fit: :func:`~mavrl_ppl.inference.svi.fit_svi` with the encoder on observation + one-hot action;
3. posterior: guide draws of the reward on a fixed sample of visited (obs, action) points -> ``posterior.nc``
   (``reward`` dims (chain, draw, point); the points are the ``points`` group);
4. retrain: SB3 PPO on the posterior-mean reward (:func:`~mavrl_ppl.experiments.retrain.retrain_ppo`), for a fixed
   budget; the final policy is kept (the true reward selects nothing);
5. evaluate: mean undiscounted TRUE return over many episodes, normalised by REFERENCE §4.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

#: PPO budgets (environment steps) per env when ``config["ppo_timesteps"]`` is not set.
DEFAULT_PPO_TIMESTEPS = {"CartPole-v1": 100_000, "Acrobot-v1": 200_000, "LunarLander-v3": 1_000_000}
#: SVI settings of control runs where the user sets nothing (one documented set for all three envs; fit.py applies
#: them below the config file and the command line). Why they differ from the tabular defaults: every segment step
#: has its own reward latent, so at kl_weight 1 the N(0, 1) prior of 32-64 steps outweighs each label and the
#: posterior mean barely moves (measured on CartPole: alive/absorbing reward gap < 0.03); td_weight 0.1 lets the
#: demonstrations and stops (which see the reward only through the Q-network) shape the reward without the
#: Bellman term dominating the fit. ``q_model`` is stated for the record: without known dynamics SVI always uses the
#: Q-network (``fit_svi(mdp=None)``), and config.json should say so.
CONTROL_SVI = {"q_model": "network", "encoder_input": "state_action", "kl_weight": 0.05, "td_weight": 0.1,
               "max_steps": 600, "batch_size": 64, "eval_every": 25, "patience": 8}
#: Simulator settings on control envs (REFERENCE §3): segments of 32 steps; rationalities as on the grids.
CONTROL_SIMULATION = {"pref": {"segment_length": 32}, "rating": {"segment_length": 32}, "stop": {"segment_length": 32}}


class ControlDataError(ValueError):
    """Bad input for a control run, found before any fitting: a feedback file that does not fit the env (action
    count, observation size), unparseable or all-zero counts, or feedback the teacher cannot simulate."""


class ControlRun(NamedTuple):
    """What :func:`fit_control` returns: the posterior, the metrics, and the feedback set that was fitted."""

    idata: Any
    metrics: dict[str, Any]
    feedback: dict[str, Any]


def control_svi_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every SVISettings field for a control run: package defaults < :data:`CONTROL_SVI` < ``overrides``."""
    import dataclasses

    from mavrl_ppl.inference.svi import SVISettings

    return dataclasses.asdict(SVISettings(**{**CONTROL_SVI, **(overrides or {})}))


def control_feedback(env_id: str, counts: Mapping[str, int], seed: int,
                     behaviour_beta: float | tuple[float, ...] | None = None,
                     settings: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Simulate a control feedback set with the committed expert as teacher (numpy seed ``seed``); the behaviour
    policy of queried segments defaults to the env's (``ControlEnvSpec.behaviour_beta``); ``settings`` (type ->
    simulator settings) override :data:`CONTROL_SIMULATION`."""
    from mavrl_ppl.experiments.experts import load_expert
    from mavrl_ppl.feedback.control_teacher import ControlTeacher, expert_q_function
    from mavrl_ppl.feedback.data import simulate_feedback

    teacher = ControlTeacher(env_id, expert_q_function(load_expert(env_id)), behaviour_beta=behaviour_beta)
    merged = {name: {**CONTROL_SIMULATION.get(name, {}), **(settings or {}).get(name, {})}
              for name in {**CONTROL_SIMULATION, **(settings or {})}}
    return simulate_feedback(teacher, counts, np.random.default_rng(seed), merged)


def check_feedback_matches(feedback: Mapping[str, Any], env_id: str, path: str) -> None:
    """Raise :class:`ControlDataError` if a feedback set cannot belong to ``env_id``."""
    import gymnasium as gym

    probe = gym.make(env_id)
    num_actions, obs_dim = int(probe.action_space.n), int(probe.observation_space.shape[0])
    probe.close()
    for name, ds in feedback.items():
        if int(ds.attrs["num_actions"]) != num_actions:
            raise ControlDataError(f"{path}: group {name!r}: num_actions {ds.attrs['num_actions']} does not match "
                                   f"env {env_id} ({num_actions})")
        if ds.sizes["obs_dim"] != obs_dim:
            raise ControlDataError(f"{path}: group {name!r}: obs_dim {ds.sizes['obs_dim']} does not match env "
                                   f"{env_id} ({obs_dim})")


def _behaviour_beta(feedback: Mapping[str, Any]) -> list[float] | None:
    """The queried segments' behaviour betas recorded by the simulator (``None`` for data without the record)."""
    for ds in feedback.values():
        if "behaviour_beta" in ds.attrs:
            return [float(b) for b in np.atleast_1d(ds.attrs["behaviour_beta"])]
    return None


def reward_function(model) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The posterior-mean reward ``E_q[r | obs, a] = mu_phi(obs, a)`` of a fitted model, as a numpy function."""
    import torch

    from mavrl_ppl.models.networks import transition_features

    encoder, num_actions = model.encoder, model.num_actions

    def reward_fn(obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            o = torch.as_tensor(np.asarray(obs), dtype=torch.get_default_dtype())
            a = torch.as_tensor(np.asarray(action), dtype=torch.int64)
            mu, _ = encoder(transition_features(o, a, o, num_actions, "state_action"))
        return mu.double().numpy()

    return reward_fn


def fit_control(config: Mapping[str, Any], work_dir: Path, progress: bool) -> ControlRun:
    """Run steps 1-5 of the module docstring for ``config["env"]``.

    Args:
        config: resolved settings: ``env``, ``seed``, ``feedback`` (counts string), ``data`` (path or None),
            ``svi`` (SVISettings fields, e.g. :func:`control_svi_config`; ``encoder_input`` must be
            ``state_action``), ``ppo_timesteps`` (None: :data:`DEFAULT_PPO_TIMESTEPS`),
            ``eval_episodes``, ``num_points`` (posterior reference points), ``behaviour_beta`` (optional; default
            the env's).
        work_dir: where the loss-curve plot goes.
        progress: progress bars.

    Returns:
        :class:`ControlRun`; ``metrics`` has ``mean_return``, ``normalized_score``, ``ppo_timesteps`` and the time
        split ``simulate_seconds``, ``fit_seconds``, ``retrain_seconds``, ``evaluate_seconds``.

    Raises:
        ControlDataError: bad input (see the class), before any fitting.
        mavrl_ppl.feedback.data.FeedbackDataError: an invalid ``--data`` file.
    """
    import torch
    import xarray as xr

    from mavrl_ppl.analysis.plots import plot_loss_curve
    from mavrl_ppl.analysis.posterior import build_inference_data
    from mavrl_ppl.envs.control import control_spec, normalized_score, visited_points
    from mavrl_ppl.experiments.retrain import evaluate_true_return, retrain_ppo
    from mavrl_ppl.feedback.base import registered
    from mavrl_ppl.feedback.data import load_feedback, parse_counts
    from mavrl_ppl.inference.svi import SVISettings, TrainingDivergedError, fit_svi, posterior_draws

    torch.set_num_threads(1)
    env_id, seed = config["env"], int(config["seed"])
    spec = control_spec(env_id)

    if config["svi"].get("encoder_input") != "state_action":  # REFERENCE §3: raw observation + one-hot action
        got = config["svi"].get("encoder_input")
        raise ControlDataError(f"control runs need encoder_input state_action, got {got}")
    t0 = time.perf_counter()
    if config.get("data"):
        feedback = load_feedback(config["data"])
        check_feedback_matches(feedback, env_id, str(config["data"]))
    else:
        try:
            counts = parse_counts(config["feedback"], registered())
        except ValueError as exc:
            raise ControlDataError(str(exc)) from None
        beta = config.get("behaviour_beta")  # None: the env's setting
        try:
            feedback = control_feedback(env_id, counts, seed, tuple(beta) if isinstance(beta, list) else beta,
                                        config.get("simulate"))
        except KeyError as exc:  # a simulator setting for a type that is not registered
            raise ControlDataError(f"--simulate: {exc.args[0]}") from None
        except ValueError as exc:  # a bad simulator setting, or a stop teacher that cannot calibrate lambda
            raise ControlDataError(f"cannot simulate feedback on {env_id}: {exc}") from None
        if not feedback:
            raise ControlDataError("no feedback to fit: every count is zero")
    simulate_seconds = time.perf_counter() - t0

    settings = SVISettings(**{**config["svi"], "progress_bar": progress})
    try:
        result = fit_svi(feedback, settings, seed=seed, checkpoint=work_dir / "checkpoint.pt")
    except TrainingDivergedError as exc:
        raise RuntimeError(str(exc)) from exc
    (work_dir / "checkpoint.pt").unlink(missing_ok=True)

    obs, action, absorbing = visited_points(feedback, int(config.get("num_points", 1000)),
                                            np.random.default_rng(seed))
    per_action, _, nuisance = posterior_draws(result.model, obs, settings.num_posterior_samples,
                                              torch.Generator().manual_seed(seed))
    reward = np.take_along_axis(per_action, action[None, None, :, None], axis=-1)[..., 0]  # (1, S, P)
    mean_reward = reward.mean((0, 1))
    offset = float(mean_reward[absorbing].mean()) if absorbing.any() else 0.0

    ppo_timesteps = int(config.get("ppo_timesteps") or DEFAULT_PPO_TIMESTEPS[env_id])
    t1 = time.perf_counter()
    policy = retrain_ppo(env_id, reward_function(result.model), ppo_timesteps, seed, offset=offset,
                         progress=progress)
    retrain_seconds = time.perf_counter() - t1
    episodes = int(config.get("eval_episodes", 100))
    t2 = time.perf_counter()
    returns = evaluate_true_return(policy, env_id, episodes, seed=10_000 + 1000 * seed)
    evaluate_seconds = time.perf_counter() - t2

    h = result.history
    elbo = xr.Dataset({"loss": ("step", np.asarray(h["elbo"])),
                       "validation_nll": ("evaluation", np.asarray(h["validation"])),
                       "validation_step": ("evaluation", np.asarray(h["validation_step"]))})
    points = xr.Dataset({"obs": (("point", "obs_dim"), obs), "action": ("point", action),
                         "absorbing": ("point", absorbing)})
    metrics = {
        "inference": "svi",
        "env": env_id,
        "seed": seed,
        "mean_return": float(returns.mean()),
        "return_sd": float(returns.std(ddof=1)) if len(returns) > 1 else 0.0,
        "normalized_score": normalized_score(env_id, float(returns.mean())),
        "ppo_timesteps": ppo_timesteps,
        "eval_episodes": episodes,
        "reward_offset": offset,
        "behaviour_beta": _behaviour_beta(feedback),
        "simulate_seconds": simulate_seconds,
        "fit_seconds": result.fit_seconds,
        "retrain_seconds": retrain_seconds,
        "evaluate_seconds": evaluate_seconds,
        "steps": result.steps,
        "best_step": result.best_step,
    }
    idata = build_inference_data(
        reward=reward, reward_dims=("point",), nuisance=nuisance, sample_stats=None, feedback=feedback, mdp=None,
        attrs={"inference": "svi", "seed": seed, "env": env_id, "gamma": spec.gamma, "fit_seconds": result.fit_seconds,
               "best_step": result.best_step, "steps": result.steps, "reward_offset": offset},
        extra_groups={"elbo": elbo, "points": points},
    )
    plot_loss_curve(h["elbo"], h["validation"], h["validation_step"], result.best_step, work_dir / "loss_curve.png")
    return ControlRun(idata, metrics, feedback)
