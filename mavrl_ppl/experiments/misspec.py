"""The misspecification table (REFERENCE_EXPERIMENTS §1): does combining feedback still help when a source is corrupted?

``python -m mavrl_ppl.experiments.misspec --env grid_trap --condition demo --seeds 0-9 --out DIR``

A condition simulates some feedback types with a teacher that is not the one the model assumes (the ``[teacher]``
setting of :mod:`mavrl_ppl.runs`, :data:`mavrl_ppl.runs.TEACHER_SETTINGS`), at the paper's counts (pref 64, demo 1,
rating 64, stop 256):

* ``pref``, ``demo``, ``rating``, ``stop``: only that type, corrupted;
* ``pdrs_<type>``: all four types, that one corrupted; ``pdrs_all``: all four, all corrupted.

Corruptions (:data:`CORRUPTIONS`): preference labels at beta 0.01 (model 5), demonstrations at beta 0.1 (model 10),
stops at c = 0.1 (model c = 2.0, so the model's lambda is 20x the teacher's), ratings with Gaussian noise of sd 2 on
the judged return after the cutpoints are set on the clean judgements (the model assumes none). The held-out 20 % of
every type's items that SVI stops on come from the same corrupted teacher.

For every env, seed and condition it runs, each a :func:`mavrl_ppl.runs.run` through the one executor
(:mod:`mavrl_ppl.experiments.executor`, ``--jobs`` local processes or ``--cluster``), into ``DIR/runs``:

* ``misspec-<condition>_<env>_seed<S>``: SVI on the corrupted data;
* ``base-<subset>_<env>_seed<S>``: SVI on the same types from the well-specified teacher, same seed (so the same
  segments: only the teacher's labels differ), ``subset`` = the single type or ``pdrs``; one Base run serves the five
  PDRS conditions.

Both are scored the same, honest way: the normalised score of the final posterior mean, where SVI kept the state with
the best held-out *feedback* likelihood; the true reward selects nothing. (The paper's Misspec. column took the best of
six checkpoints by true value, and its Base. the tuned Optuna study's value: REFERENCE_EXPERIMENTS §1 "Scoring".) One
SVI setting serves every run (``--svi-config``; default the library's), where the paper tuned one per subset.

Bookkeeping as in :mod:`mavrl_ppl.experiments.baseline_table`: run directories with ``metrics.json`` are reused (one
whose ``config.json`` holds other settings than its fit would get now is refused, exit 2: :func:`check_reusable`); a
cell (env, seed, condition) whose two runs finished is recorded in ``DIR/records/<condition>/<env>_seed<S>.json``
and taken from there on a re-run with the same settings, even without its run directories; a failed fit stays in the
table as ``failed`` with its error (counted as ``k/n`` in its cell and listed), never dropped. Writes ``misspec.nc``,
``misspec.md``, ``misspec.tex`` and ``misspec.png`` into ``DIR``: per grid Base | Misspec | Ratio (mean ± SE over
seeds; Ratio = Misspec mean / Base mean), beside the published table (:data:`PUBLISHED`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mavrl_ppl.analysis.report import format_mean_se, latex_escape, latex_tabular, markdown_table, mean_se
from mavrl_ppl.envs.allocation import GRID_ALLOCATION, format_counts
from mavrl_ppl.experiments.baseline_table import (
    FitFunction,
    FitSpec,
    RecordError,
    check_fit_options,
    cluster_label,
    load_record,
    parse_seeds,
    read_metrics,
    record_settings,
    run_fit,
    run_fits,
    save_record,
    seed_text,
    settings_table,
)
from mavrl_ppl.experiments.executor import run_command
from mavrl_ppl.netcdf import ENGINE

__all__ = [
    "CONDITIONS",
    "CORRUPTIONS",
    "PUBLISHED",
    "build_misspec",
    "check_reusable",
    "condition_settings",
    "fit_config",
    "main",
    "plan_fits",
    "summarize_cell",
    "to_latex",
    "to_markdown",
]

TYPES = ("pref", "demo", "rating", "stop")
#: The teacher's corruption of each type, as ``[teacher]`` settings (REFERENCE_EXPERIMENTS §1, "Misspecifications").
CORRUPTIONS: dict[str, dict[str, float]] = {"pref": {"beta": 0.01}, "demo": {"beta": 0.1},
                                            "rating": {"noise_sd": 2.0}, "stop": {"c": 0.1}}
#: Condition -> (types simulated, types corrupted), in the published table's row order.
CONDITIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    **{t: ((t,), (t,)) for t in TYPES},
    **{f"pdrs_{t}": (TYPES, (t,)) for t in TYPES},
    "pdrs_all": (TYPES, TYPES),
}
LABELS = {"pref": "Pref", "demo": "Demo", "rating": "Rating", "stop": "Stop",
          **{f"pdrs_{t}": f"PDRS, {t.capitalize()} corrupt" for t in TYPES}, "pdrs_all": "PDRS, All corrupt"}
ENVS = ("grid_cliff", "grid_sparse", "grid_trap")
ENV_LABELS = {"grid_cliff": "Cliff", "grid_sparse": "Sparse", "grid_trap": "Trap"}
ROLES = ("base", "misspec")

#: The published table, copied from REFERENCE_EXPERIMENTS.md §1 "Published table" ([S] results/tables/misspec.tex), row
#: by row: per grid (Cliff, Sparse, Trap) Base, Misspec mean, Misspec SEM over 10 seeds, Ratio. Scored differently from
#: ours (see the module docstring); its best/second-best shading is not copied.
_PUBLISHED_ROWS: dict[str, tuple[float, ...]] = {
    "pref": (59.2, 46.9, 14.5, 0.79, 80.0, 20.0, 13.3, 0.25, 78.3, 43.0, 4.3, 0.55),
    "demo": (80.4, 15.0, 10.7, 0.19, 95.0, 9.9, 10.0, 0.10, 46.5, 43.0, 8.4, 0.93),
    "rating": (41.1, 29.6, 11.7, 0.72, 58.8, 30.0, 15.3, 0.51, 60.4, 35.5, 6.8, 0.59),
    "stop": (84.1, 29.0, 11.8, 0.35, 90.0, 20.0, 13.3, 0.22, 46.1, 46.1, 0.0, 1.00),
    "pdrs_pref": (100.0, 90.3, 8.7, 0.90, 100.0, 90.0, 10.0, 0.90, 95.3, 91.9, 5.8, 0.96),
    "pdrs_demo": (100.0, 38.1, 13.3, 0.38, 100.0, 50.0, 16.7, 0.50, 95.3, 73.0, 9.0, 0.77),
    "pdrs_rating": (100.0, 100.0, 0.0, 1.00, 100.0, 100.0, 0.0, 1.00, 95.3, 100.0, 0.0, 1.05),
    "pdrs_stop": (100.0, 100.0, 0.0, 1.00, 100.0, 90.0, 10.0, 0.90, 95.3, 100.0, 0.0, 1.05),
    "pdrs_all": (100.0, 43.2, 13.2, 0.43, 100.0, 50.0, 16.7, 0.50, 95.3, 53.8, 4.4, 0.56),
}
#: condition -> env -> (Base, Misspec mean, Misspec SEM, Ratio), from :data:`_PUBLISHED_ROWS`.
PUBLISHED: dict[str, dict[str, tuple[float, ...]]] = {
    condition: {env: row[4 * i: 4 * i + 4] for i, env in enumerate(ENVS)} for condition, row in _PUBLISHED_ROWS.items()
}
SCORING = ("Both columns score the final SVI posterior mean (the state with the best held-out feedback likelihood; "
           "the true reward selects nothing); the paper's Misspec. took the best of 6 checkpoints by true value "
           "and its Base. the tuned study's value. Ratio = Misspec mean / Base mean.")


# ------------------------------------------------------------------------------------------------ the plan


def subset(condition: str) -> str:
    """The Base run a condition is compared with: the single type, or ``pdrs``."""
    types, _ = CONDITIONS[condition]
    return types[0] if len(types) == 1 else "pdrs"


def condition_settings(condition: str) -> tuple[str, dict[str, dict[str, float]]]:
    """A condition's ``--feedback`` counts (the paper's, for its types) and its ``[teacher]`` table."""
    types, corrupted = CONDITIONS[condition]
    return format_counts({t: GRID_ALLOCATION[t] for t in types}), {t: dict(CORRUPTIONS[t]) for t in corrupted}


def _run_dir(out: Path, role: str, condition: str, env: str, seed: int) -> Path:
    name = f"base-{subset(condition)}" if role == "base" else f"misspec-{condition}"
    return out / "runs" / f"{name}_{env}_seed{seed}"


def plan_fits(cells: Sequence[tuple[str, str, int]], out: Path) -> list[FitSpec]:
    """The fits of the cells ``(env, condition, seed)``: each misspecified run and its Base run (once per env, seed
    and subset). :attr:`FitSpec.run` is ``base-<condition>`` or ``misspec-<condition>`` (a Base run is planned under
    the first of its conditions; its directory is the subset's)."""
    fits: dict[str, FitSpec] = {}
    for env, condition, seed in cells:
        for role in ROLES:
            spec = FitSpec(f"{role}-{condition}", env, seed, _run_dir(out, role, condition, env, seed))
            fits.setdefault(spec.name, spec)
    return list(fits.values())


def fit_config(spec: FitSpec, *, env_size: int | None, svi_settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run settings (:func:`mavrl_ppl.runs.resolve_config`'s input) of one fit: the condition's counts, and its
    teacher for the misspecified run only."""
    role, condition = spec.run.split("-", 1)
    feedback, teacher = condition_settings(condition)
    config: dict[str, Any] = {"inference": "svi", "env": spec.env, "seed": spec.seed, "env_size": env_size,
                              "feedback": feedback}
    if role == "misspec":
        config["teacher"] = teacher
    if svi_settings:
        config["svi"] = dict(svi_settings)
    return config


def cell_settings(condition: str, env_size: int | None, svi_config: Path | None) -> dict[str, Any]:
    """What a cell's two runs depend on beyond env and seed; a record is reused only where these match."""
    feedback, teacher = condition_settings(condition)
    return {**record_settings(feedback, env_size, svi_config, None), "condition": condition, "teacher": teacher}


def check_reusable(fits: Sequence[FitSpec], config: Any) -> None:
    """Refuse finished run directories made with other settings than their fit would get now (another ``--env-size``
    or ``--svi-config`` into the same ``--out``): they would be reused as they are, and mix settings in one table.

    Args:
        fits: the planned fits.
        config: a fit's run settings (:func:`fit_config`).

    Raises:
        UsageError: naming the first such run and the first setting that differs.
    """
    from mavrl_ppl.errors import UsageError
    from mavrl_ppl.runs import resolve_config

    for spec in fits:
        recorded_file = spec.out / "config.json"
        if not (spec.out / "metrics.json").is_file() or not recorded_file.is_file():
            continue
        wanted = json.loads(json.dumps(resolve_config(config(spec))))  # as config.json holds it (tuples as lists)
        try:
            recorded = json.loads(recorded_file.read_text())
        except (OSError, json.JSONDecodeError):
            recorded = {}
        differs = _differences(wanted, recorded)
        if differs:
            name, old, new = differs[0]
            raise UsageError(f"{spec.out} was made with other settings ({name}: {old!r}, now {new!r}); use another "
                             "--out or delete that run")


def _differences(wanted: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(setting, recorded, wanted)`` where they differ, one level into the tables (``svi.max_steps``)."""
    out = []
    for key, value in wanted.items():
        if isinstance(value, dict):
            table = recorded.get(key) if isinstance(recorded.get(key), dict) else {}
            out += [(f"{key}.{sub}", table.get(sub), value.get(sub)) for sub in sorted({*value, *table})
                    if table.get(sub) != value.get(sub)]
        elif recorded.get(key) != value:
            out.append((key, recorded.get(key), value))
    return out


def summarize_cell(env: str, condition: str, seed: int, fits: Mapping[str, FitSpec], outcomes: Mapping[str, Any],
                   settings: Mapping[str, Any]) -> dict[str, Any]:
    """The record of one cell: per role (``base``, ``misspec``) the run's name, ``status``, ``message`` and whole
    ``metrics.json``; ``complete`` when both are ok (only complete records are saved; the rest is retried)."""
    runs = {}
    for role in ROLES:
        spec = fits[role]
        outcome = outcomes[spec.name]
        metrics = (read_metrics(spec.out) or {}) if outcome.status == "ok" else {}
        runs[role] = {"run": spec.name, "status": outcome.status, "message": outcome.message, "metrics": metrics}
    return {"env": env, "seed": seed, "condition": condition, "settings": dict(settings), "runs": runs,
            "complete": all(r["status"] == "ok" for r in runs.values())}


# ------------------------------------------------------------------------------------------------ the table


def assemble(cells: Mapping[tuple[str, str, int], dict[str, Any]], envs: Sequence[str], conditions: Sequence[str],
             seeds: Sequence[int]) -> xr.Dataset:
    """The table Dataset: per ``condition, env, seed, role`` the ``score`` (normalised, %), ``status``, ``message``,
    ``run`` and ``fit_seconds``; per ``condition, env, role`` ``score_mean``, ``score_se``, ``n_ok``; per
    ``condition, env`` ``ratio`` and the published ``paper_base``, ``paper_misspec``, ``paper_misspec_se``,
    ``paper_ratio`` (NaN where the paper has none)."""
    shape = (len(conditions), len(envs), len(seeds), len(ROLES))
    score, seconds = np.full(shape, np.nan), np.full(shape, np.nan)
    text = {k: np.full(shape, "", dtype=object) for k in ("status", "message", "run")}
    for (env, condition, seed), cell in cells.items():
        index = (conditions.index(condition), envs.index(env), list(seeds).index(seed))
        for r, role in enumerate(ROLES):
            entry = cell["runs"][role]
            for k in text:
                text[k][(*index, r)] = entry[k]
            score[(*index, r)] = float(entry["metrics"].get("normalized_score", np.nan))
            seconds[(*index, r)] = float(entry["metrics"].get("fit_seconds", np.nan))
    ok = text["status"] == "ok"
    mean, se, _ = mean_se(np.moveaxis(np.where(ok, score, np.nan), 2, -1))  # (condition, env, role)
    paper = np.array([[PUBLISHED.get(c, {}).get(e, (np.nan,) * 4) for e in envs] for c in conditions])
    dims2, dims4 = ("condition", "env"), ("condition", "env", "seed", "role")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = mean[..., 1] / mean[..., 0]
    data = {
        "score": (dims4, score), "fit_seconds": (dims4, seconds),
        **{k: (dims4, v.astype(str)) for k, v in text.items()},
        "score_mean": ((*dims2, "role"), mean), "score_se": ((*dims2, "role"), se),
        "n_ok": ((*dims2, "role"), ok.sum(axis=2)), "ratio": (dims2, ratio),
        **{f"paper_{k}": (dims2, paper[..., i]) for i, k in enumerate(("base", "misspec", "misspec_se", "ratio"))},
    }
    return xr.Dataset(data, coords={"condition": list(conditions), "env": list(envs), "seed": list(seeds),
                                    "role": list(ROLES)})


def _header(ds: xr.Dataset) -> list[str]:
    return ["condition", *(f"{ENV_LABELS.get(e, e)} {col}" for e in ds["env"].values.tolist()
                           for col in ("Base", "Misspec", "Ratio"))]


def _ours(ds: xr.Dataset, pm: str) -> list[list[str]]:
    """Cells of our table: mean ± SE (``k/n`` appended where runs failed), the ratio."""
    seeds = ds.sizes["seed"]
    rows = []
    for condition in ds["condition"].values.tolist():
        row = [LABELS.get(condition, condition)]
        for env in ds["env"].values.tolist():
            cell = ds.sel(condition=condition, env=env)
            for role in ROLES:
                c = cell.sel(role=role)
                n = int(c["n_ok"])
                text = format_mean_se(float(c["score_mean"]), float(c["score_se"]), 1, pm=pm)
                row.append(text if n == seeds else f"{text} ({n}/{seeds} ok)")
            ratio = float(cell["ratio"])
            row.append(f"{ratio:.2f}" if np.isfinite(ratio) else "n/a")
        rows.append(row)
    return rows


def _published(ds: xr.Dataset, pm: str) -> list[list[str]]:
    rows = []
    for condition in ds["condition"].values.tolist():
        row = [LABELS.get(condition, condition)]
        for env in ds["env"].values.tolist():
            c = ds.sel(condition=condition, env=env)
            if not np.isfinite(float(c["paper_base"])):
                row += ["—"] * 3
                continue
            row += [f"{float(c['paper_base']):.1f}",
                    format_mean_se(float(c["paper_misspec"]), float(c["paper_misspec_se"]), 1, pm=pm),
                    f"{float(c['paper_ratio']):.2f}"]
        rows.append(row)
    return rows


def _problems(ds: xr.Dataset) -> list[list[str]]:
    bad = np.argwhere(ds["status"].values != "ok")
    return [[str(ds["condition"].values[i]), str(ds["env"].values[j]), str(int(ds["seed"].values[k])),
             str(ds["run"].values[i, j, k, r]), str(ds["status"].values[i, j, k, r]),
             str(ds["message"].values[i, j, k, r])] for i, j, k, r in bad]


def _corruption_text() -> str:
    return "; ".join(f"{t}: " + ", ".join(f"{k} {v:g}" for k, v in c.items()) for t, c in CORRUPTIONS.items())


def to_markdown(ds: xr.Dataset) -> str:
    """The table as Markdown: ours in the published layout, the published table below in the same layout, the runs
    that failed, and the wall time."""
    align = "l" + "r" * (3 * ds.sizes["env"])
    lines = [f"## Misspecification: normalised score (%), mean ± SE over seeds {seed_text(ds)}", "",
             f"Teacher corruptions ({_corruption_text()}); counts pref 64, demo 1, rating 64, stop 256. {SCORING}", "",
             markdown_table(_header(ds), _ours(ds, "±"), align), "",
             "### Published (REFERENCE_EXPERIMENTS.md §1; scored as stated above)", "",
             markdown_table(_header(ds), _published(ds, "±"), align)]
    problems = _problems(ds)
    if problems:
        lines += ["", "### Runs that did not finish (left out of the means, counted in their cells)", "",
                  markdown_table(["condition", "env", "seed", "run", "status", "error / reason"], problems)]
    if "wall_seconds" in ds.attrs:
        lines += ["", f"Wall time of this invocation {float(ds.attrs['wall_seconds']):.1f} s: "
                  f"{int(ds.attrs['fits_run'])} fits run, {int(ds.attrs['fits_reused'])} reused, "
                  f"{int(ds.attrs['cells_from_records'])} cells from their records; SVI settings: "
                  f"{ds.attrs.get('svi_config') or 'the defaults'}."]
    return "\n".join(lines) + "\n"


def to_latex(ds: xr.Dataset) -> str:
    """The two tables (ours, published) as LaTeX booktabs tables, a rule between the single-type and PDRS rows."""
    header = [latex_escape(h) for h in _header(ds)]
    align = "l" + "r" * (3 * ds.sizes["env"])
    out = []
    for rows, caption in ((_ours(ds, r"$\pm$"), f"Ours: normalised score (\\%), mean $\\pm$ SE over seeds "
                           f"{seed_text(ds)}. {latex_escape(SCORING)}"),
                          (_published(ds, r"$\pm$"), "Published (REFERENCE\\_EXPERIMENTS.md \\S{}1).")):
        body = [[latex_escape(r[0]), *(c.replace("—", "--") for c in r[1:])] for r in rows]
        tex = latex_tabular(header, body, caption, align=align, size="small")
        first_pdrs = next((latex_escape(LABELS[c]) for c in ds["condition"].values.tolist()
                           if c.startswith("pdrs_")), None)
        if first_pdrs is not None and not tex.split(r"\midrule", 1)[1].lstrip().startswith(first_pdrs):
            tex = tex.replace(f"\n{first_pdrs} &", f"\n\\midrule\n{first_pdrs} &", 1)
        out.append(tex)
    return "\n\n".join(out) + "\n"


def plot(ds: xr.Dataset, path: Path) -> Path:
    """``misspec.png``: per env a panel of the conditions, bars ours Base / Misspec (± SE) beside the paper's."""
    from mavrl_ppl.analysis.plots import plot_grouped_bars

    means = np.stack([ds["score_mean"].sel(role="base"), ds["score_mean"].sel(role="misspec"), ds["paper_base"],
                      ds["paper_misspec"]], axis=-1).transpose(1, 0, 2)  # (env, condition, series)
    errors = np.stack([ds["score_se"].sel(role="base"), ds["score_se"].sel(role="misspec"),
                       np.full(ds["paper_base"].shape, np.nan), ds["paper_misspec_se"]], axis=-1).transpose(1, 0, 2)
    envs = ds["env"].values.tolist()
    return plot_grouped_bars([LABELS.get(c, c).replace(", ", ",\n") for c in ds["condition"].values.tolist()],
                             ["ours: Base", "ours: Misspec", "paper: Base", "paper: Misspec"], means, errors, path,
                             ylabels=["normalised score (%)"] * len(envs), stacked=True,
                             panel_titles=[f"{e}: Base = well-specified teacher, Misspec = corrupted" for e in envs],
                             title=f"Misspecification, mean ± SE over seeds {seed_text(ds)} (paper: as published)")


# ------------------------------------------------------------------------------------------------ the command


def build_misspec(
    envs: Sequence[str],
    conditions: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    *,
    jobs: int | None = None,
    env_size: int | None = None,
    svi_config: Path | None = None,
    fit: FitFunction = run_fit,
    progress: bool = True,
    records: Path | None = None,
    in_process: bool = False,
    cluster: Any = None,
) -> xr.Dataset:
    """Run (or reuse) every fit of the cells ``envs x conditions x seeds``, then write ``misspec.{nc,md,tex,png}``.

    Args:
        envs: tabular env names (the paper's: the three grids).
        conditions: names from :data:`CONDITIONS`.
        seeds: seeds.
        out: output directory (``runs/``, ``records/``, the table files).
        jobs: parallel fits (default: the number of cores).
        env_size: grid side of every fit (``None``: the env's, 10).
        svi_config: TOML file of ``[svi]`` settings for every fit.
        fit: one fit (:data:`~mavrl_ppl.experiments.baseline_table.FitFunction`; tests inject a fake).
        progress: a progress bar over fits.
        records: cell records directory (default ``out/records``).
        in_process: fit in this process (tests, debugging).
        cluster: a Dask cluster (:func:`~mavrl_ppl.experiments.executor.run_tasks`); ``out`` is then made absolute
            and must be on a file system every worker shares.

    Returns:
        The table Dataset (also written as ``misspec.nc``).
    """
    t0 = time.perf_counter()
    jobs = jobs or os.cpu_count() or 1
    out = Path(out) if cluster is None else Path(out).absolute()
    records = Path(records) if records is not None else out / "records"
    envs, conditions, seeds = list(envs), list(conditions), list(seeds)
    settings = {c: cell_settings(c, env_size, svi_config) for c in conditions}
    keys = [(e, c, s) for c in conditions for e in envs for s in seeds]
    cells = {k: load_record(records / k[1], k[0], k[2], settings[k[1]], keys=("runs",), kind="misspec")
             for k in keys}
    todo = [k for k in keys if cells[k] is None]
    fits = plan_fits(todo, out)
    reused = sum((f.out / "metrics.json").is_file() for f in fits)
    svi_settings = settings_table(svi_config, "svi")

    def config(spec: FitSpec) -> dict[str, Any]:
        return fit_config(spec, env_size=env_size, svi_settings=svi_settings)

    check_reusable(fits, config)
    outcomes = run_fits(fits, jobs=jobs, fit=fit, progress=progress, in_process=in_process, cluster=cluster,
                        config=config)
    for env, condition, seed in todo:
        cell_fits = {role: FitSpec(f"{role}-{condition}", env, seed, _run_dir(out, role, condition, env, seed))
                     for role in ROLES}
        cell = summarize_cell(env, condition, seed, cell_fits, outcomes, settings[condition])
        cells[(env, condition, seed)] = cell
        if cell["complete"]:
            save_record(records / condition, cell)
    ds = assemble(cells, envs, conditions, seeds)
    ds.attrs.update(wall_seconds=time.perf_counter() - t0, fits_run=len(fits) - reused, fits_reused=reused,
                    cells_from_records=len(keys) - len(todo), jobs=int(jobs), cluster=cluster_label(cluster),
                    svi_config=str(svi_config or ""), records=str(records), scoring=SCORING,
                    corruptions=json.dumps(CORRUPTIONS), counts=json.dumps(GRID_ALLOCATION))
    if env_size is not None:
        ds.attrs["env_size"] = int(env_size)
    out.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(out / "misspec.nc", engine=ENGINE)
    (out / "misspec.md").write_text(to_markdown(ds))
    (out / "misspec.tex").write_text(to_latex(ds))
    plot(ds, out / "misspec.png")
    return ds


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mavrl_ppl.experiments.misspec``."""
    p = argparse.ArgumentParser(prog="python -m mavrl_ppl.experiments.misspec",
                                description="Corrupted-teacher runs beside well-specified ones, and the table.")
    p.add_argument("--env", "--envs", dest="envs", nargs="+", default=list(ENVS), help="tabular envs (default the "
                   "three grids)")
    p.add_argument("--condition", "--conditions", dest="conditions", nargs="+", default=list(CONDITIONS),
                   help=f"conditions: {', '.join(CONDITIONS)} (default all)")
    p.add_argument("--seeds", nargs="+", default=["0-9"], help="seeds: ranges and lists, e.g. 0-9 or 0,3,5")
    p.add_argument("--out", type=Path, required=True, help="output directory (runs/, records/, tables, figure)")
    p.add_argument("--jobs", type=int, default=None, help="parallel fits (default: number of cores)")
    p.add_argument("--cluster", default=None, help="run the fits on Dask: tcp://HOST:8786 or local:N")
    p.add_argument("--env-size", type=int, default=None, help="grid side of every fit (default: the env's)")
    p.add_argument("--svi-config", type=Path, default=None, help="TOML settings file for every SVI fit")
    p.add_argument("--records", type=Path, default=None, help="cell records (default OUT/records)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_arguments(args: argparse.Namespace) -> list[int]:
    """Every argument checked before any work; returns the seeds. ``ValueError`` names what is wrong."""
    from mavrl_ppl.envs.grids import make_tabular

    seeds = parse_seeds(args.seeds)
    unknown = [c for c in args.conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition {unknown[0]!r}; known: {', '.join(CONDITIONS)}")
    if args.env_size is not None and args.env_size < 1:
        raise ValueError(f"--env-size must be >= 1, got {args.env_size}")
    check_fit_options(args.jobs, args.cluster, (args.svi_config,))
    for env in args.envs:
        make_tabular(env, size=args.env_size)  # ValueError naming an unknown env
    if args.svi_config is not None:
        from mavrl_ppl.runs import resolve_config

        resolve_config({"svi": settings_table(args.svi_config, "svi")}, source=str(args.svi_config))
    return seeds


def main(argv: list[str] | None = None) -> int:
    """Run the command; exit status 0 when the table was written (failed fits are in it), 2 on bad arguments or a
    broken record (one line), 1 when the ``--cluster`` scheduler cannot be reached or is lost, 130 on Ctrl-C."""
    from mavrl_ppl.errors import UsageError

    args = build_parser().parse_args(argv)
    try:
        seeds = _check_arguments(args)
    except (ValueError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    envs, conditions = list(dict.fromkeys(args.envs)), list(dict.fromkeys(args.conditions))
    try:
        return run_command(lambda: build_misspec(
            envs, conditions, seeds, args.out, jobs=args.jobs, env_size=args.env_size,
            svi_config=args.svi_config.resolve() if args.svi_config else None, progress=not args.quiet,
            records=args.records, cluster=args.cluster),
            report=to_markdown, written=f"{args.out}/misspec.{{nc,md,tex,png}}",
            kept="finished runs and records are kept")
    except (RecordError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
