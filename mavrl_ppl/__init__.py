"""mavrl_ppl: reward posteriors from several kinds of human feedback at once, as one probabilistic program.

The public API (re-exports only):

- one run: :func:`run` (settings -> run directory), or step by step :func:`resolve_config`, :func:`make_problem`,
  :func:`fit_problem`; :func:`load_run` reads a run directory back; :class:`UsageError` is bad input;
- your own feedback type: :class:`FeedbackType` with :func:`register` (see ``examples/plackett_luce.py``);
- feedback data: :func:`load_feedback`, :func:`save_feedback`.

Importing this package imports neither JAX, stable-baselines3, Optuna nor Dask.
"""

from mavrl_ppl.feedback import FeedbackType, register
from mavrl_ppl.feedback.data import FeedbackDataError, load_feedback, save_feedback
from mavrl_ppl.runs import UsageError, fit_problem, load_run, make_problem, resolve_config, run

__all__ = [
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
