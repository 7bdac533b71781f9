"""Kernel speed judged by machine code, in CI: the implicit-GEMM variant the planner picks for ResNet-50's
3x3 convolutions at batch 32 (float32) must reach, in its main loop, at least what CUTLASS's optimized SIMT
convolutions reach compiled the same way (the calibration in the fast-kernel issue): FFMA share, FFMAs per
shared-memory load, integer/address share, no spills, and at least 8 resident warps per SM.

Every pass of every 3x3 layer, strided ones included (dgrad by stride phases). And the tensor-core fprop
variants, every dtype (float16, bfloat16, TF32): HMMA share, HMMA per ldmatrix.x4, fragments from ldmatrix
only, 128-bit cp.async, pipeline stages, no spills, 8 warps per SM.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

from gpuconv.cuda import plan, registry, report
from gpuconv.suites import load_suite

pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed (NVRTC compiles the kernels)")
if report.find_disassembler("nvdisasm") is None and report.find_disassembler("cuobjdump") is None:
    pytest.skip("neither nvdisasm nor cuobjdump is installed (pip install nvidia-cuda-nvdisasm)",
                allow_module_level=True)

ARCHS = ("sm_90", "sm_80")
BATCH = 32
#: pass -> (least FFMA share, least FFMAs per shared load, most integer share) of the main loop.
TARGETS = {"fprop": (0.80, 16.0, 0.12), "dgrad": (0.78, 16.0, 0.15), "wgrad": (0.70, 16.0, 0.20)}
MIN_WARPS_PER_SM = 8


def resnet_3x3(pass_name: str):
    """(layer name, geometry) of ResNet-50's 3x3 convolutions, with the variant the planner picks."""
    layers = [layer for layer in load_suite("resnet50").layers if (layer.R, layer.S) == (3, 3)]
    return [(layer.name, layer.geometry(BATCH),
             plan.plan_conv(pass_name, layer.geometry(BATCH), np.float32, "implicit_gemm").variant)
            for layer in layers]


ASSERTED = [("fprop", name, variant) for name, g, variant in resnet_3x3("fprop")] + \
           [("dgrad", name, variant) for name, g, variant in resnet_3x3("dgrad")] + \
           [("wgrad", name, variant) for name, g, variant in resnet_3x3("wgrad")]


@functools.lru_cache(maxsize=None)
def variant_report(variant: str, arch: str) -> report.VariantReport:
    return report.variant_report(variant, "float32", arch)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pass_name, layer, variant", ASSERTED, ids=[f"{p}-{l}" for p, l, _ in ASSERTED])
def test_the_chosen_variant_reaches_the_targets(pass_name, layer, variant, arch):
    r = variant_report(variant, arch)
    fma_share, fma_per_load, integer_share = TARGETS[pass_name]
    loop = r.main_loop
    assert loop is not None, f"{variant} ({arch}): no main loop found"
    where = f"{variant} for {pass_name} {layer} ({arch})"
    assert loop.fma_share >= fma_share, f"{where}: FFMA share {loop.fma_share:.1%} < {fma_share:.0%}"
    assert loop.fma_per_shared_load >= fma_per_load, f"{where}: {loop.fma_per_shared_load} FFMA per shared load"
    assert loop.integer_share <= integer_share, f"{where}: integer share {loop.integer_share:.1%}"
    assert (r.spill_stores, r.spill_loads) == (0, 0), f"{where}: spills"
    assert r.occupancy.active_warps >= MIN_WARPS_PER_SM, f"{where}: {r.occupancy.active_warps} warps per SM"


# ------------------------------------------------------------------------------------ tensor cores ---

#: Every tensor-core instantiation: (variant, dtype).
TENSOR_CORE_RUNS = [(v.name, str(d)) for v in registry.VARIANTS if v.family == registry.TENSOR_CORE for d in v.dtypes]
#: The tensor-core main loop: at least this share of HMMA, HMMA per 16-byte fragment load (4: a 64x64 warp
#: tile's 8 ldmatrix.x4 -- TF32 wgrad: 8 LDS.128 -- feed 32 mma per step), pipeline stages; no scalar shared
#: loads (fragments come from ldmatrix.x4, or 128-bit loads where ldmatrix cannot transpose 32-bit elements)
#: and only 128-bit cp.async (16-byte copies of the packed operands).
MIN_TENSOR_SHARE, MIN_TENSOR_PER_LDMATRIX, MIN_STAGES = 0.25, 4.0, 3


@functools.lru_cache(maxsize=None)
def dtype_report(variant: str, dtype: str, arch: str) -> report.VariantReport:
    return report.variant_report(variant, dtype, arch)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant, dtype", TENSOR_CORE_RUNS, ids=[f"{v}-{d}" for v, d in TENSOR_CORE_RUNS])
def test_tensor_core_variants_reach_the_targets(variant, dtype, arch):
    r = dtype_report(variant, dtype, arch)
    loop = r.main_loop
    where = f"{variant} {dtype} ({arch})"
    assert not r.error and loop is not None, f"{where}: {r.error or 'no main loop found'}"
    assert loop.tensor_share >= MIN_TENSOR_SHARE, f"{where}: HMMA share {loop.tensor_share:.1%}"
    assert loop.tensor_per_ldmatrix >= MIN_TENSOR_PER_LDMATRIX, f"{where}: {loop.tensor_per_ldmatrix} HMMA per LDSM"
    fragment_loads = ("LDS.128",) if variant.startswith("wgrad") and dtype == "float32" else ("LDSM",)
    assert loop.shared_loads == {op: n for op, n in loop.shared_loads.items() if op.startswith(fragment_loads)}
    assert loop.scalar_shared_loads == 0, f"{where}: scalar shared loads {loop.shared_loads}"
    assert loop.async_copies > 0 and set(loop.async_copy_widths) == {128}, f"{where}: {loop.async_copy_widths}"
    assert loop.global_loads == 0, f"{where}: {loop.global_loads} global loads through registers"
    assert r.stages >= MIN_STAGES
    assert (r.spill_stores, r.spill_loads) == (0, 0), f"{where}: spills"
    assert r.occupancy.active_warps >= MIN_WARPS_PER_SM, f"{where}: {r.occupancy.active_warps} warps per SM"
