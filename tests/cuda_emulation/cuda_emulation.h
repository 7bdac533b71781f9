// cuda_emulation.h -- compile a CUDA .cu file as plain C++17 with g++ and run its kernels on the CPU.
//
// Why: CI has no GPU, but the kernels must still be tested for correctness. A block's threads run as
// cooperative fibers (ucontext): each runs until it reaches __syncthreads(), then the next one runs; a
// barrier opens when every thread of the block waits at it. Blocks run one after another, so a
// function-static array is exactly one block's shared memory (`__shared__` is `static`). Deterministic,
// no OS threads; the order of threads (and blocks) can be reversed to expose missing barriers.
//
// Errors that are real CUDA bugs -- some threads exited while others wait at a barrier, threads waiting at
// different __syncthreads() calls, __trap() -- stop the launch and are reported to the caller
// (tests/cuda_emulation/emulator.py turns them into Python exceptions).
//
// Memory faults: during a launch, SIGSEGV, SIGBUS and SIGFPE are caught (handler on its own sigaltstack,
// since fibers have small stacks). emulator.py places every buffer against PROT_NONE guard pages, so an
// out-of-bounds read or write of a buffer faults; the handler records the address, the instruction, the
// thread and block, and siglongjmps back to launch_grid, which abandons the launch (the signal mask and the
// previous handlers are restored; the next launch starts clean). emulator.py maps the address to the buffer
// (gpuconv_emu_last_fault). A fault in a fiber stack's guard page is reported as a stack overflow.
//
// This header is compiled into every module with -Wall -Wconversion: it must stay free of warnings (a
// module's compiler_warnings are the kernels' own).
//
// Warps: lane = the linear thread index % 32, warp = index / 32 (a block's last warp may be partial; its
// missing lanes are dropped from every mask). __syncwarp, the shuffles, the votes -- and, through
// gpuconv_emu_warp_collective, kernels/warp_primitives.cuh's ldmatrix and mma -- are rendezvous of the
// lanes named by the mask: each arriving lane leaves a pointer to its input and to its output and is
// suspended; the last lane of the mask to arrive computes every lane's output at once (so no lane can
// overwrite its input before all have been read) and wakes them. Every lane of the mask must reach the same
// call site (file:line, given by __builtin_FILE/__builtin_LINE default arguments) with the same mask, or
// the launch fails: "divergent warp primitive" (lanes at different sites or with different masks), or
// "deadlock" (a lane of the mask exited, or waits at __syncthreads()). A lane whose own bit is not in the
// mask is an error too. (CUDA on sm_70+ lets __syncwarp() calls at different sites match; this emulator
// does not.) A shuffle from a lane outside the mask, undefined on the GPU, reads all-ones bits (NaN, -1).
// __activemask() waits until nothing else can run (every other lane is blocked or exited): its result is
// the lanes of the warp that wait at the same __activemask() call, as converged lanes would be.
// cp.async (gpuconv_emu_cp_async): each copy's source is read when it is issued, and queued per thread;
// it is written to shared memory only when that thread's cp.async.wait_group covers its group, so a
// kernel that reads the destination first reads stale data or the NaN poison.
//
// Not modelled: atomics, dynamic (extern) shared memory, __constant__ memory written from the host,
// streams. Using one is a compile error here.
#ifndef GPUCONV_CUDA_EMULATION_H
#define GPUCONV_CUDA_EMULATION_H

// Kernel headers test this to pick their emulator code paths (kernels/warp_primitives.cuh).
#define GPUCONV_CUDA_EMULATION 1

#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <type_traits>
#include <ucontext.h>

// ------------------------------------------------------------------------------------------ keywords ---
#ifdef GPUCONV_EMU_PARSE_ONLY
// emulator.py preprocesses the kernel file with this defined to find the kernels after macro expansion.
#define __global__ __gpuconv_emu_global__
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__ static
// __restrict__ is a g++ keyword already.

// Every __shared__ variable is filled with NaN bytes at the start of each block, so a kernel that reads
// shared memory it did not write computes NaN. To find them: namespace-scope ones and those of ordinary
// functions go to one ELF section; g++ 12 ignores the section attribute on statics of function templates,
// so emulator.py also lists every function-local static from the symbol table (in CUDA device code a
// function-local static is a __shared__ variable in practice) and passes their addresses in.
#define __shared__ static __attribute__((section("gpuconv_emu_shared")))

static const int warpSize = 32;

// --------------------------------------------------------------------------------------- dim3, uint3 ---
struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

// The running fiber's coordinates. Hidden per shared library (-fvisibility=hidden); the scheduler sets
// threadIdx before it resumes a fiber. Kernels only read them.
static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

