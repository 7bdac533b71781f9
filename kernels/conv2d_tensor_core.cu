// conv2d_tensor_core.cu -- forward convolution as an implicit GEMM on the tensor cores (mma.sync, sm_80+):
// float16 and bfloat16 storage with float32 accumulation, and TF32 for float32. dgrad runs on it too, one
// stride phase at a time: dx = conv2d(dy, w transposed per group and flipped) over the taps reaching a phase.
// wgrad has its own main loop at the end of this file: dw = dy^T x_col on pixel-major packed x and dy,
// fragments by ldmatrix.trans (halves) or 128-bit shared loads of a permuted tile (TF32).
//
// The design is CUTLASS's analytic NHWC fprop (cutlass/conv/threadblock/conv2d_fprop_activation_tile_access_
// iterator_analytic.h and the sm80 multistage mainloop), on a pre-packed copy of the operands:
//
//   1. pack kernels (this file, grid-stride) copy x (N, C, H, W) into NHWC with each group's channels padded
//      with zeros to Cgp, a multiple of 16 bytes' worth of elements (8 halves, 4 floats): xp (N, H, W, G*Cgp);
//      and w (K, Cg, R, S) into wp (K, R, S, Cgp). Every 16 bytes of either then hold 8 (4) channels of one
//      pixel and one tap, so the main loop moves its operands with 16-byte cp.async only. float32 is packed
//      for the TF32 kernel alone, and the pack rounds it to TF32 there (cvt.rna: round to nearest, ties away
//      from zero), once per element -- cp.async writes shared memory without passing through registers, so
//      the main loop could not round, and the mma would otherwise truncate the 13 low mantissa bits.
//   2. the main kernel: for each group g the GEMM
//          y[m, k] = sum_j A[m, j] * B[j, k]
//      over m = (n, p, q) an output pixel (N*P*Q rows), k an output channel of the group (Kg columns) and
//      j = (r, s, c) a tap and a padded input channel (R*S*Cgp, c fastest), with
//          A[m, j] = xp[n, p*stride_h - pad_top + r*dilation_h, q*stride_w - pad_left + s*dilation_w, g*Cgp + c]
//                    (zero in the padding: cp.async's zero fill), B[j, k] = wp[g*Kg + k, r, s, c]
//      (wp is a Kg x R*S*Cgp matrix, contiguous along j).
//
// Main loop: a block computes BLOCK_M x BLOCK_N outputs with 4 warps of WARP_M x WARP_N (64 x 64), BLOCK_K
// reduction elements (64 bytes: 32 halves or 16 floats) at a time through a STAGES-deep cp.async pipeline
// (CUTLASS's multistage: STAGES - 1 slices in flight while one is multiplied, one barrier per slice).
// Shared memory holds each slice as rows of 64 bytes (4 chunks of 16) -- A's rows are pixels, B's filters,
// both contiguous along the reduction ("TN": the row.col layout mma.sync takes) -- with chunk c of row r
// stored at c ^ ((r / 2) % 4): the 8 rows one ldmatrix matrix reads then cover all 32 banks, as do the 8
// chunks a quarter-warp of cp.async writes. Fragments come from ldmatrix.x4 (no .trans: both operands are
// K-contiguous); per 16 (halves) or 8 (TF32) reduction steps a warp loads 4 A and 4 B ldmatrix.x4 and
// issues 4 x 8 mma.sync m16n8k16 (m16n8k8 for TF32): 4 mma per ldmatrix.
//
// dgrad: at stride 1, dx[n, c, h, w] = sum over k, r, s of dy[n, k, h + pad_top - r*dh, w + pad_left - s*dw] *
// w[k, c, r, s] is the fprop of dy (C' = K channels, H' x W' = P x Q) with the filters w'[c, k, r', s'] =
// w[k, c, R-1-r', S-1-s'] (K' = C filters), stride 1, the same dilation and padding (R-1)*dh - pad_top
// (maybe negative) and (S-1)*dw - pad_left, whose output is H x W: the pack kernels and the main kernel
// take that fprop's shape (pack_weight_flipped packs w'). At a larger stride each stride phase of dx (the
// pixels h = phase + t*stride) is such an fprop of dy with the taps that reach it (every stride/gcd-th, at
// dilation d/gcd: gpuconv._shapes.ConvGeometry.dgrad_phases); the host copies those taps of w out, and the
// phase's output into its pixels of dx.
//
// Launch: pack kernels on grid-stride grids, then grid (ceil(N*P*Q / BLOCK_M), ceil(Kg / BLOCK_N), groups),
// Tile::THREADS threads, static shared memory STAGES * (BLOCK_M + BLOCK_N) * 64 bytes (48 KiB at 3 stages:
// the static limit; the emulator has no dynamic shared memory).
#include "common.cuh"
#include "warp_primitives.cuh"

namespace gpuconv {

// ------------------------------------------------------------------------------------ element types

// What differs between the storage types: the reduction depth of one mma, and the mma itself. A and B
// fragments are 16-bit pairs (f16, bf16) or 32-bit TF32 values; ldmatrix loads both the same way.
template <typename T> struct TensorOpMath;

template <> struct TensorOpMath<gpuconv_half> {
    static constexpr int MMA_K = 16;
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
        mma_m16n8k16_f16(d, a, b, d);
    }
    static __device__ __forceinline__ gpuconv_half pack(gpuconv_half v) { return v; }
};

template <> struct TensorOpMath<gpuconv_bf16> {
    static constexpr int MMA_K = 16;
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
        mma_m16n8k16_bf16(d, a, b, d);
    }
    static __device__ __forceinline__ gpuconv_bf16 pack(gpuconv_bf16 v) { return v; }
};

template <> struct TensorOpMath<float> {
    static constexpr int MMA_K = 8;
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
        mma_m16n8k8_tf32(d, a, b, d);
    }
    static __device__ __forceinline__ float pack(float v) { return to_tf32(v); }  // see the top of this file
};

