// warp_primitives.cuh -- the warp-level building blocks of gpuconv's tensor-core kernels (sm_80 and newer):
// lane and warp ids, shuffle and vote wrappers, ldmatrix, mma.sync (float16, bfloat16, TF32 inputs with
// float32 accumulators), cvt.rna.tf32, cp.async (the bfloat16 storage type is common.cuh's).
//
// One text, three compilations:
//   * on the GPU (__CUDA_ARCH__: NVRTC or nvcc, sm_80+): inline PTX. Compiled for an older architecture,
//     ptxas rejects the instructions ("requires .target sm_80 or higher"); nothing else here needs sm_80;
//   * in the CPU emulator (tests/cuda_emulation/cuda_emulation.h defines GPUCONV_CUDA_EMULATION): plain C++
//     on the emulator's warp rendezvous (gpuconv_emu_warp_collective), computing for each lane exactly what
//     the PTX ISA says that lane receives;
//   * in nvcc's host pass (neither): bodies that are never called.
// Include it after common.cuh. No system headers (NVRTC on CI has none). The loader pastes this file in place
// of its `#include` line, like common.cuh.
//
// Sources of the fragment layouts (each lane's elements) and instruction semantics:
//   * PTX ISA, "Warp-level matrix load instruction: ldmatrix", "Matrix Fragments for mma.m16n8k16 with
//     floating point type" (.f16 / .bf16) and "Matrix Fragments for mma.m16n8k8" (.tf32) (section 9.7.14.5 in
//     PTX ISA 8.x), "cp.async", "cp.async.wait_group", "cvt";
//   * cross-checked against CUTLASS (github.com/NVIDIA/cutlass): include/cute/atom/mma_traits_sm80.hpp
//     (SM80_16x8x16_F32F16F16F32_TN, SM80_16x8x16_F32BF16BF16F32_TN, SM80_16x8x8_F32TF32TF32F32_TN: ALayout,
//     BLayout, CLayout), include/cute/atom/copy_traits_sm75.hpp (SM75_U32x{1,2,4}_LDSM_N,
//     SM75_U16x{2,4,8}_LDSM_T) and include/cute/arch/{mma_sm80,copy_sm75,copy_sm80}.hpp (the PTX strings);
//   * cvt.rna.tf32.f32 on sm_8x compiles to "if finite: bits += 0x1000; bits &= 0xffffe000" (SASS shown in
//     enp1s0.github.io/blog/cuda/2023/01/08/tf32-rna.html; tests/test_warp_emulation.py checks ptxas still
//     emits that for sm_80 and sm_90): the emulator does the same.
//
// Fragment layouts, groupID = lane / 4, tig = lane % 4 (threadID_in_group), "lo" = bits 0-15 of a register:
//   m16n8k16 .f16/.bf16, A (16x16, row-major) 4 x b32: a[0] = A[g][2t], A[g][2t+1] (lo, hi);
//       a[1] = A[g+8][2t..2t+1]; a[2] = A[g][2t+8..2t+9]; a[3] = A[g+8][2t+8..2t+9]
//     B (16x8, "col": K x N) 2 x b32: b[0] = B[2t][g], B[2t+1][g]; b[1] = B[2t+8][g], B[2t+9][g]
//   m16n8k8 .tf32, A (16x8) 4 x b32: a[0] = A[g][t]; a[1] = A[g+8][t]; a[2] = A[g][t+4]; a[3] = A[g+8][t+4]
//     B (8x8) 2 x b32: b[0] = B[t][g]; b[1] = B[t+4][g]
//   m16n8k4 .tf32, A (16x4) 2 x b32: a[0] = A[g][t]; a[1] = A[g+8][t]; B (4x8) 1 x b32: b[0] = B[t][g]
//     (CUTLASS: SM80_16x8x4_F32TF32TF32F32_TN)
//   C and D (16x8 float32, both shapes): c[0], c[1] = C[g][2t], C[g][2t+1]; c[2], c[3] = C[g+8][2t..2t+1]
//   ldmatrix .m8n8 .b16 xN: lanes 8i..8i+7 give the 16-byte-aligned shared addresses of rows 0..7 of matrix i
//     (lanes past 8N are ignored); r[i] of lane l = row l/4, elements 2(l%4), 2(l%4)+1 (lo, hi) of matrix i;
//     with .trans, of matrix i's transpose: elements (2(l%4), l/4) and (2(l%4)+1, l/4).
//
// The emulated mma: D[m][n] = C[m][n] + sum over k = 0, 1, ..., K-1 of A[m][k] * B[k][n], accumulated in
// float32 in that order (each product of two f16, bf16 or tf32 values is exact in float32; the tensor core's
// own summation order and rounding differ slightly: compare with a tolerance). The TF32 mma reads only the
// top 19 bits of each input (sign, exponent, 10 mantissa bits): the low 13 bits of a raw float32 are
// dropped (truncated), as the hardware does; round first with to_tf32 for round-to-nearest.
#ifndef GPUCONV_WARP_PRIMITIVES_CUH
#define GPUCONV_WARP_PRIMITIVES_CUH

