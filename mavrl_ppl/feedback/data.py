"""The on-disk feedback format (DESIGN §2): validation, NetCDF save/load, simulation of a feedback set.

A feedback set is a mapping type-name -> ``xarray.Dataset``; on disk it is one NetCDF-4 file with one group
per type. Every check is vectorised over items and steps, and every failure is a :class:`FeedbackDataError`
naming the file, group, variable and item index, so that the CLI can print one line and exit with status 2.

What validation accepts (the choices DESIGN §2 leaves open):

- Padded steps (``valid == False``) may hold any index: ``action``, ``state`` and ``next_state`` are
  range-checked at valid steps only, ``next_action`` at valid non-terminal steps only (after a terminal step
  ``Q(s', .) = 0`` and the next action is never read). Consumers must mask or clip indices at padded steps
  before gathering with them.
- Float variables must be finite everywhere, padded steps included: the reward encoder sees every
  observation, and a NaN in a masked-out branch still turns a gradient into NaN.
- Variables beyond the schema are allowed and kept (e.g. an item id); schema variables must have exactly the
  schema's dims, in order.
"""

from __future__ import annotations

import inspect
import json
import os
import secrets
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from mavrl_ppl.feedback.base import (
    SEGMENT_VARIABLES,
    TABULAR_VARIABLES,
    FeedbackType,
    VariableSpec,
    get_feedback_type,
    registered,
)
from mavrl_ppl.netcdf import ENGINE, group_headers

__all__ = [
    "ANSWERED",
    "FeedbackDataError",
    "load_feedback",
    "parse_counts",
    "save_feedback",
    "schema",
    "simulate_feedback",
    "unanswered_items",
    "validate_feedback",
]

#: Attribute recording how to undo NetCDF's attribute conversions: 1-element arrays come back as scalars,
#: bools are stored as int8, lists come back as arrays, Python int/float come back as numpy scalars, and netCDF-C
#: may hand the attributes back in another order (the record keeps the order under its own, reserved, name).
_ATTR_TYPES = "_mavrl_ppl_attr_types"


class FeedbackDataError(ValueError):
    """A feedback data set that does not match its type's schema, or a feedback file that cannot be read.

    The message is one line: ``feedback.nc: group 'rating', variable 'rating', item 7: rating 9 is outside
    0..4`` (parts that are ``None`` are left out).

    Attributes:
        path: the file (``None`` when validating data in memory).
        group: the feedback type / NetCDF group (``None`` for file-level problems).
        variable: the offending variable or attribute (``None`` for group-level problems).
        item: index along ``item`` of the first offending item (``None`` for data-set-level problems).
        reason: the problem itself, without its location.
    """

    def __init__(
        self,
        reason: str,
        *,
        path: str | os.PathLike | None = None,
        group: str | None = None,
        variable: str | None = None,
        item: int | None = None,
    ) -> None:
        self.reason = reason
        self.path = None if path is None else os.fspath(path)
        self.group = group
        self.variable = variable
        self.item = None if item is None else int(item)
        where = [f"group {group!r}"] if group is not None else []
        where += [f"variable {variable!r}"] if variable is not None else []
        where += [f"item {self.item}"] if self.item is not None else []
        head = ", ".join(where)
        if self.path is not None:
            head = f"{self.path}: {head}" if head else self.path
        message = f"{head}: {reason}" if head else reason
        super().__init__(" ".join(message.split()))  # one line, whatever the reason holds

    def __reduce__(self):  # pickling (multiprocessing) must survive the keyword-only fields
        return (_rebuild_error, (self.reason, self.path, self.group, self.variable, self.item))


def _rebuild_error(reason, path, group, variable, item) -> FeedbackDataError:
    return FeedbackDataError(reason, path=path, group=group, variable=variable, item=item)


class _Problem(Exception):
    """Internal: a problem found inside one group, before the path and group are attached."""

    def __init__(self, variable: str | None, item: int | None, reason: str) -> None:
        super().__init__(reason)
        self.variable, self.item, self.reason = variable, item, reason


