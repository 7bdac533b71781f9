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
// NaN and inf: dx sums only the taps that reach a pixel (see resum_nan_outputs below).
//
// Launch: grid (ceil(N*H*W / BLOCK_M), ceil(Cg / BLOCK_N), groups), Tile::THREADS threads.
#include "implicit_gemm.cuh"
#include "warp_gemm.cuh"

namespace gpuconv {

// ------------------------------------------------------------------ NaN and inf
// dx sums only the taps that reach a pixel: col2im's rule, gpuconv.reference's and PyTorch's (no padding of its
// own). Both GEMMs here multiply zeros for the taps that do not (the SIMT one for zero-inserted positions and
// positions outside dy, the warp-tiled one for positions outside dy): exact while the weight is finite, but
// 0 * inf and 0 * NaN are NaN. So a thread that stored a NaN -- a compare per output, its flag in shared memory,
// is all that finite weights pay -- sums those outputs again over the reaching taps alone, reading them back
// from dx (no register tile stays live; cold code, loops not unrolled). A pixel every tap of which reaches
// kept its NaN rightly. Slow only where the weights already are NaN or inf.

// Whether a tap at offset `strided` (= p * stride in the output) reaches output row (column) p.
__device__ __forceinline__ bool reaches(int strided, int stride, int extent) {
    return strided >= 0 && strided % stride == 0 && strided / stride < extent;
}

__device__ __forceinline__ bool every_tap_reaches(const ConvShape& sh, int h, int wi) {
    bool every = true;
#pragma unroll 1
    for (int r = 0; r < sh.R; ++r) every &= reaches(h + sh.pad_top - r * sh.dilation_h, sh.stride_h, sh.P);
#pragma unroll 1
    for (int s = 0; s < sh.S; ++s) every &= reaches(wi + sh.pad_left - s * sh.dilation_w, sh.stride_w, sh.Q);
    return every;
}

// dx[n, group*Cg + c, h, wi], if NaN, summed again over the taps (r, s) that reach it and the group's k.
template <typename T>
__device__ __forceinline__ void resum_if_nan(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,
                                             const ConvShape& sh, long long n, int group, int c, int h, int wi) {
    typedef typename AccT<T>::type Acc;
    const int Cg = sh.channels_per_group(), Kg = sh.filters_per_group(), taps = sh.R * sh.S;
    const long long PQ = (long long)sh.P * sh.Q, HW = (long long)sh.H * sh.W;
    T* out = dx + (n * sh.C + (long long)group * Cg + c) * HW + (long long)h * sh.W + wi;
    if (!is_nan(to_acc(*out))) return;
    const T* dy_image = dy + (n * sh.K + (long long)group * Kg) * PQ;               // dy[n, g*Kg, 0, 0]
    const T* w_channel = w + ((long long)group * Kg * Cg + c) * taps;              // w[g*Kg, c, 0, 0]
    Acc sum = Acc(0);
#pragma unroll 1
    for (int r = 0; r < sh.R; ++r) {
        const int p_strided = h + sh.pad_top - r * sh.dilation_h;
        if (!reaches(p_strided, sh.stride_h, sh.P)) continue;
#pragma unroll 1
        for (int s = 0; s < sh.S; ++s) {
            const int q_strided = wi + sh.pad_left - s * sh.dilation_w;
            if (!reaches(q_strided, sh.stride_w, sh.Q)) continue;
            const T* dy_pixel = dy_image + (long long)(p_strided / sh.stride_h) * sh.Q + q_strided / sh.stride_w;
#pragma unroll 1
            for (int k = 0; k < Kg; ++k)
                sum += to_acc(dy_pixel[k * PQ]) * to_acc(w_channel[(long long)k * Cg * taps + r * sh.S + s]);
        }
    }
    *out = from_acc<T>(sum);
}

// The SIMT kernel's outputs: pixels m_first + owned_row(i), channels c_first + owned_col(j).
template <class Tile, typename T>
__device__ __forceinline__ void resum_nan_outputs(const T* __restrict__ dy, const T* __restrict__ w,
                                                  T* __restrict__ dx, const ConvShape sh) {
    const int group = (int)blockIdx.z;
    const long long HW = (long long)sh.H * sh.W;
    const long long m_first = (long long)blockIdx.x * Tile::BLOCK_M;
    const int c_first = (int)blockIdx.y * Tile::BLOCK_N;
#pragma unroll 1
    for (int i = 0; i < Tile::THREAD_M; ++i) {
        const long long m = m_first + owned_row<Tile>(i);
        if (m >= sh.N * HW) continue;
        const long long n = m / HW;
        const int hw = (int)(m - n * HW);
        const int h = hw / sh.W, wi = hw % sh.W;
        if (every_tap_reaches(sh, h, wi)) continue;
#pragma unroll 1
        for (int j = 0; j < Tile::THREAD_N; ++j) {
            const int c = c_first + owned_col<Tile>(j);
            if (c < sh.channels_per_group()) resum_if_nan(dy, w, dx, sh, n, group, c, h, wi);
        }
    }
}

// The warp-tiled kernel's outputs in stride phase (phase_h, phase_w): phase pixels m_first + owned_row8(row0, i),
// that is dx pixels (phase_h + t_h*stride_h, phase_w + t_w*stride_w), channels col_first + owned_col8(col0, j).
// Not inlined, its indices read afresh: inlined, or reusing the kernel's, it cost the kernel registers and
// spills in some tiles (gpuconv.cuda.report shows them); as a call, float32 and float16 pay none.
template <class Tile, typename T>
__device__ __noinline__ void resum_nan_outputs_of_phase(const T* __restrict__ dy, const T* __restrict__ w,
                                                           T* __restrict__ dx, const ConvShape sh, int phase_h,
                                                           int phase_w) {
    int block_m, block_n, group;
    fresh_block_index(block_m, block_n, group);
    const int rows = (sh.H - phase_h + sh.stride_h - 1) / sh.stride_h;
    const int cols = (sh.W - phase_w + sh.stride_w - 1) / sh.stride_w;
    const long long plane = (long long)rows * cols;
    const long long m_first = (long long)block_m * Tile::BLOCK_M;
    const int c_first = block_n * Tile::BLOCK_N;
    const int tid = fresh_thread_index(), row0 = thread_row0<Tile>(tid), col0 = thread_col0<Tile>(tid);
#pragma unroll 1
    for (int i = 0; i < 8; ++i) {
        const long long m = m_first + owned_row8<Tile>(row0, i);
        if (m >= sh.N * plane) continue;
        const long long n = m / plane;
        const int t = (int)(m - n * plane);
        const int h = phase_h + t / cols * sh.stride_h, wi = phase_w + t % cols * sh.stride_w;
        if (every_tap_reaches(sh, h, wi)) continue;
#pragma unroll 1
        for (int j = 0; j < 8; ++j) {
            const int c = c_first + owned_col8<Tile>(col0, j);
            if (c < sh.channels_per_group()) resum_if_nan(dy, w, dx, sh, n, group, c, h, wi);
        }
    }
}

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
    // A NaN flag in this thread's word of the shared tiles (everyone is past the last barrier): no register.
    volatile Acc* nan_seen = &smem.a[threadIdx.x / Tile::BLOCK_M][threadIdx.x % Tile::BLOCK_M];
    *nan_seen = Acc(0);
#pragma unroll
    for (int i = 0; i < Tile::THREAD_M; ++i)
#pragma unroll
        for (int j = 0; j < Tile::THREAD_N; ++j)
            if (is_nan(acc[i][j])) *nan_seen = Acc(1);

    // dx[n, g*Cg + c, h, w]
    store_tiles_nchw<Tile>(dx, acc, m_first, pixels, HW, shape.C, group * Cg, c_first, Cg);
    if (*nan_seen != Acc(0)) resum_nan_outputs<Tile>(dy, w, dx, shape);
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
        const bool any_nan = gpuconv::tap_major_conv<T, __VA_ARGS__, true>(                   \
            dy, w, dx,                                                                        \
            gpuconv::TapMajorConv{N, K, Kg, P, Q, C, Cg,                                      \
                                  (H - phase_h + stride_h - 1) / stride_h,                    \
                                  (W - phase_w + stride_w - 1) / stride_w,                    \
                                  H, W, phase_h, stride_h, phase_w, stride_w, 1, 1,           \
                                  rows.origin, cols.origin, rows.origin_step, cols.origin_step, \
                                  rows.count, cols.count, R, S, rows.first, rows.step,        \
                                  cols.first, cols.step, R * S, Cg * R * S});                 \
        if (any_nan)                                                                          \
            gpuconv::resum_nan_outputs_of_phase<__VA_ARGS__>(dy, w, dx, GPUCONV_CONV_SHAPE, phase_h, phase_w); \
    }
