// im2col.cu -- the column matrix of a convolution and its adjoint, for the
// "im2col" algorithm (im2col, then a cuBLAS GEMM per group, then col2im for dgrad).
//
// Column layout: col[(c, r, s), (n, p, q)], row-major, over all C channels:
//     col[((c*R + r)*S + s) * N*P*Q + (n*P + p)*Q + q]
//         = x[n, c, p*stride_h - pad_top + r*dilation_h, q*stride_w - pad_left + s*dilation_w]
// (zero in the padding). Group g's rows are the contiguous block starting at
// g*Cg*R*S, so y_g (Kg x N*P*Q) = w_g (Kg x Cg*R*S) @ col_g (Cg*R*S x N*P*Q).
// This is the transpose of gpuconv.reference.im2col's (N*P*Q, C*R*S) layout.
//
// Launch: any 1-D grid (grid-stride loops), a block size that is a multiple of 32 up to 256; im2col runs a
// warp per segment of Q columns (plan: 32 threads per segment), col2im a thread per pixel.
// The K and groups parameters are unused: every convolution kernel takes the same shape list.
#include "common.cuh"

namespace gpuconv {

// A warp copies one segment -- the Q columns (n, p, 0..Q-1) of one row (c, r, s) -- its lanes along q, so
// that reads and writes are coalesced and the index arithmetic (divisions included) is done once per
// segment, not per element. Grid-stride over segments, so any grid covers them.
template <typename T>
__device__ __forceinline__ void im2col_nchw(const T* __restrict__ x, T* __restrict__ col, const ConvShape shape) {
    const long long columns = (long long)shape.N * shape.P * shape.Q;
    const long long NP = (long long)shape.N * shape.P;
    const long long segments = (long long)shape.C * shape.R * shape.S * NP;
    const int lane = (int)(threadIdx.x % 32);
    const long long warps = index_stride() / 32;
    for (long long segment = first_index() / 32; segment < segments; segment += warps) {
        const long long row = segment / NP, np = segment - row * NP;
        const long long n = np / shape.P;
        const int p = (int)(np - n * shape.P);
        const int s = (int)(row % shape.S), r = (int)(row / shape.S % shape.R);
        const long long c = row / ((long long)shape.S * shape.R);
        const int h = p * shape.stride_h - shape.pad_top + r * shape.dilation_h;
        const bool row_inside = h >= 0 && h < shape.H;
        const T* x_row = x + ((n * shape.C + c) * shape.H + (row_inside ? h : 0)) * shape.W;
        T* col_segment = col + row * columns + np * shape.Q;
        const int w_first = s * shape.dilation_w - shape.pad_left;
        for (int q = lane; q < shape.Q; q += 32) {
            const int w = q * shape.stride_w + w_first;
            col_segment[q] = row_inside && w >= 0 && w < shape.W ? x_row[w] : zero_value<T>();
        }
    }
}

// The adjoint: every pixel sums the column entries that were copied from it. A
// gather (each output written by one thread, taps summed in a fixed order), so
// no atomics and bitwise reproducible results.
template <typename T>
__device__ __forceinline__ void col2im_nchw(const T* __restrict__ col, T* __restrict__ x, const ConvShape shape) {
    typedef typename AccT<T>::type Acc;
    const long long columns = (long long)shape.N * shape.P * shape.Q;
    const long long total = (long long)shape.N * shape.C * shape.H * shape.W;
    for (long long e = first_index(); e < total; e += index_stride()) {
        const int w = (int)(e % shape.W), h = (int)(e / shape.W % shape.H);
        const long long nc = e / ((long long)shape.W * shape.H);
        const long long n = nc / shape.C, c = nc - n * shape.C;
        const T* col_channel = col + c * shape.R * shape.S * columns + n * shape.P * shape.Q;
        Acc sum = Acc(0);
        for (int r = 0; r < shape.R; ++r) {
            const int p_strided = h + shape.pad_top - r * shape.dilation_h;  // = p * stride_h
            if (p_strided < 0) break;  // and for every larger r
            if (p_strided % shape.stride_h != 0 || p_strided / shape.stride_h >= shape.P) continue;
            const int p = p_strided / shape.stride_h;
            for (int s = 0; s < shape.S; ++s) {
                const int q_strided = w + shape.pad_left - s * shape.dilation_w;  // = q * stride_w
                if (q_strided < 0) break;
                if (q_strided % shape.stride_w != 0 || q_strided / shape.stride_w >= shape.Q) continue;
                const int q = q_strided / shape.stride_w;
                sum += to_acc(col_channel[(r * shape.S + s) * columns + (long long)p * shape.Q + q]);
            }
        }
        x[e] = from_acc<T>(sum);
    }
}

}  // namespace gpuconv

// ------------------------------------------------------------------ exports
// The loader instantiates each macro once per dtype (gpuconv/cuda/registry.py): NAME, the
// storage type T and its accumulator type ACC.
// im2col: x (N, C, H, W) -> col (C*R*S, N*P*Q).   col2im: col (C*R*S, N*P*Q) -> x (N, C, H, W).

#define GPUCONV_IM2COL_KERNEL(NAME, T, ACC)                                                    \
    extern "C" __global__ void NAME(const T* __restrict__ x, T* __restrict__ col,              \
                                    GPUCONV_CONV_SHAPE_PARAMS) {                               \
        gpuconv::im2col_nchw<T>(x, col, GPUCONV_CONV_SHAPE);                                   \
    }

#define GPUCONV_COL2IM_KERNEL(NAME, T, ACC)                                                    \
    extern "C" __global__ void NAME(const T* __restrict__ col, T* __restrict__ x,              \
                                    GPUCONV_CONV_SHAPE_PARAMS) {                               \
        gpuconv::col2im_nchw<T>(col, x, GPUCONV_CONV_SHAPE);                                   \
    }
