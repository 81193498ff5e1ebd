"""The one executor: dependencies, failures kept, dependents skipped, worker processes, a worker that dies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mavrl_ppl.experiments.executor import Outcome, Task, run_tasks


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise RuntimeError(message)


def write_pid(path: str) -> int:
    Path(path).write_text(str(os.getpid()))
    return os.getpid()


def die() -> None:
    os._exit(9)  # a worker killed mid-task (no exception travels back)


def plan() -> list[Task]:
    return [
        Task("a", square, (3,)),
        Task("b", fail, ("boom",)),
        Task("c", square, (4,), depends_on="a"),
        Task("d", square, (5,), depends_on="b"),
        Task("e", square, (6,), depends_on="d"),
    ]


@pytest.mark.parametrize("in_process", [True, False])
def test_results_failures_and_skipped_dependents(in_process: bool) -> None:
    seen: list[str] = []
    outcomes = run_tasks(plan(), jobs=2, in_process=in_process, progress=False,
                         on_done=lambda name, outcome: seen.append(name))
    assert outcomes["a"] == Outcome("ok", 9, "", outcomes["a"].seconds) and outcomes["c"].value == 16
    assert outcomes["b"].status == "failed" and "RuntimeError: boom" in outcomes["b"].message
    assert outcomes["d"].status == "skipped" and "b failed" in outcomes["d"].message
    assert outcomes["e"].status == "skipped" and "d skipped" in outcomes["e"].message
    assert sorted(seen) == ["a", "b", "c", "d", "e"] and seen.index("a") < seen.index("c")


def test_done_tasks_are_not_run_but_release_their_dependents() -> None:
    outcomes = run_tasks(plan(), in_process=True, progress=False, done={"b": Outcome("ok", None)})
    assert outcomes["b"] == Outcome("ok", None) and outcomes["d"].value == 25 and outcomes["e"].value == 36


def test_each_task_gets_a_fresh_worker_process(tmp_path: Path) -> None:
    tasks = [Task(f"t{i}", write_pid, (str(tmp_path / f"{i}.pid"),)) for i in range(3)]
    outcomes = run_tasks(tasks, jobs=1, progress=False)
    pids = {o.value for o in outcomes.values()}
    assert len(pids) == 3 and os.getpid() not in pids  # one process per task, none of them this one


def test_a_dead_worker_fails_its_task_and_the_rest_still_run() -> None:
    tasks = [Task("dies", die), Task("after", square, (7,)), Task("child", square, (2,), depends_on="dies")]
    outcomes = run_tasks(tasks, jobs=1, progress=False)
    assert outcomes["dies"].status == "failed" and "died" in outcomes["dies"].message
    assert outcomes["after"].value == 49
    assert outcomes["child"].status == "skipped"


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        run_tasks([Task("a", square, (1,)), Task("a", square, (2,))], in_process=True, progress=False)
    with pytest.raises(ValueError, match="jobs"):
        run_tasks([], jobs=0, progress=False)
    orphan = run_tasks([Task("x", square, (1,), depends_on="nowhere")], in_process=True, progress=False)
    assert orphan["x"].status == "skipped" and "not planned" in orphan["x"].message
