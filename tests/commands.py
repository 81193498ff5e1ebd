"""Helpers for tests of the package's commands (imported by name: ``tests/`` is on ``sys.path``)."""

from __future__ import annotations

import contextlib
import io
import subprocess
from collections.abc import Callable


def run_here(main: Callable[[list[str]], int], *args: str) -> subprocess.CompletedProcess:
    """A command's ``main`` in this process (no interpreter start and imports: ~5 s less per run on the 2-core
    machine), with what it prints captured; for tests about what a command writes, not about the process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exc:  # argparse's errors and --help
            status = exc.code
    return subprocess.CompletedProcess([main.__module__, *args], status, out.getvalue(), err.getvalue())


def fit_here(*args: str) -> subprocess.CompletedProcess:
    """``python -m mavrl_ppl.fit ARGS`` in this process (:func:`run_here`)."""
    from mavrl_ppl.fit import main

    return run_here(main, *args)