namespace gpuconv_emu {

enum FiberState { RUNNABLE, AT_BARRIER, AT_WARP, EXITED };

// A warp collective's work, run by the last lane of `mask` to arrive: in[lane] / out[lane] are the pointers
// each lane of the mask passed (null for the other lanes).
typedef void (*WarpCombine)(unsigned mask, const void* const* in, void* const* out);

// One queued cp.async: the source bytes (read when it was issued) and where they go.
struct AsyncCopy {
    void* destination;
    unsigned group;  // the thread's commit-group count when it was issued
    int bytes;
    unsigned char data[16];
};

struct Fiber {
    ucontext_t context;
    uint3 thread_index;
    FiberState state;
    const char* barrier_file;  // which __syncthreads() call it waits at
    int barrier_line;
    // AT_WARP: the warp collective it waits at
    const char* warp_file;
    int warp_line;
    unsigned warp_mask;
    const char* warp_what;
    WarpCombine warp_combine;
    const void* warp_in;
    void* warp_out;
    // cp.async queue (capacity kept between launches)
    AsyncCopy* copies;
    int copy_count, copy_capacity;
    unsigned groups_committed;
};

struct Launch {
    ucontext_t scheduler;
    Fiber* fibers = nullptr;
    int thread_count = 0;
    int current = -1;
    void (*body)(void*) = nullptr;
    void* body_context = nullptr;
    bool failed = false;
    char message[2048] = {0};
    // stacks: one mmap, each fiber's stack above a PROT_NONE guard page (an overflow crashes, loudly)
    char* stacks = nullptr;
    int stack_capacity = 0;
    Fiber* fiber_storage = nullptr;
    // configuration (gpuconv_emu_configure)
    bool poison_shared = true;
    bool reverse_order = false;
    size_t stack_size = 64 * 1024;
    // the function-local statics (addresses, sizes) emulator.py found in the symbol table
    void** shared_ranges = nullptr;
    size_t* shared_sizes = nullptr;
    int shared_range_count = 0;
    // statistics of the last launch
    long long barriers_passed = 0;
    long long warp_collectives = 0;
    bool warp_woke = false;  // a warp collective made fibers runnable during this sweep
    // memory faults (see the top of this file): armed only while launch_grid runs the blocks
    volatile sig_atomic_t fault_armed = 0;
    pthread_t launch_thread;
    sigjmp_buf fault_jump;
    struct sigaction previous_actions[3];
    stack_t previous_signal_stack;
    // what the handler recorded about the last fault (gpuconv_emu_last_fault)
    int fault_signal = 0;
    int fault_code = 0;
    int fault_is_write = -1;  // 1 write, 0 read, -1 unknown (only x86-64 reports it)
    int fault_in_thread = 0;  // 0: the fault was in the scheduler, not in a kernel thread
    int fault_stack_owner = -1;  // the fiber whose stack guard page faulted (a stack overflow), or -1
    void* fault_address = nullptr;
    void* fault_pc = nullptr;
    uint3 fault_thread = {0, 0, 0}, fault_block = {0, 0, 0};
};

static Launch state;
static const size_t guard_size = 4096;
static const int fault_signals[3] = {SIGSEGV, SIGBUS, SIGFPE};
// The handler's stack: a fault may come from a fiber whose own stack is exhausted.
alignas(64) static char signal_stack[64 * 1024];

extern "C" char __start_gpuconv_emu_shared[] __attribute__((visibility("hidden")));
extern "C" char __stop_gpuconv_emu_shared[] __attribute__((visibility("hidden")));
// Makes sure the section exists (and __start/__stop resolve) even in a file without shared memory.
__attribute__((section("gpuconv_emu_shared"), used)) static char shared_section_anchor[1];

__attribute__((format(printf, 1, 2))) static void fail(const char* format, ...);

static inline void yield_to_scheduler() {
    Fiber& self = state.fibers[state.current];
    swapcontext(&self.context, &state.scheduler);
}

// Called by a kernel (via a macro, to know the call site): wait until every thread of the block is here.
static void syncthreads(const char* file, int line) {
    if (state.fibers == nullptr) {
        fprintf(stderr, "gpuconv cuda_emulation: __syncthreads() outside a kernel launch\n");
        return;
    }
    Fiber& self = state.fibers[state.current];
    self.state = AT_BARRIER;
    self.barrier_file = file;
    self.barrier_line = line;
    yield_to_scheduler();
    // Resumed by the scheduler once the barrier opened; threadIdx is ours again. The asm tells the
    // compiler that memory (shared arrays) may have changed meanwhile.
    __asm__ __volatile__("" ::: "memory");
}

static void fiber_main() {
    state.body(state.body_context);
    state.fibers[state.current].state = EXITED;
    yield_to_scheduler();  // never resumed
}

static void fail(const char* format, ...) {
    if (!state.failed) {
        va_list args;
        va_start(args, format);
        vsnprintf(state.message, sizeof state.message, format, args);
        va_end(args);
        state.failed = true;
    }
    if (state.fibers != nullptr && state.current >= 0) yield_to_scheduler();  // abandon this fiber
}

static void release_stacks() {
    if (state.stacks == nullptr) return;
    munmap(state.stacks, (size_t)state.stack_capacity * (state.stack_size + guard_size));
    for (int i = 0; i < state.stack_capacity; ++i) free(state.fiber_storage[i].copies);
    delete[] state.fiber_storage;
    state.stacks = nullptr;
    state.fiber_storage = nullptr;
    state.stack_capacity = 0;
}

static bool reserve_stacks(int thread_count) {
    if (thread_count <= state.stack_capacity) return true;
    release_stacks();
    size_t slot = state.stack_size + guard_size;
    void* memory = mmap(nullptr, (size_t)thread_count * slot, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) return false;
    state.stacks = static_cast<char*>(memory);
    for (int i = 0; i < thread_count; ++i) mprotect(state.stacks + (size_t)i * slot, guard_size, PROT_NONE);
    state.fiber_storage = new Fiber[thread_count]();  // zeroed: no cp.async queues yet
    state.stack_capacity = thread_count;
    return true;
}

static void describe_waiting_threads(char* out, size_t size) {
    size_t used = 0;
    int listed = 0;
    out[0] = 0;
    for (int i = 0; i < state.thread_count && used + 1 < size; ++i) {
        const Fiber& f = state.fibers[i];
        if (f.state != AT_BARRIER) continue;
        if (listed == 4) {
            snprintf(out + used, size - used, ", ...");
            break;
        }
        int n = snprintf(out + used, size - used, "%sthread (%u,%u,%u) at %s:%d", listed ? ", " : "",
                         f.thread_index.x, f.thread_index.y, f.thread_index.z, f.barrier_file, f.barrier_line);
        if (n < 0) break;
        used += (size_t)n;
        ++listed;
    }
}

// --------------------------------------------------------------------------------------------- warps ---
// See the top of this file. A warp is the fibers [base, base + 32) with base = index & ~31.

static inline unsigned warp_lanes(int base) {  // the lanes that exist in the warp starting at fiber `base`
    const int count = state.thread_count - base;
    return count >= 32 ? 0xFFFFFFFFu : (1u << count) - 1u;
}

// The same warp collective: call site, kind and combine function.
static bool same_collective(const Fiber& a, const Fiber& b) {
    return a.warp_line == b.warp_line && a.warp_combine == b.warp_combine &&
           (a.warp_what == b.warp_what || strcmp(a.warp_what, b.warp_what) == 0) &&
           (a.warp_file == b.warp_file || strcmp(a.warp_file, b.warp_file) == 0);
}

// "0-15,17,20-21"
static void describe_lanes(unsigned lanes, char* out, size_t size) {
    size_t used = 0;
    out[0] = 0;
    for (int l = 0; l < 32 && used + 1 < size;) {
        if (!((lanes >> l) & 1u)) { ++l; continue; }
        int last = l;
        while (last + 1 < 32 && ((lanes >> (last + 1)) & 1u)) ++last;
        int n = last > l ? snprintf(out + used, size - used, "%s%d-%d", used ? "," : "", l, last)
                         : snprintf(out + used, size - used, "%s%d", used ? "," : "", l);
        if (n < 0) break;
        used += (size_t)n;
        l = last + 1;
    }
}

// What lane `lane` of the warp at `base` is doing, for an error message.
static void describe_lane(int base, int lane, char* out, size_t size) {
    const Fiber& f = state.fibers[base + lane];
    int n = snprintf(out, size, "lane %d (thread (%u,%u,%u)) ", lane, f.thread_index.x, f.thread_index.y,
                     f.thread_index.z);
    if (n < 0 || (size_t)n >= size) return;
    out += n;
    size -= (size_t)n;
    switch (f.state) {
        case AT_WARP:
            snprintf(out, size, "waits at %s at %s:%d with mask 0x%08x", f.warp_what, f.warp_file, f.warp_line,
                     f.warp_mask);
            break;
        case AT_BARRIER:
            snprintf(out, size, "waits at __syncthreads() at %s:%d", f.barrier_file, f.barrier_line);
            break;
        case EXITED:
            snprintf(out, size, "has exited (a lane named in the mask must not exit: undefined on the GPU)");
            break;
        default: snprintf(out, size, "is still running"); break;
    }
}

// The scheduler found no runnable fiber while some wait at a warp collective: it can never complete.
static void fail_warp_deadlock() {
    int first = 0;
    while (first < state.thread_count && state.fibers[first].state != AT_WARP) ++first;
    const Fiber& w = state.fibers[first];
    const int base = first & ~31;
    unsigned arrived = 0, missing = 0, exited = 0;
    bool diverged = false;
    for (unsigned rest = w.warp_mask; rest != 0; rest &= rest - 1) {
        const int l = __builtin_ctz(rest);
        const Fiber& f = state.fibers[base + l];
        if (f.state == AT_WARP && same_collective(f, w) && f.warp_mask == w.warp_mask) {
            arrived |= 1u << l;
        } else if (f.state == EXITED) {
            exited |= 1u << l;
        } else {
            missing |= 1u << l;
            diverged |= f.state == AT_WARP;
        }
    }
    char lanes[160], others[1200];
    size_t used = 0;
    others[0] = 0;
    if (exited != 0) {
        describe_lanes(exited, lanes, sizeof lanes);
        int n = snprintf(others, sizeof others, "lane%s %s of the mask %s exited (a lane named in the mask must "
                         "not exit: undefined on the GPU)", __builtin_popcount(exited) > 1 ? "s" : "", lanes,
                         __builtin_popcount(exited) > 1 ? "have" : "has");
        used = n > 0 ? (size_t)n : 0;
    }
    int listed = 0;
    for (unsigned rest = missing; rest != 0 && used + 1 < sizeof others; rest &= rest - 1) {
        if (listed == 3) {
            snprintf(others + used, sizeof others - used, "; ...");
            break;
        }
        char one[400];
        describe_lane(base, __builtin_ctz(rest), one, sizeof one);
        int n = snprintf(others + used, sizeof others - used, "%s%s", used ? "; " : "", one);
        if (n < 0) break;
        used += (size_t)n;
        ++listed;
    }
    describe_lanes(arrived, lanes, sizeof lanes);
    fail("%s in block (%u,%u,%u), warp %d: lanes %s wait at %s at %s:%d with mask 0x%08x, which the other lanes "
         "of the mask never reach: %s",
         diverged ? "divergent warp primitive (deadlock)" : "deadlock at a warp primitive",
         blockIdx.x, blockIdx.y, blockIdx.z, base / 32, lanes, w.warp_what, w.warp_file, w.warp_line, w.warp_mask,
         others);
}

// A rendezvous of the lanes of `mask` at this call site (see the top of this file). `combine` (may be
// null) runs once, in the last lane to arrive, with every lane's `in` and `out`; `full_warp`: the
// instruction needs all 32 lanes (.aligned: ldmatrix, mma).
static void warp_collective(unsigned mask, const char* what, WarpCombine combine, const void* in, void* out,
                            bool full_warp, const char* file, int line) {
    if (state.fibers == nullptr || state.current < 0) {
        fprintf(stderr, "gpuconv cuda_emulation: %s outside a kernel launch\n", what);
        return;
    }
    const int me = state.current, lane = me & 31, base = me - lane;
    Fiber& self = state.fibers[me];
    const unsigned existing = warp_lanes(base);
    if (full_warp && (existing != 0xFFFFFFFFu || mask != 0xFFFFFFFFu))
        fail("%s at %s:%d in thread (%u,%u,%u) of block (%u,%u,%u): it needs all 32 lanes of a warp, but warp %d "
             "has %d threads and the mask is 0x%08x (a block of whole warps is needed)", what, file, line,
             self.thread_index.x, self.thread_index.y, self.thread_index.z, blockIdx.x, blockIdx.y, blockIdx.z,
             base / 32, __builtin_popcount(existing), mask);
    if (!((mask >> lane) & 1u))
        fail("%s at %s:%d in thread (%u,%u,%u) of block (%u,%u,%u): the mask 0x%08x does not name the calling lane "
             "%d (of warp %d)", what, file, line, self.thread_index.x, self.thread_index.y, self.thread_index.z,
             blockIdx.x, blockIdx.y, blockIdx.z, mask, lane, base / 32);
    mask &= existing;
    self.warp_file = file;
    self.warp_line = line;
    self.warp_mask = mask;
    self.warp_what = what;
    self.warp_combine = combine;
    self.warp_in = in;
    self.warp_out = out;
    self.state = AT_WARP;
    bool complete = true;
    for (unsigned rest = mask & ~(1u << lane); rest != 0; rest &= rest - 1) {
        const int l = __builtin_ctz(rest);
        const Fiber& f = state.fibers[base + l];
        const bool there = f.state == AT_WARP && same_collective(f, self);
        if (there && f.warp_mask == mask) continue;
        complete = false;
        // The other lane can never get here (it exited, or waits for this one elsewhere): fail now.
        const bool waits_for_us = f.state == AT_WARP && ((f.warp_mask >> lane) & 1u);
        if (f.state == EXITED || f.state == AT_BARRIER || waits_for_us) {
            char other[400];
            describe_lane(base, l, other, sizeof other);
            fail("%s in block (%u,%u,%u), warp %d: lane %d (thread (%u,%u,%u)) reached %s at %s:%d with mask "
                 "0x%08x, but %s", (f.state == AT_WARP) ? "divergent warp primitive" : "deadlock at a warp primitive",
                 blockIdx.x, blockIdx.y, blockIdx.z, base / 32, lane, self.thread_index.x, self.thread_index.y,
                 self.thread_index.z, what, file, line, mask, other);
        }
    }
    if (!complete) {
        yield_to_scheduler();  // resumed once the last lane of the mask arrived and filled `out`
        __asm__ __volatile__("" ::: "memory");
        return;
    }
    const void* ins[32];
    void* outs[32];
    for (int l = 0; l < 32; ++l) {
        ins[l] = nullptr;
        outs[l] = nullptr;
    }
    for (unsigned rest = mask; rest != 0; rest &= rest - 1) {
        const int l = __builtin_ctz(rest);
        Fiber& f = state.fibers[base + l];
        ins[l] = f.warp_in;
        outs[l] = f.warp_out;
        f.state = RUNNABLE;
    }
    if (combine != nullptr) combine(mask, ins, outs);
    state.warp_woke = true;
    ++state.warp_collectives;
    __asm__ __volatile__("" ::: "memory");
}

// __activemask(): lanes are not in lockstep here, so a lane waits (AT_WARP, with an empty mask: it waits for no
// one) until the scheduler finds nothing else to run; then the lanes of a warp waiting at the same
// __activemask() call are the active ones (resolve_active_masks). Lanes that exited, or wait elsewhere, are not.
static const char active_mask_what[] = "__activemask";

static unsigned active_mask(const char* file, int line) {
    if (state.fibers == nullptr || state.current < 0) return 0;
    Fiber& self = state.fibers[state.current];
    unsigned result = 0;
    self.warp_file = file;
    self.warp_line = line;
    self.warp_mask = 0;
    self.warp_what = active_mask_what;
    self.warp_combine = nullptr;
    self.warp_in = nullptr;
    self.warp_out = &result;
    self.state = AT_WARP;
    yield_to_scheduler();
    return result;
}

// Called by the scheduler when nothing can run: answers every fiber waiting at __activemask(). False if none.
static bool resolve_active_masks() {
    bool resolved = false;
    for (int i = 0; i < state.thread_count; ++i) {
        const Fiber& f = state.fibers[i];
        if (f.state != AT_WARP || f.warp_what != active_mask_what) continue;
        const int base = i & ~31;
        unsigned group = 0;
        for (unsigned rest = warp_lanes(base); rest != 0; rest &= rest - 1) {
            const int l = __builtin_ctz(rest);
            if (state.fibers[base + l].state == AT_WARP && same_collective(state.fibers[base + l], f))
                group |= 1u << l;
        }
        for (unsigned rest = group; rest != 0; rest &= rest - 1) {
            Fiber& g = state.fibers[base + __builtin_ctz(rest)];
            *static_cast<unsigned*>(g.warp_out) = group;
            g.state = RUNNABLE;
        }
        resolved = true;
    }
    return resolved;
}

// Shuffles: PTX shfl.sync's definition, with c = ((32 - width) << 8) | clamp as CUDA's intrinsics pass it.
enum ShuffleMode { SHUFFLE_IDX, SHUFFLE_UP, SHUFFLE_DOWN, SHUFFLE_XOR };
struct ShuffleIn {
    unsigned long long value;
    int b, width;
};

template <int MODE>
static void shuffle_combine(unsigned mask, const void* const* in, void* const* out) {
    for (unsigned rest = mask; rest != 0; rest &= rest - 1) {
        const int l = __builtin_ctz(rest);
        const ShuffleIn& x = *static_cast<const ShuffleIn*>(in[l]);
        const int segmask = (32 - x.width) & 31, clamp = MODE == SHUFFLE_UP ? 0 : 31;
        const int max_lane = (l & segmask) | (clamp & ~segmask & 31), min_lane = l & segmask;
        const int b = x.b & 31;
        int j;
        bool valid;
        switch (MODE) {
            case SHUFFLE_UP: j = l - b; valid = j >= max_lane; break;
            case SHUFFLE_DOWN: j = l + b; valid = j <= max_lane; break;
            case SHUFFLE_XOR: j = l ^ b; valid = j <= max_lane; break;
            default: j = min_lane | (b & ~segmask & 31); valid = j <= max_lane; break;
        }
        if (!valid) j = l;
        // A source lane outside the mask: undefined on the GPU; all-ones bits here (NaN, -1).
        *static_cast<unsigned long long*>(out[l]) =
            ((mask >> j) & 1u) ? static_cast<const ShuffleIn*>(in[j])->value : ~0ull;
    }
}

template <int MODE, class T>
static T shuffle(const char* what, unsigned mask, T var, int b, int width, const char* file, int line) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 4- or 8-byte values");
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
        fail("%s at %s:%d in thread (%u,%u,%u) of block (%u,%u,%u): width %d is not a power of two in 1..32", what,
             file, line, threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z, width);
    ShuffleIn x;
    x.value = 0;
    memcpy(&x.value, &var, sizeof var);
    x.b = b;
    x.width = width;
    unsigned long long result = 0;
    warp_collective(mask, what, shuffle_combine<MODE>, &x, &result, false, file, line);
    T value;
    memcpy(&value, &result, sizeof value);
    return value;
}

