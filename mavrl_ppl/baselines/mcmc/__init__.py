"""NumPyro NUTS reference posterior for tabular MDPs (DESIGN §5).

Importing this package imports JAX and switches it to float64 (``jax_enable_x64``) for the whole process; call
:func:`set_host_devices` before anything else touches JAX to run chains in parallel on the host's cores. ``Q*`` of
the model comes from :mod:`mavrl_ppl.planning.jax_backend`.
"""

from mavrl_ppl.baselines.mcmc.devices import enable_x64, set_host_devices
from mavrl_ppl.baselines.mcmc.diagnostics import RHAT_MAX, nuts_diagnostics
from mavrl_ppl.baselines.mcmc.model import TabularFeedbackModel, make_model
from mavrl_ppl.baselines.mcmc.plots import plot_nuts_diagnostics
from mavrl_ppl.baselines.mcmc.potential import ModelFunctions, model_functions
from mavrl_ppl.baselines.mcmc.sampler import NutsResult, NutsSettings, run_nuts

enable_x64()

__all__ = [
    "RHAT_MAX",
    "ModelFunctions",
    "NutsResult",
    "NutsSettings",
    "TabularFeedbackModel",
    "enable_x64",
    "make_model",
    "model_functions",
    "nuts_diagnostics",
    "plot_nuts_diagnostics",
    "run_nuts",
    "set_host_devices",
]