#include "common.cuh"

#if defined(__CUDA_ARCH__)
#define GPUCONV_WARP_PTX 1
#elif defined(GPUCONV_CUDA_EMULATION)
#define GPUCONV_WARP_EMULATED 1
#endif

// The caller's file and line: the emulator's rendezvous requires every lane at the same call site, so each
// warp-level function takes them as trailing default arguments (evaluated where the kernel calls it).
#ifdef GPUCONV_WARP_EMULATED
#define GPUCONV_WARP_SITE , const char* site_file = __builtin_FILE(), int site_line = __builtin_LINE()
#define GPUCONV_WARP_SITE_ONLY const char* site_file = __builtin_FILE(), int site_line = __builtin_LINE()
#define GPUCONV_WARP_AT , site_file, site_line
#else
#define GPUCONV_WARP_SITE
#define GPUCONV_WARP_SITE_ONLY
#define GPUCONV_WARP_AT
#endif

namespace gpuconv {

// Two 16-bit values in one b32 register, `lo` in bits 0-15: the element order of every fragment below.
__device__ __forceinline__ unsigned int pack_half2(gpuconv_half lo, gpuconv_half hi) {
    return (unsigned int)lo.bits | ((unsigned int)hi.bits << 16);
}
__device__ __forceinline__ unsigned int pack_bf16x2(gpuconv_bf16 lo, gpuconv_bf16 hi) {
    return (unsigned int)lo.bits | ((unsigned int)hi.bits << 16);
}

// ----------------------------------------------------------------------------------------- TF32

// cvt.rna.tf32.f32: round to 10 mantissa bits, to nearest with ties away from zero; the low 13 bits of
// the result are zero. Inf and NaN are not rounded (their low 13 bits are cleared: a NaN whose payload
// lies only there becomes an infinity, as the sm_8x/sm_90 code does).
__device__ __forceinline__ float to_tf32(float x) {
#ifdef GPUCONV_WARP_PTX
    unsigned int r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return float_from_bits(r);
#else
    unsigned int u = bits_from_float(x);
    if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;  // sign-magnitude: rounds the magnitude half up
    return float_from_bits(u & 0xffffe000u);
#endif
}

// ----------------------------------------------------------------------------- lanes and warps

// The thread's index in its block, x fastest: lanes and warps are cut from it.
__device__ __forceinline__ int linear_thread_index() {
    return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

__device__ __forceinline__ int lane_id() {
#ifdef GPUCONV_WARP_PTX
    unsigned int lane;
    asm("mov.u32 %0, %%laneid;" : "=r"(lane));
    return (int)lane;
#else
    return linear_thread_index() & 31;
#endif
}

// The warp's index in its block (not %warpid, which is a hardware slot that may change).
__device__ __forceinline__ int warp_id() { return linear_thread_index() >> 5; }

// ------------------------------------------------------------------------------ shuffles, votes

__device__ __forceinline__ void syncwarp(unsigned int mask = 0xffffffffu GPUCONV_WARP_SITE) {
    __syncwarp(mask GPUCONV_WARP_AT);
}

template <typename T>
__device__ __forceinline__ T shfl_idx(unsigned int mask, T v, int src_lane, int width = 32 GPUCONV_WARP_SITE) {
    return __shfl_sync(mask, v, src_lane, width GPUCONV_WARP_AT);
}
template <typename T>
__device__ __forceinline__ T shfl_up(unsigned int mask, T v, unsigned int delta, int width = 32 GPUCONV_WARP_SITE) {
    return __shfl_up_sync(mask, v, delta, width GPUCONV_WARP_AT);
}
template <typename T>
__device__ __forceinline__ T shfl_down(unsigned int mask, T v, unsigned int delta, int width = 32 GPUCONV_WARP_SITE) {
    return __shfl_down_sync(mask, v, delta, width GPUCONV_WARP_AT);
}
template <typename T>
__device__ __forceinline__ T shfl_xor(unsigned int mask, T v, int lane_mask, int width = 32 GPUCONV_WARP_SITE) {
    return __shfl_xor_sync(mask, v, lane_mask, width GPUCONV_WARP_AT);
}

__device__ __forceinline__ bool warp_all(unsigned int mask, bool p GPUCONV_WARP_SITE) {
    return __all_sync(mask, p ? 1 : 0 GPUCONV_WARP_AT) != 0;
}
__device__ __forceinline__ bool warp_any(unsigned int mask, bool p GPUCONV_WARP_SITE) {
    return __any_sync(mask, p ? 1 : 0 GPUCONV_WARP_AT) != 0;
}
__device__ __forceinline__ unsigned int warp_ballot(unsigned int mask, bool p GPUCONV_WARP_SITE) {
    return __ballot_sync(mask, p ? 1 : 0 GPUCONV_WARP_AT);
}

// A sum over the `width`-lane segments of a full warp (xor butterfly: every lane gets its segment's sum).
template <typename T>
__device__ __forceinline__ T warp_sum(T v, int width = 32 GPUCONV_WARP_SITE) {
    for (int offset = width / 2; offset > 0; offset /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, offset, width GPUCONV_WARP_AT);
    return v;
}

// ----------------------------------------------------------------------- shared-memory addresses

// The 32-bit .shared address of a generic pointer into shared memory (what ldmatrix and cp.async take).
// __cvta_generic_to_shared (an NVVM builtin, in NVRTC without headers) rather than an inline-asm cvta: the
// compiler sees through it, so `shared_address(base + i)` folds into the instruction's immediate offset.
__device__ __forceinline__ unsigned int shared_address(const void* p) {
#ifdef GPUCONV_WARP_PTX
    return (unsigned int)__cvta_generic_to_shared(p);
#else
    (void)p;
    return 0;
#endif
}

#ifdef GPUCONV_WARP_EMULATED
namespace emulated {

// ldmatrix: in[l] -> lane l's row address; out[l] -> its N registers.
template <int N, bool TRANS>
void ldmatrix_combine(unsigned int mask, const void* const* in, void* const* out) {
    (void)mask;
    const unsigned char* rows[32];
    for (int l = 0; l < 32; ++l) rows[l] = *static_cast<const unsigned char* const*>(in[l]);
    for (int l = 0; l < 32; ++l) {
        unsigned int* r = static_cast<unsigned int*>(out[l]);
        for (int i = 0; i < N; ++i) {
            if (!TRANS) {  // row l/4 of matrix i, 32 bits at element 2 (l%4)
                memcpy(&r[i], rows[8 * i + l / 4] + 4 * (l % 4), 4);
            } else {       // column l/4 of matrix i, rows 2 (l%4) and 2 (l%4) + 1
                unsigned short lo, hi;
                memcpy(&lo, rows[8 * i + 2 * (l % 4)] + 2 * (l / 4), 2);
                memcpy(&hi, rows[8 * i + 2 * (l % 4) + 1] + 2 * (l / 4), 2);
                r[i] = (unsigned int)lo | ((unsigned int)hi << 16);
            }
        }
    }
}

template <int N, bool TRANS>
void ldmatrix(unsigned int (&r)[N], const void* row, const char* file, int line) {
    const int lane = lane_id();
    const char* what = TRANS ? (N == 1 ? "ldmatrix.x1.trans" : N == 2 ? "ldmatrix.x2.trans" : "ldmatrix.x4.trans")
                             : (N == 1 ? "ldmatrix.x1" : N == 2 ? "ldmatrix.x2" : "ldmatrix.x4");
    if (lane < 8 * N) {  // the lanes whose address is used
        if (reinterpret_cast<unsigned long long>(row) % 16 != 0)
            gpuconv_emu_fail(what, file, line, "lane %d's row address %p is not 16-byte aligned", lane, row);
        if (!gpuconv_emu_is_shared(row, 16))
            gpuconv_emu_fail(what, file, line, "lane %d's row address %p is not 16 bytes of one __shared__ variable",
                             lane, row);
    }
    const unsigned char* in = static_cast<const unsigned char*>(row);
    unsigned int out[N];
    gpuconv_emu_warp_collective(0xffffffffu, what, ldmatrix_combine<N, TRANS>, &in, out, true, file, line);
    for (int i = 0; i < N; ++i) r[i] = out[i];
}

enum MmaKind { MMA_F16, MMA_BF16, MMA_TF32, MMA_TF32_K4 };
struct MmaIn {
    unsigned int a[4], b[2];
    float c[4];
};

__device__ __forceinline__ float mma_element(unsigned int reg, int high, int kind) {
    const unsigned short bits = (unsigned short)(high ? reg >> 16 : reg & 0xffffu);
    if (kind == MMA_F16) {
        gpuconv_half h;
        h.bits = bits;
        return half_to_float(h);
    }
    gpuconv_bf16 b;
    b.bits = bits;
    return bf16_to_float(b);
}

// in[l] -> lane l's MmaIn; out[l] -> its 4 floats of D. The layouts of the PTX ISA (top of this file).
template <int KIND>
void mma_combine(unsigned int mask, const void* const* in, void* const* out) {
    (void)mask;
    const int K = KIND == MMA_TF32 ? 8 : KIND == MMA_TF32_K4 ? 4 : 16;
    float A[16][16], B[16][8], D[16][8];
    for (int l = 0; l < 32; ++l) {
        const MmaIn& x = *static_cast<const MmaIn*>(in[l]);
        const int g = l >> 2, t = l & 3;
        if (KIND == MMA_TF32_K4) {  // a[0..1], b[0]
            for (int i = 0; i < 2; ++i) A[g + 8 * i][t] = float_from_bits(x.a[i] & 0xffffe000u);
            B[t][g] = float_from_bits(x.b[0] & 0xffffe000u);
        } else if (KIND == MMA_TF32) {
            for (int i = 0; i < 4; ++i) A[g + 8 * (i & 1)][t + 4 * (i >> 1)] = float_from_bits(x.a[i] & 0xffffe000u);
            for (int i = 0; i < 2; ++i) B[t + 4 * i][g] = float_from_bits(x.b[i] & 0xffffe000u);
        } else {
            for (int i = 0; i < 8; ++i)
                A[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >> 2)] = mma_element(x.a[i >> 1], i & 1, KIND);
            for (int i = 0; i < 4; ++i) B[2 * t + (i & 1) + 8 * (i >> 1)][g] = mma_element(x.b[i >> 1], i & 1, KIND);
        }
        for (int i = 0; i < 4; ++i) D[g + 8 * (i >> 1)][2 * t + (i & 1)] = x.c[i];
    }
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 8; ++n) {
            float acc = D[m][n];
            for (int k = 0; k < K; ++k) acc += A[m][k] * B[k][n];
            D[m][n] = acc;
        }
    for (int l = 0; l < 32; ++l) {
        float* d = static_cast<float*>(out[l]);
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < 4; ++i) d[i] = D[g + 8 * (i >> 1)][2 * t + (i & 1)];
    }
}

