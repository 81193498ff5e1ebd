"""Feedback data sets as torch tensors, train/validation splits and cycling minibatches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
import xarray as xr

from mavrl_ppl.feedback.base import batch_from_dataset, get_feedback_type

Batch = dict[str, torch.Tensor | float]


def _to_tensor(values: np.ndarray) -> torch.Tensor:
    if values.dtype == np.bool_:
        return torch.from_numpy(values.copy())
    if np.issubdtype(values.dtype, np.integer):
        return torch.from_numpy(values.astype(np.int64))
    return torch.as_tensor(values, dtype=torch.get_default_dtype())


def to_tensors(name: str, dataset: xr.Dataset) -> Batch:
    """Every variable the likelihood and the networks read, item dim first; attributes as floats."""
    return batch_from_dataset(get_feedback_type(name), dataset, _to_tensor)


def take(batch: Batch, indices: torch.Tensor) -> Batch:
    """The items ``indices`` of a batch (attributes pass through)."""
    return {k: v[indices] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def split_items(num_items: int, fraction: float, rng: np.random.Generator, min_items: int = 5):
    """A shuffled train/validation split of ``num_items``; data sets smaller than ``min_items`` (e.g. one
    demonstration episode) stay whole in training, since a validation set of zero or one item selects nothing."""
    order = rng.permutation(num_items)
    n_val = int(np.floor(fraction * num_items)) if num_items >= min_items else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class CyclingBatches:
    """One minibatch of every type per step; each type reshuffles when it runs out, so shorter sets cycle.

    Args:
        sizes: number of training items of each type.
        batch_size: items per type per step (capped at the type's size).
        generator: the torch generator behind the shuffles.
    """

    def __init__(self, sizes: Mapping[str, int], batch_size: int, generator: torch.Generator) -> None:
        self.sizes = dict(sizes)
        self.batch_size = batch_size
        self.generator = generator
        self._order: dict[str, torch.Tensor] = {}
        self._pos: dict[str, int] = {}

    def next(self, name: str) -> torch.Tensor:
        size = self.sizes[name]
        b = min(self.batch_size, size)
        if b == size:
            return torch.arange(size)
        if name not in self._order or self._pos[name] + b > size:
            self._order[name] = torch.randperm(size, generator=self.generator)
            self._pos[name] = 0
        out = self._order[name][self._pos[name] : self._pos[name] + b]
        self._pos[name] += b
        return torch.sort(out).values

    def state(self) -> dict:
        return {"order": dict(self._order), "pos": dict(self._pos), "rng": self.generator.get_state()}

    def load_state(self, state: Mapping) -> None:
        self._order, self._pos = dict(state["order"]), dict(state["pos"])
        self.generator.set_state(state["rng"])


def num_items(batch: Batch) -> int:
    """Number of items in a batch."""
    return int(batch["valid"].shape[0])


class FeedbackSplit(NamedTuple):
    """A feedback set as tensors, split into training and held-out items.

    Attributes:
        train: each type's training items.
        held_out: each type's validation items, types with none left out; if no type has any, the training sets
            (validation then scores the training fit).
    """

    train: dict[str, Batch]
    held_out: dict[str, Batch]

    def num_items(self) -> dict[str, int]:
        """Training items of each type (the plates' full size)."""
        return {name: num_items(batch) for name, batch in self.train.items()}


def split_feedback(feedback: Mapping[str, xr.Dataset], fraction: float, rng: np.random.Generator) -> FeedbackSplit:
    """Each type's items as tensors, split by :func:`split_items` (types in ``feedback``'s order, one draw each)."""
    train, held_out = {}, {}
    for name, dataset in feedback.items():
        tensors = to_tensors(name, dataset)
        train_idx, val_idx = split_items(dataset.sizes["item"], fraction, rng)
        train[name] = take(tensors, torch.from_numpy(train_idx))
        if len(val_idx):
            held_out[name] = take(tensors, torch.from_numpy(val_idx))
    return FeedbackSplit(train, held_out or train)


class Minibatches:
    """The training sets' minibatches, one of every type per call, in the form ``model()`` takes:
    type name -> ``(indices, batch)``.

    Args:
        train: each type's training items.
        batch_size: items per type per step (capped at the type's size).
        generator: the torch generator behind the shuffles.
    """

    def __init__(self, train: Mapping[str, Batch], batch_size: int, generator: torch.Generator) -> None:
        self.train = dict(train)
        self.cycling = CyclingBatches({n: num_items(b) for n, b in self.train.items()}, batch_size, generator)

    def __call__(self) -> dict[str, tuple[torch.Tensor, Batch]]:
        out = {}
        for name, batch in self.train.items():
            idx = self.cycling.next(name)
            whole = len(idx) == num_items(batch)  # the full training set: no copy needed
            out[name] = (idx, batch if whole else take(batch, idx))
        return out

    def state(self) -> dict:
        return self.cycling.state()

    def load_state(self, state: Mapping) -> None:
        self.cycling.load_state(state)
