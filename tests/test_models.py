"""gpuconv.models: every model builds for its inputs, trains a step, and equals the same architecture written
with torch.nn (PyTorch's weights loaded into ours: outputs, every gradient and the BatchNorm buffers, in
float64); small_cnn keeps the weights seeded runs had; describe/from_description round trips; one-line
errors for unknown names, too-small inputs and unknown options."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gpuconv import models, nn, optim

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the cross-checks against torch need it")
tnn = torch.nn

#: (model, input shape) the models are made for, with their parameter counts for 10 classes.
SHAPES = [("small_cnn", (1, 8, 8)), ("lenet5", (1, 28, 28)), ("lenet5", (1, 32, 32)), ("vgg_small", (3, 32, 32)),
          ("resnet8", (3, 32, 32)), ("resnet20", (3, 32, 32))]
PARAMETERS = {"small_cnn": 6_090, "lenet5": 61_706, "vgg_small": 288_746, "resnet8": 78_042, "resnet20": 272_474}
IDS = [f"{name}-{'x'.join(map(str, shape))}" for name, shape in SHAPES]


def count(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ------------------------------------------- the same models, written with torch.nn ---

def torch_small_cnn(c, h, w, classes):
    return tnn.Sequential(tnn.Conv2d(c, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                          tnn.Conv2d(16, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                          tnn.Flatten(), tnn.Linear(32 * (h // 4) * (w // 4), classes))


def torch_lenet5(c, h, w, classes, pool="max"):
    pad = 2 if min(h, w) < 32 else 0
    p = tnn.MaxPool2d if pool == "max" else tnn.AvgPool2d
    side = lambda s: ((s + 2 * pad - 4) // 2 - 4) // 2  # noqa: E731
    return tnn.Sequential(tnn.Conv2d(c, 6, 5, padding=pad), tnn.ReLU(), p(2), tnn.Conv2d(6, 16, 5), tnn.ReLU(), p(2),
                          tnn.Flatten(), tnn.Linear(16 * side(h) * side(w), 120), tnn.ReLU(), tnn.Linear(120, 84),
                          tnn.ReLU(), tnn.Linear(84, classes))


class TorchVGGSmall(tnn.Module):
    def __init__(self, c, classes):
        super().__init__()
        layers = []
        for width in (32, 64, 128):
            for _ in range(2):
                layers += [tnn.Conv2d(c, width, 3, padding=1, bias=False), tnn.BatchNorm2d(width), tnn.ReLU()]
                c = width
            layers.append(tnn.MaxPool2d(2))
        self.features = tnn.Sequential(*layers)
        self.classifier = tnn.Linear(128, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(tnn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class TorchBlock(tnn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:  # option B: 1x1 conv + BN projection
            self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchCifarResNet(tnn.Module):
    def __init__(self, c, classes, n):
        super().__init__()
        self.conv1 = tnn.Conv2d(c, 16, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        cin = 16
        for stage, width in enumerate((16, 32, 64), start=1):
            blocks = []
            for i in range(n):
                blocks.append(TorchBlock(cin, width, 2 if stage > 1 and i == 0 else 1))
                cin = width
            setattr(self, f"layer{stage}", tnn.Sequential(*blocks))
        self.fc = tnn.Linear(64, classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean(dim=(2, 3)))


TORCH = {"small_cnn": torch_small_cnn, "lenet5": torch_lenet5,
         "vgg_small": lambda c, h, w, k: TorchVGGSmall(c, k),
         "resnet8": lambda c, h, w, k: TorchCifarResNet(c, k, 1),
         "resnet20": lambda c, h, w, k: TorchCifarResNet(c, k, 3)}


# ------------------------------------------------------------------------ tests ---

@pytest.mark.parametrize("name,shape", SHAPES, ids=IDS)
def test_each_model_builds_for_its_inputs_and_trains_one_step(name, shape):
    nn.manual_seed(0)
    model = models.build(name, *shape, 10)
    assert isinstance(model, nn.Module)
    assert count(model) == PARAMETERS[name]
    x, y = rand(2, *shape).astype(np.float32), np.array([3, 7])
    before = {k: v.copy() for k, v in model.state_dict().items()}
    logits = model(x)
    assert logits.shape == (2, 10) and logits.dtype == np.float32
    loss = nn.CrossEntropyLoss()(logits, y)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape and np.isfinite(p.grad).all(), pname
    optim.SGD(model.parameters(), lr=0.1).step()
    after = model.state_dict()
    for pname, _ in model.named_parameters():
        assert not np.array_equal(after[pname], before[pname]), f"{pname} did not change"


COMPARED = [("small_cnn", (1, 8, 8), {}), ("lenet5", (1, 28, 28), {}), ("lenet5", (1, 32, 32), {"pool": "avg"}),
            ("vgg_small", (3, 32, 32), {}), ("resnet8", (3, 32, 32), {}), ("resnet20", (3, 32, 32), {})]


@pytest.mark.parametrize("name,shape,options", COMPARED, ids=[f"{n}-{s[1]}{'-avg' if o else ''}"
                                                               for n, s, o in COMPARED])
def test_each_model_equals_the_same_architecture_in_torch(name, shape, options):
    torch.manual_seed(0)
    theirs = TORCH[name](*shape, 10, **options).double().train()
    ours = models.build(name, *shape, 10, **options).double().train()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert count(ours) == sum(p.numel() for p in theirs.parameters()) == PARAMETERS[name]
    ours.load_state_dict(theirs.state_dict())
    x, y = rand(2, *shape, seed=1), np.array([1, 8])
    out_t = theirs(torch.from_numpy(x))
    out_o = ours(x)
    np.testing.assert_allclose(out_o.numpy(), out_t.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg="forward")
    nn.CrossEntropyLoss()(out_o, y).backward()
    tnn.CrossEntropyLoss()(out_t, torch.from_numpy(y)).backward()
    grads_t = dict(theirs.named_parameters())
    for pname, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, grads_t[pname].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=pname)
    state = ours.state_dict()
    for key, value in theirs.state_dict().items():  # BatchNorm's running statistics after the training forward
        np.testing.assert_allclose(state[key], value.numpy(), rtol=1e-9, atol=1e-12, err_msg=key)
    theirs.eval(), ours.eval()  # and in eval mode, which normalises with those running statistics
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(x).numpy(), expected, rtol=1e-9, atol=1e-12, err_msg="eval forward")


def test_resnet20_with_projection_shortcuts_has_about_0_27m_parameters():
    model = models.build("resnet20", 3, 32, 32, 10)
    # He et al. 2016 give 0.27M for ResNet-20 (option A: 269,722); the two 1x1 projections add 2,752.
    assert count(model) == 269_722 + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64) == 272_474
    assert sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)) + 1 == 20


def test_small_cnn_keeps_the_weights_seeded_runs_had():
    nn.manual_seed(0)
    built = models.build("small_cnn", 1, 8, 8, 10).state_dict()
    nn.manual_seed(0)  # the layers of gpuconv.train.small_cnn before it moved here, in their order
    inline = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Flatten(), nn.Linear(32 * 2 * 2, 10)).state_dict()
    references = [inline]
    from gpuconv import train
    if hasattr(train, "small_cnn"):  # trivially equal once train imports it from models
        nn.manual_seed(0)
        references.append(train.small_cnn(1, 8, 8, 10).state_dict())
    for reference in references:
        assert list(built) == list(reference)
        for key in built:
            assert built[key].dtype == reference[key].dtype and np.array_equal(built[key], reference[key]), key
    # The first draws of each parameter, as gpuconv.train.small_cnn made them with seed 0.
    first = {"0.weight": ((16, 1, 3, 3), [0.09130778908729553, -0.15347552299499512, -0.3060176372528076]),
             "0.bias": ((16,), [-0.06232644245028496, 0.2733059823513031, -0.304622083902359]),
             "3.weight": ((32, 16, 3, 3), [-0.019871581345796585, -0.011704322881996632, -0.0018584089120849967]),
             "3.bias": ((32,), [0.06288256496191025, -0.04408963397145271, -0.010357674211263657]),
             "7.weight": ((10, 128), [0.08130286633968353, -0.021117376163601875, 0.0793662965297699]),
             "7.bias": ((10,), [-0.05845660716295242, -0.021071964874863625, 0.026802457869052887])}
    assert list(built) == list(first)
    for key, (shape, values) in first.items():
        assert built[key].shape == shape and built[key].dtype == np.float32
        assert built[key].ravel()[:3].tolist() == np.array(values, np.float32).tolist(), key


@pytest.mark.parametrize("name,shape,options", [("small_cnn", (1, 8, 8), {}), ("lenet5", (1, 28, 28), {}),
                                                ("lenet5", (3, 32, 30), {"pool": "avg", "padding": 1}),
                                                ("vgg_small", (3, 32, 32), {}), ("resnet8", (3, 32, 32), {}),
                                                ("resnet20", (3, 16, 24), {})])
def test_describe_and_from_description_round_trip(name, shape, options):
    record = models.describe(name, *shape, 7, **options)
    assert record == {"name": name, "in_channels": shape[0], "height": shape[1], "width": shape[2],
                      "num_classes": 7, "options": {**models.option_defaults(name), **options}}
    text = json.dumps(record)  # what a weights file keeps
    nn.manual_seed(3)
    original = models.build(name, *shape, 7, **options)
    for rebuilt_from in (json.loads(text), text):
        nn.manual_seed(3)
        rebuilt = models.from_description(rebuilt_from)
        assert type(rebuilt) is type(original) and repr(rebuilt) == repr(original)
        state, expected = rebuilt.state_dict(), original.state_dict()
        assert list(state) == list(expected)
        assert all(np.array_equal(state[k], expected[k]) for k in expected)
    assert models.describe(record["name"], *(record[f] for f in ("in_channels", "height", "width", "num_classes")),
                           **record["options"]) == record
    assert models.describe(name, *(np.int64(s) for s in shape), np.int64(7), **options) == record


def test_the_table_lists_every_model_and_each_builds_at_its_minimum_size():
    assert list(models.MODELS) == ["small_cnn", "lenet5", "vgg_small", "resnet8", "resnet20"]
    for name, (constructor, description, min_size, too_small_for) in models.MODELS.items():
        assert callable(constructor) and description and too_small_for and constructor.__doc__
        h, w = min_size
        model = models.build(name, 1, h, w, 3).eval()
        assert model(rand(1, 1, h, w).astype(np.float32)).shape == (1, 3)
        for small in ((h - 1, w), (h, w - 1)):
            with pytest.raises(ValueError, match=f"^{name} needs images of at least {h}x{w}, got "
                                                 f"{small[0]}x{small[1]}: images of "):
                models.build(name, 1, *small, 3)


@pytest.mark.parametrize("call,message", [
    (lambda: models.build("resnet18", 3, 32, 32, 10),
     "unknown model 'resnet18': choose one of small_cnn, lenet5, vgg_small, resnet8, resnet20"),
    (lambda: models.build("small_cnn", 1, 2, 2, 10),
     "small_cnn needs images of at least 4x4, got 2x2: images of 2x2 are too small for two 2x2 poolings"),
    (lambda: models.build("lenet5", 1, 8, 8, 10),
     "lenet5 needs images of at least 28x28, got 8x8: images of 8x8 are too small for LeNet-5's 5x5 convolutions "
     "and 2x2 poolings, made for 28x28 or 32x32 images"),
    (lambda: models.build("vgg_small", 3, 4, 32, 10),
     "vgg_small needs images of at least 8x8, got 4x32: images of 4x32 are too small for three 2x2 poolings"),
    (lambda: models.build("resnet20", 3, 32, 7, 10),
     "resnet20 needs images of at least 8x8, got 32x7: images of 32x7 are too small for two stride-2 stages and a "
     "last stage of at least 2x2"),
    (lambda: models.build("lenet5", 1, 28, 28, 10, pooling="avg"),
     "lenet5 takes the options pool, padding; unknown: pooling"),
    (lambda: models.build("resnet8", 3, 32, 32, 10, depth=2), "resnet8 takes no options; unknown: depth"),
    (lambda: models.build("lenet5", 1, 28, 28, 10, pool="min"), "lenet5: pool must be 'max' or 'avg', got 'min'"),
    (lambda: models.build("small_cnn", 0, 8, 8, 10), "small_cnn: in_channels must be a positive int, got 0"),
    (lambda: models.build("small_cnn", 1, 8, 8, 2.5), "small_cnn: num_classes must be a positive int, got 2.5"),
    (lambda: models.describe("lenet5", 1, 28, 28, 10, pool=object), "lenet5: options must be JSON values"),
    (lambda: models.from_description({"name": "small_cnn", "in_channels": 1}),
     "model description has fields ['in_channels', 'name'], expected ['height', 'in_channels', 'name', "
     "'num_classes', 'options', 'width']"),
    (lambda: models.from_description("{not json"), "model description is not valid JSON"),
    (lambda: models.from_description(dict(models.describe("small_cnn", 1, 8, 8, 10), name="vgg")),
     "unknown model 'vgg'"),
], ids=["unknown-name", "small_cnn-too-small", "lenet5-too-small", "vgg-too-small", "resnet-too-small",
        "unknown-option", "no-options", "bad-pool", "bad-channels", "bad-classes", "non-json-option",
        "description-fields", "description-not-json", "description-unknown-name"])
def test_bad_names_inputs_and_options_give_one_line_messages(call, message):
    with pytest.raises(ValueError) as info:
        call()
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text, text