// Votes: out = {ballot over the mask, the mask without the lanes that do not exist}.
static void vote_combine(unsigned mask, const void* const* in, void* const* out) {
    unsigned ballot = 0;
    for (unsigned rest = mask; rest != 0; rest &= rest - 1) {
        const int l = __builtin_ctz(rest);
        if (*static_cast<const int*>(in[l]) != 0) ballot |= 1u << l;
    }
    for (unsigned rest = mask; rest != 0; rest &= rest - 1) {
        unsigned* o = static_cast<unsigned*>(out[__builtin_ctz(rest)]);
        o[0] = ballot;
        o[1] = mask;
    }
}

static void vote(const char* what, unsigned mask, int predicate, unsigned (&result)[2], const char* file, int line) {
    warp_collective(mask, what, vote_combine, &predicate, result, false, file, line);
}

// ------------------------------------------------------------------------------------------ cp.async ---

static bool is_shared(const void* pointer, size_t bytes) {
    const char* p = static_cast<const char*>(pointer);
    if (p >= __start_gpuconv_emu_shared && p + bytes <= __stop_gpuconv_emu_shared) return true;
    for (int i = 0; i < state.shared_range_count; ++i) {
        const char* start = static_cast<const char*>(state.shared_ranges[i]);
        if (p >= start && p + bytes <= start + state.shared_sizes[i]) return true;
    }
    return false;
}

