// conv2d_depthwise.cu -- depthwise convolutions (groups == input channels) as a direct stencil: fprop,
// dgrad and wgrad, any stride.
//
// A depthwise layer does R*S multiply-adds per output and reads each input pixel about R*S/(stride_h *
// stride_w) times: it is bound by memory traffic, not arithmetic, so the kernel is built to move few bytes
// per output. A block computes a TILE_P x TILE_Q tile of one output plane: it stages the input patch the
// tile reads (with its halo) in shared memory once, coalesced, and the filter taps beside it; each thread
// then forms one output from shared memory. Per output that is about patch/(TILE_P*TILE_Q) global reads
// (1.3 for a 3x3 stride-1 layer) and one write, against R*S reads for a gather.
//
// fprop reads input channel k / m for output channel k (m = K / C, the channel multiplier); dgrad sums,
// for input channel c, dy's channels c*m .. c*m + m - 1; wgrad reduces over images and pixels per tap.
//
// Launch: grid (tiles of the output plane, output channels, images), TILE_P * TILE_Q threads.
#include "common.cuh"

namespace gpuconv {

struct DepthwiseTile {
    static constexpr int TILE_P = 8, TILE_Q = 32, THREADS = TILE_P * TILE_Q;
    static constexpr int PATCH_CAPACITY = 4096;  // elements of the staged input patch
    static constexpr int TAP_CAPACITY = 64;      // R * S
};

// y[n, k, p, q] = sum over (r, s) of x[n, k / m, p*stride_h - pad_top + r*dil_h, q*stride_w - pad_left +
// s*dil_w] * w[k, 0, r, s], for a TILE_P x TILE_Q tile of y[n, k].
template <typename T>
__device__ __forceinline__ void depthwise_fprop(const T* __restrict__ x, const T* __restrict__ w,
                                                T* __restrict__ y, const ConvShape sh) {
    typedef typename AccT<T>::type Acc;
    typedef DepthwiseTile Tile;
    __shared__ Acc patch[Tile::PATCH_CAPACITY];
    __shared__ Acc taps[Tile::TAP_CAPACITY];

    const int tid = (int)threadIdx.x;
    const int tiles_q = (sh.Q + Tile::TILE_Q - 1) / Tile::TILE_Q;
    const int p0 = (int)blockIdx.x / tiles_q * Tile::TILE_P, q0 = (int)blockIdx.x % tiles_q * Tile::TILE_Q;
    const int k = (int)blockIdx.y;
    const long long n = blockIdx.z;
    // The patch the tile's outputs inside the plane read (a tile at the plane's edge reads less).
    const int patch_h = (min_of(Tile::TILE_P, sh.P - p0) - 1) * sh.stride_h + (sh.R - 1) * sh.dilation_h + 1;
    const int patch_w = (min_of(Tile::TILE_Q, sh.Q - q0) - 1) * sh.stride_w + (sh.S - 1) * sh.dilation_w + 1;
    const int h0 = p0 * sh.stride_h - sh.pad_top, w0 = q0 * sh.stride_w - sh.pad_left;
    const int rs = sh.R * sh.S;
    const int tp = tid / Tile::TILE_Q, tq = tid % Tile::TILE_Q;  // this thread's output in the tile
    const T* plane = x + (n * sh.C + k / (sh.K / sh.C)) * sh.H * sh.W;

    // Stage the patch row by row (a warp per row: coalesced; no division per element) and the taps.
    for (int ph = tid / 32; ph < patch_h; ph += Tile::THREADS / 32) {
        const int h = h0 + ph;
        for (int pw = tid % 32; pw < patch_w; pw += 32) {
            const int wi = w0 + pw;
            patch[ph * patch_w + pw] =
                h >= 0 && h < sh.H && wi >= 0 && wi < sh.W ? to_acc(plane[(long long)h * sh.W + wi]) : Acc(0);
        }
    }
    for (int t = tid; t < rs; t += Tile::THREADS) taps[t] = to_acc(w[(long long)k * rs + t]);
    __syncthreads();
    const int p = p0 + tp, q = q0 + tq;
    if (p < sh.P && q < sh.Q) {  // outputs past the plane have no patch
        const Acc* window = patch + tp * sh.stride_h * patch_w + tq * sh.stride_w;
        Acc acc = Acc(0);
        for (int r = 0; r < sh.R; ++r)
            for (int s = 0; s < sh.S; ++s)
                acc += window[r * sh.dilation_h * patch_w + s * sh.dilation_w] * taps[r * sh.S + s];
        y[(n * sh.K + k) * sh.P * sh.Q + (long long)p * sh.Q + q] = from_acc<T>(acc);
    }
}

// The input gradient of a depthwise convolution at any stride, one block per TILE_P x TILE_Q tile of
// dx[n, c]: it stages the dy patch the tile's pixels receive from (rows p with p*stride_h = h + pad_top -
// r*dil_h for some tap r and a pixel h of the tile, the same for columns) of each of dy's channels
// c*m .. c*m + m - 1; each thread then visits only the taps that reach its pixel -- the filter rows r
// with (h + pad_top - r*dil_h) divisible by stride_h, found once per thread -- so no work falls on
// zero-inserted positions. Sums in a fixed order (channel, r, s): bitwise reproducible.
template <typename T>
__device__ __forceinline__ void depthwise_dgrad(const T* __restrict__ dy, const T* __restrict__ w,
                                                T* __restrict__ dx, const ConvShape sh) {
    typedef typename AccT<T>::type Acc;
    typedef DepthwiseTile Tile;
    __shared__ Acc patch[Tile::PATCH_CAPACITY];
    __shared__ Acc taps[Tile::TAP_CAPACITY];

    const int tid = (int)threadIdx.x;
    const int tiles_w = (sh.W + Tile::TILE_Q - 1) / Tile::TILE_Q;
    const int h0 = (int)blockIdx.x / tiles_w * Tile::TILE_P, w0 = (int)blockIdx.x % tiles_w * Tile::TILE_Q;
    const int c = (int)blockIdx.y;
    const long long n = blockIdx.z;
    const int m = sh.K / sh.C, rs = sh.R * sh.S;
    // dy rows and columns any pixel of the tile receives from.
    const int h_last = min_of(h0 + Tile::TILE_P, sh.H) - 1, w_last = min_of(w0 + Tile::TILE_Q, sh.W) - 1;
    const int p_lo = max_of(ceil_div(h0 + sh.pad_top - (sh.R - 1) * sh.dilation_h, sh.stride_h), 0);
    const int p_hi = min_of(floor_div(h_last + sh.pad_top, sh.stride_h), sh.P - 1);
    const int q_lo = max_of(ceil_div(w0 + sh.pad_left - (sh.S - 1) * sh.dilation_w, sh.stride_w), 0);
    const int q_hi = min_of(floor_div(w_last + sh.pad_left, sh.stride_w), sh.Q - 1);
    const int patch_h = max_of(p_hi - p_lo + 1, 0), patch_w = max_of(q_hi - q_lo + 1, 0);

    // This thread's pixel and the taps that reach it: r = r_first, r_first + r_step, ... (likewise s).
    const int h = h0 + (int)threadIdx.x / Tile::TILE_Q, wi = w0 + (int)threadIdx.x % Tile::TILE_Q;
    int r_first = 0, s_first = 0, r_step = 1, s_step = 1;
    while (r_first < sh.R && (h + sh.pad_top - r_first * sh.dilation_h) % sh.stride_h != 0) ++r_first;
    while (s_first < sh.S && (wi + sh.pad_left - s_first * sh.dilation_w) % sh.stride_w != 0) ++s_first;
    while ((r_step * sh.dilation_h) % sh.stride_h != 0) ++r_step;
    while ((s_step * sh.dilation_w) % sh.stride_w != 0) ++s_step;

    Acc acc = Acc(0);
    for (int j = 0; j < m; ++j) {
        const T* plane = dy + (n * sh.K + (long long)c * m + j) * sh.P * sh.Q;
        for (int ph = tid / 32; ph < patch_h; ph += Tile::THREADS / 32)
            for (int pw = tid % 32; pw < patch_w; pw += 32)
                patch[ph * patch_w + pw] = to_acc(plane[(long long)(p_lo + ph) * sh.Q + q_lo + pw]);
        const T* filter = w + ((long long)c * m + j) * rs;
        for (int t = tid; t < rs; t += Tile::THREADS) taps[t] = to_acc(filter[t]);
        __syncthreads();
        if (h < sh.H && wi < sh.W) {
            for (int r = r_first; r < sh.R; r += r_step) {
                const int p = (h + sh.pad_top - r * sh.dilation_h) / sh.stride_h;  // exact: r is in phase
                if (h + sh.pad_top - r * sh.dilation_h < 0 || p > p_hi) continue;
                for (int s = s_first; s < sh.S; s += s_step) {
                    const int q = (wi + sh.pad_left - s * sh.dilation_w) / sh.stride_w;
                    if (wi + sh.pad_left - s * sh.dilation_w < 0 || q > q_hi) continue;
                    acc += patch[(p - p_lo) * patch_w + q - q_lo] * taps[r * sh.S + s];
                }
            }
        }
        __syncthreads();  // the next channel overwrites the patch
    }
    if (h < sh.H && wi < sh.W) dx[(n * sh.C + c) * sh.H * sh.W + (long long)h * sh.W + wi] = from_acc<T>(acc);
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
        gpuconv::depthwise_fprop<T>(x, w, y, GPUCONV_CONV_SHAPE);                             \
    }

// dx (N, C, H, W) from dy (N, K, P, Q) and w (K, 1, R, S), any stride.
#define GPUCONV_DEPTHWISE_DGRAD_KERNEL(NAME, T, ACC)                                          \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        NAME(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,           \
             GPUCONV_CONV_SHAPE_PARAMS) {                                                     \
        gpuconv::depthwise_dgrad<T>(dy, w, dx, GPUCONV_CONV_SHAPE);                           \
    }

// partial (splits, K, 1 * R * S) from x (N, C, H, W) and dy (N, K, P, Q), a split being k_per_split images;
// wgrad_splitk_reduce then adds the splits.
#define GPUCONV_DEPTHWISE_WGRAD_KERNEL(NAME, T, ACC)                                          \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        NAME(const T* __restrict__ x, const T* __restrict__ dy, ACC* __restrict__ partial,    \
             GPUCONV_CONV_SHAPE_PARAMS, int splits, long long k_per_split) {                  \
        gpuconv::depthwise_wgrad<T>(x, dy, partial, GPUCONV_CONV_SHAPE, splits, k_per_split); \
    }
