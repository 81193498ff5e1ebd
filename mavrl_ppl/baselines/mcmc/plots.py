"""Trace and rank plots of a NUTS posterior (ArviZ, matplotlib Agg backend) for the parameters most worth a look."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mavrl_ppl.baselines.mcmc.diagnostics import arviz

#: How many reward parameters the plots show: the ones with the worst R-hat.
WORST_REWARDS = 6


def worst_reward_coords(idata: Any, count: int = WORST_REWARDS) -> dict[str, list]:
    """ArviZ ``coords`` selecting the ``count`` reward parameters with the largest rank-normalised R-hat."""
    az = arviz()
    rhat = az.rhat(idata.posterior[["reward"]], method="rank")["reward"]
    flat = rhat.stack(parameter=rhat.dims) if rhat.dims else rhat.expand_dims("parameter")
    order = np.argsort(-np.nan_to_num(flat.values, nan=np.inf), kind="stable")[:count]
    picked = flat.isel(parameter=np.sort(order))
    if len(rhat.dims) == 1:
        dim = rhat.dims[0]
        return {dim: [int(v) for v in picked[dim].values]}
    return {"parameter": list(picked["parameter"].values)}


def plot_nuts_diagnostics(idata: Any, out_dir: str | Path, *, count: int = WORST_REWARDS) -> list[Path]:
    """Write ``nuts_trace.png`` and ``nuts_rank.png`` for the ``count`` reward parameters with the worst R-hat plus
    every nuisance parameter (e.g. ``rating_cutpoints``).

    Args:
        idata: a NUTS ``InferenceData`` (several chains).
        out_dir: directory to write into (created if missing).
        count: number of reward parameters to show.

    Returns:
        The paths of the written PNG files.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    az = arviz()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    posterior = idata.posterior
    rewards = posterior["reward"]
    coords = worst_reward_coords(idata, count)
    if "parameter" in coords:  # multi-dim rewards: flatten to one labelled dim for plotting
        rewards = rewards.stack(parameter=[d for d in rewards.dims if d not in ("chain", "draw")])
        rewards = rewards.sel(parameter=coords["parameter"])
        rewards = rewards.drop_vars([c for c in rewards.coords if c not in ("chain", "draw")])
        rewards = rewards.assign_coords(parameter=np.arange(rewards.sizes["parameter"]))
    else:
        rewards = rewards.sel(coords)
    shown = posterior[[v for v in posterior.data_vars if v != "reward"]].assign(reward=rewards)
    names = ["reward", *[v for v in shown.data_vars if v != "reward"]]
    rows = sum(int(np.prod([shown[v].sizes[d] for d in shown[v].dims if d not in ("chain", "draw")])) for v in names)
    paths = []
    for kind, plot in (("trace", az.plot_trace), ("rank", az.plot_rank)):
        kwargs = {"compact": False} if kind == "trace" else {}
        with warnings.catch_warnings():
            # ArviZ 0.23 calls a matplotlib helper deprecated in 3.11; nothing a caller can act on.
            warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
            axes = plot(shown, var_names=names, figsize=(11, 1.9 * rows), **kwargs)
        fig = np.ravel(axes)[0].figure
        fig.suptitle(f"NUTS {kind} plots: the {len(rewards[rewards.dims[-1]])} rewards with the worst R-hat", y=1.0)
        fig.tight_layout()
        path = out_dir / f"nuts_{kind}.png"
        fig.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