# ---------------------------------------------------------------------------------------------- validation


def schema(feedback_type: FeedbackType, dataset: xr.Dataset | None = None) -> dict[str, VariableSpec]:
    """The variables (name -> dims and kind) a data set of ``feedback_type`` must carry.

    Args:
        feedback_type: the registered type; its ``segment_dims`` and ``variables`` define the schema.
        dataset: if given and it carries ``state`` or ``next_state``, both become required (tabular data).

    Returns:
        Segment variables first (``obs``/``next_obs`` with a trailing ``obs_dim``), then the type's own
        variables (one of the same name, e.g. the demonstrations' ``action``, overrides the segment one).
    """
    dims = tuple(feedback_type.segment_dims)
    out = {
        name: VariableSpec((*dims, "obs_dim") if name in ("obs", "next_obs") else dims, kind)
        for name, kind in SEGMENT_VARIABLES.items()
    }
    if dataset is not None and any(name in dataset.variables for name in TABULAR_VARIABLES):
        out.update({name: VariableSpec(dims, kind) for name, kind in TABULAR_VARIABLES.items()})
    out.update({name: VariableSpec(tuple(s.dims), s.kind) for name, s in feedback_type.variables.items()})
    return out


def _kind_ok(values: np.ndarray, kind: str) -> bool:
    if kind == "float":
        return np.issubdtype(values.dtype, np.floating)
    if kind == "int":
        return np.issubdtype(values.dtype, np.integer)  # np.bool_ is not an integer dtype
    if kind == "bool":
        return values.dtype == np.bool_
    raise ValueError(f"unknown variable kind {kind!r} in a feedback type's schema")


def _first(mask: np.ndarray) -> tuple[int, ...] | None:
    """Index of the first True entry in C order (so the smallest item first), or None; no loop over items."""
    flat = mask.reshape(-1)
    if not flat.size:
        return None
    at = int(np.argmax(flat))
    if not flat[at]:
        return None
    return tuple(int(i) for i in np.unravel_index(at, mask.shape))


def _where(dims: tuple[str, ...], index: tuple[int, ...]) -> str:
    """``'side 1, step 3'``: the position of a problem inside its item."""
    return ", ".join(f"{d} {i}" for d, i in zip(dims[1:], index[1:], strict=True))


