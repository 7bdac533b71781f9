// conv2d_dgrad.cu -- gradient of a convolution with respect to its input, as an
// implicit GEMM in the gather formulation (every input pixel is written by one
// thread, once: no atomics, bitwise reproducible).
//
// For each group g:
//     dx[m, c] = sum_j A[m, j] * B[j, c]
// over  m = (n, h, w)  an input pixel                            (N*H*W rows)
//       c              an input channel of the group             (Cg = C / groups)
//       j = (k, r, s)  an output channel of the group and a tap  (Kg*R*S, Kg = K / groups)
// with  A[m, j] = dy[n, g*Kg + k, p, q]  where  p*stride_h = h + pad_top - r*dilation_h  and
//                 q*stride_w = w + pad_left - s*dilation_w  have a solution inside the output
//                 (zero otherwise: that tap of that filter never read this pixel)
//       B[j, c] = w[g*Kg + k, c, r, s].
// With stride > 1 most (pixel, tap) pairs have no output pixel; they are skipped
// as zeros, which wastes work but keeps one simple kernel for every geometry.
//
// Launch: grid (ceil(N*H*W / BLOCK_M), ceil(Cg / BLOCK_N), groups), Tile::THREADS threads.
#include "implicit_gemm.cuh"
#include "warp_gemm.cuh"

namespace gpuconv {

template <typename T, class Tile>
__device__ __forceinline__ void conv2d_dgrad(const T* __restrict__ dy, const T* __restrict__ w,
                                             T* __restrict__ dx, const ConvShape shape) {
    typedef typename AccT<T>::type Acc;
    __shared__ SharedTiles<Acc, Tile> smem;

    const int group = blockIdx.z;
    const int Cg = shape.channels_per_group(), Kg = shape.filters_per_group();
    const int taps = shape.R * shape.S;
    const int reduction = Kg * taps;
    const long long PQ = (long long)shape.P * shape.Q;
    const long long HW = (long long)shape.H * shape.W;
    const long long pixels = shape.N * HW;
    const long long m_first = (long long)blockIdx.x * Tile::BLOCK_M;
    const int c_first = blockIdx.y * Tile::BLOCK_N;

    // A: this thread gathers, for one input pixel, the output gradients that read it.
    const int a_column = loader_column<Tile, Tile::BLOCK_M>();
    const bool pixel_valid = m_first + a_column < pixels;
    const long long m = pixel_valid ? m_first + a_column : 0;
    const long long n = m / HW;
    const int hw = (int)(m - n * HW);
    const int h_padded = hw / shape.W + shape.pad_top;   // the pixel in padded coordinates
    const int w_padded = hw % shape.W + shape.pad_left;
    const T* dy_image = dy + (n * shape.K + (long long)group * Kg) * PQ;  // dy[n, g*Kg, 0, 0]

    auto load_a = [&](Acc (&tile)[Tile::BLOCK_K][Tile::BLOCK_M + 1], long long k0) {
        for_each_row_in_column<Tile, Tile::BLOCK_M>([&](int row) {
            const int j = (int)k0 + row;
            Acc value = Acc(0);
            if (pixel_valid && j < reduction) {
                const int k = j / taps, tap = j - k * taps;
                const int r = tap / shape.S, s = tap - r * shape.S;
                const int p_strided = h_padded - r * shape.dilation_h;  // = p * stride_h
                const int q_strided = w_padded - s * shape.dilation_w;  // = q * stride_w
                if (p_strided >= 0 && q_strided >= 0 && p_strided % shape.stride_h == 0 &&
                    q_strided % shape.stride_w == 0) {
                    const int p = p_strided / shape.stride_h, q = q_strided / shape.stride_w;
                    if (p < shape.P && q < shape.Q)
                        value = to_acc(dy_image[k * PQ + (long long)p * shape.Q + q]);
                }
            }
            tile[row][a_column] = value;
        });
    };

    // B: w[g*Kg + k, c, r, s] at row j = (k, r, s), column c; contiguous along the taps.
    const T* w_group = w + (long long)group * Kg * Cg * taps;
    auto load_b = [&](Acc (&tile)[Tile::BLOCK_K][Tile::BLOCK_N + 1], long long k0) {
        for_each_by_row<Tile, Tile::BLOCK_N>([&](int row, int col) {
            const int j = (int)k0 + row, c = c_first + col;
            Acc value = Acc(0);
            if (j < reduction && c < Cg) {
                const int k = j / taps, tap = j - k * taps;
                value = to_acc(w_group[((long long)k * Cg + c) * taps + tap]);
            }
            tile[row][col] = value;
        });
    };

    Acc acc[Tile::THREAD_M][Tile::THREAD_N];
    zero_fill<Tile>(acc);
    accumulate_tiles<Tile>(load_a, load_b, 0, reduction, smem, acc);

    // dx[n, g*Cg + c, h, w]
    store_tiles_nchw<Tile>(dx, acc, m_first, pixels, HW, shape.C, group * Cg, c_first, Cg);
}

}  // namespace gpuconv