static void cp_async(void* destination, const void* source, int bytes, int source_bytes, const char* file,
                     int line) {
    if (state.fibers == nullptr || state.current < 0) {
        fprintf(stderr, "gpuconv cuda_emulation: cp.async outside a kernel launch\n");
        return;
    }
    Fiber& self = state.fibers[state.current];
    const char* problem = nullptr;
    if (bytes != 4 && bytes != 8 && bytes != 16) problem = "the size must be 4, 8 or 16 bytes";
    else if (source_bytes < 0 || source_bytes > bytes) problem = "the source size must be in 0..size";
    else if ((uintptr_t)destination % (uintptr_t)bytes != 0) problem = "the destination is not aligned to the size";
    else if ((uintptr_t)source % (uintptr_t)bytes != 0) problem = "the source is not aligned to the size";
    else if (!is_shared(destination, (size_t)bytes)) problem = "the destination is not in shared memory";
    else if (is_shared(source, 1)) problem = "the source is in shared memory, not global memory";
    if (problem != nullptr)
        fail("cp.async of %d bytes (%d from the source) at %s:%d in thread (%u,%u,%u) of block (%u,%u,%u): %s "
             "(destination %p, source %p)", bytes, source_bytes, file, line, self.thread_index.x, self.thread_index.y,
             self.thread_index.z, blockIdx.x, blockIdx.y, blockIdx.z, problem, destination, source);
    if (self.copy_count == self.copy_capacity) {
        const int capacity = self.copy_capacity ? 2 * self.copy_capacity : 16;
        void* grown = realloc(self.copies, (size_t)capacity * sizeof(AsyncCopy));
        if (grown == nullptr) fail("cp.async: out of memory for the copy queue");
        self.copies = static_cast<AsyncCopy*>(grown);
        self.copy_capacity = capacity;
    }
    AsyncCopy& copy = self.copies[self.copy_count++];
    copy.destination = destination;
    copy.group = self.groups_committed;
    copy.bytes = bytes;
    if (source_bytes > 0) memcpy(copy.data, source, (size_t)source_bytes);  // a fault here names the issuer
    memset(copy.data + source_bytes, 0, (size_t)(bytes - source_bytes));
}

