"""Work counts of one convolution pass: FLOPs, GEMM-equivalent size, minimum bytes, roofline.

FLOPs are the useful multiply-adds (2 FLOPs each), ``ConvGeometry.flops()``:
2*N*K*P*Q*(C/g)*R*S, the same for fprop, dgrad and wgrad. Padding zeros and
the zeros a strided dgrad would insert are never counted, so TFLOP/s figures
of different algorithms for one layer compare their times directly.

GEMM-equivalent (per group; ``batch`` = groups independent products, M x K times K x N):

======  ===========  ======  ========================================
pass    M            N       K
======  ===========  ======  ========================================
fprop   N*P*Q        K/g     C/g*R*S
dgrad   N*H*W        C/g     K/g*R*S * (P*Q)/(H*W), rounded
wgrad   K/g          C/g*R*S N*P*Q
======  ===========  ======  ========================================

fprop and wgrad are the implicit-GEMM products exactly. dgrad's M x N is the
shape of its result dX (one row per input pixel, one column per input
channel), as in implicit-GEMM dgrad (CUTLASS: M = N*H*W, N = C, K = K*R*S).
When P*Q = H*W (stride 1, 'same' padding) its K is exactly K/g*R*S. Otherwise
dX's pixels see on average only (P*Q)/(H*W) of the K/g*R*S taps (a stride-2
conv's dX pixel is touched by about a quarter of them), and K is scaled by
that ratio, so that 2*M*N*K*groups equals the convolution's FLOPs in every
pass, up to rounding. That is what makes the cuBLAS GEMM of this size a fair
ceiling: the same useful work, the same output size.

Minimum bytes: each operand read once and the result written once. Every pass
touches the same three tensors (x, w, y or their gradients), so the count is
(|x| + |w| + |y|) * itemsize for all three.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PASSES = ("fprop", "dgrad", "wgrad")


@dataclass(frozen=True)
class GemmShape:
    M: int
    N: int
    K: int
    batch: int = 1  # independent products (one per group)

    @property
    def flops(self) -> int:
        return 2 * self.M * self.N * self.K * self.batch

    def as_dict(self) -> dict:
        return {"M": self.M, "N": self.N, "K": self.K, "batch": self.batch}


def check_pass(pass_name: str) -> str:
    if pass_name not in PASSES:
        raise ValueError(f"unknown pass {pass_name!r}; choose from {PASSES}")
    return pass_name


def conv_flops(g) -> int:
    return g.flops()


def gemm_shape(g, pass_name: str) -> GemmShape:
    """The GEMM-equivalent of one pass (see the module docstring for the definitions)."""
    check_pass(pass_name)
    cg, kg = g.C // g.groups, g.K // g.groups
    if pass_name == "fprop":
        return GemmShape(g.N * g.P * g.Q, kg, cg * g.R * g.S, g.groups)
    if pass_name == "wgrad":
        return GemmShape(kg, cg * g.R * g.S, g.N * g.P * g.Q, g.groups)
    taps = kg * g.R * g.S * g.P * g.Q
    k_eff = max(1, (2 * taps + g.H * g.W) // (2 * g.H * g.W))  # round(taps / (H*W)) in integers
    return GemmShape(g.N * g.H * g.W, cg, k_eff, g.groups)


def min_bytes(g, itemsize: int) -> int:
    """Bytes of x, w and y, each moved once: the floor of any pass's memory traffic."""
    elements = int(np.prod(g.input_shape)) + int(np.prod(g.weight_shape)) + int(np.prod(g.output_shape))
    return elements * int(itemsize)


def arithmetic_intensity(g, itemsize: int) -> float:
    """FLOPs per byte of minimum traffic."""
    return conv_flops(g) / min_bytes(g, itemsize)


def roofline_tflops(intensity: float, peak_tflops, bandwidth_gbs):
    """The roofline's attainable TFLOP/s at this intensity: min(compute peak, intensity * bandwidth)."""
    if peak_tflops is None or bandwidth_gbs is None:
        return None
    return min(float(peak_tflops), intensity * bandwidth_gbs / 1e3)


def pass_metrics(g, pass_name: str, itemsize: int) -> dict:
    """The counts a result record carries for one (layer, batch, pass, dtype)."""
    return {
        "flops": conv_flops(g),
        "gemm": gemm_shape(g, pass_name).as_dict(),
        "bytes": min_bytes(g, itemsize),
        "intensity": arithmetic_intensity(g, itemsize),
    }
