"""The benchmark suite (bench/): suites, work counts, peaks, timing logic, result files, comparison, CPU runs.

Everything here runs without a GPU: the CUDA timer's logic is driven through a
stand-in for CuPy, and the end-to-end runs use the CPU mode on tiny layers.
"""
from __future__ import annotations

import json
import math
import types
from collections import Counter

import numpy as np
import pytest

import gpuconv
from gpuconv._shapes import BFLOAT16
from gpuconv.cuda import registry
from gpuconv.suites import Layer, load_suite, parse_suite, suite_names

# bench/ is not an installed package: pytest's pythonpath setting puts the repository root on sys.path.
from bench import compare, flops, impls, peaks, report, telemetry, timing
from bench.__main__ import main as bench_main
from bench.run import DEFAULT_DTYPES, DTYPES, RunConfig, derive_metrics, measurements, record_key, run_benchmark

try:
    import torch
except ImportError:
    torch = None
HAVE_TORCH = torch is not None

FAST = timing.TimingPolicy(min_runs=3, min_time_s=0.0, max_time_s=0.5, warmup_runs=0, flush_l2=False)


# ------------------------------------------------------------------ suites ---

def test_every_suite_loads_and_every_layer_is_a_valid_convolution():
    assert set(suite_names()) >= {"resnet50", "vgg", "mobilenet", "small_cnn", "tiny"}
    for name in suite_names():
        suite = load_suite(name)
        assert suite.layers, name
        for layer in suite.layers:
            for batch in (1, 8):
                g = layer.geometry(batch)
                assert g.input_shape == (batch, layer.C, layer.H, layer.W)
                assert g.P >= 1 and g.Q >= 1 and g.flops() > 0


def _resnet50_v15_convs():
    """All 53 convolutions of torchvision's resnet50 (v1.5: stride on the 3x3), as conv keys."""
    convs = [(3, 224, 224, 64, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1)]  # stem
    size, in_ch = 56, 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for block in range(blocks):
            s = stride if block == 0 else 1
            out_size = size // s
            convs.append((in_ch, size, size, width, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1))
            convs.append((width, size, size, width, 3, 3, (s, s), (1, 1, 1, 1), (1, 1), 1))
            convs.append((width, out_size, out_size, 4 * width, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1))
            if block == 0:  # projection shortcut: channels change (and the size, after stage 1)
                convs.append((in_ch, size, size, 4 * width, 1, 1, (s, s), (0, 0, 0, 0), (1, 1), 1))
            in_ch, size = 4 * width, out_size
    return convs


def test_resnet50_suite_is_exactly_the_distinct_convolutions_with_their_counts():
    suite = load_suite("resnet50")
    expected = Counter(_resnet50_v15_convs())
    assert sum(expected.values()) == 53
    assert {layer.conv_key: layer.count for layer in suite.layers} == dict(expected)
    assert len(suite.layers) == 23 and suite.total_count == 53
    stem = suite.layer("conv1")
    assert (stem.C, stem.K, stem.H, stem.R, stem.S, stem.geometry(1).stride) == (3, 64, 224, 7, 7, (2, 2))
    strided = [l for l in suite.layers if l.geometry(1).stride == (2, 2)]
    assert sorted((l.R, l.C, l.K) for l in strided) == sorted(
        [(7, 3, 64), (3, 128, 128), (3, 256, 256), (3, 512, 512), (1, 256, 512), (1, 512, 1024), (1, 1024, 2048)])


def test_suite_multiply_adds_match_the_published_network_totals():
    def macs(name):
        return sum(l.count * l.geometry(1).flops() for l in load_suite(name).layers) / 2

    # torchvision lists 4.09 GFLOPS (multiply-adds) for resnet50 and 15.47 for vgg16, the classifier included
    # (2.0 M and 123.6 M of them); MobileNet v1 is 569 M with its 1.0 M classifier.
    assert macs("resnet50") + 2.048e6 == pytest.approx(4.09e9, rel=2e-3)
    assert macs("vgg") + 123.6e6 == pytest.approx(15.47e9, rel=2e-3)
    assert macs("mobilenet") + 1.024e6 == pytest.approx(569e6, rel=2e-3)
    assert load_suite("vgg").total_count == 13 and load_suite("mobilenet").total_count == 27


def test_mobilenet_has_depthwise_stride_1_and_2_and_pointwise_layers():
    layers = load_suite("mobilenet").layers
    depthwise = [l.geometry(1) for l in layers if l.geometry(1).is_depthwise]
    assert {g.stride for g in depthwise} == {(1, 1), (2, 2)}
    assert all(g.R == g.S == 3 and g.groups == g.C == g.K for g in depthwise)
    assert sum(1 for l in layers if l.geometry(1).is_pointwise) == len(depthwise)


def test_small_cnn_suite_matches_the_model_gpuconv_train_builds():
    train = pytest.importorskip("gpuconv.train")
    from gpuconv.nn import Conv2d

    model = train.small_cnn(1, 8, 8, 10)
    x = np.zeros((1, 1, 8, 8), dtype=np.float32)
    seen = []
    for i in range(len(model)):
        layer = model[i]
        if isinstance(layer, Conv2d):
            seen.append((layer.in_channels, layer.out_channels, x.shape[2], x.shape[3], layer.kernel_size,
                         layer.stride, layer.padding))
        x = layer.forward(x)
    suite = [(l.C, l.K, l.H, l.W, (l.R, l.S), l.stride, l.padding) for l in load_suite("small_cnn").layers]
    assert suite == seen


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown fields"),
    ({"C": 0}, "positive int"),
    ({"H": 2, "W": 2, "R": 5, "S": 5}, "not a valid convolution"),
    ({"groups": 3}, "not a valid convolution"),
])
def test_bad_layers_are_rejected_with_the_reason(change, message):
    layer = {"name": "a", "C": 4, "K": 8, "H": 8, "W": 8, "R": 3, "S": 3, **change}
    with pytest.raises(ValueError, match=message):
        parse_suite({"layers": [layer]}, "test.json")


