// conv2d_depthwise.cu -- depthwise convolutions (groups == input channels) as a direct stencil: fprop,
// stride-1 dgrad and wgrad.
//
// A depthwise layer does R*S multiply-adds per output and reads each input pixel about R*S/(stride_h *
// stride_w) times: it is bound by memory traffic, not arithmetic, so the kernel is built to move few bytes
// per output. A block computes a TILE_P x TILE_Q tile of one output plane: it stages the input patch the
// tile reads (with its halo) in shared memory once, coalesced, and the filter taps beside it; each thread
// then forms one output from shared memory. Per output that is about patch/(TILE_P*TILE_Q) global reads
// (1.3 for a 3x3 stride-1 layer) and one write, against R*S reads for a gather.
//
//     out[n, o, p, q] = sum over j < in_per_out, (r, s) of in[n, in_first(o) + j, p*stride_h - pad_top +
//                       r*dil_h, q*stride_w - pad_left + s*dil_w] * w[w_first(o) + j, tap(r, s)]
// fprop: o an output channel k, in channel k / m (m = K / C channels per group), w row k.
// dgrad at stride 1: o an input channel c, summing the m output channels c*m + j of dy against the filter
// turned by 180 degrees, padding dil*(R-1) - pad.
//
// Launch: grid (tiles of the output plane, output channels, images), TILE_P * TILE_Q threads.
#include "common.cuh"

