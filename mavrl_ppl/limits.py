"""Memory limits: a run whose inputs need more memory than the machine has is refused before anything is allocated.

:func:`check_memory` estimates a run's peak memory from its settings alone and raises :class:`UsageError` (one line:
what is too large, the estimate, the limit, and how to raise it) when the estimate exceeds the limit. The limit is
the machine's memory (or the container's, if a cgroup limit is lower); the environment variable
``MAVRL_MAX_MEMORY_GB`` (GiB, 2**30 bytes) replaces it, e.g. to allow swap or to keep a shared machine usable.

The estimate is ``BASE + MDP + DATA``:

- ``BASE``: Python, numpy, torch, Pyro, xarray and a tiny run.
- ``MDP`` (tabular envs): ``S x A x S`` transitions x :data:`BYTES_PER_TRANSITION`: the dynamics, the true reward
  and the reward groups (float64, float64, int64), built once as temporaries and kept, and the planner's copies.
- ``DATA``: the feedback set, ``sum over types of items x steps per item x bytes per step``, times
  :data:`DATA_COPIES` (the simulated set, its tensors, the train / validation split, the copies written into the run).
  Steps per item: ``segment_length`` (the type's simulator setting) times the item's segments (2 for a preference's
  sides); a demonstration counts at the episode cap (episodes are padded to the longest). Bytes per step:
  ``2 x obs_dim x 4`` (``obs``, ``next_obs``, float32; ``obs_dim`` is the number of states on a tabular env, whose
  observations are one-hot) ``+ 4 x 8`` (actions and states, int64) ``+ 4`` (masks). With ``--data``, the file's
  arrays (read from its header) take the place of the simulated set.

Calibration: peak resident memory (``ru_maxrss``) of ``runs.run`` in a fresh process, SVI with 20 steps on
grid_trap, torch 2.13, a 2-core Linux machine, measured 2026-12 (MiB; "data" is the formula's feedback set, once):

=========================================  ==========  ===========  ==========  ========
case                                       data        env S*A*S    peak RSS    estimate
=========================================  ==========  ===========  ==========  ========
3x3, pref=8,rating=8                       0.03        405          501         512
10x10, pref=4000                           63.8        50 000       597         835
10x10, pref=16000                          255         50 000       1353        1791
10x10, rating=32000 (and stop=32000)       255         50 000       1353        1791
10x10, pref=32000                          510         50 000       2433        3067
10x10, pref=64000                          1021        50 000       4593        5618
30x30, pref=64,demo=1,rating=64,stop=256   55.8        4.05 M       897         1100
45x45, pref=64,demo=1,rating=64,stop=256   195         20.5 M       2116        3050
=========================================  ==========  ===========  ==========  ========

From these: the base is 501 MiB; the feedback set costs ``(peak - base) / data`` = 1.5, 3.3, 3.8 and 4.0 copies at
64, 255, 510 and 1021 MiB, and 4.2 copies at the margin (2433 -> 4593 MiB for 510 more), hence
:data:`DATA_COPIES` = 5; the env costs 66-73 bytes per ``(s, a, s')`` entry on the large grids (the 30x30 and 45x45
peaks less base and data), hence :data:`BYTES_PER_TRANSITION` = 80. Every estimate is above its measured peak (by
2-45 %: demonstrations count at the episode cap), so a refused run would not have fitted, and a run that fits is not
refused unless the machine is within a few tens of percent of its memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from mavrl_ppl.errors import UsageError

__all__ = ["ENV_VAR", "Estimate", "check_memory", "estimate_memory", "machine_memory", "memory_limit"]

ENV_VAR = "MAVRL_MAX_MEMORY_GB"
GIB = 2**30
#: Resident memory of a tiny run: the interpreter and the libraries.
BASE_BYTES = int(0.5 * GIB)
#: Bytes per ``(s, a, s')`` entry of a tabular env, over every array built from it.
BYTES_PER_TRANSITION = 80
#: Copies of the feedback set alive at the peak of a run (measured up to 4.2 at the margin, see the module docstring).
DATA_COPIES = 5
#: Bytes per segment step besides the two observations: action, next action, state, next state (int64) and masks.
STEP_BYTES = 4 * 8 + 4


class Estimate(NamedTuple):
    """A run's estimated peak memory, in bytes, and its parts."""

    total: int
    mdp: int
    data: int
    what: str  # the inputs that decide the size, for the message (e.g. "--feedback pref=100000000")


