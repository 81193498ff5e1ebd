"""Amortized SVI for the joint feedback model: training, validation, early stopping, checkpoints, posterior draws."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyro
import pyro.util
import torch
import xarray as xr
from pyro import poutine
from pyro.infer import SVI, TraceMeanField_ELBO
from tqdm.auto import tqdm

from mavrl_ppl.envs.tabular import TabularMDP
from mavrl_ppl.feedback.base import get_feedback_type
from mavrl_ppl.feedback.teachers import one_hot_features
from mavrl_ppl.inference.data import CyclingBatches, split_items, take, to_tensors
from mavrl_ppl.models.joint import BELLMAN_TARGETS, JointFeedbackModel, ModelWeights
from mavrl_ppl.models.networks import ENCODER_INPUTS, transition_features
from mavrl_ppl.planning.torch_backend import ExactPlanner

#: How the likelihoods get action values on a tabular env (``SVISettings.q_model``).
Q_MODELS = ("planner", "network")


@dataclass
class SVISettings:
    """Every setting of an SVI fit (one documented default set for all grids)."""

    encoder_input: str = "state"  # what the encoder sees: state | state_action | transition
    hidden: int = 64  # hidden width of the encoder and the Q-network
    layers: int = 2  # hidden layers of both networks
    learning_rate: float = 0.03  # AdamW step size at the start
    lr_decay: float = 0.1  # learning rate at max_steps as a fraction of learning_rate (exponential schedule)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    clip_norm: float = 1.0  # gradient-norm clip, applied per parameter tensor (Pyro's clip_args)
    batch_size: int = 256  # items of each feedback type per step (the paper grids' data sets fit whole)
    max_steps: int = 200  # optimisation steps at most
    eval_every: int = 20  # steps between validation passes
    patience: int = 5  # validation passes without improvement before stopping
    validation_fraction: float = 0.2  # share of each type's items held out for validation
    num_particles: int = 1  # ELBO particles per step
    kl_weight: float = 1.0  # scale on the reward prior/guide sites (1 = exact ELBO; see models.joint)
    td_weight: float = 1.0  # scale on the Bellman-consistency sites
    bellman_scale: float = 0.5  # std of the Bellman observation y ~ Normal(r, bellman_scale)
    q_model: str = "planner"  # tabular envs: planner (exact Q*(r), the NUTS model) | network (MAVRL's Q-network)
    q_horizon_scale: bool = False  # Q-network mode: multiply the Q-network's output by 1 / (1 - gamma)
    bellman_target: str = "max"  # next-step value in the TD target: max (max_a' Q(s', a')) | data (Q(s', a'_data))
    num_posterior_samples: int = 1000  # guide draws stored in posterior.nc
    progress_bar: bool = True  # show a tqdm bar with the ELBO

    def __post_init__(self) -> None:
        choices = {"encoder_input": ENCODER_INPUTS, "q_model": Q_MODELS, "bellman_target": BELLMAN_TARGETS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("hidden", "batch_size", "max_steps", "eval_every", "patience", "num_particles",
                     "num_posterior_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.layers < 0:
            raise ValueError(f"layers must be >= 0, got {self.layers}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must lie in [0, 1), got {self.validation_fraction}")
        if not (self.learning_rate > 0 and 0 < self.lr_decay <= 1):
            raise ValueError(f"need learning_rate > 0 and 0 < lr_decay <= 1, got {self.learning_rate}, {self.lr_decay}")
        for name in ("kl_weight", "td_weight", "weight_decay", "clip_norm", "bellman_scale"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the parameters were reset to the last good (best) state."""


