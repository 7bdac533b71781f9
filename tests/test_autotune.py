"""The autotuner (gpuconv.cuda.autotune), on the CPU: a fake GPU backend whose kernels do nothing and a
fake timer that says how long each candidate takes."""
from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest

from gpuconv import __version__
from gpuconv._backend import GPUOutOfMemoryError
from gpuconv._shapes import ConvGeometry
from gpuconv.cuda import autotune, conv, plan, registry
from gpuconv.suites import load_suite

DENSE = ConvGeometry.create((4, 8, 12, 12), (16, 8, 3, 3), padding=1)


class _ZerosAsEmpty:
    """NumPy, but new buffers are zeros: the fake kernels write nothing."""
    empty = staticmethod(np.zeros)

    def __getattr__(self, name):
        return getattr(np, name)


class FakeGPU:
    """A backend that runs plans without computing anything and remembers the kernels launched."""

    autotunable = True
    out_of_memory_errors = (MemoryError,)

    def __init__(self, name="Fake H100", cc="9.0", free=1 << 40):
        self.xp = _ZerosAsEmpty()
        self.identity = (name, cc)
        self.free = free
        self.launches, self.prepared = [], []

    def launch(self, launch, args):
        self.launches.append(launch.variant.name)

    def prepare(self, launch):
        self.prepared.append(launch.variant.name)

    def matmul(self, a, b):
        return np.matmul(a, b)

    def free_bytes(self):
        return self.free

    def device_identity(self):
        return self.identity

    def compute_capability(self):
        major, minor = self.identity[1].split(".")
        return int(major) * 10 + int(minor)

    def capturing(self):
        return False


class FakeTimer:
    """Seconds per candidate, told by the first kernel the run launched (im2col: the im2col kernel)."""

    def __init__(self, backend, seconds: dict):
        self.backend, self.seconds, self.calls = backend, seconds, []

    def __call__(self, fn):
        before = len(self.backend.launches)
        fn()
        first = self.backend.launches[before]
        name = "im2col" if first in ("im2col_nchw", "col2im_nchw") else first
        self.calls.append(name)
        return self.seconds[name]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GPUCONV_AUTOTUNE", raising=False)
    autotune.set_enabled(None)
    autotune.forget_memory()
    yield tmp_path / "autotune-v1.json"
    autotune.forget_memory()


def _operands(g=DENSE):
    return [np.ones(g.input_shape, np.float32), np.ones(g.weight_shape, np.float32)]


def _fake(monkeypatch, seconds, **kwargs):
    gpu = FakeGPU(**kwargs)
    timer = FakeTimer(gpu, seconds)
    monkeypatch.setattr(FakeGPU, "timer", lambda self: timer, raising=False)
    return gpu, timer


WINNER = "fprop_simt_64x64x16_1stage"
#: Every fprop candidate takes 0.9 ms but im2col (0.3 ms) and the winner (0.1 ms).
FPROP_TIMES = {**{name: 9e-4 for name in plan.candidates("fprop", DENSE, np.float32)}, "im2col": 3e-4, WINNER: 1e-4}


def test_first_call_times_every_candidate_and_stores_the_winner(cache, monkeypatch):
    gpu, timer = _fake(monkeypatch, FPROP_TIMES)
    the_plan = conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands())
    assert the_plan.variant == "fprop_simt_64x64x16_1stage" and the_plan.reason.startswith("autotuned")
    assert set(timer.calls) == set(plan.candidates("fprop", DENSE, np.float32))
    assert set(gpu.prepared) >= {"im2col_nchw", "fprop_simt_256x4x16_1stage", "fprop_simt_64x64x16_1stage"}
    data = json.loads(cache.read_text())
    assert data["format"] == 1
    (key, entry), = data["entries"].items()
    assert key == f"Fake H100|9.0|fprop|{autotune.geometry_key(DENSE)}|float32|gpuconv {__version__}"
    assert entry["choice"] == "fprop_simt_64x64x16_1stage"
    assert entry["median_ms"] == {name: round(s * 1e3, 6) for name, s in FPROP_TIMES.items()}
    assert entry["samples"] == {name: 5 for name in FPROP_TIMES}  # warm-up, then REPEATS within the budget
    assert entry["device"] == "Fake H100" and entry["compute_capability"] == "9.0"