def test_a_suite_must_not_list_one_convolution_twice():
    a = {"name": "a", "C": 4, "K": 8, "H": 8, "W": 8, "R": 3, "S": 3, "padding": 1}
    b = {**a, "name": "b", "padding": [1, 1, 1, 1]}  # the same convolution, spelled differently
    with pytest.raises(ValueError, match="same convolution"):
        parse_suite({"layers": [a, b]}, "test.json")


def test_unknown_suite_names_the_available_ones():
    with pytest.raises(ValueError, match="resnet50"):
        load_suite("resnet5000")


# ------------------------------------------------------------ work counts ---

def test_flops_against_hand_computed_values():
    stem = load_suite("resnet50").layer("conv1").geometry(2)
    assert flops.conv_flops(stem) == 2 * 2 * 64 * 112 * 112 * 3 * 7 * 7 == 472_055_808
    dw = load_suite("tiny").layer("dw3x3").geometry(2)
    assert flops.conv_flops(dw) == 2 * 2 * 8 * 6 * 6 * 1 * 9 == 10_368


def test_gemm_equivalent_sizes():
    r50 = load_suite("resnet50")
    g = r50.layer("layer1.conv2").geometry(2)  # 3x3/1 pad 1, 64 -> 64 at 56x56
    assert flops.gemm_shape(g, "fprop").as_dict() == {"M": 2 * 56 * 56, "N": 64, "K": 576, "batch": 1}
    assert flops.gemm_shape(g, "dgrad").as_dict() == {"M": 2 * 56 * 56, "N": 64, "K": 576, "batch": 1}
    assert flops.gemm_shape(g, "wgrad").as_dict() == {"M": 64, "N": 576, "K": 2 * 56 * 56, "batch": 1}
    g = r50.layer("layer2.0.downsample").geometry(1)  # 1x1/2, 256 -> 512, 56 -> 28
    assert flops.gemm_shape(g, "fprop").as_dict() == {"M": 784, "N": 512, "K": 256, "batch": 1}
    # dX has 56*56 pixels, each touched by a quarter of the 512 taps on average
    assert flops.gemm_shape(g, "dgrad").as_dict() == {"M": 3136, "N": 256, "K": 128, "batch": 1}
    assert flops.gemm_shape(g, "wgrad").as_dict() == {"M": 512, "N": 256, "K": 784, "batch": 1}
    g = load_suite("mobilenet").layer("dw32_112").geometry(1)  # depthwise: one tiny GEMM per channel
    assert flops.gemm_shape(g, "fprop").as_dict() == {"M": 112 * 112, "N": 1, "K": 9, "batch": 32}
    with pytest.raises(ValueError, match="unknown pass"):
        flops.gemm_shape(g, "backward")


def test_gemm_equivalents_do_the_convolutions_work():
    for name in suite_names():
        for layer in load_suite(name).layers:
            g = layer.geometry(4)
            assert flops.gemm_shape(g, "fprop").flops == g.flops()
            assert flops.gemm_shape(g, "wgrad").flops == g.flops()
            dgrad = flops.gemm_shape(g, "dgrad")
            exact_k = (g.K // g.groups) * g.R * g.S * g.P * g.Q / (g.H * g.W)
            assert abs(dgrad.K - exact_k) <= 0.5 and (dgrad.M, dgrad.N) == (4 * g.H * g.W, g.C // g.groups)


def test_bytes_intensity_and_roofline():
    g = load_suite("resnet50").layer("conv1").geometry(1)
    elements = 3 * 224 * 224 + 64 * 3 * 7 * 7 + 64 * 112 * 112
    assert flops.min_bytes(g, 4) == 4 * elements and flops.min_bytes(g, 2) == 2 * elements
    assert flops.arithmetic_intensity(g, 4) == pytest.approx(g.flops() / (4 * elements))
    assert flops.roofline_tflops(10.0, 100.0, 2000.0) == pytest.approx(20.0)  # memory-bound side
    assert flops.roofline_tflops(1000.0, 100.0, 2000.0) == 100.0               # compute-bound side
    assert flops.roofline_tflops(10.0, None, 2000.0) is None


# ------------------------------------------------------------------ peaks ---

@pytest.mark.parametrize("name, card", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM 40GB"), ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"),
    ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090"), ("Tesla T4", "T4"), ("NVIDIA A10", "A10"),
])
def test_known_cards_match_their_table_entry(name, card):
    assert peaks.table_peaks(name)["card"] == card


def test_unknown_cards_are_not_matched_by_a_substring():
    for name in ("NVIDIA GH200 480GB", "NVIDIA A10G", "NVIDIA B200", "Some CPU"):
        assert peaks.table_peaks(name) is None


def test_estimates_agree_with_the_datasheets():
    a100 = peaks.estimate_peaks("80", 108, 1410, 1215, 5120)
    assert a100["fp16_tflops"] == pytest.approx(312, rel=0.01)
    assert a100["tf32_tflops"] == pytest.approx(156, rel=0.01)
    assert a100["fp32_tflops"] == pytest.approx(19.5, rel=0.01)
    assert a100["bandwidth_gbs"] == pytest.approx(1555, rel=0.01)
    h100 = peaks.estimate_peaks((9, 0), 132, 1830)
    assert h100["fp16_tflops"] == pytest.approx(989.4, rel=0.01) and h100["bandwidth_gbs"] is None
    rtx = peaks.estimate_peaks("8.9", 128, 2520, name="NVIDIA GeForce RTX 4090")
    assert rtx["fp16_tflops"] == pytest.approx(165.2, rel=0.01) and rtx["fp32_tflops"] == pytest.approx(82.6, rel=0.01)
    assert peaks.estimate_peaks("75", 40, 1590)["tf32_tflops"] is None  # no TF32 before Ampere
    assert peaks.estimate_peaks("10.0", 148, 1850)["source"] == "estimate"


def test_device_peaks_prefers_the_table_and_says_which_it_used():
    assert peaks.device_peaks({"name": "NVIDIA H200"})["source"] == "table"
    est = peaks.device_peaks({"name": "NVIDIA B200", "compute_capability": "10.0", "sm_count": 148,
                              "sm_clock_max_mhz": 1965, "mem_clock_max_mhz": 3996, "memory_bus_width_bits": 8192})
    assert est["source"] == "estimate" and est["fp16_tflops"] > 2000 and est["bandwidth_gbs"] > 6000
    assert peaks.device_peaks({"name": "mystery"})["source"] == "unknown"
    assert [peaks.peak_kind(i, d) for i, d in (("cudnn", "float32"), ("cudnn-tf32", "float32"),
                                               ("gpuconv:im2col", "float16"))] == ["fp32", "tf32", "fp16"]


