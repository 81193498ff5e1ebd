"""Posteriors as ArviZ ``InferenceData`` with the SAME variable names and dims for every inference method (DESIGN §6).

Built with ``az.from_dict`` (available in ArviZ 0.x and 1.x). Groups:

- ``posterior``: ``reward`` (chain, draw, state[, action]) or (chain, draw, point), plus nuisance parameters named
  ``<type>_<param>`` (e.g. ``rating_cutpoints``);
- ``sample_stats``: sampler statistics (NUTS: diverging, tree_depth, energy, step_size, ...);
- ``log_likelihood``: per-item log-likelihood ``obs_<type>`` where the method provides it;
- ``observed_data``: each feedback type's label as ``obs_<type>`` on dim ``<type>_item``;
- ``constant_data``: the env description (true reward per state, grid shape, gamma) for tabular envs;
- any extra groups (SVI: ``elbo`` trace);
- attrs: inference method, seed, package version, wall time, ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import metadata

import arviz as az
import numpy as np
import xarray as xr

from mavrl_ppl.envs.tabular import TabularMDP
from mavrl_ppl.feedback.base import get_feedback_type


def _package_version() -> str:
    try:
        return metadata.version("mavrl_ppl")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _extra_dims(name: str, values: np.ndarray) -> list[str]:
    return [f"{name}_dim_{i}" for i in range(values.ndim - 2)]


def build_inference_data(
    *,
    reward: np.ndarray,
    reward_dims: tuple[str, ...],
    nuisance: Mapping[str, np.ndarray],
    sample_stats: Mapping[str, np.ndarray] | None,
    feedback: Mapping[str, xr.Dataset],
    mdp: TabularMDP | None,
    attrs: Mapping[str, object],
    log_likelihood: Mapping[str, np.ndarray] | None = None,
    extra_groups: Mapping[str, xr.Dataset] | None = None,
) -> az.InferenceData:
    """Assemble the InferenceData every analysis function takes.

    Args:
        reward: posterior reward draws, ``(chain, draw, *reward_dims)``.
        reward_dims: names of the reward's own dims, ``("state",)``, ``("state", "action")`` or ``("point",)``.
        nuisance: nuisance-parameter draws by site name (``<type>_<param>``), each ``(chain, draw, ...)``.
        sample_stats: per-draw sampler statistics ``(chain, draw)``, or ``None``.
        feedback: the feedback set the posterior was fitted to (its labels become ``observed_data``).
        mdp: the tabular env (for ``constant_data``), or ``None`` for control envs.
        attrs: run metadata (``inference``, ``seed``, ``fit_seconds``, ...); the package version is added.
        log_likelihood: per-item log-likelihoods by ``obs_<type>``, each ``(chain, draw, item)``.
        extra_groups: further groups to attach as they are (e.g. the SVI ``elbo`` trace).
    """
    reward = np.asarray(reward, dtype=np.float64)
    if reward.ndim != 2 + len(reward_dims):
        raise ValueError(f"reward has shape {reward.shape}, expected (chain, draw, {', '.join(reward_dims)})")
    posterior = {"reward": reward, **{k: np.asarray(v) for k, v in nuisance.items()}}
    dims = {"reward": list(reward_dims), **{k: _extra_dims(k, v) for k, v in posterior.items() if k != "reward"}}
    observed = {}
    for name, ds in feedback.items():
        label = get_feedback_type(name).label
        values = ds[label].values
        observed[f"obs_{name}"] = values
        dims[f"obs_{name}"] = [f"{name}_item", *[f"{name}_{d}" for d in ds[label].dims[1:]]]
    coords: dict[str, np.ndarray] = {d: np.arange(n) for d, n in zip(reward_dims, reward.shape[2:], strict=True)}
    constant = {}
    if mdp is not None:
        if mdp.group_rewards is not None and "state" in reward_dims and mdp.num_groups == mdp.num_states:
            constant["true_reward"] = mdp.group_rewards
            dims["true_reward"] = ["state"]
        constant["initial"] = mdp.initial
        dims["initial"] = ["state"]
        coords.setdefault("state", np.arange(mdp.num_states))
    ll = {k: np.asarray(v) for k, v in (log_likelihood or {}).items()}
    for key, values in ll.items():
        dims[key] = dims.get(key, [f"{key.removeprefix('obs_')}_item"])[:1] + _extra_dims(key, values)[1:]
    all_attrs = {"package_version": _package_version(), **_netcdf_safe(attrs)}
    if mdp is not None:
        all_attrs.update(
            env=mdp.name,
            gamma=float(mdp.gamma),
            grid_shape=list(mdp.grid_shape) if mdp.grid_shape else [],
            num_actions=int(mdp.num_actions),
        )
    groups: dict[str, object] = {"posterior": posterior, "observed_data": observed}
    if sample_stats:
        groups["sample_stats"] = {k: np.asarray(v) for k, v in sample_stats.items()}
    if ll:
        groups["log_likelihood"] = ll
    if constant:
        groups["constant_data"] = constant
    idata = az.from_dict(**groups, coords=coords, dims=dims, attrs=all_attrs)
    for name, ds in (extra_groups or {}).items():
        idata.add_groups({name: ds})
    return idata


def _netcdf_safe(attrs: Mapping[str, object]) -> dict:
    """NetCDF attributes must be strings, numbers or flat number lists: drop ``None``, stringify the rest."""
    out = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float, str, np.integer, np.floating)):
            out[key] = value
        elif isinstance(value, (list, tuple, np.ndarray)) and all(
            isinstance(v, (int, float, np.integer, np.floating)) for v in np.ravel(value)
        ):
            out[key] = list(np.ravel(value))
        else:
            out[key] = str(value)
    return out


def svi_history(history: Mapping[str, Sequence[float]]) -> xr.Dataset:
    """An SVI fit's history as the ``elbo`` group: ``loss`` (negative ELBO) per step, the held-out negative log
    predictive per item and the step of each validation pass."""
    return xr.Dataset({"loss": ("step", np.asarray(history["elbo"])),
                       "validation_nll": ("evaluation", np.asarray(history["validation"])),
                       "validation_step": ("evaluation", np.asarray(history["validation_step"]))})
