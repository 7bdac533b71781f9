"""bfloat16 as a dtype (NumPy arrays of ml_dtypes.bfloat16), autocast, GradScaler and mixed-precision training."""
import numpy as np
import pytest

import gpuconv
from gpuconv import amp, nn, optim, reference
from gpuconv import functional as F
from gpuconv._shapes import BFLOAT16, ConvGeometry
from gpuconv.nn import functional as NF
from gpuconv.nn.module import load_arrays, save_arrays

# bfloat16 keeps 8 significant bits: one rounding of a result is 2**-8 relative at most.
BF16_EPS = 2.0 ** -8


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def as_bf16(a):
    return np.asarray(a).astype(BFLOAT16)


# ------------------------------------------------------------------- bfloat16 arrays ---

@pytest.mark.parametrize("algo", ["auto", "reference"])
def test_bfloat16_convolution_is_the_float32_one_of_its_inputs_rounded_once(algo):
    """Inputs in bfloat16, sums in float32, the result rounded to bfloat16 once: so it equals the float32
    convolution of the same (bfloat16) values, rounded, within one bfloat16 rounding."""
    x, w = as_bf16(rand(2, 3, 7, 6)), as_bf16(rand(4, 3, 3, 3, seed=1))
    y = F.conv2d(x, w, stride=2, padding=1, algo=algo)
    assert y.dtype == BFLOAT16
    exact = F.conv2d(x.astype(np.float32), w.astype(np.float32), stride=2, padding=1)
    np.testing.assert_allclose(y.astype(np.float32), exact, rtol=BF16_EPS, atol=BF16_EPS * np.abs(exact).max())
    g = ConvGeometry.create(x.shape, w.shape, 2, 1)
    dy = as_bf16(rand(*g.output_shape, seed=2))
    for got, want in ((F.conv2d_grad_input(dy, w, x.shape, 2, 1, algo=algo),
                       reference.conv2d_grad_input(dy.astype(np.float32), w.astype(np.float32), g)),
                      (F.conv2d_grad_weight(x, dy, w.shape, 2, 1, algo=algo),
                       reference.conv2d_grad_weight(x.astype(np.float32), dy.astype(np.float32), g))):
        assert got.dtype == BFLOAT16
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=BF16_EPS, atol=BF16_EPS * np.abs(want).max())


def test_bfloat16_pooling_and_nan():
    x = as_bf16(rand(1, 2, 6, 6))
    x[0, 1, 2, 2] = np.nan
    y, indices = F.max_pool2d(x, 2, return_indices=True)
    assert y.dtype == BFLOAT16 and np.isnan(y.astype(np.float32)[0, 1, 1, 1])
    assert indices[0, 1, 1, 1] == 2 * 6 + 2
    np.testing.assert_array_equal(F.max_pool2d(x.astype(np.float32), 2), y.astype(np.float32))
    avg = F.avg_pool2d(x, 3, 1, 1)
    assert avg.dtype == BFLOAT16


def test_bfloat16_layers_gradients_and_weight_files(tmp_path):
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(12, 2)).to(BFLOAT16)
    assert all(p.dtype == BFLOAT16 for p in model.parameters())
    x = gpuconv.tensor(as_bf16(rand(3, 2, 4, 4)), requires_grad=True)
    model(x).sum().backward()
    assert x.grad.dtype == BFLOAT16 and all(p.grad.dtype == BFLOAT16 for p in model.parameters())
    optim.Adam(model.parameters(), lr=1e-2).step()
    path = tmp_path / "bf16.npz"
    save_arrays(path, model.state_dict())
    loaded = load_arrays(path)
    assert all(v.dtype == BFLOAT16 for v in loaded.values())
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded[name].view(np.uint16), np.asarray(value).view(np.uint16))
    gpuconv.save({"model": model.state_dict()}, tmp_path / "ckpt.npz")
    assert gpuconv.load(tmp_path / "ckpt.npz")["model"]["0.weight"].dtype == BFLOAT16


# ------------------------------------------------------------------------- autocast ---

@pytest.mark.parametrize("dtype", [BFLOAT16, np.dtype(np.float16)], ids=["bf16", "fp16"])
def test_autocast_computes_convolutions_low_and_the_rest_in_float32(dtype):
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3))
    x, target = rand(6, 2, 5, 5), np.array([0, 1, 2, 0, 1, 2])
    with amp.autocast(dtype):
        conv_out = model[0](x)
        assert conv_out.dtype == dtype
        assert model[1](conv_out).dtype == np.float32  # batch norm in float32
        logits = model(x)
        assert logits.dtype == dtype
        loss = nn.CrossEntropyLoss()(logits, target)
        assert loss.dtype == np.float32
        assert NF.softmax(logits, dim=1).dtype == np.float32
    loss.backward()
    assert all(p.dtype == np.float32 and p.grad.dtype == np.float32 for p in model.parameters())  # master weights


