// Shared by selftest_kernels.cu, inlined textually like kernels/common.cuh: a float16 storage type whose
// conversions use PTX on the GPU and portable C++ elsewhere (the emulator never defines __CUDA_ARCH__).
#pragma once

struct selftest_half {
    unsigned short bits;
};

__device__ __forceinline__ float selftest_half_to_float(selftest_half h) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
    return f;
#else
    unsigned int sign = (unsigned int)(h.bits >> 15) << 31;
    unsigned int exponent = (h.bits >> 10) & 0x1F, mantissa = h.bits & 0x3FF;
    if (exponent == 0x1F) return __uint_as_float(sign | 0x7F800000u | (mantissa << 13));
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
        float magnitude = (float)mantissa * 5.9604644775390625e-8f;
        return sign ? -magnitude : magnitude;
    }
    return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
#endif
}

// Round-to-nearest-even float -> half for normal results (enough for the self-test values).
__device__ __forceinline__ selftest_half selftest_float_to_half(float f) {
    unsigned int u = __float_as_uint(f);
    unsigned int sign = (u >> 16) & 0x8000u;
    int exponent = (int)((u >> 23) & 0xFF) - 127 + 15;
    unsigned int mantissa = u & 0x7FFFFFu;
    selftest_half h;
    if (exponent <= 0) { h.bits = (unsigned short)sign; return h; }
    if (exponent >= 31) { h.bits = (unsigned short)(sign | 0x7C00u); return h; }
    unsigned int rounded = ((unsigned int)exponent << 10 | (mantissa >> 13));
    unsigned int rest = mantissa & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (rounded & 1u))) ++rounded;
    h.bits = (unsigned short)(sign | rounded);
    return h;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(double v) { return (float)v; }
__device__ __forceinline__ float to_float(selftest_half v) { return selftest_half_to_float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v) { return (T)v; }
template <> __device__ __forceinline__ selftest_half from_float<selftest_half>(float v) {
    return selftest_float_to_half(v);
}
