"""``python -m mavrl_ppl.experiments.tables``: the env x subset table of REFERENCE §4 from finished studies.

::

    python -m mavrl_ppl.experiments.tables --storage runs/studies.journal --kind fixed|budget \\
        [--objective nll|score|any] [--seeds 5] [--first-seed 100] [--envs grid_cliff,grid_sparse,grid_trap] \\
        [--out runs/tables/fixed]

For every study made by :mod:`mavrl_ppl.experiments.sweep` in the storage whose mode is ``--kind``, the best
trial's hyper-parameters (and, in budget mode, its allocation) are re-evaluated on *fresh* seeds
(``first_seed .. first_seed + K - 1``, disjoint from the study's seeds ``0..K-1``): new data, new fit. A cell is the
mean ± standard error of the normalised score over those seeds; its best trial's own value is never reported as the
result (that would be tuning on the test set, REFERENCE §5). A seed whose fit fails stays in the table as a failure
(``k/K failed``), never silently dropped; cells with no study show ``—``, studies with no complete trial ``no
trials``.

Writes ``table.md``, ``table.tex`` and ``table.nc`` (xarray: dims ``env``, ``subset``, ``seed``) into ``--out`` and
prints the Markdown. The caption states how the hyper-parameters were selected; a cell whose study optimised the
normalised score itself (``--objective score``, simulation only) is marked and the caption says so.

Exit status: 0 written, 2 bad arguments, no studies or a journal damaged before its last record (one line; a damaged
tail is cut off with a warning, see :mod:`mavrl_ppl.experiments.sweep`), 130 interrupted (one line).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mavrl_ppl.analysis.report import format_mean_se, latex_escape, latex_tabular, markdown_table, mean_se
from mavrl_ppl.errors import UsageError
from mavrl_ppl.experiments.budget import ALL_SUBSETS
from mavrl_ppl.netcdf import ENGINE

SUBSET_LABELS: dict[str, str] = {"all": "all four"}
OBJECTIVE_TEXT: dict[tuple[str, str], str] = {
    ("nll", "fresh"): "the lowest negative log-likelihood of a separate held-out feedback set (no ground truth)",
    ("nll", "split"): "the lowest validation negative log-likelihood on held-out items of the fitted feedback "
                      "(no ground truth)",
    ("score", "fresh"): "the highest normalised score itself (ground truth, simulation only: optimistic)",
    ("score", "split"): "the highest normalised score itself (ground truth, simulation only: optimistic)",
}
SCORE_MARK = "†"


@dataclass
class Cell:
    """One table cell: its study, the chosen trial and the re-evaluation on fresh seeds."""

    env: str
    subset: str
    study: str | None = None
    objective: str | None = None
    holdout: str | None = None
    trials: int = 0
    best_trial: int | None = None
    best_value: float = math.nan
    params: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    epics: list[float] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)

    @property
    def mean(self) -> float:
        return float(mean_se(np.asarray(self.scores, dtype=float)[self.ok])[0])

    @property
    def se(self) -> float:
        return float(mean_se(np.asarray(self.scores, dtype=float)[self.ok])[1])

    @property
    def failed(self) -> int:
        return int((~self.ok).sum())

    def text(self, latex: bool = False) -> str:
        if self.study is None:
            return "--" if latex else "—"
        if self.best_trial is None:
            return "no trials"
        if not self.ok.any():
            return f"failed ({self.failed}/{len(self.errors)})"
        out = format_mean_se(self.mean, self.se, 1, pm=r"$\pm$" if latex else "±")
        if self.failed:
            out += f" ({self.failed}/{len(self.errors)} failed)"
        if self.objective == "score":
            out += r"$^\dagger$" if latex else SCORE_MARK
        return out


def collect_studies(storage: Any, kind: str, objective: str = "nll") -> dict[tuple[str, str], list[Any]]:
    """Studies of the sweep command in ``storage`` with mode ``kind`` (and ``objective`` unless ``"any"``),
    keyed by ``(env label, subset)``; several studies of one cell are all returned, most counted trials first."""
    import optuna

    from mavrl_ppl.experiments.sweep import CellSpec, is_counted

    cells: dict[tuple[str, str], list[tuple[int, Any, CellSpec]]] = {}
    for name in optuna.study.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        if "spec" not in study.user_attrs:
            continue
        spec = CellSpec.from_json(study.user_attrs["spec"])
        if spec.mode != kind or (objective != "any" and spec.objective != objective):
            continue
        counted = sum(map(is_counted, study.get_trials(deepcopy=False)))
        cells.setdefault((spec.env_label, spec.subset), []).append((counted, study, spec))
    return {key: [(s, sp) for _, s, sp in sorted(v, key=lambda x: (-x[0], x[1].study_name))]
            for key, v in cells.items()}


def evaluate_cell(study: Any, spec: Any, seeds: Sequence[int]) -> Cell:
    """Re-evaluate a study's best trial on ``seeds`` (new data and fits); failures are kept per seed."""
    from optuna.trial import TrialState

    from mavrl_ppl.experiments.sweep import evaluate_settings, is_counted, make_settings

    cell = Cell(env=spec.env_label, subset=spec.subset, study=study.study_name, objective=spec.objective,
                holdout=spec.holdout, trials=sum(map(is_counted, study.get_trials(deepcopy=False))))
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return cell
    best = study.best_trial
    cell.best_trial, cell.best_value, cell.params = best.number, float(best.value), dict(best.params)
    cell.counts = {k: int(v) for k, v in best.user_attrs["counts"].items()}
    t0 = time.perf_counter()
    evaluation = evaluate_settings(spec, make_settings(spec, best.params), cell.counts, seeds, holdout=False,
                                   score=True, catch=True)
    cell.seconds = time.perf_counter() - t0
    cell.scores, cell.epics, cell.errors = evaluation["normalized_score"], evaluation["epic"], evaluation["error"]
    return cell


