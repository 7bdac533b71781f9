// Small kernels that test the emulator's warps and kernels/warp_primitives.cuh (tests/test_warp_emulation.py):
// correct ones whose results a NumPy model of the PTX ISA predicts, and deliberately broken ones that the
// emulator must report. Plain CUDA in the dialect of kernels/*.cu: it also compiles with nvcc and NVRTC for
// sm_80 and sm_90 (the test checks the SASS for HMMA, LDSM and LDGSTS).
#include "../../kernels/common.cuh"
#include "../../kernels/warp_primitives.cuh"

// ----------------------------------------------------------------------------------------- shuffles ---
// One case per block: lane l of warp w shuffles values[t] (t = the thread's index in the block) with the
// argument args[t] (source lane, delta or lane mask), the width config[0] and the mask config[1 + w];
// lanes outside their warp's mask do not take part and leave out[t] unwritten.
template <typename T>
__device__ __forceinline__ void shuffle_case(const T* __restrict__ values, const int* __restrict__ args,
                                             const unsigned int* __restrict__ config, T* __restrict__ out,
                                             int mode) {
    const int t = gpuconv::linear_thread_index();
    const long long at = (long long)blockIdx.x * blockDim.x + t;
    const unsigned int* c = config + blockIdx.x * 3;
    const int width = (int)c[0];
    const unsigned int mask = c[1 + gpuconv::warp_id()];
    if (!((mask >> gpuconv::lane_id()) & 1u)) return;
    const T v = values[at];
    const int b = args[at];
    T r;
    if (mode == 0) r = __shfl_sync(mask, v, b, width);
    else if (mode == 1) r = __shfl_up_sync(mask, v, (unsigned int)b, width);
    else if (mode == 2) r = __shfl_down_sync(mask, v, (unsigned int)b, width);
    else r = __shfl_xor_sync(mask, v, b, width);
    out[at] = r;
}
#define WARP_SHUFFLE_KERNEL(suffix, T)                                                                         \
    extern "C" __global__ void warp_shuffle_##suffix(const T* __restrict__ values, const int* __restrict__ args, \
                                                     const unsigned int* __restrict__ config,                  \
                                                     T* __restrict__ out, int mode) {                          \
        shuffle_case<T>(values, args, config, out, mode);                                                      \
    }
WARP_SHUFFLE_KERNEL(i32, int)
WARP_SHUFFLE_KERNEL(u32, unsigned int)
WARP_SHUFFLE_KERNEL(f32, float)
WARP_SHUFFLE_KERNEL(f64, double)

// The gpuconv:: wrappers: out[t] = the sum of x over t's width-lane segment (xor butterfly), then
// shfl_idx / shfl_up / shfl_down / shfl_xor of it by 1.
extern "C" __global__ void warp_wrappers(const float* __restrict__ x, float* __restrict__ out, int width) {
    const int t = gpuconv::linear_thread_index();
    const float s = gpuconv::warp_sum(x[t], width);
    out[5 * t] = s;
    out[5 * t + 1] = gpuconv::shfl_idx(0xffffffffu, x[t], 1, width);
    out[5 * t + 2] = gpuconv::shfl_up(0xffffffffu, x[t], 1u, width);
    out[5 * t + 3] = gpuconv::shfl_down(0xffffffffu, x[t], 1u, width);
    out[5 * t + 4] = gpuconv::shfl_xor(0xffffffffu, x[t], 1, width);
}

// -------------------------------------------------------------------------------------------- votes ---
// Lane l of warp w, if in masks[blockIdx.x * 2 + w], votes predicates[t]: out[6 t ..] = __all_sync,
// __any_sync, __ballot_sync, and the gpuconv::warp_all / warp_any / warp_ballot wrappers.
extern "C" __global__ void warp_votes(const int* __restrict__ predicates, const unsigned int* __restrict__ masks,
                                      unsigned int* __restrict__ out) {
    const int t = gpuconv::linear_thread_index();
    const long long at = (long long)blockIdx.x * blockDim.x + t;
    const unsigned int mask = masks[blockIdx.x * 2 + gpuconv::warp_id()];
    if (!((mask >> gpuconv::lane_id()) & 1u)) return;
    const int p = predicates[at];
    unsigned int* o = out + 6 * at;
    o[0] = (unsigned int)__all_sync(mask, p);
    o[1] = (unsigned int)__any_sync(mask, p);
    o[2] = __ballot_sync(mask, p);
    o[3] = gpuconv::warp_all(mask, p != 0) ? 1u : 0u;
    o[4] = gpuconv::warp_any(mask, p != 0) ? 1u : 0u;
    o[5] = gpuconv::warp_ballot(mask, p != 0);
}