// Elements per 16-byte chunk, and the padded channels per group: Cg rounded up to whole chunks.
template <typename T> struct ChunkOf {
    static constexpr int ELEMENTS = 16 / (int)sizeof(T);
};
template <typename T> __device__ __forceinline__ int padded_channels(int channels_per_group) {
    return (channels_per_group + ChunkOf<T>::ELEMENTS - 1) / ChunkOf<T>::ELEMENTS * ChunkOf<T>::ELEMENTS;
}

// ------------------------------------------------------------------------------------------ pack kernels

// xp[n, h, w, g*Cgp + c] = c < Cg ? x[n, g*Cg + c, h, w] : 0, over every element of xp.
template <typename T>
__device__ __forceinline__ void pack_input_nhwc(const T* __restrict__ x, T* __restrict__ xp, const ConvShape shape) {
    const int Cg = shape.channels_per_group(), Cgp = padded_channels<T>(Cg);
    const long long row = (long long)shape.groups * Cgp;  // elements per pixel of xp
    const long long total = (long long)shape.N * shape.H * shape.W * row;
    const long long HW = (long long)shape.H * shape.W;
    for (long long i = first_index(); i < total; i += index_stride()) {
        const long long pixel = i / row;          // n*H*W + h*W + w
        const int channel = (int)(i - pixel * row);
        const int group = channel / Cgp, c = channel - group * Cgp;
        T value = zero_value<T>();
        if (c < Cg) {
            const long long n = pixel / HW, hw = pixel - n * HW;
            value = TensorOpMath<T>::pack(x[(n * shape.C + (long long)group * Cg + c) * HW + hw]);
        }
        xp[i] = value;
    }
}

// wp[k, r, s, c] = c < Cg ? w[k, c, r, s] : 0, over every element of wp.
template <typename T>
__device__ __forceinline__ void pack_weight_krsc(const T* __restrict__ w, T* __restrict__ wp, const ConvShape shape) {
    const int Cg = shape.channels_per_group(), Cgp = padded_channels<T>(Cg);
    const int taps = shape.R * shape.S;
    const long long total = (long long)shape.K * taps * Cgp;
    for (long long i = first_index(); i < total; i += index_stride()) {
        const long long filter_tap = i / Cgp;     // k*R*S + r*S + s
        const int c = (int)(i - filter_tap * Cgp);
        const long long k = filter_tap / taps;
        const int tap = (int)(filter_tap - k * taps);
        T value = zero_value<T>();
        if (c < Cg) value = TensorOpMath<T>::pack(w[(k * Cg + c) * taps + tap]);
        wp[i] = value;
    }
}

// The weights of dgrad (a phase's taps) run as this fprop (see the top): over the shape of that fprop (C' = K,
// K' = C, Cg' = Kg, Kg' = Cg), wp[c', r, s, k] = k < Kg ? w[g*Kg + k, c' - g*Cg, R-1-r, S-1-s] : 0 with
// g = c' / Cg -- each group's weight transposed and both taps flipped.
template <typename T>
__device__ __forceinline__ void pack_weight_flipped(const T* __restrict__ w, T* __restrict__ wp,
                                                    const ConvShape as_fprop) {
    const int Kg = as_fprop.channels_per_group(), Cg = as_fprop.filters_per_group(), Kgp = padded_channels<T>(Kg);
    const int taps = as_fprop.R * as_fprop.S;
    const long long total = (long long)as_fprop.K * taps * Kgp;
    for (long long i = first_index(); i < total; i += index_stride()) {
        const long long filter_tap = i / Kgp;     // c'*R*S + r*S + s
        const int k = (int)(i - filter_tap * Kgp);
        const int c = (int)(filter_tap / taps), tap = (int)(filter_tap - (long long)c * taps);
        const int group = c / Cg;
        const long long filter = (long long)group * Kg + k, channel = c - group * Cg;
        T value = zero_value<T>();
        if (k < Kg) value = TensorOpMath<T>::pack(w[(filter * Cg + channel) * taps + taps - 1 - tap]);
        wp[i] = value;
    }
}

// ----------------------------------------------------------------------------------------- the main loop

// A block tile of BM x BN outputs, BK reduction elements per pipeline stage, warps of WM x WN outputs.
// NAN_RESUM (dgrad): outputs stored as NaN are summed again over the taps inside the input (see
// resum_nan_outputs). The registry's TensorOpTile (gpuconv/cuda/registry.py) generates it.
template <int BM, int BN, int BK, int WM, int WN, int STAGES_, bool NAN_RESUM_>
struct TensorOpTile {
    static constexpr int BLOCK_M = BM, BLOCK_N = BN, BLOCK_K = BK, WARP_M = WM, WARP_N = WN, STAGES = STAGES_;
    static constexpr bool NAN_RESUM = NAN_RESUM_;
    static constexpr int WARPS_M = BM / WM, WARPS_N = BN / WN, WARPS = WARPS_M * WARPS_N, THREADS = 32 * WARPS;
    static constexpr int M_TILES = WM / 16, N_TILES = WN / 8;  // mma tiles per warp
    static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 16 == 0, "warp tiles of 16 x 16 units");
    static_assert(STAGES >= 2, "a pipeline has at least two stages");
};

// 16 bytes: the unit of cp.async, ldmatrix rows and the swizzle.
struct alignas(16) Chunk16 {
    unsigned int word[4];
};

// Shared memory: STAGES slices of A (BLOCK_M rows) and B (BLOCK_N rows) of 4 chunks (64 bytes) each.
template <typename T, class Tile>
struct TensorOpShared {
    static constexpr int ROW_CHUNKS = Tile::BLOCK_K * (int)sizeof(T) / 16;
    static_assert(ROW_CHUNKS == 4, "the swizzle is written for 64-byte rows: BLOCK_K = 32 halves or 16 floats");
    Chunk16 a[Tile::STAGES][Tile::BLOCK_M * ROW_CHUNKS];
    Chunk16 b[Tile::STAGES][Tile::BLOCK_N * ROW_CHUNKS];
};

