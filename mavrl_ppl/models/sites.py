"""Helpers for the model's sample sites: site weights and the feedback likelihood as a distribution."""

from __future__ import annotations

from collections.abc import Mapping

import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import constraints

from mavrl_ppl.feedback.base import FeedbackType, Latents


def weighted(weight: float):
    """``poutine.scale`` by ``weight``; a zero weight removes the sites' terms by masking (``scale`` rejects 0)."""
    if weight < 0:
        raise ValueError(f"site weights must be >= 0, got {weight}")
    return poutine.mask(mask=False) if weight == 0 else poutine.scale(scale=weight)


def event_dims(feedback_type: FeedbackType) -> int:
    """Per-item event dims of a type's per-step sites: ``[side,] step``."""
    return len(feedback_type.segment_dims) - 1


def gaussian_draws(mu: torch.Tensor, sigma: torch.Tensor, num_draws: int, generator: torch.Generator) -> torch.Tensor:
    """``num_draws`` reparameterised draws of ``Normal(mu, sigma)`` from ``generator``, draws first."""
    return mu + sigma * torch.randn((num_draws, *mu.shape), generator=generator, dtype=mu.dtype)


class FeedbackLikelihood(dist.TorchDistribution):
    """Wraps a feedback type's array-API log-likelihood as a distribution over its labels (scoring only)."""

    arg_constraints: dict = {}  # noqa: RUF012 (torch's Distribution API declares it so)
    support = constraints.real

    def __init__(self, feedback_type: FeedbackType, batch: Mapping, latents: Latents, params: Mapping) -> None:
        self.feedback_type, self.batch, self.latents, self.params = feedback_type, batch, latents, params
        label_shape = batch[feedback_type.label].shape  # (item, *per-item label dims, e.g. demo steps)
        super().__init__(batch_shape=label_shape[:1], event_shape=label_shape[1:], validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        batch = {**self.batch, self.feedback_type.label: value}
        return self.feedback_type.log_likelihood(batch, self.latents, self.params)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        raise NotImplementedError("feedback likelihoods only score observed labels")
