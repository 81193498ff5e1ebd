"""NUTS on the tabular feedback model: settings, the run, and its posterior as ArviZ ``InferenceData``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS

from mavrl_ppl.baselines.mcmc.devices import enable_compilation_cache, enable_x64
from mavrl_ppl.baselines.mcmc.diagnostics import nuts_diagnostics
from mavrl_ppl.baselines.mcmc.init import dispersed_starts
from mavrl_ppl.baselines.mcmc.model import make_model, nuisance_sites
from mavrl_ppl.baselines.mcmc.potential import model_functions, uniform_starts
from mavrl_ppl.baselines.mcmc.settings import NutsSettings
from mavrl_ppl.envs.tabular import TabularMDP
from mavrl_ppl.netcdf import arviz

#: Environment variables under which NumPyro keeps its progress bars off (CI logs, pytest-xdist workers).
_BARS_OFF = frozenset({"CI", "PYTEST_XDIST_WORKER"})


class NutsResult(NamedTuple):
    """What :func:`run_nuts` returns.

    Attributes:
        idata: the posterior (``reward``, nuisance parameters), NUTS ``sample_stats``, ``log_likelihood``,
            ``posterior_predictive`` (:mod:`mavrl_ppl.analysis.predictive`), ``observed_data`` and ``constant_data``,
            with run attributes.
        diagnostics: ``rhat_max``, ``ess_bulk_min``, ``ess_tail_min``, ``divergences``, ``tree_depth_max``,
            ``step_size_mean``, ``mean_steps``, ``converged`` (see :func:`nuts_diagnostics`), ``fit_seconds`` and
            ``init_seconds`` (the chain-start part of it: mode searches, Hessian, compilation).
    """

    idata: Any
    diagnostics: dict[str, Any]


def split_over_devices(num_devices: int) -> Callable:
    """A NumPyro ``chain_method``: the chains run on ``num_devices`` host devices, one Python thread per device; each
    device runs its chains (``i % num_devices == device``) one after another through the same jitted chain function.

    Not ``jax.pmap``: a ``pmap`` program of two NUTS chains ran into an XLA cross-device rendezvous whose partner
    never arrived (a deadlock with a raised timeout, an abort after XLA's default 40 s), on grid_cliff seed 2
    (``benchmarks/RESULTS.md``, NUTS notes). Independent executions per device have no collective to wait for, and a
    device whose chain finishes early starts its next chain at once. Not ``lax.map`` inside a device's program (5x
    slower on the 10x10 grids) or ``vmap`` (vectorised NUTS chains move in lockstep)."""

    def transform(single_chain: Callable) -> Callable:
        jitted = jax.jit(single_chain)
        devices = jax.local_devices()[:num_devices]

        def run_device(args: Any, device_index: int) -> list[tuple[int, Any]]:
            num_chains = jax.tree.leaves(args)[0].shape[0]
            out = []
            for chain in range(device_index, num_chains, len(devices)):
                chain_args = jax.device_put(jax.tree.map(lambda x, c=chain: x[c], args), devices[device_index])
                out.append((chain, jax.block_until_ready(jitted(chain_args))))
            return out

        def run(args: Any) -> Any:
            with ThreadPoolExecutor(max_workers=len(devices)) as pool:
                parts = pool.map(lambda d: run_device(args, d), range(len(devices)))
                results = dict(pair for part in parts for pair in part)
            ordered = [jax.device_put(results[c], devices[0]) for c in sorted(results)]
            return jax.tree.map(lambda *chains: jnp.stack(chains), *ordered)

        return run

    return transform


def resolve_chain_method(method: str, num_chains: int) -> str | Callable:
    """The NumPyro ``chain_method`` for a setting: ``auto`` picks :func:`split_over_devices` when there are several
    chains and several host devices, else ``sequential``. (NumPyro's ``parallel``, a ``pmap``, stays available by
    name; see :func:`split_over_devices` for why ``auto`` avoids it.)"""
    devices = jax.local_device_count()
    if method == "parallel" and devices < num_chains:
        raise ValueError(
            f"chain_method='parallel' needs {num_chains} devices, JAX has {devices} (call set_host_devices first)"
        )
    if method != "auto":
        return method
    if num_chains == 1:
        return "sequential"
    if devices < 2:
        return "sequential"
    return split_over_devices(min(devices, num_chains))


def reward_layout(mdp: TabularMDP) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Posterior dims and shape of the group rewards: ``("state",)`` when each state is its own group (the grids),
    ``("state", "action")`` when each state-action pair is, else ``("group",)``."""
    S, A = mdp.num_states, mdp.num_actions
    groups = mdp.reward_groups
    if np.array_equal(groups, np.broadcast_to(np.arange(S)[:, None, None], groups.shape)):
        return ("state",), (S,)
    by_pair = np.arange(S * A).reshape(S, A)[:, :, None]
    if np.array_equal(groups, np.broadcast_to(by_pair, groups.shape)):
        return ("state", "action"), (S, A)
    return ("group",), (mdp.num_groups,)