class SVIResult(NamedTuple):
    """The outcome of :func:`fit_svi`.

    Attributes:
        model: the fitted model, holding the best state (by validation loss).
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


def _snapshot() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def _restore(snapshot: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in pyro.get_param_store().named_parameters():
            v.copy_(snapshot[k])


def fit_svi(
    feedback: Mapping[str, xr.Dataset],
    settings: SVISettings,
    *,
    seed: int,
    checkpoint: Path | None = None,
    resume: bool = False,
    state_features: np.ndarray | None = None,
    mdp: TabularMDP | None = None,
    on_evaluate: Callable[[int, JointFeedbackModel, dict[str, float]], None] | None = None,
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
    """
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    rng = np.random.default_rng(seed)
    names = list(feedback)
    tensors = {name: to_tensors(name, ds) for name, ds in feedback.items()}
    splits = {name: split_items(feedback[name].sizes["item"], settings.validation_fraction, rng) for name in names}
    train = {name: take(tensors[name], torch.from_numpy(splits[name][0])) for name in names}
    valid_sets = {
        name: take(tensors[name], torch.from_numpy(splits[name][1])) for name in names if len(splits[name][1])
    }
    any_ds = next(iter(feedback.values()))
    planner = None
    if mdp is not None:
        if state_features is None:
            state_features = one_hot_features(mdp.num_states)
        if settings.q_model == "planner":
            if settings.encoder_input != "state" or mdp.num_groups != mdp.num_states:
                raise ValueError("q_model 'planner' needs encoder_input 'state' and one reward group per state")
            planner = ExactPlanner(mdp.transitions, mdp.reward_groups, mdp.gamma)
    model = JointFeedbackModel(
        obs_dim=any_ds.sizes["obs_dim"],
        num_actions=int(any_ds.attrs["num_actions"]),
        num_items={name: len(splits[name][0]) for name in names},
        attrs={name: ds.attrs for name, ds in feedback.items()},
        encoder_input=settings.encoder_input,
        hidden=settings.hidden,
        layers=settings.layers,
        weights=ModelWeights(settings.kl_weight, settings.td_weight, settings.bellman_scale),
        state_features=None if state_features is None else torch.as_tensor(state_features),
        bellman_target=settings.bellman_target,
        q_horizon_scale=settings.q_horizon_scale,
        planner=planner,
    )
    batches = CyclingBatches({name: len(splits[name][0]) for name in names}, settings.batch_size,
                             torch.Generator().manual_seed(seed))
    # AdamW with an exponential learning-rate decay to lr_decay * learning_rate at max_steps: the single-draw ELBO
    # gradient is noisy, and a shrinking step lets the parameters settle instead of jittering around the optimum.
    optim = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.AdamW,
         "optim_args": {"lr": settings.learning_rate, "weight_decay": settings.weight_decay},
         "gamma": settings.lr_decay ** (1.0 / settings.max_steps)},
        clip_args={"clip_norm": settings.clip_norm},
    )
    svi = SVI(model.model, model.guide, optim, TraceMeanField_ELBO(num_particles=settings.num_particles))

    def minibatch() -> dict:
        out = {}
        for name in names:
            idx = batches.next(name)
            whole = len(idx) == len(splits[name][0])  # the full training set: no copy needed
            out[name] = (idx, train[name] if whole else take(train[name], idx))
        return out

    held_out = valid_sets or train  # nothing held out: fall back to the training fit of every type
    held_out_items = {n: int(b["valid"].shape[0]) for n, b in held_out.items()}

    def validation_losses() -> dict[str, float]:
        """Mean held-out negative log predictive per item, by type."""
        with torch.no_grad():
            return {n: float(-model.predictive_log_likelihood(n, b).mean()) for n, b in held_out.items()}

    # Create every parameter once (lazily, as Pyro does) so a checkpoint can be loaded into them.
    with poutine.block():
        first = minibatch()
        svi.evaluate_loss(first)
    history: dict = {"elbo": [], "validation": [], "validation_step": []}
    start_step, best_loss, best_step, stale = 0, math.inf, 0, 0
    best = _snapshot()
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, weights_only=False)
        _restore(state["params"])
        optim.set_state(state["optim"])
        batches.load_state(state["batches"])
        history, start_step = state["history"], state["step"]
        pyro.util.set_rng_state(state["rng"])  # the ELBO's draws continue where they stopped: exact resumption
        best, best_loss, best_step, stale = state["best"], state["best_loss"], state["best_step"], state["stale"]

    def save(step: int) -> None:
        if checkpoint is None:
            return
        tmp = Path(checkpoint).with_suffix(".tmp")
        torch.save(
            {"params": _snapshot(), "optim": optim.get_state(), "batches": batches.state(), "history": history,
             "step": step, "rng": pyro.util.get_rng_state(), "best": best, "best_loss": best_loss,
             "best_step": best_step, "stale": stale,
             "settings": asdict(settings), "seed": seed},
            tmp,
        )
        tmp.replace(checkpoint)

    t0 = time.perf_counter()
    step = start_step
    bar = tqdm(range(start_step, settings.max_steps), desc="SVI", disable=not settings.progress_bar,
               initial=start_step, total=settings.max_steps, leave=False)
    for step in bar:
        try:
            loss = svi.step(minibatch())
        except ValueError:
            # A non-finite parameter makes Pyro's distribution checks raise before any loss exists: same as NaN.
            if all(torch.isfinite(v).all() for _, v in pyro.get_param_store().named_parameters()):
                raise
            loss = math.nan
        optim.step()  # the schedulers' step: decay the learning rate
        if not math.isfinite(loss):
            _restore(best)
            save(step)
            raise TrainingDivergedError(
                f"the loss became {loss} at step {step}; parameters were reset to the best state (step {best_step})"
            )
        history["elbo"].append(loss)
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.max_steps:
            by_type = validation_losses()
            # The held-out set's negative log predictive per item (every item counts once, whatever its type).
            val = sum(held_out_items[n] * v for n, v in by_type.items()) / sum(held_out_items.values())
            for n, v in by_type.items():
                history.setdefault(f"validation_{n}", []).append(v)
            history["validation"].append(val)
            history["validation_step"].append(step + 1)
            if val < best_loss - 1e-6:
                best_loss, best_step, stale, best = val, step + 1, 0, _snapshot()
            else:
                stale += 1
            bar.set_postfix(elbo=f"{-loss:.1f}", val_nll=f"{val:.3f}", refresh=False)
            save(step + 1)
            if on_evaluate is not None:
                on_evaluate(step + 1, model, by_type)
            if stale >= settings.patience:
                break
    bar.close()
    _restore(best)
    return SVIResult(model, history, best_step, step + 1, time.perf_counter() - t0)


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
        mu, sigma = model.encoder(feats)
        eps = torch.randn((num_samples, *mu.shape), generator=generator, dtype=mu.dtype)
        reward = (mu + sigma * eps)[None].double().numpy()
        nuisance = {}
        for name in model.attrs:
            ft = get_feedback_type(name)
            for n in ft.free_nuisance(model.attrs[name]):
                loc = pyro.param(f"{ft.site(n)}_z_loc").detach()
                scale = pyro.param(f"{ft.site(n)}_z_scale").detach()
                z = loc + scale * torch.randn((num_samples, *loc.shape), generator=generator, dtype=loc.dtype)
                nuisance[ft.site(n)] = n.transform(z)[None].double().numpy()
    return reward, dims, nuisance
