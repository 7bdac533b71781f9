// pooling.cu -- 2-D max and average pooling, forward and backward, PyTorch semantics (plus ONNX's padding).
//
// Input (N, C, H, W), output (N, C, P, Q). Along each axis window p reads taps i < kernel at
// p * stride - pad_begin + i * dilation (gpuconv._shapes.PoolGeometry.taps, the one definition); a tap outside
// the input is padding, which never wins a maximum and adds nothing to a sum. Padding may exceed half the
// kernel, so a window may hold no input pixel: its maximum is the type's lowest value with index -1, its
// average 0. An adaptive geometry has PyTorch's bins instead: window p covers
// [floor(p * size / out), ceil((p + 1) * size / out)).
//
// Both backward kernels are gathers: each input pixel sums, in a fixed order, the gradients of the windows
// that read it. No atomics, bitwise reproducible.
//
// Launch: any 1-D grid (grid-stride loops), any block size up to 256.
#include "common.cuh"

namespace gpuconv {

// One axis of the pooling geometry.
struct PoolAxis {
    int size, out, kernel, stride, dilation, pad_begin, pad_end;
    bool adaptive;
};

struct PoolShape {
    int N, C;
    PoolAxis rows, cols;
};

#define GPUCONV_POOL_SHAPE_PARAMS                                                              \
    int N, int C, int H, int W, int P, int Q, int kernel_h, int kernel_w, int stride_h,        \
    int stride_w, int dilation_h, int dilation_w, int pad_top, int pad_bottom, int pad_left,   \
    int pad_right, int adaptive
#define GPUCONV_POOL_SHAPE                                                                     \
    gpuconv::PoolShape{N, C,                                                                   \
        gpuconv::PoolAxis{H, P, kernel_h, stride_h, dilation_h, pad_top, pad_bottom, adaptive != 0}, \
        gpuconv::PoolAxis{W, Q, kernel_w, stride_w, dilation_w, pad_left, pad_right, adaptive != 0}}

// The taps of window p along one axis: positions first + i * step; those in the input are
// i in [real_lo, real_hi); `counted` of them (from i = 0) count for count_include_pad.
struct AxisTaps {
    int first, step, real_lo, real_hi, counted;
};

__device__ __forceinline__ AxisTaps axis_taps(const PoolAxis& a, int p) {
    if (a.adaptive) {
        const int start = (int)((long long)p * a.size / a.out);
        const int stop = (int)(((long long)(p + 1) * a.size + a.out - 1) / a.out);
        return AxisTaps{start, 1, 0, stop - start, stop - start};
    }
    const int first = p * a.stride - a.pad_begin;
    const int lo = first >= 0 ? 0 : ceil_div(-first, a.dilation);
    const int hi = min_of(a.kernel, ceil_div(a.size - first, a.dilation));
    // PyTorch clips a ceil_mode window at the end of the padding: later taps are not counted.
    const int counted = min_of(a.kernel, max_of(ceil_div(a.size + a.pad_end - first, a.dilation), 0));
    return AxisTaps{first, a.dilation, lo, max_of(hi, lo), counted};
}

// Calls visit(p) for every window p with a tap on input position h (each once, in a fixed order).
template <typename Visit>
__device__ __forceinline__ void for_each_window(const PoolAxis& a, int h, Visit visit) {
    if (a.adaptive) {
        const int p0 = (int)((long long)h * a.out / a.size);
        const int p1 = min_of((int)(((long long)(h + 1) * a.out + a.size - 1) / a.size) - 1, a.out - 1);
        for (int p = p0; p <= p1; ++p) visit(p);
        return;
    }
    for (int i = 0; i < a.kernel; ++i) {
        const int offset = h + a.pad_begin - i * a.dilation;  // p * stride, if tap i of some window p reads h
        if (offset < 0) break;
        if (offset % a.stride == 0 && offset / a.stride < a.out) visit(offset / a.stride);
    }
}

// Average pooling's divisor of window (p, q) (PoolGeometry.divisors): divisor_override when > 0, else its
// counted taps or its real ones; 0 for a window without any (its average is 0).
__device__ __forceinline__ int avg_divisor(const PoolShape& s, int p, int q, bool count_include_pad,
                                           int divisor_override) {
    if (divisor_override > 0) return divisor_override;
    const AxisTaps r = axis_taps(s.rows, p), c = axis_taps(s.cols, q);
    if (count_include_pad) return r.counted * c.counted;
    return (r.real_hi - r.real_lo) * (c.real_hi - c.real_lo);
}

template <typename Acc>
struct WindowMax {
    Acc value;
    int index;  // h * W + w within the plane; -1 for a window of padding only
};

// The maximum of window (p, q) and where it is, scanning taps row by row with PyTorch's test (keep v when
// v > max or v is NaN): the last NaN, else the first largest value, so NaN propagates; padding never wins,
// and when every pixel is -inf the first of them does.
template <typename T>
__device__ __forceinline__ WindowMax<typename AccT<T>::type> window_first_max(const T* __restrict__ plane,
                                                                             const PoolShape& s, int p, int q) {
    typedef typename AccT<T>::type Acc;
    const AxisTaps r = axis_taps(s.rows, p), c = axis_taps(s.cols, q);
    const int W = s.cols.size;
    WindowMax<Acc> best{lowest_value<Acc>(), -1};
    for (int i = r.real_lo; i < r.real_hi; ++i) {
        const int h = r.first + i * r.step;
        for (int j = c.real_lo; j < c.real_hi; ++j) {
            const int index = h * W + c.first + j * c.step;
            const Acc v = to_acc(plane[index]);
            if (best.index < 0 || v > best.value || is_nan(v)) best = WindowMax<Acc>{v, index};
        }
    }
    return best;
}

// y[e] = the maximum of window e; with WITH_INDICES also its index (indices is unused otherwise).
template <typename T, bool WITH_INDICES>
__device__ __forceinline__ void max_pool2d_forward(const T* __restrict__ x, T* __restrict__ y,
                                                   long long* __restrict__ indices, const PoolShape s) {
    const int Q = s.cols.out;
    const long long PQ = (long long)s.rows.out * Q, HW = (long long)s.rows.size * s.cols.size;
    const long long total = (long long)s.N * s.C * PQ;
    for (long long e = first_index(); e < total; e += index_stride()) {
        const long long plane = e / PQ;
        const int pq = (int)(e - plane * PQ);
        const WindowMax<typename AccT<T>::type> best = window_first_max(x + plane * HW, s, pq / Q, pq % Q);
        y[e] = from_acc<T>(best.value);
        if (WITH_INDICES) indices[e] = best.index;
    }
}

// dx[h, w] = sum of dy[p, q] over the windows whose maximum is (h, w); the maximum is recomputed from x
// exactly as the forward pass found it.
template <typename T>
__device__ __forceinline__ void max_pool2d_backward(const T* __restrict__ dy, const T* __restrict__ x,
                                                    T* __restrict__ dx, const PoolShape s) {
    typedef typename AccT<T>::type Acc;
    const int W = s.cols.size, Q = s.cols.out;
    const long long PQ = (long long)s.rows.out * Q, HW = (long long)s.rows.size * W;
    const long long total = (long long)s.N * s.C * HW;
    for (long long e = first_index(); e < total; e += index_stride()) {
        const long long plane = e / HW;
        const int hw = (int)(e - plane * HW);
        const T* x_plane = x + plane * HW;
        const T* dy_plane = dy + plane * PQ;
        Acc sum = Acc(0);
        for_each_window(s.rows, hw / W, [&](int p) {
            for_each_window(s.cols, hw % W, [&](int q) {
                if (window_first_max(x_plane, s, p, q).index == hw) sum += to_acc(dy_plane[p * Q + q]);
            });
        });
        dx[e] = from_acc<T>(sum);
    }
}

template <typename T>
__device__ __forceinline__ void avg_pool2d_forward(const T* __restrict__ x, T* __restrict__ y, const PoolShape s,
                                                   bool count_include_pad, int divisor_override) {
    typedef typename AccT<T>::type Acc;
    const int W = s.cols.size, Q = s.cols.out;
    const long long PQ = (long long)s.rows.out * Q, HW = (long long)s.rows.size * W;
    const long long total = (long long)s.N * s.C * PQ;
    for (long long e = first_index(); e < total; e += index_stride()) {
        const long long plane = e / PQ;
        const int pq = (int)(e - plane * PQ);
        const int p = pq / Q, q = pq % Q;
        const AxisTaps r = axis_taps(s.rows, p), c = axis_taps(s.cols, q);
        const T* x_plane = x + plane * HW;
        Acc sum = Acc(0);
        for (int i = r.real_lo; i < r.real_hi; ++i)
            for (int j = c.real_lo; j < c.real_hi; ++j)
                sum += to_acc(x_plane[(r.first + i * r.step) * W + c.first + j * c.step]);
        const int divisor = avg_divisor(s, p, q, count_include_pad, divisor_override);
        y[e] = from_acc<T>(divisor == 0 ? Acc(0) : sum / Acc(divisor));
    }
}

// dx[h, w] = sum of dy[p, q] / divisor(p, q) over the windows reading (h, w).
template <typename T>
__device__ __forceinline__ void avg_pool2d_backward(const T* __restrict__ dy, T* __restrict__ dx, const PoolShape s,
                                                    bool count_include_pad, int divisor_override) {
    typedef typename AccT<T>::type Acc;
    const int W = s.cols.size, Q = s.cols.out;
    const long long PQ = (long long)s.rows.out * Q, HW = (long long)s.rows.size * W;
    const long long total = (long long)s.N * s.C * HW;
    for (long long e = first_index(); e < total; e += index_stride()) {
        const long long plane = e / HW;
        const int hw = (int)(e - plane * HW);
        const T* dy_plane = dy + plane * PQ;
        Acc sum = Acc(0);
        for_each_window(s.rows, hw / W, [&](int p) {
            for_each_window(s.cols, hw % W, [&](int q) {  // a window reading a pixel has a divisor > 0
                sum += to_acc(dy_plane[p * Q + q]) / Acc(avg_divisor(s, p, q, count_include_pad, divisor_override));
            });
        });
        dx[e] = from_acc<T>(sum);
    }
}

}  // namespace gpuconv

