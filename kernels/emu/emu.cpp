// The fiber scheduler behind cuda_emu.h. See that header for the model.
#include "cuda_emu.h"
#include "emu.h"

#include <cstdio>
#include <map>
#include <string>
#include <sys/mman.h>
#include <ucontext.h>
#include <vector>

// Switching fibers is the emulation's hot path (every barrier and shuffle). On x86-64 a
// dozen instructions save the callee-saved registers and swap stacks (kernels never change
// the floating-point control registers, so those are not switched); elsewhere ucontext,
// which costs a system call per switch.
#if defined(__x86_64__) && !defined(BALLAST_EMU_UCONTEXT)
extern "C" void ballast_emu_switch(void** save_sp, void* load_sp);
extern "C" void ballast_emu_trampoline();
asm(R"(
    .text
    .globl ballast_emu_switch
    .type ballast_emu_switch,@function
ballast_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ballast_emu_switch, .-ballast_emu_switch

    .globl ballast_emu_trampoline
    .type ballast_emu_trampoline,@function
ballast_emu_trampoline:
    call ballast_emu_fiber_main
    ud2
    .size ballast_emu_trampoline, .-ballast_emu_trampoline
)");
#define BALLAST_EMU_FAST_SWITCH 1
#endif

namespace emu {

thread_local const Thread* current;
thread_local uint3 block_idx;
thread_local dim3 block_dim;
thread_local dim3 grid_dim;

namespace {

constexpr size_t kStack = 256 * 1024;

struct Barrier {
    unsigned count = 0, arrived = 0, generation = 0;
};

struct Fiber {
#ifdef BALLAST_EMU_FAST_SWITCH
    void* sp;
#else
    ucontext_t ctx;
#endif
    Thread thread;
    bool done = false;
    unsigned waiting = 0; // 0: running; 1: block barrier; 2: warp barrier
};

struct Launch {
    std::vector<Fiber> fibers;
    std::vector<Barrier> warp_barriers;
    std::vector<uint64_t> warp_slots; // [warp][lane]
    Barrier block_barrier;
#ifdef BALLAST_EMU_FAST_SWITCH
    void* scheduler_sp;
#else
    ucontext_t scheduler;
#endif
    std::vector<unsigned> exchange_phase; // per lane: which half of the slots its next op uses
    std::vector<uint32_t> gather_slots;   // [half][warp][lane][8]
    unsigned running = 0;
    uint64_t progress = 0; // barrier arrivals and exits
    std::string error;
    void (*body)(const void*) = nullptr;
    const void* params = nullptr;
};

thread_local Launch* launch_state;
// Stacks are reserved once per OS thread and reused; pages are committed as fibers touch them.
thread_local char* stacks;
thread_local size_t stacks_len;

void yield_to_scheduler() {
    Launch& l = *launch_state;
#ifdef BALLAST_EMU_FAST_SWITCH
    ballast_emu_switch(&l.fibers[l.running].sp, l.scheduler_sp);
#else
    swapcontext(&l.fibers[l.running].ctx, &l.scheduler);
#endif
}

void resume(Launch& l, size_t i) {
#ifdef BALLAST_EMU_FAST_SWITCH
    ballast_emu_switch(&l.scheduler_sp, l.fibers[i].sp);
#else
    swapcontext(&l.scheduler, &l.fibers[i].ctx);
#endif
}

void wait(Barrier& b, unsigned kind) {
    Launch& l = *launch_state;
    l.progress++;
    unsigned gen = b.generation;
    if (++b.arrived == b.count) {
        b.arrived = 0;
        b.generation++;
        return;
    }
    l.fibers[l.running].waiting = kind;
    while (b.generation == gen) yield_to_scheduler();
    l.fibers[l.running].waiting = 0;
}

void fiber_main() {
    Launch& l = *launch_state;
    l.body(l.params);
    l.fibers[l.running].done = true;
    l.progress++;
#ifdef BALLAST_EMU_FAST_SWITCH
    yield_to_scheduler(); // never resumed
    __builtin_trap();
#endif
}

const char* barrier_name(unsigned kind) {
    return kind == 1 ? "__syncthreads" : "a warp shuffle/vote";
}

// Runs one block to completion; false (with l.error set) if its threads deadlock.
bool run_block(Launch& l) {
    size_t n = l.fibers.size();
    for (size_t i = 0; i < n; i++) {
        Fiber& f = l.fibers[i];
        f.done = false;
        f.waiting = 0;
#ifdef BALLAST_EMU_FAST_SWITCH
        // A stack that ballast_emu_switch "returns" from into the trampoline: six zeroed
        // registers, then the trampoline's address, placed so that the trampoline's call
        // sees a 16-byte aligned stack.
        char* top = stacks + (i + 1) * kStack;
        uint64_t* sp = (uint64_t*)(top - 72);
        for (int r = 0; r < 6; r++) sp[r] = 0;
        sp[6] = (uint64_t)(void*)ballast_emu_trampoline;
        f.sp = sp;
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stacks + i * kStack;
        f.ctx.uc_stack.ss_size = kStack;
        f.ctx.uc_link = &l.scheduler;
        makecontext(&f.ctx, fiber_main, 0);
#endif
    }
    size_t alive = n;
    while (alive > 0) {
        uint64_t before = l.progress;
        alive = 0;
        for (size_t i = 0; i < n; i++) {
            if (l.fibers[i].done) continue;
            l.running = (unsigned)i;
            current = &l.fibers[i].thread;
            resume(l, i);
            if (!l.fibers[i].done) alive++;
        }
        if (alive > 0 && l.progress == before) {
            char buf[256];
            for (size_t i = 0; i < n; i++) {
                if (l.fibers[i].done) continue;
                std::snprintf(buf, sizeof buf,
                              "deadlock in block (%u,%u,%u): thread %zu waits at %s while %zu of %zu threads have exited",
                              block_idx.x, block_idx.y, block_idx.z, i, barrier_name(l.fibers[i].waiting),
                              n - alive, n);
                break;
            }
            l.error = buf;
            return false;
        }
    }
    return true;
}

struct Registered {
    void (*body)(const void*);
    unsigned threads; // 0: any block size
};

std::map<std::string, Registered>& registry() {
    static std::map<std::string, Registered> r;
    return r;
}

} // namespace

void sync_block() { wait(launch_state->block_barrier, 1); }

uint64_t warp_exchange(uint64_t bits, unsigned src) {
    Launch& l = *launch_state;
    unsigned me = current->linear;
    unsigned warp = me / 32;
    // Two halves used in turn: a lane can write the half again only after the next
    // exchange's barrier, which every lane reaches after reading this one.
    unsigned half = l.exchange_phase[me];
    l.exchange_phase[me] ^= 1;
    uint64_t* slots = l.warp_slots.data() + half * l.fibers.size();
    slots[me] = bits;
    wait(l.warp_barriers[warp], 2);
    return slots[warp * 32 + (src & 31)];
}

void warp_allgather(const uint32_t* mine, unsigned n, uint32_t* all) {
    Launch& l = *launch_state;
    unsigned me = current->linear, warp = me / 32;
    unsigned half = l.exchange_phase[me];
    l.exchange_phase[me] ^= 1;
    uint32_t* slots = l.gather_slots.data() + (half * (l.fibers.size() / 32) + warp) * 256;
    std::memcpy(slots + (me & 31) * 8, mine, n * 4);
    wait(l.warp_barriers[warp], 2);
    for (unsigned lane = 0; lane < 32; lane++) std::memcpy(all + lane * n, slots + lane * 8, n * 4);
}

void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2]) {
    uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    uint32_t all[32 * 6];
    warp_allgather(mine, 6, all);
    auto lo = [](uint32_t w) { return __half2float(__ushort_as_half((unsigned short)(w & 0xffff))); };
    auto hi = [](uint32_t w) { return __half2float(__ushort_as_half((unsigned short)(w >> 16))); };
    float A[16][16], B[16][8];
    for (unsigned lane = 0; lane < 32; lane++) {
        const uint32_t* f = all + lane * 6;
        unsigned g = lane >> 2, t = lane & 3;
        A[g][2 * t] = lo(f[0]), A[g][2 * t + 1] = hi(f[0]);
        A[g + 8][2 * t] = lo(f[1]), A[g + 8][2 * t + 1] = hi(f[1]);
        A[g][2 * t + 8] = lo(f[2]), A[g][2 * t + 9] = hi(f[2]);
        A[g + 8][2 * t + 8] = lo(f[3]), A[g + 8][2 * t + 9] = hi(f[3]);
        B[2 * t][g] = lo(f[4]), B[2 * t + 1][g] = hi(f[4]);
        B[2 * t + 8][g] = lo(f[5]), B[2 * t + 9][g] = hi(f[5]);
    }
    unsigned g = (current->linear & 31) >> 2, t = current->linear & 3;
    for (unsigned i = 0; i < 4; i++) {
        unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        float sum = 0.0f;
        for (unsigned k = 0; k < 16; k++) sum += A[row][k] * B[k][col];
        d[i] += sum;
    }
}

