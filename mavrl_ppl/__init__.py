"""mavrl_ppl: reward posteriors from several kinds of human feedback at once, as one probabilistic program.

The public API (re-exports only):

- one run: :func:`run` (settings -> run directory), or step by step :func:`resolve_config`, :func:`make_problem`,
  :func:`fit_problem`; :func:`load_run` reads a run directory back; :class:`UsageError` is bad input (and
  :class:`DamagedFileError`, a damaged file we read);
- your own feedback type: :class:`FeedbackType` with :func:`register` (see ``examples/plackett_luce.py``);
- feedback data: :func:`load_feedback`, :func:`save_feedback`.

Importing this package imports neither JAX, stable-baselines3, Optuna nor Dask, and the names above are imported
when first used: ``python -m mavrl_ppl.fit`` starts its own code (and its Ctrl-C handling) before any heavy library.
"""

from __future__ import annotations

from mavrl_ppl._lazy import lazy_exports

_EXPORTS = {
    "DamagedFileError": "mavrl_ppl.errors",
    "FeedbackDataError": "mavrl_ppl.feedback.data",
    "FeedbackType": "mavrl_ppl.feedback",
    "UsageError": "mavrl_ppl.errors",
    "fit_problem": "mavrl_ppl.runs",
    "load_feedback": "mavrl_ppl.feedback.data",
    "load_run": "mavrl_ppl.runs",
    "make_problem": "mavrl_ppl.runs",
    "register": "mavrl_ppl.feedback",
    "resolve_config": "mavrl_ppl.runs",
    "run": "mavrl_ppl.runs",
    "save_feedback": "mavrl_ppl.feedback.data",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "DamagedFileError",
    "FeedbackDataError",
    "FeedbackType",
    "UsageError",
    "fit_problem",
    "load_feedback",
    "load_run",
    "make_problem",
    "register",
    "resolve_config",
    "run",
    "save_feedback",
]
