"""ONE executor for every experiment that runs many fits (DESIGN §9).

A :class:`Task` is a picklable top-level function with its arguments, and optionally the name of a task that must
finish first. :func:`run_tasks` runs them ``jobs`` at a time, each in a fresh worker process (``spawn``, one task per
process: a fit's JAX device count, torch threads and Pyro parameter store start clean, as in a separate command), or
in the calling process (``in_process=True``: tests, debugging), or on a Dask cluster (``cluster=``: a scheduler
address such as ``tcp://HOST:8786``, ``local:N`` for a :class:`distributed.LocalCluster` of N single-threaded worker
processes made for the call, or a ``distributed`` cluster object the caller built, e.g. a ``LocalCluster`` or a
``dask_jobqueue.SLURMCluster``). A failing task is recorded with its error, never dropped; tasks that depend on it are
skipped with the reason; one progress bar counts them all, whichever way they run.

Tasks must make their own results durable (a run directory written atomically, a record file): the executor keeps
nothing on disk, so a killed experiment loses only the tasks in flight and reuses the rest when it is run again. On a
cluster of several machines those results must go to a file system every worker shares.

A worker that dies mid-task (killed, out of memory, its machine gone):

* local worker processes: the task is failed at once ("the worker process died"), its dependents skipped, the rest go
  on in a fresh pool;
* Dask: the scheduler hands the task to another worker (Dask's ``distributed.scheduler.allowed-failures``, 3 by
  default: a task is tried on up to 4 workers); a task whose workers all died is failed with Dask's ``KilledWorker``
  error. A task that *raises* is never retried, in either case: its error is the outcome. If this process loses the
  scheduler itself for good, :func:`run_tasks` raises :class:`ClusterUnreachable` (the finished tasks' results are
  where the tasks put them; run again to continue).

Dask workers are long-lived processes that run many tasks one after another, so a task must not rely on a fresh
process (the table's fits do not: :func:`mavrl_ppl.runs._fit_nuts` keeps the JAX devices of a worker whose JAX is up).
Every worker must be able to import the task's function (``mavrl_ppl`` installed where the workers run).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

__all__ = ["ClusterUnreachable", "Outcome", "Task", "check_cluster", "local_cluster", "run_command", "run_tasks"]

#: Characters of a failure's traceback kept in its message.
MESSAGE_CHARS = 600


class ClusterUnreachable(OSError):
    """The Dask scheduler named by ``cluster`` could not be reached, or was lost mid-run."""


class Task(NamedTuple):
    """One unit of work.

    Attributes:
        name: unique name (e.g. the run directory's).
        fn: a module-level function (it is pickled to a worker process).
        args: its positional arguments (picklable).
        depends_on: the name of a task that must finish successfully first, or ``None``.
    """

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    depends_on: str | None = None


class Outcome(NamedTuple):
    """What became of a task: ``status`` ``ok`` (``value`` is the function's result), ``failed`` (``message`` holds
    the error and the end of its traceback) or ``skipped`` (``message`` says why); ``seconds`` of wall time."""

    status: str
    value: Any = None
    message: str = ""
    seconds: float = 0.0


def _failure(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc)).strip()
    cause = exc.__cause__  # a worker's traceback travels as the cause (concurrent.futures' _RemoteTraceback)
    if cause is not None and type(cause).__name__ == "_RemoteTraceback":
        text = str(cause).strip()
    head = f"{type(exc).__name__}: {exc}"
    tail = text if len(text) <= MESSAGE_CHARS else "..." + text[-MESSAGE_CHARS:]
    return head if head in tail else f"{head} | {tail}"


def _timed(fn: Callable[..., Any], args: tuple) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


class _Scheduler:
    """Dependency bookkeeping shared by the in-process and the process-pool loops."""

    def __init__(self, tasks: Sequence[Task], done: Mapping[str, Outcome], bar: Any,
                 on_done: Callable[[str, Outcome], None] | None) -> None:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError("task names must be unique")
        self.planned = set(names) | set(done)
        self.outcomes: dict[str, Outcome] = dict(done)
        self.pending = [t for t in tasks if t.name not in self.outcomes]
        self.bar, self.on_done = bar, on_done
        self.failures = 0

    def finish(self, name: str, outcome: Outcome) -> None:
        self.outcomes[name] = outcome
        self.failures += outcome.status == "failed"
        self.bar.update(1)
        self.bar.set_postfix_str(f"failed {self.failures}" if self.failures else "", refresh=False)
        if self.on_done is not None:
            self.on_done(name, outcome)

    def ready(self, limit: int) -> list[Task]:
        """Up to ``limit`` pending tasks whose dependency succeeded (taken off the pending list); tasks whose
        dependency failed or was skipped are skipped on the way."""
        out: list[Task] = []
        for task in list(self.pending):
            if len(out) >= limit:
                break
            dep = self.outcomes.get(task.depends_on) if task.depends_on else Outcome("ok")
            if dep is None:
                if task.depends_on not in self.planned:
                    self.pending.remove(task)
                    self.finish(task.name, Outcome("skipped", message=f"dependency {task.depends_on} not planned"))
                continue
            self.pending.remove(task)
            if dep.status == "ok":
                out.append(task)
            else:
                self.finish(task.name, Outcome("skipped", message=f"not run: {task.depends_on} {dep.status}"))
        return out


def run_tasks(
    tasks: Sequence[Task],
    *,
    jobs: int = 1,
    in_process: bool = False,
    done: Mapping[str, Outcome] | None = None,
    progress: bool = True,
    desc: str = "fits",
    on_done: Callable[[str, Outcome], None] | None = None,
    cluster: Any = None,
) -> dict[str, Outcome]:
    """Run every task not in ``done``, each after the task it depends on.

    Args:
        tasks: the plan; names unique.
        jobs: worker processes at once (local processes only: on a cluster every ready task is submitted at once and
            the cluster's workers decide how many run).
        in_process: run the tasks one after another in this process instead.
        done: outcomes known already (e.g. reused runs); their tasks are not run, their dependents may be.
        progress: one tqdm bar over all tasks, with the failures counted.
        desc: the bar's label.
        on_done: called in this process after each task with its name and outcome (e.g. to write a record).
        cluster: run the tasks on Dask instead of local processes: a scheduler address (``tcp://HOST:8786``),
            ``local`` / ``local:N`` (a ``LocalCluster`` of N single-threaded worker processes on 127.0.0.1, closed at
            the end; ``local`` = one per core), or a ``distributed`` cluster object (left running). ``None``: local.

    Returns:
        Task name -> :class:`Outcome`, for every task.

    Raises:
        ValueError: duplicate task names, ``jobs < 1``, a malformed ``cluster`` or ``cluster`` with ``in_process``.
        ClusterUnreachable: the Dask scheduler cannot be reached (before any task runs), or the connection to it is
            lost for good mid-run (Dask's client reconnects for a while first); the tasks that finished before have
            had their ``on_done`` call.
    """
    from tqdm.auto import tqdm

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if cluster is not None:
        if in_process:
            raise ValueError("in_process and cluster exclude each other")
        if isinstance(cluster, str):
            check_cluster(cluster)
    bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    bar.update(sum(t.name in (done or {}) for t in tasks))
    scheduler = _Scheduler(tasks, done or {}, bar, on_done)
    try:
        if in_process:
            _run_here(scheduler)
        elif cluster is not None:
            _run_dask(scheduler, cluster)
        else:
            _run_pool(scheduler, jobs)
    finally:
        bar.close()
    return scheduler.outcomes


def _run_here(scheduler: _Scheduler) -> None:
    while scheduler.pending:
        ready = scheduler.ready(len(scheduler.pending))
        if not ready:
            break
        for task in ready:
            start = time.perf_counter()
            try:
                value = task.fn(*task.args)
            except Exception as exc:
                scheduler.finish(task.name, Outcome("failed", message=_failure(exc),
                                                    seconds=time.perf_counter() - start))
            else:
                scheduler.finish(task.name, Outcome("ok", value, seconds=time.perf_counter() - start))


def _run_pool(scheduler: _Scheduler, jobs: int) -> None:
    context = multiprocessing.get_context("spawn")
    running: dict[Future, Task] = {}
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, max_tasks_per_child=1)
    try:
        while scheduler.pending or running:
            queue = scheduler.ready(jobs - len(running))
            for task in queue:
                running[pool.submit(_timed, task.fn, task.args)] = task
            if not running:
                if scheduler.pending:  # cannot happen with a valid plan: nothing runs and nothing can start
                    for task in list(scheduler.pending):
                        scheduler.pending.remove(task)
                        scheduler.finish(task.name, Outcome("skipped", message=f"waits for {task.depends_on}"))
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                try:
                    value, seconds = future.result()
                except BrokenProcessPool:
                    scheduler.finish(task.name, Outcome("failed", message="the worker process died (killed, or out "
                                                                          "of memory)"))
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, max_tasks_per_child=1)
                except Exception as exc:
                    scheduler.finish(task.name, Outcome("failed", message=_failure(exc)))
                else:
                    scheduler.finish(task.name, Outcome("ok", value, seconds=seconds))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_command(work: Callable[[], Any], *, report: Callable[[Any], str], written: str, kept: str,
                usage_errors: tuple[type[Exception], ...] = ()) -> int:
    """Run an experiment command's work and return its exit status: 0 with ``report(result)`` on stdout and
    ``wrote {written}`` on stderr; 2 on one of ``usage_errors``, 130 on Ctrl-C and 1 when the Dask scheduler cannot be
    reached or is lost (:class:`ClusterUnreachable`), each with one line on stderr.

    Args:
        work: the experiment (e.g. ``lambda: build_table(...)``).
        report: its result as the text printed on stdout (a Markdown table).
        written: what it wrote, for the last line.
        kept: what a Ctrl-C leaves behind, for its line (``"finished runs and records are kept"``).
        usage_errors: exceptions that the work raises on the user's input found only once it starts (a broken
            record, a reused run made with other settings): ``error: <message>`` and exit status 2.
    """
    try:
        result = work()
    except usage_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {kept}; run the command again to continue", file=sys.stderr)
        return 130
    except ClusterUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(report(result))
    print(f"wrote {written}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------ Dask


def check_cluster(spec: str) -> str:
    """Check a ``cluster`` string (``tcp://HOST:PORT`` or another ``scheme://`` address, ``local`` or ``local:N``)
    and return it; raises ``ValueError`` naming what is wrong (the command lines call this before any work)."""
    text = str(spec).strip()
    if text == "local":
        return text
    if text.startswith("local:"):
        count = text.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"bad cluster {spec!r}: local:N needs a number of workers N >= 1")
        return text
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme or not rest:
        raise ValueError(f"bad cluster {spec!r}: expected a Dask scheduler address such as tcp://HOST:8786, "
                         "or local:N")
    return text


def local_cluster(workers: int | None = None) -> Any:
    """A Dask ``LocalCluster`` as the executor makes it for ``local:N``: ``workers`` worker processes (default one per
    core) of one thread each, listening on 127.0.0.1 only (scheduler, workers and Dask's HTTP server, on free
    ports), Dask's own log lines silenced (a task's error and a worker's death are in its :class:`Outcome`)."""
    import logging

    from distributed import LocalCluster

    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address="127.0.0.1:0",  # Dask's HTTP server, on a free loopback port
                        silence_logs=logging.CRITICAL)  # a task's error and a worker's death are in the outcomes


def _client(cluster: Any) -> tuple[Any, Any]:
    """A ``distributed.Client`` for ``cluster`` and the cluster this call made (to close), or ``None``."""
    from distributed import Client

    owned = None
    if isinstance(cluster, str):
        text = check_cluster(cluster)
        if text == "local" or text.startswith("local:"):
            owned = local_cluster(int(text.removeprefix("local:")) if ":" in text else None)
            target: Any = owned
        else:
            target = text
    else:
        target = cluster
    try:
        client = Client(target, set_as_default=False)
    except OSError as exc:  # distributed's connect timeout / refused connection
        if owned is not None:
            owned.close()
        raise ClusterUnreachable(f"cannot reach the Dask scheduler {_label(cluster)}: {exc}") from exc
    except BaseException:
        if owned is not None:
            owned.close()
        raise
    return client, owned


def _label(cluster: Any) -> str:
    return cluster if isinstance(cluster, str) else str(getattr(cluster, "scheduler_address", cluster))


def _timed_in_worker(fn: Callable[..., Any], args: tuple) -> tuple[Any, float]:
    """:func:`_timed` in a Dask worker, with Dask's own scheduler inside the task set to run here: a task is one
    unit of work, and a library that uses Dask underneath (xarray's netCDF locks) would otherwise open a client back
    to the cluster from inside the task and wait on the scheduler for every lock."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        return _timed(fn, args)


def _dask_failure(future: Any) -> str:
    exc = future.exception()
    tb = future.traceback()
    if tb is not None:
        exc = exc.with_traceback(tb)
    message = _failure(exc)
    if type(exc).__name__ == "KilledWorker":
        return f"every Dask worker that ran it died (killed, or out of memory) | {message}"
    return message


def _run_dask(scheduler: _Scheduler, cluster: Any) -> None:
    import uuid

    from distributed import as_completed

    client, owned = _client(cluster)
    running: dict[Any, Task] = {}
    finished = as_completed(loop=client.loop)
    tag = uuid.uuid4().hex[:8]  # keys unique per call: a long-lived scheduler may remember an earlier call's keys
    try:
        while scheduler.pending or running:
            for task in scheduler.ready(len(scheduler.pending)):
                future = client.submit(_timed_in_worker, task.fn, task.args, key=f"{task.name}-{tag}", pure=False)
                running[future] = task
                finished.add(future)
            if not running:
                if scheduler.pending:  # cannot happen with a valid plan (see _run_pool)
                    for task in list(scheduler.pending):
                        scheduler.pending.remove(task)
                        scheduler.finish(task.name, Outcome("skipped", message=f"waits for {task.depends_on}"))
                continue
            future = next(finished)
            task = running.pop(future)
            if future.status == "finished":
                value, seconds = future.result()
                scheduler.finish(task.name, Outcome("ok", value, seconds=seconds))
            elif future.status == "error":
                scheduler.finish(task.name, Outcome("failed", message=_dask_failure(future)))
            elif client.status != "running":  # this client lost the scheduler: nothing more will run
                unfinished = len(running) + 1 + len(scheduler.pending)
                raise ClusterUnreachable(f"lost the Dask scheduler {_label(cluster)} ({unfinished} tasks unfinished; "
                                         "finished tasks keep their results: run again to continue)")
            else:  # cancelled by someone else, or forgotten by the scheduler
                scheduler.finish(task.name, Outcome("failed", message=f"the Dask scheduler lost the task "
                                                                      f"({future.status})"))
            future.release()
    finally:
        for future in running:
            future.cancel()
        client.close()
        if owned is not None:
            owned.close()