_STAT_FIELDS = {
    "diverging": "diverging",
    "num_steps": "n_steps",
    "energy": "energy",
    "adapt_state.step_size": "step_size",
    "potential_energy": "lp",
    "accept_prob": "acceptance_rate",
}


def build_mcmc(potential: Callable, settings: NutsSettings, inverse_mass_matrix: Any = None) -> MCMC:
    """NumPyro ``MCMC`` with a NUTS kernel on the potential energy ``potential`` (unconstrained site values ->
    ``-log p``) as ``settings`` ask (chain method resolved for this host). Run it with ``init_params``.

    ``inverse_mass_matrix`` (diagonal, flattened unconstrained order) is where the mass-matrix adaptation starts
    (default: the identity).

    With ``settings.progress_bar`` every chain gets a tqdm bar that advances while it samples, whatever the chain
    method; NumPyro's own bars are used (see the comment below for the device-split method)."""
    kernel = NUTS(
        potential_fn=potential,
        target_accept_prob=settings.target_accept_prob,
        max_tree_depth=(settings.warmup_max_tree_depth, settings.max_tree_depth),
        dense_mass=settings.dense_mass,
        inverse_mass_matrix=None if inverse_mass_matrix is None else _as_mass(inverse_mass_matrix, settings),
    )
    chain_method = resolve_chain_method(settings.chain_method, settings.num_chains)
    mcmc = MCMC(
        kernel,
        num_warmup=settings.num_warmup,
        num_samples=settings.num_samples,
        num_chains=settings.num_chains,
        chain_method=chain_method,
        # NumPyro refuses bars for a callable chain_method (with a warning), so that case is switched on below.
        progress_bar=settings.progress_bar and not callable(chain_method),
    )
    if settings.progress_bar and callable(chain_method) and not _BARS_OFF.intersection(os.environ):
        # NumPyro's multi-chain bars (one per chain, fed by io_callback from inside each chain's compiled loop; a
        # chain takes the next free bar on its first iteration) need nothing from the chain method beyond running
        # NumPyro's sampling loop once per chain, which split_over_devices does.
        mcmc.progress_bar = True
    return mcmc


def _as_mass(diagonal: Any, settings: NutsSettings) -> Any:
    diagonal = jnp.asarray(diagonal)
    return jnp.diag(diagonal) if settings.dense_mass else diagonal


