"""ONE executor for every experiment that runs many fits (DESIGN §9).

A :class:`Task` is a picklable top-level function with its arguments, and optionally the name of a task that must
finish first. :func:`run_tasks` runs them ``jobs`` at a time, each in a fresh worker process (``spawn``, one task per
process: a fit's JAX device count, torch threads and Pyro parameter store start clean, as in a separate command), or
in the calling process (``in_process=True``: tests, debugging). A failing task is recorded with its error, never
dropped; tasks that depend on it are skipped with the reason; one progress bar counts them all.

Tasks must make their own results durable (a run directory written atomically, a record file): the executor keeps
nothing on disk, so a killed experiment loses only the tasks in flight and reuses the rest when it is run again.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

__all__ = ["Outcome", "Task", "run_tasks"]

#: Characters of a failure's traceback kept in its message.
MESSAGE_CHARS = 600


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
) -> dict[str, Outcome]:
    """Run every task not in ``done``, each after the task it depends on.

    Args:
        tasks: the plan; names unique.
        jobs: worker processes at once.
        in_process: run the tasks one after another in this process instead.
        done: outcomes known already (e.g. reused runs); their tasks are not run, their dependents may be.
        progress: one tqdm bar over all tasks, with the failures counted.
        desc: the bar's label.
        on_done: called in this process after each task with its name and outcome (e.g. to write a record).

    Returns:
        Task name -> :class:`Outcome`, for every task.
    """
    from tqdm.auto import tqdm

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    bar.update(sum(t.name in (done or {}) for t in tasks))
    scheduler = _Scheduler(tasks, done or {}, bar, on_done)
    try:
        if in_process:
            _run_here(scheduler)
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
