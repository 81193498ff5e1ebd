"""Transfer to perturbed environments: a reward learned on the training env, reused unchanged where the dynamics differ.

``python -m mavrl_ppl.experiments.transfer --env grid_trap --levels 0:0.8:0.1 --seeds 0-9 --out DIR``

The design of REFERENCE_EXPERIMENTS §2 (fig:robustness-ood), without its two flaws: no policy is ever selected by the
true return, and Acrobot's asymmetry 1.0 is stock Acrobot-v1 (:mod:`mavrl_ppl.envs.perturbed`).

1. Fits, once per env, seed and feedback subset, on the UNPERTURBED env, each a :func:`mavrl_ppl.runs.run` through the
   one executor (:mod:`mavrl_ppl.experiments.executor`): the all-types run (``svi_<env>_seed<S>``) simulates the seed's
   feedback at ``--feedback``'s allocation; every other subset fits its types' items cut from that run's
   ``feedback.nc`` (``svi-<subset>_<env>_seed<S>``, data in ``DIR/data``). Run directories are named as the baseline
   table's (``svi``, ``svi-pref``, ...): a finished one (``metrics.json``) is reused, also one of a baseline table
   given as ``--runs``.
2. Evaluation of the learned posterior-mean reward, unchanged, at every perturbation level (one executor task per env,
   seed and subset, after its fit):

   - Grids: re-plan EXACTLY in the perturbed dynamics (``Q*`` of the learned reward in the ``p_rand`` transition
     tensor, greedy policy), value of that policy under the TRUE reward in the perturbed dynamics, normalised with the
     UNPERTURBED constants as the paper does: ``100 (v - v_uniform) / (v_optimal - v_uniform)`` of the ``p_rand = 0``
     grid. A score can therefore fall with ``p_rand`` even for the true reward; the table and figures show that
     ceiling ("true reward, re-planned"). (The uniform policy's value does not change with ``p_rand``: noise on a
     uniformly random action leaves it uniformly random.)
   - Control envs: SB3 PPO trained from scratch in the perturbed env on the learned reward (the run's
     ``reward_model.pt``; :func:`mavrl_ppl.analysis.retrain.retrain_ppo`, ``--ppo-timesteps``, the FINAL policy: no
     checkpoint is chosen by the true return), then its mean true undiscounted return over ``--eval-episodes``
     episodes in the perturbed env, normalised with the unperturbed env's constants (REFERENCE §4).
   - ``imitation``, the reference line: a policy fixed on the training env and executed unchanged in the perturbed
     one, i.e. what copying the demonstrator's behaviour gives without a reward to re-plan with. Grids: the greedy
     policy of ``Q*`` of the demonstrations-only fit's posterior-mean reward in the UNPERTURBED dynamics. Control
     envs: the greedy policy of the demonstrations-only fit's Q-network (the published imitation policy; no PPO).

   Each task writes its record ``DIR/records/<env>_seed<S>_<subset>.json`` atomically after every level, so an
   interrupted control-env evaluation resumes at the next level; a record made with other settings is not used.
   A cell whose record holds every requested level needs neither its run directory nor a fit.
3. Outputs in ``DIR``: ``transfer.nc`` (xarray: per env, seed, subset and level the normalised return and the raw
   value, with the statuses), ``transfer.md`` and ``transfer.tex`` (mean ± SE over seeds per level), the panel figure
   ``transfer.png`` (one panel per env: the all-types fit, each single type and imitation; mean line with SE band) and
   ``transfer_<env>.png`` per env with all subsets. Failed fits and evaluations are counted and listed, never dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mavrl_ppl.analysis.report import format_mean_se, latex_escape, latex_tabular, markdown_table, mean_se
from mavrl_ppl.envs.allocation import paper_allocation
from mavrl_ppl.envs.perturbed import check_level, perturbation
from mavrl_ppl.experiments.baseline_table import (
    FitFunction,
    FitSpec,
    _fit_task,
    check_fit_options,
    fit_config,
    parse_seeds,
    record_settings,
    run_fit,
    settings_table,
)
from mavrl_ppl.experiments.executor import Outcome, Task, run_command, run_tasks
from mavrl_ppl.netcdf import ENGINE

__all__ = [
    "DEFAULT_LEVELS",
    "IMITATION",
    "MAIN_SUBSETS",
    "SUBSETS",
    "TYPES",
    "evaluate_cell",
    "main",
    "parse_levels",
    "parse_subsets",
    "plot_transfer",
    "run_transfer",
    "to_markdown",
]

TYPES = ("pref", "demo", "rating", "stop")
#: The published figure's 11 subsets (REFERENCE_EXPERIMENTS §3's list): each single type, each pair, all four.
SUBSETS = ("pref", "demo", "rating", "stop", "pref+demo", "pref+rating", "pref+stop", "demo+rating", "demo+stop",
           "rating+stop", "pdrs")
IMITATION = "imitation"
#: The main figure's lines (fig:robustness-ood): all four, each single type, imitation.
MAIN_SUBSETS = ("pdrs", "pref", "demo", "rating", "stop", IMITATION)
LABELS = {"pdrs": "PDRS (all four)", "pref": "Pref", "demo": "Demo", "rating": "Rating", "stop": "Stop",
          "pref+demo": "P+D", "pref+rating": "P+R", "pref+stop": "P+S", "demo+rating": "D+R", "demo+stop": "D+S",
          "rating+stop": "R+S", IMITATION: "imitation (demo policy)"}
#: The published levels (REFERENCE_EXPERIMENTS §2) per perturbation.
DEFAULT_LEVELS = {
    "p_rand": "0:0.8:0.1",
    "asymmetry": "1.0,1.05,1.1,1.15,1.2,1.3,1.4,1.5,1.6,1.7,1.8,1.9,2.0",
    "wind_power": "0,5,10,15,20,25",
}
#: Control envs: PPO steps per level when ``--ppo-timesteps`` is not given (the published Acrobot / Lander budgets).
DEFAULT_PPO = {"Acrobot-v1": 200_000, "LunarLander-v3": 500_000}
#: Digits of a level in record keys and labels (levels are compared by this text).
LEVEL_DIGITS = 10


# ------------------------------------------------------------------------------------------------ arguments


def level_key(level: float) -> str:
    """A level as the text records key it by (``0.3``, ``1.05``)."""
    return f"{round(float(level), LEVEL_DIGITS):g}"


def parse_levels(text: str, env: str) -> list[float]:
    """``--levels``: ``start:stop:step`` (both ends included) or a comma list, each level inside the env's range.

    Raises:
        ValueError: a malformed spec, an empty one, a level outside the range, or a repeated level.
    """
    text = str(text).strip()
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if not step > 0 or stop < start:
                raise ValueError("the step must be positive and stop >= start")
            count = int(np.floor((stop - start) / step + 1e-9)) + 1
            levels = [round(start + i * step, LEVEL_DIGITS) for i in range(count)]
        else:
            levels = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"bad --levels {text!r}: expected start:stop:step or a list like 0,0.4 ({exc})") from None
    if not levels:
        raise ValueError(f"bad --levels {text!r}: no levels")
    levels = [check_level(env, level) for level in levels]
    if len({level_key(v) for v in levels}) != len(levels):
        raise ValueError(f"bad --levels {text!r}: a level is repeated")
    return levels


def canonical_subset(name: str) -> str:
    """``demo+pref`` -> ``pref+demo`` (types in :data:`TYPES` order); ``pref+demo+rating+stop`` -> ``pdrs``."""
    name = name.strip()
    if name in (IMITATION, "pdrs"):
        return name
    parts = name.split("+")
    if any(p not in TYPES for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"unknown subset {name!r}: use types {', '.join(TYPES)} joined by '+', 'pdrs' or "
                         f"'{IMITATION}'")
    ordered = [t for t in TYPES if t in parts]
    return "pdrs" if len(ordered) == len(TYPES) else "+".join(ordered)


def parse_subsets(text: str) -> list[str]:
    """``--subsets``: a comma list (``all`` = the 11 subsets and imitation)."""
    if text.strip() == "all":
        return [*SUBSETS, IMITATION]
    subsets = list(dict.fromkeys(canonical_subset(p) for p in text.split(",") if p.strip()))
    if not subsets:
        raise ValueError("--subsets names no subset")
    return subsets


def fitted_subset(subset: str) -> str:
    """The subset whose fit a line needs (imitation: the demonstrations-only fit)."""
    return "demo" if subset == IMITATION else subset


def run_label(subset: str) -> str:
    """Run-directory prefix of a subset's fit, as the baseline table names its runs."""
    return "svi" if subset == "pdrs" else f"svi-{subset}"