namespace gpuconv {

struct DepthwiseTile {
    static constexpr int TILE_P = 8, TILE_Q = 32, THREADS = TILE_P * TILE_Q;
    static constexpr int PATCH_CAPACITY = 4096;  // elements of the staged input patch
    static constexpr int TAP_CAPACITY = 64;      // R * S
};

struct DepthwiseConv {
    int N, in_channels, H, W;    // input
    int out_channels, P, Q;      // output
    int R, S, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left;
    int in_per_out, in_divisor, in_multiplier;  // in_first(o) = o / in_divisor * in_multiplier
    int w_multiplier;                           // filter row of (o, j): o * w_multiplier + j
    bool flip;
};

template <typename T>
__device__ __forceinline__ void depthwise_conv(const T* __restrict__ in, const T* __restrict__ w,
                                               T* __restrict__ out, const DepthwiseConv cv) {
    typedef typename AccT<T>::type Acc;
    typedef DepthwiseTile Tile;
    __shared__ Acc patch[Tile::PATCH_CAPACITY];
    __shared__ Acc taps[Tile::TAP_CAPACITY];

    const int tid = (int)threadIdx.x;
    const int tiles_q = (cv.Q + Tile::TILE_Q - 1) / Tile::TILE_Q;
    const int p0 = (int)blockIdx.x / tiles_q * Tile::TILE_P, q0 = (int)blockIdx.x % tiles_q * Tile::TILE_Q;
    const int o = (int)blockIdx.y;
    const long long n = blockIdx.z;
    // The patch the tile's outputs inside the plane read (a tile at the plane's edge reads less).
    const int patch_h = (min_of(Tile::TILE_P, cv.P - p0) - 1) * cv.stride_h + (cv.R - 1) * cv.dil_h + 1;
    const int patch_w = (min_of(Tile::TILE_Q, cv.Q - q0) - 1) * cv.stride_w + (cv.S - 1) * cv.dil_w + 1;
    const int h0 = p0 * cv.stride_h - cv.pad_top, w0 = q0 * cv.stride_w - cv.pad_left;
    const int rs = cv.R * cv.S;
    const long long HW = (long long)cv.H * cv.W;
    const int in_first = o / cv.in_divisor * cv.in_multiplier;
    const int tp = tid / Tile::TILE_Q, tq = tid % Tile::TILE_Q;  // this thread's output in the tile

    Acc acc = Acc(0);
    for (int j = 0; j < cv.in_per_out; ++j) {
        const T* plane = in + (n * cv.in_channels + in_first + j) * HW;
        // Stage the patch row by row (a warp per row: coalesced; no division per element) and the taps.
        for (int ph = tid / 32; ph < patch_h; ph += Tile::THREADS / 32) {
            const int h = h0 + ph;
            for (int pw = tid % 32; pw < patch_w; pw += 32) {
                const int wi = w0 + pw;
                patch[ph * patch_w + pw] =
                    h >= 0 && h < cv.H && wi >= 0 && wi < cv.W ? to_acc(plane[(long long)h * cv.W + wi]) : Acc(0);
            }
        }
        const T* filter = w + ((long long)o * cv.w_multiplier + j) * rs;
        for (int t = tid; t < rs; t += Tile::THREADS) taps[t] = to_acc(filter[cv.flip ? rs - 1 - t : t]);
        __syncthreads();
        if (p0 + tp < cv.P && q0 + tq < cv.Q) {  // outputs past the plane have no patch
            const Acc* window = patch + tp * cv.stride_h * patch_w + tq * cv.stride_w;
            for (int r = 0; r < cv.R; ++r)
                for (int s = 0; s < cv.S; ++s)
                    acc += window[r * cv.dil_h * patch_w + s * cv.dil_w] * taps[r * cv.S + s];
        }
        __syncthreads();  // the next input channel overwrites the patch
    }
    const int p = p0 + tp, q = q0 + tq;
    if (p < cv.P && q < cv.Q) out[(n * cv.out_channels + o) * cv.P * cv.Q + (long long)p * cv.Q + q] = from_acc<T>(acc);
}

// The weight gradient of a depthwise convolution, one block per (output channel o, split of the images):
//     partial[split, o, tap] = sum over the split's images n and pixels (p, q) of dy[n, o, p, q] *
//                              x[n, o / m, p*stride_h - pad_top + r*dil_h, q*stride_w - pad_left + s*dil_w]
// Output tile by output tile, dy's tile and the input patch it reads are staged in shared memory; then
// each tap (r, s) has `lanes` threads, lane l summing the tile's pixels l, l + lanes, ...; at the end the
// lanes of a tap are added in lane order. Every sum has a fixed order: bitwise reproducible.
template <typename T>
__device__ __forceinline__ void depthwise_wgrad(const T* __restrict__ x, const T* __restrict__ dy,
                                                typename AccT<T>::type* __restrict__ partial, const ConvShape sh,
                                                int splits, long long images_per_split) {
    typedef typename AccT<T>::type Acc;
    typedef DepthwiseTile Tile;
    constexpr int PIXELS = Tile::TILE_P * Tile::TILE_Q;
    __shared__ Acc patch[Tile::PATCH_CAPACITY];
    __shared__ Acc grad[PIXELS];
    __shared__ Acc sums[Tile::THREADS];

    const int tid = (int)threadIdx.x;
    const int o = (int)blockIdx.x, split = (int)blockIdx.z;
    const int rs = sh.R * sh.S;
    const int lanes = Tile::THREADS / rs;            // threads per tap (the planner keeps rs <= 64: >= 4)
    const int tap = tid / lanes, lane = tid - tap * lanes;
    const bool has_tap = tap < rs;
    const int r = has_tap ? tap / sh.S : 0, s = has_tap ? tap - (tap / sh.S) * sh.S : 0;
    const int tiles_q = (sh.Q + Tile::TILE_Q - 1) / Tile::TILE_Q;
    const int tiles = (sh.P + Tile::TILE_P - 1) / Tile::TILE_P * tiles_q;
    const long long HW = (long long)sh.H * sh.W, PQ = (long long)sh.P * sh.Q;
    const int ci = o / (sh.K / sh.C);
    const long long n_begin = split * images_per_split;
    const long long n_end = min_of((long long)sh.N, n_begin + images_per_split);

    Acc acc = Acc(0);
    for (long long n = n_begin; n < n_end; ++n) {
        const T* plane = x + (n * sh.C + ci) * HW;
        const T* dy_plane = dy + (n * sh.K + o) * PQ;
        for (int tile = 0; tile < tiles; ++tile) {
            const int p0 = tile / tiles_q * Tile::TILE_P, q0 = tile % tiles_q * Tile::TILE_Q;
            const int h0 = p0 * sh.stride_h - sh.pad_top, w0 = q0 * sh.stride_w - sh.pad_left;
            // The patch the tile's pixels inside the plane read, and this thread's tap's offset in it.
            const int patch_h = (min_of(Tile::TILE_P, sh.P - p0) - 1) * sh.stride_h + (sh.R - 1) * sh.dilation_h + 1;
            const int patch_w = (min_of(Tile::TILE_Q, sh.Q - q0) - 1) * sh.stride_w + (sh.S - 1) * sh.dilation_w + 1;
            const int tap_offset = r * sh.dilation_h * patch_w + s * sh.dilation_w;
            for (int ph = tid / 32; ph < patch_h; ph += Tile::THREADS / 32) {
                const int h = h0 + ph;
                for (int pw = tid % 32; pw < patch_w; pw += 32) {
                    const int wi = w0 + pw;
                    patch[ph * patch_w + pw] =
                        h >= 0 && h < sh.H && wi >= 0 && wi < sh.W ? to_acc(plane[(long long)h * sh.W + wi]) : Acc(0);
                }
            }
            {
                const int p = p0 + tid / Tile::TILE_Q, q = q0 + tid % Tile::TILE_Q;
                grad[tid] = p < sh.P && q < sh.Q ? to_acc(dy_plane[(long long)p * sh.Q + q]) : Acc(0);
            }
            __syncthreads();
            if (has_tap)
                for (int i = lane; i < PIXELS; i += lanes) {
                    const int ip = i / Tile::TILE_Q, iq = i % Tile::TILE_Q;  // compile-time divisor: shifts
                    if (p0 + ip < sh.P && q0 + iq < sh.Q)
                        acc += grad[i] * patch[ip * sh.stride_h * patch_w + iq * sh.stride_w + tap_offset];
                }
            __syncthreads();  // the next tile overwrites the patch
        }
    }
    sums[tid] = acc;
    __syncthreads();
    if (tid < rs) {
        Acc total = Acc(0);
        for (int l = 0; l < lanes; ++l) total += sums[tid * lanes + l];
        partial[((long long)split * sh.K + o) * rs + tid] = total;
    }
}

}  // namespace gpuconv

