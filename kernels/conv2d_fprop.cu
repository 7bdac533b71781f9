// conv2d_fprop.cu -- forward convolution as an implicit GEMM.
//
// For each group g the output is the GEMM
//     y[m, k] = sum_j A[m, j] * B[j, k]
// over  m = (n, p, q)  an output pixel                          (N*P*Q rows)
//       k              an output channel of the group           (Kg = K / groups)
//       j = (c, r, s)  an input channel of the group and a tap  (Cg*R*S, Cg = C / groups)
// with  A[m, j] = x[n, g*Cg + c, p*stride_h - pad_top + r*dilation_h, q*stride_w - pad_left + s*dilation_w]
//                 (zero where that falls into the padding)
//       B[j, k] = w[g*Kg + k, c, r, s]      (the weight, read as a Kg x Cg*R*S matrix).
// The column matrix A is gathered slice by slice into shared memory, never stored.
//
// Launch: grid (ceil(N*P*Q / BLOCK_M), ceil(Kg / BLOCK_N), groups), Tile::THREADS threads.
#include "implicit_gemm.cuh"
#include "warp_gemm.cuh"

namespace gpuconv {

template <typename T, class Tile>
__device__ __forceinline__ void conv2d_fprop(const T* __restrict__ x, const T* __restrict__ w,
                                             T* __restrict__ y, const ConvShape shape) {
    typedef typename AccT<T>::type Acc;
    __shared__ SharedTiles<Acc, Tile> smem;

    const int group = blockIdx.z;
    const int Cg = shape.channels_per_group(), Kg = shape.filters_per_group();
    const int taps = shape.R * shape.S;
    const int reduction = Cg * taps;
    const long long PQ = (long long)shape.P * shape.Q;
    const long long HW = (long long)shape.H * shape.W;
    const long long pixels = shape.N * PQ;
    const long long m_first = (long long)blockIdx.x * Tile::BLOCK_M;
    const int k_first = blockIdx.y * Tile::BLOCK_N;

    // A: this thread gathers the taps of one output pixel, the same in every slice.
    const int a_column = loader_column<Tile, Tile::BLOCK_M>();
    const bool pixel_valid = m_first + a_column < pixels;
    const long long m = pixel_valid ? m_first + a_column : 0;
    const long long n = m / PQ;
    const int pq = (int)(m - n * PQ);
    const int h_origin = (pq / shape.Q) * shape.stride_h - shape.pad_top;
    const int w_origin = (pq % shape.Q) * shape.stride_w - shape.pad_left;
    const T* x_image = x + (n * shape.C + (long long)group * Cg) * HW;  // x[n, g*Cg, 0, 0]

    auto load_a = [&](Acc (&tile)[Tile::BLOCK_K][Tile::BLOCK_M + 1], long long k0) {
        for_each_row_in_column<Tile, Tile::BLOCK_M>([&](int row) {
            const int j = (int)k0 + row;
            Acc value = Acc(0);
            if (pixel_valid && j < reduction) {
                const int c = j / taps, tap = j - c * taps;
                const int r = tap / shape.S, s = tap - r * shape.S;
                const int h = h_origin + r * shape.dilation_h;
                const int wi = w_origin + s * shape.dilation_w;
                if (h >= 0 && h < shape.H && wi >= 0 && wi < shape.W)
                    value = to_acc(x_image[c * HW + (long long)h * shape.W + wi]);
            }
            tile[row][a_column] = value;
        });
    };

    // B: the group's weights, contiguous along the reduction.
    const T* w_group = w + (long long)group * Kg * reduction;
    auto load_b = [&](Acc (&tile)[Tile::BLOCK_K][Tile::BLOCK_N + 1], long long k0) {
        for_each_by_row<Tile, Tile::BLOCK_N>([&](int row, int col) {
            const int j = (int)k0 + row, k = k_first + col;
            tile[row][col] = (j < reduction && k < Kg) ? to_acc(w_group[(long long)k * reduction + j]) : Acc(0);
        });
    };

    Acc acc[Tile::THREAD_M][Tile::THREAD_N];
    zero_fill<Tile>(acc);
    accumulate_tiles<Tile>(load_a, load_b, 0, reduction, smem, acc);

    // y[n, g*Kg + k, p, q]
    store_tiles_nchw<Tile>(y, acc, m_first, pixels, PQ, shape.K, group * Kg, k_first, Kg);
}

}  // namespace gpuconv

// ------------------------------------------------------------------ exports
// y (N, K, P, Q) = conv2d(x (N, C, H, W), w (K, C / groups, R, S)). The loader instantiates this macro
// once per registered variant and dtype (gpuconv/cuda/registry.py): NAME, the storage and accumulator
// types, then the TileShape.

#define GPUCONV_FPROP_KERNEL(NAME, T, ACC, ...)                                               \
    extern "C" __global__ void NAME(const T* __restrict__ x, const T* __restrict__ w,         \
                                    T* __restrict__ y, GPUCONV_CONV_SHAPE_PARAMS) {          \
        gpuconv::conv2d_fprop<T, __VA_ARGS__>(x, w, y, GPUCONV_CONV_SHAPE);                   \
    }

// The warp-tiled variants (warp_gemm.cuh): the same convolution, reduction in (r, s, c) order. THREADS is the
// tile's block size, for __launch_bounds__.
#define GPUCONV_FPROP_WARP_KERNEL(NAME, T, ACC, THREADS, ...)                                 \
    extern "C" __global__ void __launch_bounds__(THREADS)                                     \
        NAME(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,             \
             GPUCONV_CONV_SHAPE_PARAMS) {                                                     \
        const int Cg = C / groups, Kg = K / groups;                                          \
        gpuconv::tap_major_conv<T, __VA_ARGS__>(                                              \
            x, w, y,                                                                          \
            gpuconv::TapMajorConv{N, C, Cg, H, W, K, Kg, P, Q, P, Q, 0, 1, 0, 1, stride_h, stride_w, \
                                  -pad_top, -pad_left, dilation_h, dilation_w, R, S, R, S, 0, 1, 0, 1,   \
                                  Cg * R * S, R * S});                                        \
    }