// ------------------------------------------------------------------ exports
// The loader instantiates each macro once per dtype (gpuconv/cuda/registry.py): NAME, the
// storage type T and its accumulator type ACC.
// Forward: x (N, C, H, W) -> y (N, C, P, Q) [and indices (N, C, P, Q), int64].
// Backward: dy (N, C, P, Q) -> dx (N, C, H, W). count_include_pad is 0 or 1; divisor_override 0 for none.

#define GPUCONV_MAXPOOL_FORWARD_KERNEL(NAME, T, ACC)                                           \
    extern "C" __global__ void NAME(const T* __restrict__ x, T* __restrict__ y,                \
                                    GPUCONV_POOL_SHAPE_PARAMS) {                               \
        gpuconv::max_pool2d_forward<T, false>(x, y, nullptr, GPUCONV_POOL_SHAPE);              \
    }

#define GPUCONV_MAXPOOL_FORWARD_INDICES_KERNEL(NAME, T, ACC)                                   \
    extern "C" __global__ void NAME(const T* __restrict__ x, T* __restrict__ y,                \
                                    long long* __restrict__ indices, GPUCONV_POOL_SHAPE_PARAMS) { \
        gpuconv::max_pool2d_forward<T, true>(x, y, indices, GPUCONV_POOL_SHAPE);               \
    }

