"""Amortized SVI for the joint feedback model: building the model, fitting it, posterior draws.

The pieces: :class:`~mavrl_ppl.inference.settings.SVISettings` (every setting), :func:`build_model` (the model a
feedback set and the settings call for), :func:`~mavrl_ppl.inference.data.split_feedback` and
:class:`~mavrl_ppl.inference.data.Minibatches` (the data), :class:`~mavrl_ppl.inference.training.Trainer` (the loop,
validation, early stopping and checkpoints); :func:`fit_svi` runs them in order.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyro
import torch
import xarray as xr

from mavrl_ppl.envs.tabular import TabularMDP
from mavrl_ppl.feedback.base import get_feedback_type
from mavrl_ppl.feedback.teachers import one_hot_features
from mavrl_ppl.inference.data import Minibatches, split_feedback
from mavrl_ppl.inference.settings import Q_MODELS, SVISettings
from mavrl_ppl.inference.training import OnEvaluate, Trainer, TrainingDivergedError
from mavrl_ppl.models.joint import JointFeedbackModel
from mavrl_ppl.models.networks import transition_features
from mavrl_ppl.models.sites import gaussian_draws
from mavrl_ppl.planning.torch_backend import ExactPlanner

__all__ = [
    "Q_MODELS",
    "SVIResult",
    "SVISettings",
    "TrainingDivergedError",
    "build_model",
    "build_planner",
    "fit_svi",
    "posterior_draws",
]


class SVIResult(NamedTuple):
    """The outcome of :func:`fit_svi`.

    Attributes:
        model: the fitted model, holding the kept state (the latest validation pass not distinguishable from the
            held-out minimum: :class:`~mavrl_ppl.inference.training.Best`).
        history: ``elbo`` per step (negative ELBO, i.e. the loss) and ``validation`` per evaluation.
        best_step: step of the kept state.
        steps: steps taken in total.
        fit_seconds: wall time of the optimisation.
    """

    model: JointFeedbackModel
    history: dict
    best_step: int
    steps: int
    fit_seconds: float


def build_planner(settings: SVISettings, mdp: TabularMDP) -> ExactPlanner | None:
    """The exact planner ``settings.q_model`` asks for on ``mdp`` (``None``: the Q-network)."""
    if settings.q_model != "planner":
        return None
    if settings.encoder_input != "state" or mdp.num_groups != mdp.num_states:
        raise ValueError("q_model 'planner' needs encoder_input 'state' and one reward group per state")
    return ExactPlanner(mdp.transitions, mdp.reward_groups, mdp.gamma)


def build_model(
    feedback: Mapping[str, xr.Dataset],
    settings: SVISettings,
    *,
    num_items: Mapping[str, int] | None = None,
    mdp: TabularMDP | None = None,
    state_features: np.ndarray | None = None,
) -> JointFeedbackModel:
    """The joint model for a feedback set (its networks initialised from torch's global RNG).

    Args:
        feedback: type name -> data set.
        settings: hyper-parameters.
        num_items: items of each type the plates scale to (the training split); default: every item.
        mdp: the tabular env the data come from (see :func:`fit_svi`).
        state_features: features of every state, for tied rewards (see :func:`fit_svi`).
    """
    planner = None
    if mdp is not None:
        if state_features is None:
            state_features = one_hot_features(mdp.num_states)
        planner = build_planner(settings, mdp)
    any_ds = next(iter(feedback.values()))
    return JointFeedbackModel(
        settings.model_settings(),
        obs_dim=any_ds.sizes["obs_dim"],
        num_actions=int(any_ds.attrs["num_actions"]),
        num_items=num_items if num_items is not None else {name: ds.sizes["item"] for name, ds in feedback.items()},
        attrs={name: ds.attrs for name, ds in feedback.items()},
        state_features=None if state_features is None else torch.as_tensor(state_features),
        planner=planner,
    )


def fit_svi(
    feedback: Mapping[str, xr.Dataset],
    settings: SVISettings,
    *,
    seed: int,
    checkpoint: Path | None = None,
    resume: bool = False,
    state_features: np.ndarray | None = None,
    mdp: TabularMDP | None = None,
    on_evaluate: OnEvaluate | None = None,
    init_params: Mapping[str, torch.Tensor] | None = None,
) -> SVIResult:
    """Fit the joint model to a (validated) feedback set by amortized SVI.

    Args:
        feedback: type name -> data set (DESIGN §2).
        settings: hyper-parameters.
        seed: seeds the split, the minibatches, the networks' initialisation and the ELBO samples.
        checkpoint: where to keep the best state (and the optimiser) during training; ``None`` keeps it in memory.
        resume: continue from ``checkpoint`` if it exists.
        state_features: ``(num_states, obs_dim)`` features of every state of a tabular env: one reward latent per
            state (or state-action pair) shared by all its visits (see :class:`JointFeedbackModel`); ``None``: one
            latent per segment step.
        mdp: the tabular env the data come from: needed for ``settings.q_model == "planner"`` (exact ``Q*``); its
            one-hot state features are used when ``state_features`` is not given. ``None`` (control envs, or data
            without known dynamics): the Q-network, whatever ``q_model`` says.
        on_evaluate: called after every validation pass with the step, the model (current state) and the held-out
            negative log-likelihood per type, e.g. to log, plot or prune (raise to stop the fit).
        init_params: a warm start: an earlier fit's parameters (:func:`~mavrl_ppl.inference.training.snapshot`,
            unconstrained) to start from instead of the initialisation (:meth:`Trainer.warm_start`); a checkpoint
            resumed with ``resume`` wins over them.

    Raises:
        DamagedFileError: with ``resume``, a checkpoint that is damaged, not one of this library (it is read with
            ``torch.load(weights_only=True)``: nothing in it is run) or made for another model.
    """
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    split = split_feedback(feedback, settings.validation_fraction, np.random.default_rng(seed))
    model = build_model(feedback, settings, num_items=split.num_items(), mdp=mdp, state_features=state_features)
    minibatches = Minibatches(split.train, settings.batch_size, torch.Generator().manual_seed(seed))
    trainer = Trainer(model, settings, minibatches, split.held_out, seed=seed, checkpoint=checkpoint,
                      on_evaluate=on_evaluate)
    if init_params is not None:
        trainer.warm_start(init_params)
    start_step = trainer.resume() if resume else 0
    t0 = time.perf_counter()
    steps = trainer.run(start_step)
    return SVIResult(model, trainer.history, trainer.best.step, steps, time.perf_counter() - t0)


def posterior_draws(
    model: JointFeedbackModel,
    reference_obs: np.ndarray,
    num_samples: int,
    generator: torch.Generator,
) -> tuple[np.ndarray, tuple[str, ...], dict[str, np.ndarray]]:
    """Draw rewards from the guide on a reference set of inputs, and the nuisance parameters.

    Args:
        model: a fitted model.
        reference_obs: ``(P, obs_dim)`` features of the reference states (every state of a tabular env).
        num_samples: draws S.
        generator: torch generator for the draws.

    Returns:
        ``reward`` of shape ``(1, S, P)`` (encoder on states) or ``(1, S, P, A)`` (on state-action pairs), its dims
        ``("state",)`` / ``("state", "action")``, and nuisance draws by site, each ``(1, S, ...)``.
    """
    obs = torch.as_tensor(reference_obs, dtype=torch.get_default_dtype())
    A = model.num_actions
    with torch.no_grad():
        if model.encoder_input == "state":
            feats, dims = obs, ("state",)
        elif model.encoder_input == "state_action":
            obs_a = obs[:, None, :].expand(-1, A, -1)
            actions = torch.arange(A).expand(obs.shape[0], A)
            feats = transition_features(obs_a, actions, obs_a, A, "state_action")
            dims = ("state", "action")
        else:
            raise ValueError("posterior draws on a state grid need encoder_input 'state' or 'state_action'")
        if getattr(model.rewards, "guide", "meanfield") != "meanfield":  # correlated draws over the reward groups
            if model.rewards.num_states != obs.shape[0]:
                raise ValueError(f"a {model.rewards.guide} guide draws every state's reward: expected "
                                 f"{model.rewards.num_states} reference states, got {obs.shape[0]}")
            draws = model.rewards.group_draws(num_samples, generator)
            reward = draws.reshape(num_samples, *feats.shape[:-1])[None].double().numpy()
        else:
            reward = gaussian_draws(*model.encoder(feats), num_samples, generator)[None].double().numpy()
        nuisance = {}
        for name in model.attrs:
            ft = get_feedback_type(name)
            for n in ft.free_nuisance(model.attrs[name]):
                loc = pyro.param(f"{ft.site(n)}_z_loc").detach()
                scale = pyro.param(f"{ft.site(n)}_z_scale").detach()
                z = gaussian_draws(loc, scale, num_samples, generator)
                nuisance[ft.site(n)] = n.transform(z)[None].double().numpy()
    return reward, dims, nuisance