// n / d for 0 <= n < 2^31 and 0 < d < 2^31 as a multiplication (CUTLASS's FastDivmod: the round-up method,
// exact for 31-bit dividends): m = ceil(2^p / d) with p = 31 + ceil(log2 d), n / d = (n * m) >> p.
struct FastDivisor {
    int divisor;
    unsigned int multiplier, shift;

    __device__ __forceinline__ explicit FastDivisor(int d) : divisor(d), multiplier(0), shift(0) {
        if (d != 1) {
            unsigned int log2 = 0;
            while ((1u << log2) < (unsigned int)d) ++log2;
            const unsigned long long p = 1ull << (31 + log2);
            multiplier = (unsigned int)((p + (unsigned long long)d - 1) / (unsigned long long)d);
            shift = log2 - 1;
        }
    }
    __device__ __forceinline__ int divide(int n) const {
        const unsigned int high = (unsigned int)(((unsigned long long)(unsigned int)n * multiplier) >> 32);
        return divisor == 1 ? n : (int)(high >> shift);
    }
};

// The chunk index of (row, chunk) in a slice: chunk c of row r sits at c ^ ((r / 2) % 4) (see the top).
__device__ __forceinline__ int swizzled(int row, int chunk) { return row * 4 + (chunk ^ ((row >> 1) & 3)); }

// The multistage cp.async pipeline both main loops run (CUTLASS's sm80 multistage): STAGES - 1 slices in
// flight while one is multiplied, one barrier per slice. load(stage, slice) issues one slice's copies into a
// stage, compute(stage) multiplies the stage that holds the current slice.
template <int STAGES, class Load, class Compute>
__device__ __forceinline__ void cp_async_pipeline(int slices, Load&& load, Compute&& compute) {
    // Prologue: STAGES - 1 slices in flight (a group per slice, empty past the end, so the counts match).
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < slices) load(s, s);
        cp_async_commit_group();
    }
    int read_stage = 0, write_stage = STAGES - 1;
    for (int slice = 0; slice < slices; ++slice) {
        cp_async_wait_group<STAGES - 2>();  // this thread's copies of slice `slice` have landed ...
        __syncthreads();                    // ... everyone's; and everyone is done with slice - 1's stage
        if (slice + STAGES - 1 < slices) load(write_stage, slice + STAGES - 1);
        cp_async_commit_group();
        compute(read_stage);
        read_stage = read_stage == STAGES - 1 ? 0 : read_stage + 1;
        write_stage = write_stage == STAGES - 1 ? 0 : write_stage + 1;
    }
    cp_async_wait_all();  // nothing is left but empty groups; leave no copy in flight at exit
}

// NaN and inf (tests/test_padding_nan_rule.py has the rule): fprop sums every tap, padding included, and so
// does the GEMM (a padding tap is a zero-filled copy), so 0 * inf and 0 * NaN weights make NaN as the rule
// wants. dgrad sums only the taps that reach a pixel; as an fprop its padding taps are positions outside dy,
// which the GEMM multiplies as zeros -- exact while the weight is finite. So with NAN_RESUM a thread that
// stored a NaN (a compare per output: all that finite weights pay) sums those outputs again, here, over the
// taps inside the input alone, from the packed operands; an output that is NaN there too stays NaN.
template <typename T, class Tile>
__device__ __noinline__ void resum_nan_outputs(const T* __restrict__ xp, const T* __restrict__ wp, T* __restrict__ y,
                                               const ConvShape shape) {
    const int group = (int)blockIdx.z;
    const int Cg = shape.channels_per_group(), Kg = shape.filters_per_group();
    const int Cgp = padded_channels<T>(Cg), pixel_stride = shape.groups * Cgp, reduction = shape.R * shape.S * Cgp;
    const int PQ = shape.P * shape.Q, pixels = shape.N * PQ;
    const int lane = lane_id(), warp = warp_id();
    const int m_warp = (int)blockIdx.x * Tile::BLOCK_M + (warp % Tile::WARPS_M) * Tile::WARP_M + (lane >> 2);
    const int k_warp = (int)blockIdx.y * Tile::BLOCK_N + (warp / Tile::WARPS_M) * Tile::WARP_N + 2 * (lane & 3);
    for (int i = 0; i < 2 * Tile::M_TILES; ++i) {  // this thread's rows g + 8 i and columns 2t + 8 j + e
        const int m = m_warp + 8 * i;
        if (m >= pixels) break;
        const int n = m / PQ, pq = m - n * PQ, p = pq / shape.Q, q = pq - p * shape.Q;
        const int h0 = p * shape.stride_h - shape.pad_top, w0 = q * shape.stride_w - shape.pad_left;
        T* y_pixel = y + ((long long)n * shape.K + (long long)group * Kg) * PQ + pq;
        for (int j = 0; j < 2 * Tile::N_TILES; ++j) {
            const int k = k_warp + 8 * (j >> 1) + (j & 1);
            if (k >= Kg || !is_nan(to_acc(y_pixel[(long long)k * PQ]))) continue;
            const T* w_filter = wp + (long long)(group * Kg + k) * reduction;
            float sum = 0.0f;
            for (int r = 0; r < shape.R; ++r) {
                const int h = h0 + r * shape.dilation_h;
                if (h < 0 || h >= shape.H) continue;
                for (int s = 0; s < shape.S; ++s) {
                    const int w = w0 + s * shape.dilation_w;
                    if (w < 0 || w >= shape.W) continue;
                    const T* x_tap = xp + ((long long)(n * shape.H + h) * shape.W + w) * pixel_stride + group * Cgp;
                    const T* w_tap = w_filter + (r * shape.S + s) * Cgp;
                    for (int c = 0; c < Cg; ++c) sum += to_acc(x_tap[c]) * to_acc(w_tap[c]);
                }
            }
            y_pixel[(long long)k * PQ] = from_acc<T>(sum);
        }
    }
}

