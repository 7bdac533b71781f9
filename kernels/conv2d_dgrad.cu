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

// The warp-tiled variants, stride 1 only (warp_gemm.cuh): at stride 1 the input gradient is a forward
// convolution of dy with the filter transposed (c <-> k) and turned by 180 degrees, padded by
// dilation*(R-1) - pad_top on top (and likewise on the left):
//     dx[n, c, h, w] = sum over k, r', s' of dy[n, k, h - pad' + r'*dil_h, ...] * w[k, c, R-1-r', S-1-s'].
// So its B column c strides R*S through w, its reduction channel k strides Cg*R*S, and taps run backwards.
#define GPUCONV_DGRAD_WARP_KERNEL(NAME, T, ACC, THREADS, ...)                                 \
    extern "C" __global__ void __launch_bounds__(THREADS)                                     \
        NAME(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,           \
             GPUCONV_CONV_SHAPE_PARAMS) {                                                     \
        const int Cg = C / groups, Kg = K / groups;                                          \
        (void)stride_h;                                                                       \
        (void)stride_w;                                                                       \
        gpuconv::tap_major_conv<T, __VA_ARGS__>(                                              \
            dy, w, dx,                                                                        \
            gpuconv::TapMajorConv{N, K, Kg, P, Q, C, Cg, H, W, R, S, 1, 1, dilation_h, dilation_w, \
                                  dilation_h * (R - 1) - pad_top, dilation_w * (S - 1) - pad_left, \
                                  R * S, Cg * R * S, true});                                  \
    }
