"""Posteriors as ArviZ ``InferenceData`` with the SAME variable names and dims for every inference method (DESIGN §6).

Built with ``az.from_dict`` (available in ArviZ 0.x and 1.x). Groups:

- ``posterior``: ``reward`` (chain, draw, state[, action]) or (chain, draw, point), plus nuisance parameters named
  ``<type>_<param>`` (e.g. ``rating_cutpoints``) on the dims their :class:`~mavrl_ppl.feedback.Nuisance` declares
  (``rating_cutpoints``: ``cutpoint``; undeclared axes: ``<type>_<param>_dim_<i>``);
- ``log_likelihood``: per-item log-likelihood of each feedback type, named by the type (``pref``, ``demo``, ...) on dim
  ``<type>_item``, so ``az.loo(idata, var_name="pref")`` scores one type (tabular envs, both back ends: see
  :mod:`mavrl_ppl.analysis.predictive`);
- ``posterior_predictive``: labels drawn at every draw, named and shaped like ``observed_data``, so
  ``az.plot_ppc(idata, var_names=["rating"])`` pairs them (tabular envs, every type with enumerable discrete labels);
- ``observed_data``: each feedback type's label, named by the type, on dims ``<type>_item`` (and ``<type>_<dim>`` for
  the label's further dims: ``demo_step``);
- ``sample_stats``: sampler statistics (NUTS: diverging, tree_depth, energy, step_size, ...);
- ``constant_data``: the env description (true reward per state, initial distribution) for tabular envs;
- any extra groups (SVI: the ``elbo`` trace);
- attrs: inference method, seed, package version, wall time, ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import metadata

import arviz as az
import numpy as np
import xarray as xr

from mavrl_ppl.envs.tabular import TabularMDP
from mavrl_ppl.feedback.base import get_feedback_type, registered


def _package_version() -> str:
    try:
        return metadata.version("mavrl_ppl")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _extra_dims(name: str, values: np.ndarray) -> list[str]:
    return [f"{name}_dim_{i}" for i in range(values.ndim - 2)]


def _nuisance_dims(site: str, values: np.ndarray) -> list[str]:
    """A nuisance site's own dims: those its :class:`~mavrl_ppl.feedback.Nuisance` declares, the rest by ArviZ's
    ``<site>_dim_<i>``."""
    declared: tuple[str, ...] = ()
    for ft in registered().values():
        for n in ft.nuisance:
            if ft.site(n) == site:
                declared = tuple(n.dims)
    default = _extra_dims(site, values)
    return [*declared[: len(default)], *default[len(declared):]]


def _label_dims(name: str, dataset: xr.Dataset) -> list[str]:
    """Dims of a type's label in ``observed_data`` and ``posterior_predictive``: ``<type>_item``, ``<type>_<dim>``."""
    return [f"{name}_{d}" for d in dataset[get_feedback_type(name).label].dims]


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
    posterior_predictive: Mapping[str, np.ndarray] | None = None,
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
        log_likelihood: per-item log-likelihoods by type name, each ``(chain, draw, item)``.
        posterior_predictive: predictive labels by type name, each ``(chain, draw, *label shape)``.
        extra_groups: further groups to attach as they are (e.g. the SVI ``elbo`` trace).
    """
    reward = np.asarray(reward, dtype=np.float64)
    if reward.ndim != 2 + len(reward_dims):
        raise ValueError(f"reward has shape {reward.shape}, expected (chain, draw, {', '.join(reward_dims)})")
    posterior = {"reward": reward, **{k: np.asarray(v) for k, v in nuisance.items()}}
    dims = {"reward": list(reward_dims), **{k: _nuisance_dims(k, v) for k, v in posterior.items() if k != "reward"}}
    observed = {name: ds[get_feedback_type(name).label].values for name, ds in feedback.items()}
    dims.update({name: _label_dims(name, ds) for name, ds in feedback.items()})
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
        if values.ndim != 3:
            raise ValueError(f"log_likelihood[{key!r}] has shape {values.shape}, expected (chain, draw, item)")
    predictive = {k: np.asarray(v) for k, v in (posterior_predictive or {}).items()}
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
    if predictive:
        groups["posterior_predictive"] = predictive
    if constant:
        groups["constant_data"] = constant
    idata = az.from_dict(**groups, coords=coords, dims=dims, attrs=all_attrs)
    if ll:  # its own dims: a label's dims (demo_item, demo_step) are not its log-likelihood's (demo_item)
        idata.add_groups(log_likelihood=az.dict_to_dataset(ll, coords=coords, dims={k: [f"{k}_item"] for k in ll},
                                                           attrs=dict(idata.posterior.attrs)))
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