template <typename T, class Tile>
__device__ __forceinline__ void conv2d_fprop_tensor_op(const T* __restrict__ xp, const T* __restrict__ wp,
                                                       T* __restrict__ y, const ConvShape shape) {
    typedef TensorOpShared<T, Tile> Shared;
    constexpr int BM = Tile::BLOCK_M, BN = Tile::BLOCK_N, BK = Tile::BLOCK_K, STAGES = Tile::STAGES;
    constexpr int EPC = ChunkOf<T>::ELEMENTS;           // elements per chunk
    constexpr int LOAD_ROWS = Tile::THREADS / 4;        // rows a pass of the block's threads loads
    constexpr int A_LOADS = BM / LOAD_ROWS, B_LOADS = BN / LOAD_ROWS;
    constexpr int K_STEPS = BK / TensorOpMath<T>::MMA_K;  // mma steps per slice (2)
    static_assert(BM % LOAD_ROWS == 0 && BN % LOAD_ROWS == 0, "whole passes of the loaders");
    __shared__ Shared smem;

    const int group = (int)blockIdx.z;
    const int Cg = shape.channels_per_group(), Kg = shape.filters_per_group();
    const int Cgp = padded_channels<T>(Cg);
    const int pixel_stride = shape.groups * Cgp;        // elements per pixel of xp
    const int reduction = shape.R * shape.S * Cgp;      // j = (r, s, c)
    const int PQ = shape.P * shape.Q;
    const int pixels = shape.N * PQ;                    // the registry refuses more than 2^31 - 1
    const int m_first = (int)blockIdx.x * BM, k_first = (int)blockIdx.y * BN;
    const int slices = (reduction + BK - 1) / BK;

    // Loaders: thread t copies chunk t % 4 of rows t / 4 + LOAD_ROWS * i of both slices.
    const int tid = (int)threadIdx.x;
    const int load_chunk = tid & 3, load_row = tid >> 2;
    const int store_chunk = swizzled(load_row, load_chunk);  // rows LOAD_ROWS (32) apart share the swizzle

    // A: per pixel row, the offset in xp where its window starts (its top-left tap, maybe in the padding:
    // then negative or past the image; never dereferenced) and the input position of that tap. A row past
    // the last pixel gets the last pixel's offset and a position no tap brings into the image. 32-bit
    // offsets: the registry refuses a packed input of 2^31 elements or more.
    int a_pixel[A_LOADS], a_h[A_LOADS], a_w[A_LOADS];
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
        const int m = min_of(m_first + load_row + LOAD_ROWS * i, pixels - 1);
        const int n = m / PQ, pq = m - n * PQ;
        const int p = pq / shape.Q, q = pq - p * shape.Q;
        a_h[i] = p * shape.stride_h - shape.pad_top;
        a_w[i] = q * shape.stride_w - shape.pad_left;
        a_pixel[i] = ((n * shape.H + a_h[i]) * shape.W + a_w[i]) * pixel_stride + group * Cgp;
        if (m_first + load_row + LOAD_ROWS * i >= pixels) a_h[i] = -(1 << 30);
    }
    // The reduction position j = (r*S + s)*Cgp + c of this thread's chunk is b_reduction below; its tap and
    // channel come from two divisions by invariants (multiplications: no loop, no branch).
    const FastDivisor by_channels(Cgp), by_columns(shape.S);

    // B: this thread's chunk of filter row k_first + load_row (the rows below it are LOAD_ROWS filters
    // apart); filters past the group's last are never read. The registry refuses a packed weight of 2^31
    // elements or more.
    const int b_first = k_first + load_row;
    int b_offset = (group * Kg + b_first) * reduction + load_chunk * EPC;
    int b_reduction = load_chunk * EPC;  // the reduction index of this thread's B chunk
    const int b_row_stride = LOAD_ROWS * reduction;

    // One slice into one stage. A copy whose source is outside its operand (a padding tap, a row or filter
    // past the last, the reduction's end) reads nothing (source size 0: zero fill), so its address is
    // never dereferenced and needs no clamping.
    auto load_slice = [&](int stage, int) {  // slices in order: the offsets advance
        const int tap = by_channels.divide(b_reduction), channel = b_reduction - tap * Cgp;
        const int tap_r = by_columns.divide(tap), tap_s = tap - tap_r * shape.S;
        const int dh = tap_r * shape.dilation_h, dw = tap_s * shape.dilation_w;
        const int tap_offset = (dh * shape.W + dw) * pixel_stride + channel;
        const bool tap_valid = tap_r < shape.R;
        Chunk16* a_dst = &smem.a[stage][store_chunk];
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int h = a_h[i] + dh, w = a_w[i] + dw;
            const bool valid = tap_valid && (unsigned)h < (unsigned)shape.H && (unsigned)w < (unsigned)shape.W;
            cp_async_16_zfill(a_dst + i * LOAD_ROWS * 4, xp + (a_pixel[i] + tap_offset), valid ? 16 : 0);
        }
        const bool k_valid = b_reduction < reduction;
        Chunk16* b_dst = &smem.b[stage][store_chunk];
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const bool valid = k_valid && b_first + LOAD_ROWS * i < Kg;
            cp_async_16_zfill(b_dst + i * LOAD_ROWS * 4, wp + (b_offset + i * b_row_stride), valid ? 16 : 0);
        }
        b_offset += BK;
        b_reduction += BK;
    };

    // Warps: (warp_m, warp_n) of WARPS_M x WARPS_N; the ldmatrix row each lane addresses (see the top of
    // warp_primitives.cuh): A matrices (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) of a 16 x 16
    // tile are a[0..3]; B matrices (n 0-7, k 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15) the b[0..1] of two
    // n8 tiles. In 16-bit units; for TF32 "k 0-7" reads as k 0-3 (16 bytes), which is its fragment layout too.
    // Tiles 16 rows apart share the swizzle ((row / 2) % 4), so a lane's chunk of step s in tile i is its
    // chunk in tile 0 plus 16 * 4 * i: one register per step and operand, the rest immediate offsets.
    const int lane = lane_id(), warp = warp_id();
    const int warp_m = warp % Tile::WARPS_M, warp_n = warp / Tile::WARPS_M;
    int a_lane[K_STEPS], b_lane[K_STEPS];
