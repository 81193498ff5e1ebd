"""AdamW with per-tensor gradient clipping and an exponential learning-rate decay, for the SVI loop.

The same arithmetic as ``pyro.optim.ExponentialLR`` around ``torch.optim.AdamW`` with ``clip_args={"clip_norm": c}``
(the optimiser the fit used before): each parameter tensor's gradient is clipped to norm ``c``, then one decoupled
AdamW step is taken with the current learning rate, and :meth:`ClippedAdamW.decay` multiplies the learning rate by
``gamma``. It exists because building the first ``torch.optim.Optimizer`` imports ``torch._dynamo`` (1.7 s of a 16 s
default command, ``benchmarks/RESULTS.md``, "Default command profile") and Pyro builds one optimiser and one scheduler
per parameter tensor; the update here is a handful of in-place tensor operations per parameter, in the order torch's
single-tensor AdamW uses, so a fit's parameters are bit-identical to the torch optimiser's (``tests/inference/
test_optim.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

#: torch.optim.AdamW's defaults.
BETAS = (0.9, 0.999)
EPS = 1e-8
#: torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing.
CLIP_EPS = 1e-6


class ClippedAdamW:
    """Decoupled-weight-decay Adam over named parameter tensors; state is created the first time a name is stepped.

    Args:
        learning_rate: the initial learning rate.
        weight_decay: decoupled weight decay (the parameter shrinks by ``lr * weight_decay`` each step).
        clip_norm: each tensor's gradient is scaled down to at most this Euclidean norm before the step.
        gamma: :meth:`decay` multiplies the learning rate by this.
    """

    def __init__(self, learning_rate: float, weight_decay: float, clip_norm: float, gamma: float) -> None:
        self.lr, self.weight_decay, self.clip_norm, self.gamma = float(learning_rate), weight_decay, clip_norm, gamma
        self.decays = 0
        self.moments: dict[str, dict] = {}

    def step(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        """One clipped AdamW step on every tensor that has a gradient; the gradients are consumed (set to None)."""
        beta1, beta2 = BETAS
        with torch.no_grad():
            for name, param in named:
                grad = param.grad
                if grad is None:
                    continue
                norm = torch.linalg.vector_norm(grad)
                grad.mul_(torch.clamp(self.clip_norm / (norm + CLIP_EPS), max=1.0))
                state = self.moments.get(name)
                if state is None:
                    state = self.moments[name] = {"step": 0, "exp_avg": torch.zeros_like(param),
                                                  "exp_avg_sq": torch.zeros_like(param)}
                state["step"] += 1
                param.mul_(1 - self.lr * self.weight_decay)
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = self.lr / (1 - beta1 ** state["step"])
                denom = (state["exp_avg_sq"].sqrt() / (1 - beta2 ** state["step"]) ** 0.5).add_(EPS)
                param.addcdiv_(state["exp_avg"], denom, value=-step_size)
                param.grad = None

    def decay(self) -> None:
        """The learning rate's decay after a step (multiplied, as torch's scheduler does, not recomputed)."""
        self.lr *= self.gamma
        self.decays += 1

    def get_state(self) -> dict:
        """Tensors, numbers and dicts only (a checkpoint is read with ``torch.load(weights_only=True)``)."""
        return {"lr": self.lr, "decays": self.decays,
                "moments": {k: {**v, "exp_avg": v["exp_avg"].clone(), "exp_avg_sq": v["exp_avg_sq"].clone()}
                            for k, v in self.moments.items()}}

    def set_state(self, state: Mapping) -> None:
        """Continue from :meth:`get_state`; a ``KeyError``/``TypeError`` if ``state`` is not one."""
        lr, decays, moments = float(state["lr"]), int(state["decays"]), state["moments"]
        self.moments = {str(k): {"step": int(v["step"]), "exp_avg": v["exp_avg"].clone(),
                                 "exp_avg_sq": v["exp_avg_sq"].clone()} for k, v in moments.items()}
        self.lr, self.decays = lr, decays
