"""The baseline table: MAVRL-SVI vs the NUTS reference vs the Post-Hoc average of single-type models, over envs x seeds.

``python -m mavrl_ppl.experiments.baseline_table --envs grid_cliff grid_sparse grid_trap --seeds 0-9 --out DIR``

For every env and seed it runs, each a :func:`mavrl_ppl.runs.run` into ``DIR/runs/<run>_<env>_seed<S>`` through the
one executor (:mod:`mavrl_ppl.experiments.executor`):

* ``svi``: MAVRL-SVI on all feedback types (simulated with the seed at ``--feedback``'s allocation);
* ``nuts``: NUTS on the SAME data (``data`` = the SVI run's ``feedback.nc``);
* ``svi-pref``, ``svi-demo``, ``svi-rating``, ``svi-stop``: SVI on one type each, on that type's items of the same data
  (``DIR/data/<env>_seed<S>/<type>.nc``, cut from the SVI run's file); the average of their posterior means is the
  Post-Hoc baseline, scored with :func:`~mavrl_ppl.analysis.metrics.evaluate_reward`. Its fit time is the sum of the
  four fits.

Then it tabulates per env the mean +- standard error over seeds of the normalised score, EPIC and fit seconds per
method, and the SVI-vs-NUTS agreement (:func:`~mavrl_ppl.analysis.compare.compare_runs`: correlation of the means,
coverage both ways, mean |difference| in NUTS sds, Wasserstein-1). Writes ``baseline_table.nc`` (xarray),
``baseline_table.md``, ``baseline_table.tex`` and ``baseline_table.png`` (bars with standard-error whiskers) into
``DIR``.

Bookkeeping: independent fits run in ``--jobs`` parallel worker processes, or on a Dask cluster with ``--cluster
tcp://HOST:8786`` (workers on other machines; ``DIR`` must be on a file system they all share, under the same path)
or ``--cluster local:N`` (N local Dask workers); a fit whose Dask worker dies is rerun on another worker (up to Dask's
``allowed-failures``, then failed). A run directory with ``metrics.json`` is
reused (runs are written atomically, so only finished runs have one). Once every run of an env and seed has finished,
the cell's figures (each run's ``metrics.json``, the Post-Hoc scores, the agreement) go to ``--records`` (default
``DIR/records``) as ``<env>_seed<S>.json``; a later call with the same settings takes the cell from there without its
run directories, so a table can be finished on another machine. A failed fit is kept in the table as ``failed`` with
its error and the end of its traceback (its dependents as ``skipped``), never dropped; a NUTS run that did not converge
is kept, counted and flagged ``unconverged``. The Markdown and the NetCDF record the total wall
time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mavrl_ppl.analysis.report import format_mean_se, latex_escape, latex_tabular, markdown_table, mean_se
from mavrl_ppl.baselines.mcmc.settings import RHAT_MAX
from mavrl_ppl.envs.allocation import GRID_ALLOCATION, format_counts
from mavrl_ppl.experiments.executor import Outcome, Task, check_cluster, run_command, run_tasks
from mavrl_ppl.netcdf import ENGINE

__all__ = [
    "METHODS",
    "FitSpec",
    "RecordError",
    "build_table",
    "check_fit_options",
    "cluster_label",
    "load_record",
    "parse_seeds",
    "plan_fits",
    "read_metrics",
    "record_path",
    "record_settings",
    "run_fit",
    "run_names",
    "save_record",
    "seed_text",
    "settings_table",
    "summarize_cell",
    "table_to_latex",
    "table_to_markdown",
]

#: The table's methods, in display order, and their labels.
METHODS = ("svi", "nuts", "posthoc")
METHOD_LABELS = {"svi": "MAVRL-SVI", "nuts": "NUTS", "posthoc": "Post-Hoc"}
DEFAULT_FEEDBACK = format_counts(GRID_ALLOCATION)  # the paper's fixed allocation on the grids (REFERENCE §3)
METRICS = ("normalized_score", "epic", "fit_seconds")
AGREEMENT = {  # Dataset name -> compare_runs variable (A = SVI, B = NUTS)
    "correlation": "correlation",
    "coverage_nuts_in_svi": "coverage_b_in_a",
    "coverage_svi_in_nuts": "coverage_a_in_b",
    "mean_abs_diff_sd": "mean_abs_diff_sd",
    "wasserstein_mean": "wasserstein_mean",
}

#: ``fit(config, out) -> {"metrics": ..., "converged": ...}``: one fit of the table into run directory ``out`` (the
#: default, :func:`run_fit`, is :func:`mavrl_ppl.runs.run`; tests inject a fake). It raises on failure.
FitFunction = Callable[[dict[str, Any], Path], dict[str, Any]]


@dataclass(frozen=True)
class FitSpec:
    """One fit of the table.

    Attributes:
        run: ``svi``, ``nuts`` or ``svi-<type>``.
        env: env name.
        seed: simulation and inference seed.
        out: run directory.
        depends_on: name of the run whose ``feedback.nc`` this fit needs (``None`` for the all-types SVI run).
        data: feedback file passed as ``--data`` (``None``: simulated from the seed).
        single_type: the feedback type of a single-type run, else ``None``.
    """

    run: str
    env: str
    seed: int
    out: Path
    depends_on: str | None = None
    data: Path | None = None
    single_type: str | None = None

    @property
    def name(self) -> str:
        """Run-directory name ``<run>_<env>_seed<seed>``."""
        return self.out.name


def parse_seeds(tokens: Sequence[str]) -> list[int]:
    """``["0-9"]``, ``["0-4,7"]`` or ``["0", "3"]`` -> sorted unique seeds.

    Args:
        tokens: command-line tokens; each a comma-separated list of integers or inclusive ranges ``a-b``.
    """
    seeds: set[int] = set()
    for token in tokens:
        for piece in str(token).split(","):
            piece = piece.strip()
            if not piece:
                continue
            start, sep, stop = piece.partition("-")
            try:
                lo, hi = (int(start), int(stop)) if sep else (int(piece), int(piece))
            except ValueError:
                raise ValueError(f"bad seed {piece!r}: expected an integer or a range like 0-9") from None
            if lo < 0 or hi < lo:
                raise ValueError(f"bad seed range {piece!r}")
            seeds.update(range(lo, hi + 1))
    if not seeds:
        raise ValueError("no seeds given")
    return sorted(seeds)


def _single_types(feedback: str) -> list[str]:
    """The types with a positive count in a ``--feedback`` spec, in the spec's order."""
    types = []
    for piece in feedback.split(","):
        name, _, count = piece.partition("=")
        if name.strip() and count.strip() not in ("", "0"):
            types.append(name.strip())
    return types


