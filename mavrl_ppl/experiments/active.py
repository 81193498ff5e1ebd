"""Active queries, simulated (issue 23): ask the questions the posterior is most unsure about, refit, repeat.

``python -m mavrl_ppl.experiments.active --env grid_trap --budget 64 --acquisition eig random fixed --seeds 0-9``

(``python -m mavrl_ppl.experiments.active suggest RUN_DIR ...`` asks a person instead: :mod:`.suggest`.)

One loop per env, seed and acquisition rule, each one task of the shared executor
(:mod:`mavrl_ppl.experiments.executor`; ``--jobs`` local processes or ``--cluster``):

1. Round 0 fits the start set ``--start`` (simulated by the env's true-reward teacher from the seed, as
   ``python -m mavrl_ppl.fit --feedback`` would), through :func:`mavrl_ppl.runs.fit_problem` in process with the run
   settings of ``--svi-config`` (SVI; the library's defaults otherwise). Its labelling cost (``--costs`` per item) is
   part of ``--budget``: the budget is the total cost of every label the fit has seen at the end.
2. Each round after a fit: a candidate pool (``--pool`` per type whose cost is in ``--costs``) is simulated by the
   same teacher (:func:`~mavrl_ppl.analysis.acquisition.candidate_queries`, taking the observed data's model
   attributes); the pool items' teacher labels are the person's answers. ``--batch`` queries are chosen, never more
   than the budget left:

   - ``eig``: expected information gain per unit cost at ``--eig-draws`` of the current posterior's draws, each pick
     scored given the earlier picks of the batch (BatchBALD, a demonstration's steps jointly; the rule of
     ``active suggest`` too: :func:`~mavrl_ppl.analysis.acquisition.choose_queries`), within the budget left;
   - ``policy``: the same, with the gain about the best action in each state that the posterior draws' greedy
     policies visit (:func:`~mavrl_ppl.analysis.acquisition.greedy_action_targets`) instead of about the draws;
   - ``random``: per query a type uniformly among those affordable with the budget left, then a uniform query of it;
   - ``fixed``: the paper's fixed allocation, asked incrementally: per query the affordable type whose count is
     furthest below its share of the paper's counts (pref 64, demo 1, rating 64, stop 256), a uniform query of it.

   The chosen queries with their labels are appended to the data and the next round refits, from scratch or, with
   ``--warm-start``, from the previous round's fitted parameters (the optimiser afresh; the held-out split is drawn
   again over the grown data, so items the previous fit trained on may now be held out: its first validation passes
   read a little optimistic), until the budget left buys no query (or the pools are empty).
3. Every round records ``{round, cost, counts, normalized_score, epic, regret, asked, ...}``: ``cost`` and
   ``counts`` of the data it fitted, the fit's metrics, the queries it then asked (type, pool item, cost, gain) and
   the seconds of the fit and of drawing and scoring the pool.

Randomness: the start set from the seed (as a run); the round's pool from ``(seed, env, round)`` (each type's segments
from a stream of its own, so every rule is offered the same candidates in the same round); the rule's own choices and
the gain's Monte Carlo from ``(seed, env, rule, round)``; every fit from the seed. A rerun gives the same records.

Resumable: after each round its data for the next round are written (``round<r>.nc``,
:func:`~mavrl_ppl.feedback.data.save_feedback`, atomic), with ``--warm-start`` its fitted parameters
(``round<r>.pt``), and then its record (``round<r>.json``, atomic) under ``OUT/records/<env>/<rule>/seed<S>/``; every
round's data (and parameters) are read back from those files before the next fit, so a rerun that continues after
the last finished round fits exactly what an uninterrupted loop fits. A finished loop needs only its records (the
data files can be left out of version control). ``settings.json``
there holds what the records depend on; a different setting into the same ``--out`` is refused (exit 2).

Outputs in ``OUT``: ``active.md`` (per env and rule: the score at the budget and the cost at which the score first
reached ``--target`` (95), mean ± SE over the seeds that reached it: a first passage, the score is not monotone in
the cost), ``active.png`` (score against cumulative labelling cost, one panel per env, a mean line and a ±1 SE band
over seeds per rule) and ``active.json`` (every round record).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mavrl_ppl.analysis.report import format_mean_se, markdown_table, mean_se
from mavrl_ppl.envs.allocation import GRID_ALLOCATION
from mavrl_ppl.experiments.baseline_table import check_fit_options, parse_seeds, settings_table
from mavrl_ppl.experiments.executor import Task, run_command, run_tasks

__all__ = [
    "ACQUISITIONS",
    "DEFAULT_COSTS",
    "DEFAULT_START",
    "LoopSpec",
    "build_parser",
    "concat_feedback",
    "main",
    "plot_active",
    "run_active",
    "run_loop",
    "summarize",
    "to_markdown",
]

ACQUISITIONS = ("eig", "policy", "random", "fixed")
#: Labelling cost per item (an episode of demonstration takes a person ~10 pairwise answers' time).
DEFAULT_COSTS = "pref=1,demo=10,rating=1,stop=1"
#: The start set, simulated from the seed before the first fit (cost 16 at the default costs).
DEFAULT_START = "pref=4,demo=0,rating=4,stop=8"
LABELS = {"eig": "EIG (BALD) per cost", "policy": "EIG about the best actions per cost",
          "random": "random type & query", "fixed": "paper's fixed allocation"}
COLOURS = {"eig": "tab:blue", "policy": "tab:purple", "random": "tab:orange", "fixed": "tab:green"}
STYLES = {"eig": "-", "policy": "-.", "random": "--", "fixed": ":"}


# ------------------------------------------------------------------------------------------------ the data


def _pad_steps(dataset: Any, steps: int) -> Any:
    """``dataset`` with its ``step`` dim padded to ``steps`` (padding: invalid steps of zeros / False)."""
    import xarray as xr

    extra = steps - dataset.sizes["step"]
    if extra <= 0:
        return dataset
    out = {}
    for name, variable in dataset.data_vars.items():
        if "step" not in variable.dims:
            out[name] = variable
            continue
        axis = variable.dims.index("step")
        width = [(0, 0)] * variable.ndim
        width[axis] = (0, extra)
        out[name] = (variable.dims, np.pad(variable.values, width), variable.attrs)
    return xr.Dataset(out, attrs=dict(dataset.attrs))


def concat_feedback(data: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Each type's items of ``new`` appended to ``data``'s (segments padded to a common length with invalid steps);
    a type's attributes are ``data``'s where it has the type (the model's), else ``new``'s."""
    import xarray as xr

    out = dict(data)
    for name, extra in new.items():
        if extra.sizes["item"] == 0:
            continue
        if name not in out:
            out[name] = extra
            continue
        old = out[name]
        steps = max(old.sizes.get("step", 0), extra.sizes.get("step", 0))
        parts = [_pad_steps(old, steps), _pad_steps(extra, steps)] if steps else [old, extra]
        joined = xr.concat(parts, dim="item", data_vars="all", coords="minimal", compat="override",
                           combine_attrs="override")
        joined.attrs = dict(old.attrs)
        out[name] = joined
    return out


