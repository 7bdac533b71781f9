"""Optimizers: SGD (momentum, weight decay) and Adam, with PyTorch's update rules.

State arrays (momentum, moments) are created on first use beside each
parameter, so a model moved with ``.to("cuda")`` before the first step needs
nothing else; ``Optimizer.to`` moves existing state.
"""
from __future__ import annotations

import math

from ._backend import array_module, normalize_device, to_device
from .nn.module import Parameter


class Optimizer:
    def __init__(self, params, lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer takes gpuconv.nn.Parameter objects, got {type(p).__name__}")
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        self.lr = lr
        self.state = [{} for _ in self.params]

    def zero_grad(self):
        for p in self.params:
            p.zero_grad()

    def to(self, device: str):
        device = normalize_device(device)
        for state in self.state:
            for key, value in state.items():
                if hasattr(value, "shape"):
                    state[key] = to_device(value, device)
        return self

    def step(self):
        for p, state in zip(self.params, self.state):
            if p.grad is not None:
                self._update(p, state)

    def _update(self, p: Parameter, state: dict):
        raise NotImplementedError


class SGD(Optimizer):
    """v = momentum * v + (g + wd * w);  w -= lr * v  (PyTorch's SGD, dampening 0)."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov

    def _update(self, p, state):
        g = p.grad
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.momentum:
            if "momentum" not in state:
                state["momentum"] = g.copy()
            else:
                state["momentum"] = self.momentum * state["momentum"] + g
            g = g + self.momentum * state["momentum"] if self.nesterov else state["momentum"]
        p.data = (p.data - self.lr * g).astype(p.data.dtype, copy=False)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as torch.optim.Adam (L2 weight decay added to the gradient)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def _update(self, p, state):
        b1, b2 = self.betas
        g = p.grad
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if "step" not in state:
            xp = array_module(grad=g)
            state.update(step=0, m=xp.zeros_like(g), v=xp.zeros_like(g))
        state["step"] += 1
        t = state["step"]
        state["m"] = b1 * state["m"] + (1 - b1) * g
        state["v"] = b2 * state["v"] + (1 - b2) * g * g
        step_size = self.lr / (1 - b1 ** t)
        denom = (state["v"] ** 0.5) / math.sqrt(1 - b2 ** t) + self.eps
        p.data = (p.data - step_size * state["m"] / denom).astype(p.data.dtype, copy=False)