// out[3 t] = __activemask() where every lane is converged; out[3 t + 1] in an if / else on the lane's
// parity; out[3 t + 2] after the lanes from `active` on returned.
extern "C" __global__ void warp_activemask(unsigned int* __restrict__ out, int active) {
    const int t = gpuconv::linear_thread_index();
    out[3 * t] = __activemask();
    if (gpuconv::lane_id() % 2) out[3 * t + 1] = __activemask();
    else out[3 * t + 1] = __activemask();
    if (gpuconv::lane_id() >= active) return;
    out[3 * t + 2] = __activemask();
}

// ----------------------------------------------------------------------------------------- syncwarp ---
// Each lane writes its slot of shared memory and reads its right neighbour's (within the warp).
extern "C" __global__ void warp_exchange_synced(const float* __restrict__ x, float* __restrict__ out) {
    __shared__ float slots[64];
    const int t = gpuconv::linear_thread_index();
    slots[t] = x[t];
    __syncwarp();
    out[t] = slots[(t & ~31) | ((t + 1) & 31)];
}

// The same without the __syncwarp(): a lane may read the slot before its neighbour wrote it.
extern "C" __global__ void warp_exchange_unsynced(const float* __restrict__ x, float* __restrict__ out) {
    __shared__ float slots[64];
    const int t = gpuconv::linear_thread_index();
    slots[t] = x[t];
    out[t] = slots[(t & ~31) | ((t + 1) & 31)];
}

// ------------------------------------------------------------------------- deliberately broken warps ---

// Lanes 0-15 and 16-31 reach different shuffles (call sites).
extern "C" __global__ void warp_divergent_shuffle(float* __restrict__ out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else v = __shfl_xor_sync(0xffffffffu, v, 2);
    out[threadIdx.x] = v;
}

// Lanes from `active` on return; the others shuffle with a full mask, which names the lanes that exited.
extern "C" __global__ void warp_shuffle_after_exit(float* __restrict__ out, int active) {
    if ((int)threadIdx.x >= active) return;
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, (float)threadIdx.x, 1);
}

// Lane 5 waits at __syncthreads() while the rest of its warp waits at a shuffle that names it.
extern "C" __global__ void warp_shuffle_against_syncthreads(float* __restrict__ out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x == 5) __syncthreads();
    else v = __shfl_sync(0xffffffffu, v, 0);
    out[threadIdx.x] = v;
}

// Lane 3 passes a different mask than the others at the same shuffle.
extern "C" __global__ void warp_mismatched_masks(float* __restrict__ out) {
    const unsigned int mask = threadIdx.x == 3 ? 0x0000000fu : 0xffffffffu;
    out[threadIdx.x] = __shfl_sync(mask, (float)threadIdx.x, 0);
}

// Every lane passes a mask without its own bit.
extern "C" __global__ void warp_mask_without_self(float* __restrict__ out) {
    out[threadIdx.x] = __shfl_sync(1u << ((threadIdx.x + 1) & 31), (float)threadIdx.x, 0);
}

// A shuffle width that is not a power of two.
extern "C" __global__ void warp_bad_width(float* __restrict__ out) {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, (float)threadIdx.x, 0, 12);
}

