"""Numerically safe array operations for writing a feedback type's likelihood.

A likelihood is written once against the array API standard and runs unchanged on torch (``--inference svi``) and
on JAX (``--inference nuts``). These helpers are what the built-in likelihoods use and what a custom
``log_likelihood`` should use too: each takes backend arrays, finds the namespace with
``array_api_compat.array_namespace`` and stays finite (and differentiable) where the naive formula overflows, divides
by zero or multiplies ``-inf`` by zero. Segment batches are padded: pass the ``valid`` mask to the masked reductions
rather than averaging over the step axis yourself.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, device

Array = Any


def zero(x: Array) -> Array:
    """A 0-d zero of ``x``'s dtype on its device: the filler of a masking ``where``, which broadcasts it.

    ``zeros_like`` writes a whole array for nothing: measured in numpy (one thread, shared 2-core machine),
    :func:`pick` on ``(27, 1, 256, 10, 5)`` action values took 8.3 ms with it and 2.3 ms with this; the values, and
    the gradients in torch and JAX, are the same.

    Args:
        x: any array.

    Returns:
        A 0-d array holding 0 of ``x``'s dtype.
    """
    return array_namespace(x).zeros((), dtype=x.dtype, device=device(x))


def log_sigmoid(x: Array) -> Array:
    """``log(1 / (1 + e^-x))`` without overflow at either end.

    Args:
        x: any real array.

    Returns:
        An array of ``x``'s shape, ``<= 0``.
    """
    xp = array_namespace(x)
    return -xp.logaddexp(xp.zeros_like(x), -x)


def logsumexp(x: Array, axis: int = -1) -> Array:
    """``log(sum(exp(x), axis))``, shifted by the maximum so that it neither overflows nor underflows; entries of
    ``-inf`` contribute nothing (use them to leave entries out).

    Args:
        x: any real array.
        axis: the axis to reduce.

    Returns:
        ``x`` without ``axis``.
    """
    xp = array_namespace(x)
    top = xp.max(x, axis=axis, keepdims=True)
    top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))
    return xp.squeeze(top, axis=axis) + xp.log(xp.sum(xp.exp(x - top), axis=axis))


def log_softmax(x: Array, axis: int = -1) -> Array:
    """``x - logsumexp(x, axis)``: log-probabilities of a softmax (e.g. a Boltzmann policy ``beta * Q``).

    Args:
        x: logits.
        axis: the axis the probabilities sum to one over.

    Returns:
        An array of ``x``'s shape.
    """
    xp = array_namespace(x)
    return x - xp.expand_dims(logsumexp(x, axis=axis), axis=axis)


def log1m_exp(x: Array) -> Array:
    """``log(1 - e^x)`` for ``x < 0`` (Mächler 2012: expm1 near 0, log1p far from it), e.g. the log-probability of
    the complement of an event with log-probability ``x``.

    Args:
        x: an array of negative values (0 gives ``-inf``).

    Returns:
        An array of ``x``'s shape.
    """
    xp = array_namespace(x)
    near_zero = x > -0.6931471805599453
    safe_near = xp.where(near_zero, x, -xp.ones_like(x))
    safe_far = xp.where(near_zero, -xp.ones_like(x), x)
    return xp.where(near_zero, xp.log(-xp.expm1(safe_near)), xp.log1p(-xp.exp(safe_far)))


def align_batch(value: Array, ndim: int, event_ndim: int = 0) -> Array:
    """A nuisance value reshaped to broadcast against an ``ndim``-dimensional array sample by sample.

    Singleton axes are inserted before the value's ``event_ndim`` trailing (parameter) axes so that its leading
    (sample) axes line up with the LEADING axes of the other array: a per-sample ``beta`` of shape ``(S,)`` scales
    latents ``(S, item, ...)`` sample by sample, never item by item or action by action. Values that already carry
    those axes (Pyro's ``(P, 1)`` particle shape, a scalar) pass unchanged.

    Args:
        value: the nuisance value from ``params``, shape ``(*sample, *event)``.
        ndim: number of dimensions of the array it will multiply or be compared with.
        event_ndim: number of trailing parameter axes of ``value`` (0 for a scalar like ``beta``, 1 for cutpoints).

    Returns:
        ``value`` with shape ``(*sample, 1, ..., 1, *event)`` of ``ndim`` dimensions, or ``value`` itself.
    """
    batch_ndim = value.ndim - event_ndim
    if batch_ndim <= 0 or value.ndim >= ndim:
        return value
    xp = array_namespace(value)
    batch, event = value.shape[:batch_ndim], value.shape[batch_ndim:]
    return xp.reshape(value, (*batch, *([1] * (ndim - value.ndim)), *event))


def masked_mean(values: Array, mask: Array, axis: int = -1) -> Array:
    """Mean over ``axis`` of the entries where ``mask`` holds, e.g. a segment's mean reward over its valid steps.

    Args:
        values: any real array; padded entries may hold anything, even NaN.
        mask: boolean (or 0/1) array broadcastable to ``values``, true at the entries to average.
        axis: the axis to reduce.

    Returns:
        ``values`` without ``axis``; a row with no valid entry gives 0.
    """
    xp = array_namespace(values)
    mask = xp.astype(mask, xp.bool) if mask.dtype != xp.bool else mask
    total = xp.sum(xp.where(mask, values, zero(values)), axis=axis)
    count = xp.sum(xp.astype(mask, values.dtype), axis=axis)
    return total / xp.maximum(count, xp.ones_like(count))


def masked_sum(values: Array, mask: Array, axis: int = -1) -> Array:
    """Sum over ``axis`` of the entries where ``mask`` holds, e.g. an episode's log-likelihood over its valid steps.

    Args:
        values: any real array; padded entries may hold anything, even NaN or ``-inf``.
        mask: boolean array broadcastable to ``values``, true at the entries to add.
        axis: the axis to reduce.

    Returns:
        ``values`` without ``axis``; a row with no valid entry gives 0.
    """
    xp = array_namespace(values)
    return xp.sum(xp.where(mask, values, zero(values)), axis=axis)


def pick(values: Array, index: Array) -> Array:
    """``values[..., index]`` along the last axis, as a masked sum (differentiable in every backend); a ``where``
    rather than a product so that -inf at the entries not picked cannot turn into NaN.

    Args:
        values: shape ``(..., n)``, e.g. action values ``Q(s, .)``.
        index: integer array broadcastable with ``values.shape[:-1]``, entries in ``0..n-1``.

    Returns:
        The picked entries, ``values`` and ``index`` broadcast without the last axis.
    """
    xp = array_namespace(values)
    chosen = xp.expand_dims(index, axis=-1) == xp.arange(values.shape[-1])
    return xp.sum(xp.where(chosen, values, zero(values)), axis=-1)
