"""How long a fresh process's first conv2d spends getting its kernels compiled, as far as a machine
without a GPU can tell: NVRTC compile time (what CuPy's RawModule runs on an empty cache) of the
compilation units each first call needs, per-variant units (now) against whole-file units (before).

With a warm cache CuPy compiles nothing: it preprocesses an empty file once per process (one NVRTC call,
measured here too), hashes the source, reads the cubin and loads it (cuModuleLoadData, which needs a GPU
and is not measured).

    python scripts/kernel_startup.py [--arch sm_90]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gpuconv import ConvGeometry
from gpuconv.cuda import loader, plan, registry


def seconds(fn, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90")
    args = parser.parse_args()
    f32 = np.dtype(np.float32)
    dense = ConvGeometry.create((32, 64, 56, 56), (64, 64, 3, 3), padding=1)
    depthwise = ConvGeometry.create((32, 64, 56, 56), (64, 1, 3, 3), padding=1, groups=64)

    def kernels_of(*plans):  # the variants the plans launch
        return list(dict.fromkeys(k.variant.name for p in plans for k in p.launches))

    first_calls = {  # what each first call compiles, taken from the planner
        "conv2d fprop, dense (fixed rule: im2col + cuBLAS)": kernels_of(plan.plan_conv("fprop", dense, f32)),
        "conv2d fprop, depthwise (fixed rule: implicit GEMM)": kernels_of(plan.plan_conv("fprop", depthwise, f32)),
        "conv2d wgrad, implicit GEMM": kernels_of(plan.plan_conv("wgrad", dense, f32, "implicit_gemm")),
        "conv2d fprop, auto with the autotuner (every candidate)": kernels_of(
            *(plan.plan_conv("fprop", dense, f32, c) for c in plan.candidates("fprop", dense, f32))),
    }
    nvrtc = loader._nvrtc()
    empty = seconds(lambda: loader._nvrtc_compile(nvrtc, "", "empty.cu", [f"-arch={args.arch}"]))
    print(f"NVRTC {'.'.join(map(str, loader.nvrtc_version()))}, {args.arch}, float32; median of 3 compiles each")
    print(f"warm cache: CuPy's once-per-process NVRTC preprocessing of an empty file: {empty * 1e3:.0f} ms "
          f"(+ reading and loading the cubins: not measurable without a GPU)")
    for what, variants in first_calls.items():
        files = list(dict.fromkeys(registry.get(v).source for v in variants))
        now = sum(seconds(lambda v=v: loader.compile_variant(v, f32, args.arch)) for v in variants)
        before = sum(seconds(lambda f=f: loader.compile_file(f, args.arch)) for f in files)
        print(f"{what}: empty cache {now:.2f} s now ({len(variants)} unit(s)); "
              f"{before:.2f} s with one module per kernel file ({len(files)} file(s), every tile and dtype)")


if __name__ == "__main__":
    main()