template <int KIND>
void mma(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2], const float (&c)[4], const char* file,
         int line) {
    MmaIn x;  // a copy: d may be c
    for (int i = 0; i < 4; ++i) {
        x.a[i] = a[i];
        x.c[i] = c[i];
    }
    x.b[0] = b[0];
    x.b[1] = b[1];
    float out[4];
    const char* what = KIND == MMA_F16    ? "mma.m16n8k16.f32.f16"
                       : KIND == MMA_BF16 ? "mma.m16n8k16.f32.bf16"
                       : KIND == MMA_TF32 ? "mma.m16n8k8.f32.tf32"
                                          : "mma.m16n8k4.f32.tf32";
    gpuconv_emu_warp_collective(0xffffffffu, what, mma_combine<KIND>, &x, out, true, file, line);
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

}  // namespace emulated
#endif  // GPUCONV_WARP_EMULATED

// ------------------------------------------------------------------------------------- ldmatrix

// ldmatrix.sync.aligned.m8n8.xN{.trans}.shared.b16: a warp-wide load of N 8x8 matrices of 16-bit elements;
// `row` is this lane's row address (lanes 8i..8i+7: rows 0..7 of matrix i; 16-byte aligned, in shared
// memory). Every lane of the warp must call it (all 32 lanes exist). See the top of this file.
template <int N, bool TRANS>
__device__ __forceinline__ void ldmatrix(unsigned int (&r)[N], const void* row GPUCONV_WARP_SITE) {
    static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if defined(GPUCONV_WARP_PTX)
    const unsigned int a = shared_address(row);
    if constexpr (N == 1 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];" : "=r"(r[0]) : "r"(a) : "memory");
    else if constexpr (N == 1)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];" : "=r"(r[0]) : "r"(a) : "memory");
    else if constexpr (N == 2 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(a) : "memory");
    else if constexpr (N == 2)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(a) : "memory");
    else if constexpr (!TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
#elif defined(GPUCONV_WARP_EMULATED)
    emulated::ldmatrix<N, TRANS>(r, row GPUCONV_WARP_AT);
#else
    for (int i = 0; i < N; ++i) r[i] = 0;
    (void)row;
#endif
}

