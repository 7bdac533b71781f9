"""The autotuner on a real GPU: it times every candidate with CUDA events, stores the winner, reuses it,
and what it chose computes the right result."""
from __future__ import annotations

import json

import numpy as np
import pytest

import gpuconv
from gpuconv import reference
from gpuconv._backend import cuda_available
from gpuconv._shapes import ConvGeometry
from gpuconv.cuda import autotune, conv, plan

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="no CUDA device")]


@pytest.fixture
def tuning(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GPUCONV_AUTOTUNE", "1")
    autotune.forget_memory()
    yield tmp_path / autotune.CACHE_FILE
    autotune.forget_memory()


@pytest.mark.parametrize("shape", [((8, 32, 28, 28), (64, 32, 3, 3), 1), ((8, 32, 28, 28), (32, 1, 3, 3), 32)],
                         ids=["dense", "depthwise"])
def test_auto_tunes_once_and_computes_the_right_result(cp, make_data, assert_matches, tuning, shape):
    x_shape, w_shape, groups = shape
    g = ConvGeometry.create(x_shape, w_shape, padding=1, groups=groups)
    x, w, dy = (make_data(s, np.float32, i) for i, s in enumerate((g.input_shape, g.weight_shape, g.output_shape)))
    xg, wg, dyg = cp.asarray(x), cp.asarray(w), cp.asarray(dy)
    y = gpuconv.conv2d(xg, wg, padding=1, groups=groups)
    dx = gpuconv.conv2d_grad_input(dyg, wg, g.input_shape, padding=1, groups=groups)
    dw = gpuconv.conv2d_grad_weight(xg, dyg, g.weight_shape, padding=1, groups=groups)
    assert_matches(y, reference.conv2d_forward(x, w, g), np.float32, "autotuned fprop")
    assert_matches(dx, reference.conv2d_grad_input(dy, w, g), np.float32, "autotuned dgrad")
    assert_matches(dw, reference.conv2d_grad_weight(x, dy, g), np.float32, "autotuned wgrad")
    entries = json.loads(tuning.read_text())["entries"]
    assert len(entries) == 3
    for entry in entries.values():
        print(entry["choice"], entry["median_ms"])  # pytest -s shows what was chosen
        assert entry["choice"] in entry["median_ms"] and all(ms > 0 for ms in entry["median_ms"].values())
        assert sum(ms * n for ms, n in zip(entry["median_ms"].values(), entry["samples"].values())) < 1.5e3
    before = tuning.stat().st_mtime_ns
    tuned = conv.make_plan("fprop", g, np.float32, "auto", operands=[xg, wg])
    assert tuned.reason.startswith("autotuned") and tuned.variant in plan.candidates("fprop", g, np.float32)
    assert tuning.stat().st_mtime_ns == before, "a known shape was tuned again"
