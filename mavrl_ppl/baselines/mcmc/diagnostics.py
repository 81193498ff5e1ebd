"""Convergence diagnostics of a NUTS posterior, computed by ArviZ over every posterior variable."""

from __future__ import annotations

from typing import Any

import numpy as np

from mavrl_ppl.baselines.mcmc.settings import RHAT_MAX
from mavrl_ppl.netcdf import arviz


def _extreme(dataset: Any, reduce: Any) -> float:
    values = [np.asarray(dataset[name].values, dtype=np.float64).ravel() for name in dataset.data_vars]
    values = np.concatenate(values) if values else np.array([np.nan])
    return float(reduce(values))


def log_density_diagnostics(sample_stats: Any) -> dict[str, Any]:
    """``rhat_lp`` (rank R-hat of the log density across chains) and ``lp_chain_means`` (each chain's mean log
    density) of ``sample_stats`` holding ``lp`` (chain, draw)."""
    lp = np.asarray(sample_stats["lp"].values, dtype=np.float64)
    return {
        "rhat_lp": float(arviz().rhat(lp, method="rank")),
        "lp_chain_means": [float(m) for m in lp.mean(axis=1)],
    }


def nuts_diagnostics(idata: Any, *, rhat_max: float = RHAT_MAX) -> dict[str, Any]:
    """R-hat, ESS, divergences and tree depth of a NUTS ``InferenceData``.

    Args:
        idata: with ``posterior`` (chain, draw, ...) and ``sample_stats`` holding ``diverging``, ``tree_depth`` and
            ``step_size``.
        rhat_max: R-hat bound of ``converged``.

    Returns:
        ``rhat_max`` (largest rank-normalised R-hat over all posterior variables and elements), ``ess_bulk_min``,
        ``ess_tail_min`` (smallest bulk / tail ESS), ``divergences`` (post-warm-up divergent transitions),
        ``tree_depth_max``, ``step_size_mean``, ``mean_steps`` (leapfrog steps per draw, the cost; NaN without an
        ``n_steps`` stat) and ``converged`` (R-hat <= ``rhat_max`` and no divergence). With a
        ``lp`` (log density) sample stat also ``lp_chain_means`` (each chain's mean log density) and ``rhat_lp``
        (its R-hat across chains), which ``converged`` requires to be <= ``rhat_max`` as well: chains that sample
        separate basins of the posterior differ in log density even where no single parameter shows it clearly.
    """
    az = arviz()
    posterior = idata.posterior
    rhat = _extreme(az.rhat(posterior, method="rank"), np.max)
    ess_bulk = _extreme(az.ess(posterior, method="bulk"), np.min)
    ess_tail = _extreme(az.ess(posterior, method="tail"), np.min)
    stats = idata.sample_stats
    divergences = int(np.asarray(stats["diverging"].values).sum())
    log_density = log_density_diagnostics(stats) if "lp" in stats else {}
    return {
        "rhat_max": rhat,
        "ess_bulk_min": ess_bulk,
        "ess_tail_min": ess_tail,
        "divergences": divergences,
        "tree_depth_max": int(np.asarray(stats["tree_depth"].values).max()),
        "step_size_mean": float(np.asarray(stats["step_size"].values).mean()),
        "mean_steps": float(np.asarray(stats["n_steps"].values).mean()) if "n_steps" in stats else float("nan"),
        **log_density,
        "converged": bool(rhat <= rhat_max and log_density.get("rhat_lp", 1.0) <= rhat_max and divergences == 0),
    }
