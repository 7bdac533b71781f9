// Wraps the float16 conversions of kernels/common.cuh in kernels, so that tests/test_kernels_emulated.py can
// check their portable C++ path -- the one every emulated float16 kernel runs -- against NumPy, bit for bit.
#include "../../kernels/common.cuh"

extern "C" __global__ void probe_float_to_half(const float* __restrict__ in, gpuconv_half* __restrict__ out,
                                               long long n) {
    for (long long i = gpuconv::first_index(); i < n; i += gpuconv::index_stride())
        out[i] = gpuconv::float_to_half(in[i]);
}

extern "C" __global__ void probe_half_to_float(const gpuconv_half* __restrict__ in, float* __restrict__ out,
                                               long long n) {
    for (long long i = gpuconv::first_index(); i < n; i += gpuconv::index_stride())
        out[i] = gpuconv::half_to_float(in[i]);
}