def _counts(data: Mapping[str, Any]) -> dict[str, int]:
    return {name: int(ds.sizes["item"]) for name, ds in data.items()}


def _cost(counts: Mapping[str, int], costs: Mapping[str, float]) -> float:
    return float(sum(n * costs.get(name, 0.0) for name, n in counts.items()))


# ------------------------------------------------------------------------------------------------ one loop


@dataclass(frozen=True)
class LoopSpec:
    """One loop (env, seed, acquisition rule): everything its executor task needs (picklable).

    Attributes:
        env: tabular env name.
        seed: seed.
        acquisition: a rule of :data:`ACQUISITIONS`.
        budget: total labelling cost, the start set's included.
        costs: type -> cost of one item; the types that can be asked.
        start: the start set's counts (``--start`` syntax).
        batch: queries per round.
        pool: candidates per type per round.
        records: this loop's record directory.
        env_size: grid side (``None``: the env's).
        svi: ``[svi]`` settings of every fit.
        eig_draws: posterior draws the gain is computed from (evenly spaced).
        warm_start: each refit starts from the previous round's fitted parameters (kept as ``round<r>.pt``).
    """

    env: str
    seed: int
    acquisition: str
    budget: float
    costs: Mapping[str, float]
    start: str
    batch: int
    pool: int
    records: Path
    env_size: int | None = None
    svi: Mapping[str, Any] = field(default_factory=dict)
    eig_draws: int = 100
    warm_start: bool = False

    @property
    def name(self) -> str:
        return f"active-{self.acquisition}_{self.env}_seed{self.seed}"

    def settings(self) -> dict[str, Any]:
        """What the records depend on (``settings.json``)."""
        return {"env": self.env, "seed": int(self.seed), "acquisition": self.acquisition,
                "budget": float(self.budget), "costs": dict(self.costs), "start": self.start,
                "batch": int(self.batch), "pool": int(self.pool), "env_size": self.env_size,
                "svi": dict(self.svi), "eig_draws": int(self.eig_draws), "warm_start": bool(self.warm_start)}


