"""Compare two reward posteriors (typically MAVRL-SVI against the NUTS reference) fitted to the SAME data.

Pure functions take two ArviZ ``InferenceData`` (or their posterior ``reward`` DataArrays, dims
``(chain, draw, *parameter dims)``) and return an ``xarray.Dataset``:

* ``correlation``: Pearson correlation of the two posterior means over all reward parameters;
* ``mean_abs_diff_sd``: mean over parameters of ``|mean_A - mean_B| / sd_ref``, the difference of the means in units
  of the reference posterior's sd (the reference is NUTS when exactly one run is NUTS, else run B);
* ``coverage_b_in_a`` / ``coverage_a_in_b``: fraction of parameters whose posterior mean under one run lies inside the
  other run's central ``prob`` (default 90 %) interval, both ways;
* ``wasserstein`` (per parameter): the exact 1-D Wasserstein-1 distance between the two sets of draws, computed from
  their empirical quantile functions, vectorised over parameters; ``wasserstein_mean`` / ``wasserstein_max``;
* per run (dim ``run`` = A, B): posterior ``mean``, ``sd``, ``lower``/``upper`` interval ends, and, when run
  directories are compared, ``normalized_score``, ``epic`` and ``fit_seconds`` from their ``metrics.json``.

``python -m mavrl_ppl.analysis.compare RUN_A RUN_B [--out DIR]`` prints a Markdown summary and writes
``comparison.nc``, ``comparison.json``, ``compare_means.png`` (means with 90 % intervals against ``y = x``) and, on
grids, ``compare_reward_maps.png`` (true / A mean / B mean / A sd / B sd). It refuses (exit status 2, one line naming
the file) when a file is missing or when the two runs were not fitted to the same feedback data on the same env.

Only numpy/xarray at import time; ArviZ and matplotlib are imported when a file is read or a plot drawn.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xarray as xr

from mavrl_ppl.netcdf import ENGINE, read_inference_data

if TYPE_CHECKING:
    import arviz as az

__all__ = [
    "RunMismatchError",
    "central_interval",
    "check_same_data_and_env",
    "compare_posteriors",
    "compare_runs",
    "feedback_digest",
    "read_run_files",
    "wasserstein_1d",
]

SAMPLE_DIMS = ("chain", "draw")
RUN_FILES = ("posterior.nc", "feedback.nc", "metrics.json")
METRIC_KEYS = ("normalized_score", "epic", "fit_seconds")


class RunMismatchError(ValueError):
    """Two runs that cannot be compared (missing file, different data or env); the message is one line."""


# ---------------------------------------------------------------------------------------------- pure functions


def _reward(posterior: az.InferenceData | xr.DataArray) -> xr.DataArray:
    """The ``reward`` DataArray of an InferenceData, or the DataArray itself."""
    if isinstance(posterior, xr.DataArray):
        da = posterior
    elif hasattr(posterior, "posterior"):
        da = posterior.posterior["reward"]
    else:
        raise TypeError(f"expected an InferenceData or a reward DataArray, got {type(posterior).__name__}")
    missing = [d for d in SAMPLE_DIMS if d not in da.dims]
    if missing:
        raise ValueError(f"reward draws need dims {SAMPLE_DIMS}; {missing} missing from {da.dims}")
    return da


def _draws(da: xr.DataArray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Draws as ``(sample, *parameter shape)`` and the parameter dim names."""
    param_dims = tuple(d for d in da.dims if d not in SAMPLE_DIMS)
    values = da.transpose(*SAMPLE_DIMS, *param_dims).values
    return values.reshape(-1, *values.shape[2:]).astype(np.float64), param_dims


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact Wasserstein-1 distance between two empirical 1-D distributions, for every parameter at once.

    ``W1 = integral_0^1 |F_a^{-1}(u) - F_b^{-1}(u)| du`` with the empirical quantile functions (step functions);
    the integral is a finite sum over the merged steps ``{i/n} U {j/m}``, located exactly in integer units of
    ``1 / lcm(n, m)``.

    Args:
        a: draws ``(n, ...)``; axis 0 indexes draws, the other axes parameters.
        b: draws ``(m, ...)`` with the same parameter shape as ``a``.

    Returns:
        ``W1`` per parameter, shape ``a.shape[1:]``.
    """
    a = np.sort(np.asarray(a, dtype=np.float64), axis=0)
    b = np.sort(np.asarray(b, dtype=np.float64), axis=0)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"parameter shapes differ: {a.shape[1:]} vs {b.shape[1:]}")
    n, m = a.shape[0], b.shape[0]
    if n == 0 or m == 0:
        raise ValueError("both sets of draws must be non-empty")
    lcm = math.lcm(n, m)
    steps = np.arange(1, max(n, m) + 1, dtype=np.int64)
    ends = np.union1d(steps[:n] * (lcm // n), steps[:m] * (lcm // m))
    widths = np.diff(ends, prepend=0) / lcm
    index_a = -(-ends * n // lcm) - 1  # ceil(u n) - 1 at the right end u of each merged step
    index_b = -(-ends * m // lcm) - 1
    return np.tensordot(widths, np.abs(a[index_a] - b[index_b]), axes=(0, 0))


def central_interval(draws: np.ndarray, prob: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed central interval per parameter.

    Args:
        draws: ``(sample, ...)``.
        prob: probability mass inside the interval, in (0, 1).

    Returns:
        ``(lower, upper)``, each of shape ``draws.shape[1:]``.
    """
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob must lie in (0, 1), got {prob}")
    lower, upper = np.quantile(draws, [(1.0 - prob) / 2.0, (1.0 + prob) / 2.0], axis=0)
    return lower, upper