def plan_fits(envs: Sequence[str], seeds: Sequence[int], out: Path, *, feedback: str = DEFAULT_FEEDBACK
              ) -> list[FitSpec]:
    """Every fit of the table, each all-types SVI run before the runs that need its data.

    Args:
        envs: env names.
        seeds: seeds.
        out: the table's output directory (runs go to ``out/runs``, single-type data to ``out/data``).
        feedback: the all-types allocation; one single-type run per type with a positive count.
    """
    fits = []
    for env in envs:
        for seed in seeds:
            svi = FitSpec("svi", env, seed, out / "runs" / f"svi_{env}_seed{seed}")
            fits.append(svi)
            fits.append(FitSpec("nuts", env, seed, out / "runs" / f"nuts_{env}_seed{seed}", depends_on=svi.name,
                                data=svi.out / "feedback.nc"))
            for kind in _single_types(feedback):
                fits.append(FitSpec(f"svi-{kind}", env, seed, out / "runs" / f"svi-{kind}_{env}_seed{seed}",
                                    depends_on=svi.name, data=out / "data" / f"{env}_seed{seed}" / f"{kind}.nc",
                                    single_type=kind))
    return fits


def fit_config(spec: FitSpec, *, feedback: str, env_size: int | None, svi_settings: dict[str, Any] | None,
               nuts_settings: dict[str, Any] | None) -> dict[str, Any]:
    """The run settings (:func:`mavrl_ppl.runs.resolve_config`'s input) of one fit.

    Args:
        spec: the fit.
        feedback: the all-types allocation (only the all-types run simulates; the others fit ``spec.data``).
        env_size: grid side, or ``None`` for the env's default.
        svi_settings: the ``[svi]`` settings table of the SVI fits, or ``None``.
        nuts_settings: the ``[nuts]`` settings table of the NUTS fits, or ``None``.
    """
    inference = "nuts" if spec.run == "nuts" else "svi"
    config: dict[str, Any] = {"inference": inference, "env": spec.env, "seed": spec.seed, "env_size": env_size}
    if spec.data is not None:
        config["data"] = str(spec.data)
    else:
        config["feedback"] = feedback
    table = nuts_settings if inference == "nuts" else svi_settings
    if table:
        config[inference] = dict(table)
    return config


def run_fit(config: dict[str, Any], out: Path) -> dict[str, Any]:
    """The table's default fit: :func:`mavrl_ppl.runs.run` (replacing whatever is at ``out``), its metrics and
    NUTS's verdict."""
    from mavrl_ppl.runs import run

    result = run(config, out, overwrite=True)
    return {"metrics": result.metrics, "converged": result.converged}