def test_a_known_shape_is_not_timed_again_in_this_or_another_process(cache, monkeypatch):
    gpu, timer = _fake(monkeypatch, FPROP_TIMES)
    conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands())
    timed = len(timer.calls)
    assert conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands()).variant == \
        "fprop_simt_64x64x16_1stage"
    autotune.forget_memory()  # as a new process: only the file knows
    assert conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands()).variant == \
        "fprop_simt_64x64x16_1stage"
    assert len(timer.calls) == timed


@pytest.mark.parametrize("change", ["device", "cc", "pass", "batch", "dtype", "version"])
def test_every_part_of_the_key_matters(change):
    base = ("H100", "9.0", "fprop", DENSE, np.float32, "0.1.0")
    other = {"device": ("A100", "9.0", "fprop", DENSE, np.float32, "0.1.0"),
             "cc": ("H100", "8.0", "fprop", DENSE, np.float32, "0.1.0"),
             "pass": ("H100", "9.0", "wgrad", DENSE, np.float32, "0.1.0"),
             "batch": ("H100", "9.0", "fprop", ConvGeometry.create((5, 8, 12, 12), (16, 8, 3, 3), padding=1),
                       np.float32, "0.1.0"),
             "dtype": ("H100", "9.0", "fprop", DENSE, np.float16, "0.1.0"),
             "version": ("H100", "9.0", "fprop", DENSE, np.float32, "0.2.0")}[change]
    assert autotune.key(*base) != autotune.key(*other)


def test_a_cached_choice_that_no_longer_exists_is_tuned_again(cache, monkeypatch):
    gpu, timer = _fake(monkeypatch, FPROP_TIMES)
    key = autotune.key("Fake H100", "9.0", "fprop", DENSE, np.float32)
    autotune.store(key, {"choice": "fprop_simt_512x512x8_9stage", "median_ms": {}})
    assert conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands()).variant == \
        "fprop_simt_64x64x16_1stage"
    assert timer.calls


def test_switched_off_auto_applies_the_fixed_rule_without_timing(cache, monkeypatch):
    gpu, timer = _fake(monkeypatch, FPROP_TIMES)
    monkeypatch.setenv("GPUCONV_AUTOTUNE", "0")
    assert not autotune.enabled()
    assert conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands()).variant == "im2col"
    monkeypatch.delenv("GPUCONV_AUTOTUNE")
    autotune.set_enabled(False)
    p = conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands())
    assert p.variant == "im2col" and p.reason.startswith("fixed rule")
    assert timer.calls == [] and not cache.exists()
    autotune.set_enabled(None)
    assert autotune.enabled()


def test_explicit_algorithms_are_never_tuned(cache, monkeypatch):
    gpu, timer = _fake(monkeypatch, FPROP_TIMES)
    assert conv.make_plan("fprop", DENSE, np.float32, "implicit_gemm", gpu).variant == \
        plan.rule_variant("fprop", DENSE, np.float32).name
    assert conv.make_plan("fprop", DENSE, np.float32, "im2col", gpu).variant == "im2col"
    assert timer.calls == []


def test_budget_gives_each_candidate_a_share_warm_up_excluded():
    timer_calls = []

    def timer(fn):
        name = fn()
        timer_calls.append(name)
        return {"fast": 0.01, "slow": 0.2, "huge": 2.0}[name]

    plans = {"fast": "fast", "slow": "slow", "huge": "huge"}
    samples = autotune.measure(plans, lambda p: p, timer, budget=0.9, repeats=5)
    # share 0.3 s each. fast: warm-up + 5 timed (0.06 s). slow: warm-up 0.2 + one timed 0.2 = 0.4: a third
    # would exceed the share. huge: a single launch exceeds the share: warm-up + the one timed launch.
    assert samples == {"fast": [0.01] * 5, "slow": [0.2], "huge": [2.0]}
    assert [timer_calls.count(n) for n in ("fast", "slow", "huge")] == [6, 2, 2]