# -------------------------------------------------------------- telemetry ---

def test_throttle_reasons_are_decoded_by_name():
    assert telemetry.decode_throttle_reasons(0) == []
    assert telemetry.decode_throttle_reasons(0x1 | 0x4 | 0x40) == ["GpuIdle", "SwPowerCap", "HwThermalSlowdown"]
    assert telemetry.decode_throttle_reasons(0x8000) == ["0x8000"]


def test_cpu_snapshot_and_nvml_degrade_gracefully():
    snap = telemetry.cpu_snapshot()
    assert snap["kind"] == "cpu" and snap["name"] and snap["usable_cores"] >= 1
    nvml = telemetry.nvml_snapshot()
    assert nvml["nvml"] == "ok" or nvml["nvml"].startswith("unavailable")


def test_busy_machines_are_flagged():
    assert telemetry.busy_warnings({"kind": "cpu", "usable_cores": 2, "host": {"loadavg_1m": 0.2}}) == []
    assert "load average is 1.5" in telemetry.busy_warnings({"kind": "cpu", "usable_cores": 2,
                                                              "host": {"loadavg_1m": 1.5}})[0]
    idle_gpu = {"kind": "cuda", "compute_processes": 1, "utilization_gpu_pct": 0, "host": {"loadavg_1m": 9.0}}
    assert telemetry.busy_warnings(idle_gpu) == []  # the host's load does not slow the GPU's kernels
    busy = telemetry.busy_warnings({**idle_gpu, "compute_processes": 3, "utilization_gpu_pct": 80})
    assert len(busy) == 2 and "3 processes" in busy[0] and "80%" in busy[1]


# ----------------------------------------------------------------- timing ---

def test_summary_is_the_median_with_spread():
    s = timing.summarize([5.0, 1.0, 2.0, 3.0, 100.0])
    assert s == {"time_ms": 3.0, "min_ms": 1.0, "iqr_ms": 3.0, "runs": 5}


def test_stopping_rule():
    p = timing.TimingPolicy(min_runs=20, min_time_s=0.2, max_runs=100, max_time_s=5.0, floor_runs=3)
    assert timing.enough_runs([1.0] * 19, 0.1, p) == (False, False)        # too few runs
    assert timing.enough_runs([1.0] * 20, 0.1, p) == (False, False)        # 20 ms < 0.2 s measured
    assert timing.enough_runs([10.0] * 20, 0.3, p) == (True, False)
    assert timing.enough_runs([1.0] * 100, 0.2, p) == (True, False)        # max_runs
    assert timing.enough_runs([900.0] * 3, 5.5, p) == (True, True)         # huge layer: capped
    assert timing.enough_runs([900.0] * 2, 5.5, p) == (False, False)       # ... but not below floor_runs
    assert timing.next_batch([], p) == 5
    assert timing.next_batch([1.0] * 5, p) == 50                            # 195 ms missing at 1 ms a run
    assert timing.next_batch([100.0] * 5, p) == 15                          # runs missing, time is not


def test_cpu_timer_takes_the_median_of_enough_runs():
    calls = []
    timer = timing.CpuTimer(timing.TimingPolicy(min_runs=7, min_time_s=0.0, warmup_runs=2))
    out, first_ms = timer.first_call(lambda: calls.append(1) or "result")
    assert out == "result" and first_ms >= 0
    stats = timer.measure(lambda: calls.append(1))
    assert stats["runs"] >= 7 and len(calls) == 1 + 2 + stats["runs"] and stats["time_ms"] >= 0


class _FakeCupy:
    """Just enough of CuPy for CudaTimer: a device clock that fn advances, and a log of what was enqueued."""

    def __init__(self, fn_ms):
        self.log, self.clock, self.fn_ms = [], [0.0], fn_ms
        fake = self

        class Event:
            def record(self, stream=None):
                fake.log.append("event")
                self.t = fake.clock[0]

        class Buffer:
            def fill(self, value):
                fake.log.append("flush")

        def kernel(source, name):
            assert "globaltimer" in source and name == "bench_sleep"

            def launch(grid, block, args):
                fake.log.append("sleep")
                fake.sleep_ns = int(args[0])
            return launch

        runtime = types.SimpleNamespace(cudaDevAttrL2CacheSize=38, deviceGetAttribute=lambda attr, dev: 50 << 20)
        device = types.SimpleNamespace(id=0, synchronize=lambda: None)
        self.uint8, self.float32 = np.uint8, np.float32
        self.ones = lambda shape, dtype: np.ones((2, 2), dtype=dtype)
        self.matmul = lambda a, b: fake.log.append("matmul") or a @ b
        self.RawKernel = kernel
        self.empty = lambda n, dtype: Buffer()
        self.cuda = types.SimpleNamespace(runtime=runtime, Device=lambda: device, Event=Event,
                                          get_current_stream=lambda: "stream",
                                          get_elapsed_time=lambda a, b: b.t - a.t)

    def fn(self):
        self.log.append("fn")
        self.clock[0] += self.fn_ms


def test_cuda_timer_brackets_each_run_after_an_l2_flush_and_a_sleep(monkeypatch):
    import gpuconv._backend as backend

    fake = _FakeCupy(fn_ms=1.5)
    monkeypatch.setattr(backend, "require_cuda", lambda: fake)
    timer = timing.CudaTimer(timing.TimingPolicy(min_runs=4, min_time_s=0.01, warmup_runs=2))
    assert timer.flush_bytes == 100 << 20  # twice the L2
    fake.log.clear()
    stats = timer.measure(fake.fn)
    assert stats["runs"] == 7 and stats["time_ms"] == 1.5 and not stats["capped"]  # 7 x 1.5 ms >= 10 ms
    assert fake.log[:2] == ["fn", "fn"]  # the warm-ups
    assert fake.log[2:] == ["flush", "sleep", "event", "fn", "event"] * 7
    assert fake.sleep_ns >= timing.MIN_SLEEP_MS * 1e6 and stats["sleep_ms"] >= timing.MIN_SLEEP_MS
    assert stats["host_bound"] is False