__device__ __forceinline__ void ldmatrix_x1(unsigned int (&r)[1], const void* row GPUCONV_WARP_SITE) {
    ldmatrix<1, false>(r, row GPUCONV_WARP_AT);
}
__device__ __forceinline__ void ldmatrix_x2(unsigned int (&r)[2], const void* row GPUCONV_WARP_SITE) {
    ldmatrix<2, false>(r, row GPUCONV_WARP_AT);
}
__device__ __forceinline__ void ldmatrix_x4(unsigned int (&r)[4], const void* row GPUCONV_WARP_SITE) {
    ldmatrix<4, false>(r, row GPUCONV_WARP_AT);
}
__device__ __forceinline__ void ldmatrix_x1_trans(unsigned int (&r)[1], const void* row GPUCONV_WARP_SITE) {
    ldmatrix<1, true>(r, row GPUCONV_WARP_AT);
}
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned int (&r)[2], const void* row GPUCONV_WARP_SITE) {
    ldmatrix<2, true>(r, row GPUCONV_WARP_AT);
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned int (&r)[4], const void* row GPUCONV_WARP_SITE) {
    ldmatrix<4, true>(r, row GPUCONV_WARP_AT);
}

// ------------------------------------------------------------------------------------------ mma

// D = A * B + C, mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: a, b hold packed float16 pairs.
// d may be c. Every lane of the warp must call it. Fragment layouts: the top of this file.
__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                                                 const float (&c)[4] GPUCONV_WARP_SITE) {
#if defined(GPUCONV_WARP_PTX)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
          "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(GPUCONV_WARP_EMULATED)
    emulated::mma<emulated::MMA_F16>(d, a, b, c GPUCONV_WARP_AT);
#else
    (void)a, (void)b;
    for (int i = 0; i < 4; ++i) d[i] = c[i];
#endif
}

