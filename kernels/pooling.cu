// pooling.cu -- 2-D max and average pooling, forward and backward, PyTorch semantics.
//
// Input (N, C, H, W), output (N, C, P, Q); window (p, q) covers rows
// [p*stride_h - pad_h, p*stride_h - pad_h + kernel_h) and the same for columns;
// P and Q (ceil_mode included) come from gpuconv._shapes.PoolGeometry, so every
// window holds at least one input pixel.
//
// Both backward kernels are gathers: each input pixel sums, in a fixed order, the
// gradients of the windows that cover it. No atomics, bitwise reproducible.
//
// Launch: any 1-D grid (grid-stride loops), any block size up to 256.
#include "common.cuh"

namespace gpuconv {

struct PoolShape {
    int N, C, H, W, P, Q;
    int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
};

#define GPUCONV_POOL_SHAPE_PARAMS                                                              \
    int N, int C, int H, int W, int P, int Q,                                                  \
    int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w
#define GPUCONV_POOL_SHAPE                                                                     \
    gpuconv::PoolShape{N, C, H, W, P, Q, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w}

// Window (p, q) clipped to the input: rows [h0, h1), columns [w0, w1).
struct Window {
    int h0, h1, w0, w1;
};

__device__ __forceinline__ Window input_window(const PoolShape& s, int p, int q) {
    const int h0 = p * s.stride_h - s.pad_h, w0 = q * s.stride_w - s.pad_w;
    return Window{max_of(h0, 0), min_of(h0 + s.kernel_h, s.H), max_of(w0, 0), min_of(w0 + s.kernel_w, s.W)};
}

// PyTorch's avg_pool2d divisor (PoolGeometry.window): the window clipped to the
// padded input when padding counts, to the input itself when it does not.
__device__ __forceinline__ int avg_divisor(const PoolShape& s, int p, int q, bool count_include_pad) {
    if (!count_include_pad) {
        const Window win = input_window(s, p, q);
        return (win.h1 - win.h0) * (win.w1 - win.w0);
    }
    const int h0 = p * s.stride_h - s.pad_h, w0 = q * s.stride_w - s.pad_w;
    const int h1 = min_of(h0 + s.kernel_h, s.H + s.pad_h), w1 = min_of(w0 + s.kernel_w, s.W + s.pad_w);
    return (h1 - h0) * (w1 - w0);
}

// The outputs whose windows cover input pixel (h, w): rows [p0, p1], columns [q0, q1].
struct Coverage {
    int p0, p1, q0, q1;
};

__device__ __forceinline__ Coverage windows_covering(const PoolShape& s, int h, int w) {
    return Coverage{max_of(ceil_div(h + s.pad_h - s.kernel_h + 1, s.stride_h), 0),
                    min_of(floor_div(h + s.pad_h, s.stride_h), s.P - 1),
                    max_of(ceil_div(w + s.pad_w - s.kernel_w + 1, s.stride_w), 0),
                    min_of(floor_div(w + s.pad_w, s.stride_w), s.Q - 1)};
}

template <typename Acc>
struct WindowMax {
    Acc value;
    int index;  // h * W + w within the plane
};

// The maximum of window (p, q) and where it first occurs, scanning row by row.
// A NaN is the maximum (the first NaN, as NumPy's argmax picks), so NaN
// propagates to the output; padding never wins (it acts as -inf).
template <typename T>
__device__ __forceinline__ WindowMax<typename AccT<T>::type> window_first_max(const T* __restrict__ plane,
                                                                             const PoolShape& s, int p, int q) {
    typedef typename AccT<T>::type Acc;
    const Window win = input_window(s, p, q);
    WindowMax<Acc> best{negative_infinity<Acc>(), win.h0 * s.W + win.w0};
    for (int h = win.h0; h < win.h1; ++h) {
        for (int w = win.w0; w < win.w1; ++w) {
            const Acc v = to_acc(plane[h * s.W + w]);
            if (is_nan(v)) return WindowMax<Acc>{v, h * s.W + w};
            if (v > best.value) best = WindowMax<Acc>{v, h * s.W + w};
        }
    }
    return best;
}

template <typename T>
__device__ __forceinline__ void max_pool2d_forward(const T* __restrict__ x, T* __restrict__ y, const PoolShape s) {
    const long long PQ = (long long)s.P * s.Q, HW = (long long)s.H * s.W;
    const long long total = (long long)s.N * s.C * PQ;
    for (long long e = first_index(); e < total; e += index_stride()) {
        const long long plane = e / PQ;
        const int pq = (int)(e - plane * PQ);
        y[e] = from_acc<T>(window_first_max(x + plane * HW, s, pq / s.Q, pq % s.Q).value);
    }
}

// dx[h, w] = sum of dy[p, q] over the windows whose first maximum is (h, w); the
// argmax is recomputed from x exactly as the forward pass found it.
template <typename T>
__device__ __forceinline__ void max_pool2d_backward(const T* __restrict__ dy, const T* __restrict__ x,
                                                    T* __restrict__ dx, const PoolShape s) {
    typedef typename AccT<T>::type Acc;
    const long long PQ = (long long)s.P * s.Q, HW = (long long)s.H * s.W;
    const long long total = (long long)s.N * s.C * HW;
    for (long long e = first_index(); e < total; e += index_stride()) {
        const long long plane = e / HW;
        const int hw = (int)(e - plane * HW);
        const Coverage cover = windows_covering(s, hw / s.W, hw % s.W);
        const T* x_plane = x + plane * HW;
        const T* dy_plane = dy + plane * PQ;
        Acc sum = Acc(0);
        for (int p = cover.p0; p <= cover.p1; ++p)
            for (int q = cover.q0; q <= cover.q1; ++q)
                if (window_first_max(x_plane, s, p, q).index == hw) sum += to_acc(dy_plane[p * s.Q + q]);
        dx[e] = from_acc<T>(sum);
    }
}

template <typename T>
__device__ __forceinline__ void avg_pool2d_forward(const T* __restrict__ x, T* __restrict__ y, const PoolShape s,
                                                   bool count_include_pad) {
    typedef typename AccT<T>::type Acc;
    const long long PQ = (long long)s.P * s.Q, HW = (long long)s.H * s.W;
    const long long total = (long long)s.N * s.C * PQ;
    for (long long e = first_index(); e < total; e += index_stride()) {
        const long long plane = e / PQ;
        const int pq = (int)(e - plane * PQ);
        const int p = pq / s.Q, q = pq % s.Q;
        const Window win = input_window(s, p, q);
        const T* x_plane = x + plane * HW;
        Acc sum = Acc(0);
        for (int h = win.h0; h < win.h1; ++h)
            for (int w = win.w0; w < win.w1; ++w) sum += to_acc(x_plane[h * s.W + w]);
        y[e] = from_acc<T>(sum / Acc(avg_divisor(s, p, q, count_include_pad)));
    }
}

// dx[h, w] = sum of dy[p, q] / divisor(p, q) over the windows covering (h, w).
template <typename T>
__device__ __forceinline__ void avg_pool2d_backward(const T* __restrict__ dy, T* __restrict__ dx, const PoolShape s,
                                                    bool count_include_pad) {
    typedef typename AccT<T>::type Acc;
    const long long PQ = (long long)s.P * s.Q, HW = (long long)s.H * s.W;
    const long long total = (long long)s.N * s.C * HW;
    for (long long e = first_index(); e < total; e += index_stride()) {
        const long long plane = e / HW;
        const int hw = (int)(e - plane * HW);
        const Coverage cover = windows_covering(s, hw / s.W, hw % s.W);
        const T* dy_plane = dy + plane * PQ;
        Acc sum = Acc(0);
        for (int p = cover.p0; p <= cover.p1; ++p)
            for (int q = cover.q0; q <= cover.q1; ++q)
                sum += to_acc(dy_plane[p * s.Q + q]) / Acc(avg_divisor(s, p, q, count_include_pad));
        dx[e] = from_acc<T>(sum);
    }
}

}  // namespace gpuconv

