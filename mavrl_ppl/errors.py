"""The errors a user's input can cause: each is reported by the commands as ONE line with exit status 2.

Kept free of heavy imports so that every module (the pipeline, the training loop, the sweeps) can raise them.
"""

from __future__ import annotations

import os

__all__ = ["DamagedFileError", "UsageError"]


class UsageError(ValueError):
    """Bad settings or data, found before any fitting: reported as one line (the command's exit status 2)."""


class DamagedFileError(UsageError):
    """A file we read (a checkpoint, a run record, a sweep's journal) is damaged or is not what it should be.

    The message names the file and what is wrong with it; ``path`` is the file.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # survives pickling (worker processes send their errors back)
        return type(self), (self.path, self.problem)