def loop_directory(records: Path, env: str, acquisition: str, seed: int) -> Path:
    """``records/<env>/<acquisition>/seed<S>``."""
    return Path(records) / env / acquisition / f"seed{seed}"


def _rng(*key: Any) -> np.random.Generator:
    """A stream of its own per key (ints as they are, strings by their CRC-32)."""
    words = [zlib.crc32(str(k).encode()) if isinstance(k, str) else int(k) for k in key]
    return np.random.default_rng(np.random.SeedSequence(words))


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    """Atomically (a reader never sees half a record)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)


def _load_params(path: Path) -> dict[str, Any]:
    """A round's parameters as :func:`~mavrl_ppl.inference.training.save_checkpoint` wrote them (``weights_only``:
    nothing in the file is run)."""
    import torch

    from mavrl_ppl.errors import DamagedFileError

    try:
        return dict(torch.load(path, weights_only=True))
    except Exception as exc:  # written atomically, so damage is not ours: say so (a missing file redoes the round)
        raise DamagedFileError(path, f"cannot read the round's parameters ({type(exc).__name__}: {exc})") from None


def check_settings(spec: LoopSpec) -> None:
    """Refuse a loop directory made with other settings (``UsageError`` naming the first that differs); write
    ``settings.json`` into a new one."""
    from mavrl_ppl.errors import UsageError

    directory = loop_directory(spec.records, spec.env, spec.acquisition, spec.seed)
    wanted = json.loads(json.dumps(spec.settings()))
    path = directory / "settings.json"
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: not a readable JSON record ({exc})") from None
        differs = [k for k in sorted({*wanted, *recorded}) if wanted.get(k) != recorded.get(k)]
        if differs:
            key = differs[0]
            raise UsageError(f"{directory} was made with other settings ({key}: {recorded.get(key)!r}, now "
                             f"{wanted.get(key)!r}); use another --out or delete it")
        return
    directory.mkdir(parents=True, exist_ok=True)
    _write_json(path, wanted)


def finished_rounds(directory: Path, warm_start: bool = False) -> list[dict[str, Any]]:
    """The records of rounds 0, 1, ... that are complete, up to the first gap.

    A round is complete when its record (``round<r>.json``) is readable, and its next data (``round<r>.nc``, with
    ``warm_start`` also its fitted parameters ``round<r>.pt``) are present where a continuation needs them: the
    loop's last round, unless it is final. A finished loop is thus read from its records alone (the data files are
    kept out of version control); an unfinished one whose last data are gone continues from the latest round that
    has them.
    """
    rounds = []
    while True:
        try:
            rounds.append(json.loads((directory / f"round{len(rounds)}.json").read_text()))
        except (OSError, json.JSONDecodeError):
            break
    while rounds and not rounds[-1]["final"]:
        r = len(rounds) - 1
        if (directory / f"round{r}.nc").is_file() and (not warm_start or (directory / f"round{r}.pt").is_file()):
            break
        rounds.pop()
    return rounds


def _fixed_type(counts: Mapping[str, int], affordable: Sequence[str]) -> str:
    """The type whose count is furthest below its share of the paper's counts (next of the D'Hondt order)."""
    weights = {t: float(GRID_ALLOCATION.get(t, 0)) for t in affordable}
    usable = [t for t in affordable if weights[t] > 0] or list(affordable)
    return min(usable, key=lambda t: ((counts.get(t, 0) + 1) / max(weights[t], 1e-12), usable.index(t)))


def _choose(spec: LoopSpec, round_index: int, mdp: Any, fitted: Any, pool: Mapping[str, Any],
            counts: Mapping[str, int], left: float) -> list[dict[str, Any]]:
    """The round's queries: ``[{type, item, cost, eig}]`` in the order picked, their total cost <= ``left``."""
    rng = _rng(spec.seed, spec.env, spec.acquisition, round_index)
    available = {t: list(range(ds.sizes["item"])) for t, ds in pool.items() if ds.sizes["item"]}
    picks: list[dict[str, Any]] = []
    if spec.acquisition in ("eig", "policy"):
        from mavrl_ppl.analysis.acquisition import choose_queries

        chosen = choose_queries(mdp, fitted.idata.posterior, {t: pool[t] for t in available}, spec.costs,
                                spec.batch, draws=spec.eig_draws, seed=int(rng.integers(2**31)), budget=left,
                                target="reward" if spec.acquisition == "eig" else "policy")
        return [{"type": str(name), "item": int(item), "cost": float(cost), "eig": float(value)}
                for name, item, cost, value in zip(*chosen.selection[:2], chosen.selection.cost,
                                                  chosen.selection.eig, strict=True)]
    counts = dict(counts)
    while len(picks) < spec.batch:
        affordable = [t for t in spec.costs if available.get(t) and spec.costs[t] <= left + 1e-9]
        if not affordable:
            break
        name = (affordable[int(rng.integers(len(affordable)))] if spec.acquisition == "random"
                else _fixed_type(counts, affordable))
        item = available[name].pop(int(rng.integers(len(available[name]))))
        cost = float(spec.costs[name])
        picks.append({"type": name, "item": int(item), "cost": cost, "eig": None})
        counts[name] = counts.get(name, 0) + 1
        left -= cost
    return picks


