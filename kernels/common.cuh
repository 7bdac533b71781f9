// common.cuh -- types, conversions and index helpers shared by every gpuconv kernel.
//
// Rules for every kernel file (they keep the kernels compilable by NVRTC on any
// machine and by the CPU emulator, which compiles these files with g++):
//   * no system headers: NVRTC on CI has none of them, so float16 is our own
//     storage type and the few math helpers we need live here;
//   * shared memory + __syncthreads(); warp-level primitives (shuffles, ldmatrix,
//     mma.sync, cp.async) only through warp_primitives.cuh, whose emulated forms
//     the CPU emulator runs; no atomics or cooperative groups;
//   * every index that can exceed 2^31 (anything scaled by N*C*H*W) is long long.
//
// gpuconv/cuda/loader.py pastes this file in place of the `#include "common.cuh"`
// line of each kernel file before compiling, because CuPy's on-disk kernel cache
// is keyed on the source text alone and would not see an edited header.
#ifndef GPUCONV_COMMON_CUH
#define GPUCONV_COMMON_CUH

// IEEE binary16 as a storage type: the raw bits. Arithmetic happens in float.
struct gpuconv_half {
    unsigned short bits;
};

// bfloat16 as a storage type: the raw bits (the top half of a float32). Arithmetic happens in float.
struct gpuconv_bf16 {
    unsigned short bits;
};

namespace gpuconv {

// ------------------------------------------------------------------ bit casts

__device__ __forceinline__ float float_from_bits(unsigned int bits) {
    union { unsigned int u; float f; } v;
    v.u = bits;
    return v.f;
}

__device__ __forceinline__ unsigned int bits_from_float(float f) {
    union { float f; unsigned int u; } v;
    v.f = f;
    return v.u;
}

__device__ __forceinline__ double double_from_bits(unsigned long long bits) {
    union { unsigned long long u; double d; } v;
    v.u = bits;
    return v.d;
}

// ---------------------------------------------------------- float16 <-> float

__device__ __forceinline__ float half_to_float(gpuconv_half h) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
    return f;
#else
    // Portable path for the CPU emulator: every half is exactly a float.
    const unsigned int sign = (unsigned int)(h.bits & 0x8000u) << 16;
    const unsigned int exponent = (h.bits >> 10) & 0x1fu;
    const unsigned int mantissa = h.bits & 0x3ffu;
    if (exponent == 0x1fu)  // inf / NaN (payload kept)
        return float_from_bits(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0) {    // zero / subnormal: mantissa * 2^-24, exact in float
        const float magnitude = (float)mantissa * 5.9604644775390625e-08f;
        return sign ? -magnitude : magnitude;
    }
    return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
#endif
}

__device__ __forceinline__ gpuconv_half float_to_half(float f) {
    gpuconv_half h;
#ifdef __CUDA_ARCH__
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
#else
    // Portable path for the CPU emulator: round to nearest, ties to even.
    const unsigned int x = bits_from_float(f);
    const unsigned int sign = (x >> 16) & 0x8000u;
    const unsigned int magnitude = x & 0x7fffffffu;
    unsigned int result;
    if (magnitude > 0x7f800000u) {            // NaN: keep it quiet, keep the top payload bits
        result = 0x7e00u | ((magnitude >> 13) & 0x3ffu);
    } else if (magnitude >= 0x477ff000u) {    // >= 65520 rounds to infinity (inf stays inf)
        result = 0x7c00u;
    } else if (magnitude >= 0x38800000u) {    // normal half: >= 2^-14
        result = (magnitude - 0x38000000u) >> 13;  // rebias 127 -> 15, drop 13 bits
        const unsigned int rest = magnitude & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (result & 1u)))
            ++result;                          // a carry into the exponent is still right
    } else if (magnitude > 0x33000000u) {     // subnormal half: (2^-25, 2^-14)
        const unsigned int exponent = magnitude >> 23;
        const unsigned int significand = (magnitude & 0x7fffffu) | 0x800000u;
        const unsigned int shift = 126u - exponent;  // 14..24: units of 2^-24
        result = significand >> shift;
        const unsigned int rest = significand & ((1u << shift) - 1u);
        const unsigned int halfway = 1u << (shift - 1u);
        if (rest > halfway || (rest == halfway && (result & 1u)))
            ++result;
    } else {                                  // <= 2^-25 rounds to zero
        result = 0;
    }
    h.bits = (unsigned short)(sign | result);
#endif
    return h;
}

// -------------------------------------------------------- bfloat16 <-> float

__device__ __forceinline__ float bf16_to_float(gpuconv_bf16 h) { return float_from_bits((unsigned int)h.bits << 16); }