static void cp_async_commit() {
    if (state.fibers != nullptr && state.current >= 0) ++state.fibers[state.current].groups_committed;
}

// cp.async.wait_group `pending`: this thread's copies of every group but the `pending` most recent
// committed ones land now (copies not yet committed to a group stay queued).
static void cp_async_wait(int pending) {
    if (state.fibers == nullptr || state.current < 0) return;
    Fiber& self = state.fibers[state.current];
    int kept = 0;
    for (int i = 0; i < self.copy_count; ++i) {
        const AsyncCopy& copy = self.copies[i];
        if ((unsigned long long)copy.group + (unsigned)pending < self.groups_committed)
            memcpy(copy.destination, copy.data, (size_t)copy.bytes);
        else
            self.copies[kept++] = copy;
    }
    self.copy_count = kept;
    __asm__ __volatile__("" ::: "memory");
}

// ------------------------------------------------------------------------------------- memory faults ---
static void fault_handler(int signal_number, siginfo_t* info, void* context) {
    if (!state.fault_armed || !pthread_equal(pthread_self(), state.launch_thread)) {
        // Not a fault of a kernel this library runs: put the previous handler back and return, so the
        // faulting instruction runs again and faults into it (faulthandler, or the default: a crash).
        for (int i = 0; i < 3; ++i)
            if (fault_signals[i] == signal_number) sigaction(signal_number, &state.previous_actions[i], nullptr);
        return;
    }
    state.fault_armed = 0;
    state.fault_signal = signal_number;
    state.fault_code = info->si_code;
    state.fault_address = info->si_addr;
    state.fault_pc = nullptr;
    state.fault_is_write = -1;
    const ucontext_t* uc = static_cast<const ucontext_t*>(context);
#if defined(__x86_64__)
    state.fault_pc = reinterpret_cast<void*>(uc->uc_mcontext.gregs[REG_RIP]);
    if (signal_number == SIGSEGV) state.fault_is_write = (uc->uc_mcontext.gregs[REG_ERR] & 2) ? 1 : 0;
#elif defined(__aarch64__)
    state.fault_pc = reinterpret_cast<void*>(uc->uc_mcontext.pc);
#else
    (void)uc;
#endif
    state.fault_in_thread = state.fibers != nullptr && state.current >= 0;
    state.fault_thread = state.fault_in_thread ? state.fibers[state.current].thread_index : uint3{0, 0, 0};
    state.fault_block = blockIdx;
    siglongjmp(state.fault_jump, 1);  // restores the signal mask saved by sigsetjmp
}

static void install_fault_handlers() {
    stack_t alternate;
    alternate.ss_sp = signal_stack;
    alternate.ss_size = sizeof signal_stack;
    alternate.ss_flags = 0;
    sigaltstack(&alternate, &state.previous_signal_stack);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = fault_handler;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    for (int i = 0; i < 3; ++i) sigaction(fault_signals[i], &action, &state.previous_actions[i]);
}

static void uninstall_fault_handlers() {
    for (int i = 0; i < 3; ++i) sigaction(fault_signals[i], &state.previous_actions[i], nullptr);
    sigaltstack(&state.previous_signal_stack, nullptr);
}

// The fiber whose stack guard page holds `address`, or -1.
static int stack_guard_owner(const void* address) {
    if (state.stacks == nullptr) return -1;
    const char* a = static_cast<const char*>(address);
    const size_t slot = state.stack_size + guard_size;
    for (int i = 0; i < state.stack_capacity; ++i) {
        const char* guard = state.stacks + (size_t)i * slot;
        if (a >= guard && a < guard + guard_size) return i;
    }
    return -1;
}

static const char* fault_kind() {
    switch (state.fault_signal) {
        case SIGSEGV: return "SIGSEGV";
        case SIGBUS: return "SIGBUS";
        default: return state.fault_code == FPE_INTDIV ? "SIGFPE: integer division by zero" :
                        state.fault_code == FPE_INTOVF ? "SIGFPE: integer overflow" : "SIGFPE";
    }
}

