"""Every layer and loss against PyTorch's, forward and backward, with one helper (as tinygrad's test_ops):
the same weights (loaded from the torch module's state_dict), the same input, then the outputs, the input
gradient and every parameter gradient compared. And the model the autograd issue was found with: a reused
ReLU, a tied weight and a forward-only custom module."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import nn

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the cross-checks against torch need it")
tnn = torch.nn


def compare(ours, theirs, x, *extra, target=None, rtol=1e-10, atol=1e-12, train=True):
    """Forward and backward of ``ours`` and ``theirs`` (float64) on ``x``: outputs and all gradients equal."""
    theirs = theirs.double().train(train)
    result = ours.double().load_state_dict(theirs.state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    ours.train(train)
    xt = torch.tensor(x, requires_grad=True)
    xo = gpuconv.tensor(x, requires_grad=True)
    args_t = [torch.from_numpy(e) for e in extra]
    out_t = theirs(xt, *args_t)
    out_o = ours(xo, *extra)
    np.testing.assert_allclose(out_o.numpy(), out_t.detach().numpy(), rtol=rtol, atol=atol, err_msg="forward")
    weights = np.random.default_rng(7).standard_normal(out_o.shape)
    (out_t * torch.from_numpy(weights)).sum().backward()
    (out_o * weights).sum().backward()
    if x.dtype.kind == "f":
        np.testing.assert_allclose(xo.grad, xt.grad.numpy(), rtol=rtol, atol=atol, err_msg="input gradient")
    theirs_params = dict(theirs.named_parameters())
    ours_params = dict(ours.named_parameters())
    assert list(ours_params) == list(theirs_params)
    for name, p in ours_params.items():
        np.testing.assert_allclose(p.grad, theirs_params[name].grad.numpy(), rtol=rtol, atol=atol, err_msg=name)
    for name, value in theirs.state_dict().items():  # buffers: BatchNorm's running statistics and count
        np.testing.assert_allclose(ours.state_dict()[name], value.numpy(), rtol=rtol, atol=atol, err_msg=name)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


LAYERS = [
    ("Conv2d", lambda m: m.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 6)),
    ("Conv2d-groups-dilation-nobias", lambda m: m.Conv2d(4, 6, 3, dilation=2, groups=2, bias=False), (1, 4, 7, 7)),
    ("ConvTranspose2d", lambda m: m.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1), (2, 3, 4, 5)),
    ("ConvTranspose2d-groups-dilation", lambda m: m.ConvTranspose2d(4, 2, 2, groups=2, dilation=2), (1, 4, 3, 3)),
    ("Linear", lambda m: m.Linear(5, 3), (4, 5)),
    ("Linear-3d", lambda m: m.Linear(5, 3), (2, 4, 5)),
    ("MaxPool2d", lambda m: m.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 2, 7, 6)),
    ("AvgPool2d", lambda m: m.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 2, 7, 6)),
    ("AdaptiveAvgPool2d", lambda m: m.AdaptiveAvgPool2d((3, 2)), (2, 2, 7, 5)),
    ("AdaptiveAvgPool2d-global", lambda m: m.AdaptiveAvgPool2d(1), (2, 3, 4, 4)),
    ("Flatten", lambda m: m.Flatten(1, 2), (2, 3, 4, 5)),
    ("BatchNorm2d", lambda m: m.BatchNorm2d(3), (4, 3, 3, 2)),
    ("BatchNorm1d", lambda m: m.BatchNorm1d(3), (5, 3)),
    ("BatchNorm1d-3d-no-affine", lambda m: m.BatchNorm1d(3, affine=False), (4, 3, 2)),
    ("ReLU", lambda m: m.ReLU(), (3, 4)),
    ("LeakyReLU", lambda m: m.LeakyReLU(0.1), (3, 4)),
    ("Sigmoid", lambda m: m.Sigmoid(), (3, 4)),
    ("Tanh", lambda m: m.Tanh(), (3, 4)),
    ("Softmax", lambda m: m.Softmax(dim=1), (3, 4)),
    ("LogSoftmax", lambda m: m.LogSoftmax(dim=-1), (2, 3, 4)),
    ("Identity", lambda m: m.Identity(), (3, 4)),
    ("Sequential", lambda m: m.Sequential(m.Conv2d(2, 3, 3, padding=1), m.BatchNorm2d(3), m.ReLU(),
                                          m.AdaptiveAvgPool2d(1), m.Flatten(), m.Linear(3, 2)), (4, 2, 5, 5)),
]


@pytest.mark.parametrize("make,shape", [c[1:] for c in LAYERS], ids=[c[0] for c in LAYERS])
def test_layer_matches_torch(make, shape):
    nn.manual_seed(0)
    torch.manual_seed(0)
    compare(make(nn), make(tnn), rand(*shape))


@pytest.mark.parametrize("make,shape", [c[1:] for c in LAYERS if "BatchNorm" in c[0] or c[0] == "Sequential"],
                         ids=[c[0] for c in LAYERS if "BatchNorm" in c[0] or c[0] == "Sequential"])
def test_layer_in_eval_mode_matches_torch(make, shape):
    theirs = make(tnn).double()
    with torch.no_grad():  # running statistics away from 0 / 1, so that eval mode uses them
        theirs(torch.from_numpy(rand(*shape, seed=3) * 2 + 1))
    compare(make(nn), theirs, rand(*shape), train=False)


LOSSES = [
    ("CrossEntropyLoss", lambda m: m.CrossEntropyLoss(), (5, 4), np.array([0, 3, 1, 1, 2])),
    ("CrossEntropyLoss-sum-smoothing", lambda m: m.CrossEntropyLoss(reduction="sum", label_smoothing=0.3), (5, 4),
     np.array([0, 3, 1, 1, 2])),
    ("CrossEntropyLoss-none-ignore", lambda m: m.CrossEntropyLoss(reduction="none", ignore_index=2), (5, 4),
     np.array([0, 3, 2, 1, 2])),
    ("CrossEntropyLoss-mean-ignore-smoothing-nd", lambda m: m.CrossEntropyLoss(ignore_index=0, label_smoothing=0.1),
     (2, 4, 3), np.array([[0, 3, 1], [1, 2, 2]])),
    ("NLLLoss", lambda m: m.NLLLoss(), (3, 4), np.array([3, 0, 1])),
    ("MSELoss", lambda m: m.MSELoss(), (3, 4), rand(3, 4, seed=5)),
    ("MSELoss-none", lambda m: m.MSELoss(reduction="none"), (3, 4), rand(3, 4, seed=5)),
]


@pytest.mark.parametrize("make,shape,target", [c[1:] for c in LOSSES], ids=[c[0] for c in LOSSES])
def test_loss_matches_torch(make, shape, target):
    compare(make(nn), make(tnn), rand(*shape), target)


def test_cross_entropy_of_only_ignored_targets_is_nan_as_in_torch():
    x, t = rand(2, 3), np.array([-100, -100])
    ours = nn.CrossEntropyLoss()(x, t)
    theirs = tnn.CrossEntropyLoss()(torch.from_numpy(x), torch.from_numpy(t))
    assert np.isnan(float(ours)) and torch.isnan(theirs)


# ------------------------------------------- the model the issue was found with ---

class Residual(nn.Module):
    """A forward-only custom module: its backward is derived."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return x + self.block(x)