// ------------------------------------------------------------------ exports
// Instantiated by the loader per registered variant and dtype (NAME, T, ACC).

// y (N, K, P, Q) from x (N, C, H, W) and w (K, 1, R, S), groups == C, K = m*C.
#define GPUCONV_DEPTHWISE_FPROP_KERNEL(NAME, T, ACC)                                          \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        NAME(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,             \
             GPUCONV_CONV_SHAPE_PARAMS) {                                                     \
        (void)groups;                                                                         \
        gpuconv::depthwise_conv<T>(x, w, y,                                                   \
                                   gpuconv::DepthwiseConv{N, C, H, W, K, P, Q, R, S, stride_h, stride_w, \
                                                          dilation_h, dilation_w, pad_top, pad_left, 1, \
                                                          K / C, 1, 1, false});               \
    }

// dx (N, C, H, W) from dy (N, K, P, Q) and w (K, 1, R, S) at stride 1: input channel c sums dy's channels
// c*m .. c*m + m - 1 (m = K / C) against the turned filter.
#define GPUCONV_DEPTHWISE_DGRAD_KERNEL(NAME, T, ACC)                                          \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        NAME(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,           \
             GPUCONV_CONV_SHAPE_PARAMS) {                                                     \
        (void)groups;                                                                         \
        (void)stride_h;                                                                       \
        (void)stride_w;                                                                       \
        gpuconv::depthwise_conv<T>(dy, w, dx,                                                 \
                                   gpuconv::DepthwiseConv{N, K, P, Q, C, H, W, R, S, 1, 1, dilation_h, \
                                                          dilation_w, dilation_h * (R - 1) - pad_top, \
                                                          dilation_w * (S - 1) - pad_left, K / C, 1, K / C, \
                                                          K / C, true});                      \
    }

// partial (splits, K, 1 * R * S) from x (N, C, H, W) and dy (N, K, P, Q), a split being k_per_split images;
// wgrad_splitk_reduce then adds the splits.
#define GPUCONV_DEPTHWISE_WGRAD_KERNEL(NAME, T, ACC)                                          \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        NAME(const T* __restrict__ x, const T* __restrict__ dy, ACC* __restrict__ partial,    \
             GPUCONV_CONV_SHAPE_PARAMS, int splits, long long k_per_split) {                  \
        gpuconv::depthwise_wgrad<T>(x, dy, partial, GPUCONV_CONV_SHAPE, splits, k_per_split); \
    }
