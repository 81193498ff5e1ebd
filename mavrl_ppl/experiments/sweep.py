"""``python -m mavrl_ppl.experiments.sweep``: one Optuna study for one table cell (env x feedback subset x mode).

::

    python -m mavrl_ppl.experiments.sweep --env grid_trap --subset pdrs --mode fixed \\
        [--storage runs/studies.journal | sqlite:///studies.db | postgresql://...] [--study NAME] \\
        [--trials 50] [--seeds 3] [--objective nll|score] [--holdout fresh|split]

A trial draws the model's hyper-parameters (``learning_rate``, ``batch_size``, ``hidden``, ``kl_weight``,
``td_weight``; ranges around the current :class:`~mavrl_ppl.inference.svi.SVISettings` defaults, see
:func:`search_space`), and in ``budget`` mode also the split of the budget over the active types (a Dirichlet(1)
draw under the sampler's uniform start, see :func:`counts_for`). It simulates the feedback of seeds ``0..K-1``, fits
each by SVI (fit seed = data seed) and scores the trial by the mean over those seeds of:

- ``--objective nll`` (default; needs no ground truth): the negative log-likelihood of *held-out feedback* under the
  kept (best-validation) model, summed over the active types (each type's per-item mean). ``--holdout fresh``
  (default) holds out a separate feedback set simulated from an independent stream, at the fixed allocation of the
  active types — the same set for every trial, whatever the trial's allocation, so budget-mode trials are comparable
  and a single demonstration episode is still scored. ``--holdout split`` uses the fit's own validation split (the
  best value of ``history["validation"]``; what one would use on human data with no second data set; types with too
  few items to hold any out are not scored).
- ``--objective score`` (simulation only): the normalised score under the true reward. Every table built from such
  studies says so in its caption.

Trials record user attributes: ``counts``, per-seed and mean ``holdout_nll`` / ``validation_nll`` /
``normalized_score`` / ``epic`` (the score is always recorded for inspection, but only selects with
``--objective score``), ``fit_seconds``, and the worker (host, pid, heartbeat). A trial whose fit raises is marked
FAIL with the exception in its ``error`` attribute; nothing is dropped.

**``--trials N`` semantics.** N is the number of *finished* trials the study should hold in total — COMPLETE, or
FAIL with an ``error`` (the hyper-parameters ran and failed). The command runs trials until that count reaches N,
so rerunning the same command continues a study, and several workers (processes or machines) on one storage share
the work: a worker starts a trial only while finished + running < N, and a trial that finds, once created, that
the trials numbered before it already make N is closed at once as FAIL with a ``surplus`` attribute (never fitted,
not counted). So the study ends with exactly N counted trials unless a worker dies mid-trial. Interrupted trials —
Ctrl-C, or a worker that died — are FAIL with an ``interrupted`` attribute and are not counted either: a worker
finds RUNNING trials of dead processes on its own host at once (pid check) and those of other hosts when their
heartbeat (refreshed every ``--heartbeat`` seconds) is older than ``--stale-after`` seconds.

Storage: a path means Optuna's journal file (default ``runs/studies.journal``); a URL (``sqlite:///...``,
``postgresql://USER@HOST:PORT/DB``) means Optuna's RDB storage. PostgreSQL is the one for workers on several machines
(``postgresql://`` is opened with psycopg 3). If the storage fails mid-study (the database stopped, the connection
lost), a worker stops with one line ``error: the study storage ... failed: <cause>`` and exit status 1: every
finished trial is in the database already; the trial it was running stays RUNNING until the next worker marks it
interrupted (on this host at once, elsewhere after ``--stale-after``), so rerunning the command once the database is
back continues the study. A study stores its cell (env, subset, mode, objective, seeds, the
complete SVI base settings) and search space; rerunning under the same name with anything different is an error
(exit 2), e.g. after the SVI defaults changed: use a new ``--study`` name.

A worker killed while writing to a journal file can leave its last line cut short. Every command that opens the
journal (this one, :mod:`mavrl_ppl.experiments.tables`) and every write first cuts such a damaged tail off (the
bytes are kept in ``<journal>.damaged-<time>-<pid>`` beside it) and says so in one warning line; the studies go on
from their last whole record: nothing but the interrupted write is lost. A journal damaged before its last record is
refused (exit 2, naming the line): restore it from a copy.

Exit status: 0 done, 2 bad arguments or a journal damaged before its last record, 1 the storage failed or
anything else, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    distribution_to_json,
)
from optuna.trial import FrozenTrial, TrialState

from mavrl_ppl.errors import DamagedFileError
from mavrl_ppl.errors import UsageError as BaseUsageError
from mavrl_ppl.experiments.budget import (
    allocate_budget,
    default_budget,
    default_caps,
    env_family,
    fixed_counts,
    parse_subset,
    subset_name,
)
from mavrl_ppl.rundirs import pid_alive

if TYPE_CHECKING:
    from mavrl_ppl.inference.svi import SVISettings

DEFAULT_STORAGE = "runs/studies.journal"
SEARCHED = ("learning_rate", "batch_size", "hidden", "kl_weight", "td_weight")  # SVISettings fields searched
ALLOC_PREFIX = "alloc_"  # budget-mode parameters: alloc_<type> in (0, 1], weight -log(u)
ALLOC_LOW = 1e-6
HOLDOUT_STREAM = 0x401D0  # the held-out feedback of seed s is simulated from default_rng([HOLDOUT_STREAM, s])
SPEC_VERSION = 1


class UsageError(BaseUsageError):
    """Bad arguments or a study that does not match them: one line, exit status 2."""


# ------------------------------------------------------------------------------------------------ the cell


@dataclass(frozen=True)
class CellSpec:
    """Everything that defines one table cell's study (stored in the study's user attributes).

    Attributes:
        env: tabular env name (``grid_trap``, ``chain``, ...).
        env_size: grid side / chain length, ``None`` for the env's default.
        p_rand: probability of a random move.
        subset: canonical subset name (:func:`~mavrl_ppl.experiments.budget.subset_name`).
        mode: ``fixed`` (REFERENCE §3 counts) or ``budget`` (a searched split of ``budget`` items).
        objective: ``nll`` (held-out negative log-likelihood, minimised) or ``score`` (normalised score, maximised).
        holdout: ``fresh`` (a separate simulated feedback set) or ``split`` (the fit's validation split).
        seeds: data/fit seeds ``0..seeds-1`` averaged in each trial.
        budget: total items in budget mode (``None`` in fixed mode).
        caps: per-type caps in budget mode.
        base_settings: every SVISettings field not searched (resolved at study creation).
    """

    env: str
    env_size: int | None
    p_rand: float
    subset: str
    mode: str
    objective: str
    holdout: str
    seeds: int
    budget: int | None = None
    caps: dict[str, int] = field(default_factory=dict)
    base_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def types(self) -> tuple[str, ...]:
        return parse_subset(self.subset)

    @property
    def direction(self) -> str:
        return "maximize" if self.objective == "score" else "minimize"

    @property
    def env_label(self) -> str:
        return self.env if self.env_size is None else f"{self.env} (size {self.env_size})"

    def to_json(self) -> str:
        return json.dumps({"version": SPEC_VERSION, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        data = json.loads(text)
        data.pop("version", None)
        return cls(**data)


def search_space(defaults: SVISettings, types: Sequence[str] = (), mode: str = "fixed") -> dict[str, BaseDistribution]:
    """The searched hyper-parameters, with ranges set around ``defaults`` (never hard-coded).

    ``learning_rate``, ``kl_weight``, ``td_weight``: log-uniform over [default / 10, default * 10] (a weight whose
    default is 0 is not searched, nor ``td_weight`` under ``q_model="planner"``, which has no Bellman term to weigh);
    ``batch_size``: the powers-of-two multiples default/4 .. default*4 (at least 8);
    ``hidden``: default/2, default, default*2. In budget mode with more than one active type, ``alloc_<type>`` is
    uniform on (0, 1]: the weights ``-log(u)`` are then independent Exp(1), so the normalised split is a Dirichlet(1)
    draw until the sampler starts to model the good region.
    """
    space: dict[str, BaseDistribution] = {}
    for name in ("learning_rate", "kl_weight", "td_weight"):
        value = float(getattr(defaults, name))
        if name == "td_weight" and defaults.q_model == "planner":
            continue
        if value > 0:
            space[name] = FloatDistribution(value / 10.0, value * 10.0, log=True)
    batch = int(defaults.batch_size)
    space["batch_size"] = CategoricalDistribution(sorted({max(8, int(batch * f)) for f in (0.25, 0.5, 1, 2, 4)}))
    hidden = int(defaults.hidden)
    space["hidden"] = CategoricalDistribution(sorted({max(4, int(hidden * f)) for f in (0.5, 1, 2)}))
    if mode == "budget" and len(types) > 1:
        for t in types:
            space[f"{ALLOC_PREFIX}{t}"] = FloatDistribution(ALLOC_LOW, 1.0)
    return space


def default_params(defaults: SVISettings, space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """The point of ``space`` at the SVI defaults (and an equal budget split): the study's first, enqueued trial."""
    params: dict[str, Any] = {}
    for name in space:
        params[name] = math.exp(-1.0) if name.startswith(ALLOC_PREFIX) else getattr(defaults, name)
    return params


def suggest(trial: optuna.Trial, space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """Draw every parameter of ``space`` through the trial's public ``suggest_*`` methods."""
    params: dict[str, Any] = {}
    for name, dist in space.items():
        if isinstance(dist, FloatDistribution):
            params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, list(dist.choices))
        else:  # pragma: no cover - search_space builds only these two
            raise TypeError(f"unsupported distribution for {name}: {dist!r}")
    return params


def counts_for(spec: CellSpec, params: Mapping[str, Any]) -> dict[str, int]:
    """The feedback counts of a trial: REFERENCE §3 in fixed mode; in budget mode the budget split in proportion to
    the weights ``-log(alloc_<type>)`` with caps (:func:`~mavrl_ppl.experiments.budget.allocate_budget`)."""
    if spec.mode == "fixed":
        return fixed_counts(spec.env, spec.subset)
    types = spec.types
    weights = {t: -math.log(float(params.get(f"{ALLOC_PREFIX}{t}", math.exp(-1.0)))) for t in types}
    return allocate_budget(int(spec.budget or 0), weights, spec.caps)


def make_settings(spec: CellSpec, params: Mapping[str, Any]) -> SVISettings:
    """SVISettings of a trial: the study's base settings with the trial's searched values."""
    from mavrl_ppl.inference.svi import SVISettings

    svi = {k: v for k, v in params.items() if not k.startswith(ALLOC_PREFIX)}
    return SVISettings(**{**spec.base_settings, **svi, "progress_bar": False})


# ------------------------------------------------------------------------------------------------ evaluation


def _holdout_nll(model: Any, holdout: Mapping[str, Any]) -> float:
    import torch

    from mavrl_ppl.inference.data import to_tensors

    with torch.no_grad():
        return float(sum(-model.predictive_log_likelihood(name, to_tensors(name, ds)).mean()
                         for name, ds in holdout.items()))


def evaluate_settings(
    spec: CellSpec,
    settings: SVISettings,
    counts: Mapping[str, int],
    seeds: Sequence[int],
    *,
    holdout: bool = True,
    score: bool = True,
    catch: bool = False,
) -> dict[str, list]:
    """Simulate, fit and evaluate ``settings`` on each seed (data seed = fit seed = ``s``).

    Args:
        spec: the cell (env, subset).
        settings: SVI settings.
        counts: feedback counts per type.
        seeds: the seeds.
        holdout: also compute the held-out NLL on the fresh held-out set of each seed.
        score: also compute the normalised score and EPIC of the posterior-mean reward (uses the true reward).
        catch: record a failing seed (``error`` list) instead of raising.

    Returns:
        Per-seed lists: ``seed``, ``validation_nll`` (best of the fit's validation history), ``holdout_nll``,
        ``normalized_score``, ``epic``, ``fit_seconds``, ``steps``, ``best_step`` (NaN where not computed or
        failed) and ``error`` (``None`` or the message).
    """
    import dataclasses

    from mavrl_ppl import runs
    from mavrl_ppl.envs.allocation import format_counts
    from mavrl_ppl.feedback import TabularTeacher
    from mavrl_ppl.feedback.data import simulate_feedback

    svi = {k: v for k, v in dataclasses.asdict(settings).items() if k != "progress_bar"}
    keys = ("validation_nll", "holdout_nll", "normalized_score", "epic", "fit_seconds", "steps", "best_step")
    out: dict[str, list] = {"seed": [], "error": [], **{k: [] for k in keys}}
    for s in seeds:
        row = dict.fromkeys(keys, math.nan)
        error = None
        try:
            config = runs.resolve_config({"env": spec.env, "env_size": spec.env_size, "p_rand": spec.p_rand,
                                          "seed": int(s), "feedback": format_counts(counts), "svi": svi})
            problem = runs.make_problem(config)
            fitted = runs.fit_problem(problem)
            m = fitted.metrics
            row.update(validation_nll=float(fitted.idata["elbo"]["validation_nll"].min()),
                       fit_seconds=m["fit_seconds"], steps=m["steps"], best_step=m["best_step"])
            if holdout:
                held = simulate_feedback(TabularTeacher(problem.mdp), fixed_counts(spec.env, spec.subset),
                                         np.random.default_rng([HOLDOUT_STREAM, int(s)]))
                row["holdout_nll"] = _holdout_nll(fitted.model, held)
            if score:  # reported beside the objective; selects nothing unless the study's objective is the score
                row.update(normalized_score=m["normalized_score"], epic=m["epic"])
        except Exception as exc:
            if not catch:
                raise
            error = f"{type(exc).__name__}: {exc}"
        out["seed"].append(int(s))
        out["error"].append(error)
        for k in keys:
            out[k].append(float(row[k]))
    return out


def objective_value(spec: CellSpec, evaluation: Mapping[str, list]) -> float:
    """The trial's value: the mean over seeds of the objective's per-seed quantity."""
    key = "normalized_score" if spec.objective == "score" else (
        "holdout_nll" if spec.holdout == "fresh" else "validation_nll")
    value = float(np.mean(evaluation[key]))
    if not math.isfinite(value):
        raise FloatingPointError(f"the objective {key} is {value}")
    return value


# ------------------------------------------------------------------------------------------------ storage


#: Attempts at opening an RDB storage: workers started together race to create Optuna's tables, and the losers see a
#: unique-key violation (measured: 2 of 3 PostgreSQL workers started at once); by the next attempt the tables exist.
RDB_ATTEMPTS = 5
# The PostgreSQL advisory-lock key under which workers open a study storage one at a time ("mavr" in ASCII).
SCHEMA_LOCK = 0x6D617672


def _open_rdb(url: str) -> optuna.storages.BaseStorage:
    """Optuna's RDB storage for ``url``. Opening it creates Optuna's tables if they are missing, and several workers
    started together on a fresh database race to create them: on PostgreSQL they take turns under an advisory lock
    (released by the server if a worker dies holding it); elsewhere (SQLite) a failed creation is retried."""
    import sqlalchemy
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    url, options = _rdb_url(url)
    with contextlib.ExitStack() as stack:
        if url.startswith("postgresql+"):
            engine = sqlalchemy.create_engine(url, **options)
            stack.callback(engine.dispose)
            connection = stack.enter_context(engine.connect())
            lock = {"key": SCHEMA_LOCK}
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), lock)
            stack.callback(connection.execute, sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), lock)
        for attempt in range(RDB_ATTEMPTS):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=options)
            except (IntegrityError, ProgrammingError):
                if attempt == RDB_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(target: str | os.PathLike) -> optuna.storages.BaseStorage:
    """A journal-file storage for a path, Optuna's RDB storage for a URL (``sqlite:///``, ``postgresql://``).

    A journal file is checked first (:func:`repair_journal`): a damaged tail (a record cut short by a killed worker,
    or garbage after the last record) is moved aside into ``<file>.damaged-<time>`` with a warning on stderr, and the
    study goes on from its last whole record; damage in the middle raises :class:`DamagedFileError`.

    Raises:
        DamagedFileError: a journal that is damaged before its last record, or cannot be read or created.
    """
    text = str(target)
    if "://" in text:
        return _open_rdb(text)
    path = Path(text)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = RepairingJournalBackend(str(path))
    except OSError as exc:
        raise DamagedFileError(path, f"cannot open the journal: {exc.strerror or exc}") from None
    backend.repair()
    return optuna.storages.JournalStorage(backend)