def run_loop(spec: LoopSpec, progress: bool = False) -> list[dict[str, Any]]:
    """Run (or continue) one loop until its budget is spent (an executor task); returns every round's record."""
    from mavrl_ppl.analysis.acquisition import candidate_queries
    from mavrl_ppl.envs.grids import make_tabular
    from mavrl_ppl.feedback import TabularTeacher
    from mavrl_ppl.feedback.data import load_feedback, save_feedback
    from mavrl_ppl.runs import Problem, fit_problem, make_problem, resolve_config

    directory = loop_directory(spec.records, spec.env, spec.acquisition, spec.seed)
    directory.mkdir(parents=True, exist_ok=True)
    config = resolve_config({"inference": "svi", "env": spec.env, "env_size": spec.env_size, "seed": spec.seed,
                             "feedback": spec.start, "svi": dict(spec.svi)})
    rounds = finished_rounds(directory, spec.warm_start)
    if rounds and rounds[-1]["final"]:
        return rounds
    warm = _load_params(directory / f"round{len(rounds) - 1}.pt") if rounds and spec.warm_start else None
    if rounds:  # the env as make_problem builds it; the data are the loop's
        mdp = make_tabular(spec.env, size=config["env_size"], p_rand=config["p_rand"])
        data = load_feedback(directory / f"round{len(rounds) - 1}.nc")
    else:
        problem = make_problem(config)
        mdp, data = problem.mdp, problem.feedback
    teacher = TabularTeacher(mdp)
    while True:
        r = len(rounds)
        t0 = time.perf_counter()
        counts = _counts(data)
        cost = _cost(counts, spec.costs)
        fitted = fit_problem(Problem(config, mdp, data), progress=progress, init_params=warm)
        if spec.warm_start:  # the fit's best state is in Pyro's param store; kept for the next round (and a rerun)
            from mavrl_ppl.inference.training import save_checkpoint, snapshot

            warm = snapshot()
            save_checkpoint(directory / f"round{r}.pt", warm)  # atomic, tensors only
        m = fitted.metrics
        left = spec.budget - cost
        affordable = [t for t in spec.costs if spec.costs[t] <= left + 1e-9]
        picks: list[dict[str, Any]] = []
        t1 = time.perf_counter()
        if affordable:
            pool = candidate_queries(teacher, {t: spec.pool for t in affordable}, _rng(spec.seed, spec.env, r),
                                     like=data).queries
            picks = _choose(spec, r, mdp, fitted, pool, counts, left)
            chosen: dict[str, list[int]] = {}
            for pick in picks:
                chosen.setdefault(pick["type"], []).append(pick["item"])
            data = concat_feedback(data, {t: pool[t].isel(item=items) for t, items in chosen.items()})
        final = not picks
        path = directory / f"round{r}.nc"
        save_feedback(path, data)
        data = load_feedback(path)  # what the next fit sees is what a resumed loop reads
        record = {"round": r, "cost": cost, "counts": counts, "normalized_score": float(m["normalized_score"]),
                  "epic": float(m["epic"]), "regret": float(m["regret"]), "fit_seconds": float(m["fit_seconds"]),
                  "steps": int(m["steps"]), "best_step": int(m["best_step"]), "asked": picks,
                  "cost_after": cost + sum(p["cost"] for p in picks), "final": final,
                  "select_seconds": time.perf_counter() - t1, "seconds": time.perf_counter() - t0}
        _write_json(directory / f"round{r}.json", record)
        rounds.append(record)
        if final:
            return rounds


