"""Optimizers and schedulers as PyTorch's: parameter groups, updates, learning-rate schedules, state dicts,
and a training run resumed from a checkpoint that ends bit for bit where the uninterrupted run ends."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import nn, optim

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the cross-checks against torch need it")

SHAPES = [(3, 4), (4,), (2, 1, 3)]


def params_pair(seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in SHAPES]
    return [nn.Parameter(a.copy()) for a in arrays], [torch.nn.Parameter(torch.tensor(a)) for a in arrays]


def run_both(make_ours, make_theirs, steps=6, groups=None):
    """The same gradients, step after step, through ours and torch's optimizer: parameters stay equal."""
    ours, theirs = params_pair()
    split = (lambda ps: [{"params": ps[:1], **groups[0]}, {"params": ps[1:], **groups[1]}]) if groups else list
    opt_o, opt_t = make_ours(split(ours)), make_theirs(split(theirs))
    rng = np.random.default_rng(1)
    for _ in range(steps):
        for po, pt in zip(ours, theirs):
            g = rng.standard_normal(po.shape)
            po.grad, pt.grad = g, torch.tensor(g)
        opt_o.step()
        opt_t.step()
    for po, pt in zip(ours, theirs):
        np.testing.assert_allclose(po.data, pt.detach().numpy(), rtol=1e-12, atol=1e-14)
    return opt_o, opt_t


OPTIMIZERS = [
    ("sgd", lambda p: optim.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    ("sgd-momentum-dampening-wd", lambda p: optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("sgd-nesterov", lambda p: optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True)),
    ("adam-wd", lambda p: optim.Adam(p, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1),
     lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    ("adamw", lambda p: optim.AdamW(p, lr=0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
]


@pytest.mark.parametrize("make_ours,make_theirs", [o[1:] for o in OPTIMIZERS], ids=[o[0] for o in OPTIMIZERS])
def test_optimizer_matches_torch(make_ours, make_theirs):
    run_both(make_ours, make_theirs)


def test_param_groups_have_their_own_hyperparameters():
    groups = [dict(lr=0.1, weight_decay=0.5), dict(momentum=0.5)]
    opt, _ = run_both(lambda g: optim.SGD(g, lr=0.01), lambda g: torch.optim.SGD(g, lr=0.01), groups=groups)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert opt.param_groups[1]["momentum"] == 0.5 and opt.param_groups[0]["momentum"] == 0.0


def test_a_parameter_in_two_groups_or_twice_in_one_is_refused():
    p = nn.Parameter(np.ones(2))
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="appears twice in one parameter group"):
        optim.SGD([p, p], lr=0.1)


def test_optimizer_state_dict_resumes_the_same_updates():
    ours, _ = params_pair()
    opt = optim.Adam([{"params": ours[:2]}, {"params": ours[2:], "lr": 0.1}], lr=0.01)
    rng = np.random.default_rng(2)
    grads = [[rng.standard_normal(p.shape) for p in ours] for _ in range(4)]
    for step in grads[:2]:
        for p, g in zip(ours, step):
            p.grad = g
        opt.step()
    state = opt.state_dict()
    assert sorted(state["state"]) == [0, 1, 2] and state["param_groups"][1]["params"] == [2]
    assert state["state"][0]["step"] == 2 and set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}

    copies = [nn.Parameter(p.data.copy()) for p in ours]
    resumed = optim.Adam([{"params": copies[:2]}, {"params": copies[2:]}], lr=0.5)
    resumed.load_state_dict(state)
    assert resumed.param_groups[1]["lr"] == 0.1 and resumed.param_groups[0]["lr"] == 0.01
    for step in grads[2:]:
        for p, c, g in zip(ours, copies, step):
            p.grad, c.grad = g, g.copy()
        opt.step()
        resumed.step()
    for p, c in zip(ours, copies):
        assert p.data.tobytes() == c.data.tobytes()


def test_optimizer_state_dict_of_another_layout_is_refused():
    ours, _ = params_pair()
    state = optim.SGD(ours, lr=0.1).state_dict()
    with pytest.raises(ValueError, match="the state has 1 parameter groups, this optimizer 2"):
        optim.SGD([{"params": ours[:1]}, {"params": ours[1:]}], lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="parameter group 0: the state has 3 parameters, this optimizer 2"):
        optim.SGD(ours[:2], lr=0.1).load_state_dict(state)


# ------------------------------------------------------------ schedulers ---

SCHEDULERS = [
    ("StepLR", lambda o: optim.StepLR(o, 3, gamma=0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.5)),
    ("MultiStepLR", lambda o: optim.MultiStepLR(o, [2, 5, 5], gamma=0.3),
     lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5, 5], gamma=0.3)),
    ("CosineAnnealingLR", lambda o: optim.CosineAnnealingLR(o, 7, eta_min=0.001),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 7, eta_min=0.001)),
    ("OneCycleLR-cos", lambda o: optim.OneCycleLR(o, 0.5, total_steps=20),
     lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.5, total_steps=20)),
    ("OneCycleLR-linear-three-phase", lambda o: optim.OneCycleLR(o, [0.5, 0.2], epochs=4, steps_per_epoch=5,
                                                                 anneal_strategy="linear", three_phase=True),
     lambda o: torch.optim.lr_scheduler.OneCycleLR(o, [0.5, 0.2], epochs=4, steps_per_epoch=5,
                                                   anneal_strategy="linear", three_phase=True)),
]
OPTIMIZER_KINDS = {
    "sgd-momentum": (lambda g: optim.SGD(g, lr=0.1, momentum=0.9), lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9)),
    "adam": (lambda g: optim.Adam(g, lr=0.1), lambda g: torch.optim.Adam(g, lr=0.1)),
}


