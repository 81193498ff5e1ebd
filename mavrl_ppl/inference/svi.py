"""Amortized SVI for the joint feedback model: training, validation, early stopping, checkpoints, posterior draws."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyro
import torch
import xarray as xr
from pyro import poutine
from pyro.infer import SVI, TraceMeanField_ELBO
from tqdm.auto import tqdm

from mavrl_ppl.feedback.base import get_feedback_type
from mavrl_ppl.inference.data import CyclingBatches, split_items, take, to_tensors
from mavrl_ppl.models.joint import JointFeedbackModel, ModelWeights
from mavrl_ppl.models.networks import transition_features


@dataclass
class SVISettings:
    """Every setting of an SVI fit (one documented default set for all grids)."""

    encoder_input: str = "state"  # what the encoder sees: state | state_action | transition
    hidden: int = 64  # hidden width of the encoder and the Q-network
    layers: int = 2  # hidden layers of both networks
    learning_rate: float = 0.03  # AdamW step size
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    clip_norm: float = 1.0  # gradient-norm clip, applied per parameter tensor (Pyro's clip_args)
    batch_size: int = 64  # items of each feedback type per step
    max_steps: int = 600  # optimisation steps at most
    eval_every: int = 25  # steps between validation passes
    patience: int = 12  # validation passes without improvement before stopping
    validation_fraction: float = 0.2  # share of each type's items held out for validation
    num_particles: int = 1  # ELBO particles per step
    kl_weight: float = 0.05  # scale on the reward prior/guide sites (1 = exact ELBO; see models.joint)
    td_weight: float = 1.0  # scale on the Bellman-consistency sites
    bellman_scale: float = 0.5  # std of the Bellman observation y ~ Normal(r, bellman_scale)
    num_posterior_samples: int = 1000  # guide draws stored in posterior.nc
    progress_bar: bool = True  # show a tqdm bar with the ELBO


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
) -> SVIResult:
    """Fit the joint model to a (validated) feedback set by amortized SVI.

    Args:
        feedback: type name -> data set (DESIGN §2).
        settings: hyper-parameters.
        seed: seeds the split, the minibatches, the networks' initialisation and the ELBO samples.
        checkpoint: where to keep the best state (and the optimiser) during training; ``None`` keeps it in memory.
        resume: continue from ``checkpoint`` if it exists.
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
    model = JointFeedbackModel(
        obs_dim=any_ds.sizes["obs_dim"],
        num_actions=int(any_ds.attrs["num_actions"]),
        num_items={name: len(splits[name][0]) for name in names},
        attrs={name: ds.attrs for name, ds in feedback.items()},
        encoder_input=settings.encoder_input,
        hidden=settings.hidden,
        layers=settings.layers,
        weights=ModelWeights(settings.kl_weight, settings.td_weight, settings.bellman_scale),
    )
    batches = CyclingBatches({name: len(splits[name][0]) for name in names}, settings.batch_size,
                             torch.Generator().manual_seed(seed))
    optim = pyro.optim.AdamW(
        {"lr": settings.learning_rate, "weight_decay": settings.weight_decay},
        clip_args={"clip_norm": settings.clip_norm},
    )
    svi = SVI(model.model, model.guide, optim, TraceMeanField_ELBO(num_particles=settings.num_particles))

    def minibatch() -> dict:
        out = {}
        for name in names:
            idx = batches.next(name)
            out[name] = (idx, take(train[name], idx))
        return out

    def validation_loss() -> float:
        if not valid_sets:  # nothing held out: fall back to the training fit of every type
            sets = train
        else:
            sets = valid_sets
        with torch.no_grad():
            return float(sum(-model.predictive_log_likelihood(n, b).mean() for n, b in sets.items()))

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
        best, best_loss, best_step, stale = state["best"], state["best_loss"], state["best_step"], state["stale"]

    def save(step: int) -> None:
        if checkpoint is None:
            return
        tmp = Path(checkpoint).with_suffix(".tmp")
        torch.save(
            {"params": _snapshot(), "optim": optim.get_state(), "batches": batches.state(), "history": history,
             "step": step, "best": best, "best_loss": best_loss, "best_step": best_step, "stale": stale,
             "settings": asdict(settings), "seed": seed},
            tmp,
        )
        tmp.replace(checkpoint)

    t0 = time.perf_counter()
    step = start_step
    bar = tqdm(range(start_step, settings.max_steps), desc="SVI", disable=not settings.progress_bar,
               initial=start_step, total=settings.max_steps, leave=False)
    for step in bar:
        loss = svi.step(minibatch())
        if not math.isfinite(loss):
            _restore(best)
            save(step)
            raise TrainingDivergedError(
                f"the loss became {loss} at step {step}; parameters were reset to the best state (step {best_step})"
            )
        history["elbo"].append(loss)
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.max_steps:
            val = validation_loss()
            history["validation"].append(val)
            history["validation_step"].append(step + 1)
            if val < best_loss - 1e-6:
                best_loss, best_step, stale, best = val, step + 1, 0, _snapshot()
            else:
                stale += 1
            bar.set_postfix(elbo=f"{-loss:.1f}", val_nll=f"{val:.3f}", refresh=False)
            save(step + 1)
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