def compare_posteriors(
    a: az.InferenceData | xr.DataArray,
    b: az.InferenceData | xr.DataArray,
    *,
    prob: float = 0.9,
    reference: Literal["a", "b"] = "b",
    labels: Sequence[str] = ("A", "B"),
) -> xr.Dataset:
    """Agreement between two reward posteriors over the same parameters.

    Args:
        a: run A: an ``InferenceData`` with a posterior ``reward``, or that DataArray ``(chain, draw, ...)``.
        b: run B, same parameter dims and sizes as ``a`` (any number of chains and draws).
        prob: mass of the central intervals used for coverage and for the plots' error bars.
        reference: whose posterior sd is the unit of ``abs_diff_sd`` (``"b"`` by default: pass the NUTS run there).
        labels: names of the two runs, the ``run`` coordinate.

    Returns:
        A Dataset with per-run ``mean``, ``sd``, ``lower``, ``upper`` (dims ``run, *params``); per-parameter
        ``abs_diff_sd``, ``wasserstein``, ``b_mean_in_a``, ``a_mean_in_b``; scalars ``correlation``,
        ``mean_abs_diff_sd``, ``coverage_b_in_a``, ``coverage_a_in_b``, ``wasserstein_mean``, ``wasserstein_max``.
        A parameter whose reference sd is 0 gets ``abs_diff_sd`` inf (or nan if the means agree too).
    """
    da_a, da_b = _reward(a), _reward(b)
    draws_a, dims_a = _draws(da_a)
    draws_b, dims_b = _draws(da_b)
    if dims_a != dims_b or draws_a.shape[1:] != draws_b.shape[1:]:
        raise ValueError(f"parameter dims differ: {dims_a} {draws_a.shape[1:]} vs {dims_b} {draws_b.shape[1:]}")
    if reference not in ("a", "b"):
        raise ValueError(f"reference must be 'a' or 'b', got {reference!r}")
    labels = tuple(str(x) for x in labels)
    if len(labels) != 2:
        raise ValueError(f"labels must name two runs, got {labels}")

    mean = np.stack([draws_a.mean(axis=0), draws_b.mean(axis=0)])
    sd = np.stack([d.std(axis=0, ddof=1 if len(d) > 1 else 0) for d in (draws_a, draws_b)])
    lower_a, upper_a = central_interval(draws_a, prob)
    lower_b, upper_b = central_interval(draws_b, prob)
    lower, upper = np.stack([lower_a, lower_b]), np.stack([upper_a, upper_b])
    b_in_a = (mean[1] >= lower_a) & (mean[1] <= upper_a)
    a_in_b = (mean[0] >= lower_b) & (mean[0] <= upper_b)
    ref_sd = sd[1] if reference == "b" else sd[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        abs_diff_sd = np.abs(mean[0] - mean[1]) / ref_sd
    w1 = wasserstein_1d(draws_a, draws_b)
    flat_a, flat_b = mean[0].ravel(), mean[1].ravel()
    if flat_a.size > 1 and flat_a.std() > 0 and flat_b.std() > 0:
        correlation = float(np.corrcoef(flat_a, flat_b)[0, 1])
    else:
        correlation = float("nan")  # undefined for a constant mean or a single parameter

    run_dims = ("run", *dims_a)
    coords: dict[str, Any] = {"run": list(labels)}
    for dim in dims_a:
        if dim in da_a.coords:
            coords[dim] = da_a.coords[dim].values
    return xr.Dataset(
        {
            "mean": (run_dims, mean),
            "sd": (run_dims, sd),
            "lower": (run_dims, lower),
            "upper": (run_dims, upper),
            "abs_diff_sd": (dims_a, abs_diff_sd),
            "wasserstein": (dims_a, w1),
            "b_mean_in_a": (dims_a, b_in_a),
            "a_mean_in_b": (dims_a, a_in_b),
            "correlation": correlation,
            "mean_abs_diff_sd": float(np.mean(abs_diff_sd)),
            "coverage_b_in_a": float(np.mean(b_in_a)),
            "coverage_a_in_b": float(np.mean(a_in_b)),
            "wasserstein_mean": float(np.mean(w1)),
            "wasserstein_max": float(np.max(w1)),
        },
        coords=coords,
        attrs={
            "prob": float(prob),
            "reference": labels[0] if reference == "a" else labels[1],
            "num_draws": [len(draws_a), len(draws_b)],
        },
    )


# ---------------------------------------------------------------------------------------------- run directories


def feedback_digest(feedback: Mapping[str, xr.Dataset]) -> str:
    """SHA-256 of a feedback set's contents (group names, variables, dims, dtypes, values, attributes).

    Independent of the group order and of how the file was written: two ``feedback.nc`` files with the same data
    have the same digest even if their bytes differ.

    Args:
        feedback: type name -> data set, as ``load_feedback`` returns it.
    """
    h = hashlib.sha256()

    def add(text: str) -> None:
        h.update(text.encode())
        h.update(b"\0")

    def add_attrs(attrs: Mapping[str, Any]) -> None:
        for key in sorted(attrs):
            add(f"{key}={np.asarray(attrs[key]).tolist()!r}")

    for name in sorted(feedback):
        ds = feedback[name]
        add(f"group {name}")
        add_attrs(ds.attrs)
        for var in sorted(ds.variables, key=str):
            values = np.ascontiguousarray(ds[var].values)
            add(f"var {var} {ds[var].dims} {values.dtype.str} {values.shape}")
            add_attrs(ds[var].attrs)
            h.update(values.tobytes())
    return h.hexdigest()


def read_run_files(run_dir: str | Path, *, require: Sequence[str] = RUN_FILES) -> dict[str, Any]:
    """Read a run directory written by ``python -m mavrl_ppl.fit`` into memory.

    Args:
        run_dir: the run directory.
        require: files that must exist (default ``posterior.nc``, ``feedback.nc``, ``metrics.json``).

    Returns:
        ``{"dir", "idata", "metrics", "config", "feedback_digest"}``; ``metrics`` / ``config`` are ``{}`` and the
        digest ``None`` when their file is absent and not required.

    Raises:
        RunMismatchError: a required file is missing or unreadable (the message names it).
    """
    run_dir = Path(run_dir)
    for name in require:
        if not (run_dir / name).is_file():
            raise RunMismatchError(f"{run_dir / name}: no such file")
    out: dict[str, Any] = {"dir": run_dir, "metrics": {}, "config": {}, "feedback_digest": None}
    try:
        idata = read_inference_data(run_dir / "posterior.nc")
    except Exception as exc:
        raise RunMismatchError(f"{run_dir / 'posterior.nc'}: cannot read: {exc}") from None
    if "posterior" not in idata.groups() or "reward" not in idata.posterior:
        raise RunMismatchError(f"{run_dir / 'posterior.nc'}: no posterior 'reward' variable")
    out["idata"] = idata
    for name in ("metrics", "config"):
        path = run_dir / f"{name}.json"
        if path.is_file():
            try:
                out[name] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise RunMismatchError(f"{path}: cannot read: {exc}") from None
    if (run_dir / "feedback.nc").is_file():
        from mavrl_ppl.feedback.data import FeedbackDataError, load_feedback

        try:
            out["feedback_digest"] = feedback_digest(load_feedback(run_dir / "feedback.nc"))
        except FeedbackDataError as exc:
            raise RunMismatchError(str(exc)) from None
    return out


def _env_signature(run: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies the env a run was fitted on: posterior attrs, the true reward and the config's env settings."""
    idata = run["idata"]
    attrs = idata.posterior.attrs | dict(getattr(idata, "attrs", {}) or {})
    sig: dict[str, Any] = {k: np.asarray(attrs[k]).tolist() for k in ("env", "gamma", "grid_shape", "num_actions")
                           if k in attrs}
    if "constant_data" in idata.groups() and "true_reward" in idata.constant_data:
        sig["true_reward"] = np.asarray(idata.constant_data["true_reward"].values).round(12).tolist()
    config = run.get("config") or {}
    for key in ("env", "env_size", "p_rand"):
        # env_size None is the env's own size, which a run fitted to a --data file records as a number: compared
        # only where both runs name one (grid_shape and the true reward tell the sizes apart in any case).
        if config.get(key) is not None:
            sig[f"config.{key}"] = config[key]
    return sig


def check_same_data_and_env(run_a: Mapping[str, Any], run_b: Mapping[str, Any]) -> None:
    """Refuse to compare runs fitted to different feedback data or on different envs.

    Args:
        run_a: a run as :func:`read_run_files` returns it.
        run_b: the other run.

    Raises:
        RunMismatchError: naming run B's file that differs from run A's.
    """
    dir_a, dir_b = Path(run_a["dir"]), Path(run_b["dir"])
    digest_a, digest_b = run_a.get("feedback_digest"), run_b.get("feedback_digest")
    if digest_a is not None and digest_b is not None and digest_a != digest_b:
        raise RunMismatchError(f"{dir_b / 'feedback.nc'}: not the same feedback data as {dir_a / 'feedback.nc'} "
                               f"(content sha256 {digest_b[:12]} vs {digest_a[:12]})")
    sig_a, sig_b = _env_signature(run_a), _env_signature(run_b)
    differing = sorted(k for k in sig_a.keys() & sig_b.keys() if sig_a[k] != sig_b[k])
    if differing:
        shown = ", ".join(f"{k}: {_short(sig_b[k])} vs {_short(sig_a[k])}" for k in differing)
        raise RunMismatchError(f"{dir_b / 'posterior.nc'}: not the same env as {dir_a / 'posterior.nc'} ({shown})")
    reward_a, reward_b = run_a["idata"].posterior["reward"], run_b["idata"].posterior["reward"]
    shape_a = {d: reward_a.sizes[d] for d in reward_a.dims if d not in SAMPLE_DIMS}
    shape_b = {d: reward_b.sizes[d] for d in reward_b.dims if d not in SAMPLE_DIMS}
    if shape_a != shape_b:
        raise RunMismatchError(f"{dir_b / 'posterior.nc'}: reward parameters {shape_b} differ from {shape_a} of "
                               f"{dir_a / 'posterior.nc'}")


class UnconvergedReferenceError(RunMismatchError):
    """The reference posterior is a NUTS run whose own convergence checks failed."""


def _verdict(run: Mapping[str, Any]) -> str:
    """A NUTS run's recorded verdict in words, e.g. ``converged (R-hat max 1.004, 0 divergences)``."""
    m = run["metrics"]
    word = "converged" if m.get("converged", False) else "NOT converged"
    return (f"{word}: R-hat max {float(m.get('rhat_max', np.nan)):.3f}, bulk ESS min "
            f"{float(m.get('ess_bulk_min', np.nan)):.0f}, {m.get('divergences', '?')} divergences")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _inference(run: Mapping[str, Any]) -> str:
    idata = run["idata"]
    return str(run.get("metrics", {}).get("inference") or idata.posterior.attrs.get("inference", "?"))


def compare_runs(run_a: str | Path | Mapping[str, Any], run_b: str | Path | Mapping[str, Any], *,
                 prob: float = 0.9, allow_unconverged: bool = False) -> xr.Dataset:
    """:func:`compare_posteriors` of two run directories, plus their scores, EPIC and fit times.

    The reference posterior (unit of ``abs_diff_sd``) is the NUTS run when exactly one of the two is NUTS, else B.

    Args:
        run_a: run directory (or a :func:`read_run_files` result) A.
        run_b: run directory (or a :func:`read_run_files` result) B.
        prob: central-interval mass for coverage.
        allow_unconverged: compare against a NUTS reference whose own checks failed (its verdict is recorded in the
            result either way).

    Raises:
        RunMismatchError: a file is missing, or the runs differ in data or env.
        UnconvergedReferenceError: the reference is a NUTS run that did not converge and ``allow_unconverged`` is
            false.
    """
    a = run_a if isinstance(run_a, Mapping) else read_run_files(run_a)
    b = run_b if isinstance(run_b, Mapping) else read_run_files(run_b)
    check_same_data_and_env(a, b)
    kinds = (_inference(a), _inference(b))
    reference: Literal["a", "b"] = "a" if kinds[0] == "nuts" and kinds[1] != "nuts" else "b"
    ref = a if reference == "a" else b
    if kinds[reference == "b"] == "nuts" and not ref["metrics"].get("converged", False) and not allow_unconverged:
        raise UnconvergedReferenceError(f"{ref['dir']}: the NUTS reference did not converge ({_verdict(ref)}); pass "
                                        "--allow-unconverged to compare against it anyway")
    labels = [f"{k.upper()} ({Path(r['dir']).name})" for k, r in zip(kinds, (a, b), strict=True)]
    if labels[0] == labels[1]:
        labels = [f"A: {labels[0]}", f"B: {labels[1]}"]
    ds = compare_posteriors(a["idata"], b["idata"], prob=prob, reference=reference, labels=labels)
    for key in METRIC_KEYS:
        ds[key] = ("run", [float(r["metrics"].get(key, np.nan)) for r in (a, b)])
    ds["inference"] = ("run", list(kinds))
    ds["nuts_verdict"] = ("run", [_verdict(r) if k == "nuts" else "" for k, r in zip(kinds, (a, b), strict=True)])
    ds.attrs.update(run_a=str(a["dir"]), run_b=str(b["dir"]), same_data=int(a["feedback_digest"] is not None
                    and a["feedback_digest"] == b["feedback_digest"]))
    if a["feedback_digest"] is not None:
        ds.attrs["feedback_sha256"] = a["feedback_digest"]
    for key, value in _env_signature(a).items():
        if key in ("env", "gamma", "grid_shape"):
            ds.attrs[key] = value
    if "constant_data" in a["idata"].groups() and "true_reward" in a["idata"].constant_data:
        ds["true_reward"] = (ds["abs_diff_sd"].dims, a["idata"].constant_data["true_reward"].values)
    return ds


# ---------------------------------------------------------------------------------------------- reporting


SUMMARY_KEYS = ("correlation", "mean_abs_diff_sd", "coverage_b_in_a", "coverage_a_in_b", "wasserstein_mean",
                "wasserstein_max")


def summary_dict(ds: xr.Dataset) -> dict[str, Any]:
    """The scalar results and per-run metrics of a comparison as plain JSON-able values.

    Args:
        ds: a :func:`compare_posteriors` / :func:`compare_runs` Dataset.
    """
    out: dict[str, Any] = {"runs": [str(r) for r in ds["run"].values], "prob": ds.attrs.get("prob"),
                           "reference": ds.attrs.get("reference")}
    out.update({k: float(ds[k]) for k in SUMMARY_KEYS})
    for key in (*METRIC_KEYS, "inference", "nuts_verdict"):
        if key in ds:
            out[key] = [v.item() if hasattr(v, "item") else v for v in ds[key].values]
    for key in ("run_a", "run_b", "env", "feedback_sha256"):
        if key in ds.attrs:
            out[key] = ds.attrs[key]
    return out


def to_markdown(ds: xr.Dataset) -> str:
    """A Markdown report of a comparison: the agreement measures and, when known, each run's metrics.

    Args:
        ds: a :func:`compare_posteriors` / :func:`compare_runs` Dataset.
    """
    a, b = (str(r) for r in ds["run"].values)
    pct = round(100 * float(ds.attrs.get("prob", 0.9)))
    lines = [f"## Posterior comparison: A = {a}, B = {b}", "",
             "| measure | value |", "|---|---|",
             f"| correlation of posterior means | {float(ds['correlation']):.4f} |",
             f"| mean abs. difference of means / sd of {ds.attrs.get('reference')} | "
             f"{float(ds['mean_abs_diff_sd']):.4f} |",
             f"| coverage: B means inside A's {pct}% interval | {float(ds['coverage_b_in_a']):.3f} |",
             f"| coverage: A means inside B's {pct}% interval | {float(ds['coverage_a_in_b']):.3f} |",
             f"| Wasserstein-1 per parameter: mean | {float(ds['wasserstein_mean']):.4f} |",
             f"| Wasserstein-1 per parameter: max | {float(ds['wasserstein_max']):.4f} |"]
    for name, verdict in zip(ds["run"].values, ds["nuts_verdict"].values if "nuts_verdict" in ds else (), strict=False):
        if verdict:
            lines += ["", f"NUTS run {name}: {verdict}."]
    if all(k in ds for k in METRIC_KEYS):
        lines += ["", "| run | normalised score | EPIC | fit seconds |", "|---|---|---|---|"]
        for i, name in enumerate(ds["run"].values):
            lines.append(f"| {name} | {float(ds['normalized_score'][i]):.2f} | {float(ds['epic'][i]):.4f} | "
                         f"{float(ds['fit_seconds'][i]):.1f} |")
    return "\n".join(lines) + "\n"


def write_outputs(ds: xr.Dataset, out: Path) -> list[Path]:
    """Write ``comparison.nc``, ``comparison.json`` and the PNGs of a comparison into ``out``.

    Args:
        ds: a :func:`compare_runs` Dataset.
        out: directory (created if missing).

    Returns:
        The files written.
    """
    from mavrl_ppl.analysis.plots import plot_mean_scatter, plot_reward_maps

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "comparison.nc", out / "comparison.json", out / "compare_means.png"]
    ds.to_netcdf(written[0], engine=ENGINE)
    written[1].write_text(json.dumps(summary_dict(ds), indent=2, default=float) + "\n")
    names = [str(r) for r in ds["run"].values]
    mean, lower, upper = (ds[k].values.reshape(2, -1) for k in ("mean", "lower", "upper"))
    plot_mean_scatter(mean[0], lower[0], upper[0], mean[1], lower[1], upper[1], names, written[2],
                      title=f"posterior means with {round(100 * float(ds.attrs['prob']))}% intervals")
    grid = ds.attrs.get("grid_shape")
    if grid is not None and len(np.ravel(grid)) == 2 and ds["abs_diff_sd"].dims == ("state",):
        shape = tuple(int(x) for x in np.ravel(grid))
        panels = [("true reward", ds["true_reward"].values)] if "true_reward" in ds else []
        panels += [(f"{n} mean", ds["mean"].values[i]) for i, n in enumerate(("A", "B"))]
        panels += [(f"{n} sd", ds["sd"].values[i]) for i, n in enumerate(("A", "B"))]
        written.append(plot_reward_maps(shape, panels, out / "compare_reward_maps.png",
                                        title=f"A = {names[0]}, B = {names[1]}"))
    return written


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mavrl_ppl.analysis.compare``."""
    p = argparse.ArgumentParser(prog="python -m mavrl_ppl.analysis.compare",
                                description="Compare two reward posteriors fitted to the same data (e.g. SVI vs NUTS).")
    p.add_argument("run_a", type=Path, help="run directory A (e.g. the SVI run)")
    p.add_argument("run_b", type=Path, help="run directory B (e.g. the NUTS run on the same feedback.nc)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default compare_<A>_vs_<B> in the current directory)")
    p.add_argument("--prob", type=float, default=0.9, help="central interval mass for coverage (default 0.9)")
    p.add_argument("--allow-unconverged", action="store_true",
                   help="compare against a NUTS reference whose convergence checks failed")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 2 missing file / different data or env / bad argument)."""
    args = build_parser().parse_args(argv)
    if not 0.0 < args.prob < 1.0:
        print(f"error: --prob must lie in (0, 1), got {args.prob}", file=sys.stderr)
        return 2
    try:
        ds = compare_runs(args.run_a, args.run_b, prob=args.prob, allow_unconverged=args.allow_unconverged)
    except RunMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(f"compare_{args.run_a.resolve().name}_vs_{args.run_b.resolve().name}")
    written = write_outputs(ds, out)
    sys.stdout.write(to_markdown(ds))
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
