"""THE run pipeline, once: settings + feedback -> fit (SVI or NUTS) -> InferenceData, learned reward, metrics.

Read top to bottom, one run is:

1. :func:`resolve_config`: defaults < the caller's settings; env-dependent defaults (the paper's allocation, the control
   envs' SVI settings); every SVI / NUTS setting validated. The result is what ``config.json`` holds.
2. :func:`make_problem`: the env and the feedback: simulated by the env's teacher from the seed, or the user's
   ``feedback.nc``, validated and checked against the env.
3. :func:`fit_problem`: SVI (tabular or control) or NUTS (tabular), the posterior as ``InferenceData`` and the metrics
   (tabular: the learned reward scored on the true reward; control: PPO retrained on it, true return).
4. :func:`write_run`: ``config.json``, ``feedback.nc``, ``posterior.nc``, ``metrics.json`` and plots into a temporary
   directory renamed to the run directory at the end, so a failed run leaves nothing behind. :func:`run` claims the
   run directory before step 2 (:mod:`mavrl_ppl.rundirs`: one run per directory at a time, checked before the fit),
   and step 2 first refuses inputs too large for the machine's memory (:mod:`mavrl_ppl.limits`).

:func:`run` chains the four; ``python -m mavrl_ppl.fit`` is a command line over it, and every experiment that runs many
fits calls it (in process or through :mod:`mavrl_ppl.experiments.executor`). :func:`load_run` reads a run directory.
Heavy libraries (torch, JAX, SB3) are imported only by the step that needs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mavrl_ppl.errors import DamagedFileError, UsageError
from mavrl_ppl.rundirs import claim_run_directory

__all__ = [
    "CONTROL_SIMULATION",
    "CONTROL_SVI",
    "INFERENCE_METHODS",
    "DamagedFileError",
    "Fitted",
    "LoadedRun",
    "Problem",
    "RunResult",
    "UsageError",
    "default_out",
    "fit_problem",
    "load_run",
    "make_problem",
    "resolve_config",
    "run",
    "write_run",
]

INFERENCE_METHODS = ("svi", "nuts")

#: Every top-level setting of a run and its default (``svi`` / ``nuts`` / ``simulate`` are tables of their own).
DEFAULTS: dict[str, Any] = {
    "inference": "svi",  # svi | nuts
    "env": "grid_trap",  # tabular env name or control env id
    "env_size": None,  # grid side / chain length (None: the env's)
    "p_rand": 0.0,  # probability of a random move (tabular)
    "feedback": None,  # simulated counts "pref=64,..." (None: the env's paper allocation)
    "data": None,  # a feedback.nc to fit instead of simulating
    "seed": 0,  # seeds the simulation and the inference
    "svi": {},  # SVISettings fields
    "nuts": {},  # NutsSettings fields
    "plugin": [],  # modules / .py files that register feedback types
    "simulate": {},  # simulator settings per type, e.g. {"stop": {"lapse": 0.01}}
    "teacher": {},  # the simulated teacher's own settings per type, not the model's (see TEACHER_SETTINGS)
    "ppo_timesteps": None,  # control envs: PPO budget (None: the env's)
    "eval_episodes": 100,  # control envs: true-return episodes
}

#: Teacher != model (``[teacher.<type>]`` in a TOML file, ``--teacher TYPE.SETTING=VALUE``): simulator settings of the
#: simulated teacher alone. The data are labelled with them; the data-set attributes the model reads keep the values
#: of ``simulate`` / the type's defaults (the model's assumption), and ``feedback.nc`` records the teacher's values
#: beside them as ``teacher_<name>`` (:func:`mavrl_ppl.feedback.data.simulate_feedback`); ``config.json`` records the
#: table. The misspecifications of REFERENCE_EXPERIMENTS §1, in the simulators' own terms:
TEACHER_SETTINGS = {
    "pref": "beta: the labels' rationality (paper 0.01); the model's beta stays 5",
    "demo": "beta: the demonstrator's rationality (paper 0.1); the model's beta stays 10",
    "stop": "c: lambda_teacher = c / ref (paper 0.1), ref = the median over segments of the peak discounted cumulative "
            "regret, as the paper's; the model keeps lambda = 2.0 / ref (c = 2.0), 20x the teacher's",
    "rating": "noise_sd: Gaussian noise on the judged segment return after the cutpoints are set on the clean "
              "judgements (paper 2.0); the model assumes none",
}

#: SVI settings of control runs where the user sets nothing (one documented set for all three envs; the caller's
#: settings win). Why they differ from the tabular defaults: every segment step has its own reward latent, so at
#: kl_weight 1 the N(0, 1) prior of 32-64 steps outweighs each label and the posterior mean barely moves (measured on
#: CartPole: alive/absorbing reward gap < 0.03); td_weight 0.1 lets the demonstrations and stops (which see the reward
#: only through the Q-network) shape the reward without the Bellman term dominating the fit. ``q_model`` is stated for
#: the record: without known dynamics SVI always uses the Q-network.
CONTROL_SVI = {"q_model": "network", "encoder_input": "state_action", "kl_weight": 0.05, "td_weight": 0.1,
               "max_steps": 600, "batch_size": 64, "eval_every": 25, "patience": 8}
#: Simulator settings on control envs (REFERENCE §3): segments of 32 steps; rationalities as on the grids.
CONTROL_SIMULATION = {"pref": {"segment_length": 32}, "rating": {"segment_length": 32}, "stop": {"segment_length": 32}}
#: PPO budgets (environment steps) per control env when ``ppo_timesteps`` is not set.
DEFAULT_PPO_TIMESTEPS = {"CartPole-v1": 100_000, "Acrobot-v1": 200_000, "LunarLander-v3": 1_000_000}
#: Control envs: visited (obs, action) points at which the posterior reward is drawn.
CONTROL_POINTS = 1000
#: Control runs: the file holding the fitted reward encoder and Q-network (:func:`~mavrl_ppl.models.networks.
#: save_networks`).
REWARD_MODEL = "reward_model.pt"
#: NUTS settings that belong to the call, not to the model or the sampler (never in config.json).
_CALL_SETTINGS = ("seed", "progress_bar")


# ---------------------------------------------------------------------------------------------------- 1. settings


def resolve_config(settings: Mapping[str, Any] | None = None, *, source: str = "settings") -> dict[str, Any]:
    """Every setting of a run: :data:`DEFAULTS` < ``settings``, with env-dependent defaults filled in and validated.

    Args:
        settings: any subset of :data:`DEFAULTS`; the tables ``svi``, ``nuts``, ``simulate`` and ``teacher``
            (:data:`TEACHER_SETTINGS`) are merged key by key.
        source: how to name ``settings`` in error messages (e.g. a TOML file's path).

    Raises:
        UsageError: an unknown key or a bad value, naming ``source``, the key and the valid keys.
    """
    from mavrl_ppl.envs.allocation import paper_allocation
    from mavrl_ppl.envs.control import is_control_env

    config = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
              for k, v in DEFAULTS.items()}
    for key, value in (settings or {}).items():
        if key not in config:
            raise UsageError(f"{source}: unknown setting {key!r}; valid: {', '.join(config)}")
        config[key] = {**config[key], **value} if isinstance(config[key], dict) else value
    if config["inference"] not in INFERENCE_METHODS:
        raise UsageError(f"{source}: inference must be one of {INFERENCE_METHODS}, got {config['inference']!r}")
    if not all(isinstance(v, dict) for v in config["teacher"].values()):
        raise UsageError(f"{source}: [teacher] must hold one table per feedback type, e.g. [teacher.pref] beta = 0.01")
    if config["data"]:
        if config["simulate"]:
            raise UsageError("simulator settings (--simulate, [simulate]) apply to simulated feedback, not to --data")
        if config["teacher"]:
            raise UsageError("teacher settings (--teacher, [teacher]) apply to simulated feedback, not to --data")
        if config["feedback"] is not None:
            raise UsageError("--feedback sets simulated counts; it cannot select from --data (cut the file instead)")
        _env_from_data(config, explicit_env="env" in (settings or {}))
    control = is_control_env(config["env"])
    if control:
        config["svi"] = {**CONTROL_SVI, **config["svi"]}
        if config["svi"]["encoder_input"] != "state_action":  # REFERENCE §3: raw observation + one-hot action
            raise UsageError(f"control runs need encoder_input state_action, got {config['svi']['encoder_input']}")
        if config["svi"].get("guide", "meanfield") != "meanfield":  # no two transitions share a latent there
            raise UsageError(f"control runs need guide meanfield (one latent per step), got {config['svi']['guide']}")
    if config["feedback"] is None and not config["data"]:
        try:
            config["feedback"] = paper_allocation(config["env"])
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    config["svi"] = _settings_table("svi", config["svi"], source)
    config["nuts"] = _settings_table("nuts", config["nuts"], source)
    return config


def _env_from_data(config: dict[str, Any], *, explicit_env: bool) -> None:
    """Take the env (and a grid's size) from a feedback file's ``env`` / ``num_states`` attributes, or refuse an
    explicit ``env`` that contradicts them, naming both."""
    from mavrl_ppl.netcdf import group_headers

    path = config["data"]
    try:
        attrs = {name: group_attrs for name, (group_attrs, _) in group_headers(path).items()}
    except Exception as exc:  # missing, unreadable or not NetCDF-4: load_feedback would say the same, later
        raise UsageError(f"{path}: cannot read feedback data: {exc}") from None
    envs = {str(a["env"]) for a in attrs.values() if "env" in a}
    if len(envs) > 1:
        raise UsageError(f"{path}: groups were made on different envs: {', '.join(sorted(envs))}")
    if not envs:
        return  # data collected elsewhere: the user's --env (or the default) says which env it is
    data_env = envs.pop()
    if explicit_env and config["env"] != data_env:
        raise UsageError(f"{path}: the data were made on env {data_env}, not {config['env']} (drop --env or fix it)")
    config["env"] = data_env
    sizes = {int(a["num_states"]) for a in attrs.values() if "num_states" in a}
    if config["env_size"] is None and len(sizes) == 1:
        states = sizes.pop()
        side = math.isqrt(states)
        config["env_size"] = side if data_env.startswith("grid_") and side * side == states else (
            states if data_env == "chain" else None)


def settings_class(table: str) -> type:
    """The dataclass behind a settings table: ``svi`` -> ``SVISettings``, ``nuts`` -> ``NutsSettings``."""
    if table == "svi":
        from mavrl_ppl.inference.settings import SVISettings

        return SVISettings
    from mavrl_ppl.baselines.mcmc.settings import NutsSettings

    return NutsSettings


def _settings_table(table: str, values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Validate a ``[svi]`` / ``[nuts]`` table by building its dataclass; return every field but the call's own."""
    cls = settings_class(table)
    fields = [f.name for f in dataclasses.fields(cls) if f.name not in _CALL_SETTINGS]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UsageError(f"{source}: unknown [{table}] setting {unknown[0]!r}; valid: {', '.join(fields)}")
    try:
        built = cls(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{source}: bad [{table}] setting: {exc}") from None
    return {name: getattr(built, name) for name in fields}


def default_out(config: Mapping[str, Any]) -> Path:
    """``runs/<inference>_<env>_seed<seed>``."""
    return Path("runs") / f"{config['inference']}_{config['env']}_seed{config['seed']}"


# ---------------------------------------------------------------------------------------------------- 2. the problem


class Problem(NamedTuple):
    """What a run fits.

    Attributes:
        config: the resolved settings (:func:`resolve_config`).
        mdp: the tabular env (``None`` on control envs).
        feedback: type name -> validated data set (DESIGN §2).
    """

    config: dict[str, Any]
    mdp: Any
    feedback: dict[str, Any]


def make_problem(config: Mapping[str, Any]) -> Problem:
    """Build the env and the feedback (loaded from ``config["data"]`` or simulated with ``config["seed"]``).

    Raises:
        UsageError: an unknown env, bad counts or simulator settings, an invalid or mismatched feedback file, or
            inputs whose estimated memory exceeds the limit (:func:`mavrl_ppl.limits.check_memory`; checked first).
    """
    from mavrl_ppl.envs.control import is_control_env
    from mavrl_ppl.feedback.data import FeedbackDataError, load_feedback
    from mavrl_ppl.limits import check_memory

    config = dict(config)
    control = is_control_env(config["env"])
    if control and config["inference"] != "svi":
        raise UsageError(f"--inference {config['inference']} is for tabular envs; {config['env']} needs svi")
    check_memory(config)
    mdp = None if control else _make_mdp(config)
    if config["data"]:
        try:
            feedback = load_feedback(config["data"])
        except FeedbackDataError as exc:
            raise UsageError(str(exc)) from None
        check_matches_env(feedback, config["env"], mdp, str(config["data"]))
    else:
        feedback = _simulate(config, mdp)
    if not feedback:
        raise UsageError("no feedback to fit: every count is zero")
    if "stop" in feedback:  # the stop model fitted (absent attribute: the paper's lapse-free model), for the record
        config["stop_lapse"] = float(feedback["stop"].attrs.get("lapse", 0.0))
    return Problem(config, mdp, feedback)


def _make_mdp(config: Mapping[str, Any]) -> Any:
    from mavrl_ppl.envs.grids import make_tabular

    try:
        return make_tabular(config["env"], size=config["env_size"], p_rand=config["p_rand"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _simulate(config: Mapping[str, Any], mdp: Any) -> dict[str, Any]:
    """Simulated feedback at ``config["feedback"]``'s counts with the env's teacher (numpy seed ``config["seed"]``)."""
    from mavrl_ppl.feedback import TabularTeacher, registered
    from mavrl_ppl.feedback.data import parse_counts, simulate_feedback

    try:
        counts = parse_counts(config["feedback"], registered())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    settings, teacher_settings = config["simulate"], config["teacher"]
    idle = sorted(name for name in teacher_settings if counts.get(name, 0) == 0)
    if idle:
        raise UsageError(f"teacher settings for {', '.join(idle)}, which is not simulated (count 0 or absent)")
    if mdp is None:
        from mavrl_ppl.feedback.control_teacher import control_teacher

        teacher = control_teacher(config["env"], config.get("behaviour_beta"))
        settings = {name: {**CONTROL_SIMULATION.get(name, {}), **settings.get(name, {})}
                    for name in {**CONTROL_SIMULATION, **settings}}
    else:
        teacher = TabularTeacher(mdp)
    try:
        return simulate_feedback(teacher, counts, np.random.default_rng(config["seed"]), settings, teacher_settings)
    except KeyError as exc:  # a simulator setting for a type that is not registered
        raise UsageError(f"--simulate / --teacher: {exc.args[0]}") from None
    except ValueError as exc:  # a bad simulator setting, or a stop teacher that cannot calibrate lambda
        raise UsageError(f"cannot simulate feedback on {config['env']}: {exc}") from None


def check_matches_env(feedback: Mapping[str, Any], env: str, mdp: Any, path: str) -> None:
    """Refuse a feedback set that cannot come from ``env``: action count, observation size and, on tabular envs, the
    ``state`` / ``next_state`` variables and their range.

    Args:
        feedback: type name -> data set.
        env: the env's name.
        mdp: the tabular env, or ``None`` for a control env (its spaces are read from gymnasium).
        path: the file, for the message.
    """
    if mdp is None:
        import gymnasium as gym

        probe = gym.make(env)
        num_actions, obs_dim, num_states = int(probe.action_space.n), int(probe.observation_space.shape[0]), None
        probe.close()
    else:
        num_actions, obs_dim, num_states = mdp.num_actions, mdp.num_states, mdp.num_states
    for name, ds in feedback.items():
        where = f"{path}: group {name!r}"
        if int(ds.attrs["num_actions"]) != num_actions:
            raise UsageError(f"{where}: num_actions {ds.attrs['num_actions']} does not match env {env} ({num_actions})")
        if ds.sizes["obs_dim"] != obs_dim:
            raise UsageError(f"{where}: obs_dim {ds.sizes['obs_dim']} does not match env {env} ({obs_dim})")
        if num_states is None:
            continue
        for var in ("state", "next_state"):
            if var not in ds:
                raise UsageError(f"{where}: variable {var!r} is needed for a tabular env")
            values = ds[var].values[ds["valid"].values]
            if values.size and (values.min() < 0 or values.max() >= num_states):
                raise UsageError(f"{where}: variable {var!r} holds states outside 0..{num_states - 1} of env {env}")


# ---------------------------------------------------------------------------------------------------- 3. the fit


class Fitted(NamedTuple):
    """A fitted posterior.

    Attributes:
        idata: the posterior and everything DESIGN §6 puts beside it.
        metrics: ``metrics.json`` without ``total_seconds`` (tabular: score, regret, value, EPIC, fit seconds; NUTS
            adds its diagnostics; control: true return after PPO retraining).
        converged: NUTS's own verdict (always true for SVI).
        model: the fitted SVI model (``None`` for NUTS), e.g. for held-out likelihoods.
    """

    idata: Any
    metrics: dict[str, Any]
    converged: bool
    model: Any = None


def fit_problem(problem: Problem, *, progress: bool = False, checkpoint: Path | None = None,
                init_params: Mapping[str, Any] | None = None) -> Fitted:
    """Fit ``problem`` with ``config["inference"]`` and evaluate the learned reward.

    Args:
        problem: :func:`make_problem`'s result.
        progress: progress bars.
        checkpoint: SVI keeps its best state here while training (``None``: in memory).
        init_params: SVI only: start from an earlier fit's parameters (a warm start, see
            :func:`~mavrl_ppl.inference.svi.fit_svi`); after an SVI fit Pyro's param store holds its best state.
    """
    if problem.config["inference"] == "nuts":
        if init_params is not None:
            raise ValueError("init_params (a warm start) is an SVI setting; NUTS starts from its own init")
        return _fit_nuts(problem, progress)
    return _fit_svi(problem, progress, checkpoint, init_params)


def _fit_svi(problem: Problem, progress: bool, checkpoint: Path | None,
             init_params: Mapping[str, Any] | None = None) -> Fitted:
    import torch

    from mavrl_ppl.analysis.posterior import build_inference_data, svi_history
    from mavrl_ppl.feedback.teachers import one_hot_features
    from mavrl_ppl.inference.svi import SVISettings, TrainingDivergedError, fit_svi, posterior_draws

    config, mdp, feedback = problem
    seed = int(config["seed"])
    settings = SVISettings(**{**config["svi"], "progress_bar": progress})
    torch.set_num_threads(1)  # tiny networks: threads cost more than they give, and one thread is reproducible
    try:
        result = fit_svi(feedback, settings, seed=seed, checkpoint=checkpoint, mdp=mdp, init_params=init_params)
    except TrainingDivergedError as exc:
        raise RuntimeError(str(exc)) from exc
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    fit_metrics = {"fit_seconds": result.fit_seconds, "steps": result.steps, "best_step": result.best_step}
    attrs = {"inference": "svi", "seed": seed, **fit_metrics}
    if mdp is not None:
        from mavrl_ppl.analysis.predictive import evaluate_feedback

        reward, dims, nuisance = posterior_draws(result.model, one_hot_features(mdp.num_states),
                                                 settings.num_posterior_samples, torch.Generator().manual_seed(seed))
        evaluation = evaluate_feedback(mdp, reward, dims, nuisance, feedback, seed=seed)
        idata = build_inference_data(reward=reward, reward_dims=dims, nuisance=nuisance, sample_stats=None,
                                     feedback=feedback, mdp=mdp, attrs={**attrs, **evaluation.attrs},
                                     log_likelihood=evaluation.log_likelihood,
                                     posterior_predictive=evaluation.posterior_predictive,
                                     extra_groups={"elbo": svi_history(result.history)})
        return Fitted(idata, {**_tabular_metrics(config, mdp, idata), **fit_metrics}, True, result.model)
    return _evaluate_control(problem, result, settings, attrs)


def _interruptible(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a daemon thread while the main thread waits for it in short steps.

    Python runs signal handlers in the main thread between bytecodes only; JAX's compilations, mode searches and a
    sampling loop without a progress bar are single native calls of minutes, so Ctrl-C or SIGTERM would wait for them
    (measured: SIGTERM 45 s into a 5x5 NUTS fit took effect 423 s later). Waiting here, the handler runs within
    :data:`_JOIN_SECONDS`; the abandoned computation dies with the process. Called off the main thread (an executor
    worker), ``fn`` simply runs there.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller's thread as it is
            outcome["error"] = exc
        finally:
            done.set()

    # Waiting on an Event, not Thread.join: a join interrupted by a signal handler's exception marks the thread as
    # stopped while it still runs (CPython 3.11, bpo-45274's fix), and the abandoned work would then go unnoticed.
    threading.Thread(target=target, name=getattr(fn, "__name__", "fit"), daemon=True).start()
    try:
        while not done.wait(_JOIN_SECONDS):
            pass
    except BaseException:
        _ABANDONED.append(done)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


#: How long a signal can wait for the main thread while a fit runs in :func:`_interruptible`.
_JOIN_SECONDS = 0.2
_ABANDONED: list[threading.Event] = []  # the "finished" events of interrupted fits


def abandoned_work() -> bool:
    """Whether an interrupted fit is still computing in a thread of this process. The process should then end with
    ``os._exit``: a normal interpreter exit joins the sampler's thread-pool workers, i.e. waits for that computation
    (measured: a SIGTERM'd NUTS fit printed its message at once, then took 377 s to exit and aborted in a C++
    exception)."""
    return not all(done.is_set() for done in _ABANDONED)


def _fit_nuts(problem: Problem, progress: bool) -> Fitted:
    from mavrl_ppl.baselines.mcmc.devices import set_host_devices
    from mavrl_ppl.baselines.mcmc.settings import NutsSettings

    with contextlib.suppress(RuntimeError):  # JAX already up (e.g. an earlier run in this process): keep its devices
        set_host_devices()
    from mavrl_ppl.baselines.mcmc.sampler import run_nuts

    config, mdp, feedback = problem
    settings = NutsSettings(**config["nuts"], seed=int(config["seed"]), progress_bar=progress)
    result = _interruptible(run_nuts, mdp, feedback, settings)
    d = result.diagnostics
    keys = ("rhat_max", "ess_bulk_min", "ess_tail_min", "divergences", "tree_depth_max", "step_size_mean",
            "mean_steps", "rhat_lp", "lp_chain_means", "converged", "fit_seconds", "init_seconds")
    metrics = {**_tabular_metrics(config, mdp, result.idata), **{k: d[k] for k in keys if k in d}}
    return Fitted(result.idata, metrics, bool(d["converged"]))


def _tabular_metrics(config: Mapping[str, Any], mdp: Any, idata: Any) -> dict[str, Any]:
    from mavrl_ppl.analysis.metrics import evaluate_reward, learned_reward, posterior_mean

    metrics = {"inference": config["inference"], "env": mdp.name, "seed": config["seed"]}
    metrics.update(evaluate_reward(mdp, learned_reward(mdp, posterior_mean(idata))))
    return metrics


def _evaluate_control(problem: Problem, result: Any, settings: Any, attrs: dict[str, Any]) -> Fitted:
    """Control envs: posterior draws at visited points, PPO retrained on the posterior-mean reward (a fixed budget,
    the final policy kept: the true reward selects nothing), and the mean TRUE return over many episodes."""
    import torch

    from mavrl_ppl.analysis.posterior import build_inference_data, svi_history
    from mavrl_ppl.analysis.retrain import evaluate_true_return, retrain_ppo
    from mavrl_ppl.envs.control import control_spec, normalized_score, visited_points
    from mavrl_ppl.inference.svi import posterior_draws

    config, _, feedback = problem
    env_id, seed = config["env"], int(config["seed"])
    obs, action, absorbing = visited_points(feedback, CONTROL_POINTS, np.random.default_rng(seed))
    per_action, _, nuisance = posterior_draws(result.model, obs, settings.num_posterior_samples,
                                              torch.Generator().manual_seed(seed))
    reward = np.take_along_axis(per_action, action[None, None, :, None], axis=-1)[..., 0]  # (1, S, P)
    mean_reward = reward.mean((0, 1))
    offset = float(mean_reward[absorbing].mean()) if absorbing.any() else 0.0
    ppo_timesteps = int(config.get("ppo_timesteps") or DEFAULT_PPO_TIMESTEPS[env_id])
    t0 = time.perf_counter()
    policy = retrain_ppo(env_id, _reward_function(result.model), ppo_timesteps, seed, offset=offset,
                         progress=settings.progress_bar)
    t1 = time.perf_counter()
    episodes = int(config.get("eval_episodes", 100))
    returns = evaluate_true_return(policy, env_id, episodes, seed=10_000 + 1000 * seed)
    metrics = {
        "inference": "svi", "env": env_id, "seed": seed,
        "mean_return": float(returns.mean()),
        "return_sd": float(returns.std(ddof=1)) if len(returns) > 1 else 0.0,
        "normalized_score": normalized_score(env_id, float(returns.mean())),
        "ppo_timesteps": ppo_timesteps, "eval_episodes": episodes, "reward_offset": offset,
        "behaviour_beta": _behaviour_beta(feedback),
        "fit_seconds": attrs["fit_seconds"], "retrain_seconds": t1 - t0, "evaluate_seconds": time.perf_counter() - t1,
        "steps": attrs["steps"], "best_step": attrs["best_step"],
    }
    import xarray as xr

    points = xr.Dataset({"obs": (("point", "obs_dim"), obs), "action": ("point", action),
                         "absorbing": ("point", absorbing)})
    # No log_likelihood / posterior_predictive: the likelihoods need every step's reward and action values, and here
    # the reward is drawn per visited point and the action values come from the point-estimated Q-network.
    idata = build_inference_data(
        reward=reward, reward_dims=("point",), nuisance=nuisance, sample_stats=None, feedback=feedback, mdp=None,
        attrs={**attrs, "env": env_id, "gamma": control_spec(env_id).gamma, "reward_offset": offset,
               "predictive_model": "none: no log_likelihood or posterior_predictive on control envs"},
        extra_groups={"elbo": svi_history(result.history), "points": points},
    )
    return Fitted(idata, metrics, True, result.model)


def _reward_function(model: Any) -> Any:
    """The posterior-mean reward ``E_q[r | obs, a] = mu_phi(obs, a)`` of a fitted model, as a numpy function."""
    return encoder_reward_function(model.encoder, model.num_actions)


def encoder_reward_function(encoder: Any, num_actions: int) -> Any:
    """``(obs (N, obs_dim), action (N,)) -> (N,)``: a reward encoder's mean ``mu_phi(obs, a)`` in numpy (the learned
    reward that PPO is retrained on)."""
    import torch

    from mavrl_ppl.models.networks import transition_features

    def reward_fn(obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            o = torch.as_tensor(np.asarray(obs), dtype=torch.get_default_dtype())
            a = torch.as_tensor(np.asarray(action), dtype=torch.int64)
            mu, _ = encoder(transition_features(o, a, o, num_actions, "state_action"))
        return mu.double().numpy()

    return reward_fn


def _behaviour_beta(feedback: Mapping[str, Any]) -> list[float] | None:
    """The queried segments' behaviour betas recorded by the simulator (``None`` for data without the record)."""
    for ds in feedback.values():
        if "behaviour_beta" in ds.attrs:
            return [float(b) for b in np.atleast_1d(ds.attrs["behaviour_beta"])]
    return None


# ---------------------------------------------------------------------------------------------------- 4. the outputs


def write_run(work: Path, problem: Problem, fitted: Fitted) -> None:
    """Write a run's files and plots into ``work`` (the directory :func:`~mavrl_ppl.rundirs.claim_run_directory`
    publishes as the run directory)."""
    from mavrl_ppl.feedback.data import save_feedback
    from mavrl_ppl.netcdf import write_inference_data

    work = Path(work)
    (work / "config.json").write_text(json.dumps(problem.config, indent=2, sort_keys=True) + "\n")
    save_feedback(work / "feedback.nc", problem.feedback)
    write_inference_data(fitted.idata, work / "posterior.nc")
    if problem.mdp is None and fitted.model is not None:  # a control env's learned reward is the encoder: keep it
        from mavrl_ppl.models.networks import save_networks

        save_networks(fitted.model, str(work / REWARD_MODEL))
    (work / "metrics.json").write_text(json.dumps(fitted.metrics, indent=2, sort_keys=True, default=float) + "\n")
    _plot_run(work, problem, fitted)


def _plot_run(work: Path, problem: Problem, fitted: Fitted) -> None:
    """Loss curve (SVI), reward maps (grids), trace and rank plots (NUTS)."""
    from mavrl_ppl.analysis.plots import plot_loss_curve, plot_reward_maps

    idata, mdp = fitted.idata, problem.mdp
    if "elbo" in idata.groups():
        elbo = idata["elbo"]
        plot_loss_curve(elbo["loss"].values, elbo["validation_nll"].values, elbo["validation_step"].values,
                        int(idata.attrs["best_step"]), work / "loss_curve.png")
    if problem.config["inference"] == "nuts":
        from mavrl_ppl.baselines.mcmc.plots import plot_nuts_diagnostics

        plot_nuts_diagnostics(idata, work)
    posterior = idata.posterior["reward"]
    if mdp is not None and mdp.grid_shape is not None and posterior.dims[2:] == ("state",) and (
            mdp.group_rewards is not None):
        mean, sd = posterior.mean(("chain", "draw")).values, posterior.std(("chain", "draw")).values
        plot_reward_maps(mdp.grid_shape, [("true reward", mdp.group_rewards), ("posterior mean", mean),
                                          ("posterior sd", sd)],
                         work / "reward_maps.png", title=f"{problem.config['inference'].upper()} on {mdp.name}",
                         start=mdp.start_state, goals=mdp.goal_states)


class RunResult(NamedTuple):
    """What :func:`run` returns: the run directory, its metrics (with ``total_seconds``) and NUTS's verdict."""

    out: Path
    metrics: dict[str, Any]
    converged: bool


def run(settings: Mapping[str, Any] | None = None, out: Path | str | None = None, *, progress: bool = False,
        overwrite: bool = False) -> RunResult:
    """One whole run: resolve the settings, build the problem, fit, write the run directory atomically.

    ``out`` is claimed before anything else (:mod:`mavrl_ppl.rundirs`): a second run into the same directory stops at
    once, and whether ``out`` can be written is known before the fit. The run is written into a temporary directory
    renamed to ``out`` at the end; a failed or interrupted run leaves nothing behind.

    Args:
        settings: run settings (:data:`DEFAULTS`'s keys); resolved by :func:`resolve_config`.
        out: the run directory (default :func:`default_out`).
        progress: progress bars.
        overwrite: replace an existing ``out``.

    Raises:
        UsageError: bad settings or data, inputs too large for this machine's memory (:mod:`mavrl_ppl.limits`), or an
            ``out`` that another run is writing, that exists (and ``overwrite`` is false), that is a file or not a run
            directory, or that cannot be written (nothing is written).
    """
    t_start = time.perf_counter()
    config = resolve_config(settings)
    out = Path(out) if out is not None else default_out(config)
    with claim_run_directory(out, overwrite=overwrite) as work:
        load_plugins(config["plugin"])
        problem = make_problem(config)
        simulate_seconds = time.perf_counter() - t_start
        fitted = fit_problem(problem, progress=progress, checkpoint=work / "checkpoint.pt")
        fitted.metrics["simulate_seconds"] = simulate_seconds  # settings, env and feedback (simulated or loaded)
        fitted.metrics["total_seconds"] = time.perf_counter() - t_start
        fitted.idata.attrs["total_seconds"] = fitted.metrics["total_seconds"]
        write_run(work, problem, fitted)
    return RunResult(out, fitted.metrics, fitted.converged)


def load_plugins(names: list[str]) -> None:
    """Import each plugin (a module name or a path to a .py file); importing it registers its feedback types.

    Raises:
        UsageError: a plugin that cannot be imported (its own error, in one line).
    """
    import importlib
    import importlib.util
    import sys

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


class LoadedRun(NamedTuple):
    """A run directory's small files; :meth:`posterior` and :meth:`feedback` read the large ones on demand."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    def posterior(self) -> Any:
        """The ``posterior.nc`` InferenceData."""
        from mavrl_ppl.netcdf import read_inference_data

        return read_inference_data(self.path / "posterior.nc")

    def posterior_mean(self) -> np.ndarray:
        """Posterior mean of ``reward`` (reads only the ``posterior`` group)."""
        import xarray as xr

        from mavrl_ppl.netcdf import ENGINE

        posterior = xr.load_dataset(self.path / "posterior.nc", group="posterior", engine=ENGINE)
        return posterior["reward"].mean(("chain", "draw")).values

    def feedback(self) -> dict[str, Any]:
        """The validated ``feedback.nc``."""
        from mavrl_ppl.feedback.data import load_feedback

        return load_feedback(self.path / "feedback.nc")

    def reward_function(self) -> Any:
        """A control run's learned reward ``(obs, action) -> (N,)`` (the encoder's mean) from ``reward_model.pt``.

        Raises:
            FileNotFoundError: a tabular run, or a control run written before runs kept their reward model.
        """
        from mavrl_ppl.models.networks import load_networks

        encoder, _, info = load_networks(str(self._reward_model()))
        return encoder_reward_function(encoder, int(info["num_actions"]))

    def q_function(self) -> Any:
        """A control run's Q-network as ``obs (N, obs_dim) -> (N, A)`` numpy action values.

        Raises:
            FileNotFoundError: no ``reward_model.pt`` (see :meth:`reward_function`) or no Q-network in it.
        """
        import torch

        from mavrl_ppl.models.networks import load_networks

        _, q_network, _ = load_networks(str(self._reward_model()))
        if q_network is None:
            raise FileNotFoundError(f"{self.path / REWARD_MODEL}: holds no Q-network")

        def q_fn(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return q_network(torch.as_tensor(np.asarray(obs), dtype=torch.get_default_dtype())).double().numpy()

        return q_fn

    def _reward_model(self) -> Path:
        path = self.path / REWARD_MODEL
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (tabular runs and control runs written before it was kept "
                                    "have none; refit the run)")
        return path

    def mdp(self) -> Any:
        """The tabular env the run was fitted on (``None`` for a control env)."""
        from mavrl_ppl.envs.control import is_control_env

        return None if is_control_env(self.config["env"]) else _make_mdp(self.config)


def load_run(path: Path | str) -> LoadedRun:
    """Read a finished run directory (``config.json`` and ``metrics.json``).

    Raises:
        FileNotFoundError: ``path`` has no ``metrics.json`` (an unfinished or foreign directory).
        DamagedFileError: ``config.json`` or ``metrics.json`` is missing, unreadable or not a JSON object.
    """
    path = Path(path)
    metrics_file = path / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{path}: not a finished run (no metrics.json)")
    return LoadedRun(path, _read_record(path / "config.json"), _read_record(metrics_file))


def _read_record(path: Path) -> dict[str, Any]:
    """A run's JSON record, or :class:`DamagedFileError` naming the file and what is wrong."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedFileError(path, "missing: the run directory is incomplete") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedFileError(path, f"not a readable JSON record ({exc})") from None
    if not isinstance(record, dict):
        raise DamagedFileError(path, f"not a JSON object but a {type(record).__name__}")
    return record