void check_full_mask(unsigned mask) {
    if (mask != 0xffffffffu) {
        std::fprintf(stderr, "emulation: warp operations need the full mask (got %08x)\n", mask);
        std::abort();
    }
}

int register_kernel(const char* name, unsigned threads, void (*body)(const void*)) {
    registry()[name] = Registered{body, threads};
    return 0;
}

} // namespace emu

extern "C" void ballast_emu_fiber_main() { emu::fiber_main(); }

unsigned __ballot_sync(unsigned mask, int predicate) {
    emu::check_full_mask(mask);
    unsigned me = emu::lane();
    unsigned out = 0;
    // Each lane reads every lane's vote: 32 exchanges keep to the one primitive.
    for (unsigned src = 0; src < 32; src++) {
        uint64_t v = emu::warp_exchange(predicate ? 1 : 0, src);
        if (v) out |= 1u << src;
    }
    (void)me;
    return out;
}

extern "C" int ballast_emu_launch(const char* name, EmuDim grid, EmuDim block, const void* params,
                                  char* error, uint64_t error_len) {
    using namespace emu;
    auto fail = [&](const std::string& msg) {
        if (error_len > 0) std::snprintf(error, error_len, "%s", msg.c_str());
        return -1;
    };
    auto it = registry().find(name);
    if (it == registry().end()) return fail(std::string("no kernel named ") + name);
    size_t n = (size_t)block.x * block.y * block.z;
    if (n == 0 || n > 1024 || n % 32 != 0)
        return fail(name + std::string(": a block needs a whole number of warps, 32 to 1024 threads, got ") +
                    std::to_string(n));
    if (it->second.threads != 0 && n != it->second.threads)
        return fail(name + std::string(" is written for blocks of ") + std::to_string(it->second.threads) +
                    " threads, launched with " + std::to_string(n));
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
        return fail(name + std::string(": bad grid"));
    if (stacks_len < n * kStack) {
        if (stacks) munmap(stacks, stacks_len);
        void* p = mmap(nullptr, n * kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return fail("emulation: cannot reserve fiber stacks");
        stacks = (char*)p;
        stacks_len = n * kStack;
    }
    Launch l;
    l.body = it->second.body;
    l.params = params;
    l.fibers.resize(n);
    l.warp_barriers.resize(n / 32);
    for (auto& b : l.warp_barriers) b.count = 32;
    l.warp_slots.resize(2 * n);
    l.exchange_phase.assign(n, 0);
    l.gather_slots.resize(2 * n * 8);
    l.block_barrier.count = (unsigned)n;
    for (unsigned z = 0; z < block.z; z++)
        for (unsigned y = 0; y < block.y; y++)
            for (unsigned x = 0; x < block.x; x++) {
                unsigned lin = x + y * block.x + z * block.x * block.y;
                l.fibers[lin].thread = Thread{uint3{x, y, z}, lin};
            }
    Launch* outer = launch_state;
    launch_state = &l;
    block_dim = dim3{block.x, block.y, block.z};
    grid_dim = dim3{grid.x, grid.y, grid.z};
    int rc = 0;
    for (unsigned z = 0; z < grid.z && rc == 0; z++)
        for (unsigned y = 0; y < grid.y && rc == 0; y++)
            for (unsigned x = 0; x < grid.x && rc == 0; x++) {
                block_idx = uint3{x, y, z};
                if (!run_block(l)) rc = fail(name + std::string(": ") + l.error);
            }
    launch_state = outer;
    current = nullptr;
    return rc;
}