#pragma unroll
    for (int step = 0; step < K_STEPS; ++step) {
        a_lane[step] = swizzled(warp_m * Tile::WARP_M + (lane & 7) + ((lane >> 3) & 1) * 8, 2 * step + (lane >> 4));
        b_lane[step] = swizzled(warp_n * Tile::WARP_N + (lane & 7) + (lane >> 4) * 8, 2 * step + ((lane >> 3) & 1));
    }

    float acc[Tile::M_TILES][Tile::N_TILES][4] = {};
    cp_async_pipeline<STAGES>(slices, load_slice, [&](int stage) {
#pragma unroll
        for (int step = 0; step < K_STEPS; ++step) {
            const Chunk16* a_rows = &smem.a[stage][a_lane[step]];
            const Chunk16* b_rows = &smem.b[stage][b_lane[step]];
            unsigned int a[Tile::M_TILES][4], b[Tile::N_TILES / 2][4];
#pragma unroll
            for (int i = 0; i < Tile::M_TILES; ++i) ldmatrix_x4(a[i], a_rows + 64 * i);
#pragma unroll
            for (int j = 0; j < Tile::N_TILES / 2; ++j) ldmatrix_x4(b[j], b_rows + 64 * j);
#pragma unroll
            for (int i = 0; i < Tile::M_TILES; ++i)
#pragma unroll
                for (int j = 0; j < Tile::N_TILES; ++j) {
                    const unsigned int b_pair[2] = {b[j / 2][2 * (j % 2)], b[j / 2][2 * (j % 2) + 1]};
                    TensorOpMath<T>::mma(acc[i][j], a[i], b_pair);
                }
        }
    });

    // Epilogue: acc[i][j] holds rows g and g + 8 (g = lane / 4), columns 2t and 2t + 1 (t = lane % 4) of the
    // 16 x 8 tile (i, j) of this warp; y[n, group*Kg + k, p, q], one element per store.
    const int g = lane >> 2, t = lane & 3;
    bool stored_nan = false;
#pragma unroll
    for (int i = 0; i < Tile::M_TILES; ++i)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int m = m_first + warp_m * Tile::WARP_M + 16 * i + g + 8 * half;
            if (m >= pixels) continue;
            const int n = m / PQ, pq = m - n * PQ;
            T* y_pixel = y + ((long long)n * shape.K + (long long)group * Kg) * PQ + pq;
#pragma unroll
            for (int j = 0; j < Tile::N_TILES; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int k = k_first + warp_n * Tile::WARP_N + 8 * j + 2 * t + e;
                    if (k >= Kg) continue;
                    const T value = from_acc<T>(acc[i][j][2 * half + e]);
                    y_pixel[(long long)k * PQ] = value;
                    if (Tile::NAN_RESUM) stored_nan |= is_nan(to_acc(value));
                }
        }
    if (Tile::NAN_RESUM && stored_nan) resum_nan_outputs<T, Tile>(xp, wp, y, shape);
}

}  // namespace gpuconv

// ------------------------------------------------------------------ exports
// The loader instantiates these once per registered variant and dtype (gpuconv/cuda/registry.py): NAME,
// the storage and accumulator types, then (main kernel) the block size and the TensorOpTile.

// xp (N, H, W, groups * Cgp) from x (N, C, H, W); float32 rounded to TF32.
#define GPUCONV_TENSOR_OP_PACK_INPUT_KERNEL(NAME, T, ACC)                                      \
    extern "C" __global__ void NAME(const T* __restrict__ x, T* __restrict__ xp, GPUCONV_CONV_SHAPE_PARAMS) { \
        gpuconv::pack_input_nhwc<T>(x, xp, GPUCONV_CONV_SHAPE);                                 \
    }

// wp (K, R, S, Cgp) from w (K, C / groups, R, S); float32 rounded to TF32.
#define GPUCONV_TENSOR_OP_PACK_WEIGHT_KERNEL(NAME, T, ACC)                                     \
    extern "C" __global__ void NAME(const T* __restrict__ w, T* __restrict__ wp, GPUCONV_CONV_SHAPE_PARAMS) { \
        gpuconv::pack_weight_krsc<T>(w, wp, GPUCONV_CONV_SHAPE);                                \
    }

// wp (C, R, S, Kgp) from w (K, C / groups, R, S), transposed per group and flipped: a dgrad phase as an fprop,
// whose shape the kernel takes (gpuconv/cuda/registry.py, tensor_op_dgrad_phases); float32 rounded to TF32.
#define GPUCONV_TENSOR_OP_PACK_WEIGHT_FLIPPED_KERNEL(NAME, T, ACC)                             \
    extern "C" __global__ void NAME(const T* __restrict__ w, T* __restrict__ wp, GPUCONV_CONV_SHAPE_PARAMS) { \
        gpuconv::pack_weight_flipped<T>(w, wp, GPUCONV_CONV_SHAPE);                             \
    }

// y (N, K, P, Q) = conv2d(x, w) from the packed xp and wp. Two blocks per SM: 255 registers at most. dgrad
// instantiates it too, under its own name: a phase of dx = conv2d(dy, flipped w) on the shape of that fprop.
#define GPUCONV_FPROP_TENSOR_OP_KERNEL(NAME, T, ACC, THREADS, ...)                              \
    extern "C" __global__ void __launch_bounds__(THREADS, 2)                                    \
        NAME(const T* __restrict__ xp, const T* __restrict__ wp, T* __restrict__ y, GPUCONV_CONV_SHAPE_PARAMS) { \
        gpuconv::conv2d_fprop_tensor_op<T, __VA_ARGS__>(xp, wp, y, GPUCONV_CONV_SHAPE);         \
    }