def _is_record(line: bytes) -> bool:
    """Whether a journal line (with its newline) is one of Optuna's records: a JSON object with an ``op_code``."""
    if not line.endswith(b"\n"):
        return False
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
    return isinstance(record, dict) and isinstance(record.get("op_code"), int)


def repair_journal(path: str | os.PathLike, *, quiet: bool = False) -> int:
    """Cut a damaged tail off an Optuna journal file; returns the bytes cut (0: the file was whole).

    The tail from the first line that is not a whole record to the end of the file is moved into
    ``<file>.damaged-<YYYYmmdd-HHMMSS>`` (kept, never deleted) and the file is truncated after its last whole record,
    so the study loads as it was before the damaged write. Call it only while holding the journal's lock
    (:class:`RepairingJournalBackend` does).

    Raises:
        DamagedFileError: a line that is not a record is followed by records (the damage is not a tail: later
            records may depend on the lost one, so nothing is changed), or the file cannot be read.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise DamagedFileError(path, f"cannot read the journal: {exc.strerror or exc}") from None
    lines = data.splitlines(keepends=True)
    good_end, first_bad = 0, None
    for number, line in enumerate(lines, start=1):
        if _is_record(line):
            if first_bad is not None:
                raise DamagedFileError(path, f"line {first_bad} of the journal is not a whole record, and whole "
                                             f"records follow it (line {number}); it cannot be repaired without "
                                             "losing them: restore the file from a copy or use another --storage")
            good_end += len(line)
        elif first_bad is None:
            first_bad = number
    if first_bad is None:
        return 0
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    aside.write_bytes(data[good_end:])
    os.truncate(path, good_end)
    if not quiet:
        print(f"warning: {path}: cut a damaged tail off the journal ({len(data) - good_end} bytes from line "
              f"{first_bad}, e.g. a write cut short by a killed worker; kept in {aside.name}); the studies continue "
              "from the last whole record", file=sys.stderr, flush=True)
    return len(data) - good_end


class RepairingJournalBackend(optuna.storages.journal.JournalFileBackend):
    """Optuna's journal file, with a damaged tail cut off before any write (:func:`repair_journal`).

    Optuna appends each record as one line; a worker killed in the middle of a write leaves a line without its end,
    and the next append would glue a whole record to it, so that the study could no longer be read. Here every
    append first checks, under the journal's lock, that the file ends with a whole record.
    """

    def __init__(self, file_path: str) -> None:
        self._path = file_path
        self._file_lock = optuna.storages.journal.JournalFileSymlinkLock(file_path)
        super().__init__(file_path, lock_obj=self._file_lock)

    def repair(self) -> int:
        """:func:`repair_journal` under the journal's lock."""
        self._file_lock.acquire()
        try:
            return repair_journal(self._path)
        finally:
            self._file_lock.release()

    def _tail_is_whole(self) -> bool:
        with open(self._path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return True
            handle.seek(max(0, size - 65536))
            tail = handle.read()
        last = tail.splitlines(keepends=True)[-1]
        return _is_record(last) and (len(last) < len(tail) or size <= 65536)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._file_lock.acquire()
        try:
            if not self._tail_is_whole():
                repair_journal(self._path)
            text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            with open(self._path, "ab") as handle:  # the format of Optuna's own JournalFileBackend.append_logs
                handle.write(text.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            self._file_lock.release()


#: Seconds a PostgreSQL connection attempt may take before the worker gives up (libpq's default waits forever).
CONNECT_TIMEOUT = 10


def _rdb_url(url: str) -> tuple[str, dict[str, Any]]:
    """An RDB URL as SQLAlchemy should open it, and its engine options.

    ``postgresql://`` (SQLAlchemy's default driver there is psycopg2, which this package does not install) goes to
    psycopg 3 (``postgresql+psycopg://``); PostgreSQL connections are checked before use (``pool_pre_ping``: a
    server restarted under a long-lived worker costs no failed call) and give up after :data:`CONNECT_TIMEOUT`
    seconds.
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url.removeprefix(prefix)
    if url.startswith("postgresql+"):
        return url, {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
    return url, {}


def storage_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean the study's storage failed (a database gone, a connection lost), not a trial."""
    import sqlalchemy.exc

    return (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)


def describe_storage_error(exc: BaseException) -> str:
    """One line naming a storage failure by its root cause.

    Optuna's wrapper only says a commit failed, and a connection lost mid-query often surfaces as SQLAlchemy's
    ``PendingRollbackError`` raised while Optuna retries; the database's own error is further down the chain
    (``__cause__`` or ``__context__``). The first SQLAlchemy ``DBAPIError`` on the chain is named by its SQLAlchemy
    class (``OperationalError`` for every lost connection, whichever driver) with the driver's message.
    """
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    cause = next((e for e in chain if getattr(e, "orig", None) is not None), None)
    if cause is not None:  # SQLAlchemy's DBAPIError wraps the driver's exception
        text = " ".join(str(cause.orig).split())  # type: ignore[attr-defined]
        return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    cause = next((e for e in chain if not isinstance(e, optuna.exceptions.StorageInternalError)), chain[-1])
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


class _DropLostConnectionRetry(logging.Filter):
    """Drops Optuna's "Caught an error from sqlalchemy ... Falling back" warning.

    Optuna reads any ``OperationalError`` while listing trials as a too-long ``IN`` clause and retries; with the
    database gone the retry fails too, and the worker's own one-line error names the cause. The warning would only
    put a multi-line SQL dump in front of it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Caught an error from sqlalchemy")


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """Optuna's TPE sampler, re-seeded for every trial from ``(seed, trial number)``.

    A study run by one worker is reproducible; concurrent workers draw different trial numbers, so they never start
    from the same random state (with one seeded sampler per worker they would propose identical points).
    """

    def __init__(self, seed: int) -> None:
        self._seed = int(seed)
        self._inner = optuna.samplers.TPESampler(seed=self._seed)

    def _for(self, number: int) -> optuna.samplers.TPESampler:
        seed = int(np.random.SeedSequence([self._seed, int(number)]).generate_state(1)[0])
        return optuna.samplers.TPESampler(seed=seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._for(trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)


#: Seconds after which a RUNNING trial that no worker has claimed is taken as lost: a worker claims its trial a few
#: database round trips after asking for it, so a trial left unclaimed lost its worker in between (the CI's
#: database-outage test once hit that window: the rerun then waited on the orphan as if another worker ran it).
UNCLAIMED_AFTER = 30.0


def is_counted(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards ``--trials``: COMPLETE, or FAIL because its fit raised (``error``)."""
    return trial.state == TrialState.COMPLETE or (trial.state == TrialState.FAIL and "error" in trial.user_attrs)


def claimed(trial: FrozenTrial) -> bool:
    """Whether a worker has put its host on the trial (the first thing it does after asking for it)."""
    return "worker_host" in trial.user_attrs


def fail_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, stale_after: float,
                      unclaimed_after: float = UNCLAIMED_AFTER) -> list[int]:
    """Mark as FAIL (attribute ``interrupted``) the RUNNING trials whose worker is gone.

    A worker on this host is gone when its pid is not running; on any host, when its heartbeat (or, before the
    first heartbeat, the trial's start) is older than ``stale_after`` seconds. A trial that no worker has claimed
    (:func:`claimed`) ``unclaimed_after`` seconds after its start lost its worker between asking and claiming.

    Returns:
        The numbers of the trials marked.
    """
    host, now = socket.gethostname(), time.time()
    study_id = storage.get_study_id_from_name(study.study_name)
    marked = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.user_attrs
        reason = None
        started = t.datetime_start.timestamp() if t.datetime_start is not None else now
        if attrs.get("worker_host") == host and "worker_pid" in attrs and not pid_alive(int(attrs["worker_pid"])):
            reason = f"worker {host}:{attrs['worker_pid']} is gone"
        elif not claimed(t) and now - started > unclaimed_after:
            reason = f"no worker claimed it within {unclaimed_after:g} s of its start"
        else:
            last = attrs.get("heartbeat", started)  # before the first heartbeat, the trial's start
            if now - float(last) > stale_after:
                reason = f"no heartbeat for {now - float(last):.0f} s (worker {attrs.get('worker_host')}:" \
                         f"{attrs.get('worker_pid')})"
        if reason is None:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            storage.set_trial_user_attr(trial_id, "interrupted", reason)
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                marked.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            pass
    return marked


class _Heartbeat:
    """Refreshes the trial's ``heartbeat`` attribute every ``interval`` seconds from a background thread."""

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self._trial, self._interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._trial.set_user_attr("heartbeat", time.time())
            except Exception:  # the storage is briefly unavailable: the next beat tries again
                continue

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _differences(stored: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(key, stored, wanted)`` for every differing setting, nested tables by dotted key (``base_settings.guide``)."""
    out = []
    for key in sorted({*stored, *wanted}):
        a, b = stored.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def _fill_later_settings(stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Give a study's stored ``base_settings`` the SVI settings added to the package after it was created, where the
    current value is that setting's default: a new setting's default keeps the old behaviour, so such a study ran
    with it (without this, every new option would orphan every existing study)."""
    from mavrl_ppl.inference.svi import SVISettings

    old, new = stored.get("base_settings"), wanted.get("base_settings")
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return
    defaults = {f.name: f.default for f in fields(SVISettings)}
    for key in new.keys() - old.keys():
        if key in defaults and new[key] == defaults[key]:
            old[key] = new[key]


def _load_or_create(storage: optuna.storages.BaseStorage, name: str, spec: CellSpec,
                    space: Mapping[str, BaseDistribution], defaults: SVISettings, sampler_seed: int) -> optuna.Study:
    """Create the study (storing its spec and space, enqueuing the defaults) or load it and check it matches."""
    sampler = TrialSeededTPE(sampler_seed)
    space_json = json.dumps({k: distribution_to_json(v) for k, v in space.items()}, sort_keys=True)
    try:
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, direction=spec.direction)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    else:
        study.set_user_attr("spec", spec.to_json())
        study.set_user_attr("search_space", space_json)
        study.enqueue_trial(default_params(defaults, space), user_attrs={"enqueued": "SVISettings defaults"})
        return study
    for _ in range(100):  # a worker that just created the study may not have written its attributes yet
        if "spec" in study.user_attrs and "search_space" in study.user_attrs:
            break
        time.sleep(0.1)
    else:
        raise UsageError(f"study {name!r} exists but was not made by this command (no 'spec' attribute)")
    stored = json.loads(study.user_attrs["spec"])
    stored.pop("version", None)
    wanted = json.loads(spec.to_json())
    wanted.pop("version", None)
    _fill_later_settings(stored, wanted)
    diff = _differences(stored, wanted)
    if diff:
        details = "; ".join(f"{k}: study {a!r} vs now {b!r}" for k, a, b in diff)
        raise UsageError(f"study {name!r} was created with different settings ({details}); use another --study name")
    if study.user_attrs["search_space"] != space_json:
        raise UsageError(f"study {name!r} was created with a different search space (did the SVISettings defaults "
                         "change?); use another --study name")
    return study


# ------------------------------------------------------------------------------------------------ the loop


def _progress(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def run_study(
    spec: CellSpec,
    storage_target: str | os.PathLike,
    study_name: str,
    trials: int,
    *,
    sampler_seed: int = 0,
    stale_after: float = 600.0,
    heartbeat: float = 30.0,
    quiet: bool = False,
) -> optuna.Study:
    """Run trials of the cell's study until it holds ``trials`` counted trials (see the module docstring)."""
    from mavrl_ppl.inference.svi import SVISettings

    defaults = SVISettings(**{**spec.base_settings, "progress_bar": False})
    space = search_space(defaults, spec.types, spec.mode)
    storage = open_storage(storage_target)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # this loop prints its own line per trial
    rdb_logger = logging.getLogger("optuna.storages._rdb.storage")
    if not any(isinstance(f, _DropLostConnectionRetry) for f in rdb_logger.filters):
        rdb_logger.addFilter(_DropLostConnectionRetry())
    study = _load_or_create(storage, study_name, spec, space, defaults, sampler_seed)
    host, pid = socket.gethostname(), os.getpid()
    while True:
        for number in fail_stale_trials(study, storage, stale_after):
            _progress(f"[{study_name}] trial {number}: its worker is gone; marked FAIL (interrupted, not counted)",
                      quiet)
        current = study.get_trials(deepcopy=False)
        done = sum(map(is_counted, current))
        running = [t for t in current if t.state == TrialState.RUNNING]
        if done + len(running) >= trials:
            if done < trials and not all(map(claimed, running)):
                time.sleep(1.0)  # a young unclaimed trial: claimed soon, or marked lost after UNCLAIMED_AFTER
                continue
            _progress(f"[{study_name}] {done} of {trials} trials finished"
                      + (f", {len(running)} running in other workers" if running else "") + "; nothing more to start",
                      quiet)
            return study
        trial = study.ask()
        current = study.get_trials(deepcopy=False)
        ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in current)
        if sum(map(is_counted, current)) + ahead >= trials:  # another worker took the last slot meanwhile
            trial.set_user_attr("surplus", f"{trials} trials were finished or running when this one started")
            study.tell(trial, state=TrialState.FAIL)
            continue
        trial.set_user_attr("worker_host", host)
        trial.set_user_attr("worker_pid", pid)
        trial.set_user_attr("heartbeat", time.time())
        t0 = time.perf_counter()
        try:
            with _Heartbeat(trial, heartbeat):
                params = suggest(trial, space)
                counts = counts_for(spec, params)
                trial.set_user_attr("counts", counts)
                evaluation = evaluate_settings(spec, make_settings(spec, params), counts, range(spec.seeds),
                                               holdout=spec.holdout == "fresh")
                for key in ("validation_nll", "holdout_nll", "normalized_score", "epic"):
                    if not all(math.isnan(v) for v in evaluation[key]):
                        trial.set_user_attr(key, float(np.mean(evaluation[key])))
                        trial.set_user_attr(f"{key}_per_seed", evaluation[key])
                trial.set_user_attr("fit_seconds", float(np.sum(evaluation["fit_seconds"])))
                value = objective_value(spec, evaluation)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", "KeyboardInterrupt")
            study.tell(trial, state=TrialState.FAIL)
            raise
        except storage_errors():  # the storage failed, not the trial: left RUNNING, later marked interrupted
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            study.tell(trial, state=TrialState.FAIL)
            _progress(f"[{study_name}] trial {trial.number}: FAIL ({type(exc).__name__}: {exc})", quiet)
            continue
        study.tell(trial, value)
        done = sum(map(is_counted, study.get_trials(deepcopy=False)))
        shown = {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in params.items()}
        _progress(f"[{study_name}] trial {trial.number}: {spec.objective} {value:.4f} ({done}/{trials} done, "
                  f"{time.perf_counter() - t0:.1f} s) counts {counts} params {shown}", quiet)


# ------------------------------------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mavrl_ppl.experiments.sweep",
        description="One Optuna study for one table cell (env x feedback subset x mode).",
        epilog="--trials N: run until the study holds N finished trials (COMPLETE, or FAIL because the fit raised) "
               "in total, whoever ran them: rerunning continues a study and several workers share it. Trials of "
               "killed workers are marked FAIL (interrupted) and not counted. Details: the module docstring.")
    p.add_argument("--env", default="grid_trap", help="tabular env (grid_cliff, grid_sparse, grid_trap, chain, ...)")
    p.add_argument("--env-size", type=int, default=None, help="grid side / chain length (default: the env's)")
    p.add_argument("--p-rand", type=float, default=0.0, help="probability of a random move (default 0)")
    p.add_argument("--subset", required=True, help="feedback types: letters p/d/r/s (pdrs), names (rating_stop), all")
    p.add_argument("--mode", choices=["fixed", "budget"], default="fixed", help="fixed counts or equal budget")
    p.add_argument("--budget", type=int, default=None, help="budget mode: total items (default REFERENCE §3)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="journal file path, or an Optuna RDB URL")
    p.add_argument("--study", default=None, help="study name (default <mode>-<env>-<subset>[-score])")
    p.add_argument("--trials", type=int, default=50, help="finished trials the study should hold in total")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..K-1 averaged per trial")
    p.add_argument("--objective", choices=["nll", "score"], default="nll",
                   help="nll: held-out feedback NLL (default, no ground truth); score: normalised score (simulation)")
    p.add_argument("--holdout", choices=["fresh", "split"], default="fresh",
                   help="nll on a separate simulated feedback set (fresh) or on the fit's validation split")
    p.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler (per trial number)")
    p.add_argument("--stale-after", type=float, default=600.0,
                   help="seconds without heartbeat after which another host's RUNNING trial counts as interrupted")
    p.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeats of a running trial")
    p.add_argument("--max-steps", type=int, default=None, help="override SVISettings.max_steps (for smoke tests)")
    p.add_argument("--eval-every", type=int, default=None, help="override SVISettings.eval_every")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def spec_from_args(args: argparse.Namespace) -> CellSpec:
    """Resolve the command line into a :class:`CellSpec` (raises :class:`UsageError`)."""
    from mavrl_ppl.envs.grids import make_tabular
    from mavrl_ppl.inference.svi import SVISettings

    try:
        subset = subset_name(args.subset)
        env_family(args.env)
        make_tabular(args.env, size=args.env_size, p_rand=args.p_rand)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for name in ("trials", "seeds"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    overrides = {k: v for k, v in (("max_steps", args.max_steps), ("eval_every", args.eval_every)) if v is not None}
    try:
        base = asdict(SVISettings(**overrides))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad SVI setting: {exc}") from None
    base = {k: v for k, v in base.items() if k not in SEARCHED and k != "progress_bar"}
    budget, caps = None, {}
    if args.mode == "budget":
        types = parse_subset(subset)
        budget = args.budget if args.budget is not None else default_budget(args.env)
        caps = {t: c for t, c in default_caps(args.env).items() if t in types}
        if budget < len(types):
            raise UsageError(f"--budget {budget} is below one item for each of {len(types)} types")
        if args.objective == "nll" and args.holdout == "split":
            raise UsageError("--mode budget needs --holdout fresh: the fit's validation split changes with the "
                             "allocation, so its NLL would not compare trials")
    elif args.budget is not None:
        raise UsageError("--budget applies to --mode budget only")
    return CellSpec(env=args.env, env_size=args.env_size, p_rand=float(args.p_rand), subset=subset, mode=args.mode,
                    objective=args.objective, holdout=args.holdout, seeds=args.seeds, budget=budget, caps=caps,
                    base_settings=base)


def default_study_name(spec: CellSpec) -> str:
    size = "" if spec.env_size is None else f"{spec.env_size}"
    return f"{spec.mode}-{spec.env}{size}-{spec.subset}" + ("-score" if spec.objective == "score" else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = spec_from_args(args)
        name = args.study or default_study_name(spec)
        study = run_study(spec, args.storage, name, args.trials, sampler_seed=args.sampler_seed,
                          stale_after=args.stale_after, heartbeat=args.heartbeat, quiet=args.quiet)
    except BaseUsageError as exc:  # this command's, a damaged journal, bad run settings
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the running trial is marked FAIL (interrupted); rerun to continue", file=sys.stderr)
        return 130
    except storage_errors() as exc:
        print(_storage_failure(args.storage, exc), file=sys.stderr)
        return 1
    try:
        trials = study.get_trials(deepcopy=False)
    except storage_errors() as exc:
        print(_storage_failure(args.storage, exc), file=sys.stderr)
        return 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary: dict[str, Any] = {"study": name, "counted": sum(map(is_counted, trials)), "complete": len(complete)}
    if complete:
        best = max(complete, key=lambda t: t.value) if spec.direction == "maximize" else min(
            complete, key=lambda t: t.value)
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                       counts=best.user_attrs.get("counts"))
    print(json.dumps(summary))
    return 0


def _storage_failure(storage: str, exc: BaseException) -> str:
    """The one-line message of a worker whose storage failed (exit status 1)."""
    shown = _hide_password(str(storage))
    return (f"error: the study storage {shown} failed: {describe_storage_error(exc)}; finished trials are kept, "
            "the running one is marked interrupted by the next worker; rerun to continue")


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in credentials else ''}@{host}"


if __name__ == "__main__":
    sys.exit(main())
