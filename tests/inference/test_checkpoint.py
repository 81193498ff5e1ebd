"""SVI checkpoints are data, never code (issue 27): they load with ``torch.load(weights_only=True)``, and a damaged,
crafted or foreign checkpoint passed to the resume API is a :class:`DamagedFileError` naming the file.
``test_svi.py::test_resuming_from_a_checkpoint_continues_exactly`` checks that resumption stays exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mavrl_ppl.envs import make_tabular
from mavrl_ppl.errors import DamagedFileError, UsageError
from mavrl_ppl.feedback import TabularTeacher, parse_counts, registered, simulate_feedback
from mavrl_ppl.inference.svi import SVISettings, fit_svi
from mavrl_ppl.inference.training import load_checkpoint

SETTINGS = SVISettings(progress_bar=False, max_steps=10, eval_every=5, patience=100)


@pytest.fixture(scope="module")
def problem():
    mdp = make_tabular("grid_sparse", size=3)
    counts = parse_counts("pref=8,rating=8,stop=8", registered())
    return mdp, simulate_feedback(TabularTeacher(mdp), counts, np.random.default_rng(0))


@pytest.fixture(scope="module")
def checkpoint(problem, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    mdp, feedback = problem
    fit_svi(feedback, SETTINGS, seed=0, mdp=mdp, checkpoint=path)
    return path


def resume(problem, path):
    mdp, feedback = problem
    return fit_svi(feedback, SETTINGS, seed=0, mdp=mdp, checkpoint=path, resume=True)


def test_a_checkpoint_holds_only_what_the_safe_unpickler_reads(checkpoint):
    state = torch.load(checkpoint, weights_only=True)  # tensors, containers, numbers, strings
    assert isinstance(state["rng"]["numpy"][1], torch.Tensor)
    loaded = load_checkpoint(checkpoint)  # numpy's RNG state comes back as numpy wants it
    assert loaded["rng"]["numpy"][1].dtype == np.uint32 and loaded["rng"]["numpy"][1].shape == (624,)


class Payload:
    """What a crafted checkpoint carries: unpickling it would run a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(problem, tmp_path):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.pt"
    torch.save({"params": Payload(marker), "step": 5}, crafted)
    with pytest.raises(DamagedFileError, match="refused: not a checkpoint of this library") as info:
        resume(problem, crafted)
    assert str(crafted) in str(info.value) and "nothing in it was run" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "a list"])
def test_a_damaged_checkpoint_names_the_file_in_one_line(problem, checkpoint, tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    data = checkpoint.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all\n")
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(DamagedFileError) as info:
        resume(problem, path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert isinstance(info.value, UsageError) and info.value.path == str(path)


def test_a_checkpoint_of_another_model_is_refused(problem, tmp_path):
    mdp, feedback = problem
    other = tmp_path / "other.pt"
    fit_svi(feedback, SVISettings(progress_bar=False, max_steps=5, eval_every=5, hidden=8), seed=0, mdp=mdp,
            checkpoint=other)
    with pytest.raises(DamagedFileError, match="do not match this fit's model"):
        resume(problem, other)