@pytest.mark.parametrize("kind", OPTIMIZER_KINDS)
@pytest.mark.parametrize("make_ours,make_theirs", [s[1:] for s in SCHEDULERS], ids=[s[0] for s in SCHEDULERS])
def test_scheduler_matches_torch_step_for_step(make_ours, make_theirs, kind):
    ours, theirs = params_pair()
    opt_o = OPTIMIZER_KINDS[kind][0]([{"params": ours[:1]}, {"params": ours[1:], "lr": 0.05}])
    opt_t = OPTIMIZER_KINDS[kind][1]([{"params": theirs[:1]}, {"params": theirs[1:], "lr": 0.05}])
    sched_o, sched_t = make_ours(opt_o), make_theirs(opt_t)
    for step in range(20):
        assert sched_o.get_last_lr() == pytest.approx(sched_t.get_last_lr(), rel=1e-12, abs=1e-15), step
        for go, gt in zip(opt_o.param_groups, opt_t.param_groups):
            key = "betas" if "betas" in gt else "momentum"
            assert go[key] == pytest.approx(gt[key], rel=1e-12), step
        opt_o.step(), opt_t.step()
        if step < 19:
            sched_o.step(), sched_t.step()


def test_one_cycle_refuses_steps_past_its_end():
    p = nn.Parameter(np.ones(1))
    sched = optim.OneCycleLR(optim.SGD([p], lr=0.1, momentum=0.9), 1.0, total_steps=2)
    sched.step()
    sched.step()
    with pytest.raises(ValueError, match="stepped 3 times, but total_steps is 2"):
        sched.step()


def test_resuming_a_scheduler_needs_the_optimizer_state_first():
    p = nn.Parameter(np.ones(1))
    with pytest.raises(KeyError, match="has no 'initial_lr'"):
        optim.StepLR(optim.SGD([p], lr=0.1), 2, last_epoch=4)


# --------------------------------------------------------- resumed training ---

def make_run(seed=0):
    nn.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    sched = optim.OneCycleLR(opt, 1e-2, total_steps=24)
    return model, opt, sched


def train_steps(model, opt, sched, data, steps):
    x, y = data
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    for step in steps:
        idx = np.random.default_rng(step).permutation(len(x))[:16]  # the batch depends on the step only
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
        sched.step()


def test_a_run_resumed_from_a_checkpoint_ends_bitwise_where_the_uninterrupted_run_ends(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((64, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 64))
    whole = make_run()
    train_steps(*whole, data, range(24))

    first = make_run()
    train_steps(*first, data, range(11))
    model, opt, sched = first
    gpuconv.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
                 tmp_path / "checkpoint.npz")
    del first, model, opt, sched

    model, opt, sched = make_run(seed=5)  # other initial weights: everything must come from the file
    checkpoint = gpuconv.load(tmp_path / "checkpoint.npz")
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    sched.load_state_dict(checkpoint["scheduler"])
    train_steps(model, opt, sched, data, range(11, 24))

    expected = whole[0].state_dict()
    got = model.state_dict()
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].tobytes() == expected[name].tobytes(), name
    assert sched.get_last_lr() == whole[2].get_last_lr()
    for a, b in zip(opt.state.values(), whole[1].state.values()):
        assert a["step"] == b["step"] and a["exp_avg"].tobytes() == b["exp_avg"].tobytes()


def test_checkpoint_round_trip_keeps_types_and_refuses_what_it_cannot_store(tmp_path):
    obj = {"a": [1, 2.5, "x", None, True], 3: (np.arange(4, dtype=np.int16), np.float32(1.5)), "nested": {"t": ()}}
    gpuconv.save(obj, tmp_path / "c.npz")
    back = gpuconv.load(tmp_path / "c.npz")
    assert back["a"] == [1, 2.5, "x", None, True] and isinstance(back[3], tuple) and back["nested"] == {"t": ()}
    assert back[3][0].dtype == np.int16 and back[3][0].tolist() == [0, 1, 2, 3] and back[3][1].dtype == np.float32
    with pytest.raises(TypeError, match=r"obj\['f'\]: cannot save a function"):
        gpuconv.save({"f": lambda: 0}, tmp_path / "d.npz")
    nn.Linear(2, 2).save(tmp_path / "w.npz")
    with pytest.raises(ValueError, match="not a gpuconv checkpoint"):
        gpuconv.load(tmp_path / "w.npz")
