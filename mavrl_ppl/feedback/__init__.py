"""Feedback types (one module each) and their registry; importing this package registers the built-in four.

Writing your own type needs only names exported here: the :class:`FeedbackType` contract and :func:`register`,
:func:`rationality` for a Boltzmann coefficient, the numerically safe array-API operations of :mod:`.ops` for the
likelihood (:func:`masked_mean`, :func:`pick`, :func:`logsumexp`, ...), :func:`segment_dataset` and
:func:`segment_means` for the simulator, and :func:`batch_from_dataset` to call a likelihood on a data set by hand.
"""

from mavrl_ppl.feedback import demonstration, ops, preference, rating, stop
from mavrl_ppl.feedback.base import (
    FeedbackType,
    Latents,
    Nuisance,
    VariableSpec,
    batch_from_dataset,
    get_feedback_type,
    rationality,
    register,
    registered,
    unregister,
)
from mavrl_ppl.feedback.data import (
    FeedbackDataError,
    load_feedback,
    parse_counts,
    save_feedback,
    simulate_feedback,
    validate_feedback,
)
from mavrl_ppl.feedback.ops import (
    align_batch,
    log1m_exp,
    log_sigmoid,
    log_softmax,
    logsumexp,
    masked_mean,
    masked_sum,
    pick,
)
from mavrl_ppl.feedback.segments import segment_dataset, segment_means
from mavrl_ppl.feedback.teachers import TabularTeacher, Teacher

__all__ = [
    "FeedbackDataError",
    "FeedbackType",
    "Latents",
    "Nuisance",
    "TabularTeacher",
    "Teacher",
    "VariableSpec",
    "align_batch",
    "batch_from_dataset",
    "demonstration",
    "get_feedback_type",
    "load_feedback",
    "log1m_exp",
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "masked_mean",
    "masked_sum",
    "ops",
    "parse_counts",
    "pick",
    "preference",
    "rating",
    "rationality",
    "register",
    "registered",
    "save_feedback",
    "segment_dataset",
    "segment_means",
    "simulate_feedback",
    "stop",
    "unregister",
    "validate_feedback",
]
