// implicit_gemm.cuh -- the shared-memory tiled GEMM main loop of the three
// implicit-GEMM convolution kernels (conv2d_fprop.cu, conv2d_dgrad.cu,
// conv2d_wgrad.cu).
//
// Each pass is a GEMM  out[m, n] = sum_k A[m, k] * B[k, n]  whose operands are
// never materialised: the kernel files supply "loaders" that gather a
// BLOCK_K-deep slice of A and of B straight from the NCHW tensors into shared
// memory (zero where a tap falls into the padding or past a matrix edge). This
// file owns the part they share: the tile shapes and the loop that multiplies
// the staged slices into per-thread register tiles.
//
// The loader pastes this file in place of its `#include` line, like common.cuh.
#ifndef GPUCONV_IMPLICIT_GEMM_CUH
#define GPUCONV_IMPLICIT_GEMM_CUH

#include "common.cuh"

namespace gpuconv {

// A thread block computes a BLOCK_M x BLOCK_N tile of `out`, consuming the
// reduction BLOCK_K at a time. Thread t owns THREAD_M x THREAD_N outputs spread
// with strides THREADS_M and THREADS_N across the tile, so that neighbouring
// threads read neighbouring shared-memory words (no bank conflicts) and write
// neighbouring output pixels (coalesced).
template <int BM, int BN, int BK, int TM, int TN>
struct TileShape {
    static constexpr int BLOCK_M = BM, BLOCK_N = BN, BLOCK_K = BK;
    static constexpr int THREAD_M = TM, THREAD_N = TN;
    static constexpr int THREADS_M = BM / TM, THREADS_N = BN / TN;
    static constexpr int THREADS = THREADS_M * THREADS_N;
    static_assert(BM % TM == 0 && BN % TN == 0, "thread tiles must divide the block tile");
    static_assert(THREADS <= 256, "gpuconv kernels use at most 256 threads per block");
};

// The tiles the kernels are instantiated with are registry entries (gpuconv/cuda/registry.py,
// GemmTile), passed in by the generated export lines.

// The staged slices of A (BLOCK_K x BLOCK_M) and B (BLOCK_K x BLOCK_N). The
// extra column makes the column-wise stores of the loaders hit distinct banks.
template <typename Acc, class Tile>
struct SharedTiles {
    Acc a[Tile::BLOCK_K][Tile::BLOCK_M + 1];
    Acc b[Tile::BLOCK_K][Tile::BLOCK_N + 1];
};

// Where this thread's register tile lies in the block tile: acc[i][j] is the
// output at tile row owned_row(i) (an m, a column of the A slice) and tile
// column owned_col(j) (an n, a column of the B slice).
template <class Tile> __device__ __forceinline__ int owned_row(int i) {
    return (int)(threadIdx.x % Tile::THREADS_M) + i * Tile::THREADS_M;
}
template <class Tile> __device__ __forceinline__ int owned_col(int j) {
    return (int)(threadIdx.x / Tile::THREADS_M) + j * Tile::THREADS_N;
}

// acc[i][j] += sum over k in [k_begin, k_end) of A[m0 + owned_row(i), k] * B[k, n0 + owned_col(j)].
//
// load_a(smem.a, k0) / load_b(smem.b, k0) must fill the whole BLOCK_K-deep
// slice starting at reduction index k0 (zeros past k_end), using all threads.
// The order of the sum is fixed, so results are bitwise reproducible.
template <class Tile, typename Acc, class LoadA, class LoadB>
__device__ __forceinline__ void accumulate_tiles(const LoadA& load_a, const LoadB& load_b,
                                                 long long k_begin, long long k_end,
                                                 SharedTiles<Acc, Tile>& smem,
                                                 Acc (&acc)[Tile::THREAD_M][Tile::THREAD_N]) {
    for (long long k0 = k_begin; k0 < k_end; k0 += Tile::BLOCK_K) {
        load_a(smem.a, k0);
        load_b(smem.b, k0);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < Tile::BLOCK_K; ++kk) {
            Acc a[Tile::THREAD_M], b[Tile::THREAD_N];
#pragma unroll
            for (int i = 0; i < Tile::THREAD_M; ++i) a[i] = smem.a[kk][owned_row<Tile>(i)];
#pragma unroll
            for (int j = 0; j < Tile::THREAD_N; ++j) b[j] = smem.b[kk][owned_col<Tile>(j)];
#pragma unroll
            for (int i = 0; i < Tile::THREAD_M; ++i)
#pragma unroll
                for (int j = 0; j < Tile::THREAD_N; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();  // everyone is done with the slice before it is overwritten
    }
}

template <class Tile, typename Acc>
__device__ __forceinline__ void zero_fill(Acc (&acc)[Tile::THREAD_M][Tile::THREAD_N]) {
#pragma unroll
    for (int i = 0; i < Tile::THREAD_M; ++i)
#pragma unroll
        for (int j = 0; j < Tile::THREAD_N; ++j) acc[i][j] = Acc(0);
}

// Write the register tiles to an NCHW tensor whose GEMM rows are its pixels (image n, offset in
// a plane of `plane` elements) and whose GEMM columns are one group's channels:
//     out[n, channel_base + column, pixel] = acc   for columns below `columns`.
// Neighbouring threads hold neighbouring pixels, so the stores are coalesced. fprop writes y this
// way, dgrad dx.
template <class Tile, typename T, typename Acc>
__device__ __forceinline__ void store_tiles_nchw(T* __restrict__ out,
                                                 const Acc (&acc)[Tile::THREAD_M][Tile::THREAD_N],
                                                 long long m_first, long long pixels, long long plane,
                                                 int channels, int channel_base, int column_first,
                                                 int columns) {
#pragma unroll
    for (int i = 0; i < Tile::THREAD_M; ++i) {
        const long long m = m_first + owned_row<Tile>(i);
        if (m >= pixels) continue;
        const long long n = m / plane;
        T* out_pixel = out + (n * channels + channel_base) * plane + (m - n * plane);
#pragma unroll
        for (int j = 0; j < Tile::THREAD_N; ++j) {
            const int column = column_first + owned_col<Tile>(j);
            if (column < columns) out_pixel[column * plane] = from_acc<T>(acc[i][j]);
        }
    }
}

// How the loaders spread a BLOCK_K x WIDTH slice over the block's threads.
//
// By column: consecutive threads take consecutive columns and every thread keeps
// one column for the whole kernel (THREADS is a multiple of WIDTH), so a loader
// can precompute everything that depends on the column -- an output pixel, a
// filter tap -- once. Use it where neighbouring columns are neighbours in memory.
template <class Tile, int WIDTH> __device__ __forceinline__ int loader_column() {
    static_assert(Tile::THREADS % WIDTH == 0, "a thread must keep one column in every slice");
    return (int)(threadIdx.x % WIDTH);
}

// f(row) for each row of loader_column() this thread loads.
template <class Tile, int WIDTH, class F>
__device__ __forceinline__ void for_each_row_in_column(F&& f) {
    constexpr int ROWS_PER_PASS = Tile::THREADS / WIDTH;
#pragma unroll
    for (int first = 0; first < Tile::BLOCK_K; first += ROWS_PER_PASS) {
        const int row = first + (int)(threadIdx.x / WIDTH);
        if (row < Tile::BLOCK_K) f(row);
    }
}

// By row: consecutive threads take consecutive reduction indices. Use it where
// the operand is contiguous along the reduction. f(row, column) for each element.
template <class Tile, int WIDTH, class F>
__device__ __forceinline__ void for_each_by_row(F&& f) {
    constexpr int ELEMENTS = Tile::BLOCK_K * WIDTH;
#pragma unroll
    for (int first = 0; first < ELEMENTS; first += Tile::THREADS) {
        const int e = first + (int)threadIdx.x;
        if (e < ELEMENTS) f(e % Tile::BLOCK_K, e / Tile::BLOCK_K);
    }
}

}  // namespace gpuconv

#endif  // GPUCONV_IMPLICIT_GEMM_CUH
