"""Optimizers (SGD, Adam, AdamW) and learning-rate schedulers, with PyTorch's update rules, parameter
groups and state dicts.

``param_groups`` is a list of dicts, each with its ``params`` and its own hyperparameters (``lr`` and the
rest), filled from the optimizer's defaults: schedulers change ``group["lr"]``. State arrays (momentum,
moments) are created on first use beside each parameter, so a model moved with ``.to("cuda")`` before the
first step needs nothing else; ``Optimizer.to`` moves existing state. ``state_dict()`` refers to parameters
by their position across the groups, as PyTorch's does, so it loads into a new optimizer over a new model.
"""
from __future__ import annotations

import copy
import math
import numbers
from collections import Counter

from ._backend import array_module, as_numpy, normalize_device, to_device
from .nn.module import Parameter

_REQUIRED = object()


class Optimizer:
    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        self.param_groups = []
        self.state = {}  # Parameter -> its state dict
        for group in (params if isinstance(params[0], dict) else [{"params": params}]):
            self.add_param_group(group)

    def add_param_group(self, group: dict) -> None:
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"a parameter group is a dict with a 'params' entry, got {group!r}")
        group = dict(group)
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer takes gpuconv.nn.Parameter objects, got {type(p).__name__}")
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids):
            raise ValueError("a parameter appears twice in one parameter group; pass each once "
                             "(model.parameters() lists a tied weight once)")
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        if taken & set(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        group["params"] = params
        for name, default in self.defaults.items():
            if default is _REQUIRED and name not in group:
                raise ValueError(f"parameter group {len(self.param_groups)} has no {name!r} and the optimizer "
                                 f"no default")
            group.setdefault(name, default)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group: dict) -> None:
        if not (isinstance(group["lr"], numbers.Real) and group["lr"] >= 0):
            raise ValueError(f"learning rate must be >= 0, got {group['lr']}")
        if group.get("weight_decay", 0) < 0:
            raise ValueError(f"weight_decay must be >= 0, got {group['weight_decay']}")

    @property
    def params(self) -> list:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True):
        for p in self.params:  # zeros, not grad * 0: that would keep NaN and turn inf into NaN
            p.grad = None if set_to_none or p.grad is None else array_module(grad=p.grad).zeros_like(p.grad)

    def to(self, device: str):
        device = normalize_device(device)
        for state in self.state.values():
            for key, value in state.items():
                if hasattr(value, "shape"):
                    state[key] = to_device(value, device)
        return self

    def step(self, closure=None):
        """One update of every parameter that has a gradient; ``closure`` (re-evaluating the loss) is optional."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, self.state.setdefault(p, {}), group)
        return loss

    def _update(self, p: Parameter, state: dict, group: dict):
        raise NotImplementedError

    # -- state dicts ----------------------------------------------------------
    def state_dict(self) -> dict:
        """{"state": {index: {name: value}}, "param_groups": [{hyperparameters, "params": [index]}]}: copies,
        arrays as NumPy, parameters by their position across the groups."""
        index = {id(p): i for i, p in enumerate(self.params)}
        groups = []
        for group in self.param_groups:
            entry = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            entry["params"] = [index[id(p)] for p in group["params"]]
            groups.append(entry)
        state = {index[id(p)]: {k: as_numpy(v).copy() if hasattr(v, "shape") else v for k, v in s.items()}
                 for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of an optimizer over parameters of the same shapes, in the same groups."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the state has {len(groups)} parameter groups, this optimizer "
                             f"{len(self.param_groups)}")
        for i, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"parameter group {i}: the state has {len(saved['params'])} parameters, this "
                                 f"optimizer {len(group['params'])}")
        by_index = {}
        for saved, group in zip(groups, self.param_groups):
            by_index.update(zip(saved["params"], group["params"]))
        new_state = {}
        for key, entries in state_dict["state"].items():
            p = by_index.get(int(key))
            if p is None:
                raise ValueError(f"the state refers to parameter {key}, which no group holds")
            loaded = {}
            for name, value in entries.items():
                if hasattr(value, "shape"):  # per-element state (moments, momentum): an array like the parameter
                    if tuple(value.shape) != p.shape:
                        raise ValueError(f"parameter {key}: state {name!r} has shape {tuple(value.shape)}, the "
                                         f"parameter {p.shape}")
                    value = array_module(p=p.data).asarray(value).astype(p.dtype, copy=True)
                loaded[name] = value
            new_state[p] = loaded
        self.state = new_state
        for saved, group in zip(groups, self.param_groups):
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})

    def __repr__(self):
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params")
        return "\n".join(lines + [")"])


def _cast(value, like):
    """``value`` as an array of ``like``'s dtype (NumPy turns 0-d results into scalars: a parameter stays an array)."""
    return array_module(like=like).asarray(value).astype(like.dtype, copy=False)


