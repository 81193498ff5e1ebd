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
from mavrl_ppl.feedback.teachers import TabularTeacher, Teacher

__all__ = [
    "FeedbackType",
    "Latents",
    "Nuisance",
    "TabularTeacher",
    "Teacher",
    "VariableSpec",
    "demonstration",
    "get_feedback_type",
    "preference",
    "rating",
    "rationality",
    "register",
    "registered",
    "stop",
    "unregister",
]