# ------------------------------------------------------------------------------------------------ the summary


def score_curve(rounds: Sequence[Mapping[str, Any]], grid: np.ndarray) -> np.ndarray:
    """The score at each cost of ``grid``: that of the last round fitted on data costing at most that (NaN
    before the first round)."""
    cost = np.array([r["cost"] for r in rounds], dtype=float)
    score = np.array([r["normalized_score"] for r in rounds], dtype=float)
    index = np.searchsorted(cost, grid, side="right") - 1
    return np.where(index >= 0, score[np.maximum(index, 0)], np.nan)


def cost_to_reach(rounds: Sequence[Mapping[str, Any]], target: float) -> float:
    """The cost of the first round whose score reached ``target`` (NaN: never)."""
    for r in rounds:
        if r["normalized_score"] >= target:
            return float(r["cost"])
    return float("nan")


def summarize(results: Mapping[tuple[str, str, int], Any], target: float) -> list[dict[str, Any]]:
    """Per env and rule: seeds finished, score at the budget and cost to reach ``target`` (mean, SE, count)."""
    rows = []
    for env, acquisition in dict.fromkeys((e, a) for e, a, _ in results):
        loops = [v for (e, a, _), v in results.items() if e == env and a == acquisition]
        done = [v for v in loops if isinstance(v, list) and v]
        final = np.array([v[-1]["normalized_score"] for v in done], dtype=float)
        spent = np.array([v[-1]["cost"] for v in done], dtype=float)
        reach = np.array([cost_to_reach(v, target) for v in done], dtype=float)
        rows.append({"env": env, "acquisition": acquisition, "seeds": len(loops), "ok": len(done),
                     "score": mean_se(final), "cost": mean_se(spent), "reach": mean_se(reach),
                     "reached": int(np.isfinite(reach).sum())})
    return rows