def run_nuts(mdp: TabularMDP, feedback: Mapping[str, Any], settings: NutsSettings | None = None) -> NutsResult:
    """Sample the reward posterior of a feedback set with NUTS.

    Args:
        mdp: the tabular MDP the feedback was given on (dynamics, discount, ``reward_groups``).
        feedback: type name -> ``xarray.Dataset`` (tabular segments), the same data SVI is fitted to.
        settings: sampler settings (default :class:`NutsSettings`).

    Returns:
        A :class:`NutsResult`; check ``diagnostics["converged"]`` before trusting the posterior.
    """
    arviz()  # first ArviZ import without its daily FutureWarning (see mavrl_ppl.netcdf.arviz)
    from mavrl_ppl.analysis.posterior import build_inference_data  # imports ArviZ; keep module import light
    from mavrl_ppl.analysis.predictive import evaluate_feedback

    settings = settings or NutsSettings()
    enable_x64()
    enable_compilation_cache()
    start = time.perf_counter()
    model, inputs = make_model(mdp, feedback, q_method=settings.q_method)
    functions = model_functions(model, inputs)
    inverse_mass = None
    if settings.init == "mode":
        rng = np.random.default_rng(settings.seed)
        starts = dispersed_starts(
            functions.potential, functions.shapes, settings.num_chains, rng, scale=settings.init_scale
        )
        init_params, inverse_mass = starts.init_params, starts.scale**2
    else:
        init_params = uniform_starts(functions.shapes, settings.num_chains, jax.random.PRNGKey(settings.seed))
    init_seconds = time.perf_counter() - start
    mcmc = build_mcmc(functions.potential, settings, inverse_mass)
    chain_method = mcmc.chain_method
    if settings.num_chains == 1:
        init_params = jax.tree.map(lambda x: x[0], init_params)
    mcmc.run(jax.random.PRNGKey(settings.seed), init_params=init_params, extra_fields=tuple(_STAT_FIELDS))
    latent = mcmc.get_samples(group_by_chain=True)
    num_chains, num_draws = jax.tree.leaves(latent)[0].shape[:2]
    flat = jax.tree.map(lambda v: v.reshape(num_chains * num_draws, *v.shape[2:]), latent)

    def by_chain(values: dict) -> dict[str, np.ndarray]:
        return {k: np.asarray(v).reshape(num_chains, num_draws, *v.shape[1:]) for k, v in values.items()}

    samples = {**by_chain(flat), **by_chain(functions.deterministic(flat))}
    stats = {_STAT_FIELDS[k]: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    stats["lp"] = -stats["lp"]
    # A trajectory of n leapfrog steps has depth floor(log2 n) + 1 (2^d - 1 steps fill a tree of depth d).
    stats["tree_depth"] = np.floor(np.log2(np.maximum(stats["n_steps"], 1))).astype(np.int64) + 1
    sampling_seconds = time.perf_counter() - start

    dims, shape = reward_layout(mdp)
    reward = samples["reward"].reshape(*samples["reward"].shape[:2], *shape)
    nuisance = {site: samples[site] for site in nuisance_sites(feedback)}
    # The numpy evaluation SVI uses too (one code path); it equals the model's JAX log-likelihood to ~1e-12
    # (tests/analysis/test_predictive.py). With q_method "sweeps" it scores the exact Q* the sweeps approximate.
    evaluation = evaluate_feedback(mdp, reward, dims, nuisance, feedback, seed=settings.seed,
                                   log_likelihood=settings.log_likelihood)
    fit_seconds = time.perf_counter() - start
    idata = build_inference_data(
        reward=reward,
        reward_dims=dims,
        nuisance=nuisance,
        sample_stats=stats,
        feedback=feedback,
        mdp=mdp,
        attrs={
            "inference": "nuts",
            "seed": settings.seed,
            "fit_seconds": fit_seconds,
            "sampling_seconds": sampling_seconds,
            "init_seconds": init_seconds,
            "num_devices": jax.local_device_count(),
            "chain_method": chain_method if isinstance(chain_method, str) else "split_over_devices",
            **{f"nuts_{k}": v for k, v in asdict(settings).items() if k not in ("seed", "chain_method")},
            **evaluation.attrs,
        },
        log_likelihood=evaluation.log_likelihood,
        posterior_predictive=evaluation.posterior_predictive,
    )
    diagnostics = {**nuts_diagnostics(idata), "fit_seconds": fit_seconds, "init_seconds": init_seconds}
    return NutsResult(idata=idata, diagnostics=diagnostics)