def _integer_attr(attrs: Mapping[str, Any], name: str, *, required: bool) -> int | None:
    if name not in attrs:
        if required:
            raise _Problem(name, None, f"attribute {name!r} is missing")
        return None
    value = attrs[name]
    is_int = isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
    if not is_int or int(value) < 1:
        raise _Problem(name, None, f"attribute {name!r} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_index(dataset: xr.Dataset, name: str, mask: np.ndarray, upper: int | None, what: str, where: str) -> None:
    """Raise if ``dataset[name]`` lies outside ``0..upper-1`` (is negative if ``upper`` is None) where
    ``mask`` holds."""
    values = dataset[name].values
    bad = (values < 0) if upper is None else ((values < 0) | (values >= upper))
    at = _first(bad & mask)
    if at is not None:
        span = "negative" if upper is None else f"outside 0..{upper - 1}"
        position = _where(tuple(dataset[name].dims), at)
        raise _Problem(name, at[0], f"{what} {values[at]} at {position} ({where}) is {span}")


#: Optional ``(item,)`` bool variable of a query file (``python -m mavrl_ppl.experiments.active suggest``): False marks
#: a query a person has not answered yet, whose label is a placeholder that no fit may read.
ANSWERED = "answered"


def unanswered_items(dataset: xr.Dataset) -> np.ndarray:
    """``(n,)`` indices of the items whose ``answered`` flag is False (none when the data set has no such flag)."""
    if ANSWERED not in dataset.variables:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(~dataset[ANSWERED].values.astype(bool))


def _check_answered(feedback_type: FeedbackType, dataset: xr.Dataset, allow_unanswered: bool) -> None:
    if ANSWERED not in dataset.variables:
        return
    flag = dataset[ANSWERED]
    if tuple(flag.dims) != ("item",) or flag.dtype != np.bool_:
        raise _Problem(ANSWERED, None, f"must be a bool variable over ('item',), got {flag.dtype} over {flag.dims}")
    missing = unanswered_items(dataset)
    if len(missing) and not allow_unanswered:
        shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise _Problem(ANSWERED, int(missing[0]), f"{len(missing)} of {dataset.sizes['item']} queries are unanswered "
                       f"(items {shown}): fill in their {feedback_type.label!r} and set {ANSWERED!r} to True")


def _check_group(feedback_type: FeedbackType, dataset: xr.Dataset, allow_unanswered: bool = False) -> None:
    """Every check of one group, in a fixed order; raises :class:`_Problem` on the first failure."""
    if not isinstance(dataset, xr.Dataset):
        raise _Problem(None, None, f"expected an xarray.Dataset, got {type(dataset).__name__}")
    spec = schema(feedback_type, dataset)
    for name, (dims, _) in spec.items():
        if name not in dataset.variables:
            raise _Problem(name, None, f"required variable is missing (expected dims {dims})")
    for name, (dims, _) in spec.items():
        if tuple(dataset[name].dims) != tuple(dims):
            raise _Problem(name, None, f"has dims {tuple(dataset[name].dims)}, expected {tuple(dims)}")
    for name, (_, kind) in spec.items():
        if not _kind_ok(dataset[name].values, kind):
            raise _Problem(name, None, f"has dtype {dataset[name].dtype}, expected a {kind} dtype")
    num_actions = _integer_attr(dataset.attrs, "num_actions", required=True)
    num_states = _integer_attr(dataset.attrs, "num_states", required=False)
    if dataset.sizes["item"] == 0:
        raise _Problem(None, None, "the group holds no items")
    _check_answered(feedback_type, dataset, allow_unanswered)  # before the labels: a placeholder is not the problem
    if "side" in dataset.sizes and dataset.sizes["side"] != 2:
        raise _Problem(None, None, f"dimension 'side' has size {dataset.sizes['side']}, expected 2")

    for name, (dims, kind) in spec.items():
        if kind == "float":
            values = dataset[name].values
            at = _first(~np.isfinite(values))
            if at is not None:
                position = f" at {_where(dims, at)}" if len(at) > 1 else ""
                raise _Problem(name, at[0], f"value {values[at]}{position} is not finite")

    valid = dataset["valid"].values
    at = _first(~valid.any(axis=-1))  # step is the last segment dim: one flag per item (and side)
    if at is not None:
        side = f" ({_where(spec['valid'].dims[:-1], at)})" if len(at) > 1 else ""
        raise _Problem("valid", at[0], f"segment{side} has no valid step")

    acting = valid & ~dataset["terminal"].values  # next_action is only read after a non-terminal step
    _check_index(dataset, "action", valid, num_actions, "action", "a valid step")
    _check_index(dataset, "next_action", acting, num_actions, "next action", "a valid non-terminal step")
    for name in TABULAR_VARIABLES:
        if name in spec:
            _check_index(dataset, name, valid, num_states, name.replace("_", " "), "a valid step")

    try:
        problems = list(feedback_type.check(dataset))
    except Exception as exc:  # a check that trips over data it did not foresee is still bad data, not a crash
        raise _Problem(None, None, f"the type's own check failed: {exc!r}") from exc
    for variable, item, reason in problems:
        raise _Problem(variable, None if item is None or int(item) < 0 else int(item), reason)


def validate_feedback(feedback: Mapping[str, xr.Dataset], path: str | os.PathLike | None = None, *,
                      allow_unanswered: bool = False) -> None:
    """Check a feedback set against the registered types' schemas; raise on the first problem found.

    Groups are checked in the mapping's order. Within a group: missing variables, dims, dtypes, the
    ``num_actions`` (and optional ``num_states``) attributes, empty groups and the ``side`` size, unanswered
    queries (an optional ``answered`` flag per item, see :data:`ANSWERED`), non-finite floats, segments with no valid
    step (per item, and per side for preferences), action / next-action / state indices, and last the type's own
    ``check`` (first problem in the order it reports them). Within one check the smallest offending item is reported.

    Args:
        feedback: type name -> data set; names must be registered feedback types.
        path: the file the data came from or go to; only used in error messages.
        allow_unanswered: accept items whose ``answered`` flag is False (a query file being filled in); their
            placeholder labels must still be labels the type accepts. Fits never pass it.

    Raises:
        FeedbackDataError: naming the path, group, variable and item index of the first problem.
    """
    if not isinstance(feedback, Mapping) or not feedback:
        raise FeedbackDataError("the feedback set holds no groups", path=path)
    for name, dataset in feedback.items():
        try:
            feedback_type = get_feedback_type(name)
        except KeyError:
            known = ", ".join(sorted(registered()))
            raise FeedbackDataError(
                f"unknown feedback type (registered: {known})", path=path, group=str(name)
            ) from None
        try:
            _check_group(feedback_type, dataset, allow_unanswered)
        except _Problem as problem:
            raise FeedbackDataError(
                problem.reason, path=path, group=name, variable=problem.variable, item=problem.item
            ) from problem.__cause__


# ---------------------------------------------------------------------------------------------- NetCDF I/O


def _encode_attrs(attrs: Mapping[str, Any], variable: str | None) -> dict[str, Any]:
    """Attributes as NetCDF can hold them, plus a JSON record of what NetCDF would change on the way back.
    Problems name ``variable``, or the attribute itself for data-set attributes (``variable`` None)."""
    out: dict[str, Any] = {}
    types: dict[str, Any] = {}
    for key, value in attrs.items():
        owner = key if variable is None else variable
        if key == _ATTR_TYPES:
            raise _Problem(owner, None, f"attribute name {_ATTR_TYPES!r} is reserved")
        if isinstance(value, bool | np.bool_):
            out[key], types[key] = np.int8(value), "bool"
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise _Problem(owner, None, f"attribute {key!r} = {value} does not fit in int64")
            out[key], types[key] = np.int64(value), "int"
        elif isinstance(value, float):
            out[key], types[key] = np.float64(value), "float"
        elif isinstance(value, str | np.number):
            out[key] = value  # numpy scalars come back with their own dtype
        elif isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
            out[key], types[key] = list(value), type(value).__name__  # NetCDF-4 keeps lists of strings
        elif isinstance(value, np.ndarray | list | tuple):
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                raise _Problem(owner, None, f"attribute {key!r} has dtype {array.dtype}; NetCDF needs numbers")
            stored = array.astype(np.int8) if array.dtype == np.bool_ else array
            out[key] = stored.reshape(-1)  # NetCDF attributes are 1-D
            if isinstance(value, np.ndarray):
                types[key] = ["ndarray", array.dtype.str, list(array.shape)]
            else:
                types[key] = type(value).__name__
        else:
            kind = type(value).__name__
            raise _Problem(owner, None, f"attribute {key!r} of type {kind} cannot be stored in NetCDF")
    if len(out) > 1:
        types[_ATTR_TYPES] = list(out)
    if types:
        out[_ATTR_TYPES] = json.dumps(types, sort_keys=True)
    return out


def _decode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Undo :func:`_encode_attrs`; files written by other tools carry no record and come back as read."""
    out = dict(attrs)
    types = json.loads(out.pop(_ATTR_TYPES, "{}"))
    order = types.pop(_ATTR_TYPES, None)
    for key, kind in types.items():
        value = out[key]
        if kind == "bool":
            out[key] = bool(value)
        elif kind == "int":
            out[key] = int(value)
        elif kind == "float":
            out[key] = float(value)
        elif kind in ("list", "tuple"):
            items = value if isinstance(value, list) else np.atleast_1d(np.asarray(value)).tolist()
            out[key] = items if kind == "list" else tuple(items)
        else:  # ["ndarray", dtype, shape]
            _, dtype, shape = kind
            out[key] = np.asarray(value).astype(np.dtype(dtype)).reshape(shape)
    if order is not None and set(order) == set(out):
        out = {key: out[key] for key in order}
    return out


def _for_disk(dataset: xr.Dataset) -> tuple[xr.Dataset, dict[str, dict]]:
    """A shallow copy ready to write (attributes encoded, stale encodings dropped) and its encoding."""
    out = dataset.drop_encoding()  # encodings of an earlier load (chunks, source) must not leak into the file
    out.attrs = _encode_attrs(dataset.attrs, None)
    encoding = {}
    for name, variable in dataset.variables.items():
        out[name].attrs = _encode_attrs(variable.attrs, str(name))
        # No _FillValue: a fill value would turn stored numbers into NaN on the way back.
        encoding[name] = {"_FillValue": None}
        if variable.ndim and variable.dtype.kind in "biuf":
            encoding[name].update(zlib=True, complevel=4, shuffle=True)  # one-hot observations shrink ~15x
    return out, encoding


def _create_temp(directory: str, base: str) -> tuple[str, int]:
    """A new empty file beside the target, created under the user's umask (``mkstemp`` forces mode 0600)."""
    while True:
        temp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return temp, os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue


def save_feedback(path: str | os.PathLike, feedback: Mapping[str, xr.Dataset], *,
                  allow_unanswered: bool = False) -> None:
    """Validate a feedback set and write it atomically as one NetCDF file with one group per type.

    The file is written under a temporary name in the target's directory, flushed to disk and renamed over
    ``path``: a reader never sees a half-written file and a failure leaves any earlier file untouched.

    Args:
        path: the target file (conventionally ``feedback.nc``); its directory must exist.
        feedback: type name -> data set, as :func:`validate_feedback` accepts. Attributes may be numbers,
            strings, bools, numeric numpy arrays and lists of numbers or strings; all round-trip exactly
            through :func:`load_feedback`.
        allow_unanswered: write a query file with unanswered items (:func:`validate_feedback`).

    Raises:
        FeedbackDataError: validation fails or an attribute cannot be stored; nothing is written then.
    """
    path = os.fspath(path)
    validate_feedback(feedback, path, allow_unanswered=allow_unanswered)
    prepared = {}
    for name, dataset in feedback.items():
        try:
            prepared[name] = _for_disk(dataset)
        except _Problem as problem:
            raise FeedbackDataError(problem.reason, path=path, group=name, variable=problem.variable) from None
    directory, base = os.path.split(os.path.abspath(path))
    temp, fd = _create_temp(directory, base)
    try:
        os.close(fd)
        for index, (name, (dataset, encoding)) in enumerate(prepared.items()):
            mode = "w" if index == 0 else "a"
            dataset.to_netcdf(temp, mode=mode, group=name, engine=ENGINE, encoding=encoding)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())  # the data must be on disk before the rename makes them visible
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def _restore(name: str, dataset: xr.Dataset) -> xr.Dataset:
    """Attributes back to what was saved; bool variables that another writer stored as 0/1 integers back to
    bool (xarray itself restores the bools it wrote)."""
    dataset = dataset.drop_encoding()
    dataset.attrs = _decode_attrs(dataset.attrs)
    for variable in dataset.variables.values():
        variable.attrs = _decode_attrs(variable.attrs)
    try:
        spec = schema(get_feedback_type(name), dataset)
    except KeyError:
        return dataset  # validation reports the unknown group
    for var, (_, kind) in spec.items():
        if kind == "bool" and var in dataset.variables:
            values = dataset[var].values
            if np.issubdtype(values.dtype, np.integer) and np.isin(values, (0, 1)).all():
                dataset[var] = dataset[var].astype(bool)
    return dataset