def to_markdown(summary: Mapping[str, Any]) -> str:
    """``active.md``: the table and what it means."""
    target, rows = summary["target"], summary["rows"]
    body = [[r["env"], LABELS.get(r["acquisition"], r["acquisition"]), f"{r['ok']}/{r['seeds']}",
             format_mean_se(*r["cost"][:2], 1), format_mean_se(*r["score"][:2], 1),
             (f"{format_mean_se(*r['reach'][:2], 1)} ({r['reached']}/{r['ok']} reached)" if r["reached"] else
              f"not reached (0/{r['ok']})")] for r in rows]
    lines = [f"## Active queries: normalised score against labelling cost (mean ± SE over seeds "
             f"{summary['seeds_text']})", "",
             f"Budget {summary['budget']:g} (start set {summary['start']}, cost {summary['start_cost']:g}); costs "
             f"{summary['costs']}; {summary['batch']} queries per round from pools of {summary['pool']} per type; "
             "every round refits from scratch (SVI). Cost to reach: the cost of the data of the first round whose "
             f"posterior-mean reward scored >= {target:g}, over the seeds that reached it.", "",
             markdown_table(["env", "acquisition", "seeds ok", "cost spent", "score at budget",
                             f"cost to reach {target:g}"], body, "llrrrr")]
    failed = summary.get("failed", [])
    if failed:
        lines += ["", "### Loops that failed (left out of the means)", "",
                  markdown_table(["loop", "error"], [[n, m[:300]] for n, m in failed])]
    lines += ["", f"Wall time {summary['wall_seconds']:.1f} s."]
    return "\n".join(lines) + "\n"


