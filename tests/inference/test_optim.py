"""ClippedAdamW takes the steps of torch's AdamW after per-tensor gradient clipping, with an exponential decay."""

from __future__ import annotations

import pytest
import torch

from mavrl_ppl.inference.optim import ClippedAdamW

LR, WEIGHT_DECAY, CLIP, GAMMA = 0.05, 0.01, 1.0, 0.98


def gradients(step: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Gradients of changing size: some below the clip norm, some far above it (scale 0.05 .. 20)."""
    gen = torch.Generator().manual_seed(step)
    return {k: torch.randn(shape, generator=gen, dtype=torch.float64) * 10.0 ** (step % 4 - 1.3)
            for k, shape in shapes.items()}


def test_steps_equal_torch_adamw_with_clipping_and_exponential_decay_bit_for_bit() -> None:
    shapes = {"loc": (7,), "scale": (3, 4), "scalar": ()}
    start = {k: torch.randn(s, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
             for k, s in shapes.items()}
    ours = {k: v.clone() for k, v in start.items()}
    theirs = {k: v.clone().requires_grad_() for k, v in start.items()}
    optimizer = ClippedAdamW(LR, WEIGHT_DECAY, CLIP, GAMMA)
    torch_optims = {k: torch.optim.AdamW([p], lr=LR, weight_decay=WEIGHT_DECAY) for k, p in theirs.items()}
    schedulers = {k: torch.optim.lr_scheduler.ExponentialLR(o, GAMMA) for k, o in torch_optims.items()}
    for step in range(40):
        grads = gradients(step, shapes)
        for k, p in theirs.items():
            p.grad = grads[k].clone()
            torch.nn.utils.clip_grad_norm_(p, CLIP)
            torch_optims[k].step()
            schedulers[k].step()
        for k, p in ours.items():
            p.grad = grads[k].clone()
        optimizer.step(ours.items())
        optimizer.decay()
        assert all(p.grad is None for p in ours.values())
    for k in shapes:
        assert torch.equal(ours[k], theirs[k].detach()), k
    assert optimizer.lr == torch_optims["loc"].param_groups[0]["lr"]


def test_state_round_trip_continues_exactly_and_a_foreign_state_is_refused() -> None:
    shapes = {"w": (5,)}
    params = {"w": torch.zeros(5, dtype=torch.float64)}
    first = ClippedAdamW(LR, WEIGHT_DECAY, CLIP, GAMMA)
    for step in range(3):
        params["w"].grad = gradients(step, shapes)["w"]
        first.step(params.items())
        first.decay()
    saved, saved_params = first.get_state(), params["w"].clone()
    resumed = ClippedAdamW(LR, WEIGHT_DECAY, CLIP, GAMMA)
    resumed.set_state(saved)
    other = {"w": saved_params.clone()}
    for step in range(3, 6):
        grad = gradients(step, shapes)["w"]
        params["w"].grad, other["w"].grad = grad.clone(), grad.clone()
        first.step(params.items())
        resumed.step(other.items())
        first.decay()
        resumed.decay()
    assert torch.equal(params["w"], other["w"]) and resumed.lr == first.lr
    with pytest.raises(KeyError):  # a checkpoint from before (Pyro's per-parameter torch optimisers)
        ClippedAdamW(LR, WEIGHT_DECAY, CLIP, GAMMA).set_state({"state": {}, "param_groups": []})
