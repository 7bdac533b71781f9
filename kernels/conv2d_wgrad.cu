// conv2d_wgrad.cu -- gradient of a convolution with respect to its weight, as an
// implicit GEMM with a deterministic split of the long reduction.
//
// For each group g:
//     dw[k, j] = sum_i A[k, i] * B[i, j]
// over  k              an output channel of the group            (Kg = K / groups rows)
//       j = (c, r, s)  an input channel of the group and a tap   (Cg*R*S columns)
//       i = (n, p, q)  an output pixel                           (N*P*Q, the reduction)
// with  A[k, i] = dy[n, g*Kg + k, p, q]
//       B[i, j] = x[n, g*Cg + c, p*stride_h - pad_top + r*dilation_h, q*stride_w - pad_left + s*dilation_w]
//                 (zero in the padding).
//
// The reduction over every output pixel is long and the weight small, so it is
// split into `splits` ranges of k_per_split pixels, each block summing one range
// of one tile into its own slot of a workspace (no atomics). The second kernel,
// wgrad_reduce, adds the slots in split order: the result is bitwise
// reproducible for a given split.
//
// Launch: grid (ceil(Kg / BLOCK_M), ceil(Cg*R*S / BLOCK_N), groups * splits), Tile::THREADS threads;
// partial holds splits * K * Cg*R*S accumulator values.
#include "implicit_gemm.cuh"
#include "warp_gemm.cuh"

namespace gpuconv {

template <typename T, class Tile>
__device__ __forceinline__ void conv2d_wgrad(const T* __restrict__ x, const T* __restrict__ dy,
                                             typename AccT<T>::type* __restrict__ partial,
                                             const ConvShape shape, int splits, long long k_per_split) {
    typedef typename AccT<T>::type Acc;
    __shared__ SharedTiles<Acc, Tile> smem;

    const int group = blockIdx.z / splits, split = blockIdx.z % splits;
    const int Cg = shape.channels_per_group(), Kg = shape.filters_per_group();
    const int taps = shape.R * shape.S;
    const int columns = Cg * taps;
    const long long PQ = (long long)shape.P * shape.Q;
    const long long HW = (long long)shape.H * shape.W;
    const long long pixels = shape.N * PQ;
    const long long i_begin = split * k_per_split;
    const long long i_end = min_of(pixels, i_begin + k_per_split);
    const int k_first = blockIdx.x * Tile::BLOCK_M;
    const int j_first = blockIdx.y * Tile::BLOCK_N;

    // A: dy, contiguous along the output pixels of one channel.
    const T* dy_group = dy + (long long)group * Kg * PQ;  // dy[0, g*Kg, 0, 0]
    auto load_a = [&](Acc (&tile)[Tile::BLOCK_K][Tile::BLOCK_M + 1], long long i0) {
        for_each_by_row<Tile, Tile::BLOCK_M>([&](int row, int col) {
            const long long i = i0 + row;
            const int k = k_first + col;
            Acc value = Acc(0);
            if (i < i_end && k < Kg) {
                const long long n = i / PQ;
                value = to_acc(dy_group[(n * shape.K + k) * PQ + (i - n * PQ)]);
            }
            tile[row][col] = value;
        });
    };

    // B: this thread gathers one tap (c, r, s) of the input, the same in every slice.
    const int b_column = loader_column<Tile, Tile::BLOCK_N>();
    const bool tap_valid = j_first + b_column < columns;
    const int j = tap_valid ? j_first + b_column : 0;
    const int c = j / taps, tap = j - c * taps;
    const int h_offset = (tap / shape.S) * shape.dilation_h - shape.pad_top;
    const int w_offset = (tap % shape.S) * shape.dilation_w - shape.pad_left;
    const T* x_channel = x + ((long long)group * Cg + c) * HW;  // x[0, g*Cg + c, 0, 0]
    const long long image_stride = (long long)shape.C * HW;
    auto load_b = [&](Acc (&tile)[Tile::BLOCK_K][Tile::BLOCK_N + 1], long long i0) {
        for_each_row_in_column<Tile, Tile::BLOCK_N>([&](int row) {
            const long long i = i0 + row;
            Acc value = Acc(0);
            if (tap_valid && i < i_end) {
                const long long n = i / PQ;
                const int pq = (int)(i - n * PQ);
                const int h = (pq / shape.Q) * shape.stride_h + h_offset;
                const int wi = (pq % shape.Q) * shape.stride_w + w_offset;
                if (h >= 0 && h < shape.H && wi >= 0 && wi < shape.W)
                    value = to_acc(x_channel[n * image_stride + (long long)h * shape.W + wi]);
            }
            tile[row][b_column] = value;
        });
    };

    Acc acc[Tile::THREAD_M][Tile::THREAD_N];
    zero_fill<Tile>(acc);
    accumulate_tiles<Tile>(load_a, load_b, i_begin, i_end, smem, acc);

    // partial[split, g*Kg + k, j]
    Acc* partial_group = partial + ((long long)split * shape.K + (long long)group * Kg) * columns;
#pragma unroll
    for (int ii = 0; ii < Tile::THREAD_M; ++ii) {
        const int k = k_first + owned_row<Tile>(ii);
        if (k >= Kg) continue;
#pragma unroll
        for (int jj = 0; jj < Tile::THREAD_N; ++jj) {
            const int jo = j_first + owned_col<Tile>(jj);
            if (jo < columns) partial_group[(long long)k * columns + jo] = acc[ii][jj];
        }
    }
}

// dw[e] = sum over s = 0, 1, ... splits-1 of partial[s, e], in that order.
template <typename T>
__device__ __forceinline__ void conv2d_wgrad_reduce(const typename AccT<T>::type* __restrict__ partial,
                                                    T* __restrict__ dw, long long weights, int splits) {
    typedef typename AccT<T>::type Acc;
    for (long long e = first_index(); e < weights; e += index_stride()) {
        Acc sum = partial[e];
        for (int s = 1; s < splits; ++s) sum += partial[s * weights + e];
        dw[e] = from_acc<T>(sum);
    }
}

}  // namespace gpuconv

