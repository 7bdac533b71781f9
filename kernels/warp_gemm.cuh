// warp_gemm.cuh -- the warp-tiled, double-buffered SIMT implicit GEMMs of the fast fprop, stride-1
// dgrad (conv2d_fprop.cu, conv2d_dgrad.cu) and wgrad (conv2d_wgrad.cu) kernels.
//
// fprop and dgrad are the same "tap-major" convolution GEMM (TapMajorConv below)
//     out[m, col] = sum over (tap, ch) of A[m, (tap, ch)] * B[(tap, ch), col]
// over  m    an output pixel (n, p, q)           (N*P*Q rows)
//       col  an output channel of the group      (Co columns)
//       tap  a filter position (r, s), ch an input channel of the group (the reduction, taps*Ci)
// with  A = in[n, ch, input row and column of (p, q) under the tap]  (zero outside)
//       B = w[col * col_stride + ch * channel_stride + the tap's filter position].
// fprop is it with (x, w, y); dgrad is it with (dy, w transposed, dx) once per stride phase, each phase
// using only the taps that reach its pixels (see conv2d_dgrad.cu): no work on zero-inserted positions.
// The reduction runs tap by tap, BLOCK_K channels at a time, so one slice shares a tap: the pixel's bounds
// check and base address change once per tap (outside the main loop), and within a tap each thread's
// addresses only advance by a constant. No division in the main loop.
//
// Block tile BLOCK_M x BLOCK_N, warp tile WARP_M x WARP_N, thread tile 8 x 8 held as two 4-wide vectors in
// each direction (rows lane_m*4 + {0..3} and WARP_M/2 + lane_m*4 + {0..3}, the same for columns), so every
// shared-memory read is a 128-bit vector: 4 vector loads feed 64 FMAs per reduction step, and the lanes of
// a warp read 4 (A) and 8 (B) distinct vectors: no bank conflicts. The next slice is fetched into
// registers while the current one is multiplied (two shared buffers, one barrier per slice).
//
// The loader pastes this file in place of its `#include` line, like common.cuh.
#ifndef GPUCONV_WARP_GEMM_CUH
#define GPUCONV_WARP_GEMM_CUH

#include "common.cuh"

namespace gpuconv {

template <int BM, int BN, int BK, int WM, int WN>
struct WarpTile {
    static constexpr int BLOCK_M = BM, BLOCK_N = BN, BLOCK_K = BK, WARP_M = WM, WARP_N = WN;
    static constexpr int THREAD_M = 8, THREAD_N = 8;
    static constexpr int LANES_M = WM / 8, LANES_N = WN / 8;
    static constexpr int WARPS_N = BN / WN;
    static constexpr int THREADS = (BM / WM) * (BN / WN) * 32;
    // Each thread gathers one A column (a pixel) and one B column (an output channel), A_ROWS and B_ROWS
    // rows of each slice, ROW_STEP apart.
    static constexpr int A_ROWS = BK * BM / THREADS, B_ROWS = BK * BN / THREADS;
    static_assert(LANES_M * LANES_N == 32, "a warp tile holds 32 lanes of 8x8");
    static_assert(BM % WM == 0 && BN % WN == 0 && WM % 8 == 0 && WN % 8 == 0, "tiles must nest");
    static_assert(THREADS % BM == 0 && THREADS % BN == 0 && A_ROWS >= 1 && B_ROWS >= 1,
                  "every thread gathers whole rows of one column");
    static_assert(THREADS <= 256, "gpuconv kernels use at most 256 threads per block");
};

// 128-bit shared-memory vectors (CUDA's float4/double2 without its headers: NVRTC on CI has none).
struct __align__(16) SharedFloat4 { float x, y, z, w; };
struct __align__(16) SharedDouble2 { double x, y; };

__device__ __forceinline__ void load_vector4(const float* p, float (&out)[8], int at) {
    const SharedFloat4 v = *reinterpret_cast<const SharedFloat4*>(p);
    out[at] = v.x; out[at + 1] = v.y; out[at + 2] = v.z; out[at + 3] = v.w;
}

__device__ __forceinline__ void load_vector4(const double* p, double (&out)[8], int at) {
    const SharedDouble2 lo = *reinterpret_cast<const SharedDouble2*>(p);
    const SharedDouble2 hi = *reinterpret_cast<const SharedDouble2*>(p + 2);
    out[at] = lo.x; out[at + 1] = lo.y; out[at + 2] = hi.x; out[at + 3] = hi.y;
}

// An optimisation barrier: after it the compiler knows nothing of v's value (on the CPU emulator: nothing).
__device__ __forceinline__ void keep_in_register(int& v) {
#ifdef __CUDA_ARCH__
    asm volatile("" : "+r"(v));
#else
    (void)v;
#endif
}

template <typename P>
__device__ __forceinline__ void keep_in_register(const P*& pointer) {
#ifdef __CUDA_ARCH__
    asm volatile("" : "+l"(pointer));
#else
    (void)pointer;
#endif
}

// threadIdx.x and blockIdx read afresh: on a GPU not the values read at the start, which would otherwise stay
// in registers from there to here (the epilogues use them: nothing to keep live through the main loop).
__device__ __forceinline__ int fresh_thread_index() {
#ifdef __CUDA_ARCH__
    int v;
    asm volatile("mov.u32 %0, %%tid.x;" : "=r"(v));
    return v;
#else
    return (int)threadIdx.x;
#endif
}

__device__ __forceinline__ void fresh_block_index(int& x, int& y, int& z) {
#ifdef __CUDA_ARCH__
    asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(x));
    asm volatile("mov.u32 %0, %%ctaid.y;" : "=r"(y));
    asm volatile("mov.u32 %0, %%ctaid.z;" : "=r"(z));
#else
    x = (int)blockIdx.x, y = (int)blockIdx.y, z = (int)blockIdx.z;
#endif
}

