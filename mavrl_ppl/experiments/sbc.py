"""Simulation-based calibration (SBC, Talts et al. 2018) of the joint feedback model, fitted by SVI or NUTS.

``python -m mavrl_ppl.experiments.sbc --inference nuts --env grid_cliff --env-size 4 --replications 200 --out DIR``

If data are simulated from parameters drawn from the model's own prior and the fit returns the exact posterior, the
rank of each true parameter among L independent posterior draws is uniform on 0..L; a fit that is too narrow, too
wide or biased shows as U-shaped, peaked or sloped ranks. For every replication ``r`` (its own generator,
``numpy.random.SeedSequence([seed, r])``):

1. Draw the parameters from the model's prior: one reward per reward group (per state on the grids) from
   ``Normal(REWARD_PRIOR_LOC, REWARD_PRIOR_SCALE)`` (:mod:`mavrl_ppl.feedback.base`), and every nuisance parameter
   the model infers, i.e. each feedback type's :class:`~mavrl_ppl.feedback.Nuisance` not fixed by a data-set
   attribute (the rating cutpoints; the simulated data's ``beta`` attribute fixes the rationalities), as
   ``transform(z)`` with ``z ~ Normal(loc(attrs), scale)`` from the type's own declaration. Both back ends have
   exactly this prior: the Pyro model's reward sites use :func:`mavrl_ppl.models.rewards.reward_prior` and the
   NumPyro model's ``reward`` site (:class:`~mavrl_ppl.baselines.mcmc.model.TabularFeedbackModel`) the same two
   constants, and both sample each free nuisance as ``<type>_<name>_z ~ Normal(loc(attrs), scale)`` transformed by
   the same ``Nuisance.transform`` (``JointFeedbackModel._model_params`` and ``TabularFeedbackModel.__call__``).
2. Simulate the feedback from exactly that draw: the env's teacher (:class:`~mavrl_ppl.feedback.TabularTeacher`) on
   the env with the drawn reward (``mdp.with_group_rewards``), every drawn nuisance value passed to its type's
   simulator as the keyword of the same name (``cutpoints=``). Data-set attributes that a simulator otherwise
   calibrates from the true reward (:data:`CALIBRATED`: the stop teacher's lambda) are fixed once for all
   replications, to their value in a pilot simulation on the env's own reward: the model reads them as known
   constants, so a value that depends on the drawn reward would tell the fit about that reward beyond the
   likelihood, and the ranks would not be uniform even for an exact posterior. Written with ``save_feedback`` to
   ``DIR/replications/r<r>/feedback.nc``.
3. Fit it with the one pipeline, :func:`mavrl_ppl.runs.run` (``data`` = that file), into
   ``DIR/replications/r<r>/run``: one task of the one executor (:mod:`mavrl_ppl.experiments.executor`) per
   replication, in ``--jobs`` local processes or on a Dask cluster (``--cluster``).
4. Rank each true value among L posterior draws (:func:`ranks`) and write the replication's record
   (``DIR/records/r<r>.json``, atomically; it holds the true values and the ranks). A re-run reuses every record
   made with the same settings, so a long SBC can be finished in several sessions.

Thinning (the choice): a fixed L (``--draws``, default 99) draws at evenly spaced positions of the run's draws, the
chains one after another (:func:`thin`). SVI's guide draws are independent already. NUTS's default 4 x 1000 draws
thinned to 99 keep every 40th draw of each chain, and NUTS's own convergence check asks for bulk ESS >= 400, i.e.
an autocorrelation time of at most 10 draws: draws 40 apart are near-independent. A run whose minimum bulk ESS is
below L (its thinned draws are then correlated, which makes its ranks clump) is counted in ``sbc.md``. A fixed L,
rather than one that varies with each run's ESS, keeps every rank on the same scale 0..L, which the test needs.

The test: per parameter, a chi-square test of uniformity of its ranks on B bins (:func:`choose_bins`: the most bins
of equal width with at least :data:`MIN_EXPECTED` expected ranks each), then Holm's step-down correction over all
parameters (:func:`holm`), so the chance that any calibrated parameter is rejected is at most 0.05.

Outputs in DIR: ``sbc.nc`` (ranks, true values, per-parameter test; settings as attributes), ``sbc.md`` (the
table), ``sbc_ecdf.png`` (ECDF difference of the fractional ranks with a simultaneous band), ``sbc_ranks.png`` (rank
histograms of the parameters with the smallest p-values), each written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from mavrl_ppl.envs.allocation import GRID_ALLOCATION, format_counts
from mavrl_ppl.experiments.baseline_table import FitFunction, check_fit_options, run_fit, settings_table
from mavrl_ppl.experiments.executor import Outcome, Task, run_command, run_tasks
from mavrl_ppl.feedback.base import REWARD_PRIOR_LOC, REWARD_PRIOR_SCALE, get_feedback_type
from mavrl_ppl.netcdf import ENGINE

__all__ = [
    "ALPHA",
    "CALIBRATED",
    "DEFAULT_DRAWS",
    "MIN_EXPECTED",
    "NuisancePrior",
    "Replication",
    "SBCPlan",
    "choose_bins",
    "draw_prior",
    "holm",
    "main",
    "make_plan",
    "rank_uniformity",
    "ranks",
    "run_replication",
    "run_sbc",
    "simulate_replication",
    "thin",
]

#: Posterior draws each true value is ranked among (ranks 0..L).
DEFAULT_DRAWS = 99
#: Family-wise level of the per-parameter uniformity tests (after Holm's correction).
ALPHA = 0.05
#: Fewest expected ranks per bin of the chi-square test (the usual validity rule of its chi-square approximation).
MIN_EXPECTED = 5
#: Type -> {data-set attribute: simulator keyword} for attributes a simulator calibrates from the true reward; SBC
#: fixes them to their pilot value (see the module docstring).
CALIBRATED: dict[str, dict[str, str]] = {"stop": {"lambda": "lam"}}
#: Rank histograms drawn in ``sbc_ranks.png``.
HISTOGRAMS = 6
DEFAULT_FEEDBACK = format_counts(GRID_ALLOCATION)


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class NuisancePrior:
    """A nuisance parameter the model infers on a feedback set: ``site`` = ``transform(z)``, ``z ~ Normal(loc,
    scale)`` with the type's ``Nuisance`` (looked up by ``feedback`` and ``name``, so the plan stays picklable).

    Attributes:
        feedback: feedback type name.
        name: the nuisance parameter's name within the type (also its simulator keyword).
        site: posterior variable, ``<type>_<name>``.
        loc: prior mean of ``z`` for this feedback set's attributes.
    """

    feedback: str
    name: str
    site: str
    loc: tuple[float, ...] | float

    def nuisance(self) -> Any:
        """The registered :class:`~mavrl_ppl.feedback.Nuisance`."""
        ft = get_feedback_type(self.feedback)
        return next(n for n in ft.nuisance if n.name == self.name)


@dataclass(frozen=True)
class SBCPlan:
    """Everything a replication depends on (picklable; sent to every worker).

    Attributes:
        inference: ``svi`` or ``nuts``.
        env: tabular env name.
        env_size: grid side (``None``: the env's default).
        counts: feedback type -> items, in the order of ``--feedback``.
        seed: the SBC's seed; replication ``r`` uses ``SeedSequence([seed, r])``.
        draws: L, the posterior draws each true value is ranked among.
        simulate: simulator settings fixed for every replication (the pilot values of :data:`CALIBRATED`).
        priors: the nuisance parameters the model infers, in the model's order.
        svi: the fits' ``[svi]`` settings table (``None``: defaults).
        nuts: the fits' ``[nuts]`` settings table.
    """

    inference: str
    env: str
    env_size: int | None
    counts: tuple[tuple[str, int], ...]
    seed: int
    draws: int
    simulate: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    priors: tuple[NuisancePrior, ...] = ()
    svi: Mapping[str, Any] | None = None
    nuts: Mapping[str, Any] | None = None

    def settings(self) -> dict[str, Any]:
        """What a record depends on (JSON): a record is reused only where these are equal."""
        return {"inference": self.inference, "env": self.env, "env_size": self.env_size,
                "feedback": format_counts(dict(self.counts)), "seed": self.seed, "draws": self.draws,
                "simulate": {k: dict(v) for k, v in self.simulate}, "svi": dict(self.svi or {}),
                "nuts": dict(self.nuts or {})}

    def mdp(self) -> Any:
        """The env (with its own reward)."""
        from mavrl_ppl.envs.grids import make_tabular

        return make_tabular(self.env, size=self.env_size)


def make_plan(inference: str, env: str, *, env_size: int | None = None, feedback: str = DEFAULT_FEEDBACK,
              seed: int = 0, draws: int = DEFAULT_DRAWS, svi: Mapping[str, Any] | None = None,
              nuts: Mapping[str, Any] | None = None) -> SBCPlan:
    """The plan of an SBC: one pilot simulation on the env's own reward gives the free nuisance parameters (those
    its data sets do not fix) and the values of the :data:`CALIBRATED` attributes.

    Args:
        inference: ``svi`` or ``nuts``.
        env: tabular env name.
        env_size: grid side (``None``: the env's default).
        feedback: counts ``type=count,...``.
        seed: the SBC's seed.
        draws: L.
        svi: ``[svi]`` settings of the fits.
        nuts: ``[nuts]`` settings of the fits.

    Raises:
        ValueError: an unknown env or type, or bad counts.
    """
    from mavrl_ppl.feedback import TabularTeacher, registered
    from mavrl_ppl.feedback.data import parse_counts, simulate_feedback

    counts = {k: v for k, v in parse_counts(feedback, registered()).items() if v > 0}
    if not counts:
        raise ValueError(f"--feedback {feedback!r} requests no feedback")
    plan = SBCPlan(inference, env, env_size, tuple(counts.items()), int(seed), int(draws), svi=svi, nuts=nuts)
    pilot_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2**32]))  # apart from every replication's
    pilot = simulate_feedback(TabularTeacher(plan.mdp()), counts, pilot_rng)
    fixed = tuple((name, tuple((keyword, float(pilot[name].attrs[attr])) for attr, keyword in CALIBRATED[name].items()))
                  for name in counts if name in CALIBRATED)
    priors = []
    for name, dataset in pilot.items():
        ft = get_feedback_type(name)
        for n in ft.free_nuisance(dataset.attrs):
            loc = np.asarray(n.loc(dataset.attrs), dtype=np.float64)
            priors.append(NuisancePrior(name, n.name, ft.site(n), tuple(loc.tolist()) if loc.ndim else float(loc)))
    return dataclasses.replace(plan, simulate=fixed, priors=tuple(priors))


# ------------------------------------------------------------------------------------------------ one replication


def replication_rng(seed: int, replication: int) -> np.random.Generator:
    """Replication ``replication``'s generator, from ``SeedSequence([seed, replication])``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(replication)]))


def draw_prior(num_groups: int, priors: Sequence[NuisancePrior], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One draw of every parameter from the model's prior (see the module docstring).

    Args:
        num_groups: reward parameters (states of a grid).
        priors: the free nuisance parameters.
        rng: the replication's generator.

    Returns:
        ``reward`` ``(num_groups,)`` and each nuisance site's transformed value, in the model's order.
    """
    truth = {"reward": REWARD_PRIOR_LOC + REWARD_PRIOR_SCALE * rng.standard_normal(num_groups)}
    for prior in priors:
        nuisance = prior.nuisance()
        loc = np.asarray(prior.loc, dtype=np.float64)
        z = loc + nuisance.scale * rng.standard_normal(loc.shape)
        truth[prior.site] = np.asarray(nuisance.transform(np.asarray(z)), dtype=np.float64)
    return truth


class Replication(NamedTuple):
    """A replication's simulated problem.

    Attributes:
        truth: the prior draw, ``reward`` and each nuisance site (:func:`draw_prior`).
        mdp: the env with the drawn reward.
        teacher: the teacher that labelled the data (on ``mdp``).
        feedback: the simulated data, type -> Dataset.
        fit_seed: the seed of the fit.
        rng: the replication's generator after the simulation (it splits ties between ranks).
    """

    truth: dict[str, np.ndarray]
    mdp: Any
    teacher: Any
    feedback: dict[str, xr.Dataset]
    fit_seed: int
    rng: np.random.Generator


def simulate_replication(plan: SBCPlan, replication: int) -> Replication:
    """Steps 1-2 of the module docstring for one replication.

    Raises:
        ValueError: a simulator that does not take a drawn nuisance parameter as a keyword, or data whose free
            nuisance parameters are not the drawn ones.
    """
    from mavrl_ppl.feedback import TabularTeacher
    from mavrl_ppl.feedback.data import simulate_feedback

    rng = replication_rng(plan.seed, replication)
    base = plan.mdp()
    truth = draw_prior(base.num_groups, plan.priors, rng)
    mdp = dataclasses.replace(base, rewards=base.with_group_rewards(truth["reward"]),
                              group_rewards=truth["reward"].copy())
    settings: dict[str, dict[str, Any]] = {name: dict(values) for name, values in plan.simulate}
    for prior in plan.priors:
        value = truth[prior.site]
        settings.setdefault(prior.feedback, {})[prior.name] = value if value.ndim else float(value)
    teacher = TabularTeacher(mdp)
    feedback = simulate_feedback(teacher, dict(plan.counts), rng, settings)
    free = [get_feedback_type(name).site(n) for name, ds in feedback.items()
            for n in get_feedback_type(name).free_nuisance(ds.attrs)]
    if free != [p.site for p in plan.priors]:
        drawn = [p.site for p in plan.priors]
        raise ValueError(f"the simulated data leave {free} to infer, but the prior draw set {drawn}")
    fit_seed = int(rng.integers(2**31))
    return Replication(truth, mdp, teacher, feedback, fit_seed, rng)


def fit_config(plan: SBCPlan, data: Path, seed: int) -> dict[str, Any]:
    """The run settings of a replication's fit (:func:`mavrl_ppl.runs.resolve_config`'s input)."""
    config: dict[str, Any] = {"inference": plan.inference, "env": plan.env, "env_size": plan.env_size,
                              "seed": int(seed), "data": str(data)}
    table = plan.nuts if plan.inference == "nuts" else plan.svi
    if table:
        config[plan.inference] = dict(table)
    return config


def parameter_names(truth: Mapping[str, np.ndarray]) -> list[str]:
    """``reward[0]``, ..., ``rating_cutpoints[3]``: one name per scalar, in ``truth``'s order."""
    return [f"{site}[{i}]" if np.ndim(value) else site for site, value in truth.items()
            for i in range(int(np.size(value)))]


def posterior_matrix(path: Path, truth: Mapping[str, np.ndarray]) -> np.ndarray:
    """The run's posterior draws of ``truth``'s parameters, ``(chain * draw, parameter)``, chains one after another.

    Raises:
        ValueError: a variable missing from the posterior or of another size.
    """
    with xr.open_dataset(path, group="posterior", engine=ENGINE) as posterior:
        columns = []
        for site, value in truth.items():
            if site not in posterior:
                raise ValueError(f"{path}: the posterior has no {site!r}")
            draws = posterior[site].transpose("chain", "draw", ...).values
            draws = draws.reshape(draws.shape[0] * draws.shape[1], -1)
            if draws.shape[1] != np.size(value):
                raise ValueError(f"{path}: {site} has {draws.shape[1]} values per draw, the truth {np.size(value)}")
            columns.append(draws)
    return np.concatenate(columns, axis=1)


def thin(draws: np.ndarray, count: int) -> np.ndarray:
    """``count`` draws at evenly spaced positions of ``draws`` (first axis).

    Raises:
        ValueError: fewer than ``count`` draws.
    """
    n = draws.shape[0]
    if n < count:
        raise ValueError(f"the posterior has {n} draws, fewer than the {count} to rank among")
    return draws[(np.arange(count) * n) // count]


def ranks(draws: np.ndarray, truth: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Rank of each true value among the draws: how many draws lie below it, 0..L.

    Args:
        draws: ``(L, parameter)``.
        truth: ``(parameter,)``.
        rng: splits ties (draws equal to the truth) uniformly at random; ``None`` counts ties as above.
    """
    below = np.sum(draws < truth, axis=0)
    if rng is None:
        return below
    return below + rng.integers(0, np.sum(draws == truth, axis=0) + 1)


def replication_dir(out: Path, replication: int) -> Path:
    return Path(out) / "replications" / f"r{replication:04d}"


def record_path(out: Path, replication: int) -> Path:
    return Path(out) / "records" / f"r{replication:04d}.json"


def _write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(temporary)`` beside ``path`` (same suffix), then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def run_replication(plan: SBCPlan, replication: int, out: Path, fit: FitFunction = run_fit) -> dict[str, Any]:
    """One replication, start to end (an executor task): simulate, save, fit, rank, record.

    Args:
        plan: the SBC.
        replication: its index.
        out: the SBC's output directory.
        fit: the fit (:data:`~mavrl_ppl.experiments.baseline_table.FitFunction`; tests inject a fake).

    Returns:
        The record written to ``out/records/r<replication>.json``.
    """
    from mavrl_ppl.feedback.data import save_feedback

    rep = simulate_replication(plan, replication)
    directory = replication_dir(out, replication)
    directory.mkdir(parents=True, exist_ok=True)
    save_feedback(directory / "feedback.nc", rep.feedback)
    result = fit(fit_config(plan, directory / "feedback.nc", rep.fit_seed), directory / "run")
    truth = np.concatenate([np.ravel(v) for v in rep.truth.values()])
    thinned = thin(posterior_matrix(directory / "run" / "posterior.nc", rep.truth), plan.draws)
    metrics = result.get("metrics", {})
    record = {
        "replication": int(replication), "settings": plan.settings(), "parameters": parameter_names(rep.truth),
        "true": truth.tolist(), "rank": ranks(thinned, truth, rep.rng).tolist(),
        "converged": bool(result.get("converged", True)),
        "ess_bulk_min": float(metrics["ess_bulk_min"]) if "ess_bulk_min" in metrics else None,
        "fit_seconds": float(metrics.get("fit_seconds", np.nan)),
    }
    _write_atomic(record_path(out, replication),
                  lambda tmp: tmp.write_text(json.dumps(record, indent=1, default=float) + "\n"))
    return record


def load_record(out: Path, replication: int, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """A finished replication's record made with ``settings``, else ``None`` (also for a damaged file, which the
    replication then overwrites)."""
    path = record_path(out, replication)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return record if record["settings"] == dict(settings) and len(record["rank"]) == len(record["true"]) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------------------------ the test


def choose_bins(replications: int, draws: int) -> int:
    """Bins of the chi-square test for ``replications`` ranks on 0..``draws``: the largest divisor of ``draws + 1``
    (equal-width bins) with at least :data:`MIN_EXPECTED` expected ranks per bin; at least 2. Where ``draws + 1``
    has no such divisor the bins are as equal as integers allow (:func:`rank_uniformity` uses their exact
    probabilities)."""
    values = int(draws) + 1
    most = min(values, max(2, int(replications) // MIN_EXPECTED))
    divisors = [b for b in range(2, most + 1) if values % b == 0]
    return divisors[-1] if divisors else most


def rank_uniformity(rank: np.ndarray, draws: int, bins: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Chi-square test that each column of ``rank`` is uniform on 0..``draws``.

    Args:
        rank: ``(replication, parameter)`` ranks.
        draws: L.
        bins: B (default :func:`choose_bins`); rank ``k`` falls in bin ``k * B // (L + 1)``.

    Returns:
        The statistic and p-value per parameter (``B - 1`` degrees of freedom), and B.
    """
    from scipy import stats

    rank = np.asarray(rank)
    values = int(draws) + 1
    if rank.size and (rank.min() < 0 or rank.max() > draws):
        raise ValueError(f"ranks must lie in 0..{draws}")
    bins = int(bins or choose_bins(rank.shape[0], draws))
    observed = np.sum((rank * bins // values)[..., None] == np.arange(bins), axis=0)  # (parameter, bin)
    expected = rank.shape[0] * np.bincount(np.arange(values) * bins // values, minlength=bins) / values
    statistic = np.sum((observed - expected) ** 2 / expected, axis=-1)
    return statistic, stats.chi2.sf(statistic, bins - 1), bins


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: reject where ``adjusted <= alpha`` keeps the family-wise error <= alpha.

    The ``i``-th smallest of ``m`` p-values is multiplied by ``m - i`` (``i`` from 0), then made non-decreasing in
    that order and capped at 1.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = (p.size - np.arange(p.size)) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


# ------------------------------------------------------------------------------------------------ results


def parameter_label(name: str, grid_shape: tuple[int, int] | None) -> str:
    """``reward (row r, col c)`` for a grid state's reward, else the parameter's name."""
    from mavrl_ppl.baselines.mcmc.plots import reward_label

    site, _, index = name.partition("[")
    if site == "reward" and index:
        return reward_label({"state": int(index.rstrip("]"))}, grid_shape)
    return name


def assemble(records: Sequence[dict[str, Any]], plan: SBCPlan, failures: Mapping[int, str],
             grid_shape: tuple[int, int] | None) -> xr.Dataset:
    """The SBC Dataset: per replication and parameter ``rank`` and ``true_value``; per replication ``converged``,
    ``ess_bulk_min``, ``fit_seconds``; per parameter the test (``statistic``, ``pvalue``, ``pvalue_holm``,
    ``rejected``); attributes ``draws`` (L), ``bins``, ``alpha``, ``correction``, the settings and the failures."""
    records = sorted(records, key=lambda r: r["replication"])
    names = records[0]["parameters"] if records else []
    rank = np.array([r["rank"] for r in records], dtype=np.int64).reshape(len(records), len(names))
    truth = np.array([r["true"] for r in records], dtype=np.float64).reshape(rank.shape)
    if len(records) >= 2:
        statistic, pvalue, bins = rank_uniformity(rank, plan.draws)
    else:
        statistic, pvalue, bins = np.full(len(names), np.nan), np.full(len(names), np.nan), 0
    adjusted = holm(pvalue)
    ess = [np.nan if r["ess_bulk_min"] is None else r["ess_bulk_min"] for r in records]
    ds = xr.Dataset(
        {
            "rank": (("replication", "parameter"), rank),
            "true_value": (("replication", "parameter"), truth),
            "converged": ("replication", np.array([r["converged"] for r in records], dtype=bool)),
            "ess_bulk_min": ("replication", np.array(ess, dtype=np.float64)),
            "fit_seconds": ("replication", np.array([r["fit_seconds"] for r in records], dtype=np.float64)),
            "statistic": ("parameter", statistic),
            "pvalue": ("parameter", pvalue),
            "pvalue_holm": ("parameter", adjusted),
            "rejected": ("parameter", adjusted <= ALPHA),
        },
        coords={
            "replication": [r["replication"] for r in records],
            "parameter": names,
            "variable": ("parameter", [n.partition("[")[0] for n in names]),
            "label": ("parameter", [parameter_label(n, grid_shape) for n in names]),
        },
    )
    ds.attrs.update(draws=int(plan.draws), bins=int(bins), alpha=ALPHA, correction="holm",
                    test="chi-square on equal-width rank bins", settings=json.dumps(plan.settings(), sort_keys=True),
                    inference=plan.inference, env=plan.env, seed=int(plan.seed), failed=len(failures),
                    failures=json.dumps({str(k): v for k, v in sorted(failures.items())}),
                    thinning=f"{plan.draws} draws at evenly spaced positions of the run's draws (chains in turn)")
    if grid_shape is not None:
        ds.attrs["grid_shape"] = list(grid_shape)
    return ds


def to_markdown(ds: xr.Dataset) -> str:
    """``sbc.md``: the settings, the per-parameter table, the number rejected, and what to be careful about."""
    from mavrl_ppl.analysis.report import markdown_table

    settings = json.loads(ds.attrs["settings"])
    n, L, bins = ds.sizes["replication"], int(ds.attrs["draws"]), int(ds.attrs["bins"])
    size = f" {settings['env_size']}x{settings['env_size']}" if settings["env_size"] else ""
    lines = [f"## SBC: {settings['inference'].upper()} on {settings['env']}{size}, {n} replications, "
             f"ranks among L = {L} draws", "",
             f"Feedback {settings['feedback']}, seed {settings['seed']}; settings: `{ds.attrs['settings']}`.", "",
             f"Test per parameter: chi-square on {bins} bins of the rank ({bins - 1} degrees of freedom), "
             f"Holm's correction over {ds.sizes['parameter']} parameters at family-wise level {ALPHA}.", ""]
    rows = [[str(p), str(label), f"{s:.2f}", f"{pv:.3g}", f"{ph:.3g}", "REJECT" if rej else "ok"]
            for p, label, s, pv, ph, rej in zip(ds["parameter"].values, ds["label"].values, ds["statistic"].values,
                                                ds["pvalue"].values, ds["pvalue_holm"].values,
                                                ds["rejected"].values, strict=True)]
    lines += markdown_table(["parameter", "label", "chi-square", "p", "p (Holm)", "verdict"], rows).split("\n")
    rejected = int(ds["rejected"].sum())
    lines += ["", f"**{rejected} of {ds.sizes['parameter']} parameters rejected** (uniform ranks rejected after "
              f"Holm's correction at {ALPHA})."]
    notes = []
    failed = json.loads(ds.attrs["failures"])
    if failed:
        notes.append(f"{len(failed)} replications failed and are left out: "
                     + "; ".join(f"r{k}: {v[:200]}" for k, v in failed.items()))
    unconverged = int((~ds["converged"]).sum())
    if unconverged:
        notes.append(f"{unconverged} of {n} NUTS runs did not pass their convergence check (kept in the ranks).")
    low_ess = int((ds["ess_bulk_min"] < L).sum())
    if low_ess:
        notes.append(f"{low_ess} of {n} runs have a minimum bulk ESS below L = {L}: their thinned draws are "
                     "autocorrelated, which clumps their ranks.")
    if n and n < bins * MIN_EXPECTED:
        notes.append(f"Only {n} replications: fewer than {MIN_EXPECTED} expected per bin, the p-values are rough.")
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    if "wall_seconds" in ds.attrs:
        lines += ["", f"Wall time {float(ds.attrs['wall_seconds']):.1f} s ({int(ds.attrs['run'])} replications run, "
                  f"{int(ds.attrs['reused'])} reused)."]
    return "\n".join(lines) + "\n"


def plot_ecdf(ds: xr.Dataset, path: Path) -> None:
    """``sbc_ecdf.png``: per variable one panel with every parameter's ECDF difference of its fractional rank
    ``(rank + 0.5) / (L + 1)`` from the uniform CDF (ArviZ ``plot_ecdf(difference=True)``), and the 95 %
    simultaneous band of one parameter's ECDF under uniform ranks; rejected parameters in red."""
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    variables = list(dict.fromkeys(ds["variable"].values.tolist()))
    L, n = int(ds.attrs["draws"]), ds.sizes["replication"]
    fig, axes = plt.subplots(1, len(variables), figsize=(5.2 * len(variables), 4.0), squeeze=False,
                             layout="constrained")
    eval_points = np.linspace(0.0, 1.0, 101)  # fixed in advance: the band is simultaneous only for such points
    for ax, variable in zip(axes[0], variables, strict=True):
        members = ds.isel(parameter=np.flatnonzero(ds["variable"].values == variable))
        fractional = (members["rank"].values + 0.5) / (L + 1)
        for j in range(members.sizes["parameter"]):
            rejected = bool(members["rejected"].values[j])
            az.plot_ecdf(fractional[:, j], cdf=stats.uniform.cdf, difference=True, confidence_bands=j == 0,
                         ci_prob=0.95, eval_points=eval_points, ax=ax, random_state=0,
                         plot_kwargs={"color": "tab:red" if rejected else "tab:blue",
                                      "alpha": 1.0 if rejected else 0.35, "linewidth": 1.5 if rejected else 0.8},
                         fill_kwargs={"color": "0.8", "alpha": 0.6})
        count = members.sizes["parameter"]
        what = "state rewards" if variable == "reward" else variable
        ax.set_title(f"{what}: {count} parameter{'s' if count > 1 else ''}, "
                     f"{int(members['rejected'].sum())} rejected")
        ax.set_xlabel("fractional rank (rank + 0.5) / (L + 1)")
        ax.set_ylabel("ECDF \N{MINUS SIGN} uniform CDF")
    fig.suptitle(f"SBC, {ds.attrs['inference'].upper()} on {ds.attrs['env']}: ECDF differences of {n} ranks "
                 f"(grey: 95 % simultaneous band for one parameter; red: rejected)", fontsize=10)
    _write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


def plot_rank_histograms(ds: xr.Dataset, path: Path, count: int = HISTOGRAMS) -> None:
    """``sbc_ranks.png``: rank histograms of the ``count`` parameters with the smallest p-values, in the test's bins,
    with the expected count and the band holding 99 % of a bin's count under uniform ranks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    L, n, bins = int(ds.attrs["draws"]), ds.sizes["replication"], max(int(ds.attrs["bins"]), 2)
    order = np.argsort(np.nan_to_num(ds["pvalue"].values, nan=1.0), kind="stable")[:count]
    cols = min(3, len(order))
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, layout="constrained")
    values = L + 1
    width = np.bincount(np.arange(values) * bins // values, minlength=bins)  # ranks per bin
    edges = np.concatenate([[0], np.cumsum(width)]) - 0.5
    expected = n * width / values
    low, high = stats.binom.ppf(0.005, n, width / values), stats.binom.ppf(0.995, n, width / values)
    for ax, j in zip(axes.ravel(), order, strict=False):
        cell = ds.isel(parameter=int(j))
        ax.stairs(high, edges, baseline=low, fill=True, color="0.85", zorder=0, label="99 % band per bin")
        ax.hist(cell["rank"].values, bins=edges, color="tab:red" if bool(cell["rejected"]) else "tab:blue",
                edgecolor="white", alpha=0.75, zorder=1)
        ax.stairs(expected, edges, color="black", linewidth=1.0, zorder=2, label="expected")
        ax.set_title(f"{cell['label'].values}\np = {float(cell['pvalue']):.2g}, Holm p = "
                     f"{float(cell['pvalue_holm']):.2g}", fontsize=9)
        ax.set_xlabel(f"rank of the true value among L = {L} draws")
        ax.set_ylabel("replications")
        ax.set_xlim(-0.5, L + 0.5)
    for ax in axes.ravel()[len(order):]:
        ax.set_visible(False)
    axes.ravel()[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"SBC rank histograms ({n} replications, {bins} bins): the {len(order)} smallest p-values",
                 fontsize=10)
    _write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ the command


def run_sbc(
    inference: str,
    env: str,
    out: Path,
    *,
    env_size: int | None = None,
    replications: int = 200,
    seed: int = 0,
    feedback: str = DEFAULT_FEEDBACK,
    draws: int = DEFAULT_DRAWS,
    jobs: int | None = None,
    cluster: Any = None,
    svi_config: Path | None = None,
    nuts_config: Path | None = None,
    progress: bool = True,
    in_process: bool = False,
    fit: FitFunction = run_fit,
    plots: bool = True,
) -> xr.Dataset:
    """Run (or reuse) every replication, test the ranks and write ``sbc.{nc,md}``, ``sbc_ecdf.png`` and
    ``sbc_ranks.png`` into ``out``.

    Args:
        inference: ``svi`` or ``nuts``.
        env: tabular env name.
        out: output directory (``replications/``, ``records/`` and the results).
        env_size: grid side (``None``: the env's default).
        replications: N.
        seed: the SBC's seed (replication ``r`` uses ``SeedSequence([seed, r])``).
        feedback: counts ``type=count,...`` of every replication's data.
        draws: L, posterior draws each true value is ranked among.
        jobs: parallel fits (default: the number of cores).
        cluster: a Dask cluster for the fits (:func:`~mavrl_ppl.experiments.executor.run_tasks`); ``out`` is then
            made absolute and must be on a file system every worker shares.
        svi_config: TOML file of the fits' ``[svi]`` settings (a table ``[svi]`` or bare keys).
        nuts_config: TOML file of the fits' ``[nuts]`` settings.
        progress: a progress bar over replications.
        in_process: fit in this process (tests, debugging).
        fit: one fit (tests inject a fake).
        plots: write ``sbc_ecdf.png`` and ``sbc_ranks.png`` (about 3 s).

    Returns:
        The SBC Dataset (also written as ``sbc.nc``).
    """
    t0 = time.perf_counter()
    out = Path(out) if cluster is None else Path(out).absolute()
    plan = make_plan(inference, env, env_size=env_size, feedback=feedback, seed=seed, draws=draws,
                     svi=settings_table(svi_config, "svi"), nuts=settings_table(nuts_config, "nuts"))
    settings = plan.settings()
    records = {r: load_record(out, r, settings) for r in range(replications)}
    done = {f"r{r:04d}": Outcome("ok", record) for r, record in records.items() if record is not None}
    tasks = [Task(f"r{r:04d}", run_replication, (plan, r, out, fit)) for r in range(replications)]
    outcomes = run_tasks(tasks, jobs=jobs or os.cpu_count() or 1, in_process=in_process, done=done,
                         progress=progress, desc="replications", cluster=cluster)
    finished = [o.value for o in outcomes.values() if o.status == "ok"]
    failures = {int(name[1:]): o.message for name, o in outcomes.items() if o.status != "ok"}
    ds = assemble(finished, plan, failures, plan.mdp().grid_shape)
    ds.attrs.update(replications=int(replications), run=len(tasks) - len(done), reused=len(done),
                    wall_seconds=time.perf_counter() - t0, jobs=int(jobs or os.cpu_count() or 1),
                    cluster=str(cluster or ""))
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "sbc.nc", lambda tmp: ds.to_netcdf(tmp, engine=ENGINE))
    _write_atomic(out / "sbc.md", lambda tmp: tmp.write_text(to_markdown(ds)))
    if plots and ds.sizes["replication"] >= 2:
        plot_ecdf(ds, out / "sbc_ecdf.png")
        plot_rank_histograms(ds, out / "sbc_ranks.png")
    return ds


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mavrl_ppl.experiments.sbc``."""
    p = argparse.ArgumentParser(prog="python -m mavrl_ppl.experiments.sbc",
                                description="Simulation-based calibration of the SVI or NUTS fit.")
    p.add_argument("--inference", choices=("svi", "nuts"), default="svi", help="the fit to calibrate")
    p.add_argument("--env", default="grid_cliff", help="tabular env (its reward is replaced by prior draws)")
    p.add_argument("--env-size", type=int, default=None, help="grid side (default: the env's)")
    p.add_argument("--replications", type=int, default=200, help="N, simulated data sets and fits")
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS, help="L, posterior draws each true value is ranked "
                                                                    "among (taken evenly from the run's draws)")
    p.add_argument("--seed", type=int, default=0, help="replication r uses SeedSequence([seed, r])")
    p.add_argument("--feedback", default=DEFAULT_FEEDBACK, help=f"counts per replication (default {DEFAULT_FEEDBACK})")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--jobs", type=int, default=None, help="parallel fits (default: number of cores)")
    p.add_argument("--cluster", default=None, help="run the fits on Dask: tcp://HOST:8786 or local:N")
    p.add_argument("--svi-config", type=Path, default=None, help="TOML settings file for the SVI fits")
    p.add_argument("--nuts-config", type=Path, default=None, help="TOML settings file for the NUTS fits")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_arguments(args: argparse.Namespace) -> None:
    """Every argument checked before any work; ``ValueError`` / ``UsageError`` name what is wrong."""
    from mavrl_ppl.runs import resolve_config

    for name in ("replications", "draws", "env_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    check_fit_options(args.jobs, args.cluster, (args.svi_config, args.nuts_config))
    from mavrl_ppl.feedback import registered
    from mavrl_ppl.feedback.data import parse_counts

    if not any(parse_counts(args.feedback, registered()).values()):
        raise ValueError(f"--feedback {args.feedback!r} requests no feedback")
    table = settings_table(args.nuts_config if args.inference == "nuts" else args.svi_config, args.inference)
    config = resolve_config({"inference": args.inference, "env": args.env, "env_size": args.env_size,
                             "feedback": args.feedback, args.inference: table or {}})
    from mavrl_ppl.envs.grids import make_tabular

    make_tabular(args.env, size=args.env_size)
    available = (config["svi"]["num_posterior_samples"] if args.inference == "svi"
                 else config["nuts"]["num_chains"] * config["nuts"]["num_samples"])
    if available < args.draws:
        raise ValueError(f"a fit keeps {available} posterior draws, fewer than --draws {args.draws}")


def main(argv: list[str] | None = None) -> int:
    """Run the command; exit status 0 when the results were written, 2 on bad arguments (one line), 1 when the
    ``--cluster`` scheduler cannot be reached or is lost, 130 on Ctrl-C (finished replications are kept)."""
    from mavrl_ppl.errors import UsageError
    from mavrl_ppl.experiments.baseline_table import RecordError

    args = build_parser().parse_args(argv)
    try:
        _check_arguments(args)
    except (ValueError, UsageError, RecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    return run_command(lambda: run_sbc(
        args.inference, args.env, args.out, env_size=args.env_size, replications=args.replications, seed=args.seed,
        feedback=args.feedback, draws=args.draws, jobs=args.jobs, cluster=args.cluster,
        svi_config=args.svi_config.resolve() if args.svi_config else None,
        nuts_config=args.nuts_config.resolve() if args.nuts_config else None, progress=not args.quiet),
        report=to_markdown, written=f"{args.out}/sbc.{{nc,md}}, sbc_ecdf.png, sbc_ranks.png",
        kept="finished replications are kept")


if __name__ == "__main__":
    sys.exit(main())
