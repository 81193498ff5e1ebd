"""``python -m mavrl_ppl.fit``: fit a reward posterior to feedback (simulated, or a user's own file) and write a run.

With no arguments: SVI on grid_trap with simulated feedback at the paper's fixed allocation, seed 0. Writes into
``--out`` atomically (a temporary directory renamed at the end): ``config.json``, ``feedback.nc``, ``posterior.nc``,
``metrics.json`` and PNG plots. Exit status: 0 success, 2 bad input or arguments (one line, nothing written),
1 anything else (for NUTS: also a run that did not converge, unless ``--allow-unconverged``; its outputs are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_FEEDBACK = "pref=64,demo=1,rating=64,stop=256"  # the paper's fixed allocation on the grids (REFERENCE §3)


class UsageError(Exception):
    """Bad arguments or data: reported as one line, exit status 2."""


NUTS_FIELDS = {  # name -> (type, default, help); validated by NutsSettings itself
    "num_chains": (int, 4, "NUTS chains"),
    "num_warmup": (int, 500, "NUTS warm-up iterations per chain"),
    "num_samples": (int, 1000, "NUTS kept draws per chain"),
    "target_accept_prob": (float, 0.8, "NUTS step-size adaptation target"),
    "max_tree_depth": (int, 10, "NUTS maximum tree depth"),
    "warmup_max_tree_depth": (int, 10, "NUTS maximum tree depth during warm-up"),
    "init": (str, "mode", "NUTS chain starts: mode (dispersed around the posterior mode) or prior"),
    "init_scale": (float, 0.25, "NUTS spread of the mode starts, in sds of the Laplace approximation"),
}


def build_parser() -> argparse.ArgumentParser:
    from mavrl_ppl.inference.svi import SVISettings

    p = argparse.ArgumentParser(prog="python -m mavrl_ppl.fit", description=__doc__.split("\n\n")[0])
    p.add_argument("--inference", choices=["svi", "nuts"], default=None, help="inference method (default svi)")
    p.add_argument("--env", default=None, help="env name: tabular (grid_trap, grid_cliff, grid_sparse, chain) or "
                   "control (CartPole-v1, Acrobot-v1, LunarLander-v3)")
    p.add_argument("--env-size", type=int, default=None, help="grid side / chain length (default: the env's)")
    p.add_argument("--p-rand", type=float, default=None, help="probability of a random move (default 0)")
    p.add_argument("--feedback", default=None, help=f"simulated counts per type (default {DEFAULT_FEEDBACK}; "
                   "control envs: the paper's allocation, e.g. pref=256,demo=4,rating=256,stop=64)")
    p.add_argument("--simulate", action="append", default=None, metavar="TYPE.SETTING=VALUE",
                   help="a simulator setting, e.g. stop.lapse=0.01 or pref.beta=2 (repeatable; TOML: [simulate.stop])")
    p.add_argument("--data", type=Path, default=None, help="fit this feedback.nc instead of simulating")
    p.add_argument("--seed", type=int, default=None, help="seed of the simulation and the inference (default 0)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/<inference>_<env>_seed<seed>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.add_argument("--config", type=Path, default=None, help="TOML file of settings; command-line flags win")
    p.add_argument("--allow-unconverged", action="store_true", help="NUTS: exit 0 even if R-hat > 1.01 or divergences")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--plugin", action="append", default=None, metavar="MODULE_OR_FILE",
                   help="import a module or .py file that registers feedback types (repeatable)")
    control = p.add_argument_group("control envs (PPO retraining on the learned reward)")
    control.add_argument("--ppo-timesteps", type=int, default=None, help="PPO steps (default: the env's)")
    control.add_argument("--eval-episodes", type=int, default=None, help="true-return episodes (default 100)")
    svi = p.add_argument_group("SVI hyper-parameters")
    for f in dataclasses.fields(SVISettings):
        if f.name == "progress_bar":
            continue
        svi.add_argument(f"--{f.name.replace('_', '-')}", dest=f"svi.{f.name}", type=type(f.default), default=None,
                         help=f"(default {f.default})")
    nuts = p.add_argument_group("NUTS settings")
    for name, (kind, default, text) in NUTS_FIELDS.items():
        nuts.add_argument(f"--{name.replace('_', '-')}", dest=f"nuts.{name}", type=kind, default=None,
                          help=f"{text} (default {default})")
    return p


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults < config file < command line; every resolved setting ends up in config.json."""
    config: dict[str, Any] = {"inference": "svi", "env": "grid_trap", "env_size": None, "p_rand": 0.0,
                              "feedback": None, "data": None, "seed": 0, "svi": {}, "nuts": {}, "plugin": [],
                              "simulate": {},
                              "ppo_timesteps": None, "eval_episodes": 100}
    if args.config is not None:
        try:
            loaded = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"{args.config}: cannot read config: {exc}") from None
        unknown = set(loaded) - set(config)
        if unknown:
            raise UsageError(f"{args.config}: unknown settings {sorted(unknown)}; known: {sorted(config)}")
        for key, value in loaded.items():
            config[key] = {**config[key], **value} if isinstance(config[key], dict) else value
    for key, value in vars(args).items():
        if value is None or key in ("config", "out", "overwrite", "allow_unconverged", "quiet", "simulate"):
            continue
        if "." in key:
            group, name = key.split(".", 1)
            config[group][name] = value
        else:
            config[key] = str(value) if isinstance(value, Path) else value
    for item in args.simulate or []:
        name, setting, value = parse_simulator_setting(item)
        config["simulate"].setdefault(name, {})[setting] = value
    if config["simulate"] and config["data"]:
        raise UsageError("simulator settings (--simulate, [simulate]) apply to simulated feedback, not to --data")
    from mavrl_ppl.envs.control import is_control_env, paper_allocation

    if is_control_env(config["env"]):  # control envs: their own allocation and SVI defaults (experiments.control_fit)
        from mavrl_ppl.experiments.control_fit import CONTROL_SVI

        config["svi"] = {**CONTROL_SVI, **config["svi"]}
        if config["feedback"] is None:
            config["feedback"] = paper_allocation(config["env"])
    elif config["feedback"] is None:
        config["feedback"] = DEFAULT_FEEDBACK
    from mavrl_ppl.inference.svi import SVISettings

    try:
        svi = SVISettings(**config["svi"])
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad [svi] setting: {exc}") from None
    config["svi"] = dataclasses.asdict(svi)
    config["nuts"] = {name: config["nuts"].get(name, default) for name, (_, default, _) in NUTS_FIELDS.items()}
    return config