// ----------------------------------------------------------------------------------------- ldmatrix ---
// A 32 x 8 tile of 16-bit values (32 rows of 16 bytes) goes to shared memory; lane l passes the address of
// row perm[l] (for .x1 / .x2 the lanes past 8 * count pass a null pointer, which ldmatrix ignores) and
// stores its `count` registers at out[4 l ..]. fault 1: lane 2's address is 2 bytes off (misaligned);
// fault 2: lane 1 passes a global address.
extern "C" __global__ void warp_ldmatrix(const unsigned short* __restrict__ tile, const int* __restrict__ perm,
                                         unsigned int* __restrict__ out, int count, int trans, int fault) {
    __shared__ __align__(16) unsigned short rows[32 * 8];
    const int lane = gpuconv::lane_id();
    for (int i = lane; i < 32 * 8; i += 32) rows[i] = tile[i];
    __syncwarp();
    const void* row = lane < 8 * count ? (const void*)(rows + 8 * perm[lane]) : nullptr;
    if (fault == 1 && lane == 2) row = rows + 8 * perm[lane] + 1;
    if (fault == 2 && lane == 1) row = tile;
    unsigned int r[4] = {0u, 0u, 0u, 0u};
    if (count == 1) {
        unsigned int q[1];
        if (trans) gpuconv::ldmatrix_x1_trans(q, row);
        else gpuconv::ldmatrix_x1(q, row);
        r[0] = q[0];
    } else if (count == 2) {
        unsigned int q[2];
        if (trans) gpuconv::ldmatrix_x2_trans(q, row);
        else gpuconv::ldmatrix_x2(q, row);
        r[0] = q[0];
        r[1] = q[1];
    } else {
        if (trans) gpuconv::ldmatrix_x4_trans(r, row);
        else gpuconv::ldmatrix_x4(r, row);
    }
    for (int i = 0; i < count; ++i) out[4 * lane + i] = r[i];
}

// ---------------------------------------------------------------------------------------------- mma ---
// One mma per block (a warp): lane l of block b loads its fragment registers a[4], b[2], c[4] at
// (b * 32 + l) * {4, 2, 4} and stores d[4]. kind 0: f16, 1: bf16, 2: tf32, 3: tf32 m16n8k4 (a[0..1] and b[0]
// only). in_place: d is c's registers.
extern "C" __global__ void warp_mma(const unsigned int* __restrict__ a, const unsigned int* __restrict__ b,
                                    const float* __restrict__ c, float* __restrict__ d, int kind, int in_place) {
    const long long at = (long long)blockIdx.x * 32 + gpuconv::lane_id();
    unsigned int ar[4], br[2];
    float cr[4], dr[4];
    for (int i = 0; i < 4; ++i) ar[i] = a[4 * at + i];
    for (int i = 0; i < 2; ++i) br[i] = b[2 * at + i];
    for (int i = 0; i < 4; ++i) cr[i] = c[4 * at + i];
    float (&target)[4] = in_place ? cr : dr;
    if (kind == 0) gpuconv::mma_m16n8k16_f16(target, ar, br, cr);
    else if (kind == 1) gpuconv::mma_m16n8k16_bf16(target, ar, br, cr);
    else if (kind == 2) gpuconv::mma_m16n8k8_tf32(target, ar, br, cr);
    else {  // m16n8k4: a[0..1], b[0]
        const unsigned int a2[2] = {ar[0], ar[1]}, b1[1] = {br[0]};
        gpuconv::mma_m16n8k4_tf32(target, a2, b1, cr);
    }
    for (int i = 0; i < 4; ++i) d[4 * at + i] = target[i];
}