# ------------------------------------------------------------------------------------------------ one cell


@dataclass(frozen=True)
class Cell:
    """One env, seed and subset: what its evaluation task needs (picklable).

    Attributes:
        env: env name.
        seed: seed.
        subset: a :data:`SUBSETS` entry or :data:`IMITATION`.
        run: the fit's run directory.
        levels: perturbation levels to evaluate.
        records: the records directory.
        settings: what the record depends on (JSON).
        env_size: grid side (``None``: the env's).
        gravity: LunarLander's gravity.
        ppo_timesteps: control envs: PPO steps per level.
        eval_episodes: control envs: true-return episodes per level.
    """

    env: str
    seed: int
    subset: str
    run: Path
    levels: tuple[float, ...]
    records: Path
    settings: Mapping[str, Any] = field(default_factory=dict)
    env_size: int | None = None
    gravity: float = -10.0
    ppo_timesteps: int = 0
    eval_episodes: int = 100

    @property
    def name(self) -> str:
        return f"transfer-{self.subset}_{self.env}_seed{self.seed}"


def record_path(records: Path, env: str, seed: int, subset: str) -> Path:
    """``records/<env>_seed<S>_<subset>.json``."""
    return Path(records) / f"{env}_seed{seed}_{subset}.json"


def load_record(records: Path, env: str, seed: int, subset: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """A cell's record made with ``settings`` (its ``levels`` may be a subset of the requested ones), else an empty
    record (also for an unreadable file, which the cell then rewrites)."""
    path = record_path(records, env, seed, subset)
    empty = {"env": env, "seed": int(seed), "subset": subset, "settings": dict(settings), "levels": {}, "fit": {}}
    if not path.is_file():
        return empty
    try:
        record = json.loads(path.read_text())
        return record if record["settings"] == dict(settings) and isinstance(record["levels"], dict) else empty
    except (OSError, ValueError, KeyError, TypeError):
        return empty


def _save_record(path: Path, record: Mapping[str, Any]) -> None:
    """Write a record atomically (a reader never sees half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)


def evaluate_cell(cell: Cell) -> dict[str, Any]:
    """Evaluate one cell at every level its record lacks (an executor task); returns the complete record.

    The record is saved after each level, so a killed control-env evaluation resumes at the next level.
    """
    from mavrl_ppl.runs import load_run

    record = load_record(cell.records, cell.env, cell.seed, cell.subset, cell.settings)
    run = load_run(cell.run)
    record["fit"] = {k: run.metrics[k] for k in ("normalized_score", "fit_seconds", "mean_return") if k in run.metrics}
    missing = [level for level in cell.levels if level_key(level) not in record["levels"]]
    path = record_path(cell.records, cell.env, cell.seed, cell.subset)
    evaluate = _grid_evaluator(cell, run) if cell.env.startswith("grid_") else _control_evaluator(cell, run)
    for level in missing:  # a few levels; each is a whole re-planning or PPO training
        start = time.perf_counter()
        record["levels"][level_key(level)] = {**evaluate(level), "seconds": time.perf_counter() - start}
        _save_record(path, record)
    _save_record(path, record)
    return record


def _grid_evaluator(cell: Cell, run: Any) -> Callable[[float], dict[str, float]]:
    """Level -> the learned reward's (or the imitation policy's) true value in the perturbed grid, normalised with the
    unperturbed grid's constants."""
    from mavrl_ppl.analysis.metrics import discounted_value, greedy_policy_for, learned_reward, normalization_constants
    from mavrl_ppl.envs.perturbed import perturbed_grid

    base = perturbed_grid(cell.env, 0.0, size=cell.env_size)
    v_optimal, v_uniform = normalization_constants(base)
    mean = run.posterior_mean()
    fixed = greedy_policy_for(base, learned_reward(base, mean)) if cell.subset == IMITATION else None

    def evaluate(level: float) -> dict[str, float]:
        mdp = perturbed_grid(cell.env, level, size=cell.env_size)
        policy = fixed if fixed is not None else greedy_policy_for(mdp, learned_reward(mdp, mean))
        v = discounted_value(mdp, policy)
        best = discounted_value(mdp, greedy_policy_for(mdp, mdp.rewards))
        return {"normalized_return": 100.0 * (v - v_uniform) / (v_optimal - v_uniform), "value": v,
                "optimal_value": best, "optimal_normalized": 100.0 * (best - v_uniform) / (v_optimal - v_uniform),
                "regret": best - v}

    return evaluate


