"""Building feedback data sets (DESIGN §2) from a teacher's segment arrays."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

_DTYPES = {"float": np.float32, "int": np.int64, "bool": np.bool_}


def segment_dataset(
    segments: Mapping[str, np.ndarray],
    segment_dims: tuple[str, ...],
    extra: Mapping[str, tuple[tuple[str, ...], np.ndarray]],
    attrs: Mapping[str, Any],
) -> xr.Dataset:
    """An ``xarray.Dataset`` with the segment variables on ``segment_dims`` (plus ``obs_dim`` for observations),
    the type's own variables in ``extra`` (name -> (dims, values)) and the data set's attributes."""
    data_vars = {}
    for name, values in segments.items():
        dims = (*segment_dims, "obs_dim") if name in ("obs", "next_obs") else segment_dims
        data_vars[name] = (dims, np.asarray(values))
    data_vars.update({name: (dims, np.asarray(values)) for name, (dims, values) in extra.items()})
    return xr.Dataset(data_vars, attrs=dict(attrs))


def segment_means(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean over the valid steps (last axis); the REFERENCE's rating simulator divided by the full length, we do not."""
    return np.where(valid, values, 0.0).sum(-1) / np.maximum(valid.sum(-1), 1)