// The same with bfloat16 pairs: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32.
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                                                  const float (&c)[4] GPUCONV_WARP_SITE) {
#if defined(GPUCONV_WARP_PTX)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
          "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(GPUCONV_WARP_EMULATED)
    emulated::mma<emulated::MMA_BF16>(d, a, b, c GPUCONV_WARP_AT);
#else
    (void)a, (void)b;
    for (int i = 0; i < 4; ++i) d[i] = c[i];
#endif
}

// D = A * B + C with TF32 inputs (float32 bits; their low 13 bits are ignored: use to_tf32 to round):
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32.
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                                                 const float (&c)[4] GPUCONV_WARP_SITE) {
#if defined(GPUCONV_WARP_PTX)
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
          "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(GPUCONV_WARP_EMULATED)
    emulated::mma<emulated::MMA_TF32>(d, a, b, c GPUCONV_WARP_AT);
#else
    (void)a, (void)b;
    for (int i = 0; i < 4; ++i) d[i] = c[i];
#endif
}

// The same at k = 4: mma.sync.aligned.m16n8k4.row.col.f32.tf32.tf32.f32. Half the work of m16n8k8; its A and
// B fragments hold one reduction index per lane (row pairs of A, one element of B), which 128-bit shared loads
// of a pixel-major tile fill without register moves (the TF32 wgrad, kernels/conv2d_tensor_core.cu).
__device__ __forceinline__ void mma_m16n8k4_tf32(float (&d)[4], const unsigned int (&a)[2], const unsigned int (&b)[1],
                                                 const float (&c)[4] GPUCONV_WARP_SITE) {
#if defined(GPUCONV_WARP_PTX)
    asm("mma.sync.aligned.m16n8k4.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%7, %8, %9, %10};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(b[0]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(GPUCONV_WARP_EMULATED)
    const unsigned int a4[4] = {a[0], a[1], 0u, 0u}, b2[2] = {b[0], 0u};
    emulated::mma<emulated::MMA_TF32_K4>(d, a4, b2, c GPUCONV_WARP_AT);
#else
    (void)a, (void)b;
    for (int i = 0; i < 4; ++i) d[i] = c[i];
#endif
}

// ------------------------------------------------------------------------------------- cp.async

// cp.async.cg.shared.global, 16 bytes (global -> shared, bypassing L1). Both addresses 16-byte aligned.
// The data is in shared memory only after a cp_async_wait_group covering its group (and, for other
// threads, a __syncthreads() after that): the emulator writes it there only then.
__device__ __forceinline__ void cp_async_16(void* shared_dst, const void* global_src GPUCONV_WARP_SITE) {
#if defined(GPUCONV_WARP_PTX)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(shared_address(shared_dst)), "l"(global_src)
                 : "memory");
#elif defined(GPUCONV_WARP_EMULATED)
    gpuconv_emu_cp_async(shared_dst, global_src, 16, 16 GPUCONV_WARP_AT);
#else
    (void)shared_dst, (void)global_src;
#endif
}