// After the handler jumped back: the launch failed with a message describing the fault.
static void report_fault() {
    state.current = -1;  // so fail() does not yield to a scheduler that is gone
    char who[160];
    if (state.fault_in_thread)
        snprintf(who, sizeof who, "thread (%u,%u,%u) of block (%u,%u,%u)", state.fault_thread.x, state.fault_thread.y,
                 state.fault_thread.z, state.fault_block.x, state.fault_block.y, state.fault_block.z);
    else
        snprintf(who, sizeof who, "the emulator's scheduler (block (%u,%u,%u))", state.fault_block.x,
                 state.fault_block.y, state.fault_block.z);
    state.fault_stack_owner = state.fault_signal == SIGSEGV ? stack_guard_owner(state.fault_address) : -1;
    if (state.fault_stack_owner >= 0)
        fail("stack overflow in %s: its %zu KiB fiber stack is exhausted (a large local array or deep "
             "recursion; configure(stack_kib=...) gives more)", who, state.stack_size / 1024);
    else if (state.fault_signal == SIGFPE)
        fail("arithmetic fault (%s) in %s", fault_kind(), who);
    else
        fail("memory fault (%s) at address %p in %s", fault_kind(), state.fault_address, who);
}

// Runs one block to completion; false (with state.message) on a CUDA programming error.
static bool run_block() {
    const int n = state.thread_count;
    if (state.poison_shared) {
        memset(__start_gpuconv_emu_shared, 0xFF, (size_t)(__stop_gpuconv_emu_shared - __start_gpuconv_emu_shared));
        for (int i = 0; i < state.shared_range_count; ++i) memset(state.shared_ranges[i], 0xFF, state.shared_sizes[i]);
    }
    const size_t slot = state.stack_size + guard_size;
    for (int i = 0; i < n; ++i) {
        Fiber& f = state.fibers[i];
        f.thread_index = uint3{(unsigned)i % blockDim.x, ((unsigned)i / blockDim.x) % blockDim.y,
                               (unsigned)i / (blockDim.x * blockDim.y)};
        f.state = RUNNABLE;
        f.barrier_file = nullptr;
        f.barrier_line = 0;
        f.copy_count = 0;  // copies a previous block never waited for are dropped
        f.groups_committed = 0;
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = state.stacks + (size_t)i * slot + guard_size;
        f.context.uc_stack.ss_size = state.stack_size;
        f.context.uc_link = nullptr;
        makecontext(&f.context, fiber_main, 0);
    }
    for (;;) {
        state.warp_woke = false;
        for (int k = 0; k < n; ++k) {
            int i = state.reverse_order ? n - 1 - k : k;
            Fiber& f = state.fibers[i];
            if (f.state != RUNNABLE) continue;
            state.current = i;
            threadIdx = f.thread_index;
            swapcontext(&state.scheduler, &f.context);
            state.current = -1;
            if (state.failed) return false;
        }
        if (state.warp_woke) continue;  // a warp collective completed: its lanes run again
        int waiting = 0, exited = 0, at_warp = 0;
        for (int i = 0; i < n; ++i) {
            waiting += state.fibers[i].state == AT_BARRIER;
            exited += state.fibers[i].state == EXITED;
            at_warp += state.fibers[i].state == AT_WARP;
        }
        if (exited == n) return true;
        if (at_warp > 0) {  // nothing can run: answer __activemask() calls, or a warp collective never completes
            if (resolve_active_masks()) continue;
            fail_warp_deadlock();
            return false;
        }
        char where[512];
        describe_waiting_threads(where, sizeof where);
        if (exited > 0) {
            fail("deadlock in block (%u,%u,%u): %d of %d threads exited while %d wait at __syncthreads() "
                 "(divergent barrier: every thread of a block must reach each __syncthreads()); waiting: %s",
                 blockIdx.x, blockIdx.y, blockIdx.z, exited, n, waiting, where);
            return false;
        }
        // Every thread waits: they must all wait at the same __syncthreads() call.
        const Fiber& first = state.fibers[0];
        for (int i = 1; i < n; ++i) {
            const Fiber& f = state.fibers[i];
            if (f.barrier_line != first.barrier_line || strcmp(f.barrier_file, first.barrier_file) != 0) {
                fail("divergent barrier in block (%u,%u,%u): thread (%u,%u,%u) waits at %s:%d but thread "
                     "(%u,%u,%u) at %s:%d",
                     blockIdx.x, blockIdx.y, blockIdx.z, first.thread_index.x, first.thread_index.y,
                     first.thread_index.z, first.barrier_file, first.barrier_line, f.thread_index.x,
                     f.thread_index.y, f.thread_index.z, f.barrier_file, f.barrier_line);
                return false;
            }
        }
        for (int i = 0; i < n; ++i) state.fibers[i].state = RUNNABLE;
        ++state.barriers_passed;
    }
}

// Runs `body` (which calls the kernel) for every thread of every block of the grid. Returns 0 or -1.
static int launch_grid(dim3 grid, dim3 block, void (*body)(void*), void* body_context) {
    state.failed = false;
    state.message[0] = 0;
    state.barriers_passed = 0;
    state.warp_collectives = 0;
    state.fault_armed = 0;
    state.fault_signal = 0;
    state.fault_code = 0;
    state.fault_is_write = -1;
    state.fault_in_thread = 0;
    state.fault_stack_owner = -1;
    state.fault_address = state.fault_pc = nullptr;
    unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0) {
        fail("invalid launch configuration: grid (%u,%u,%u), block (%u,%u,%u) has a zero dimension",
             grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return -1;
    }
    if (threads > 1024 || block.z > 64 || grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) {
        fail("invalid launch configuration: grid (%u,%u,%u), block (%u,%u,%u) exceeds CUDA limits "
             "(block <= 1024 threads, block.z <= 64, grid.y and grid.z <= 65535)",
             grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return -1;
    }
    if (!reserve_stacks((int)threads)) {
        fail("cannot allocate %llu fiber stacks", threads);
        return -1;
    }
    state.fibers = state.fiber_storage;
    state.thread_count = (int)threads;
    state.body = body;
    state.body_context = body_context;
    gridDim = grid;
    blockDim = block;
    volatile bool ok = true;
    state.launch_thread = pthread_self();
    install_fault_handlers();
    if (sigsetjmp(state.fault_jump, 1) == 0) {
        state.fault_armed = 1;
        const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
        for (unsigned long long b = 0; ok && b < blocks; ++b) {
            unsigned long long linear = state.reverse_order ? blocks - 1 - b : b;
            blockIdx = uint3{(unsigned)(linear % grid.x), (unsigned)((linear / grid.x) % grid.y),
                             (unsigned)(linear / ((unsigned long long)grid.x * grid.y))};
            ok = run_block();
        }
        state.fault_armed = 0;
    } else {
        ok = false;  // fault_handler jumped here out of a fiber: its block is abandoned
    }
    uninstall_fault_handlers();
    if (state.fault_signal != 0) report_fault();
    state.fibers = nullptr;
    state.current = -1;
    return ok ? 0 : -1;
}

template <class Body>
static int launch(dim3 grid, dim3 block, Body& body) {
    return launch_grid(grid, block, [](void* context) { (*static_cast<Body*>(context))(); }, &body);
}

}  // namespace gpuconv_emu