def load_feedback(path: str | os.PathLike, groups: Sequence[str] | None = None, *,
                  allow_unanswered: bool = False) -> dict[str, xr.Dataset]:
    """Read the groups of a feedback file into memory, restore dtypes and attributes, validate the set.

    Args:
        path: a NetCDF-4 file written by :func:`save_feedback` (or by any tool that follows DESIGN §2).
        groups: read only these groups; ``None``: all.
        allow_unanswered: read a query file with unanswered items, to fill them in (:func:`validate_feedback`).

    Returns:
        Type name -> data set, in the file's group order, fully loaded (no file handle stays open).

    Raises:
        FeedbackDataError: the file is missing, is not NetCDF-4/HDF5, holds no groups (or not a requested one), or
            fails validation.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FeedbackDataError("no such file", path=path)
    try:
        names = list(group_headers(path))
    except Exception as exc:  # netCDF-C's OSError: not a readable NetCDF-4 file
        raise FeedbackDataError(f"cannot read as NetCDF-4: {exc}", path=path) from None
    if not names:
        raise FeedbackDataError("the file holds no feedback groups", path=path)
    if groups is not None:
        for name in groups:
            if name not in names:
                raise FeedbackDataError(f"no such group (the file holds {', '.join(names)})", path=path, group=name)
        names = [name for name in names if name in groups]
    feedback = {}
    for name in names:
        try:
            # No time decoding: a float variable with units "seconds" must stay a float, not a timedelta.
            dataset = xr.load_dataset(path, group=name, engine=ENGINE, decode_times=False, decode_timedelta=False)
        except Exception as exc:
            raise FeedbackDataError(f"cannot read the group: {exc}", path=path, group=name) from None
        feedback[name] = _restore(name, dataset)
    validate_feedback(feedback, path, allow_unanswered=allow_unanswered)
    return feedback


# ---------------------------------------------------------------------------------------------- simulation


def _type_rng(root: int, name: str) -> np.random.Generator:
    """An independent stream per type, keyed by its name, so one type's data do not depend on which other
    types are asked for: the pref data of a pref-only run equal those of an all-types run with the same seed.
    """
    return np.random.default_rng(np.random.SeedSequence(root, spawn_key=(zlib.crc32(name.encode()),)))


def simulate_feedback(
    teacher: Any,
    counts: Mapping[str, int],
    rng: np.random.Generator,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    teacher_settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, xr.Dataset]:
    """Simulate a feedback set: each requested type's ``simulate`` with its defaults updated by ``settings``.

    Teacher != model (misspecification): ``teacher_settings`` changes what the simulated teacher *does* and not what
    the model *assumes*. A type with teacher settings is simulated twice on the same random stream: with ``settings``
    (the model's assumption) and with ``settings`` updated by ``teacher_settings`` (the teacher). Its data are the
    teacher's; its attributes, which the model reads (``beta``, ``lambda``, ...), are those of the assumed
    simulation; every attribute of the teacher's simulation that differs, and every teacher setting, is recorded
    beside them as ``teacher_<name>``. The simulators draw their segments first, so quantities calibrated on the
    segments agree: e.g. the stop teacher's ``c = 0.1`` gives ``teacher_lambda = 0.1 / ref`` while ``lambda =
    2.0 / ref`` with the same ``ref``. Any 20 % held-out split of the items is then a split of the teacher's data.

    Args:
        teacher: what the simulators query (e.g. :class:`~mavrl_ppl.feedback.teachers.TabularTeacher`).
        counts: type name -> number of items (pairs, episodes, segments), in the order wanted; zero counts
            are skipped.
        rng: the only source of randomness; one draw from it seeds an independent stream per type.
        settings: type name -> simulator settings overriding the type's ``defaults``
            (e.g. ``{"pref": {"beta": 1.0}}``): the teacher's and the model's.
        teacher_settings: type name -> simulator settings of the teacher alone (e.g. ``{"pref": {"beta": 0.01}}``).

    Returns:
        Type name -> data set, in the order of ``counts``.

    Raises:
        KeyError: a name in ``counts``, ``settings`` or ``teacher_settings`` is not a registered type (checked
            before any work).
        ValueError: a count that is not a non-negative integer, or a setting the type's simulator does not take.
    """
    settings, teacher_settings = dict(settings or {}), dict(teacher_settings or {})
    for name in [*counts, *settings, *teacher_settings]:
        get_feedback_type(name)  # KeyError naming the type
    for name, options in [*settings.items(), *teacher_settings.items()]:
        accepted = _simulator_settings(get_feedback_type(name).simulate)
        unknown = sorted(set(options) - accepted) if accepted is not None else []
        if unknown:
            raise ValueError(f"{name}: unknown simulator setting(s) {unknown}; known: {sorted(accepted)}")
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise ValueError(f"count for {name!r} must be a non-negative integer, got {count!r}")
    root = int(rng.integers(2**63))
    out = {}
    for name, count in counts.items():
        if count == 0:
            continue
        feedback_type = get_feedback_type(name)
        options = {**feedback_type.defaults, **settings.get(name, {})}
        out[name] = feedback_type.simulate(teacher, int(count), _type_rng(root, name), **options)
        if teacher_settings.get(name):
            actual = feedback_type.simulate(teacher, int(count), _type_rng(root, name),
                                            **{**options, **teacher_settings[name]})
            out[name] = _as_assumed(actual, out[name].attrs, teacher_settings[name])
    return out


def _as_assumed(actual: xr.Dataset, assumed: Mapping[str, Any], teacher: Mapping[str, Any]) -> xr.Dataset:
    """The teacher's data with the model's attributes, the teacher's own values beside them as ``teacher_<name>``."""
    attrs = dict(assumed)
    for key, value in actual.attrs.items():
        if key not in assumed or not np.array_equal(np.asarray(value), np.asarray(assumed[key])):
            attrs[f"teacher_{key}"] = value
    for key, value in teacher.items():
        attrs.setdefault(f"teacher_{key}", value)
    out = actual.copy()
    out.attrs = attrs  # the assumed values replace the teacher's, not merely update them
    return out


def _simulator_settings(simulate: Any) -> set[str] | None:
    """The keyword settings a simulator takes (after ``teacher, count, rng``); ``None`` if it takes ``**kwargs``."""
    parameters = list(inspect.signature(simulate).parameters.values())[3:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                      inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def parse_counts(spec: str, known: Iterable[str] | None = None) -> dict[str, int]:
    """Parse a ``--feedback`` value such as ``"pref=64,demo=1,rating=64,stop=256"``.

    Args:
        spec: comma-separated ``name=count`` pieces; whitespace around names and counts is ignored, counts
            are integers >= 0.
        known: if given, the accepted type names (e.g. ``registered()``); other names are rejected.

    Returns:
        Type name -> count, in the order written.

    Raises:
        ValueError: naming the first malformed piece (no ``=``, empty name, a count that is not an integer
            or is negative, a name given twice, an unknown name).
    """
    known = None if known is None else set(known)
    counts: dict[str, int] = {}
    for piece in spec.split(","):
        name, sep, value = (part.strip() for part in piece.partition("="))

        def bad(why: str, piece: str = piece) -> ValueError:
            return ValueError(f"bad feedback count {piece.strip()!r} in {spec!r}: {why}")

        if not sep or not name:
            raise bad("expected name=count")
        try:
            count = int(value)
        except ValueError:
            raise bad("the count is not an integer") from None
        if count < 0:
            raise bad("the count is negative")
        if name in counts:
            raise bad(f"{name!r} is given twice")
        if known is not None and name not in known:
            raise bad(f"unknown feedback type (known: {', '.join(sorted(known))})")
        counts[name] = count
    return counts
