"""JAX process settings for the NUTS path: float64, the number of host (CPU) devices for parallel chains and the
persistent compilation cache."""

from __future__ import annotations

import os
from pathlib import Path

import jax


def enable_x64() -> None:
    """Run every JAX computation of this process in float64 (value iteration and the likelihoods need it:
    ``Q*`` reaches ``|r| / (1 - gamma) = 20 |r|`` and NUTS's energy error is a difference of such sums)."""
    jax.config.update("jax_enable_x64", True)


#: Environment variable naming JAX's persistent compilation cache directory; ``off`` disables the cache.
CACHE_ENV = "MAVRL_JAX_CACHE"


def compilation_cache_dir() -> Path | None:
    """Where compiled NUTS programs are kept between runs: ``$MAVRL_JAX_CACHE``, else
    ``$XDG_CACHE_HOME/mavrl_ppl/jax`` (``~/.cache/mavrl_ppl/jax``); ``None`` when the variable is ``off``."""
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() == "off":
        return None
    if value:
        return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mavrl_ppl" / "jax"


def enable_compilation_cache() -> Path | None:
    """Keep compiled XLA programs on disk so that a repeated run (the same model and data shapes, e.g. a re-run or a
    resumed table) loads them instead of compiling again. JAX keys each entry on the program, the compile options,
    the backend and its own version, so a stale entry is never used. Entries that compiled in under 0.5 s are not
    worth the disk and are skipped.

    Returns:
        The cache directory, or ``None`` if ``MAVRL_JAX_CACHE=off`` or it cannot be created (then nothing is cached).
    """
    path = compilation_cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def set_host_devices(n: int | None = None) -> int:
    """Split the host CPU into ``n`` XLA devices so that NUTS chains can run in parallel (one thread per device).

    Uses the ``jax_num_cpu_devices`` option (jax >= 0.4.38; it overrides ``XLA_FLAGS``'s
    ``--xla_force_host_platform_device_count``). It only works before JAX runs its first computation, so the command
    line calls it at start-up.

    Args:
        n: number of devices; ``None`` = one per available core (``os.sched_getaffinity``).

    Returns:
        The number of CPU devices JAX now has.

    Raises:
        RuntimeError: JAX is already initialised with a different number of devices.
    """
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"the number of host devices must be >= 1, got {n}")
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except RuntimeError:  # the backend is up; fine if it already has what was asked for
        if jax.local_device_count() != n:
            raise RuntimeError(
                f"cannot set {n} host devices: JAX is already initialised with {jax.local_device_count()}; "
                "call set_host_devices() before any JAX computation"
            ) from None
    return jax.local_device_count()