class TorchResidual(tnn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return x + self.block(x)


def reused_and_tied(m, residual):
    """conv-relu-conv-relu with one ReLU instance, a residual block, and a linear layer applied twice."""
    relu = m.ReLU()
    lin = m.Linear(8, 8)
    features = m.Sequential(m.Conv2d(2, 4, 3, padding=1), relu, m.Conv2d(4, 4, 3, padding=1), relu,
                            m.MaxPool2d(2), residual(m.Sequential(m.Conv2d(4, 4, 1), m.ReLU())),
                            m.AdaptiveAvgPool2d((1, 2)), m.Flatten())
    return m.Sequential(features, lin, relu, lin, m.Linear(8, 3))


def test_reused_relu_tied_weight_and_custom_module_give_torchs_gradients():
    ours, theirs = reused_and_tied(nn, Residual).double(), reused_and_tied(tnn, TorchResidual).double()
    assert len(ours.parameters()) == len(list(theirs.parameters())) == 10  # the tied linear layer counted once
    x, y = rand(6, 2, 6, 6), np.array([0, 1, 2, 2, 1, 0])
    ours.load_state_dict(theirs.state_dict())
    loss = nn.CrossEntropyLoss()(ours(x), y)
    theirs_loss = tnn.CrossEntropyLoss()(theirs(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    theirs_loss.backward()
    assert abs(float(loss) - theirs_loss.item()) < 1e-12
    worst = 0.0
    for (name, p), (tname, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name == tname
        worst = max(worst, float(np.abs(p.grad - tp.grad.numpy()).max()))
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    assert worst < 1e-12, worst
    # One SGD step updates the tied weight once, as PyTorch's does.
    gpuconv.optim.SGD(ours.parameters(), lr=0.1).step()
    torch.optim.SGD(theirs.parameters(), lr=0.1).step()
    for name, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[name], value.numpy(), rtol=1e-12, atol=1e-14, err_msg=name)


def test_float32_model_gradients_match_torch_within_float32_rounding():
    ours, theirs = reused_and_tied(nn, Residual), reused_and_tied(tnn, TorchResidual)
    ours.load_state_dict(theirs.state_dict())
    x, y = rand(6, 2, 6, 6).astype(np.float32), np.array([0, 1, 2, 2, 1, 0])
    nn.CrossEntropyLoss()(ours(x), y).backward()
    tnn.CrossEntropyLoss()(theirs(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    for (name, p), tp in zip(ours.named_parameters(), theirs.parameters()):
        assert p.grad.dtype == np.float32
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)


# --------------------------------------------------------- module habits ---

def test_a_torch_state_dict_with_num_batches_tracked_loads_and_strict_false_reports():
    theirs = tnn.Sequential(tnn.Conv2d(1, 2, 3), tnn.BatchNorm2d(2))
    with torch.no_grad():
        theirs(torch.randn(3, 1, 5, 5))
    ours = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert int(ours[1].num_batches_tracked) == 1 and ours[1].num_batches_tracked.dtype == np.int64
    state = dict(theirs.state_dict())
    del state["1.running_var"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['1.running_var'\], unexpected \['extra.weight'\]"):
        ours.load_state_dict(state)
    result = ours.load_state_dict(state, strict=False)
    assert result.missing_keys == ["1.running_var"] and result.unexpected_keys == ["extra.weight"]


def test_modules_children_apply_numel_and_module_list():
    blocks = nn.ModuleList([nn.Linear(3, 3), nn.ReLU()])
    blocks.append(nn.Linear(3, 2))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = blocks
            self.head = blocks[0]  # shared: listed once by modules() and parameters()

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    net = Net()
    assert [type(m).__name__ for m in net.modules()] == ["Net", "ModuleList", "Linear", "ReLU", "Linear"]
    assert [name for name, _ in net.named_modules()] == ["", "blocks", "blocks.0", "blocks.1", "blocks.2"]
    assert net.children() == [blocks, blocks[0]]
    assert sum(p.numel() for p in net.parameters()) == 3 * 3 + 3 + 3 * 2 + 2
    assert "head.weight" in net.state_dict() and "blocks.0.weight" in net.state_dict()  # both names, as torch
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Linear", "ReLU", "Linear", "ModuleList", "Linear", "Net"]
    assert net(np.ones((4, 3), np.float32)).shape == (4, 2)


def test_a_module_without_forward_says_what_to_define():
    class Empty(nn.Module):
        pass

    with pytest.raises(NotImplementedError, match="Empty defines no forward"):
        Empty()(np.ones(2))