// A load through the read-only data path (LDG.CONSTANT), for the wgrad kernel's gathers.
__device__ __forceinline__ float load_readonly(const float* p) { return __ldg(p); }
__device__ __forceinline__ double load_readonly(const double* p) { return __ldg(p); }
__device__ __forceinline__ gpuconv_half load_readonly(const gpuconv_half* p) {
    gpuconv_half h;
    h.bits = __ldg(reinterpret_cast<const unsigned short*>(p));
    return h;
}
__device__ __forceinline__ gpuconv_bf16 load_readonly(const gpuconv_bf16* p) {
    gpuconv_bf16 h;
    h.bits = __ldg(reinterpret_cast<const unsigned short*>(p));
    return h;
}

// One tap-major convolution GEMM, as the kernels' wrappers describe it. Its rows are the pixels (p, q) of
// an N x P x Q grid; pixel (p, q) reads input row  p*in_stride_h + in_origin_h + i*in_step_h  under tap row
// i (of taps_h) and writes output pixel  (out_row0 + p*out_row_step, out_col0 + q*out_col_step)  of an
// out_H x out_W plane; tap (i, j) uses filter position (r_first + i*r_step, s_first + j*s_step) of an R x S
// filter. fprop: the identity of all this. The strided dgrad: one such GEMM per stride phase.
struct TapMajorConv {
    int N;                          // images
    int in_channels, Ci, H, W;      // input: channels in all, of this GEMM's group, plane
    int out_channels, Co, P, Q;     // output: channels in all, columns of the GEMM per group, pixel grid
    int out_H, out_W, out_row0, out_row_step, out_col0, out_col_step;
    int in_stride_h, in_stride_w, in_origin_h, in_origin_w, in_step_h, in_step_w, taps_h, taps_w;
    int R, S, r_first, r_step, s_first, s_step;
    int col_stride, channel_stride; // B's strides (in elements of w) per output column and per input channel
};
template <typename Acc, class Tile>
struct __align__(16) WarpSharedTiles {
    Acc a[2][Tile::BLOCK_K][Tile::BLOCK_M];
    Acc b[2][Tile::BLOCK_K][Tile::BLOCK_N];
};