def test_cuda_timer_warms_the_device_up_for_the_time_asked(monkeypatch):
    import gpuconv._backend as backend

    fake = _FakeCupy(fn_ms=1.0)
    monkeypatch.setattr(backend, "require_cuda", lambda: fake)
    assert timing.CudaTimer(timing.TimingPolicy(device_warmup_s=0.0)).warm_up_device() == 0.0
    assert "matmul" not in fake.log
    assert timing.CudaTimer(timing.TimingPolicy(device_warmup_s=0.05)).warm_up_device() >= 0.05
    assert "matmul" in fake.log


def test_the_sleep_kernel_compiles():
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc")
    err, prog = nvrtc.nvrtcCreateProgram(timing.SLEEP_KERNEL_SOURCE.encode(), b"sleep.cu", 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    (err,) = nvrtc.nvrtcCompileProgram(prog, 1, [b"--gpu-architecture=compute_75"])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    nvrtc.nvrtcDestroyProgram(prog)


# ---------------------------------------------------------- correctness ---

def test_max_rel_err():
    ref = np.array([[1.0, -4.0], [2.0, 0.0]])
    assert impls.max_rel_err(ref.astype(np.float32), ref) == 0.0
    assert impls.max_rel_err(ref + np.array([[0.0, 0.4], [0.0, 0.0]]), ref) == pytest.approx(0.1)
    assert impls.max_rel_err(np.array([[1.0, np.nan], [2.0, 0.0]]), ref) == math.inf
    with pytest.raises(ValueError, match="shape"):
        impls.max_rel_err(ref[0], ref)


@pytest.mark.parametrize("pass_name", ["fprop", "dgrad", "wgrad"])
def test_chunked_reference_equals_the_whole_batch_at_once(monkeypatch, pass_name):
    from gpuconv import reference

    g = load_suite("tiny").layer("conv3x3_s2").geometry(5)
    inputs = impls.make_host_inputs(g, seed=1)
    whole = {"fprop": lambda: reference.conv2d_forward(inputs["x"], inputs["w"], g),
             "dgrad": lambda: reference.conv2d_grad_input(inputs["dy"], inputs["w"], g),
             "wgrad": lambda: reference.conv2d_grad_weight(inputs["x"], inputs["dy"], g)}[pass_name]()
    per_image = 8 * g.P * g.Q * g.C * g.R * g.S
    monkeypatch.setattr(impls, "REFERENCE_CHUNK_BYTES", 2 * per_image)  # chunks of 2, 2 and 1 images
    chunked = impls.conv_reference(inputs, g, pass_name)
    assert chunked.shape == whole.shape and np.allclose(chunked, whole, rtol=1e-12, atol=1e-12)


def test_inputs_are_exact_in_every_dtype_so_each_sees_the_same_values():
    g = load_suite("tiny").layer("conv3x3").geometry(2)
    inputs = impls.make_host_inputs(g, seed=3)
    assert inputs["x"].shape == g.input_shape and inputs["dy"].shape == g.output_shape
    for v in inputs.values():
        assert v.dtype == np.float64 and -1 <= v.min() < 0 < v.max() <= 1
        for dtype in impls.DTYPES.values():
            assert np.array_equal(v.astype(dtype).astype(np.float64), v), dtype
    # float16's subnormals (multiples of 2**-24) survive bfloat16's rounding exactly too
    tiny = impls.exact_in_every_dtype(np.array([3e-7, -5.5e-6, 1e-5, 2.0**-14 * 1.7], np.float32)).astype(np.float64)
    assert np.array_equal(tiny.astype(np.float16).astype(np.float64), tiny) and np.all(tiny != 0)


def test_impl_selection():
    usable, skipped = impls.resolve_impls(None, "cpu")
    assert [i.name for i in usable] == (["numpy", "torch-cpu"] if HAVE_TORCH else ["numpy"])
    usable, skipped = impls.resolve_impls(("numpy", "cudnn"), "cpu")
    assert [i.name for i in usable] == ["numpy"] and "cudnn" in skipped
    with pytest.raises(ValueError, match="unknown impl"):
        impls.resolve_impls(("fastest",), "cpu")
    assert impls.IMPLS["cudnn-tf32"].dtypes == ("float32",)


# ------------------------------------------------------ derived metrics ---

def _record(layer, pass_name, dtype, impl, time_ms, flops_=2e12, **extra):
    return {"suite": "s", "layer": layer, "shape": "", "count": 1, "pass": pass_name, "dtype": dtype, "impl": impl,
            "role": impls.IMPLS[impl].role, "batch": 32, "flops": flops_, "bytes": 1e9, "intensity": flops_ / 1e9,
            "gemm": {"M": 1000, "N": 1000, "K": 500, "batch": 1}, "time_ms": time_ms, **extra}


def test_derived_tflops_peak_and_ratio_to_cudnn():
    records = [_record("a", "fprop", "float32", "gpuconv:im2col", 100.0, intensity=15.0),
               _record("a", "fprop", "float32", "cudnn", 50.0),
               _record("a", "fprop", "float32", "cudnn-tf32", 10.0),
               _record("a", "fprop", "float16", "gpuconv:implicit_gemm", 20.0),
               _record("a", "fprop", "float32", "cublas-gemm", 1.0),
               _record("a", "dgrad", "float32", "gpuconv:im2col", None)]
    pk = {"fp32_tflops": 50.0, "tf32_tflops": 400.0, "fp16_tflops": 800.0, "bandwidth_gbs": 1000.0}
    derive_metrics(records, pk, "cuda")
    im2col, cudnn, tf32, fp16, gemm, failed = records
    assert im2col["tflops"] == pytest.approx(20.0) and im2col["pct_of_peak"] == pytest.approx(40.0)
    assert im2col["ratio_vs_cudnn"] == pytest.approx(0.5) and im2col["baseline"] == "cudnn"
    assert cudnn.get("ratio_vs_cudnn") is None  # baselines are not compared with themselves
    assert tf32["peak_kind"] == "tf32" and tf32["pct_of_peak"] == pytest.approx(50.0)
    assert fp16["peak_kind"] == "fp16" and fp16.get("ratio_vs_cudnn") is None  # no float16 cuDNN timing
    assert gemm["tflops"] == pytest.approx(1.0)  # its own 2*M*N*K, not the convolution's FLOPs
    assert im2col["roofline_tflops"] == pytest.approx(15.0)  # memory-bound: 15 FLOP/B * 1 TB/s
    assert im2col["pct_of_roofline"] == pytest.approx(100 * 20 / 15)
    assert cudnn["roofline_tflops"] == 50.0  # compute-bound: 2000 FLOP/B
    assert "tflops" not in failed


# ------------------------------------------------------ result files ---

def _synthetic_result(times: dict, device="card") -> dict:
    recs = [{**_record(layer, p, "float32", impl, t), "suite": "resnet50"} for (layer, p, impl), t in times.items()]
    return {"schema_version": 1, "created": "2026-01-01T00:00:00+00:00", "device": device, "device_kind": "cuda",
            "suites": ["resnet50"], "batch": 32, "environment": {"gpuconv": "0.1.0"}, "peaks": {},
            "telemetry": {"before": {}, "after": {}}, "timing": {}, "records": recs}


def test_comparison_gives_speedups_and_geometric_means(tmp_path):
    a = _synthetic_result({("l1", "fprop", "gpuconv:im2col"): 2.0, ("l2", "fprop", "gpuconv:im2col"): 8.0,
                           ("l1", "wgrad", "cudnn"): 3.0, ("l3", "fprop", "cudnn"): 1.0}, "card A")
    b = _synthetic_result({("l1", "fprop", "gpuconv:im2col"): 1.0, ("l2", "fprop", "gpuconv:im2col"): 2.0,
                           ("l1", "wgrad", "cudnn"): 6.0}, "card B")
    rows, only_a, only_b, untimed = compare.match(a, b)
    assert sorted(r[3] for r in rows) == [0.5, 2.0, 4.0] and len(only_a) == 1 and not only_b and not untimed
    summary = {(p, i): (g, n) for p, i, g, n in compare.summary(rows)}
    assert summary[("fprop", "gpuconv:im2col")] == (pytest.approx(math.sqrt(8.0)), 2)
    assert summary[("wgrad", "cudnn")] == (pytest.approx(0.5), 1)
    assert summary[("all", "all")] == (pytest.approx(2.0 ** (2 / 3)), 3)
    pa, pb, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "cmp.md"
    report.write_json(a, pa)
    report.write_json(b, pb)
    assert bench_main(["compare", str(pa), str(pb), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| fprop | gpuconv:im2col | 2.828 | 2 |" in text and "card A" in text and "card B" in text
    assert "1 record(s) only in A" in text


def test_ratio_summary_gives_the_geometric_mean_and_the_worst_layer():
    result = _synthetic_result({("l1", "fprop", "gpuconv:im2col"): 2.0, ("l1", "fprop", "cudnn"): 1.0,
                                ("l2", "fprop", "gpuconv:im2col"): 1.0, ("l2", "fprop", "cudnn"): 2.0,
                                ("l3", "fprop", "gpuconv:im2col"): 1.0, ("l3", "fprop", "cudnn"): 1.0})
    derive_metrics(result["records"], {"fp32_tflops": 50.0}, "cuda")
    (row,) = report.ratio_summary(result)
    suite, pass_name, dtype, impl, geomean, worst, worst_layer, layers = row
    assert (pass_name, impl, layers, worst_layer) == ("fprop", "gpuconv:im2col", 3, "l1")
    assert geomean == pytest.approx(1.0) and worst == pytest.approx(0.5)
    assert "## Ratio to cudnn per layer" in report.render_markdown(result)


def test_result_files_are_written_with_the_documented_fields(tmp_path):
    result = _synthetic_result({("l1", "fprop", "gpuconv:im2col"): 2.0, ("l1", "fprop", "cudnn"): 1.0})
    result["records"][0]["max_rel_err"] = float("nan")  # JSON has no NaN: it must become null
    derive_metrics(result["records"], {"fp32_tflops": 50.0}, "cuda")
    paths = report.write_outputs(result, tmp_path / "out" / "run")
    assert [p.name for p in paths][:2] == ["run.json", "run.md"]
    data = json.loads((tmp_path / "out" / "run.json").read_text())
    assert data["records"][0]["max_rel_err"] is None and data["records"][0]["ratio_vs_cudnn"] == 0.5
    md = (tmp_path / "out" / "run.md").read_text()
    assert "| l1 |" in md and "## Network totals" in md


# ----------------------------------------------------------- end to end ---

def _check_cpu_result(result, impl_names, layers, min_runs=3):
    for key in ("device", "records", "environment", "telemetry", "peaks", "timing"):
        assert key in result
    assert result["device_kind"] == "cpu" and result["telemetry"]["before"]["kind"] == "cpu"
    assert result["environment"]["gpuconv"] and result["environment"]["numpy"] == np.__version__
    records = result["records"]
    assert len(records) == len(layers) * 3 * len(impl_names)
    assert {r["layer"] for r in records} == set(layers) and {r["impl"] for r in records} == set(impl_names)
    for r in records:
        assert r["error"] is None, r
        for key in ("suite", "layer", "pass", "dtype", "impl", "batch", "time_ms", "tflops", "first_call_ms", "runs",
                    "pct_of_peak", "ratio_vs_cudnn", "max_rel_err"):
            assert key in r
        assert r["time_ms"] > 0 and r["tflops"] > 0 and r["runs"] >= min_runs and r["first_call_ms"] > 0
        assert r["max_rel_err"] < 1e-5 and r["correct"] is True
        if "torch-cpu" in impl_names and r["impl"] != "torch-cpu":
            assert r["ratio_vs_cudnn"] > 0 and r["baseline"] == "torch-cpu"


@pytest.mark.slow
def test_cpu_run_end_to_end_on_the_tiny_suite(tmp_path):
    impl_names = ("numpy", "numpy-reference") + (("torch-cpu",) if HAVE_TORCH else ())
    result = run_benchmark(RunConfig(suites=("tiny",), device="cpu", batch=2, impls=impl_names, policy=FAST,
                                     progress=False, threads=1))
    _check_cpu_result(result, impl_names, [l.name for l in load_suite("tiny").layers])
    paths = report.write_outputs(result, tmp_path / "tiny")
    assert {p.suffix for p in paths} >= {".json", ".md"}
    again = json.loads((tmp_path / "tiny.json").read_text())
    assert [record_key(r) for r in again["records"]] == [record_key(r) for r in result["records"]]
    md = (tmp_path / "tiny.md").read_text()
    assert md.split("## Layers")[1].count("| conv3x3_s2 |") == 3 * len(impl_names)


@pytest.mark.slow
def test_cli_run_writes_json_md_and_png(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["run", "--device", "cpu", "--suite", "small_cnn", "--batch", "1", "--impls", "numpy",
            "--min-runs", "2", "--min-time", "0", "--max-time", "0.2", "--warmup", "0", "--no-progress",
            "--out", str(out)]
    assert bench_main(argv) == 0
    result = json.loads((tmp_path / "cli.json").read_text())
    _check_cpu_result(result, ("numpy",), ["conv1", "conv2"], min_runs=2)
    assert (tmp_path / "cli.md").exists()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "cli.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.gpu
@pytest.mark.skipif(not gpuconv.cuda_available(), reason="no CUDA device")
def test_cuda_run_end_to_end_on_the_tiny_suite(tmp_path):
    policy = timing.TimingPolicy(min_runs=3, min_time_s=0.0, max_time_s=1.0, warmup_runs=1, device_warmup_s=0.1)
    result = run_benchmark(RunConfig(suites=("tiny",), device="cuda", batch=2, policy=policy, progress=False))
    before = result["telemetry"]["before"]
    assert result["device"] and before["kind"] == "cuda" and before["sm_count"] > 0
    assert result["peaks"]["source"] in ("table", "estimate") and result["peaks"]["fp32_tflops"] > 0
    records = result["records"]
    assert {r["impl"] for r in records} == set(result["impls"]) and "cublas-gemm" in result["impls"]
    for r in records:
        if r["impl"] in ("cudnn", "cudnn-tf32", "cublas-gemm"):
            assert r["error"] is None, r  # the baselines must run; gpuconv's own may report what they lack
        if r["error"] is None:
            assert r["correct"] is True, r
            assert r["time_ms"] > 0 and r["host_ms"] > 0 and r["sleep_ms"] >= timing.MIN_SLEEP_MS
            assert r["pct_of_peak"] > 0 and r["runs"] >= 3
    report.write_outputs(result, tmp_path / "gpu")
    assert json.loads((tmp_path / "gpu.json").read_text())["telemetry"]["after"]["kind"] == "cuda"


@pytest.mark.skipif(not HAVE_TORCH, reason="needs PyTorch for torch-cpu")
def test_a_failing_impl_is_recorded_not_raised(tmp_path):
    # PyTorch takes symmetric padding only: torch-cpu must fail on this layer while gpuconv runs it.
    suite = {"name": "asym", "layers": [{"name": "asym", "C": 2, "K": 3, "H": 5, "W": 5, "R": 3, "S": 3,
                                         "padding": [0, 1, 1, 0]}]}
    path = tmp_path / "asym.json"
    path.write_text(json.dumps(suite))
    result = run_benchmark(RunConfig(suites=(str(path),), device="cpu", batch=1, passes=("fprop",),
                                     impls=("numpy", "torch-cpu"), policy=FAST, progress=False, threads=1))
    numpy_rec, torch_rec = result["records"]
    assert numpy_rec["error"] is None and numpy_rec["correct"] is True
    assert "symmetric padding" in torch_rec["error"] and torch_rec["time_ms"] is None
    assert numpy_rec["ratio_vs_cudnn"] is None


def test_cli_errors_are_clear(capsys):
    assert bench_main(["run", "--device", "cpu", "--suite", "tiny", "--layers", "nope", "--no-progress"]) == 2
    assert "no layer named ['nope']" in capsys.readouterr().err
    if not gpuconv.cuda_available():
        assert bench_main(["run", "--device", "cuda", "--suite", "tiny"]) == 2
        assert "CUDA requested but unavailable" in capsys.readouterr().err


def test_cli_list(capsys):
    assert bench_main(["list"]) == 0
    text = capsys.readouterr().out
    assert "resnet50: 23 distinct layers, 53 in the network" in text and "dw3x3" in text


def test_layer_description():
    layer = Layer("x", C=8, K=8, H=6, W=6, R=3, S=3, stride=2, padding=(0, 1, 0, 1), groups=8)
    assert layer.describe() == "8x6x6 -> 8x3x3, 3x3/2 pad (0,1,0,1) depthwise"


# ---------------------------------------------------------- bfloat16, TF32 ---

TF32_VARIANT = next(f"gpuconv:{v.name}" for v in registry.conv_variants("fprop") if v.tf32)
HALF_VARIANT = next(f"gpuconv:{v.name}" for v in registry.conv_variants("fprop")
                    if BFLOAT16 in v.dtypes and v.family == registry.TENSOR_CORE)


def test_bfloat16_is_a_dtype_of_every_run_like_float16():
    assert DTYPES == ("float32", "float16", "bfloat16") and impls.DTYPES["bfloat16"] == BFLOAT16
    assert DEFAULT_DTYPES["cuda"] == ("float32", "float16", "bfloat16") and DEFAULT_DTYPES["cpu"] == ("float32",)
    assert set(impls.TOLERANCE) >= set(DTYPES)
    for name in ("gpuconv:auto", "gpuconv:im2col", "gpuconv:implicit_gemm", "cudnn", "cublas-gemm", "numpy",
                 "numpy-reference", "torch-cpu"):
        assert "bfloat16" in impls.IMPLS[name].dtypes and "float16" in impls.IMPLS[name].dtypes, name
    assert impls.IMPLS[HALF_VARIANT].dtypes == ("float16", "bfloat16")  # the registry's dtypes, by name
    assert impls.IMPLS["cudnn-tf32"].dtypes == impls.IMPLS[TF32_VARIANT].dtypes == ("float32",)


def test_dtypes_are_parsed_and_unknown_ones_refused(capsys):
    from bench.__main__ import _csv, build_parser

    assert _csv(build_parser().parse_args(["run", "--dtypes", "bfloat16, float16"]).dtypes) == ("bfloat16", "float16")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    assert "float32,float16,bfloat16" in capsys.readouterr().out
    assert bench_main(["run", "--device", "cpu", "--suite", "tiny", "--dtypes", "bf16", "--no-progress"]) == 2
    assert "unknown dtype(s) ['bf16']; choose from ('float32', 'float16', 'bfloat16')" in capsys.readouterr().err


def test_each_impl_runs_its_own_dtypes_and_passes_only():
    names = ("gpuconv:auto", TF32_VARIANT, HALF_VARIANT, "cudnn", "cudnn-tf32", "cublas-gemm")
    planned = measurements([impls.IMPLS[n] for n in names], ("float32", "bfloat16"), ("fprop", "dgrad"))
    got = [(d, p, i.name) for d, p, i in planned]
    assert got == [("float32", "fprop", "gpuconv:auto"), ("float32", "fprop", TF32_VARIANT),
                   ("float32", "fprop", "cudnn"), ("float32", "fprop", "cudnn-tf32"),
                   ("float32", "fprop", "cublas-gemm"),
                   ("float32", "dgrad", "gpuconv:auto"), ("float32", "dgrad", "cudnn"),
                   ("float32", "dgrad", "cudnn-tf32"), ("float32", "dgrad", "cublas-gemm"),
                   ("bfloat16", "fprop", "gpuconv:auto"), ("bfloat16", "fprop", HALF_VARIANT),
                   ("bfloat16", "fprop", "cudnn"), ("bfloat16", "fprop", "cublas-gemm"),
                   ("bfloat16", "dgrad", "gpuconv:auto"), ("bfloat16", "dgrad", "cudnn"),
                   ("bfloat16", "dgrad", "cublas-gemm")]


def test_gpuconvs_tf32_variants_are_held_against_cudnn_with_tf32():
    assert impls.IMPLS[TF32_VARIANT].precision == "tf32" and impls.tolerance(impls.IMPLS[TF32_VARIANT], "float32") \
        == impls.TOLERANCE["tf32"]
    assert impls.baseline_of(TF32_VARIANT, "cuda") == "cudnn-tf32"
    assert impls.baseline_of(HALF_VARIANT, "cuda") == impls.baseline_of("gpuconv:auto", "cuda") == "cudnn"
    assert impls.baseline_of("cudnn-tf32", "cuda") == "cudnn"  # the baselines themselves: against plain cuDNN
    assert impls.baseline_of("numpy", "cpu") == "torch-cpu" and impls.baseline_of("unknown", "cuda") == "cudnn"


def test_cudnn_tf32_is_switched_by_the_flag_pytorch_has():
    legacy = types.SimpleNamespace(backends=types.SimpleNamespace(cudnn=types.SimpleNamespace(allow_tf32=False)))
    assert impls.set_cudnn_tf32(legacy, True) == "cudnn.allow_tf32=True" and legacy.backends.cudnn.allow_tf32 is True
    assert impls.set_cudnn_tf32(legacy, False) == "cudnn.allow_tf32=False" and not legacy.backends.cudnn.allow_tf32
    conv = types.SimpleNamespace(fp32_precision="ieee")  # PyTorch >= 2.9: the legacy flag is left alone
    modern = types.SimpleNamespace(backends=types.SimpleNamespace(cudnn=types.SimpleNamespace(conv=conv)))
    assert impls.set_cudnn_tf32(modern, True) == "cudnn.conv.fp32_precision=tf32" and conv.fp32_precision == "tf32"
    assert not hasattr(modern.backends.cudnn, "allow_tf32")


def test_bfloat16_and_tf32_peaks():
    h100, t4 = peaks.table_peaks("NVIDIA H100 80GB HBM3"), peaks.table_peaks("Tesla T4")
    assert h100["bf16_tflops"] == h100["fp16_tflops"] and t4["bf16_tflops"] is None  # no bfloat16 before sm_80
    assert peaks.estimate_peaks("80", 108, 1410)["bf16_tflops"] == pytest.approx(312, rel=0.01)
    assert peaks.estimate_peaks("75", 40, 1590)["bf16_tflops"] is None
    assert peaks.cpu_peaks()["bf16_tflops"] is None and peaks.device_peaks({"name": "?"})["bf16_tflops"] is None
    assert peaks.peak_kind("cudnn", "bfloat16") == "bf16" and peaks.peak_kind(HALF_VARIANT, "float16") == "fp16"
    assert peaks.peak_kind(TF32_VARIANT, "float32", "tf32") == "tf32" and peaks.peak_kind("cudnn", "float32") == "fp32"


def _fabricated_result(rows) -> dict:
    """A CUDA result of FABRICATED timings (no GPU ran): rows are (layer, pass, dtype, impl, time_ms)."""
    records = [_record(layer, p, dtype, impl, t) for layer, p, dtype, impl, t in rows]
    return {"schema_version": 1, "created": "2026-01-01T00:00:00+00:00", "device": "fabricated card",
            "device_kind": "cuda", "suites": ["s"], "batch": 32, "environment": {"gpuconv": "0"}, "timing": {},
            "peaks": {}, "telemetry": {"before": {}, "after": {}}, "records": records}


def test_bfloat16_and_tf32_records_get_their_own_ratios_peaks_and_rows(tmp_path):
    result = _fabricated_result([  # FABRICATED times, chosen to make every ratio distinct
        ("l1", "fprop", "bfloat16", "gpuconv:auto", 4.0), ("l1", "fprop", "bfloat16", "cudnn", 2.0),
        ("l1", "fprop", "float16", "gpuconv:auto", 1.0), ("l1", "fprop", "float16", "cudnn", 3.0),
        ("l1", "fprop", "float32", TF32_VARIANT, 5.0), ("l1", "fprop", "float32", "cudnn-tf32", 10.0),
        ("l1", "fprop", "float32", "cudnn", 40.0)])
    pk = {"fp32_tflops": 50.0, "tf32_tflops": 400.0, "fp16_tflops": 800.0, "bf16_tflops": 1000.0,
          "bandwidth_gbs": 1000.0}
    derive_metrics(result["records"], pk, "cuda")
    bf16, _, fp16, _, tf32, cudnn_tf32, _ = result["records"]
    assert bf16["ratio_vs_cudnn"] == pytest.approx(0.5) and bf16["baseline"] == "cudnn"  # bfloat16 cuDNN only
    assert fp16["ratio_vs_cudnn"] == pytest.approx(3.0)
    assert tf32["ratio_vs_cudnn"] == pytest.approx(2.0) and tf32["baseline"] == "cudnn-tf32"  # not 40 / 5
    assert cudnn_tf32.get("ratio_vs_cudnn") is None
    assert (bf16["peak_kind"], fp16["peak_kind"], tf32["peak_kind"]) == ("bf16", "fp16", "tf32")
    assert bf16["pct_of_peak"] == pytest.approx(100 * 2e12 / 4e-3 / 1e12 / 1000.0)
    assert tf32["pct_of_peak"] == pytest.approx(100 * 2e12 / 5e-3 / 1e12 / 400.0)
    totals = {(d, i): r for _, _, d, i, _, _, r in report.network_totals(result)}
    assert totals[("bfloat16", "gpuconv:auto")] == pytest.approx(0.5)
    assert totals[("float32", TF32_VARIANT)] == pytest.approx(2.0)
    assert totals[("float32", "cudnn-tf32")] == pytest.approx(4.0)  # what TF32 gains cuDNN
    summary = {(d, i): g for _, _, d, i, g, _, _, _ in report.ratio_summary(result)}
    assert summary == {("bfloat16", "gpuconv:auto"): pytest.approx(0.5), ("float16", "gpuconv:auto"):
                       pytest.approx(3.0), ("float32", TF32_VARIANT): pytest.approx(2.0)}
    md = report.render_markdown(result)
    assert "| l1 |  | fprop | bfloat16 | gpuconv:auto | 4 |" in md and "cudnn-tf32's time" in md
    report.write_outputs(result, tmp_path / "fabricated")
    again = json.loads((tmp_path / "fabricated.json").read_text())
    assert [r["dtype"] for r in again["records"]] == ["bfloat16"] * 2 + ["float16"] * 2 + ["float32"] * 3


def test_comparison_keeps_bfloat16_apart_from_float16():
    a = _fabricated_result([("l1", "fprop", "bfloat16", "cudnn", 2.0), ("l1", "fprop", "float16", "cudnn", 1.0)])
    b = _fabricated_result([("l1", "fprop", "bfloat16", "cudnn", 1.0), ("l1", "fprop", "float16", "cudnn", 1.0)])
    rows, only_a, only_b, untimed = compare.match(a, b)  # FABRICATED times
    assert {key[3]: speedup for key, _, _, speedup in rows} == {"bfloat16": 2.0, "float16": 1.0}
    assert not only_a and not only_b and not untimed
    assert "| s | l1 | fprop | bfloat16 | cudnn | 32 | 2 | 1 | 2.000 |" in compare.render_comparison(a, b)


@pytest.mark.skipif(not HAVE_TORCH, reason="needs PyTorch for torch-cpu")
def test_torch_sees_bfloat16_inputs_as_torch_bfloat16_on_their_memory(monkeypatch):
    layer = load_suite("tiny").layer("conv3x3")
    g = layer.geometry(2)
    host = impls.make_host_inputs(g, seed=0)
    inputs = {k: v.astype(BFLOAT16) for k, v in host.items()}
    for pass_name in ("fprop", "dgrad", "wgrad"):
        case = impls.Case("tiny", layer, g, pass_name, "bfloat16", "cpu", np, inputs)
        out = impls.IMPLS["torch-cpu"].prepare(case).run()
        assert out.dtype == torch.bfloat16 and impls.to_host(out).dtype == np.float32
        err = impls.max_rel_err(out, impls.conv_reference(host, g, pass_name))
        assert 0 < err <= impls.TOLERANCE["bfloat16"], (pass_name, err)
    seen, real = [], torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d", lambda x, w, *args: seen.append((x, w)) or real(x, w, *args))
    impls.IMPLS["torch-cpu"].prepare(impls.Case("tiny", layer, g, "fprop", "bfloat16", "cpu", np, inputs)).run()
    ((x, w),) = seen
    assert x.data_ptr() == inputs["x"].ctypes.data and w.data_ptr() == inputs["w"].ctypes.data  # no copy


@pytest.mark.skipif(not HAVE_TORCH, reason="needs PyTorch for torch-cpu")
def test_cpu_run_in_bfloat16_end_to_end(tmp_path):
    result = run_benchmark(RunConfig(suites=("tiny",), device="cpu", batch=2, dtypes=("bfloat16", "float32"),
                                     impls=("numpy", "torch-cpu"), policy=FAST, progress=False, threads=1))
    records = result["records"]
    assert result["dtypes"] == ["bfloat16", "float32"] and len(records) == 3 * 3 * 2 * 2
    assert [r["dtype"] for r in records[:12]] == ["bfloat16"] * 6 + ["float32"] * 6  # per layer, dtype by dtype
    by_key = {(r["layer"], r["pass"], r["dtype"], r["impl"]): r for r in records}
    for r in records:
        assert r["error"] is None and r["correct"] is True and r["time_ms"] > 0, r
        assert r["tolerance"] == impls.TOLERANCE[r["dtype"]]
        if r["dtype"] == "bfloat16":
            assert 0 < r["max_rel_err"] <= 2e-2  # rounded to bfloat16: not exact, within a few roundings
            assert r["bytes"] * 2 == by_key[(r["layer"], r["pass"], "float32", r["impl"])]["bytes"]
        if r["impl"] == "numpy":
            assert r["ratio_vs_cudnn"] > 0 and r["baseline"] == "torch-cpu"
    md = report.render_markdown(result)
    assert md.split("## Layers")[1].count("| bfloat16 |") == 3 * 3 * 2