def machine_memory() -> int:
    """The machine's physical memory in bytes, or the cgroup's limit if that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def memory_limit() -> tuple[int, str]:
    """The limit in bytes and where it comes from (``MAVRL_MAX_MEMORY_GB``, else the machine's memory).

    Raises:
        UsageError: ``MAVRL_MAX_MEMORY_GB`` is set but not a positive number.
    """
    text = os.environ.get(ENV_VAR, "").strip()
    if text:
        try:
            gb = float(text)
        except ValueError:
            gb = math.nan
        if not (gb > 0 and math.isfinite(gb)):
            raise UsageError(f"{ENV_VAR}={text!r}: expected a positive number of GiB")
        return int(gb * GIB), f"the limit {ENV_VAR}={text}"
    return machine_memory(), "this machine's memory"


def _obs_dim(env: str, num_states: int | None) -> int:
    if num_states is not None:
        return num_states  # one-hot observations
    import gymnasium as gym

    probe = gym.make(env)
    try:
        return int(probe.observation_space.shape[0])
    finally:
        probe.close()


def _data_file_bytes(path: str) -> int:
    """The in-memory size of a feedback file's arrays, from its header (nothing is read); 0 if unreadable (the
    loader reports that)."""
    try:
        import numpy as np

        from mavrl_ppl.netcdf import group_headers

        return sum(math.prod(shape) * np.dtype(dtype).itemsize
                   for _, variables in group_headers(path).values() for shape, dtype in variables.values())
    except Exception:
        return 0


def _simulated_bytes(config: Mapping[str, Any], num_states: int | None) -> int:
    """The simulated feedback set's size by the formula of the module docstring; 0 if the counts do not parse (the
    simulation reports that)."""
    from mavrl_ppl.feedback import get_feedback_type, registered
    from mavrl_ppl.feedback.data import parse_counts

    try:
        counts = parse_counts(config["feedback"], registered())
    except (ValueError, TypeError):
        return 0
    if not any(counts.values()):
        return 0
    control = num_states is None
    if control:
        from mavrl_ppl.envs.control import control_spec
        from mavrl_ppl.runs import CONTROL_SIMULATION

        episode_cap = control_spec(config["env"]).max_episode_steps
        presets: Mapping[str, Mapping[str, Any]] = CONTROL_SIMULATION
    else:
        episode_cap = 4 * num_states  # TabularTeacher's cap
        presets = {}
    step_bytes = 2 * 4 * _obs_dim(config["env"], num_states) + STEP_BYTES
    total = 0
    for name, count in counts.items():
        if not count:
            continue
        feedback_type = get_feedback_type(name)
        options = {**feedback_type.defaults, **presets.get(name, {}), **(config.get("simulate") or {}).get(name, {})}
        slots = 1
        for dim in feedback_type.segment_dims:
            if dim not in ("item", "step"):
                slots *= 2 if dim == "side" else int(options.get("k", 2))
        length = int(options.get("segment_length") or episode_cap)
        total += int(count) * slots * length * step_bytes
    return total


def estimate_memory(config: Mapping[str, Any]) -> Estimate:
    """A run's peak memory from its resolved settings (see the module docstring), before anything is built."""
    from mavrl_ppl.envs.control import is_control_env
    from mavrl_ppl.envs.grids import tabular_shape

    env = config["env"]
    if is_control_env(env):
        num_states, mdp = None, 0
    else:
        shape = tabular_shape(env, config.get("env_size"))
        if shape is None:  # an unknown env: make_problem reports it
            return Estimate(BASE_BYTES, 0, 0, f"--env {env}")
        num_states, num_actions = shape
        mdp = num_states * num_actions * num_states * BYTES_PER_TRANSITION
    if config.get("data"):
        data = _data_file_bytes(str(config["data"]))
        what = f"--data {config['data']}"
    else:
        data = _simulated_bytes(config, num_states)
        what = f"--feedback {config['feedback']}"
    data *= DATA_COPIES
    if mdp > data:
        what = f"--env {env}" + (f" --env-size {config['env_size']}" if config.get("env_size") else "") + (
            f" ({num_states} states)")
    return Estimate(BASE_BYTES + mdp + data, mdp, data, what)


def _size(nbytes: int) -> str:
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB / 10 else f"{nbytes / 2**20:.0f} MiB"


def check_memory(config: Mapping[str, Any]) -> Estimate:
    """Refuse a run whose estimated peak memory exceeds the limit (:func:`memory_limit`).

    Raises:
        UsageError: one line with what is too large, the estimate and its parts, the limit, and how to raise it.
    """
    estimate = estimate_memory(config)
    limit, source = memory_limit()
    if estimate.total > limit:
        parts = ", ".join(f"{_size(v)} {k}" for k, v in (("for the env", estimate.mdp),
                                                          ("for the feedback data", estimate.data)) if v)
        raise UsageError(f"{estimate.what}: the run would need about {_size(estimate.total)} of memory ({parts}), "
                         f"more than {source} ({_size(limit)}); use fewer items or a smaller env, or set {ENV_VAR} "
                         "to raise the limit")
    return estimate
