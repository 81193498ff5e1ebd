"""Trace and rank plots of a NUTS posterior (ArviZ, matplotlib Agg backend) for the parameters most worth a look.

Each panel names its parameter by grid cell where the run's env is a grid (``reward (row 1, col 3)``) and shows that
parameter's rank-normalised R-hat and bulk ESS; R-hat above :data:`~mavrl_ppl.baselines.mcmc.diagnostics.RHAT_MAX`
is drawn in red. The figure title names the run: env, chains x draws, divergences.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mavrl_ppl.baselines.mcmc.diagnostics import RHAT_MAX, arviz

#: How many reward parameters the plots show: the ones with the worst R-hat.
WORST_REWARDS = 6

#: Font size of the panel titles (parameter, R-hat, ESS).
TITLE_SIZE = 9


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


def grid_shape_of(idata: Any) -> tuple[int, int] | None:
    """The env's ``(rows, cols)`` grid shape as :func:`~mavrl_ppl.analysis.posterior.build_inference_data` stores it
    (attribute ``grid_shape`` of the InferenceData and its ``constant_data``), or ``None`` when the env is no grid."""
    sources = [getattr(idata, "attrs", None) or {}]
    if "constant_data" in idata.groups():
        sources.append(idata.constant_data.attrs)
    sources.append(idata.posterior.attrs)
    for attrs in sources:
        shape = np.ravel(np.asarray(attrs.get("grid_shape", []), dtype=np.int64))
        if shape.size == 2 and np.all(shape > 0):
            return int(shape[0]), int(shape[1])
    return None


def _plain(value: Any) -> Any:
    """A coordinate value as a Python scalar (``np.int64(3)`` -> ``3``), for labels and dictionary keys."""
    return value.item() if isinstance(value, np.generic) else value


def reward_label(selection: Mapping[str, Any], grid_shape: tuple[int, int] | None) -> str:
    """``reward (row r, col c)`` for a state on a grid, else ``reward (state s)``; further dims are appended
    (``reward (row 0, col 2, action 1)``, ``reward (point 7)``)."""
    parts = []
    for dim, value in selection.items():
        value = _plain(value)
        if dim == "state" and grid_shape is not None and 0 <= int(value) < grid_shape[0] * grid_shape[1]:
            row, col = divmod(int(value), grid_shape[1])
            parts.append(f"row {row}, col {col}")
        else:
            parts.append(f"{dim} {value}")
    return f"reward ({', '.join(parts)})" if parts else "reward"


def _nuisance_label(var_name: str, selection: Mapping[str, Any]) -> str:
    return f"{var_name}[{', '.join(str(_plain(v)) for v in selection.values())}]" if selection else var_name


def _key(var_name: str, selection: Mapping[str, Any]) -> tuple:
    return var_name, tuple(sorted((str(d), _plain(v)) for d, v in selection.items()))


def _run_title(idata: Any, grid_shape: tuple[int, int] | None) -> str:
    posterior = idata.posterior
    attrs = getattr(idata, "attrs", None) or {}
    env = str(attrs.get("env", "")) or "run"
    if grid_shape is not None:
        env += f" ({grid_shape[0]}x{grid_shape[1]} grid)"
    chains, draws = posterior.sizes["chain"], posterior.sizes["draw"]
    text = f"{env}: {chains} chains x {draws} draws"
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        divergences = int(np.asarray(idata.sample_stats["diverging"].values).sum())
        text += f", {divergences} divergence{'' if divergences == 1 else 's'}"
    return text


def plot_nuts_diagnostics(idata: Any, out_dir: str | Path, *, count: int = WORST_REWARDS) -> list[Path]:
    """Write ``nuts_trace.png`` and ``nuts_rank.png`` for the ``count`` reward parameters with the worst R-hat plus
    every nuisance parameter (e.g. ``rating_cutpoints``).

    Each panel title names the parameter (its grid cell when ``idata`` records a grid shape, see
    :func:`grid_shape_of`) and gives its rank-normalised R-hat and bulk ESS (ArviZ ``rhat(method="rank")``,
    ``ess(method="bulk")``); the figure title gives the env, chains x draws and the divergences.

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
    grid_shape = grid_shape_of(idata)
    rewards = posterior["reward"]
    reward_dims = [d for d in rewards.dims if d not in ("chain", "draw")]
    coords = worst_reward_coords(idata, count)
    if "parameter" in coords:  # multi-dim rewards: flatten to one labelled dim for plotting
        rewards = rewards.stack(parameter=reward_dims)
        rewards = rewards.sel(parameter=coords["parameter"])
        original = [dict(zip(reward_dims, np.atleast_1d(p), strict=True)) for p in coords["parameter"]]
        rewards = rewards.drop_vars([c for c in rewards.coords if c not in ("chain", "draw")])
        rewards = rewards.assign_coords(parameter=np.arange(rewards.sizes["parameter"]))
        reward_names = {i: reward_label(sel, grid_shape) for i, sel in enumerate(original)}
    else:
        rewards = rewards.sel(coords)
        reward_names = None
    shown = posterior[[v for v in posterior.data_vars if v != "reward"]].assign(reward=rewards)
    names = ["reward", *[v for v in shown.data_vars if v != "reward"]]
    rhat = az.rhat(shown, method="rank")
    ess = az.ess(shown, method="bulk")

    titles: dict[tuple, str] = {}
    flagged: set[str] = set()
    for name in names:
        dims = [d for d in shown[name].dims if d not in ("chain", "draw")]
        index = [()] if not dims else list(np.ndindex(*[shown[name].sizes[d] for d in dims]))
        for idx in index:
            sel = {d: _plain(shown[name][d].values[i]) for d, i in zip(dims, idx, strict=True)}
            if name != "reward":
                label = _nuisance_label(name, sel)
            elif reward_names is not None:
                label = reward_names[sel["parameter"]]
            else:
                label = reward_label(sel, grid_shape)
            r, e = float(rhat[name].sel(sel)), float(ess[name].sel(sel))
            title = f"{label}\nR-hat {r:.3f}, bulk ESS {e:.0f}"
            titles[_key(name, sel)] = title
            if not r <= RHAT_MAX:
                flagged.add(title)

    class Labeller(az.labels.BaseLabeller):
        def make_label_vert(self, var_name, sel, isel):
            return titles.get(_key(var_name, sel)) or super().make_label_vert(var_name, sel, isel)

    shown_rewards = rewards.sizes[rewards.dims[-1]]
    run = _run_title(idata, grid_shape)
    panels = len(titles)
    paths = []
    for kind in ("trace", "rank"):
        with warnings.catch_warnings():
            # ArviZ 0.23 calls a matplotlib helper deprecated in 3.11; nothing a caller can act on.
            warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
            if kind == "trace":
                axes = az.plot_trace(shown, var_names=names, compact=False, labeller=Labeller(), legend=True,
                                     figsize=(11, 2.1 * panels))
            else:
                axes = az.plot_rank(shown, var_names=names, labeller=Labeller(),
                                    figsize=(11, 3.0 * int(np.ceil(panels / 3))))
        fig = np.ravel(axes)[0].figure
        for ax in np.ravel(axes):
            title = ax.get_title()
            if title in titles.values():
                ax.set_title(title, fontsize=TITLE_SIZE, color="tab:red" if title in flagged else "black", y=1.0)
            ax.tick_params(labelsize=8)
            ax.xaxis.label.set_size(9)
            ax.yaxis.label.set_size(9)
        if kind == "trace":
            density, draws = np.reshape(axes, (-1, 2))[-1]
            density.set_xlabel("value", fontsize=9)
            draws.set_xlabel("draw", fontsize=9)
        what = ("left: each chain's density, right: each chain's draws" if kind == "trace"
                else "each chain's rank histogram: flat and alike when the chains agree")
        fig.tight_layout()
        # Above the top row's titles (bbox_inches="tight" widens the saved image to hold it).
        fig.suptitle(f"NUTS {kind} plots, {run}\nthe {shown_rewards} rewards with the worst R-hat and every nuisance "
                     f"parameter ({what}); R-hat > {RHAT_MAX} in red", fontsize=10, va="bottom",
                     y=1.0 + 0.1 / fig.get_figheight())
        path = out_dir / f"nuts_{kind}.png"
        fig.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