// Where this thread's 8x8 outputs lie in the block tile: rows row0 + {0..3} and row0 + WARP_M/2 + {0..3},
// columns col0 + {0..3} and col0 + WARP_N/2 + {0..3}.
template <class Tile> __device__ __forceinline__ int thread_row0(int tid = (int)threadIdx.x) {
    const int warp = tid / 32, lane = tid % 32;
    return (warp / Tile::WARPS_N) * Tile::WARP_M + (lane / Tile::LANES_N) * 4;
}
template <class Tile> __device__ __forceinline__ int thread_col0(int tid = (int)threadIdx.x) {
    const int warp = tid / 32, lane = tid % 32;
    return (warp % Tile::WARPS_N) * Tile::WARP_N + (lane % Tile::LANES_N) * 4;
}
// Tile row (column) of this thread's i-th output row (column), i in 0..7.
template <class Tile> __device__ __forceinline__ int owned_row8(int row0, int i) {
    return row0 + (i < 4 ? i : Tile::WARP_M / 2 + i - 4);
}
template <class Tile> __device__ __forceinline__ int owned_col8(int col0, int j) {
    return col0 + (j < 4 ? j : Tile::WARP_N / 2 + j - 4);
}

// Store a gathered slice into shared buffer `buffer`: this thread's A column and B column, its rows.
template <class Tile, typename Acc>
__device__ __forceinline__ void stage_slice(WarpSharedTiles<Acc, Tile>& smem, int buffer, int a_row, int a_column,
                                            const Acc (&a_next)[Tile::A_ROWS], int b_row, int b_column,
                                            const Acc (&b_next)[Tile::B_ROWS]) {
#pragma unroll
    for (int i = 0; i < Tile::A_ROWS; ++i)
        smem.a[buffer][a_row + i * (Tile::THREADS / Tile::BLOCK_M)][a_column] = a_next[i];
#pragma unroll
    for (int i = 0; i < Tile::B_ROWS; ++i)
        smem.b[buffer][b_row + i * (Tile::THREADS / Tile::BLOCK_N)][b_column] = b_next[i];
}

template <typename Acc>
__device__ __forceinline__ void zero_fill8(Acc (&acc)[8][8]) {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = Acc(0);
}

// acc += the staged slice in `buffer`: per reduction step 4 vector loads and 64 FMAs, in a fixed order.
template <class Tile, typename Acc>
__device__ __forceinline__ void multiply_slice(const WarpSharedTiles<Acc, Tile>& smem, int buffer, int row0,
                                               int col0, Acc (&acc)[8][8]) {
#pragma unroll
    for (int k = 0; k < Tile::BLOCK_K; ++k) {
        Acc a[8], b[8];
        load_vector4(&smem.a[buffer][k][row0], a, 0);
        load_vector4(&smem.a[buffer][k][row0 + Tile::WARP_M / 2], a, 4);
        load_vector4(&smem.b[buffer][k][col0], b, 0);
        load_vector4(&smem.b[buffer][k][col0 + Tile::WARP_N / 2], b, 4);
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
    }
}

