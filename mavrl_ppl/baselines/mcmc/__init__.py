"""NumPyro NUTS reference posterior for tabular MDPs (DESIGN §5).

Importing this package imports neither JAX nor NumPyro: the names below load their modules on first use, so the
command line can read :class:`NutsSettings` and :data:`RHAT_MAX` without starting JAX. Nothing switches JAX to float64
as a side effect of an import: :func:`run_nuts` calls :func:`enable_x64` itself, and code that uses the model
functions directly calls it first. Call :func:`set_host_devices` before anything touches JAX to run chains in
parallel on the host's cores.
"""

from __future__ import annotations

from mavrl_ppl._lazy import lazy_exports
from mavrl_ppl.baselines.mcmc.settings import RHAT_MAX, NutsSettings

_LAZY = {
    "enable_x64": ".devices",
    "set_host_devices": ".devices",
    "nuts_diagnostics": ".diagnostics",
    "TabularFeedbackModel": ".model",
    "make_model": ".model",
    "plot_nuts_diagnostics": ".plots",
    "ModelFunctions": ".potential",
    "model_functions": ".potential",
    "NutsResult": ".sampler",
    "run_nuts": ".sampler",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = ["RHAT_MAX", "NutsSettings", *_LAZY]