// ------------------------------------------------------------------------------------------------ wgrad
//
// wgrad (float16, bfloat16 and TF32; float32 accumulation): for each group g the GEMM
//     dw[k, j] = sum_m dyp[m, g*Kgp + k] * A_x[m, j]
// over k a filter of the group (Kg rows), j = (r, s, c) a tap and a padded input channel (R*S*Cgp columns, c
// fastest) and m = (n, p, q) an output pixel (the reduction, N*P*Q), with dyp = dy packed NHWC ((N, P, Q,
// G*Kgp): the input pack over dy's shape) and A_x[m, j] = xp[n, p*stride_h - pad_top + r*dilation_h,
// q*stride_w - pad_left + s*dilation_w, g*Cgp + c] (zero in the padding: cp.async's zero fill).
// Both operands are pixel-major: a slice holds BLOCK_K pixel rows of 128 filters (A) and of 128 columns j (B),
// rows of 16 chunks (halves: 256 bytes) or 32 (floats: 512 bytes). The fragments' reduction index is the row,
// so they are loaded across rows (WgradFragments):
//   * halves: ldmatrix.x4.trans, chunk c of row r stored at c ^ (r % 8) (8 consecutive rows of one chunk
//     cover all 32 banks; so do the 8 chunks of one row a quarter-warp of cp.async writes);
//   * TF32 (ldmatrix moves 16-bit elements, and .trans would split a float): 128-bit shared loads of rows,
//     into mma.m16n8k4, whose fragments hold one reduction index per lane: A[g][t], A[g+8][t] and B[t][g].
//     (m16n8k8's pair pixels t and t + 4 in one register group, which two row loads fill only through
//     register moves: twice the main loop.) Lane (g, t) reads pixel row t of the step, and the tile rows and
//     columns are permuted so that the 8 filters (i, half) and the 8 columns j a lane needs are adjacent:
//     filter 8g + 2i + half of the warp tile is row g + 8 half of m16 tile i, column 8g + j is column g of n8
//     tile j. Two 16-byte loads per operand give a lane all its fragments of a step, in place: 4 loads for 32
//     mma of half the depth (the halves' ldmatrix.x4 feed 32 mma of 16 with 8). Chunk c of row r is stored at
//     c ^ ((r & 1) | (r & 2) << 1): a quarter-warp's 8 loads (rows t = 0..3, chunks 2g(+1) for two g) then
//     fall in 8 distinct 16-byte bank groups.
// A thread's B chunk column is fixed for the whole loop (its tap and channel: one division, before it); each
// slice divides its pixel rows (FastDivisor). Padding taps are zero-filled copies that the GEMM multiplies:
// 0 * NaN and 0 * inf in dy give NaN as the padding NaN rule wants (tests/test_padding_nan_rule.py).
// Split-K: the pixels are cut into `splits` ranges (a multiple of BLOCK_K each), one block per output tile and
// range, each writing its float32 partial sums; the reduce kernel adds them in split order (deterministic).
// Launch: pack x (shape) and dy (the input pack over (N, K, P, Q)), then grid (ceil(Kg / BLOCK_M),
// ceil(R*S*Cgp / BLOCK_N), groups * splits), Tile::THREADS threads, 48 KiB of static shared memory at 3 stages,
// then the reduce.

namespace gpuconv {

// How a warp reads its wgrad fragments out of a slice, per storage type: the row layout, the swizzle, the loads
// of one reduction step and which filter and column each accumulator element is (see above).
template <typename T, class Tile> struct WgradFragments;

template <typename T, class Tile> struct WgradHalfFragments {
    static constexpr int ROW_CHUNKS = 16, MMA_K = 16, A_REGS = 4, B_REGS = 2;
    static __device__ __forceinline__ int swizzled(int row, int chunk) { return row * 16 + (chunk ^ (row & 7)); }
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
        TensorOpMath<T>::mma(d, a, b);
    }

    int a_lane[Tile::BLOCK_K / 16][Tile::M_TILES], b_lane[Tile::BLOCK_K / 16][Tile::N_TILES / 2];

    // ldmatrix.trans rows are pixels. A matrices (filters 0-7, pixels 0-7), (8-15, 0-7), (0-7, 8-15), (8-15,
    // 8-15) of a 16 x 16 tile are a[0..3]; B matrices (pixels 0-7, n 0-7), (8-15, 0-7), (0-7, 8-15), (8-15,
    // 8-15) the b of two n8 tiles.
    __device__ __forceinline__ WgradHalfFragments(int lane, int warp_m, int warp_n) {
#pragma unroll
        for (int step = 0; step < Tile::BLOCK_K / 16; ++step) {
            const int a_row = 16 * step + (lane & 7) + ((lane >> 4) & 1) * 8;
            const int b_row = 16 * step + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
            for (int i = 0; i < Tile::M_TILES; ++i)
                a_lane[step][i] = swizzled(a_row, (warp_m * Tile::WARP_M + 16 * i) / 8 + ((lane >> 3) & 1));
#pragma unroll
            for (int j = 0; j < Tile::N_TILES / 2; ++j)
                b_lane[step][j] = swizzled(b_row, (warp_n * Tile::WARP_N + 16 * j) / 8 + (lane >> 4));
        }
    }
    __device__ __forceinline__ void load(const Chunk16* a_slice, const Chunk16* b_slice, int step,
                                         unsigned int (&a)[Tile::M_TILES][4], unsigned int (&b)[Tile::N_TILES][2]) const {
#pragma unroll
        for (int i = 0; i < Tile::M_TILES; ++i) ldmatrix_x4_trans(a[i], a_slice + a_lane[step][i]);
#pragma unroll
        for (int j = 0; j < Tile::N_TILES / 2; ++j) {
            unsigned int pair[4];
            ldmatrix_x4_trans(pair, b_slice + b_lane[step][j]);
            b[2 * j][0] = pair[0], b[2 * j][1] = pair[1], b[2 * j + 1][0] = pair[2], b[2 * j + 1][1] = pair[3];
        }
    }
    // The warp-tile filter of rows g + 8 half of m16 tile i, and column of 2t + e of n8 tile j.
    static __device__ __forceinline__ int filter(int i, int half, int g) { return 16 * i + g + 8 * half; }
    static __device__ __forceinline__ int column(int j, int e, int t) { return 8 * j + 2 * t + e; }
};