// Exported control functions (called from emulator.py through ctypes).
extern "C" __attribute__((visibility("default"))) void gpuconv_emu_configure(int poison_shared, int reverse_order,
                                                                               int stack_kib) {
    gpuconv_emu::state.poison_shared = poison_shared != 0;
    gpuconv_emu::state.reverse_order = reverse_order != 0;
    size_t stack_size = (size_t)(stack_kib > 0 ? stack_kib : 64) * 1024;
    if (stack_size != gpuconv_emu::state.stack_size) {
        gpuconv_emu::release_stacks();
        gpuconv_emu::state.stack_size = stack_size;
    }
}

extern "C" __attribute__((visibility("default"))) void gpuconv_emu_set_shared_ranges(void** addresses,
                                                                                       size_t* sizes, int count) {
    delete[] gpuconv_emu::state.shared_ranges;
    delete[] gpuconv_emu::state.shared_sizes;
    gpuconv_emu::state.shared_ranges = new void*[count > 0 ? count : 1];
    gpuconv_emu::state.shared_sizes = new size_t[count > 0 ? count : 1];
    for (int i = 0; i < count; ++i) {
        gpuconv_emu::state.shared_ranges[i] = addresses[i];
        gpuconv_emu::state.shared_sizes[i] = sizes[i];
    }
    gpuconv_emu::state.shared_range_count = count;
}

extern "C" __attribute__((visibility("default"))) const char* gpuconv_emu_last_error() {
    return gpuconv_emu::state.message;
}

extern "C" __attribute__((visibility("default"))) long long gpuconv_emu_barriers_passed() {
    return gpuconv_emu::state.barriers_passed;
}

// How many warp collectives (__syncwarp, shuffles, votes, ldmatrix, mma) the last launch completed.
extern "C" __attribute__((visibility("default"))) long long gpuconv_emu_warp_collectives() {
    return gpuconv_emu::state.warp_collectives;
}

// The fault that ended the last launch: 0 if none, else the signal number, with `info` = {address, pc,
// is_write (1, 0, -1 unknown), in_thread, thread x, y, z, block x, y, z, si_code, stack overflow (the
// fiber whose stack guard page was hit, or -1)}.
extern "C" __attribute__((visibility("default"))) int gpuconv_emu_last_fault(long long* info) {
    const gpuconv_emu::Launch& s = gpuconv_emu::state;
    long long values[12] = {(long long)(uintptr_t)s.fault_address, (long long)(uintptr_t)s.fault_pc,
                            s.fault_is_write, s.fault_in_thread, s.fault_thread.x, s.fault_thread.y,
                            s.fault_thread.z, s.fault_block.x, s.fault_block.y, s.fault_block.z, s.fault_code,
                            s.fault_stack_owner};
    for (int i = 0; i < 12; ++i) info[i] = values[i];
    return s.fault_signal;
}

extern "C" __attribute__((visibility("default"))) void* gpuconv_emu_shared_section(long long* size) {
    *size = (long long)(gpuconv_emu::__stop_gpuconv_emu_shared - gpuconv_emu::__start_gpuconv_emu_shared);
    return gpuconv_emu::__start_gpuconv_emu_shared;
}

// ------------------------------------------------------------------------------------------ builtins ---
#define __syncthreads() ::gpuconv_emu::syncthreads(__FILE__, __LINE__)
#define __trap() ::gpuconv_emu::fail("__trap() in thread (%u,%u,%u) of block (%u,%u,%u) at %s:%d", \
                                     threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y,     \
                                     blockIdx.z, __FILE__, __LINE__)
// Blocks run one at a time, so every fence is already satisfied.
static inline void __threadfence_block() { __asm__ __volatile__("" ::: "memory"); }
static inline void __threadfence() { __asm__ __volatile__("" ::: "memory"); }

// CUDA's min/max: overloaded for every arithmetic pair; floating ones ignore NaN like fminf/fmaxf.
template <class A, class B>
static inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    if constexpr (std::is_floating_point<C>::value) return fmax((C)a, (C)b);
    else return (C)a > (C)b ? (C)a : (C)b;
}
template <class A, class B>
static inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    if constexpr (std::is_floating_point<C>::value) return fmin((C)a, (C)b);
    else return (C)a < (C)b ? (C)a : (C)b;
}

template <class To, class From>
static inline To gpuconv_emu_bit_cast(From from) {
    static_assert(sizeof(To) == sizeof(From), "bit cast between types of different sizes");
    To to;
    memcpy(&to, &from, sizeof to);
    return to;
}
static inline float __int_as_float(int v) { return gpuconv_emu_bit_cast<float>(v); }
static inline int __float_as_int(float v) { return gpuconv_emu_bit_cast<int>(v); }
static inline float __uint_as_float(unsigned int v) { return gpuconv_emu_bit_cast<float>(v); }
static inline unsigned int __float_as_uint(float v) { return gpuconv_emu_bit_cast<unsigned int>(v); }
static inline double __longlong_as_double(long long v) { return gpuconv_emu_bit_cast<double>(v); }
static inline long long __double_as_longlong(double v) { return gpuconv_emu_bit_cast<long long>(v); }