// ------------------------------------------------------------------ exports
// The loader instantiates each macro once per dtype (gpuconv/cuda/registry.py): NAME, the
// storage type T and its accumulator type ACC.
// Forward: x (N, C, H, W) -> y (N, C, P, Q). Backward: dy (N, C, P, Q) -> dx (N, C, H, W).
// count_include_pad is 0 or 1.

#define GPUCONV_MAXPOOL_FORWARD_KERNEL(NAME, T, ACC)                                           \
    extern "C" __global__ void NAME(const T* __restrict__ x, T* __restrict__ y,                \
                                    GPUCONV_POOL_SHAPE_PARAMS) {                               \
        gpuconv::max_pool2d_forward<T>(x, y, GPUCONV_POOL_SHAPE);                              \
    }

#define GPUCONV_MAXPOOL_BACKWARD_KERNEL(NAME, T, ACC)                                          \
    extern "C" __global__ void NAME(const T* __restrict__ dy, const T* __restrict__ x,         \
                                    T* __restrict__ dx, GPUCONV_POOL_SHAPE_PARAMS) {           \
        gpuconv::max_pool2d_backward<T>(dy, x, dx, GPUCONV_POOL_SHAPE);                        \
    }

#define GPUCONV_AVGPOOL_FORWARD_KERNEL(NAME, T, ACC)                                           \
    extern "C" __global__ void NAME(const T* __restrict__ x, T* __restrict__ y,                \
                                    GPUCONV_POOL_SHAPE_PARAMS, int count_include_pad) {        \
        gpuconv::avg_pool2d_forward<T>(x, y, GPUCONV_POOL_SHAPE, count_include_pad != 0);      \
    }

#define GPUCONV_AVGPOOL_BACKWARD_KERNEL(NAME, T, ACC)                                          \
    extern "C" __global__ void NAME(const T* __restrict__ dy, T* __restrict__ dx,              \
                                    GPUCONV_POOL_SHAPE_PARAMS, int count_include_pad) {        \
        gpuconv::avg_pool2d_backward<T>(dy, dx, GPUCONV_POOL_SHAPE, count_include_pad != 0);   \
    }