def _fit_task(fit: FitFunction, config: dict[str, Any], out: Path, source: Path | None,
              single_type: str | None) -> dict[str, Any]:
    """One task of the table: cut a single-type run's data out of its all-types run first, then fit."""
    if single_type is not None and source is not None:
        _write_single_type_data(source, Path(config["data"]), single_type)
    return fit(config, out)


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """A run directory's ``metrics.json``, ``None`` if it has none or it cannot be read (a run not finished)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _converged(metrics: dict[str, Any]) -> bool:
    """A NUTS run's own verdict (``nuts_diagnostics``' ``converged``); a run without one counts as unconverged."""
    return bool(metrics.get("converged", False))


@dataclass
class _Outcome:
    status: str  # ok | unconverged | failed | skipped
    reused: bool = False
    message: str = ""


def _classify(spec: FitSpec, outcome: Outcome | None) -> _Outcome:
    """A finished (``outcome``) or reused (``None``) fit, from the executor's outcome and the run's ``metrics.json``."""
    if outcome is not None and outcome.status != "ok":
        return _Outcome(outcome.status, message=outcome.message)
    metrics = read_metrics(spec.out)
    if metrics is None:
        return _Outcome("failed", message=f"{spec.out}: finished without a metrics.json")
    if spec.run == "nuts" and not _converged(metrics):
        lp = f"log-density R-hat {metrics['rhat_lp']:.3f}, " if metrics.get("rhat_lp", 1.0) > RHAT_MAX else ""
        note = (f"R-hat max {float(metrics.get('rhat_max', np.nan)):.3f}, {lp}"
                f"{metrics.get('divergences', '?')} divergences")
        return _Outcome("unconverged", reused=outcome is None, message=note)
    return _Outcome("ok", reused=outcome is None)


def _write_single_type_data(source: Path, target: Path, single_type: str) -> None:
    """Cut a single-type run's group out of the all-types run's ``feedback.nc`` (kept if already there); a subset
    ``pref+demo`` (the transfer experiment's) cuts each of its groups."""
    from mavrl_ppl.feedback.data import load_feedback, save_feedback

    if target.is_file():
        return
    feedback = load_feedback(source, groups=single_type.split("+"))
    target.parent.mkdir(parents=True, exist_ok=True)
    save_feedback(target, feedback)


def run_fits(fits: Sequence[FitSpec], *, jobs: int, fit: FitFunction, config: Callable[[FitSpec], dict[str, Any]],
             progress: bool = True, in_process: bool = False, cluster: Any = None) -> dict[str, _Outcome]:
    """Run every fit not already finished, ``jobs`` at a time, each after the run it depends on.

    Args:
        fits: the plan (:func:`plan_fits`).
        jobs: parallel worker processes.
        fit: the fit function (:data:`FitFunction`).
        config: the run settings of a fit.
        progress: show a progress bar over fits.
        in_process: run the fits in this process (tests).
        cluster: run the fits on Dask (:func:`mavrl_ppl.experiments.executor.run_tasks`' ``cluster``); ``fit`` must
            then be picklable by reference (a module-level function) and the run directories on a shared path.

    Returns:
        Run name -> outcome, for every fit.
    """
    by_name = {f.name: f for f in fits}
    reused = {f.name: Outcome("ok") for f in fits if (f.out / "metrics.json").is_file()}
    tasks = [Task(f.name, _fit_task, (fit, config(f), f.out, by_name[f.depends_on].out / "feedback.nc"
                                      if f.depends_on else None, f.single_type), f.depends_on) for f in fits]
    done = run_tasks(tasks, jobs=jobs, in_process=in_process, done=reused, progress=progress, desc="fits",
                     cluster=cluster)
    return {f.name: _classify(f, None if f.name in reused else done[f.name]) for f in fits}


def posthoc_metrics(single_runs: Sequence[Path]) -> dict[str, float]:
    """Post-Hoc baseline: the average of the single-type runs' posterior means, scored on the true reward.

    Args:
        single_runs: run directories of the single-type SVI fits (same env, same seed).

    Returns:
        ``normalized_score``, ``regret``, ``discounted_value``, ``epic`` of the averaged reward and ``fit_seconds``
        (the sum of the single-type fits' times).
    """
    from mavrl_ppl.analysis.metrics import evaluate_reward, learned_reward
    from mavrl_ppl.runs import load_run

    runs = [load_run(r) for r in single_runs]
    mdp = runs[0].mdp()
    mean = np.mean(np.stack([r.posterior_mean() for r in runs]), axis=0)
    metrics = evaluate_reward(mdp, learned_reward(mdp, mean))
    metrics["fit_seconds"] = float(sum(float(r.metrics["fit_seconds"]) for r in runs))
    return metrics


def run_names(feedback: str = DEFAULT_FEEDBACK) -> list[str]:
    """The runs of one env and seed, in table order: ``svi``, ``nuts`` and ``svi-<type>`` per single type.

    Args:
        feedback: the all-types allocation (one single-type run per type with a positive count).
    """
    return ["svi", "nuts", *(f"svi-{kind}" for kind in _single_types(feedback))]


def _cell_fits(fits: Sequence[FitSpec]) -> dict[tuple[str, int], dict[str, FitSpec]]:
    cells: dict[tuple[str, int], dict[str, FitSpec]] = {}
    for f in fits:
        cells.setdefault((f.env, f.seed), {})[f.run] = f
    return cells


def summarize_cell(fits: dict[str, FitSpec], outcomes: dict[str, _Outcome], settings: dict[str, Any]
                   ) -> dict[str, Any]:
    """The record of one env and seed: everything the table needs from its runs, so the runs can be deleted.

    Args:
        fits: run (``svi``, ``nuts``, ``svi-<type>``) -> its fit.
        outcomes: run-directory name -> outcome (:func:`run_fits`).
        settings: what the fits depend on beyond env and seed (:func:`record_settings`).

    Returns:
        ``env``, ``seed``, ``settings``; ``runs``: run -> ``status``, ``message`` and ``metrics`` (the run's whole
        ``metrics.json``); ``posthoc``: ``status``, ``message``, ``metrics``; ``agreement``: the SVI-vs-NUTS figures
        (empty when there is no pair to compare); ``complete``: every run ok or unconverged, Post-Hoc and agreement
        computed. Only complete records are saved (:func:`save_record`): anything else is retried next time.
    """
    from mavrl_ppl.analysis.compare import RunMismatchError, compare_runs

    any_fit = next(iter(fits.values()))
    runs: dict[str, dict[str, Any]] = {}
    for run, f in fits.items():
        o = outcomes[f.name]
        metrics = (read_metrics(f.out) or {}) if o.status in ("ok", "unconverged") else {}
        runs[run] = {"status": o.status, "message": o.message, "metrics": metrics}
    singles = [r for r in fits if r.startswith("svi-")]
    bad = [fits[r].name for r in singles if runs[r]["status"] != "ok"]
    posthoc: dict[str, Any] = {"status": "ok", "message": "", "metrics": {}}
    if not singles:
        posthoc.update(status="skipped", message="no single-type runs planned")
    elif bad:
        posthoc.update(status="failed", message=f"single-type run(s) not available: {', '.join(bad)}")
    else:
        try:
            posthoc["metrics"] = posthoc_metrics([fits[r].out for r in singles])
        except Exception as exc:
            posthoc.update(status="failed", message=f"Post-Hoc evaluation failed: {exc}")
    agreement: dict[str, float] = {}
    if all(runs.get(r, {}).get("status") in ("ok", "unconverged") for r in ("svi", "nuts")):
        try:
            cmp = compare_runs(fits["svi"].out, fits["nuts"].out, allow_unconverged=True)  # flagged in the table
        except RunMismatchError as exc:
            runs["nuts"]["message"] += f" [no comparison: {exc}]"
        else:
            agreement = {k: float(cmp[source]) for k, source in AGREEMENT.items()}
    complete = (all(r["status"] in ("ok", "unconverged") for r in runs.values()) and posthoc["status"] == "ok"
                and bool(agreement))
    return {"env": any_fit.env, "seed": any_fit.seed, "settings": settings, "runs": runs, "posthoc": posthoc,
            "agreement": agreement, "complete": complete}


class RecordError(ValueError):
    """A file in the records directory that is not a cell record."""


def record_settings(feedback: str = DEFAULT_FEEDBACK, env_size: int | None = None, svi_config: Path | None = None,
                    nuts_config: Path | None = None) -> dict[str, Any]:
    """What a cell's runs depend on beyond env and seed; a saved record is used only where these match.

    Args:
        feedback: the all-types allocation.
        env_size: ``--env-size`` of every fit.
        svi_config: TOML settings file of the SVI fits (its text is compared, not its path).
        nuts_config: TOML settings file of the NUTS fits.

    The stop model's lapse (the simulator's default, :data:`mavrl_ppl.feedback.stop.LAPSE`) is part of them: a record
    made under another default is not reused.
    """
    from mavrl_ppl.feedback.stop import LAPSE

    return {"feedback": feedback, "env_size": env_size, "stop_lapse": LAPSE,
            "svi_config": svi_config.read_text() if svi_config else None,
            "nuts_config": nuts_config.read_text() if nuts_config else None}


def record_path(records: Path, env: str, seed: int) -> Path:
    """``records/<env>_seed<seed>.json``."""
    return Path(records) / f"{env}_seed{seed}.json"


def save_record(records: Path, record: dict[str, Any]) -> Path:
    """Write a complete cell record atomically (a half-written record would be read as finished work).

    Args:
        records: the records directory.
        record: a :func:`summarize_cell` result with ``complete`` true.
    """
    if not record["complete"]:
        raise ValueError(f"record of {record['env']} seed {record['seed']} is not complete")
    path = record_path(records, record["env"], record["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)
    return path


def load_record(records: Path, env: str, seed: int, settings: dict[str, Any], *,
                keys: Sequence[str] = ("runs", "posthoc", "agreement"), kind: str = "baseline-table"
                ) -> dict[str, Any] | None:
    """The saved record of a cell, or ``None`` when there is none or it was made with other settings.

    Args:
        records: the records directory.
        env: env name.
        seed: seed.
        settings: the current :func:`record_settings`.
        keys: what a complete record holds besides ``settings`` and ``complete`` (another table's records differ).
        kind: the table, for the error message.

    Raises:
        RecordError: the file exists but is not a record (naming the file).
    """
    path = record_path(records, env, seed)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        # Records from before the stop lapse was a setting were made with the paper's lapse-free model.
        made_with = {"stop_lapse": 0.0, **record["settings"]}
        matches = made_with == settings and record["complete"] and set(keys) <= set(record)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RecordError(f"{path}: not a {kind} record ({exc}); delete it to refit this cell") from None
    return record if matches else None


def assemble(cells: dict[tuple[str, int], dict[str, Any]], envs: Sequence[str], seeds: Sequence[int],
             runs: Sequence[str], reused: dict[tuple[str, int, str], bool] | None = None) -> xr.Dataset:
    """Gather the cell records (:func:`summarize_cell`) into one Dataset.

    Args:
        cells: ``(env, seed)`` -> its record, for every env and seed.
        envs: env names (dim ``env``).
        seeds: seeds (dim ``seed``).
        runs: run names (dim ``run``, :func:`run_names`).
        reused: ``(env, seed, run)`` -> whether this invocation reused the run rather than fitting it.

    Returns:
        Per fit (``env, seed, run``): ``run_status``, ``run_reused``, ``run_message`` and the metrics; per approach
        (``env, seed, approach``; not ``method``, which ``Dataset.sel`` reserves):
        ``normalized_score``, ``epic``, ``fit_seconds``, ``status``, ``message``; per pair
        (``env, seed``): the agreement measures; per ``env, approach``: ``<metric>_mean``, ``<metric>_se``, ``n_ok``;
        per ``env``: ``<agreement>_mean``/``_se``, ``n_agreement``, ``nuts_unconverged``.
    """
    reused = reused or {}
    runs = list(runs)
    shape_runs = (len(envs), len(seeds), len(runs))
    run_status = np.full(shape_runs, "", dtype=object)
    run_message = np.full(shape_runs, "", dtype=object)
    run_reused = np.zeros(shape_runs, dtype=bool)
    run_metrics = {k: np.full(shape_runs, np.nan) for k in METRICS}
    shape = (len(envs), len(seeds), len(METHODS))
    status = np.full(shape, "", dtype=object)
    message = np.full(shape, "", dtype=object)
    method_metrics = {k: np.full(shape, np.nan) for k in METRICS}
    agreement = {k: np.full(shape[:2], np.nan) for k in AGREEMENT}
    for ie, env in enumerate(envs):
        for js, seed in enumerate(seeds):
            cell = cells[(env, seed)]
            for r, run in enumerate(runs):
                entry = cell["runs"][run]
                run_status[ie, js, r], run_message[ie, js, r] = entry["status"], entry["message"]
                run_reused[ie, js, r] = reused.get((env, seed, run), True)
                for k in METRICS:
                    run_metrics[k][ie, js, r] = float(entry["metrics"].get(k, np.nan))
            for m, method in enumerate(METHODS):
                entry = cell["posthoc"] if method == "posthoc" else cell["runs"][method]
                status[ie, js, m], message[ie, js, m] = entry["status"], entry["message"]
                for k in METRICS:
                    method_metrics[k][ie, js, m] = float(entry["metrics"].get(k, np.nan))
            for k in AGREEMENT:
                agreement[k][ie, js] = float(cell["agreement"].get(k, np.nan))

    dims3, dims_runs = ("env", "seed", "approach"), ("env", "seed", "run")
    data: dict[str, Any] = {
        "status": (dims3, status.astype(str)),
        "message": (dims3, message.astype(str)),
        "run_status": (dims_runs, run_status.astype(str)),
        "run_message": (dims_runs, run_message.astype(str)),
        "run_reused": (dims_runs, run_reused),
    }
    ok = np.isin(status, ["ok", "unconverged"])
    for k in METRICS:
        data[k] = (dims3, method_metrics[k])
        data[f"run_{k}"] = (dims_runs, run_metrics[k])
        mean, se, _ = mean_se(np.moveaxis(np.where(ok, method_metrics[k], np.nan), 1, -1))
        data[f"{k}_mean"] = (("env", "approach"), mean)
        data[f"{k}_se"] = (("env", "approach"), se)
    data["n_ok"] = (("env", "approach"), ok.sum(axis=1))
    for k, values in agreement.items():
        data[k] = (("env", "seed"), values)
        mean, se, _ = mean_se(values)
        data[f"{k}_mean"] = ("env", mean)
        data[f"{k}_se"] = ("env", se)
    data["n_agreement"] = ("env", np.isfinite(agreement["correlation"]).sum(axis=1))
    data["nuts_unconverged"] = ("env", (status[:, :, METHODS.index("nuts")] == "unconverged").sum(axis=1))
    return xr.Dataset(data, coords={"env": list(envs), "seed": list(seeds), "approach": list(METHODS), "run": runs})


def _pm(cell: xr.Dataset, key: str, digits: int) -> str:
    return format_mean_se(float(cell[f"{key}_mean"]), float(cell[f"{key}_se"]), digits, missing_se="n/a")


DIGITS = {"normalized_score": 1, "epic": 3, "fit_seconds": 1}


def _rows(ds: xr.Dataset) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """Cells of the method table, the agreement table and the problems list (plain text)."""
    seeds = ds.sizes["seed"]
    main, agree, problems = [], [], []
    for env in ds["env"].values:
        for method in ds["approach"].values:
            cell = ds.sel(env=env, approach=method)
            row = [str(env), METHOD_LABELS.get(str(method), str(method)), f"{int(cell['n_ok'])}/{seeds}"]
            row += [_pm(cell, k, DIGITS[k]) for k in METRICS]
            main.append(row)
        e = ds.sel(env=env)
        agree.append([str(env), f"{int(e['n_agreement'])}/{seeds}",
                      *[_pm(e, k, 3) for k in AGREEMENT],
                      str(int(e["nuts_unconverged"]))])
    for idx in zip(*np.nonzero(~np.isin(ds["run_status"].values, ["ok"])), strict=True):
        cell = ds.isel(env=idx[0], seed=idx[1], run=idx[2])
        problems.append([str(cell["env"].values), str(int(cell["seed"])), str(cell["run"].values),
                         str(cell["run_status"].values), str(cell["run_message"].values)])
    return main, agree, problems


MAIN_HEADER = ["env", "method", "runs ok", "normalised score (%)", "EPIC", "fit seconds"]
AGREE_HEADER = ["env", "pairs", "corr. of means", "NUTS mean in SVI 90%", "SVI mean in NUTS 90%",
                "mean abs. diff. / NUTS sd", "W1 (mean over params)", "NUTS unconverged"]


def table_to_markdown(ds: xr.Dataset) -> str:
    """Markdown tables (method results, SVI-vs-NUTS agreement, unconverged/failed/skipped runs) of :func:`assemble`.

    Args:
        ds: the table Dataset.
    """
    main, agree, problems = _rows(ds)

    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        return markdown_table(header, rows).split("\n")

    lines = [f"## Baseline table: mean ± standard error over seeds {seed_text(ds)}", ""]
    if "stop_lapse" in ds.attrs:
        lapse = float(ds.attrs["stop_lapse"])
        lines += [f"Stop model: lapse {lapse:g}" + (" (the paper's lapse-free model)." if lapse == 0 else
                                                    " (simulated and modelled; 0 is the paper's model)."), ""]
    lines += table(MAIN_HEADER, main)
    lines += ["", "Post-Hoc = average of the single-type SVI posterior means; its fit time is the sum of the "
              "single-type fits. Failed runs are excluded from means and counted in 'runs ok'; unconverged NUTS "
              "runs are included and counted below.", "", "### SVI vs NUTS on the same data", ""]
    lines += table(AGREE_HEADER, agree)
    if problems:
        lines += ["", "### Runs that are not plainly ok", ""]
        lines += table(["env", "seed", "run", "status", "stderr tail / reason"], problems)
    if "wall_seconds" in ds.attrs:
        lines += ["", f"Total wall time of this invocation: {float(ds.attrs['wall_seconds']):.1f} s "
                  f"({int(ds.attrs.get('fits_run', 0))} fits run, {int(ds.attrs.get('fits_reused', 0))} reused "
                  f"({int(ds.attrs.get('cells_from_records', 0))} env-seed cells from their records), "
                  f"{_parallel_text(ds)}); the runs' own total_seconds sum to "
                  f"{float(ds.attrs.get('runs_total_seconds', np.nan)):.1f} s."]
    return "\n".join(lines) + "\n"


def cluster_label(cluster: Any) -> str:
    """How the table names where its fits ran: ``""`` (local processes), the ``--cluster`` text, or a cluster
    object's scheduler address."""
    if cluster is None:
        return ""
    if isinstance(cluster, str):
        return cluster
    return f"{type(cluster).__name__} {getattr(cluster, 'scheduler_address', '')}".strip()


def _parallel_text(ds: xr.Dataset) -> str:
    cluster = str(ds.attrs.get("cluster", ""))
    return f"on the Dask cluster {cluster}" if cluster else f"{int(ds.attrs.get('jobs', 1))} parallel jobs"


def seed_text(ds: xr.Dataset) -> str:
    """A table's seeds as text: ``"0-9"`` when contiguous, else a comma-separated list."""
    seeds = [int(s) for s in ds["seed"].values]
    contiguous = seeds == list(range(seeds[0], seeds[-1] + 1))
    return f"{seeds[0]}-{seeds[-1]}" if contiguous and len(seeds) > 1 else ", ".join(map(str, seeds))


def table_to_latex(ds: xr.Dataset) -> str:
    """LaTeX (booktabs) versions of the method table and the agreement table of :func:`assemble`.

    Args:
        ds: the table Dataset.
    """
    main, agree, _ = _rows(ds)

    def tabular(header: list[str], rows: list[list[str]], caption: str) -> list[str]:
        return latex_tabular([latex_escape(h) for h in header], [[latex_escape(c) for c in r] for r in rows],
                             latex_escape(caption), align="ll" + "r" * (len(header) - 2), placement="t").split("\n")

    lines = tabular(MAIN_HEADER, main, f"Mean ± standard error over seeds {seed_text(ds)}.")
    caption = "Agreement of the SVI posterior with the NUTS posterior on the same data."
    lines += ["", *tabular(AGREE_HEADER, agree, caption)]
    return "\n".join(lines) + "\n"


def plot_table(ds: xr.Dataset, path: Path) -> Path:
    """Bar chart of the table: per env and method, mean with standard-error whiskers (score, EPIC, fit seconds).

    Args:
        ds: the table Dataset.
        path: PNG to write.
    """
    from mavrl_ppl.analysis.plots import plot_grouped_bars

    means = np.stack([ds[f"{k}_mean"].values for k in METRICS])
    errors = np.stack([ds[f"{k}_se"].values for k in METRICS])
    return plot_grouped_bars([str(e) for e in ds["env"].values], [METHOD_LABELS[m] for m in ds["approach"].values],
                             means, errors, path, ylabels=["normalised score (%)", "EPIC distance", "fit seconds"],
                             title=f"mean ± SE over seeds {seed_text(ds)}")


def settings_table(path: Path | None, table: str) -> dict[str, Any] | None:
    """The ``[table]`` settings of a TOML file (a file of bare keys is the table itself).

    Raises:
        RecordError: a file that is not TOML (naming it).
    """
    if path is None:
        return None
    try:
        loaded = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RecordError(f"{path}: cannot read settings: {exc}") from None
    return dict(loaded.get(table, loaded))


def build_table(
    envs: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    *,
    jobs: int | None = None,
    feedback: str = DEFAULT_FEEDBACK,
    env_size: int | None = None,
    svi_config: Path | None = None,
    nuts_config: Path | None = None,
    fit: FitFunction = run_fit,
    progress: bool = True,
    records: Path | None = None,
    in_process: bool = False,
    cluster: Any = None,
) -> xr.Dataset:
    """Run (or reuse) every fit, assemble the table and write ``baseline_table.{nc,md,tex,png}`` into ``out``.

    Args:
        envs: tabular env names.
        seeds: seeds.
        out: output directory.
        jobs: parallel fits (default: the number of cores).
        feedback: all-types allocation ``type=count,...``; each type with a positive count gets a single-type run.
        env_size: ``--env-size`` of every fit (``None``: the env's default).
        svi_config: TOML file of ``[svi]`` settings for the SVI fits (a table ``[svi]`` or bare keys).
        nuts_config: TOML file of ``[nuts]`` settings for the NUTS fits.
        fit: one fit (:data:`FitFunction`; tests inject a fake).
        progress: show a progress bar over fits.
        records: directory of the cell records (default ``out/records``): an env and seed with a record made with
            the same settings is taken from it and not fitted, even where its run directories are gone; every cell
            whose runs all finish gets one.
        in_process: run the fits in this process instead of worker processes (tests, debugging).
        cluster: run the fits on a Dask cluster instead of local worker processes: a scheduler address
            (``tcp://HOST:8786``), ``local:N``, or a ``distributed`` cluster object (``jobs`` is then unused). The
            run directories go to ``out`` made absolute, which every worker must reach under that same path.

    Returns:
        The table Dataset (also written as ``baseline_table.nc``).
    """
    t0 = time.perf_counter()
    jobs = jobs or os.cpu_count() or 1
    out = Path(out) if cluster is None else Path(out).absolute()  # workers elsewhere do not share our cwd
    records = Path(records) if records is not None else out / "records"
    settings = record_settings(feedback, env_size, svi_config, nuts_config)
    cells = {(env, seed): load_record(records, env, seed, settings) for env in envs for seed in seeds}
    recorded = {cell for cell, record in cells.items() if record is not None}
    fits = [f for f in plan_fits(envs, seeds, out, feedback=feedback) if (f.env, f.seed) not in recorded]
    reused_runs = sum((f.out / "metrics.json").is_file() for f in fits)

    svi_settings, nuts_settings = settings_table(svi_config, "svi"), settings_table(nuts_config, "nuts")

    def config(spec: FitSpec) -> dict[str, Any]:
        return fit_config(spec, feedback=feedback, env_size=env_size, svi_settings=svi_settings,
                          nuts_settings=nuts_settings)

    outcomes = run_fits(fits, jobs=jobs, fit=fit, config=config, progress=progress, in_process=in_process,
                        cluster=cluster)
    for cell, cell_fits in _cell_fits(fits).items():
        cells[cell] = summarize_cell(cell_fits, outcomes, settings)
        if cells[cell]["complete"]:
            save_record(records, cells[cell])
    reused = {(f.env, f.seed, f.run): outcomes[f.name].reused for f in fits}
    runs = run_names(feedback)
    ds = assemble(cells, envs, seeds, runs, reused)
    ds.attrs.update(
        wall_seconds=time.perf_counter() - t0, fits_total=len(envs) * len(seeds) * len(runs),
        fits_reused=reused_runs + len(recorded) * len(runs), cells_from_records=len(recorded),
        fits_run=sum(not o.reused and o.status not in ("skipped",) for o in outcomes.values()), jobs=int(jobs),
        feedback=feedback, svi_config=str(svi_config or ""), nuts_config=str(nuts_config or ""),
        records=str(records), cluster=cluster_label(cluster), stop_lapse=float(settings["stop_lapse"]),
    )
    ds.attrs["runs_total_seconds"] = float(sum(float(run["metrics"].get("total_seconds", 0.0))
                                               for cell in cells.values() for run in cell["runs"].values()))
    if env_size is not None:
        ds.attrs["env_size"] = int(env_size)
    out.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(out / "baseline_table.nc", engine=ENGINE)
    (out / "baseline_table.md").write_text(table_to_markdown(ds))
    (out / "baseline_table.tex").write_text(table_to_latex(ds))
    plot_table(ds, out / "baseline_table.png")
    return ds


def check_fit_options(jobs: int | None, cluster: str | None, configs: Sequence[Path | None]) -> None:
    """The options of every command that runs many fits: ``--jobs`` at least 1, a well-formed ``--cluster``, and
    settings files (``--svi-config``, ...) that exist; ``ValueError`` names the first that is wrong.

    Args:
        jobs: ``--jobs`` (``None``: the default).
        cluster: ``--cluster`` (``None``: local processes).
        configs: the settings files given (``None`` entries: not given).
    """
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if cluster is not None:
        check_cluster(cluster)
    for path in configs:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{path}: no such file")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mavrl_ppl.experiments.baseline_table``."""
    p = argparse.ArgumentParser(prog="python -m mavrl_ppl.experiments.baseline_table",
                                description="SVI vs NUTS vs Post-Hoc over envs x seeds.")
    p.add_argument("--envs", nargs="+", default=["grid_cliff", "grid_sparse", "grid_trap"], help="tabular envs")
    p.add_argument("--seeds", nargs="+", default=["0-9"], help="seeds: ranges and lists, e.g. 0-9 or 0,3,5")
    p.add_argument("--out", type=Path, required=True, help="output directory (runs/, data/, records/, tables, figure)")
    p.add_argument("--jobs", type=int, default=None, help="parallel fits (default: number of cores)")
    p.add_argument("--cluster", default=None,
                   help="run the fits on Dask instead: a scheduler address (tcp://HOST:8786; --out on a file system "
                        "every worker shares) or local:N (N local worker processes); --jobs is then unused")
    p.add_argument("--feedback", default=DEFAULT_FEEDBACK, help=f"all-types allocation (default {DEFAULT_FEEDBACK})")
    p.add_argument("--env-size", type=int, default=None, help="grid side for every fit (default: the env's)")
    p.add_argument("--svi-config", type=Path, default=None, help="TOML settings file for the SVI fits")
    p.add_argument("--nuts-config", type=Path, default=None, help="TOML settings file for the NUTS fits")
    p.add_argument("--records", type=Path, default=None,
                   help="cell records: one JSON per env and seed, reused instead of refitting (default OUT/records)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; exit status 0 when the table was written (failed fits are in it), 2 on bad arguments or a
    broken record, 1 when the ``--cluster`` scheduler cannot be reached or is lost mid-table, 130 on Ctrl-C (one
    line each; finished runs and records are kept for the next call)."""
    args = build_parser().parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        check_fit_options(args.jobs, args.cluster, (args.svi_config, args.nuts_config))
        if not _single_types(args.feedback):
            raise ValueError(f"--feedback {args.feedback!r} requests no feedback")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    svi_config = args.svi_config.resolve() if args.svi_config else None
    nuts_config = args.nuts_config.resolve() if args.nuts_config else None
    return run_command(lambda: build_table(
        args.envs, seeds, args.out, jobs=args.jobs, feedback=args.feedback, env_size=args.env_size,
        svi_config=svi_config, nuts_config=nuts_config, progress=not args.quiet, records=args.records,
        cluster=args.cluster), report=table_to_markdown, written=f"{args.out}/baseline_table.{{nc,md,tex,png}}",
        kept="finished runs and records are kept", usage_errors=(RecordError,))


if __name__ == "__main__":
    sys.exit(main())
