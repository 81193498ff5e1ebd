"""A person in the loop (issue 23): the next queries for a finished run, as a feedback file a person fills in.

``python -m mavrl_ppl.experiments.active suggest RUN_DIR --k 10 --out queries.nc``

1. Reads the run: ``config.json``, ``feedback.nc``, ``posterior.nc`` (SVI or NUTS); its ``--plugin`` modules are
   imported again, so a user's registered type is offered like the built-in ones.
2. Simulates ``--pool`` candidate queries per offered type with the env's behaviour policy
   (:func:`~mavrl_ppl.analysis.acquisition.candidate_queries`: preference pairs, rating and stop segments, a user
   type's items), with the run's simulator settings and the run's data's model attributes (the fixed ``beta``, the stop
   ``lambda``), so that every query is scored under the model that was fitted. The simulator's labels are discarded.
3. Scores them at ``--draws`` posterior draws (evenly spaced over chains and draws) and picks ``--k`` by BatchBALD per
   unit cost (:func:`~mavrl_ppl.analysis.acquisition.select_batch`): each pick's expected information gain GIVEN the
   picks before it, so a batch a person answers without a refit in between does not ask twice about the same states.
4. Writes the run's data with the picks appended to their types' groups (``--out``, atomically; an existing file is
   never overwritten: a person may be filling it in). Two extra variables per group: ``answered`` (item,) bool, True
   for the run's items and False for the new ones, and ``query_eig`` (item,) float, each pick's gain in nats (NaN for
   items that were not suggested by this command). A new item's label holds a placeholder (the first label its type
   accepts for it) that no fit reads: validation refuses the file, naming the unanswered items, until each has its
   label and ``answered=True``. Then ``python -m mavrl_ppl.fit --data queries.nc`` fits everything.

Offered types: those in the run's data with a label per item and a cost in ``--costs``. Not offered: a label per step
(demonstrations: the answer is the whole episode, states included, not a label on given segments), and types the run
has no data of (their model attributes would come from the simulator, which may calibrate them on the env's own
reward, as the stop ``lambda`` is).
"""

from __future__ import annotations

import argparse
import sys
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mavrl_ppl.errors import UsageError

__all__ = ["QueryFile", "build_parser", "main", "suggest_queries"]

#: Posterior draws the gain is computed at (BatchBALD keeps draws x samples x candidates numbers: 100 x 1024 x 192
#: candidates is 157 MB of float64).
DEFAULT_DRAWS = 100
QUERY_EIG = "query_eig"


class QueryFile(NamedTuple):
    """What :func:`suggest_queries` returns.

    Attributes:
        feedback: type name -> data set: the run's items, then the suggested ones (unanswered).
        picks: one ``{rank, type, item, eig, cost}`` per query in the order picked; ``item`` indexes its type's group
            in ``feedback``, ``eig`` is its gain given the earlier picks (nats).
        offered: type name -> candidates scored (after identical queries were removed).
        not_offered: type name -> why a type with a cost was not asked about.
        draws: posterior draws the gains were computed at.
    """

    feedback: dict[str, Any]
    picks: list[dict[str, Any]]
    offered: dict[str, int]
    not_offered: dict[str, str]
    draws: int


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(purpose.encode())]))


def offered_types(data: Mapping[str, Any], costs: Mapping[str, float]) -> tuple[list[str], dict[str, str]]:
    """The types a query can be suggested for, in the data's order, and why each other type with a cost is not (see
    the module docstring).

    Raises:
        UsageError: no type left.
    """
    from mavrl_ppl.feedback import get_feedback_type

    names, skipped = [], {}
    for name in costs:
        if name not in data:
            skipped[name] = "the run has no data of it"
        elif "step" in data[name][get_feedback_type(name).label].dims:
            skipped[name] = "its answer is a label per step"
    names = [name for name in data if name in costs and name not in skipped]
    if not names:
        raise UsageError(f"no type to ask about: the run has {', '.join(data)}; --costs names "
                         + ", ".join(f"{name} ({skipped[name]})" if name in skipped else name for name in costs))
    return names, skipped