// Store a thread's 8x8 outputs, out[n, group*Co + col, p, q]; returns, with FLAG_NAN, whether one was NaN
// (the flag in *nan_seen, shared memory: a register for it would cost one of the kernel's). FLAG_NAN (dgrad) works
// the indices out afresh from the block and thread index and the output plane -- its pixel grid is a stride
// phase of it -- rather than keep them from the prologue through the main loop: that pays for the NaN
// epilogue (conv2d_dgrad.cu) in registers. fprop keeps its own (the fewer registers for it).
template <class Tile, bool FLAG_NAN, typename T, typename Acc>
__device__ __forceinline__ bool store_tile(T* __restrict__ out, const Acc (&acc)[8][8], const TapMajorConv& cv,
                                           long long m_first, int col_first, int group, int row0, int col0,
                                           volatile Acc* nan_seen) {
    TapMajorConv c = cv;
    if (FLAG_NAN) {
        int block_m, block_n;
        fresh_block_index(block_m, block_n, group);
        int* fields[] = {&c.N, &c.out_channels, &c.out_H, &c.out_W, &c.out_row0, &c.out_row_step, &c.out_col0,
                         &c.out_col_step};
#pragma unroll
        for (int f = 0; f < (int)(sizeof(fields) / sizeof(fields[0])); ++f) keep_in_register(*fields[f]);
        c.P = (c.out_H - c.out_row0 + c.out_row_step - 1) / c.out_row_step;  // the pixel grid, from the output
        c.Q = (c.out_W - c.out_col0 + c.out_col_step - 1) / c.out_col_step;
        m_first = (long long)block_m * Tile::BLOCK_M;
        const int tid = fresh_thread_index();
        row0 = thread_row0<Tile>(tid), col0 = thread_col0<Tile>(tid), col_first = block_n * Tile::BLOCK_N;
    }
    const long long PQ = (long long)c.P * c.Q, pixels = c.N * PQ;
    const long long out_plane = (long long)c.out_H * c.out_W;
    if (FLAG_NAN) *nan_seen = Acc(0);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const long long mo = m_first + owned_row8<Tile>(row0, i);
        if (mo >= pixels) continue;
        const long long n = mo / PQ;
        const int pq_out = (int)(mo - n * PQ);
        T* out_pixel = out + (n * c.out_channels + (long long)group * c.Co) * out_plane +
                       (long long)(c.out_row0 + (pq_out / c.Q) * c.out_row_step) * c.out_W +
                       c.out_col0 + (pq_out % c.Q) * c.out_col_step;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int col = col_first + owned_col8<Tile>(col0, j);
            if (col < c.Co) {
                out_pixel[(long long)col * out_plane] = from_acc<T>(acc[i][j]);
                if (FLAG_NAN && is_nan(acc[i][j])) *nan_seen = Acc(1);
            }
        }
    }
    return FLAG_NAN && *nan_seen != Acc(0);
}