@pytest.mark.parametrize("dtype,bound", [(BFLOAT16, 0.03), (np.dtype(np.float16), 0.004)], ids=["bf16", "fp16"])
def test_autocast_gradients_are_the_float32_ones_to_the_low_precision(dtype, bound):
    """Without batch norm (over a batch of 6 it amplifies its input's rounding): measured at most 9.6e-3
    (bfloat16) and 1.6e-3 (float16) relative to each gradient's norm."""
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    x, target = rand(6, 2, 5, 5), np.array([0, 1, 2, 0, 1, 2])
    with amp.autocast(dtype):
        loss = nn.CrossEntropyLoss()(model(x), target)
    loss.backward()
    low = [p.grad for p in model.parameters()]
    model.zero_grad()
    nn.CrossEntropyLoss()(model(x), target).backward()
    for g_low, p in zip(low, model.parameters()):
        assert np.linalg.norm(g_low - p.grad) <= bound * np.linalg.norm(p.grad)
    assert amp.get_autocast_dtype() is None


def test_autocast_nests_disables_and_refuses_other_dtypes():
    with amp.autocast(BFLOAT16):
        with amp.autocast(np.float16):
            assert amp.get_autocast_dtype() == np.float16
        assert amp.get_autocast_dtype() == BFLOAT16
        with amp.autocast(BFLOAT16, enabled=False):
            assert NF.linear(rand(2, 3), rand(4, 3)).dtype == np.float32
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        with amp.autocast(np.float64):
            pass


# ------------------------------------------------------------------------ GradScaler ---

def _one_parameter(grad_value):
    p = nn.Parameter(np.ones(3, np.float32))
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.full(3, grad_value, np.float32)
    return p, opt


def test_grad_scaler_unscales_and_steps():
    scaler = amp.GradScaler(init_scale=8.0, growth_interval=2)
    p, opt = _one_parameter(8.0)  # a gradient of 1, scaled by 8
    assert scaler.step(opt)
    np.testing.assert_allclose(p.data, 0.9)
    scaler.update()
    p.grad = np.full(3, 8.0, np.float32)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 16.0  # two good steps: growth
    assert float(scaler.scale(gpuconv.tensor(np.float32(2.0))).data) == 32.0


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_grad_scaler_skips_an_overflowed_step_and_backs_off(bad):
    scaler = amp.GradScaler(init_scale=1024.0)
    p, opt = _one_parameter(bad)
    assert not scaler.step(opt)
    np.testing.assert_array_equal(p.data, 1.0)  # untouched
    scaler.update()
    assert scaler.get_scale() == 512.0 and scaler.skipped_steps == 1
    state = scaler.state_dict()
    again = amp.GradScaler()
    again.load_state_dict(state)
    assert again.get_scale() == 512.0 and again.skipped_steps == 1


def test_float16_training_with_a_tiny_loss_needs_the_scaler():
    """A loss of 1e-8 per sample: its float16 gradients underflow to zero unscaled; scaled they do not."""
    nn.manual_seed(0)
    model = nn.Linear(4, 2)
    x = rand(8, 4)
    grads = {}
    for enabled in (False, True):
        model.zero_grad()
        scaler = amp.GradScaler(init_scale=2.0 ** 24, enabled=enabled)
        with amp.autocast(np.float16):
            out = model(x)
        scaler.scale((out.astype(np.float32) * 1e-8).sum()).backward()
        scaler.unscale_(optim.SGD(model.parameters(), lr=0.1))
        grads[enabled] = model.weight.grad.copy()
    assert not grads[False].any()
    x16 = x.astype(np.float16).astype(np.float32)  # what the float16 weight gradient multiplies
    np.testing.assert_allclose(grads[True], np.tile(x16.sum(axis=0) * 1e-8, (2, 1)), rtol=2e-3)


# -------------------------------------------------------------------------- training ---

@pytest.mark.slow
def test_mixed_precision_training_reaches_float32_accuracy(tmp_path):
    """``gpuconv train --precision bf16 | fp16`` on the default data: within a point of fp32's accuracy."""
    from gpuconv import data, train
    digits = data.load_digits()
    accuracy = {}
    for precision in ("fp32", "bf16", "fp16"):
        config = train.TrainConfig(precision=precision)
        (tmp_path / precision).mkdir()
        result = train.train(digits, config, progress=False, log=lambda *a: None,
                             checkpoint_dir=str(tmp_path / precision))
        accuracy[precision] = result.test_accuracy
    assert accuracy["fp32"] > 0.97
    assert abs(accuracy["bf16"] - accuracy["fp32"]) <= 0.01 and abs(accuracy["fp16"] - accuracy["fp32"]) <= 0.01
    state = train.read_checkpoint(str(tmp_path / "fp16"))
    assert state["config"]["precision"] == "fp16" and state["scaler"]["scale"] > 0


def test_precision_flag_is_checked():
    from gpuconv import train
    assert "--precision must be one of fp32, bf16, fp16, got 'fp8'" in train.TrainConfig(precision="fp8").problems()


def test_grad_scaler_refuses_a_second_unscale_before_update():
    scaler = amp.GradScaler(init_scale=8.0)
    p, opt = _one_parameter(8.0)
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already called"):
        scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    np.testing.assert_allclose(p.data, 0.9)  # divided by the scale once


def test_autocast_leaves_float64_alone():
    with amp.autocast(np.float16):
        assert NF.conv2d(rand(1, 1, 4, 4).astype(np.float64), rand(1, 1, 3, 3).astype(np.float64)).dtype == np.float64
        assert NF.conv2d(rand(1, 1, 4, 4), rand(1, 1, 3, 3)).dtype == np.float16
        assert NF.linear(rand(2, 3).astype(np.float64), rand(4, 3).astype(np.float64)).dtype == np.float64
