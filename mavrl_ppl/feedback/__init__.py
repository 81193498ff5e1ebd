"""Feedback types (one module each) and their registry; importing this package registers the built-in four."""

from mavrl_ppl.feedback import demonstration, preference, rating, stop
from mavrl_ppl.feedback.base import (
    FeedbackType,
    Latents,
    Nuisance,
    VariableSpec,
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
    "demonstration",
    "get_feedback_type",
    "load_feedback",
    "parse_counts",
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