def caption(cells: Sequence[Cell], kind: str, seeds: Sequence[int]) -> str:
    """The table's caption: what a cell is, the seeds, and how its hyper-parameters were selected."""
    what = "fixed allocation (REFERENCE §3 counts)" if kind == "fixed" else "equal budget (searched split)"
    seed_text = f"seeds {seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"
    parts = [f"Normalised score (%), {what}: mean ± standard error over {len(seeds)} fresh {seed_text} (new data "
             "and fits) with the hyper-parameters of each study's best trial"]
    found = sorted({(c.objective, c.holdout) for c in cells if c.study is not None})
    trials = [c.trials for c in cells if c.study is not None]
    if found:
        texts = [OBJECTIVE_TEXT[(o or "nll", h or "fresh")] for o, h in found]
        count = f"{min(trials)}" if min(trials) == max(trials) else f"{min(trials)} to {max(trials)}"
        parts.append("trials were selected by " + " / ".join(dict.fromkeys(texts))
                     + f" averaged over each study's seeds ({count} trials per study)")
    if any(c.objective == "score" for c in cells):
        parts.append(f"{SCORE_MARK} selected on the true-reward score (simulation only; not possible with human "
                     "data, and optimistic)")
    parts.append("— no study; 'no trials' = no complete trial; 'k/K failed' = seeds whose fit failed, not dropped")
    return "; ".join(parts) + "."


def to_markdown(cells: Mapping[tuple[str, str], Cell], envs: Sequence[str], subsets: Sequence[str],
                text: str) -> str:
    """The table as Markdown: one row per env, one column per subset, the caption below."""
    header = ["env", *(SUBSET_LABELS.get(s, s) for s in subsets)]
    rows = [[env, *(cells[(env, s)].text() for s in subsets)] for env in envs]
    return "\n".join([markdown_table(header, rows, align="l" + "r" * len(subsets)), "", text]) + "\n"


def to_latex(cells: Mapping[tuple[str, str], Cell], envs: Sequence[str], subsets: Sequence[str], text: str) -> str:
    """The table as a LaTeX ``table`` with a ``tabular`` and the caption."""
    header = ["env", *(latex_escape(SUBSET_LABELS.get(s, s).replace("_", "+")) for s in subsets)]
    rows = [[latex_escape(env), *(cells[(env, s)].text(latex=True) for s in subsets)] for env in envs]
    tex_caption = latex_escape(text).replace("—", "---").replace("§", r"\S{}").replace(SCORE_MARK, r"$^\dagger$")
    return latex_tabular(header, rows, tex_caption, align="l" + "r" * len(subsets), size="small") + "\n"


def to_dataset(cells: Mapping[tuple[str, str], Cell], envs: Sequence[str], subsets: Sequence[str],
               seeds: Sequence[int], kind: str, text: str) -> Any:
    """The table as an ``xarray.Dataset``: per-seed ``score``/``epic``/``failed`` (env, subset, seed), their
    ``score_mean``/``score_se``/``epic_mean``, the study's ``trials``/``best_value``/``study``/``objective`` and
    the chosen ``params``/``counts`` as JSON strings."""
    import xarray as xr

    shape = (len(envs), len(subsets), len(seeds))
    score = np.full(shape, np.nan)
    epic = np.full(shape, np.nan)
    failed = np.zeros(shape, dtype=bool)
    meta = {k: np.full(shape[:2], "", dtype=object) for k in ("study", "objective", "params", "counts")}
    nums = {k: np.full(shape[:2], np.nan) for k in ("score_mean", "score_se", "epic_mean", "best_value", "trials",
                                                     "eval_seconds")}
    for i, env in enumerate(envs):
        for j, s in enumerate(subsets):
            c = cells[(env, s)]
            if c.study is None:
                continue
            meta["study"][i, j], meta["objective"][i, j] = c.study, c.objective or ""
            meta["params"][i, j], meta["counts"][i, j] = json.dumps(c.params), json.dumps(c.counts)
            nums["trials"][i, j], nums["best_value"][i, j] = c.trials, c.best_value
            if c.errors:
                score[i, j], epic[i, j], failed[i, j] = c.scores, c.epics, ~c.ok
                ok = c.ok
                nums["score_mean"][i, j], nums["score_se"][i, j] = c.mean, c.se
                nums["epic_mean"][i, j] = mean_se(np.asarray(c.epics, dtype=float)[ok])[0]
                nums["eval_seconds"][i, j] = c.seconds
    dims3, dims2 = ("env", "subset", "seed"), ("env", "subset")
    data = {"score": (dims3, score), "epic": (dims3, epic), "failed": (dims3, failed),
            **{k: (dims2, v) for k, v in nums.items()}, **{k: (dims2, v.astype(str)) for k, v in meta.items()}}
    return xr.Dataset(data, coords={"env": list(envs), "subset": list(subsets), "seed": list(seeds)},
                      attrs={"kind": kind, "caption": text, "metric": "normalized_score (percent)"})