static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
// __expf, __logf, __powf: glibc declares them already (same functions as expf, logf, powf).
static inline float __saturatef(float a) { return a < 0.0f ? 0.0f : (a > 1.0f ? 1.0f : (a == a ? a : 0.0f)); }
static inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
static inline double rsqrt(double a) { return 1.0 / sqrt(a); }
static inline int __float2int_rn(float a) { return (int)nearbyintf(a); }
static inline int __float2int_rz(float a) { return (int)a; }
static inline int __float2int_rd(float a) { return (int)floorf(a); }
static inline int __float2int_ru(float a) { return (int)ceilf(a); }
static inline float __int2float_rn(int a) { return (float)a; }
static inline int __mul24(int a, int b) { return (int)((long long)(a << 8 >> 8) * (b << 8 >> 8)); }
static inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xFFFFFFu) * (b & 0xFFFFFFu); }
static inline int __popc(unsigned int v) { return __builtin_popcount(v); }
static inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
static inline int __ffs(int v) { return __builtin_ffs(v); }
static inline unsigned int __brev(unsigned int v) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i) r |= ((v >> i) & 1u) << (31 - i);
    return r;
}
template <class T>
static inline T __ldg(const T* p) { return *p; }

// ------------------------------------------------------------------------------ warp-level builtins ---
// Each takes the call site as trailing default arguments: evaluated where the kernel calls it.
#define GPUCONV_EMU_SITE const char* gpuconv_emu_file = __builtin_FILE(), int gpuconv_emu_line = __builtin_LINE()

static inline void __syncwarp(unsigned mask = 0xFFFFFFFFu, GPUCONV_EMU_SITE) {
    ::gpuconv_emu::warp_collective(mask, "__syncwarp", nullptr, nullptr, nullptr, false, gpuconv_emu_file,
                                   gpuconv_emu_line);
}
static inline unsigned __activemask(GPUCONV_EMU_SITE) {
    return ::gpuconv_emu::active_mask(gpuconv_emu_file, gpuconv_emu_line);
}

#define GPUCONV_EMU_SHUFFLES(T)                                                                                 \
    static inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize, GPUCONV_EMU_SITE) {  \
        return ::gpuconv_emu::shuffle<::gpuconv_emu::SHUFFLE_IDX>("__shfl_sync", mask, var, src_lane, width,    \
                                                                  gpuconv_emu_file, gpuconv_emu_line);          \
    }                                                                                                           \
    static inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, GPUCONV_EMU_SITE) { \
        return ::gpuconv_emu::shuffle<::gpuconv_emu::SHUFFLE_UP>("__shfl_up_sync", mask, var, (int)(delta & 31u), \
                                                                 width, gpuconv_emu_file, gpuconv_emu_line);    \
    }                                                                                                           \
    static inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,               \
                                     GPUCONV_EMU_SITE) {                                                        \
        return ::gpuconv_emu::shuffle<::gpuconv_emu::SHUFFLE_DOWN>("__shfl_down_sync", mask, var,               \
                                                                   (int)(delta & 31u), width, gpuconv_emu_file, \
                                                                   gpuconv_emu_line);                           \
    }                                                                                                           \
    static inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize, GPUCONV_EMU_SITE) { \
        return ::gpuconv_emu::shuffle<::gpuconv_emu::SHUFFLE_XOR>("__shfl_xor_sync", mask, var, lane_mask, width, \
                                                                  gpuconv_emu_file, gpuconv_emu_line);          \
    }
GPUCONV_EMU_SHUFFLES(int)
GPUCONV_EMU_SHUFFLES(unsigned int)
GPUCONV_EMU_SHUFFLES(long)
GPUCONV_EMU_SHUFFLES(unsigned long)
GPUCONV_EMU_SHUFFLES(long long)
GPUCONV_EMU_SHUFFLES(unsigned long long)
GPUCONV_EMU_SHUFFLES(float)
GPUCONV_EMU_SHUFFLES(double)
#undef GPUCONV_EMU_SHUFFLES

static inline int __all_sync(unsigned mask, int predicate, GPUCONV_EMU_SITE) {
    unsigned r[2] = {0, 0};
    ::gpuconv_emu::vote("__all_sync", mask, predicate, r, gpuconv_emu_file, gpuconv_emu_line);
    return r[0] == r[1];
}
static inline int __any_sync(unsigned mask, int predicate, GPUCONV_EMU_SITE) {
    unsigned r[2] = {0, 0};
    ::gpuconv_emu::vote("__any_sync", mask, predicate, r, gpuconv_emu_file, gpuconv_emu_line);
    return r[0] != 0;
}
static inline unsigned __ballot_sync(unsigned mask, int predicate, GPUCONV_EMU_SITE) {
    unsigned r[2] = {0, 0};
    ::gpuconv_emu::vote("__ballot_sync", mask, predicate, r, gpuconv_emu_file, gpuconv_emu_line);
    return r[0];
}

// ----------------------------------------------- for kernel headers (kernels/warp_primitives.cuh) ---
typedef ::gpuconv_emu::WarpCombine gpuconv_emu_warp_combine;
// A warp collective of the lanes of `mask` (see warp_collective above); full_warp: all 32 lanes needed.
static inline void gpuconv_emu_warp_collective(unsigned mask, const char* what, gpuconv_emu_warp_combine combine,
                                               const void* in, void* out, bool full_warp, const char* file,
                                               int line) {
    ::gpuconv_emu::warp_collective(mask, what, combine, in, out, full_warp, file, line);
}
// Whether [pointer, pointer + bytes) lies in one __shared__ variable.
static inline bool gpuconv_emu_is_shared(const void* pointer, size_t bytes) {
    return ::gpuconv_emu::is_shared(pointer, bytes);
}
// Fails the launch: "`what` at file:line in thread (..) of block (..): <the printf-formatted problem>".
__attribute__((format(printf, 4, 5))) static inline void gpuconv_emu_fail(const char* what, const char* file, int line,
                                                                         const char* format, ...) {
    char problem[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(problem, sizeof problem, format, args);
    va_end(args);
    ::gpuconv_emu::fail("%s at %s:%d in thread (%u,%u,%u) of block (%u,%u,%u): %s", what, file, line, threadIdx.x,
                        threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z, problem);
}
// cp.async of `bytes` (4, 8, 16) of which the first `source_bytes` come from `source`, the rest zeros.
static inline void gpuconv_emu_cp_async(void* destination, const void* source, int bytes, int source_bytes,
                                        const char* file, int line) {
    ::gpuconv_emu::cp_async(destination, source, bytes, source_bytes, file, line);
}
static inline void gpuconv_emu_cp_async_commit() { ::gpuconv_emu::cp_async_commit(); }
static inline void gpuconv_emu_cp_async_wait(int pending) { ::gpuconv_emu::cp_async_wait(pending); }

#endif  // GPUCONV_CUDA_EMULATION_H