def _placeholders(name: str, dataset: Any) -> np.ndarray:
    """A label per item that the type accepts (the first of its enumerated labels possible for that item)."""
    from mavrl_ppl.analysis.predictive import label_space
    from mavrl_ppl.feedback import get_feedback_type

    space = label_space(get_feedback_type(name), dataset)
    if isinstance(space, str):  # cannot happen for a type that got a gain: its labels were enumerated
        raise ValueError(f"{name}: {space}")
    return space.values[space.allowed.argmax(axis=0)]


def _flagged(dataset: Any) -> Any:
    """The data set with ``answered`` and ``query_eig`` (kept where present; True / NaN where not)."""
    from mavrl_ppl.feedback.data import ANSWERED

    n = dataset.sizes["item"]
    if ANSWERED not in dataset.variables:
        dataset = dataset.assign({ANSWERED: ("item", np.ones(n, dtype=bool))})
    if QUERY_EIG not in dataset.variables:
        dataset = dataset.assign({QUERY_EIG: ("item", np.full(n, np.nan))})
    return dataset


def suggest_queries(run: Path | str, k: int, costs: Mapping[str, float], *, pool: int = 64,
                    draws: int = DEFAULT_DRAWS, seed: int | None = None, target: str = "reward") -> QueryFile:
    """The run's data with the ``k`` best next queries appended, unanswered (the module docstring has the rule).

    Args:
        run: a finished tabular run directory.
        k: queries to suggest (>= 1); fewer if the pools hold fewer.
        costs: type name -> cost of one query (positive); the types that may be asked.
        pool: candidates simulated per type.
        draws: posterior draws the gains are computed at.
        seed: the pool's and the Monte Carlo's seed (default: the run's).
        target: what the gain is about (:data:`~mavrl_ppl.analysis.acquisition.TARGETS`): ``"reward"`` (every latent)
            or ``"policy"`` (the best actions in the states good policies visit).

    Raises:
        UsageError: not a finished tabular run, a type that cannot be offered, bad ``k``/``pool``/``draws``.
        FeedbackDataError: the run's ``feedback.nc`` does not validate.
    """
    import xarray as xr

    from mavrl_ppl.analysis.acquisition import candidate_queries, choose_queries
    from mavrl_ppl.experiments.active import concat_feedback
    from mavrl_ppl.feedback import TabularTeacher, get_feedback_type
    from mavrl_ppl.netcdf import ENGINE
    from mavrl_ppl.runs import load_plugins, load_run

    for flag, value in (("k", k), ("pool", pool), ("draws", draws)):
        if value < 1:
            raise UsageError(f"--{flag} must be >= 1, got {value}")
    try:
        loaded = load_run(run)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    load_plugins(list(loaded.config.get("plugin") or []))
    mdp = loaded.mdp()
    if mdp is None:
        raise UsageError(f"{run}: a {loaded.config['env']} run; suggest needs a tabular env (grid_*, chain)")
    if not (Path(run) / "posterior.nc").is_file():
        raise UsageError(f"{run}: no posterior.nc")
    seed = int(loaded.config["seed"] if seed is None else seed)
    data = loaded.feedback()
    names, not_offered = offered_types(data, costs)
    candidates = candidate_queries(TabularTeacher(mdp), {name: pool for name in names}, _rng(seed, "pool"),
                                   settings=loaded.config.get("simulate") or None, like=data).queries
    # The posterior group only: a NUTS run's log-likelihood and predictive groups are far larger and not needed.
    posterior = xr.load_dataset(Path(run) / "posterior.nc", group="posterior", engine=ENGINE)
    choice = choose_queries(mdp, posterior, {name: candidates[name] for name in names}, costs, k, draws=draws,
                            seed=seed, target=target)
    not_offered.update(choice.skipped)
    scored = [name for name in names if name not in choice.skipped]
    if not scored:
        raise UsageError(f"no type's labels can be enumerated: {choice.skipped}")
    chosen = choice.selection
    new, picks = {}, []
    for name in scored:
        mine = np.flatnonzero(chosen.type == name)
        if not len(mine):
            continue
        asked = candidates[name].isel(item=chosen.item[mine])
        label = get_feedback_type(name).label
        asked = asked.assign({label: (asked[label].dims, _placeholders(name, asked)),
                              "answered": ("item", np.zeros(len(mine), dtype=bool)),
                              QUERY_EIG: ("item", chosen.eig[mine])})
        new[name] = asked
        first = data[name].sizes["item"]
        picks += [{"rank": int(r) + 1, "type": name, "item": first + j, "eig": float(chosen.eig[r]),
                   "cost": float(chosen.cost[r])} for j, r in enumerate(mine)]
    joined = concat_feedback({name: _flagged(ds) for name, ds in data.items()}, new)
    picks.sort(key=lambda p: p["rank"])
    return QueryFile(joined, picks, {name: candidates[name].sizes["item"] for name in scored}, not_offered,
                     choice.draws)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mavrl_ppl.experiments.active suggest``."""
    from mavrl_ppl.analysis.acquisition import TARGETS
    from mavrl_ppl.experiments.active import DEFAULT_COSTS

    p = argparse.ArgumentParser(prog="python -m mavrl_ppl.experiments.active suggest",
                                description="The next queries for a finished run, as a feedback file to fill in.")
    p.add_argument("run", type=Path, help="a finished tabular run directory (python -m mavrl_ppl.fit --out)")
    p.add_argument("--k", type=int, default=10, help="queries to suggest (default 10)")
    p.add_argument("--out", type=Path, required=True, help="the query file to write (.nc; never overwritten)")
    p.add_argument("--costs", default=DEFAULT_COSTS, help="cost of one query per type; the types that may be asked "
                   f"(default {DEFAULT_COSTS}; demonstrations are never asked)")
    p.add_argument("--pool", type=int, default=64, help="candidates simulated per type (default 64)")
    p.add_argument("--target", choices=TARGETS, default="reward",
                   help="what the gain is about: every latent (reward) or the best actions (policy); default reward")
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS,
                   help=f"posterior draws the gain uses (default {DEFAULT_DRAWS})")
    p.add_argument("--seed", type=int, default=None, help="the pool's seed (default: the run's)")
    return p


def _report(result: QueryFile, out: Path, run: Path) -> str:
    lines = [f"wrote {out}: {len(result.picks)} unanswered queries appended to {run}'s data "
             f"(gains at {result.draws} posterior draws; candidates scored: "
             + ", ".join(f"{name} {n}" for name, n in result.offered.items()) + ")"]
    lines += [f"not asked: {name} ({why})" for name, why in result.not_offered.items()]
    lines.append(f"{'rank':>4}  {'type':<8} {'item':>5}  {'gain (nats)':>11}  {'cost':>5}")
    lines += [f"{p['rank']:>4}  {p['type']:<8} {p['item']:>5}  {p['eig']:>11.4f}  {p['cost']:>5g}"
              for p in result.picks]
    lines.append(f"answer each (its label, answered=True; README 'Asking a person'), then: "
                 f"python -m mavrl_ppl.fit --data {out} --out RUN")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; exit 0 when the query file was written, 2 on bad arguments or a run it cannot read (one
    line, nothing written)."""
    from mavrl_ppl.analysis.acquisition import parse_costs
    from mavrl_ppl.feedback.data import FeedbackDataError, save_feedback

    args = build_parser().parse_args(argv)
    try:
        if args.out.exists():
            raise UsageError(f"--out {args.out} exists (a person may be filling it in); choose another name")
        if not args.out.parent.is_dir():
            raise UsageError(f"--out {args.out}: no such directory {args.out.parent}")
        result = suggest_queries(args.run, args.k, parse_costs(args.costs), pool=args.pool, draws=args.draws,
                                 seed=args.seed, target=args.target)
        save_feedback(args.out, result.feedback, allow_unanswered=True)
    except (UsageError, FeedbackDataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_report(result, args.out, args.run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