#define GPUCONV_MAXPOOL_BACKWARD_KERNEL(NAME, T, ACC)                                          \
    extern "C" __global__ void NAME(const T* __restrict__ dy, const T* __restrict__ x,         \
                                    T* __restrict__ dx, GPUCONV_POOL_SHAPE_PARAMS) {           \
        gpuconv::max_pool2d_backward<T>(dy, x, dx, GPUCONV_POOL_SHAPE);                        \
    }

#define GPUCONV_AVGPOOL_FORWARD_KERNEL(NAME, T, ACC)                                           \
    extern "C" __global__ void NAME(const T* __restrict__ x, T* __restrict__ y,                \
                                    GPUCONV_POOL_SHAPE_PARAMS, int count_include_pad,          \
                                    int divisor_override) {                                    \
        gpuconv::avg_pool2d_forward<T>(x, y, GPUCONV_POOL_SHAPE, count_include_pad != 0,       \
                                       divisor_override);                                      \
    }

#define GPUCONV_AVGPOOL_BACKWARD_KERNEL(NAME, T, ACC)                                          \
    extern "C" __global__ void NAME(const T* __restrict__ dy, T* __restrict__ dx,              \
                                    GPUCONV_POOL_SHAPE_PARAMS, int count_include_pad,          \
                                    int divisor_override) {                                    \
        gpuconv::avg_pool2d_backward<T>(dy, dx, GPUCONV_POOL_SHAPE, count_include_pad != 0,    \
                                        divisor_override);                                     \
    }