// The same, reading only the first src_bytes (0..16) bytes from global_src and zero-filling the rest
// (src_bytes = 0: nothing is read, e.g. a padding tap).
__device__ __forceinline__ void cp_async_16_zfill(void* shared_dst, const void* global_src,
                                                  int src_bytes GPUCONV_WARP_SITE) {
#if defined(GPUCONV_WARP_PTX)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared_address(shared_dst)), "l"(global_src),
                 "r"(src_bytes) : "memory");
#elif defined(GPUCONV_WARP_EMULATED)
    gpuconv_emu_cp_async(shared_dst, global_src, 16, src_bytes GPUCONV_WARP_AT);
#else
    (void)shared_dst, (void)global_src, (void)src_bytes;
#endif
}

// cp.async.ca.shared.global of 4 or 8 bytes (through L1; .cg takes only 16), both addresses aligned to it.
__device__ __forceinline__ void cp_async_4(void* shared_dst, const void* global_src GPUCONV_WARP_SITE) {
#if defined(GPUCONV_WARP_PTX)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(shared_address(shared_dst)), "l"(global_src)
                 : "memory");
#elif defined(GPUCONV_WARP_EMULATED)
    gpuconv_emu_cp_async(shared_dst, global_src, 4, 4 GPUCONV_WARP_AT);
#else
    (void)shared_dst, (void)global_src;
#endif
}

__device__ __forceinline__ void cp_async_8(void* shared_dst, const void* global_src GPUCONV_WARP_SITE) {
#if defined(GPUCONV_WARP_PTX)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(shared_address(shared_dst)), "l"(global_src)
                 : "memory");
#elif defined(GPUCONV_WARP_EMULATED)
    gpuconv_emu_cp_async(shared_dst, global_src, 8, 8 GPUCONV_WARP_AT);
#else
    (void)shared_dst, (void)global_src;
#endif
}

// cp.async.commit_group: this thread's copies issued since the last commit become one group.
__device__ __forceinline__ void cp_async_commit_group() {
#if defined(GPUCONV_WARP_PTX)
    asm volatile("cp.async.commit_group;" ::: "memory");
#elif defined(GPUCONV_WARP_EMULATED)
    gpuconv_emu_cp_async_commit();
#endif
}

// cp.async.wait_group N: wait until at most the N most recent groups of this thread are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
    static_assert(N >= 0 && N <= 7, "cp.async.wait_group takes 0..7");
#if defined(GPUCONV_WARP_PTX)
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#elif defined(GPUCONV_WARP_EMULATED)
    gpuconv_emu_cp_async_wait(N);
#endif
}

// cp.async.wait_all: commit the copies not yet in a group, and wait for all of them.
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(GPUCONV_WARP_PTX)
    asm volatile("cp.async.wait_all;" ::: "memory");
#elif defined(GPUCONV_WARP_EMULATED)
    gpuconv_emu_cp_async_commit();
    gpuconv_emu_cp_async_wait(0);
#endif
}

}  // namespace gpuconv

#endif  // GPUCONV_WARP_PRIMITIVES_CUH