// Returns, with FLAG_NAN (dgrad: conv2d_dgrad.cu), whether this thread stored a NaN; else false.
template <typename T, class Tile, bool FLAG_NAN = false>
__device__ __forceinline__ bool tap_major_conv(const T* __restrict__ in, const T* __restrict__ w,
                                               T* __restrict__ out, const TapMajorConv cv) {
    typedef typename AccT<T>::type Acc;
    constexpr int BM = Tile::BLOCK_M, BN = Tile::BLOCK_N, BK = Tile::BLOCK_K;
    __shared__ WarpSharedTiles<Acc, Tile> smem;

    const int tid = (int)threadIdx.x;
    const int group = (int)blockIdx.z;
    const long long HW = (long long)cv.H * cv.W;
    const long long PQ = (long long)cv.P * cv.Q;
    const long long pixels = cv.N * PQ;
    const long long m_first = (long long)blockIdx.x * BM;
    const int col_first = (int)blockIdx.y * BN;
    const int taps = cv.taps_h * cv.taps_w;

    // A: this thread's pixel (the same in every slice) and its rows.
    const int a_column = tid % BM, a_row = tid / BM;
    const bool pixel_valid = m_first + a_column < pixels;
    const long long m = pixel_valid ? m_first + a_column : 0;
    const long long image = m / PQ;
    const int pq = (int)(m - image * PQ);
    const int h_origin = (pq / cv.Q) * cv.in_stride_h + cv.in_origin_h;
    const int w_origin = (pq % cv.Q) * cv.in_stride_w + cv.in_origin_w;
    const T* in_image = in + (image * cv.in_channels + (long long)group * cv.Ci) * HW;

    // B: this thread's output column and its rows.
    const int b_column = tid % BN, b_row = tid / BN;
    const bool column_valid = col_first + b_column < cv.Co;
    const T* w_column = w + (long long)group * cv.Co * cv.Ci * cv.R * cv.S +
                        (long long)(column_valid ? col_first + b_column : 0) * cv.col_stride;

    // Per-row offsets from a slice's first channel, constant for the whole kernel; 32-bit, so that an
    // address is one multiply-add (the planner runs these variants only where BLOCK_K planes fit an int).
    int a_offset[Tile::A_ROWS], b_offset[Tile::B_ROWS];
#pragma unroll
    for (int i = 0; i < Tile::A_ROWS; ++i) a_offset[i] = (a_row + i * (Tile::THREADS / BM)) * (int)HW;
#pragma unroll
    for (int i = 0; i < Tile::B_ROWS; ++i) b_offset[i] = (b_row + i * (Tile::THREADS / BN)) * cv.channel_stride;
    // Opaque to the compiler from here on: kept in registers rather than recomputed from the kernel's
    // parameters before every load of the main loop (which ptxas otherwise prefers).
#pragma unroll
    for (int i = 0; i < Tile::A_ROWS; ++i) keep_in_register(a_offset[i]);
#pragma unroll
    for (int i = 0; i < Tile::B_ROWS; ++i) keep_in_register(b_offset[i]);
    keep_in_register(in_image);
    keep_in_register(w_column);

    // Where one tap's slices start: the input pixel under filter tap (r, s) (valid: inside the input) and
    // the tap's weights of this thread's column.
    // Offsets are 32-bit, from in_image and w_column (the planner runs these variants only where an image
    // and a group's weights fit an int): one slice's addresses then cost an int add and a widening each.
    struct Tap {
        bool valid;
        int a;  // in_image offset of the tap's pixel in channel 0
        int b;  // w_column offset of the tap in channel 0
    };
    auto tap_at = [&](int tap) {
        const int i = tap / cv.taps_w, j = tap - i * cv.taps_w;  // once per tap, outside the slice loop
        const int h = h_origin + i * cv.in_step_h, wi = w_origin + j * cv.in_step_w;
        const bool valid = pixel_valid && h >= 0 && h < cv.H && wi >= 0 && wi < cv.W;
        return Tap{valid, valid ? h * cv.W + wi : 0, (cv.r_first + i * cv.r_step) * cv.S + cv.s_first + j * cv.s_step};
    };

    Acc a_next[Tile::A_ROWS], b_next[Tile::B_ROWS];
    // Gather one slice: rows [0, a_rows) of A and [0, b_rows) of B hold data (none outside the input or past
    // the last column, fewer in the last slice of a tap when BLOCK_K does not divide the channels).
    // Plain loads: after keep_in_register ptxas emits generic LD.E for them (not LDG.CONSTANT); loading
    // through __ldg instead costs three points of main-loop FFMA share (its address arithmetic widens
    // differently), a trade to be settled by timing on a GPU.
    auto fetch = [&](int a_slice, int b_slice, int a_rows, int b_rows) {
#pragma unroll
        for (int i = 0; i < Tile::A_ROWS; ++i)
            a_next[i] = a_row + i * (Tile::THREADS / BM) < a_rows ? to_acc(in_image[a_slice + a_offset[i]]) : Acc(0);
#pragma unroll
        for (int i = 0; i < Tile::B_ROWS; ++i)
            b_next[i] = b_row + i * (Tile::THREADS / BN) < b_rows ? to_acc(w_column[b_slice + b_offset[i]]) : Acc(0);
    };
    auto stage = [&](int buffer) { stage_slice<Tile>(smem, buffer, a_row, a_column, a_next, b_row, b_column, b_next); };

    const int row0 = thread_row0<Tile>(), col0 = thread_col0<Tile>();

    Acc acc[8][8];
    zero_fill8(acc);

    const int a_step = BK * (int)HW, b_step = BK * cv.channel_stride;
    Tap current = taps > 0 ? tap_at(0) : Tap{false, 0, 0};
    if (taps > 0) {  // a stride phase that no tap reaches has zeros for its outputs
        fetch(current.a, current.b, current.valid ? cv.Ci : 0, column_valid ? cv.Ci : 0);
        stage(0);
    }
    __syncthreads();
    int buffer = 0;
    // Taps outside, channels inside: the inner loop -- the main loop -- never changes tap. While it
    // multiplies a slice it fetches the next one: the next BLOCK_K channels, or the next tap's first.
    for (int tap = 0; tap < taps; ++tap) {
        const bool last_tap = tap + 1 == taps;
        const Tap next = tap_at(last_tap ? tap : tap + 1);
        int a_ahead = current.a + a_step, b_ahead = current.b + b_step;
        for (int channel = 0; channel < cv.Ci; channel += BK) {
            const bool within_tap = channel + BK < cv.Ci;
            if (within_tap || !last_tap) {
                const int rows_left = within_tap ? cv.Ci - channel - BK : cv.Ci;
                fetch(within_tap ? a_ahead : next.a, within_tap ? b_ahead : next.b,
                      (within_tap ? current.valid : next.valid) ? rows_left : 0, column_valid ? rows_left : 0);
            }
            a_ahead += a_step;
            b_ahead += b_step;
            multiply_slice<Tile>(smem, buffer, row0, col0, acc);
            // The other buffer: everyone finished reading it before the last barrier.
            if (within_tap || !last_tap) stage(buffer ^ 1);
            __syncthreads();
            buffer ^= 1;
        }
        current = next;
    }

    // The NaN flag lives in this thread's word of the shared tiles: every thread is past the last barrier.
    return store_tile<Tile, FLAG_NAN>(out, acc, cv, m_first, col_first, group, row0, col0,
                                      &smem.a[0][tid / BM][tid % BM]);
}

