"""``gpuconv info``'s report (gpuconv.cuda.info): complete on any machine, and never crashing."""
from __future__ import annotations

import importlib.util

import pytest

from gpuconv._backend import cuda_available
from gpuconv.cuda import info, registry

HAS_NVRTC = importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None


@pytest.fixture(scope="module")
def report():
    return info.collect_info()


def test_report_on_this_machine(report):
    assert report["cuda_available"] == cuda_available()
    assert report["backend"] == ("cuda" if cuda_available() else "cpu")
    if not cuda_available():
        assert report["cuda_unavailable_reason"]
    if cuda_available() or HAS_NVRTC:
        assert set(report["kernels"]["files"]) == set(registry.sources())
        assert all(status == "ok" for status in report["kernels"]["files"].values()), report["kernels"]
    text = info.format_info(report)
    assert "CUDA usable:" in text
    assert all(f"{file} " in text for file in report["kernels"]["files"])


def test_report_without_cupy(monkeypatch):
    monkeypatch.setattr(info, "cupy_module", lambda: None)
    monkeypatch.setattr(info, "cuda_available", lambda: False)
    monkeypatch.setattr(info, "cuda_unavailable_reason", lambda: "CuPy is not installed")
    report = info.collect_info(check_kernels=False)
    assert report["cupy"] is None and report["cuda_runtime"] is None and report["kernels"] is None
    text = info.format_info(report)
    assert "CuPy:           not found" in text and "CuPy is not installed" in text


def test_format_shows_gpus_and_compile_failures():
    report = {"gpuconv": "0", "python": "3", "numpy": "2", "cupy": "14.0", "backend": "cuda",
              "cuda_available": True, "cuda_unavailable_reason": None, "cuda_runtime": "13.0",
              "cuda_driver": "13.0", "nvrtc": "13.0", "driver": "580.1",
              "devices": [{"index": 0, "name": "NVIDIA H100", "compute_capability": "9.0",
                           "memory_bytes": 80 * 2**30, "multiprocessors": 132}],
              "kernels": {"compiler": "CuPy", "files": {"im2col.cu": "ok",
                                                        "pooling.cu": "KernelCompileError: bad\nline 2 of log"}}}
    text = info.format_info(report)
    assert "NVIDIA H100, compute capability 9.0, 80.0 GiB, 132 SMs" in text
    kernels = len(registry.instantiations("im2col.cu"))  # 2 kernels x 4 dtypes
    assert kernels == 8 and f"im2col.cu   ok ({kernels} kernels: im2col_nchw, col2im_nchw)" in text
    assert "pooling.cu  FAILED: KernelCompileError: bad" in text and "line 2 of log" in text


@pytest.mark.skipif(cuda_available() or not HAS_NVRTC, reason="the NVRTC check runs only without a GPU")
def test_a_second_report_answers_from_the_cache_and_progress_names_only_compiles(report, monkeypatch):
    """The module's first report compiled every file (and cached the verdicts); the next compiles nothing."""
    monkeypatch.setattr(info.loader, "compile_file", lambda *a, **k: (_ for _ in ()).throw(AssertionError("compiled")))
    told = []
    again = info.collect_info(progress=lambda file, index, count: told.append(file))
    assert told == [] and again["kernels"]["files"] == report["kernels"]["files"]
    assert f"{len(registry.sources())} of {len(registry.sources())} files answered from the cache" in \
        again["kernels"]["compiler"]
    # Another architecture (as another kernel text or NVRTC) is another key: compiled again, and reported.
    monkeypatch.setattr(info, "FALLBACK_ARCH", "sm_89")
    monkeypatch.setattr(info.loader, "compile_file", lambda *a, **k: None)
    fresh = info.collect_info(progress=lambda file, index, count: told.append((file, index, count)))
    assert len(told) == len(registry.sources()) and told[0][1:] == (1, len(registry.sources()))
    assert all(status == "ok" for status in fresh["kernels"]["files"].values())
