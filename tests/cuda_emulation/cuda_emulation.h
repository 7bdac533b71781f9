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
// Not modelled: warps (no shuffles, votes or warp-synchronous code), atomics, cp.async, dynamic (extern)
// shared memory, __constant__ memory written from the host, streams. Using one is a compile error here.
#ifndef GPUCONV_CUDA_EMULATION_H
#define GPUCONV_CUDA_EMULATION_H

#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
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

enum FiberState { RUNNABLE, AT_BARRIER, EXITED };

struct Fiber {
    ucontext_t context;
    uint3 thread_index;
    FiberState state;
    const char* barrier_file;  // which __syncthreads() call it waits at
    int barrier_line;
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
    state.fiber_storage = new Fiber[thread_count];
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
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = state.stacks + (size_t)i * slot + guard_size;
        f.context.uc_stack.ss_size = state.stack_size;
        f.context.uc_link = nullptr;
        makecontext(&f.context, fiber_main, 0);
    }
    for (;;) {
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
        int waiting = 0, exited = 0;
        for (int i = 0; i < n; ++i) {
            waiting += state.fibers[i].state == AT_BARRIER;
            exited += state.fibers[i].state == EXITED;
        }
        if (exited == n) return true;
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

#endif  // GPUCONV_CUDA_EMULATION_H
