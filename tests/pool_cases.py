"""The pooling geometries every pooling path is tested on (the CPU paths in test_pool.py, the kernels in
test_kernels_emulated.py): tiny, but every edge of the window arithmetic."""
from gpuconv._shapes import PoolGeometry

# (id, input shape, kernel_size, stride, padding, ceil_mode, dilation), or (id, input shape, "adaptive", output_size)
POOL_CASES = [
    ("3x3-s2-p1", (2, 3, 7, 6), 3, 2, 1, False, 1),
    ("3x3-s2-p1-ceil", (2, 3, 7, 6), 3, 2, 1, True, 1),
    ("2x2-default-stride", (1, 2, 5, 5), 2, None, 0, False, 1),
    ("2x2-default-stride-ceil", (1, 2, 5, 5), 2, None, 0, True, 1),
    ("nonsquare-ceil", (1, 1, 6, 7), (3, 2), (2, 1), (1, 0), True, 1),
    ("overlapping-pad-half-kernel", (2, 2, 4, 4), 4, 1, 2, False, 1),
    ("global", (1, 3, 3, 5), (3, 5), None, 0, False, 1),
    ("batch1-1x1", (1, 4, 3, 3), 1, 2, 0, True, 1),
    ("dilation-ceil", (1, 2, 9, 8), 3, 2, 1, True, (2, 3)),
    ("asymmetric-pad", (2, 1, 6, 7), (3, 2), (2, 1), (0, 2, 1, 0), True, 1),
    ("same-lower", (1, 2, 6, 7), 3, 2, "same_lower", False, 1),
    ("same-dilated", (1, 2, 7, 6), 2, 1, "same", False, 2),
    # Padding larger than the kernel: windows of padding only (value -inf / lowest, index -1, no gradient).
    ("padding-only-windows", (1, 2, 4, 5), 2, 2, (3, 3, 2, 4), False, 1),
    ("adaptive-overlapping", (2, 2, 5, 7), "adaptive", (3, 4)),
    ("adaptive-upsampling", (1, 2, 3, 2), "adaptive", (5, 3)),
]
POOL_IDS = [case[0] for case in POOL_CASES]


def pool_geometry(case) -> PoolGeometry:
    if case[2] == "adaptive":
        return PoolGeometry.adaptive(case[1], case[3])
    _, shape, kernel, stride, padding, ceil_mode, dilation = case
    return PoolGeometry.create(shape, kernel, stride, padding, ceil_mode, dilation)