// Round to nearest, ties to even; NaN stays NaN (quiet; in software its sign and top payload bits are kept).
// cvt.rn.bf16.f32 needs sm_80: older cards (and the CPU emulator) round in integer arithmetic.
__device__ __forceinline__ gpuconv_bf16 float_to_bf16(float f) {
    gpuconv_bf16 h;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
#else
    const unsigned int x = bits_from_float(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        h.bits = (unsigned short)((x >> 16) | 0x0040u);
    else  // adding 0x7fff (+1 if the kept part is odd) carries exactly when the dropped half rounds up
        h.bits = (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
#endif
    return h;
}

// ------------------------------------------------- accumulator type and loads

// The type sums are kept in: float for float16, bfloat16 and float32, double for float64.
template <typename T> struct AccT;
template <> struct AccT<gpuconv_half> { typedef float type; };
template <> struct AccT<gpuconv_bf16> { typedef float type; };
template <> struct AccT<float> { typedef float type; };
template <> struct AccT<double> { typedef double type; };
// Integers are only compared (max pooling): their "accumulator" is the integer itself.
template <> struct AccT<unsigned char> { typedef unsigned char type; };
template <> struct AccT<signed char> { typedef signed char type; };
template <> struct AccT<short> { typedef short type; };
template <> struct AccT<int> { typedef int type; };
template <> struct AccT<long long> { typedef long long type; };

__device__ __forceinline__ float to_acc(gpuconv_half v) { return half_to_float(v); }
__device__ __forceinline__ float to_acc(gpuconv_bf16 v) { return bf16_to_float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ unsigned char to_acc(unsigned char v) { return v; }
__device__ __forceinline__ signed char to_acc(signed char v) { return v; }
__device__ __forceinline__ short to_acc(short v) { return v; }
__device__ __forceinline__ int to_acc(int v) { return v; }
__device__ __forceinline__ long long to_acc(long long v) { return v; }

template <typename T> __device__ __forceinline__ T from_acc(typename AccT<T>::type v);
template <> __device__ __forceinline__ gpuconv_half from_acc<gpuconv_half>(float v) { return float_to_half(v); }
template <> __device__ __forceinline__ gpuconv_bf16 from_acc<gpuconv_bf16>(float v) { return float_to_bf16(v); }
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ unsigned char from_acc<unsigned char>(unsigned char v) { return v; }
template <> __device__ __forceinline__ signed char from_acc<signed char>(signed char v) { return v; }
template <> __device__ __forceinline__ short from_acc<short>(short v) { return v; }
template <> __device__ __forceinline__ int from_acc<int>(int v) { return v; }
template <> __device__ __forceinline__ long long from_acc<long long>(long long v) { return v; }

// A zero of storage type T (all-zero bits is +0 for each of them).
template <typename T> __device__ __forceinline__ T zero_value() {
    return from_acc<T>(typename AccT<T>::type(0));
}

// ------------------------------------------------------------- small numerics

template <typename A> __device__ __forceinline__ bool is_nan(A v) { return v != v; }

// The least value of a type: what a padding tap holds for max pooling (-inf; an integer type's minimum).
template <typename A> __device__ __forceinline__ A lowest_value();
template <> __device__ __forceinline__ float lowest_value<float>() { return float_from_bits(0xff800000u); }
template <> __device__ __forceinline__ double lowest_value<double>() {
    return double_from_bits(0xfff0000000000000ull);
}
template <> __device__ __forceinline__ unsigned char lowest_value<unsigned char>() { return 0; }
template <> __device__ __forceinline__ signed char lowest_value<signed char>() { return -128; }
template <> __device__ __forceinline__ short lowest_value<short>() { return -32768; }
template <> __device__ __forceinline__ int lowest_value<int>() { return -2147483647 - 1; }
template <> __device__ __forceinline__ long long lowest_value<long long>() { return -9223372036854775807ll - 1; }

template <typename I> __device__ __forceinline__ I min_of(I a, I b) { return b < a ? b : a; }
template <typename I> __device__ __forceinline__ I max_of(I a, I b) { return a < b ? b : a; }

// Integer division rounding towards -infinity / +infinity, for b > 0 and any a.
__device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
__device__ __forceinline__ int ceil_div(int a, int b) { return -floor_div(-a, b); }

// ------------------------------------------------------------ grid-stride loops

// for (long long i = first_index(); i < total; i += index_stride()) visits every
// element once whatever the grid size.
__device__ __forceinline__ long long first_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ long long index_stride() {
    return (long long)gridDim.x * blockDim.x;
}

// ------------------------------------------------------------------- geometry

// One 2-D convolution, as gpuconv._shapes.ConvGeometry describes it: input
// (N, C, H, W), weight (K, C / groups, R, S), output (N, K, P, Q). Only the top
// and left padding enter the indexing; bottom and right are implied by P and Q.
struct ConvShape {
    int N, C, H, W, K, R, S, P, Q;
    int stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
    int groups;

    __device__ __forceinline__ int channels_per_group() const { return C / groups; }
    __device__ __forceinline__ int filters_per_group() const { return K / groups; }
};

// Every convolution kernel takes the shape as these 16 ints, in this order.
#define GPUCONV_CONV_SHAPE_PARAMS                                                   \
    int N, int C, int H, int W, int K, int R, int S, int P, int Q,                  \
    int stride_h, int stride_w, int dilation_h, int dilation_w, int pad_top, int pad_left, int groups
#define GPUCONV_CONV_SHAPE                                                          \
    gpuconv::ConvShape{N, C, H, W, K, R, S, P, Q,                                   \
                       stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left, groups}

}  // namespace gpuconv

#endif  // GPUCONV_COMMON_CUH