class SGD(Optimizer):
    """buf = momentum * buf + (1 - dampening) * (g + wd * w);  w -= lr * buf  (PyTorch's SGD).

    Nesterov steps with g + momentum * buf instead of buf.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov))

    def _check_group(self, group):
        super()._check_group(group)
        if group["momentum"] < 0:
            raise ValueError(f"momentum must be >= 0, got {group['momentum']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening 0")

    def _update(self, p, state, group):
        g = p.grad
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p.data
        momentum = group["momentum"]
        if momentum:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.copy()
            else:
                state["momentum_buffer"] = momentum * state["momentum_buffer"] + (1 - group["dampening"]) * g
            buf = state["momentum_buffer"]
            g = g + momentum * buf if group["nesterov"] else buf
        p.data = _cast(p.data - group["lr"] * g, p.data)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as torch.optim.Adam (L2 weight decay added to the gradient)."""

    decoupled_weight_decay = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _check_group(self, group):
        super()._check_group(group)
        b1, b2 = group["betas"]
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {group['betas']}")
        if group["eps"] < 0:
            raise ValueError(f"eps must be >= 0, got {group['eps']}")

    def _update(self, p, state, group):
        (b1, b2), lr, wd = group["betas"], group["lr"], group["weight_decay"]
        g = p.grad
        if wd and self.decoupled_weight_decay:
            p.data = _cast(p.data * (1 - lr * wd), p.data)
        elif wd:
            g = g + wd * p.data
        if "step" not in state:
            xp = array_module(grad=g)
            state.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
        state["step"] += 1
        t = state["step"]
        state["exp_avg"] = _cast(b1 * state["exp_avg"] + (1 - b1) * g, p.data)
        state["exp_avg_sq"] = _cast(b2 * state["exp_avg_sq"] + (1 - b2) * g * g, p.data)
        step_size = lr / (1 - b1 ** t)
        denom = (state["exp_avg_sq"] ** 0.5) / math.sqrt(1 - b2 ** t) + group["eps"]
        p.data = _cast(p.data - step_size * state["exp_avg"] / denom, p.data)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): w *= 1 - lr * wd before the Adam step."""

    decoupled_weight_decay = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


# ------------------------------------------------------------ schedulers ---

class LRScheduler:
    """Sets each group's ``lr`` once per ``step()``; PyTorch's schedulers, step for step.

    Construction takes the first step (epoch 0, the initial learning rate), as PyTorch's do; call
    ``step()`` after each ``optimizer.step()`` (per epoch or per batch, as the schedule is meant).
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a gpuconv optimizer")
        self.optimizer = optimizer
        for i, group in enumerate(optimizer.param_groups):
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError(f"param_groups[{i}] has no 'initial_lr': resuming a scheduler (last_epoch >= 0) "
                               f"needs the optimizer's state_dict loaded first")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._initial = True
        self.step()
        self._initial = False

    def get_lr(self) -> list:
        raise NotImplementedError

    def step(self) -> None:
        self._step_count += 1
        self.last_epoch += 1
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {k: copy.deepcopy(v) for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(copy.deepcopy(state_dict))

    def _lrs(self):
        return [group["lr"] for group in self.optimizer.param_groups]


class StepLR(LRScheduler):
    """lr times gamma every ``step_size`` steps."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        if not isinstance(step_size, numbers.Integral) or step_size < 1:
            raise ValueError(f"step_size must be a positive int, got {step_size!r}")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size:
            return self._lrs()
        return [lr * self.gamma for lr in self._lrs()]


class MultiStepLR(LRScheduler):
    """lr times gamma at each milestone (a step count; one listed twice multiplies twice)."""

    def __init__(self, optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        self.milestones, self.gamma = Counter(int(m) for m in milestones), gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch not in self.milestones:
            return self._lrs()
        return [lr * self.gamma ** self.milestones[self.last_epoch] for lr in self._lrs()]


class CosineAnnealingLR(LRScheduler):
    """eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2, in PyTorch's recursive form."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        if not isinstance(T_max, numbers.Integral) or T_max < 1:
            raise ValueError(f"T_max must be a positive int, got {T_max!r}")
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t, T, eta = self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return self._lrs()
        if self._step_count == 1 and t > 0:
            return [eta + (base - eta) * (1 + math.cos(t * math.pi / T)) / 2 for base in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:
            return [lr + (base - eta) * (1 - math.cos(math.pi / T)) / 2 for lr, base in zip(self._lrs(), self.base_lrs)]
        return [(1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T)) * (lr - eta) + eta
                for lr in self._lrs()]


class OneCycleLR(LRScheduler):
    """Smith's one-cycle policy, stepped once per batch: warm up to ``max_lr``, then anneal far below it.

    With ``cycle_momentum`` the momentum (SGD) or beta1 (Adam) moves the opposite way, as in PyTorch.
    """

    def __init__(self, optimizer, max_lr, total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum=0.85, max_momentum=0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False, last_epoch: int = -1):
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("give total_steps, or epochs and steps_per_epoch")
            for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
                if not isinstance(value, numbers.Integral) or value < 1:
                    raise ValueError(f"{name} must be a positive int, got {value!r}")
            total_steps = epochs * steps_per_epoch
        if not isinstance(total_steps, numbers.Integral) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        if not 0 <= pct_start <= 1:
            raise ValueError(f"pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.total_steps, self.anneal_strategy = int(total_steps), anneal_strategy
        up = float(pct_start * total_steps) - 1
        if three_phase:
            self.phases = [(up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                           (float(2 * pct_start * total_steps) - 2, "max_lr", "initial_lr", "base_momentum",
                            "max_momentum"),
                           (total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
        else:
            self.phases = [(up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                           (total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")]
        groups = optimizer.param_groups
        max_lrs = self._per_group("max_lr", max_lr, groups)
        if last_epoch == -1:
            for group, top in zip(groups, max_lrs):
                group["initial_lr"] = top / div_factor
                group["max_lr"] = top
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError("cycle_momentum needs an optimizer with momentum or betas")
            self.use_beta1 = "betas" in optimizer.defaults
            if last_epoch == -1:
                for group, high, low in zip(groups, self._per_group("max_momentum", max_momentum, groups),
                                            self._per_group("base_momentum", base_momentum, groups)):
                    self._set_momentum(group, high)
                    group["max_momentum"], group["base_momentum"] = high, low
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _per_group(name, value, groups):
        if isinstance(value, (list, tuple)):
            if len(value) != len(groups):
                raise ValueError(f"{name} has {len(value)} values for {len(groups)} parameter groups")
            return list(value)
        return [value] * len(groups)

    def _set_momentum(self, group, value):
        if self.use_beta1:
            group["betas"] = (value, *group["betas"][1:])
        else:
            group["momentum"] = value

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"stepped {step} times, but total_steps is {self.total_steps}")
        lrs = []
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, (end_step, lr0, lr1, m0, m1) in enumerate(self.phases):
                if step <= end_step or i == len(self.phases) - 1:
                    pct = (step - start_step) / (end_step - start_step)
                    lrs.append(self._anneal(group[lr0], group[lr1], pct))
                    if self.cycle_momentum:
                        self._set_momentum(group, self._anneal(group[m0], group[m1], pct))
                    break
                start_step = end_step
        return lrs


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "MultiStepLR", "CosineAnnealingLR",
           "OneCycleLR"]