def test_a_failing_candidate_is_left_out_with_its_error():
    def run(name):
        if name == "broken":
            raise RuntimeError("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")
        return name

    failures = {}
    samples = autotune.measure({"ok": "ok", "broken": "broken"}, run, lambda fn: (fn(), 0.01)[1], failures=failures)
    assert list(samples) == ["ok"] and "OUT_OF_RESOURCES" in str(failures["broken"])


def test_candidates_that_do_not_fit_are_skipped(cache, monkeypatch):
    output = int(np.prod(DENSE.output_shape)) * 4
    gpu, timer = _fake(monkeypatch, FPROP_TIMES, free=output + plan.im2col_bytes_per_image(DENSE, 4))
    entry = autotune.tune("fprop", DENSE, np.float32, gpu, _operands(), gpu.free, timer=timer)
    assert "im2col" in entry["skipped"] and "im2col" not in entry["median_ms"]
    assert "needs" in entry["skipped"]["im2col"]
    assert entry["choice"] == "fprop_simt_64x64x16_1stage"


def test_out_of_memory_while_timing_skips_that_candidate(cache, monkeypatch):
    gpu, timer = _fake(monkeypatch, FPROP_TIMES)
    real_launch = gpu.launch

    def launch(launch, args):
        if launch.variant.name == "fprop_simt_64x64x16_1stage":
            raise MemoryError("out of memory allocating 1,024 bytes")
        real_launch(launch, args)
    gpu.launch = launch
    entry = autotune.tune("fprop", DENSE, np.float32, gpu, _operands(), timer=timer)
    assert entry["choice"] == "im2col"
    assert entry["skipped"]["fprop_simt_64x64x16_1stage"].startswith("GPUOutOfMemoryError")


def test_unreadable_cache_file_is_replaced(cache, monkeypatch):
    cache.write_text("{not json")
    gpu, _ = _fake(monkeypatch, FPROP_TIMES)
    conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands())
    assert len(json.loads(cache.read_text())["entries"]) == 1


def _store_many(args):
    directory, worker = args
    import os
    os.environ["GPUCONV_CACHE_DIR"] = directory
    from gpuconv.cuda import autotune as tuner
    for i in range(20):
        tuner.store(f"worker{worker}-entry{i}", {"choice": "im2col", "median_ms": {"im2col": float(i)}})
    return worker


def test_several_processes_writing_at_once_lose_nothing(cache):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert sorted(pool.map(_store_many, [(str(cache.parent), w) for w in range(4)])) == [0, 1, 2, 3]
    entries = json.loads(cache.read_text())["entries"]
    assert set(entries) == {f"worker{w}-entry{i}" for w in range(4) for i in range(20)}
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".autotune-v1.json.")], "temporary files left"


