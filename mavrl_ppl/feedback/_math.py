"""Numerically safe building blocks in the array API standard, so one likelihood serves torch and JAX alike."""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

Array = Any


def log_sigmoid(x: Array) -> Array:
    """``log(1 / (1 + e^-x))`` without overflow at either end."""
    xp = array_namespace(x)
    return -xp.logaddexp(xp.zeros_like(x), -x)


def logsumexp(x: Array, axis: int = -1) -> Array:
    xp = array_namespace(x)
    top = xp.max(x, axis=axis, keepdims=True)
    top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))
    return xp.squeeze(top, axis=axis) + xp.log(xp.sum(xp.exp(x - top), axis=axis))


def log_softmax(x: Array, axis: int = -1) -> Array:
    return x - xp_expand(logsumexp(x, axis=axis), axis)


def xp_expand(x: Array, axis: int) -> Array:
    xp = array_namespace(x)
    return xp.expand_dims(x, axis=axis)


def log1m_exp(x: Array) -> Array:
    """``log(1 - e^x)`` for ``x < 0`` (Mächler 2012: expm1 near 0, log1p far from it)."""
    xp = array_namespace(x)
    near_zero = x > -0.6931471805599453
    safe_near = xp.where(near_zero, x, -xp.ones_like(x))
    safe_far = xp.where(near_zero, -xp.ones_like(x), x)
    return xp.where(near_zero, xp.log(-xp.expm1(safe_near)), xp.log1p(-xp.exp(safe_far)))


def align_batch(value: Array, ndim: int, event_ndim: int = 0) -> Array:
    """Insert singleton axes before a nuisance value's ``event_ndim`` trailing (parameter) axes so that its
    leading (sample) axes line up with the LEADING axes of an ``ndim``-dimensional array: a per-sample ``beta``
    of shape ``(S,)`` scales latents ``(S, item, ...)`` sample by sample, never item by item or action by
    action. Values that already carry those axes (Pyro's ``(P, 1)`` particle shape, a scalar) pass unchanged."""
    batch_ndim = value.ndim - event_ndim
    if batch_ndim <= 0 or value.ndim >= ndim:
        return value
    xp = array_namespace(value)
    batch, event = value.shape[:batch_ndim], value.shape[batch_ndim:]
    return xp.reshape(value, (*batch, *([1] * (ndim - value.ndim)), *event))


def masked_mean(values: Array, mask: Array, axis: int = -1) -> Array:
    """Mean over ``axis`` of the entries where ``mask`` holds; padded entries may hold anything, even NaN.
    A row with no valid entry gives 0."""
    xp = array_namespace(values)
    mask = xp.astype(mask, xp.bool) if mask.dtype != xp.bool else mask
    total = xp.sum(xp.where(mask, values, xp.zeros_like(values)), axis=axis)
    count = xp.sum(xp.astype(mask, values.dtype), axis=axis)
    return total / xp.maximum(count, xp.ones_like(count))


def masked_sum(values: Array, mask: Array, axis: int = -1) -> Array:
    xp = array_namespace(values)
    return xp.sum(xp.where(mask, values, xp.zeros_like(values)), axis=axis)


def one_hot(index: Array, num_classes: int, dtype: Any) -> Array:
    xp = array_namespace(index)
    return xp.astype(xp.expand_dims(index, axis=-1) == xp.arange(num_classes), dtype)


def pick(values: Array, index: Array) -> Array:
    """``values[..., index]`` along the last axis, as a masked sum (differentiable in every backend); a ``where``
    rather than a product so that -inf at the actions not picked cannot turn into NaN."""
    xp = array_namespace(values)
    chosen = xp.expand_dims(index, axis=-1) == xp.arange(values.shape[-1])
    return xp.sum(xp.where(chosen, values, xp.zeros_like(values)), axis=-1)