template <class Tile> struct WgradFragments<gpuconv_half, Tile> : WgradHalfFragments<gpuconv_half, Tile> {
    using WgradHalfFragments<gpuconv_half, Tile>::WgradHalfFragments;
};
template <class Tile> struct WgradFragments<gpuconv_bf16, Tile> : WgradHalfFragments<gpuconv_bf16, Tile> {
    using WgradHalfFragments<gpuconv_bf16, Tile>::WgradHalfFragments;
};

template <class Tile> struct WgradFragments<float, Tile> {
    static constexpr int ROW_CHUNKS = 32, MMA_K = 4, A_REGS = 2, B_REGS = 1;
    static_assert(Tile::WARP_M == 64 && Tile::WARP_N == 64, "a lane's 8 filters and 8 columns: 64-wide warp tiles");
    static __device__ __forceinline__ int swizzled(int row, int chunk) {
        return row * 32 + (chunk ^ ((row & 1) | ((row & 2) << 1)));
    }
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned int (&a)[2], const unsigned int (&b)[1]) {
        mma_m16n8k4_tf32(d, a, b, d);
    }

    int a_chunk, b_chunk, t;  // this lane's first filter chunk and column chunk of the warp tile; its pixel row

    __device__ __forceinline__ WgradFragments(int lane, int warp_m, int warp_n)
        : a_chunk(warp_m * Tile::WARP_M / 4 + 2 * (lane >> 2)), b_chunk(warp_n * Tile::WARP_N / 4 + 2 * (lane >> 2)),
          t(lane & 3) {}

    __device__ __forceinline__ void load(const Chunk16* a_slice, const Chunk16* b_slice, int step,
                                         unsigned int (&a)[Tile::M_TILES][2], unsigned int (&b)[Tile::N_TILES][1]) const {
        // lane (g, t): filters 8g .. 8g + 7 and columns 8g .. 8g + 7 of the warp tile at pixel row t of the step
        const int row = MMA_K * step + t;
        const Chunk16 a0 = a_slice[swizzled(row, a_chunk)], a1 = a_slice[swizzled(row, a_chunk + 1)];
        const Chunk16 b0 = b_slice[swizzled(row, b_chunk)], b1 = b_slice[swizzled(row, b_chunk + 1)];
#pragma unroll
        for (int i = 0; i < Tile::M_TILES; ++i) {  // filters 8g + 2i (row g) and 8g + 2i + 1 (row g + 8)
            a[i][0] = (i < 2 ? a0 : a1).word[2 * (i & 1)];
            a[i][1] = (i < 2 ? a0 : a1).word[2 * (i & 1) + 1];
        }
#pragma unroll
        for (int j = 0; j < Tile::N_TILES; ++j) b[j][0] = (j < 4 ? b0 : b1).word[j & 3];  // column 8g + j
    }
    static __device__ __forceinline__ int filter(int i, int half, int g) { return 8 * g + 2 * i + half; }
    static __device__ __forceinline__ int column(int j, int e, int t) { return 8 * (2 * t + e) + j; }
};

template <typename T, class Tile>
struct WgradTensorOpShared {
    static constexpr int ROW_CHUNKS = WgradFragments<T, Tile>::ROW_CHUNKS;
    static_assert(Tile::BLOCK_M * (int)sizeof(T) == 16 * ROW_CHUNKS && Tile::BLOCK_N == Tile::BLOCK_M,
                  "rows of 128 filters and of 128 columns");
    Chunk16 a[Tile::STAGES][Tile::BLOCK_K * ROW_CHUNKS];
    Chunk16 b[Tile::STAGES][Tile::BLOCK_K * ROW_CHUNKS];
};