// ------------------------------------------------------------------ exports
// partial (splits, K, C / groups * R * S) from x (N, C, H, W) and dy (N, K, P, Q); then
// dw (K, C / groups, R, S) = the sum of the splits. ACC is the accumulator type of T. Instantiated by the
// loader per registered variant and dtype (the GEMM kernel takes the TileShape last).

#define GPUCONV_WGRAD_KERNEL(NAME, T, ACC, ...)                                               \
    extern "C" __global__ void NAME(const T* __restrict__ x, const T* __restrict__ dy,        \
                                    ACC* __restrict__ partial, GPUCONV_CONV_SHAPE_PARAMS,     \
                                    int splits, long long k_per_split) {                      \
        gpuconv::conv2d_wgrad<T, __VA_ARGS__>(x, dy, partial, GPUCONV_CONV_SHAPE, splits,     \
                                              k_per_split);                                   \
    }

#define GPUCONV_WGRAD_REDUCE_KERNEL(NAME, T, ACC)                                             \
    extern "C" __global__ void NAME(const ACC* __restrict__ partial, T* __restrict__ dw,      \
                                    long long weights, int splits) {                          \
        gpuconv::conv2d_wgrad_reduce<T>(partial, dw, weights, splits);                        \
    }

// The warp-tiled variants (warp_gemm.cuh): the same partial sums, a split being whole output rows.
#define GPUCONV_WGRAD_WARP_KERNEL(NAME, T, ACC, THREADS, ...)                                 \
    extern "C" __global__ void __launch_bounds__(THREADS)                                     \
        NAME(const T* __restrict__ x, const T* __restrict__ dy, ACC* __restrict__ partial,    \
             GPUCONV_CONV_SHAPE_PARAMS, int splits, long long k_per_split) {                  \
        gpuconv::row_major_wgrad<T, __VA_ARGS__>(x, dy, partial, GPUCONV_CONV_SHAPE, splits,  \
                                                 k_per_split);                                \
    }