def plot_active(results: Mapping[tuple[str, str, int], Any], path: Path, *, budget: float, start_cost: float,
                title: str = "") -> Path:
    """Score against cumulative labelling cost: one panel per env, per rule a mean line and a ±1 SE band over
    seeds (a seed's score at cost c is that of its last round fitted on data costing at most c)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(e for e, _, _ in results))
    rules = list(dict.fromkeys(a for _, a, _ in results))
    done = {k: v for k, v in results.items() if isinstance(v, list) and v}
    fig, axes = plt.subplots(1, len(envs), figsize=(1.0 + 4.6 * len(envs), 4.2), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        # every cost at which some loop of this env refitted: the curves are step functions between them
        # (and a little past the budget, so that the last round's score shows as a step too)
        edge = budget + 0.03 * max(budget - start_cost, 1.0)
        grid = np.unique([start_cost, budget, edge,
                          *(r["cost"] for (e, _, _), v in done.items() if e == env for r in v)])
        for rule in rules:
            curves = [score_curve(v, grid) for (e, a, _), v in done.items() if e == env and a == rule]
            if not curves:
                continue
            mean, se, _ = mean_se(np.stack(curves), axis=0)
            colour = COLOURS.get(rule)
            seeds = f"{len(curves)} seed{'s' if len(curves) != 1 else ''}"
            ax.plot(grid, mean, color=colour, linestyle=STYLES.get(rule, "-"), drawstyle="steps-post",
                    label=f"{LABELS.get(rule, rule)} ({seeds})")
            ax.fill_between(grid, mean - np.nan_to_num(se), mean + np.nan_to_num(se), color=colour, alpha=0.2,
                            linewidth=0, step="post")
        ax.axhline(100.0, color="0.7", linewidth=0.6)
        ax.set_xlim(start_cost, edge)
        ax.axvline(budget, color="0.7", linewidth=0.6)
        ax.set_xlabel("cumulative labelling cost (cost units; start set included)")
        ax.set_ylabel("normalised score (%)")
        ax.set_title(env)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=max(1, len(labels)), fontsize=8,
               frameon=False)
    fig.suptitle(title or "Active queries: score vs labelling cost, mean ± SE over seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ the command


def run_active(specs: Sequence[LoopSpec], out: Path, *, target: float = 95.0, jobs: int = 1,
               in_process: bool = False, cluster: Any = None, progress: bool = True) -> dict[str, Any]:
    """Run (or continue) every loop through the executor; write ``active.{md,png,json}`` into ``out``.

    Returns:
        The summary (:func:`to_markdown`'s input) with ``results``: ``(env, rule, seed)`` -> round records.
    """
    t0 = time.perf_counter()
    for spec in specs:
        check_settings(spec)
    outcomes = run_tasks([Task(s.name, run_loop, (s,)) for s in specs], jobs=jobs, in_process=in_process,
                         cluster=cluster, progress=progress, desc="loops")
    results: dict[tuple[str, str, int], Any] = {}
    failed = []
    for spec in specs:
        outcome = outcomes[spec.name]
        results[(spec.env, spec.acquisition, spec.seed)] = outcome.value if outcome.status == "ok" else None
        if outcome.status != "ok":
            failed.append((spec.name, outcome.message))
    first = specs[0]
    start_cost = _cost(_parse_counts(first.start), first.costs)
    seeds = sorted({s.seed for s in specs})
    summary = {"target": target, "rows": summarize(results, target), "failed": failed, "budget": first.budget,
               "start": first.start, "start_cost": start_cost,
               "costs": ",".join(f"{k}={v:g}" for k, v in first.costs.items()), "batch": first.batch,
               "pool": first.pool, "seeds_text": ", ".join(map(str, seeds)), "wall_seconds": 0.0}
    out.mkdir(parents=True, exist_ok=True)
    plot_active(results, out / "active.png", budget=first.budget, start_cost=start_cost,
                title=f"Active queries: score vs labelling cost, mean ± SE over {len(seeds)} seed"
                      f"{'s' if len(seeds) != 1 else ''}")
    summary["wall_seconds"] = time.perf_counter() - t0
    _write_json(out / "active.json", {"summary": {k: v for k, v in summary.items() if k != "rows"},
                                      "loops": [{"env": e, "acquisition": a, "seed": s, "rounds": v}
                                                for (e, a, s), v in results.items()]})
    (out / "active.md").write_text(to_markdown(summary))
    summary["results"] = results
    return summary


def _parse_counts(text: str) -> dict[str, int]:
    from mavrl_ppl.feedback import registered
    from mavrl_ppl.feedback.data import parse_counts

    return parse_counts(text, registered())


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mavrl_ppl.experiments.active``."""
    p = argparse.ArgumentParser(prog="python -m mavrl_ppl.experiments.active",
                                description="Simulated active-query loops: ask, let the teacher answer, refit. "
                                "('... active suggest RUN_DIR --out FILE': the next queries for a person instead.)")
    p.add_argument("--env", nargs="+", default=["grid_trap"], help="tabular envs (default grid_trap)")
    p.add_argument("--env-size", type=int, default=None, help="grid side (default: the env's)")
    p.add_argument("--budget", type=float, default=64.0,
                   help="total labelling cost, the start set's included (default 64)")
    p.add_argument("--acquisition", nargs="+", default=list(ACQUISITIONS),
                   help=f"rules: {', '.join(ACQUISITIONS)} (default all)")
    p.add_argument("--costs", default=DEFAULT_COSTS, help=f"cost of one item per type; the types that can be asked "
                   f"(default {DEFAULT_COSTS})")
    p.add_argument("--start", default=DEFAULT_START, help=f"start set counts (default {DEFAULT_START})")
    p.add_argument("--batch", type=int, default=4, help="queries per round (default 4)")
    p.add_argument("--pool", type=int, default=32, help="candidates per type per round (default 32)")
    p.add_argument("--target", type=float, default=95.0, help="score whose cost the table reports (default 95)")
    p.add_argument("--eig-draws", type=int, default=100, help="posterior draws the gain uses (default 100)")
    p.add_argument("--warm-start", action="store_true",
                   help="each refit starts from the previous round's fitted parameters (default: from scratch)")
    p.add_argument("--seeds", nargs="+", default=["0-9"], help="seeds: ranges and lists, e.g. 0-9 or 0,3,5")
    p.add_argument("--out", type=Path, required=True, help="output directory (records/, active.md, active.png)")
    p.add_argument("--jobs", type=int, default=None, help="parallel loops (default: number of cores)")
    p.add_argument("--cluster", default=None, help="run the loops on Dask: tcp://HOST:8786 or local:N")
    p.add_argument("--svi-config", type=Path, default=None, help="TOML settings file for every SVI fit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def make_specs(args: argparse.Namespace) -> list[LoopSpec]:
    """Every argument checked before any work; ``ValueError`` names the first that is wrong."""
    from mavrl_ppl.analysis.acquisition import parse_costs
    from mavrl_ppl.envs.grids import make_tabular
    from mavrl_ppl.feedback import registered

    seeds = parse_seeds(args.seeds)
    rules = list(dict.fromkeys(args.acquisition))
    unknown = [a for a in rules if a not in ACQUISITIONS]
    if unknown:
        raise ValueError(f"unknown acquisition {unknown[0]!r}; known: {', '.join(ACQUISITIONS)}")
    costs = parse_costs(args.costs)
    if not costs:
        raise ValueError("--costs names no feedback type")
    known = registered()
    bad = [t for t in costs if t not in known]
    if bad:
        raise ValueError(f"--costs: unknown feedback type {bad[0]!r} (known: {', '.join(sorted(known))})")
    start = _parse_counts(args.start)
    if not any(start.values()):
        raise ValueError("--start: every count is zero (the first fit needs data)")
    missing = [t for t, n in start.items() if n and t not in costs]
    if missing:
        raise ValueError(f"--start has {missing[0]} items but --costs gives it no cost")
    start_cost = _cost(start, costs)
    if not np.isfinite(args.budget) or args.budget < start_cost:
        raise ValueError(f"--budget {args.budget:g} is below the start set's cost {start_cost:g}")
    for name in ("batch", "pool", "eig_draws", "env_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    check_fit_options(args.jobs, args.cluster, (args.svi_config,))
    envs = list(dict.fromkeys(args.env))
    for env in envs:
        if not (env.startswith("grid_") or env == "chain"):
            raise ValueError(f"--env {env}: active loops need a tabular env (grid_*, chain)")
        make_tabular(env, size=args.env_size)
    svi = settings_table(args.svi_config, "svi") or {}
    if svi:
        from mavrl_ppl.runs import resolve_config

        resolve_config({"svi": svi}, source=str(args.svi_config))
    out = Path(args.out) if args.cluster is None else Path(args.out).absolute()
    return [LoopSpec(env, seed, rule, float(args.budget), costs, args.start, int(args.batch), int(args.pool),
                     out / "records", args.env_size, svi, int(args.eig_draws), bool(args.warm_start))
            for env in envs for rule in rules for seed in seeds]


def main(argv: list[str] | None = None) -> int:
    """Run the command; exit status 0 when the outputs were written (failed loops are listed in them), 2 on bad
    arguments or records made with other settings (one line), 1 when the ``--cluster`` scheduler cannot be reached
    or is lost, 130 on Ctrl-C (finished rounds are kept)."""
    from mavrl_ppl.errors import UsageError
    from mavrl_ppl.experiments.baseline_table import RecordError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["suggest"]:  # a person in the loop: mavrl_ppl.experiments.suggest
        from mavrl_ppl.experiments.suggest import main as suggest_main

        return suggest_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        specs = make_specs(args)
    except (ValueError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    jobs = args.jobs or os.cpu_count() or 1
    return run_command(lambda: run_active(specs, specs[0].records.parent, target=args.target, jobs=jobs,
                                          cluster=args.cluster, progress=not args.quiet),
                       report=to_markdown, written=f"{specs[0].records.parent}/active.{{md,png,json}}",
                       kept="finished rounds are kept", usage_errors=(UsageError, RecordError))


if __name__ == "__main__":
    sys.exit(main())