def test_cache_directory_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("GPUCONV_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert autotune.cache_path() == tmp_path / "gpuconv" / "autotune-v1.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert autotune.cache_path() == tmp_path / "home" / ".cache" / "gpuconv" / "autotune-v1.json"


def test_tune_suite_fills_the_cache_and_says_what_it_chose(cache, monkeypatch):
    times = {**{v.name: 6e-4 for p in ("fprop", "dgrad", "wgrad") for v in registry.conv_variants(p)},
             "im2col": 2e-4, "fprop_simt_64x64x16_1stage": 1e-4, "dgrad_simt_256x4x16_1stage": 1e-4}
    gpu, _ = _fake(monkeypatch, times)
    lines = []
    suite = load_suite("tiny")
    results = autotune.tune_suite(suite, 2, np.float32, backend=gpu, report=lines.append)
    assert len(results) == 3 * len(suite.layers) and not any(cached for *_, cached in results)
    assert {entry["choice"] for _, p, entry, _ in results if p == "dgrad"} == {"dgrad_simt_256x4x16_1stage"}
    assert "Fake H100" in lines[0] and any("wgrad  im2col" in line for line in lines)
    again = autotune.tune_suite(suite, 2, np.float32, backend=gpu, report=lines.append)
    assert all(cached for *_, cached in again)


def test_gpuconv_tune_without_a_gpu_says_so(capsys):
    from gpuconv import cli
    from gpuconv._backend import cuda_available

    if cuda_available():
        pytest.skip("this machine has a GPU: gpuconv tune would really tune")
    assert cli.main(["tune", "--suite", "tiny"]) == 2
    assert "CUDA requested but unavailable" in capsys.readouterr().err
    assert cli.main(["tune", "--suite", "tiny", "--passes", "forward"]) == 2
    assert "--passes" in capsys.readouterr().err


def test_when_no_candidate_runs_the_error_is_the_one_the_fixed_rule_gives(cache, monkeypatch):
    gpu, timer = _fake(monkeypatch, FPROP_TIMES)
    gpu.launch = lambda launch, args: (_ for _ in ()).throw(MemoryError("out of memory"))
    with pytest.raises(GPUOutOfMemoryError, match=r"conv2d fprop \(forward, im2col\) needs [\d,]+ bytes"):
        autotune.tune("fprop", DENSE, np.float32, gpu, _operands(), timer=timer)


def test_a_choice_made_under_memory_pressure_is_not_written_for_others(cache, monkeypatch):
    output = int(np.prod(DENSE.output_shape)) * 4
    gpu, timer = _fake(monkeypatch, {**FPROP_TIMES, "im2col": 1e-5},
                       free=output + plan.im2col_bytes_per_image(DENSE, 4))
    assert conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands()).variant == \
        "fprop_simt_64x64x16_1stage"
    assert not cache.exists()
    autotune.forget_memory()  # another process, with memory to spare: tunes again, and im2col wins
    gpu.free = 1 << 40
    assert conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands()).variant == "im2col"
    assert json.loads(cache.read_text())["entries"]


def test_an_unwritable_cache_directory_costs_a_warning_not_the_call(cache, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(blocker / "cache"))  # a directory inside a file: cannot exist
    gpu, timer = _fake(monkeypatch, FPROP_TIMES)
    monkeypatch.setattr(autotune, "_warned_unwritable", False)
    with pytest.warns(RuntimeWarning, match="cannot write its cache"):
        assert conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands()).variant == \
            "fprop_simt_64x64x16_1stage"
    timed = len(timer.calls)
    assert conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands()).variant == \
        "fprop_simt_64x64x16_1stage"
    assert len(timer.calls) == timed  # remembered in this process


def test_without_operands_or_while_capturing_auto_times_nothing(cache, monkeypatch):
    gpu, timer = _fake(monkeypatch, FPROP_TIMES)
    assert conv.make_plan("fprop", DENSE, np.float32, "auto", gpu).variant == "im2col"  # the fixed rule
    gpu.capturing = lambda: True
    assert conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands()).variant == "im2col"
    assert timer.calls == []
    gpu.capturing = lambda: False
    conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, _operands())  # tunes
    gpu.capturing = lambda: True
    assert conv.make_plan("fprop", DENSE, np.float32, "auto", gpu).variant == "fprop_simt_64x64x16_1stage"


def test_tuning_leaves_the_operands_untouched(cache, monkeypatch):
    gpu, _ = _fake(monkeypatch, FPROP_TIMES)
    operands = [np.random.default_rng(0).standard_normal(s).astype(np.float32)
                for s in (DENSE.input_shape, DENSE.weight_shape)]
    before = [a.copy() for a in operands]
    for a in operands:
        a.flags.writeable = False  # a write would raise
    conv.make_plan("fprop", DENSE, np.float32, "auto", gpu, operands)
    assert all(np.array_equal(a, b) for a, b in zip(operands, before))