// A whole warp-level GEMM as a tensor-core kernel does it: D (16x8, float) = A (16x16) * B (16x8), both
// row-major 16-bit tiles brought to shared memory with cp.async, A's fragment by ldmatrix.x4 and B's by
// ldmatrix.x2.trans (B is stored k-major: its 8x8 blocks must be transposed into the k-pairs of the
// fragment). bug = 1 swaps a[1] and a[2] (rows 8-15 with columns 8-15): the emulator must get it wrong.
template <typename T, bool BF16>
__device__ __forceinline__ void gemm_16x8x16(const T* __restrict__ A, const T* __restrict__ B, float* __restrict__ D,
                                             int bug) {
    __shared__ __align__(16) T sa[16 * 16];
    __shared__ __align__(16) T sb[16 * 8];
    const int lane = gpuconv::lane_id();
    gpuconv::cp_async_16(sa + 8 * lane, A + 8 * lane);  // 32 rows of 16 bytes: one per lane
    if (lane < 16) gpuconv::cp_async_16(sb + 8 * lane, B + 8 * lane);
    gpuconv::cp_async_commit_group();
    gpuconv::cp_async_wait_group<0>();
    __syncwarp();
    // Matrix i of A's x4 load: rows 8 (i % 2) .., columns 8 (i / 2) ..; lane 8 i + r gives its row r.
    const int i = lane / 8, r = lane % 8;
    unsigned int a[4], b[2];
    gpuconv::ldmatrix_x4(a, sa + (r + 8 * (i % 2)) * 16 + 8 * (i / 2));
    gpuconv::ldmatrix_x2_trans(b, sb + 8 * (lane % 16));  // matrix 0: k rows 0-7, matrix 1: k rows 8-15
    if (bug) {
        const unsigned int swap = a[1];
        a[1] = a[2];
        a[2] = swap;
    }
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (BF16) gpuconv::mma_m16n8k16_bf16(c, a, b, c);
    else gpuconv::mma_m16n8k16_f16(c, a, b, c);
    const int g = lane / 4, t = lane % 4;
    D[g * 8 + 2 * t] = c[0];
    D[g * 8 + 2 * t + 1] = c[1];
    D[(g + 8) * 8 + 2 * t] = c[2];
    D[(g + 8) * 8 + 2 * t + 1] = c[3];
}
extern "C" __global__ void warp_gemm_f16(const gpuconv_half* __restrict__ A, const gpuconv_half* __restrict__ B,
                                         float* __restrict__ D, int bug) {
    gemm_16x8x16<gpuconv_half, false>(A, B, D, bug);
}
extern "C" __global__ void warp_gemm_bf16(const gpuconv_bf16* __restrict__ A, const gpuconv_bf16* __restrict__ B,
                                          float* __restrict__ D, int bug) {
    gemm_16x8x16<gpuconv_bf16, true>(A, B, D, bug);
}

// A 16x8x8 TF32 GEMM from row-major float tiles, each input rounded with to_tf32 if `round`.
extern "C" __global__ void warp_gemm_tf32(const float* __restrict__ A, const float* __restrict__ B,
                                          float* __restrict__ D, int round) {
    const int lane = gpuconv::lane_id(), g = lane / 4, t = lane % 4;
    const float av[4] = {A[g * 8 + t], A[(g + 8) * 8 + t], A[g * 8 + t + 4], A[(g + 8) * 8 + t + 4]};
    const float bv[2] = {B[t * 8 + g], B[(t + 4) * 8 + g]};
    unsigned int a[4], b[2];
    for (int i = 0; i < 4; ++i) a[i] = gpuconv::bits_from_float(round ? gpuconv::to_tf32(av[i]) : av[i]);
    for (int i = 0; i < 2; ++i) b[i] = gpuconv::bits_from_float(round ? gpuconv::to_tf32(bv[i]) : bv[i]);
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    gpuconv::mma_m16n8k8_tf32(c, a, b, c);
    D[g * 8 + 2 * t] = c[0];
    D[g * 8 + 2 * t + 1] = c[1];
    D[(g + 8) * 8 + 2 * t] = c[2];
    D[(g + 8) * 8 + 2 * t + 1] = c[3];
}

// An mma in a block whose second warp has 16 threads (a partial warp): not allowed.
extern "C" __global__ void warp_mma_partial_warp(float* __restrict__ out) {
    const unsigned int a[4] = {0u, 0u, 0u, 0u}, b[2] = {0u, 0u};
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    gpuconv::mma_m16n8k16_f16(c, a, b, c);
    out[gpuconv::linear_thread_index()] = c[0];
}

// ------------------------------------------------------------------------------------- conversions ---
extern "C" __global__ void warp_to_tf32(const unsigned int* __restrict__ x, unsigned int* __restrict__ y, int n) {
    for (long long i = gpuconv::first_index(); i < n; i += gpuconv::index_stride())
        y[i] = gpuconv::bits_from_float(gpuconv::to_tf32(gpuconv::float_from_bits(x[i])));
}

extern "C" __global__ void warp_float_to_bf16(const unsigned int* __restrict__ x, gpuconv_bf16* __restrict__ y,
                                              int n) {
    for (long long i = gpuconv::first_index(); i < n; i += gpuconv::index_stride())
        y[i] = gpuconv::float_to_bf16(gpuconv::float_from_bits(x[i]));
}