// ------------------------------------------------------------------ exports
// dx (N, C, H, W) = gradient of conv2d wrt x, from dy (N, K, P, Q) and w (K, C / groups, R, S).
// Instantiated by the loader per registered variant and dtype: NAME, T, ACC, then the TileShape.

#define GPUCONV_DGRAD_KERNEL(NAME, T, ACC, ...)                                               \
    extern "C" __global__ void NAME(const T* __restrict__ dy, const T* __restrict__ w,        \
                                    T* __restrict__ dx, GPUCONV_CONV_SHAPE_PARAMS) {         \
        gpuconv::conv2d_dgrad<T, __VA_ARGS__>(dy, w, dx, GPUCONV_CONV_SHAPE);                 \
    }

// The warp-tiled variants (warp_gemm.cuh), one launch per stride phase (phase_h, phase_w): the input pixels
// h = phase_h + t*stride_h receive dy only from the filter rows r with (h + pad_top - r*dil_h) divisible by
// stride_h, which depends on the phase alone: r = r_first, r_first + r_step, ... and then
//     p = t + (phase_h + pad_top - r*dil_h) / stride_h,
// a stride-1 gather with a per-tap offset. So each phase is a tap-major GEMM over its own pixel grid with
// its own taps; taps that only ever meet zero-inserted positions are never visited. The same for columns.
namespace gpuconv {

// The filter rows reaching phase `phase` of a strided dimension: the first, the step between them, how
// many, and the input offset of the first. Loops over at most `taps` and `stride` values: no division
// by a runtime value but the exact one at the end.
struct PhaseTaps {
    int first, step, count, origin, origin_step;
};

__device__ __forceinline__ PhaseTaps phase_taps(int phase, int stride, int dilation, int pad, int taps) {
    int first = 0;
    while (first < taps && ((phase + pad - first * dilation) % stride + stride) % stride != 0) ++first;
    int step = 1;
    while ((step * dilation) % stride != 0) ++step;
    const int count = first < taps ? (taps - 1 - first) / step + 1 : 0;
    return PhaseTaps{first, step, count, (phase + pad - first * dilation) / stride, -(step * dilation) / stride};
}

}  // namespace gpuconv

#define GPUCONV_DGRAD_WARP_KERNEL(NAME, T, ACC, THREADS, ...)                                 \
    extern "C" __global__ void __launch_bounds__(THREADS)                                     \
        NAME(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,           \
             GPUCONV_CONV_SHAPE_PARAMS, int phase_h, int phase_w) {                           \
        const int Cg = C / groups, Kg = K / groups;                                          \
        const gpuconv::PhaseTaps rows = gpuconv::phase_taps(phase_h, stride_h, dilation_h, pad_top, R);  \
        const gpuconv::PhaseTaps cols = gpuconv::phase_taps(phase_w, stride_w, dilation_w, pad_left, S); \
        gpuconv::tap_major_conv<T, __VA_ARGS__>(                                              \
            dy, w, dx,                                                                        \
            gpuconv::TapMajorConv{N, K, Kg, P, Q, C, Cg,                                      \
                                  (H - phase_h + stride_h - 1) / stride_h,                    \
                                  (W - phase_w + stride_w - 1) / stride_w,                    \
                                  H, W, phase_h, stride_h, phase_w, stride_w, 1, 1,           \
                                  rows.origin, cols.origin, rows.origin_step, cols.origin_step, \
                                  rows.count, cols.count, R, S, rows.first, rows.step,        \
                                  cols.first, cols.step, R * S, Cg * R * S});                 \
    }