template <typename T, class Tile>
__device__ __forceinline__ void conv2d_wgrad_tensor_op(const T* __restrict__ xp, const T* __restrict__ dyp,
                                                       float* __restrict__ partial, const ConvShape shape, int splits,
                                                       int pixels_per_split) {
    typedef WgradTensorOpShared<T, Tile> Shared;
    typedef WgradFragments<T, Tile> Fragments;
    constexpr int BM = Tile::BLOCK_M, BN = Tile::BLOCK_N, BK = Tile::BLOCK_K, STAGES = Tile::STAGES;
    constexpr int EPC = ChunkOf<T>::ELEMENTS, ROW_CHUNKS = Fragments::ROW_CHUNKS;
    constexpr int LOAD_ROWS = Tile::THREADS / ROW_CHUNKS;  // pixel rows a pass of the block's threads loads
    constexpr int LOADS = BK / LOAD_ROWS;                   // per operand and thread
    constexpr int K_STEPS = BK / Fragments::MMA_K;
    static_assert(BK % LOAD_ROWS == 0 && Tile::THREADS % ROW_CHUNKS == 0, "whole passes of the loaders");
    __shared__ Shared smem;

    const int group = (int)blockIdx.z / splits, split = (int)blockIdx.z % splits;
    const int Cg = shape.channels_per_group(), Kg = shape.filters_per_group();
    const int Cgp = padded_channels<T>(Cg), Kgp = padded_channels<T>(Kg);
    const int pixel_stride = shape.groups * Cgp, dy_stride = shape.groups * Kgp;
    const int columns = shape.R * shape.S * Cgp;
    const int PQ = shape.P * shape.Q;
    // this block's pixels: [m_begin, pixels) of split `split` (pixels_per_split a multiple of BLOCK_K)
    const int m_begin = split * pixels_per_split, pixels = min_of(shape.N * PQ, m_begin + pixels_per_split);
    const int k_first = (int)blockIdx.x * BM, j_first = (int)blockIdx.y * BN;
    const int slices = (pixels - m_begin + BK - 1) / BK;

    const int tid = (int)threadIdx.x;
    const int load_chunk = tid % ROW_CHUNKS, load_row = tid / ROW_CHUNKS;
    const int store_chunk = Fragments::swizzled(load_row, load_chunk);  // rows LOAD_ROWS apart share the swizzle

    // A: this thread's chunk of filters of dyp (the same for every pixel row); valid inside the padded group.
    const int a_k = k_first + load_chunk * EPC;
    const bool a_valid = a_k < Kgp;
    const int a_column = group * Kgp + a_k;
    // B: this thread's column chunk j = (r*S + s)*Cgp + c, fixed for the loop. Addresses are formed from the
    // last column and the last pixel where the chunk or the row is past them (zero-filled, never read): every
    // offset stays within the packed input's reach (registry._wgrad_tensor_op_fits).
    const int b_j = j_first + load_chunk * EPC;
    const bool b_valid = b_j < columns;
    const int b_tap = min_of(b_j, columns - EPC) / Cgp, b_channel = min_of(b_j, columns - EPC) - b_tap * Cgp;
    const int b_r = b_tap / shape.S, b_s = b_tap - b_r * shape.S;
    const int b_dh = b_r * shape.dilation_h - shape.pad_top, b_dw = b_s * shape.dilation_w - shape.pad_left;
    const int b_column = group * Cgp + b_channel;
    const FastDivisor by_pq(PQ), by_q(shape.Q);

    auto load_slice = [&](int stage, int slice) {
        Chunk16* a_dst = &smem.a[stage][store_chunk];
        Chunk16* b_dst = &smem.b[stage][store_chunk];
#pragma unroll
        for (int i = 0; i < LOADS; ++i) {
            const int m = m_begin + slice * BK + load_row + LOAD_ROWS * i;
            const bool m_valid = m < pixels;
            cp_async_16_zfill(a_dst + i * LOAD_ROWS * ROW_CHUNKS, dyp + (m * dy_stride + a_column),
                              m_valid && a_valid ? 16 : 0);
            const int m_last = min_of(m, pixels - 1);
            const int n = by_pq.divide(m_last), pq = m_last - n * PQ;
            const int p = by_q.divide(pq), q = pq - p * shape.Q;
            const int h = p * shape.stride_h + b_dh, w = q * shape.stride_w + b_dw;
            const bool valid = m_valid && b_valid && (unsigned)h < (unsigned)shape.H && (unsigned)w < (unsigned)shape.W;
            const int b_offset = ((n * shape.H + h) * shape.W + w) * pixel_stride + b_column;
            cp_async_16_zfill(b_dst + i * LOAD_ROWS * ROW_CHUNKS, xp + b_offset, valid ? 16 : 0);
        }
    };

    const int lane = lane_id(), warp = warp_id();
    const int warp_m = warp % Tile::WARPS_M, warp_n = warp / Tile::WARPS_M;
    const Fragments fragments(lane, warp_m, warp_n);

    float acc[Tile::M_TILES][Tile::N_TILES][4] = {};
    cp_async_pipeline<STAGES>(slices, load_slice, [&](int stage) {
#pragma unroll
        for (int step = 0; step < K_STEPS; ++step) {
            unsigned int a[Tile::M_TILES][Fragments::A_REGS], b[Tile::N_TILES][Fragments::B_REGS];
            fragments.load(smem.a[stage], smem.b[stage], step, a, b);
#pragma unroll
            for (int i = 0; i < Tile::M_TILES; ++i)
#pragma unroll
                for (int j = 0; j < Tile::N_TILES; ++j) Fragments::mma(acc[i][j], a[i], b[j]);
        }
    });

    // Epilogue: acc[i][j] holds rows g and g + 8, columns 2t and 2t + 1 of the 16 x 8 tile (i, j), which are
    // the filters and columns Fragments::filter / column name; partial[split, group*Kg + k, c, r, s] for c < Cg.
    const int g = lane >> 2, t = lane & 3;
    const int taps = shape.R * shape.S;
    float* dw = partial + (long long)split * shape.K * Cg * taps;
#pragma unroll
    for (int j = 0; j < Tile::N_TILES; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int column = j_first + warp_n * Tile::WARP_N + Fragments::column(j, e, t);
            if (column >= columns) continue;
            const int tap = column / Cgp, c = column - tap * Cgp;
            if (c >= Cg) continue;
#pragma unroll
            for (int i = 0; i < Tile::M_TILES; ++i)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int k = k_first + warp_m * Tile::WARP_M + Fragments::filter(i, half, g);
                    if (k >= Kg) continue;
                    dw[((long long)(group * Kg + k) * Cg + c) * taps + tap] = acc[i][j][2 * half + e];
                }
        }
}

}  // namespace gpuconv

// partial (splits, K, C / groups, R, S), float32, from the packed xp (N, H, W, groups * Cgp) and dyp (N, P, Q,
// groups * Kgp): split s sums pixels [s * pixels_per_split, (s + 1) * pixels_per_split); then dw = the sum of
// the splits in split order (conv2d_wgrad.cu's reduce kernel, which rounds to T once).
#define GPUCONV_WGRAD_TENSOR_OP_KERNEL(NAME, T, ACC, THREADS, ...)                              \
    extern "C" __global__ void __launch_bounds__(THREADS, 2)                                    \
        NAME(const T* __restrict__ xp, const T* __restrict__ dyp, float* __restrict__ partial,  \
             GPUCONV_CONV_SHAPE_PARAMS, int splits, int pixels_per_split) {                     \
        gpuconv::conv2d_wgrad_tensor_op<T, __VA_ARGS__>(xp, dyp, partial, GPUCONV_CONV_SHAPE, splits, \
                                                        pixels_per_split);                      \
    }