class _GreedyQ:
    """SB3's ``predict`` interface over a Q-function: the greedy action of ``q_fn(obs)``."""

    def __init__(self, q_fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.q_fn = q_fn

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        return np.argmax(self.q_fn(np.asarray(obs, dtype=np.float32)), axis=-1), None


def _control_evaluator(cell: Cell, run: Any) -> Callable[[float], dict[str, float]]:
    """Level -> the true return, in the perturbed env, of PPO trained there from scratch on the learned reward (or of
    the imitation policy), normalised with the unperturbed env's constants."""
    from mavrl_ppl.analysis.retrain import evaluate_true_return, retrain_ppo
    from mavrl_ppl.envs.control import normalized_score
    from mavrl_ppl.envs.perturbed import perturbed_env, register_perturbed_envs

    register_perturbed_envs()  # this may be a fresh worker process
    if cell.subset == IMITATION:
        imitation = _GreedyQ(run.q_function())
    else:
        reward_fn, offset = run.reward_function(), float(run.metrics.get("reward_offset", 0.0))

    def evaluate(level: float) -> dict[str, float]:
        target = perturbed_env(cell.env, level, gravity=cell.gravity)
        if cell.subset == IMITATION:
            policy = imitation
        else:
            policy = retrain_ppo(target.env_id, reward_fn, cell.ppo_timesteps, cell.seed, offset=offset,
                                 env_kwargs=target.kwargs, settings_of=cell.env)
        returns = evaluate_true_return(policy, target.env_id, cell.eval_episodes, seed=10_000 + 1000 * cell.seed,
                                       env_kwargs=target.kwargs)
        mean = float(returns.mean())
        return {"normalized_return": normalized_score(cell.env, mean), "value": mean,
                "return_sd": float(returns.std(ddof=1)) if len(returns) > 1 else 0.0}

    return evaluate


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Plan:
    """Everything one invocation does.

    Attributes:
        envs: env -> its levels.
        seeds: seeds.
        subsets: lines (subsets and imitation).
        out: output directory.
        runs: run directories (default ``out/runs``).
        records: records directory (default ``out/records``).
        feedback: env -> the all-types allocation.
        env_size: grid side (``None``: the env's).
        svi_config: TOML file of the fits' ``[svi]`` settings.
        gravity: LunarLander's gravity.
        ppo_timesteps: control envs: PPO steps per level (``None``: :data:`DEFAULT_PPO`).
        eval_episodes: control envs: true-return episodes.
    """

    envs: Mapping[str, tuple[float, ...]]
    seeds: tuple[int, ...]
    subsets: tuple[str, ...]
    out: Path
    runs: Path
    records: Path
    feedback: Mapping[str, str]
    env_size: int | None = None
    svi_config: Path | None = None
    gravity: float = -10.0
    ppo_timesteps: int | None = None
    eval_episodes: int = 100

    def ppo(self, env: str) -> int:
        return int(self.ppo_timesteps or DEFAULT_PPO.get(env, 0))

    def settings(self, env: str) -> dict[str, Any]:
        """What a cell's record depends on beyond env, seed, subset and level (JSON)."""
        settings = {**record_settings(self.feedback[env], self.env_size, self.svi_config, None), "env": env}
        settings.pop("nuts_config")
        if not env.startswith("grid_"):
            settings.update(ppo_timesteps=self.ppo(env), eval_episodes=self.eval_episodes,
                            gravity=self.gravity if env == "LunarLander-v3" else None)
        return settings

    def fit_spec(self, env: str, seed: int, subset: str) -> FitSpec:
        """The fit a line needs (the baseline table's :class:`FitSpec`: all-types run simulated, the others cut)."""
        fitted = fitted_subset(subset)
        out = self.runs / f"{run_label(fitted)}_{env}_seed{seed}"
        if fitted == "pdrs":
            return FitSpec("svi", env, seed, out)
        source = f"svi_{env}_seed{seed}"
        return FitSpec(run_label(fitted), env, seed, out, depends_on=source,
                       data=self.out / "data" / f"{env}_seed{seed}" / f"{fitted}.nc", single_type=fitted)


def _fit_tasks(plan: Plan, needed: Sequence[tuple[str, int, str]], fit: FitFunction) -> tuple[list[Task], set[str]]:
    """Executor tasks of the fits the unrecorded cells need (each cut subset after its all-types run), and the names
    of those already finished (reused)."""
    svi_table = settings_table(plan.svi_config, "svi")
    specs: dict[str, FitSpec] = {}
    for env, seed, subset in needed:
        spec = plan.fit_spec(env, seed, subset)
        if spec.depends_on is not None:
            source = plan.fit_spec(env, seed, "pdrs")
            specs.setdefault(source.name, source)
        specs.setdefault(spec.name, spec)
    tasks, reused = [], set()
    for name, spec in specs.items():
        config = fit_config(spec, feedback=plan.feedback[spec.env], env_size=plan.env_size, svi_settings=svi_table,
                            nuts_settings=None)
        if not spec.env.startswith("grid_"):  # the run's own in-distribution PPO check, at the transfer's budget
            config.update(ppo_timesteps=plan.ppo(spec.env), eval_episodes=plan.eval_episodes)
        if (spec.out / "metrics.json").is_file():
            _check_reused(spec, config)
            reused.add(name)
            continue
        source = specs[spec.depends_on].out / "feedback.nc" if spec.depends_on else None
        tasks.append(Task(name, _fit_task, (fit, config, spec.out, source, spec.single_type), spec.depends_on))
    return tasks, reused


class SettingsMismatch(ValueError):
    """A finished run that the plan would reuse was fitted with other settings."""


def _check_reused(spec: FitSpec, config: dict[str, Any]) -> None:
    """Refuse to reuse a finished run (e.g. a baseline table's, through ``--runs``) fitted with other settings than
    the plan's: its reward would not be the one the plan describes.

    Raises:
        SettingsMismatch: naming the run and the settings that differ.
    """
    from mavrl_ppl.runs import load_run, resolve_config

    stored = load_run(spec.out).config
    # Without "data": a cut subset's data file is this plan's, which need not exist where the run is reused from.
    planned = json.loads(json.dumps(resolve_config({k: v for k, v in config.items() if k != "data"})))
    keys = ["env", "env_size", "seed", "p_rand", "svi", *(["feedback"] if spec.data is None else []),
            *([] if spec.env.startswith("grid_") else ["ppo_timesteps"])]
    differ = [k for k in keys if stored.get(k) != planned.get(k)]
    if differ:
        raise SettingsMismatch(f"{spec.out}: a finished run fitted with other settings ({', '.join(differ)}); "
                               "give another --out/--runs, or the settings it was made with")


def run_transfer(plan: Plan, *, jobs: int | None = None, cluster: Any = None, fit: FitFunction = run_fit,
                 progress: bool = True, in_process: bool = False, plots: bool = True) -> xr.Dataset:
    """Fit (or reuse), evaluate every cell at every level, and write the results into ``plan.out``.

    Args:
        plan: the experiment.
        jobs: parallel tasks (default: the number of cores).
        cluster: a Dask cluster for the tasks (:func:`~mavrl_ppl.experiments.executor.run_tasks`).
        fit: one fit (:data:`~mavrl_ppl.experiments.baseline_table.FitFunction`; tests may inject another).
        progress: a progress bar over tasks.
        in_process: run the tasks in this process (tests, debugging).
        plots: write the figures.

    Returns:
        The results Dataset (also written as ``transfer.nc``).

    Raises:
        SettingsMismatch: a finished run it would reuse was made with other settings (nothing is run).
    """
    t0 = time.perf_counter()
    cells: dict[tuple[str, int, str], Cell] = {}
    records: dict[tuple[str, int, str], dict[str, Any]] = {}
    for env, levels in plan.envs.items():
        settings = plan.settings(env)
        for seed in plan.seeds:
            for subset in plan.subsets:
                key = (env, seed, subset)
                records[key] = load_record(plan.records, env, seed, subset, settings)
                cells[key] = Cell(env, seed, subset, plan.fit_spec(env, seed, subset).out, tuple(levels),
                                  plan.records, settings, plan.env_size, plan.gravity, plan.ppo(env),
                                  plan.eval_episodes)
    complete = {k for k, r in records.items() if all(level_key(v) in r["levels"] for v in cells[k].levels)}
    needed = [k for k in cells if k not in complete]
    fit_tasks, reused = _fit_tasks(plan, needed, fit)
    fit_names = {k: plan.fit_spec(*k).name for k in needed}
    eval_tasks = [Task(cells[k].name, evaluate_cell, (cells[k],), fit_names[k]) for k in needed]
    done = {name: Outcome("ok") for name in reused}
    outcomes = run_tasks([*fit_tasks, *eval_tasks], jobs=jobs or os.cpu_count() or 1, in_process=in_process,
                         done=done, progress=progress, desc="transfer", cluster=cluster)
    status: dict[tuple[str, int, str], tuple[str, str]] = {k: ("ok", "") for k in complete}
    for k in needed:
        outcome, fitted = outcomes[cells[k].name], outcomes.get(fit_names[k], Outcome("ok"))
        if outcome.status == "ok":
            records[k], status[k] = outcome.value, ("ok", "")
        elif fitted.status != "ok":  # the evaluation was skipped: say why the fit did not finish
            status[k] = ("failed", f"fit {fit_names[k]} {fitted.status}: {fitted.message}")
        else:
            status[k] = ("failed", f"evaluation {outcome.status}: {outcome.message}")
    ds = assemble(plan, records, status)
    ds.attrs.update(wall_seconds=time.perf_counter() - t0, fits_run=len(fit_tasks), fits_reused=len(reused),
                    cells_from_records=len(complete), cells_evaluated=len(needed),
                    jobs=int(jobs or os.cpu_count() or 1), cluster=str(cluster or ""))
    write_outputs(ds, plan.out, plots=plots)
    return ds


# ------------------------------------------------------------------------------------------------ results


def assemble(plan: Plan, records: Mapping[tuple[str, int, str], Mapping[str, Any]],
             status: Mapping[tuple[str, int, str], tuple[str, str]]) -> xr.Dataset:
    """The results Dataset.

    Dims ``env``, ``seed``, ``subset`` and ``level_index`` (envs have different levels; ``level (env, level_index)``
    holds them, NaN-padded). Variables: ``normalized_return`` and ``value`` (grids: true discounted value from the
    start; control: mean true return) per env, seed, subset and level; ``optimal_normalized`` (grids: the true
    reward's own re-planned policy, normalised alike; NaN on control envs) per env and level; ``status`` /
    ``message`` per env, seed and subset; ``normalized_return_mean`` / ``_se`` / ``n_ok`` over seeds;
    ``fit_score`` (the fit's own in-distribution normalised score).
    """
    envs, seeds, subsets = list(plan.envs), list(plan.seeds), list(plan.subsets)
    width = max(len(v) for v in plan.envs.values())
    level = np.full((len(envs), width), np.nan)
    shape = (len(envs), len(seeds), len(subsets), width)
    score, value = np.full(shape, np.nan), np.full(shape, np.nan)
    ceiling = np.full((len(envs), width), np.nan)
    fit_score = np.full(shape[:3], np.nan)
    state = np.full(shape[:3], "", dtype=object)
    message = np.full(shape[:3], "", dtype=object)
    for e, env in enumerate(envs):
        level[e, : len(plan.envs[env])] = plan.envs[env]
        for s, seed in enumerate(seeds):
            for j, subset in enumerate(subsets):
                key = (env, seed, subset)
                state[e, s, j], message[e, s, j] = status[key]
                if status[key][0] != "ok":
                    continue
                fit_score[e, s, j] = float(records[key]["fit"].get("normalized_score", np.nan))
                for i, lv in enumerate(plan.envs[env]):
                    entry = records[key]["levels"][level_key(lv)]
                    score[e, s, j, i], value[e, s, j, i] = entry["normalized_return"], entry["value"]
                    ceiling[e, i] = entry.get("optimal_normalized", np.nan)
    mean, se, n = mean_se(np.moveaxis(score, 1, -1))
    dims = ("env", "seed", "subset", "level_index")
    ds = xr.Dataset(
        {
            "normalized_return": (dims, score),
            "value": (dims, value),
            "optimal_normalized": (("env", "level_index"), ceiling),
            "fit_score": (dims[:3], fit_score),
            "status": (dims[:3], state.astype(str)),
            "message": (dims[:3], message.astype(str)),
            "normalized_return_mean": (("env", "subset", "level_index"), mean),
            "normalized_return_se": (("env", "subset", "level_index"), se),
            "n_ok": (("env", "subset", "level_index"), n.astype(np.int64)),
        },
        coords={"env": envs, "seed": seeds, "subset": subsets, "level_index": np.arange(width),
                "level": (("env", "level_index"), level),
                "perturbation": ("env", [perturbation(env).name for env in envs])},
    )
    ds.attrs.update(
        normalisation="100 (v - v_uniform) / (v_optimal - v_uniform) with the UNPERTURBED env's constants",
        grid_evaluation="exact re-planning (Q* of the learned posterior-mean reward) in the perturbed dynamics; value "
                        "of the greedy policy under the true reward",
        control_evaluation="PPO from scratch in the perturbed env on the learned reward, final policy; mean true "
                           "return",
        imitation="greedy policy of the demonstrations-only fit (grids: Q* of its reward in the unperturbed "
                  "dynamics; control: its Q-network), executed unchanged in the perturbed env",
        feedback=json.dumps(dict(plan.feedback)), env_size=int(plan.env_size or 0), gravity=float(plan.gravity),
        ppo_timesteps=json.dumps({env: plan.ppo(env) for env in envs if not env.startswith("grid_")}),
        eval_episodes=int(plan.eval_episodes), svi_config=str(plan.svi_config or ""),
    )
    return ds


def _levels_of(ds: xr.Dataset, env: str) -> np.ndarray:
    levels = ds["level"].sel(env=env).values
    return levels[np.isfinite(levels)]


def _rows(ds: xr.Dataset, env: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of an env's table: one row per subset, one column per level (mean ± SE over seeds)."""
    levels = _levels_of(ds, env)
    e = ds.sel(env=env)
    header = ["subset", "seeds ok", *[f"{perturbation(env).name} {level_key(v)}" for v in levels]]
    rows = []
    for subset in ds["subset"].values:
        cell = e.sel(subset=subset)
        ok = int((cell["status"] == "ok").sum())
        rows.append([LABELS.get(str(subset), str(subset)), f"{ok}/{ds.sizes['seed']}",
                     *[format_mean_se(float(cell["normalized_return_mean"][i]), float(cell["normalized_return_se"][i]),
                                      1, missing_se="n/a") for i in range(len(levels))]])
    if np.isfinite(e["optimal_normalized"].values).any():
        rows.append(["true reward, re-planned", "-",
                     *[f"{float(v):.1f}" for v in e["optimal_normalized"].values[: len(levels)]]])
    return header, rows


def to_markdown(ds: xr.Dataset) -> str:
    """``transfer.md``: per env the normalised return at every level (mean ± SE over seeds), what it means, and the
    failures."""
    seeds = [int(s) for s in ds["seed"].values]
    lines = [f"## Transfer to perturbed environments: normalised return, mean ± SE over seeds "
             f"{', '.join(map(str, seeds))}", "",
             "Every reward was learned ONCE on the unperturbed env and is reused unchanged at every level. Scores "
             "are normalised with the UNPERTURBED env's constants, 100 (v - v_uniform) / (v_optimal - v_uniform), "
             "as the paper does, so they may fall with the perturbation even for the true reward (row 'true reward, "
             "re-planned' on grids).", "",
             "- Grids: exact re-planning of the learned posterior-mean reward in the perturbed dynamics; the greedy "
             "policy's value under the true reward from the start state. At p_rand = 0.8 every executed action is "
             "uniformly random (1 - p = p / 4), so every policy scores exactly 0.",
             "- Control envs: PPO trained from scratch in the perturbed env on the learned reward (final policy; the "
             "true return selects nothing); its mean true return.",
             "- imitation: the greedy policy of the demonstrations-only fit (grids: Q* of its reward in the "
             "UNPERTURBED dynamics; control: its Q-network), executed unchanged in the perturbed env.", ""]
    for env in ds["env"].values:
        header, rows = _rows(ds, str(env))
        lines += [f"### {env}", "", *markdown_table(header, rows).split("\n"), ""]
    bad = [(str(e), int(s), str(j), str(ds["message"].sel(env=e, seed=s, subset=j).values))
           for e in ds["env"].values for s in ds["seed"].values for j in ds["subset"].values
           if str(ds["status"].sel(env=e, seed=s, subset=j).values) != "ok"]
    lines += [f"Failed cells: {len(bad)} of {ds.sizes['env'] * ds.sizes['seed'] * ds.sizes['subset']} "
              "(left out of the means, counted in 'seeds ok')."]
    if bad:
        lines += ["", *markdown_table(["env", "seed", "subset", "reason"],
                                      [[e, str(s), j, m[:300]] for e, s, j, m in bad]).split("\n")]
    if "wall_seconds" in ds.attrs:
        lines += ["", f"Wall time of this invocation {float(ds.attrs['wall_seconds']):.1f} s: "
                  f"{int(ds.attrs['fits_run'])} fits run, {int(ds.attrs['fits_reused'])} reused, "
                  f"{int(ds.attrs['cells_evaluated'])} cells evaluated, {int(ds.attrs['cells_from_records'])} taken "
                  "from their records."]
    return "\n".join(lines) + "\n"


def to_latex(ds: xr.Dataset) -> str:
    """``transfer.tex``: one booktabs table per env (the Markdown tables)."""
    tables = []
    for env in ds["env"].values:
        header, rows = _rows(ds, str(env))
        tables.append(latex_tabular([latex_escape(h) for h in header], [[latex_escape(c) for c in r] for r in rows],
                                    latex_escape(f"{env}: normalised return (unperturbed constants), mean ± SE over "
                                                 "seeds, at each perturbation level."), placement="t", size="small"))
    return "\n\n".join(tables) + "\n"


def plot_transfer(ds: xr.Dataset, path: Path, subsets: Sequence[str], *, envs: Sequence[str] | None = None,
                  title: str = "") -> Path:
    """Normalised return against the perturbation level: one panel per env, a mean line with a ±1 SE band per
    subset (imitation dashed grey; on grids the true reward's re-planned policy dotted black).

    Args:
        ds: the results Dataset.
        path: PNG to write.
        subsets: the lines (those not in ``ds`` are skipped).
        envs: the panels (default every env).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(envs if envs is not None else ds["env"].values)
    present = [s for s in subsets if s in ds["subset"].values]
    fig, axes = plt.subplots(1, len(envs), figsize=(1.0 + 4.2 * len(envs), 4.0), squeeze=False, sharey=False)
    tab10 = plt.get_cmap("tab10")
    palette = [tab10(i) if i != 7 else "navy" for i in range(10)]  # tab10's grey is imitation's
    for ax, env in zip(axes[0], envs, strict=True):
        levels = _levels_of(ds, env)
        e = ds.sel(env=env)
        for subset in present:
            mean = e["normalized_return_mean"].sel(subset=subset).values[: len(levels)]
            se = np.nan_to_num(e["normalized_return_se"].sel(subset=subset).values[: len(levels)])
            style = ({"color": "0.45", "linestyle": "--"} if subset == IMITATION else
                     {"color": "black", "linewidth": 2.2} if subset == "pdrs" else
                     {"color": palette[SUBSETS.index(subset)],  # a subset's colour is the same in every figure
                      "linestyle": "-." if "+" in subset else "-"})  # pairs dash-dotted
            ax.plot(levels, mean, marker="o", markersize=3, label=LABELS.get(subset, subset), **style)
            ax.fill_between(levels, mean - se, mean + se, color=style["color"], alpha=0.15, linewidth=0)
        ceiling = e["optimal_normalized"].values[: len(levels)]
        if np.isfinite(ceiling).any():
            ax.plot(levels, ceiling, color="black", linestyle=":", linewidth=1.2, label="true reward, re-planned")
        ax.axhline(0.0, color="0.7", linewidth=0.6)
        ax.axhline(100.0, color="0.7", linewidth=0.6)
        ax.set_xlabel(perturbation(env).label)
        ax.set_ylabel("normalised return (%, unperturbed constants)")
        size = int(ds.attrs.get("env_size", 0))
        ax.set_title(f"{env} ({size}x{size})" if size and str(env).startswith("grid_") else str(env))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    seeds = ds.sizes["seed"]
    fig.suptitle(title or f"Transfer: mean ± SE over {_seeds_text(seeds)}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _seeds_text(count: int) -> str:
    return f"{count} seed{'s' if count != 1 else ''}"


def write_outputs(ds: xr.Dataset, out: Path, *, plots: bool = True) -> None:
    """``transfer.nc``, ``transfer.md``, ``transfer.tex`` and (``plots``) ``transfer.png`` plus
    ``transfer_<env>.png``, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(out / "transfer.nc", engine=ENGINE)
    (out / "transfer.md").write_text(to_markdown(ds))
    (out / "transfer.tex").write_text(to_latex(ds))
    if plots:
        plot_transfer(ds, out / "transfer.png", MAIN_SUBSETS)
        for env in ds["env"].values:
            plot_transfer(ds, out / f"transfer_{env}.png", [*SUBSETS, IMITATION], envs=[str(env)],
                          title=f"All feedback subsets, mean ± SE over {_seeds_text(ds.sizes['seed'])}")


# ------------------------------------------------------------------------------------------------ the command


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mavrl_ppl.experiments.transfer``."""
    p = argparse.ArgumentParser(prog="python -m mavrl_ppl.experiments.transfer",
                                description="Rewards learned on the unperturbed env, evaluated in perturbed envs.")
    p.add_argument("--env", nargs="+", default=["grid_trap"],
                   help="envs: grid_<kind> (p_rand), Acrobot-v1 (asymmetry), LunarLander-v3 (wind power)")
    p.add_argument("--levels", nargs="+", default=None,
                   help="perturbation levels, start:stop:step (ends included) or a list 0,0.4; one spec for every "
                        "env or one per env (default: the published levels)")
    p.add_argument("--seeds", nargs="+", default=["0-9"], help="seeds: ranges and lists, e.g. 0-9 or 0,3,5")
    p.add_argument("--subsets", default="all",
                   help="comma list of subsets (pref, demo+pref, pdrs, ...) and imitation; default all: the 11 "
                        "subsets of the published figure and imitation")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--runs", type=Path, default=None,
                   help="run directories to use and fill (default OUT/runs; a baseline table's runs/ is reused)")
    p.add_argument("--records", type=Path, default=None, help="cell records (default OUT/records)")
    p.add_argument("--feedback", default=None, help="all-types allocation (default: the env's paper allocation)")
    p.add_argument("--env-size", type=int, default=None, help="grid side (default: the env's)")
    p.add_argument("--svi-config", type=Path, default=None, help="TOML settings file for the SVI fits")
    p.add_argument("--gravity", type=float, default=-10.0, help="LunarLander's gravity at every level (-12 < g < 0)")
    p.add_argument("--ppo-timesteps", type=int, default=None,
                   help="control envs: PPO steps per level (default Acrobot 200000, LunarLander 500000)")
    p.add_argument("--eval-episodes", type=int, default=100, help="control envs: true-return episodes per level")
    p.add_argument("--jobs", type=int, default=None, help="parallel tasks (default: number of cores)")
    p.add_argument("--cluster", default=None, help="run the tasks on Dask: tcp://HOST:8786 or local:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def make_plan(args: argparse.Namespace) -> Plan:
    """Check every argument and build the plan; ``ValueError`` names the first that is wrong."""
    envs = list(dict.fromkeys(args.env))
    for env in envs:
        perturbation(env)
    specs = args.levels or [DEFAULT_LEVELS[perturbation(env).name] for env in envs]
    if len(specs) not in (1, len(envs)):
        raise ValueError(f"--levels takes one spec for every env or one per env ({len(envs)}), got {len(specs)}")
    specs = specs * len(envs) if len(specs) == 1 else specs
    levels = {env: tuple(parse_levels(spec, env)) for env, spec in zip(envs, specs, strict=True)}
    for name in ("env_size", "ppo_timesteps", "eval_episodes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if "LunarLander-v3" in envs and not -12.0 < args.gravity < 0.0:
        raise ValueError(f"--gravity must lie in (-12, 0), got {args.gravity:g}")
    check_fit_options(args.jobs, args.cluster, (args.svi_config,))
    out = Path(args.out) if args.cluster is None else Path(args.out).absolute()
    feedback = {env: args.feedback or paper_allocation(env) for env in envs}
    return Plan(envs=levels, seeds=tuple(parse_seeds(args.seeds)), subsets=tuple(parse_subsets(args.subsets)),
                out=out, runs=Path(args.runs) if args.runs else out / "runs",
                records=Path(args.records) if args.records else out / "records", feedback=feedback,
                env_size=args.env_size, svi_config=args.svi_config.resolve() if args.svi_config else None,
                gravity=float(args.gravity), ppo_timesteps=args.ppo_timesteps, eval_episodes=int(args.eval_episodes))


def main(argv: list[str] | None = None) -> int:
    """Run the command; exit status 0 when the results were written (failed cells are in them), 2 on bad arguments
    (one line), 1 when the ``--cluster`` scheduler cannot be reached or is lost, 130 on Ctrl-C (finished runs and
    records are kept)."""
    args = build_parser().parse_args(argv)
    try:
        plan = make_plan(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_command(lambda: run_transfer(plan, jobs=args.jobs, cluster=args.cluster, progress=not args.quiet),
                       report=to_markdown, written=f"{plan.out}/transfer.{{nc,md,tex}}, transfer*.png",
                       kept="finished runs and records are kept", usage_errors=(SettingsMismatch,))


if __name__ == "__main__":
    sys.exit(main())