extern "C" __global__ void warp_bf16_to_float(const gpuconv_bf16* __restrict__ x, unsigned int* __restrict__ y,
                                              int n) {
    for (long long i = gpuconv::first_index(); i < n; i += gpuconv::index_stride())
        y[i] = gpuconv::bits_from_float(gpuconv::to_acc(x[i]));
}

// ----------------------------------------------------------------------------------------- cp.async ---
// Thread t copies x[4t .. 4t+3] into shared memory (cp.async, 16 bytes); `before` is what it reads back
// before waiting, `after` what it reads of its right neighbour's copy after the wait and a barrier.
extern "C" __global__ void warp_cp_async_visibility(const float* __restrict__ x, float* __restrict__ before,
                                                    float* __restrict__ after) {
    __shared__ __align__(16) float tile[4 * 64];
    const int t = gpuconv::linear_thread_index(), n = (int)blockDim.x;
    gpuconv::cp_async_16(tile + 4 * t, x + 4 * t);
    gpuconv::cp_async_commit_group();
    for (int k = 0; k < 4; ++k) before[4 * t + k] = tile[4 * t + k];
    gpuconv::cp_async_wait_group<0>();
    __syncthreads();
    const int right = (t + 1) % n;
    for (int k = 0; k < 4; ++k) after[4 * t + k] = tile[4 * right + k];
}

// Three groups: a 4-byte, an 8-byte and a zero-filling 16-byte copy (12 bytes read), then a copy outside
// any group. out[t][step][0..7] after wait_group 2, 1, 0 and wait_all: tile4 (1), tile8 (2), tile16 (4),
// tile_last (1).
extern "C" __global__ void warp_cp_async_groups(const float* __restrict__ x, float* __restrict__ out) {
    __shared__ __align__(16) float tile4[64];
    __shared__ __align__(16) float tile8[2 * 64];
    __shared__ __align__(16) float tile16[4 * 64];
    __shared__ __align__(16) float tile_last[64];
    const int t = gpuconv::linear_thread_index();
    const float* src = x + 8 * t;  // 8 floats per thread
    gpuconv::cp_async_4(tile4 + t, src);
    gpuconv::cp_async_commit_group();
    gpuconv::cp_async_8(tile8 + 2 * t, src + 2);
    gpuconv::cp_async_commit_group();
    gpuconv::cp_async_16_zfill(tile16 + 4 * t, src + 4, 12);
    gpuconv::cp_async_commit_group();
    gpuconv::cp_async_4(tile_last + t, src + 1);  // not committed to a group: only wait_all covers it
    float* o = out + 32 * t;
    for (int step = 0; step < 4; ++step) {
        if (step == 0) gpuconv::cp_async_wait_group<2>();
        else if (step == 1) gpuconv::cp_async_wait_group<1>();
        else if (step == 2) gpuconv::cp_async_wait_group<0>();
        else gpuconv::cp_async_wait_all();
        o[8 * step] = tile4[t];
        o[8 * step + 1] = tile8[2 * t];
        o[8 * step + 2] = tile8[2 * t + 1];
        for (int k = 0; k < 4; ++k) o[8 * step + 3 + k] = tile16[4 * t + k];
        o[8 * step + 7] = tile_last[t];
    }
}

// A cp.async broken on purpose. which 1: the destination is 4 bytes off 16-byte alignment; 2: the
// destination is global memory; 3: the source is shared memory.
extern "C" __global__ void warp_cp_async_bad(const float* __restrict__ x, float* __restrict__ y, int which) {
    __shared__ __align__(16) float tile[8 * 32];
    const int t = gpuconv::linear_thread_index();
    tile[8 * t + 4] = 0.0f;
    if (which == 1) gpuconv::cp_async_16(tile + 8 * t + 1, x + 4 * t);
    else if (which == 2) gpuconv::cp_async_16(y + 4 * t, x + 4 * t);
    else if (which == 3) gpuconv::cp_async_16(tile + 8 * t, tile + 8 * t + 4);
    gpuconv::cp_async_wait_all();
}