def build_table(storage: Any, kind: str, *, objective: str = "nll", seeds: Sequence[int] = range(100, 105),
                envs: Sequence[str] | None = None, subsets: Sequence[str] = ALL_SUBSETS,
                progress: bool = True) -> tuple[dict[tuple[str, str], Cell], list[str], str]:
    """Evaluate every cell of the table.

    Args:
        storage: an Optuna storage (or URL/path accepted by :func:`~mavrl_ppl.experiments.sweep.open_storage`).
        kind: ``fixed`` or ``budget``.
        objective: keep studies with this objective (``"any"``: all; several per cell: most trials wins).
        seeds: fresh evaluation seeds.
        envs: rows (default: the envs found, sorted).
        subsets: columns.
        progress: print a line per cell to stderr.

    Returns:
        ``(cells by (env, subset), envs, caption)``.
    """
    from mavrl_ppl.experiments.sweep import open_storage

    if isinstance(storage, str | Path):
        storage = open_storage(storage)
    seeds = list(seeds)
    found = collect_studies(storage, kind, objective)
    rows = list(envs) if envs is not None else sorted({env for env, _ in found})
    cells: dict[tuple[str, str], Cell] = {}
    for env in rows:
        for s in subsets:
            candidates = found.get((env, s), [])
            if not candidates:
                cells[(env, s)] = Cell(env=env, subset=s)
                continue
            if len(candidates) > 1 and progress:
                names = ", ".join(st.study_name for st, _ in candidates)
                print(f"note: {env} / {s}: several studies ({names}); using {candidates[0][0].study_name}",
                      file=sys.stderr)
            study, spec = candidates[0]
            if progress and min(seeds) < spec.seeds:
                print(f"warning: {env} / {s}: evaluation seeds {seeds[0]}.. overlap the study's seeds "
                      f"0..{spec.seeds - 1}", file=sys.stderr)
            cells[(env, s)] = cell = evaluate_cell(study, spec, seeds)
            if progress:
                print(f"{env} / {s}: {cell.text()} (study {study.study_name}, best trial {cell.best_trial}, "
                      f"{cell.seconds:.1f} s)", file=sys.stderr, flush=True)
    return cells, rows, caption(list(cells.values()), kind, seeds)


def write_table(out: Path, cells: Mapping[tuple[str, str], Cell], envs: Sequence[str], subsets: Sequence[str],
                seeds: Sequence[int], kind: str, text: str) -> str:
    """Write ``table.md``, ``table.tex`` and ``table.nc`` into ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(cells, envs, subsets, text)
    (out / "table.md").write_text(markdown)
    (out / "table.tex").write_text(to_latex(cells, envs, subsets, text))
    to_dataset(cells, envs, subsets, seeds, kind, text).to_netcdf(out / "table.nc", engine=ENGINE)
    return markdown


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mavrl_ppl.experiments.tables",
                                description="The env x subset table from finished sweep studies.")
    p.add_argument("--storage", default="runs/studies.journal", help="journal file path, or an Optuna RDB URL")
    p.add_argument("--kind", choices=["fixed", "budget"], default="fixed", help="which studies (allocation mode)")
    p.add_argument("--objective", choices=["nll", "score", "any"], default="nll",
                   help="use studies with this objective (default nll)")
    p.add_argument("--seeds", type=int, default=5, help="fresh evaluation seeds per cell (default 5)")
    p.add_argument("--first-seed", type=int, default=100, help="first evaluation seed (default 100)")
    p.add_argument("--envs", default=None, help="comma-separated rows (default: the envs with studies)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default runs/tables/<kind>)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 2
    if "://" not in args.storage and not Path(args.storage).exists():
        print(f"error: {args.storage}: no such journal file", file=sys.stderr)
        return 2
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    envs = [e.strip() for e in args.envs.split(",") if e.strip()] if args.envs else None
    t0 = time.perf_counter()
    try:
        cells, rows, text = build_table(args.storage, args.kind, objective=args.objective, seeds=seeds, envs=envs,
                                        progress=not args.quiet)
    except UsageError as exc:  # a journal damaged before its last record (a damaged tail is cut off, with a warning)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no table was written", file=sys.stderr)
        return 130
    if not rows:
        print(f"error: no {args.kind} studies in {args.storage}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / "tables" / args.kind
    markdown = write_table(out, cells, rows, ALL_SUBSETS, seeds, args.kind, text)
    print(markdown)
    print(f"wrote {out}/table.md, table.tex, table.nc ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