def parse_simulator_setting(text: str) -> tuple[str, str, Any]:
    """``"stop.lapse=0.01"`` -> ``("stop", "lapse", 0.01)``; the value is read as a TOML value (numbers, booleans,
    quoted strings), else kept as the bare string."""
    key, sep, raw = text.partition("=")
    name, dot, setting = key.strip().partition(".")
    if not (sep and dot and name and setting and raw.strip()):
        raise UsageError(f"--simulate {text!r}: expected TYPE.SETTING=VALUE, e.g. stop.lapse=0.01")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return name, setting.strip(), value


def load_plugins(names: list[str]) -> None:
    """Import each plugin (a module name or a path to a .py file); importing it registers its feedback types."""
    import importlib
    import importlib.util

    for name in names:
        try:
            if name.endswith(".py") or Path(name).is_file():
                path = Path(name)
                spec = importlib.util.spec_from_file_location(f"mavrl_plugin_{path.stem}", path)
                if spec is None or spec.loader is None or not path.is_file():
                    raise ImportError(f"no such file: {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(name)
        except Exception as exc:  # a plugin's own error is the user's input error: report it in one line
            raise UsageError(f"--plugin {name}: cannot import: {type(exc).__name__}: {exc}") from None


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so the half-written run directory is removed


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        config = resolve_config(args)
        load_plugins(config["plugin"])
        if config["inference"] == "nuts":
            # JAX reads its device count once, at start-up: set it before anything imports JAX.
            from mavrl_ppl.baselines.mcmc import set_host_devices

            set_host_devices()
        out = args.out or Path("runs") / f"{config['inference']}_{config['env']}_seed{config['seed']}"
        if out.exists() and not args.overwrite:
            raise UsageError(f"{out} already exists (pass --overwrite to replace it)")
        return run(config, out, progress=not args.quiet, allow_unconverged=args.allow_unconverged)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(config: dict[str, Any], out: Path, *, progress: bool, allow_unconverged: bool) -> int:
    """Build the env and the data, fit, evaluate, write everything into a temporary directory, then rename it."""
    from mavrl_ppl.envs.control import is_control_env

    if is_control_env(config["env"]):
        return _run_control(config, out, progress=progress)
    import numpy as np

    from mavrl_ppl.envs.grids import make_tabular
    from mavrl_ppl.feedback import TabularTeacher, registered
    from mavrl_ppl.feedback.data import FeedbackDataError, load_feedback, parse_counts, simulate_feedback

    t_start = time.perf_counter()
    try:
        mdp = make_tabular(config["env"], size=config["env_size"], p_rand=config["p_rand"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if config["data"]:
        try:
            feedback = load_feedback(config["data"])
        except FeedbackDataError as exc:
            raise UsageError(str(exc)) from None
        _check_matches_env(feedback, mdp, config["data"])
    else:
        try:
            counts = parse_counts(config["feedback"], registered())
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        try:
            feedback = simulate_feedback(TabularTeacher(mdp), counts, np.random.default_rng(config["seed"]),
                                         config["simulate"])
        except KeyError as exc:  # a simulator setting for a type that is not registered
            raise UsageError(f"--simulate: {exc.args[0]}") from None
        except ValueError as exc:  # a bad simulator setting, or a stop teacher that cannot calibrate lambda
            raise UsageError(f"cannot simulate feedback on {mdp.name}: {exc}") from None
    if not feedback:
        raise UsageError("no feedback to fit: every count is zero")

    with _atomic_run_dir(out) as work:
        if config["inference"] == "svi":
            idata, extra_metrics, converged = _fit_svi(config, mdp, feedback, work, progress)
        else:
            idata, extra_metrics, converged = _fit_nuts(config, mdp, feedback, work, progress)
        metrics = _tabular_metrics(config, mdp, idata, work)
        metrics.update(extra_metrics)
        _write_outputs(work, config, feedback, idata, metrics, t_start)
    print(json.dumps({k: metrics[k] for k in ("inference", "env", "seed", "normalized_score", "epic",
                                               "fit_seconds")}), file=sys.stdout)
    print(f"wrote {out}", file=sys.stderr)
    if not converged:
        lp = ""
        if "rhat_lp" in metrics:
            means = ", ".join(f"{m:.1f}" for m in metrics["lp_chain_means"])
            lp = f", log-density R-hat {metrics['rhat_lp']:.4f} (chain means {means})"
        print(f"error: NUTS did not converge (R-hat max {metrics['rhat_max']:.4f}{lp}, {metrics['divergences']} "
              "divergences); outputs kept for inspection. Pass --allow-unconverged to accept.", file=sys.stderr)
        return 0 if allow_unconverged else 1
    return 0


def _run_control(config: dict[str, Any], out: Path, *, progress: bool) -> int:
    """Control envs (issue 6): simulate/load, SVI, PPO on the learned reward, true-return evaluation; see
    :mod:`mavrl_ppl.experiments.control_fit`."""
    from mavrl_ppl.feedback.data import FeedbackDataError

    if config["inference"] != "svi":
        raise UsageError(f"--inference {config['inference']} is for tabular envs; {config['env']} needs svi")
    t_start = time.perf_counter()
    from mavrl_ppl.experiments.control_fit import ControlDataError, fit_control

    with _atomic_run_dir(out) as work:
        try:
            idata, metrics, feedback = fit_control(config, work, progress)
        except (FeedbackDataError, ControlDataError) as exc:  # bad data, counts or settings: before any fitting
            raise UsageError(str(exc)) from None
        _write_outputs(work, config, feedback, idata, metrics, t_start)
    print(json.dumps({k: metrics[k] for k in ("inference", "env", "seed", "mean_return", "normalized_score",
                                               "ppo_timesteps", "fit_seconds")}), file=sys.stdout)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _check_matches_env(feedback: dict, mdp: Any, path: str) -> None:
    for name, ds in feedback.items():
        if int(ds.attrs["num_actions"]) != mdp.num_actions:
            raise UsageError(f"{path}: group {name!r}: num_actions {ds.attrs['num_actions']} does not match "
                             f"env {mdp.name} ({mdp.num_actions})")
        for var in ("state", "next_state"):
            if var not in ds:
                raise UsageError(f"{path}: group {name!r}: variable {var!r} is needed for a tabular env")
            values = ds[var].values[ds["valid"].values]
            if values.size and (values.min() < 0 or values.max() >= mdp.num_states):
                raise UsageError(f"{path}: group {name!r}: variable {var!r} holds states outside "
                                 f"0..{mdp.num_states - 1} of env {mdp.name}")
        if ds.sizes["obs_dim"] != mdp.num_states:
            raise UsageError(f"{path}: group {name!r}: obs_dim {ds.sizes['obs_dim']} does not match the one-hot "
                             f"features of env {mdp.name} ({mdp.num_states})")


def _fit_svi(config, mdp, feedback, work: Path, progress: bool):
    import numpy as np
    import torch
    import xarray as xr

    from mavrl_ppl.analysis.plots import plot_loss_curve
    from mavrl_ppl.analysis.posterior import build_inference_data
    from mavrl_ppl.feedback.teachers import one_hot_features
    from mavrl_ppl.inference.svi import SVISettings, TrainingDivergedError, fit_svi, posterior_draws

    settings = SVISettings(**{**config["svi"], "progress_bar": progress})
    torch.set_num_threads(1)  # tiny networks: threads cost more than they give, and one thread is reproducible
    try:
        result = fit_svi(feedback, settings, seed=config["seed"], checkpoint=work / "checkpoint.pt",
                         mdp=mdp)
    except TrainingDivergedError as exc:
        raise RuntimeError(str(exc)) from exc
    reward, dims, nuisance = posterior_draws(result.model, one_hot_features(mdp.num_states),
                                             settings.num_posterior_samples,
                                             torch.Generator().manual_seed(config["seed"]))
    h = result.history
    elbo = xr.Dataset({"loss": ("step", np.asarray(h["elbo"])),
                       "validation_nll": ("evaluation", np.asarray(h["validation"])),
                       "validation_step": ("evaluation", np.asarray(h["validation_step"]))})
    idata = build_inference_data(
        reward=reward, reward_dims=dims, nuisance=nuisance, sample_stats=None, feedback=feedback, mdp=mdp,
        attrs={"inference": "svi", "seed": config["seed"], "fit_seconds": result.fit_seconds,
               "best_step": result.best_step, "steps": result.steps},
        extra_groups={"elbo": elbo},
    )
    plot_loss_curve(h["elbo"], h["validation"], h["validation_step"], result.best_step, work / "loss_curve.png")
    (work / "checkpoint.pt").unlink(missing_ok=True)
    return idata, {"fit_seconds": result.fit_seconds, "steps": result.steps, "best_step": result.best_step}, True


def _fit_nuts(config, mdp, feedback, work: Path, progress: bool):
    from mavrl_ppl.baselines.mcmc import NutsSettings, run_nuts
    from mavrl_ppl.baselines.mcmc.plots import plot_nuts_diagnostics

    try:
        settings = NutsSettings(**config["nuts"], seed=config["seed"], progress_bar=progress)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad NUTS setting: {exc}") from None
    result = run_nuts(mdp, feedback, settings)
    plot_nuts_diagnostics(result.idata, work)
    d = result.diagnostics
    keys = ("rhat_max", "ess_bulk_min", "ess_tail_min", "divergences", "tree_depth_max", "step_size_mean",
            "mean_steps", "rhat_lp", "lp_chain_means", "converged", "fit_seconds", "init_seconds")
    return result.idata, {k: d[k] for k in keys if k in d}, bool(d["converged"])


def _tabular_metrics(config, mdp, idata, work: Path) -> dict[str, Any]:
    import numpy as np

    from mavrl_ppl.analysis.metrics import evaluate_reward
    from mavrl_ppl.analysis.plots import plot_reward_maps

    posterior = idata.posterior["reward"]
    mean = posterior.mean(("chain", "draw")).values
    sd = posterior.std(("chain", "draw")).values
    if posterior.dims[2:] == ("state",):
        learned = mdp.with_group_rewards(mean) if mdp.num_groups == mdp.num_states else None
    else:  # (state, action): R(s, a, s') = r(s, a)
        learned = np.broadcast_to(mean[:, :, None], mdp.transitions.shape)
    metrics = {"inference": config["inference"], "env": mdp.name, "seed": config["seed"]}
    metrics.update(evaluate_reward(mdp, learned))
    if mdp.grid_shape is not None and posterior.dims[2:] == ("state",) and mdp.group_rewards is not None:
        plot_reward_maps(mdp.grid_shape, [("true reward", mdp.group_rewards), ("posterior mean", mean),
                                          ("posterior sd", sd)],
                         work / "reward_maps.png", title=f"{config['inference'].upper()} on {mdp.name}")
    return metrics


@contextlib.contextmanager
def _atomic_run_dir(out: Path) -> Iterator[Path]:
    """A temporary directory beside ``out``, renamed to ``out`` if the block succeeds, removed if it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield work
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _write_outputs(work: Path, config, feedback, idata, metrics, t_start: float) -> None:
    from mavrl_ppl.feedback.data import save_feedback

    metrics["total_seconds"] = time.perf_counter() - t_start
    idata.attrs["total_seconds"] = metrics["total_seconds"]

    (work / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_feedback(work / "feedback.nc", feedback)
    idata.to_netcdf(str(work / "posterior.nc"))
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=float) + "\n")


if __name__ == "__main__":
    sys.exit(main())