// The weight gradient of one split of the output pixels, warp-tiled (conv2d_wgrad.cu):
//     partial[split, g*Kg + k, j] = sum over the split's pixels i of dy[n, g*Kg + k, p, q] * X[i, j]
// with rows k (an output channel), columns j = (c, r, s) and X[i, j] = x[n, g*Cg + c, p*stride_h - pad_top +
// r*dil_h, q*stride_w - pad_left + s*dil_w] (zero outside). The reduction walks output rows (n, p) and, in
// the main loop, BLOCK_K consecutive q of one row at a time: a slice shares n and p, so each thread's
// gather needs no division -- its input row is fixed for the row, its column offset advances with q. A
// split is a range of whole output rows (k_per_split is a multiple of Q).
template <typename T, class Tile>
__device__ __forceinline__ void row_major_wgrad(const T* __restrict__ x, const T* __restrict__ dy,
                                                typename AccT<T>::type* __restrict__ partial, const ConvShape sh,
                                                int splits, long long k_per_split) {
    typedef typename AccT<T>::type Acc;
    constexpr int BM = Tile::BLOCK_M, BN = Tile::BLOCK_N, BK = Tile::BLOCK_K;
    __shared__ WarpSharedTiles<Acc, Tile> smem;

    const int tid = (int)threadIdx.x;
    const int group = (int)blockIdx.z / splits, split = (int)blockIdx.z % splits;
    const int Cg = sh.channels_per_group(), Kg = sh.filters_per_group();
    const int taps = sh.R * sh.S, columns = Cg * taps;
    const long long HW = (long long)sh.H * sh.W, PQ = (long long)sh.P * sh.Q;
    const int k_first = (int)blockIdx.x * BM, j_first = (int)blockIdx.y * BN;
    const long long rows_per_split = k_per_split / sh.Q;
    const long long row_begin = split * rows_per_split;
    const long long row_end = min_of((long long)sh.N * sh.P, row_begin + rows_per_split);

    // A: dy of this thread's output channel, contiguous along q.
    const int a_column = tid % BM, a_row = tid / BM;
    const bool k_valid = k_first + a_column < Kg;
    const T* dy_channel = dy + ((long long)group * Kg + (k_valid ? k_first + a_column : 0)) * PQ;
    // B: this thread's column j = (c, r, s) of the input, the same in every slice.
    const int b_column = tid % BN, b_row = tid / BN;
    const bool j_valid = j_first + b_column < columns;
    const int j = j_valid ? j_first + b_column : 0;
    const int c = j / taps, tap = j - c * taps;
    const int h_offset = (tap / sh.S) * sh.dilation_h - sh.pad_top;
    const int w_offset = (tap % sh.S) * sh.dilation_w - sh.pad_left;
    const T* x_channel = x + ((long long)group * Cg + c) * HW;

    // Per-row offsets within a slice: q advances by one per row.
    int b_w_step[Tile::B_ROWS];
#pragma unroll
    for (int i = 0; i < Tile::B_ROWS; ++i) b_w_step[i] = (b_row + i * (Tile::THREADS / BN)) * sh.stride_w;
#pragma unroll
    for (int i = 0; i < Tile::B_ROWS; ++i) keep_in_register(b_w_step[i]);

    // One output row (n, p): where its slices read.
    struct Row {
        const T* a;     // dy[n, k, p, 0]
        const T* b;     // x[n, c, h, 0], h = p*stride_h + h_offset
        bool b_valid;   // h inside the input and j a real column
    };
    auto row_at = [&](long long row) {
        const long long n = row / sh.P;  // once per output row, outside the main loop
        const int p = (int)(row - n * sh.P);
        const int h = p * sh.stride_h + h_offset;
        const bool valid = j_valid && h >= 0 && h < sh.H;
        return Row{dy_channel + n * sh.K * PQ + (long long)p * sh.Q,
                   x_channel + n * sh.C * HW + (valid ? (long long)h * sh.W : 0), valid};
    };

    Acc a_next[Tile::A_ROWS], b_next[Tile::B_ROWS];
    // Gather the slice of pixels q0 .. q0 + BLOCK_K - 1 of a row.
    // The row's fields by value: a reference to one of two Rows would keep both in local memory.
    auto fetch = [&](const T* row_a, const T* row_b, bool row_b_valid, int q0) {
        const int q_rows = sh.Q - q0;  // pixels of this slice inside the row
        const int w0 = q0 * sh.stride_w + w_offset;
#pragma unroll
        for (int i = 0; i < Tile::A_ROWS; ++i) {
            const int q = a_row + i * (Tile::THREADS / BM);
            a_next[i] = k_valid && q < q_rows ? to_acc(load_readonly(row_a + q0 + q)) : Acc(0);
        }
#pragma unroll
        for (int i = 0; i < Tile::B_ROWS; ++i) {
            const int w = w0 + b_w_step[i];
            const bool ok = row_b_valid && b_row + i * (Tile::THREADS / BN) < q_rows && w >= 0 && w < sh.W;
            b_next[i] = ok ? to_acc(load_readonly(row_b + w)) : Acc(0);
        }
    };
    auto stage = [&](int buffer) { stage_slice<Tile>(smem, buffer, a_row, a_column, a_next, b_row, b_column, b_next); };

    const int row0 = thread_row0<Tile>(), col0 = thread_col0<Tile>();
    Acc acc[8][8];
    zero_fill8(acc);

    if (row_begin < row_end) {  // every split holds rows (the planner leaves none empty)
        Row current = row_at(row_begin);
        fetch(current.a, current.b, current.b_valid, 0);
        stage(0);
        __syncthreads();
        int buffer = 0;
        // Output rows outside, q inside: while the main loop multiplies a slice it fetches the next one,
        // the next BLOCK_K pixels of the row or the next row's first.
        for (long long row = row_begin; row < row_end; ++row) {
            const bool last_row = row + 1 == row_end;
            const Row next = row_at(last_row ? row : row + 1);
            for (int q0 = 0; q0 < sh.Q; q0 += BK) {
                const bool within_row = q0 + BK < sh.Q;
                if (within_row || !last_row)
                    fetch(within_row ? current.a : next.a, within_row ? current.b : next.b,
                          within_row ? current.b_valid : next.b_valid, within_row ? q0 + BK : 0);
                multiply_slice<Tile>(smem, buffer, row0, col0, acc);
                if (within_row || !last_row) stage(buffer ^ 1);
                __syncthreads();
                buffer ^= 1;
            }
            current = next;
        }
    }

    // partial[split, g*Kg + k, j]
    Acc* partial_group = partial + ((long long)split * sh.K + (long long)group * Kg) * columns;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int k = k_first + owned_row8<Tile>(row0, i);
        if (k >= Kg) continue;
#pragma unroll
        for (int jj = 0; jj < 8; ++jj) {
            const int jo = j_first + owned_col8<Tile>(col0, jj);
            if (jo < columns) partial_group[(long long)k * columns + jo] = acc[i][jj];
        }
    }
}

}  // namespace gpuconv

#endif  // GPUCONV_WARP_GEMM_CUH
