// Host emulation of the CUDA execution model, enough to run kernels/*.cu on the CPU in CI.
//
// A launch runs its blocks one after another. A block's threads are fibers on the calling OS
// thread, switched only where CUDA threads would wait for each other: `__syncthreads`
// (a barrier among the block's threads), warp shuffles and votes (a barrier among the warp's
// 32 lanes, all of which must take part). A barrier that can never complete (threads waiting
// at different barriers, or some exited) is reported as an error of the launch, not a hang.
// `__shared__` variables are `static thread_local`: one copy for the fibers of a block.
// Atomics are plain read-modify-writes: fibers never switch inside one.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(8) float2 { float x, y; };
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

namespace emu {

struct Thread {
    uint3 idx;
    unsigned linear; // x + y * bx + z * bx * by
};

extern thread_local const Thread* current;
extern thread_local uint3 block_idx;
extern thread_local dim3 block_dim;
extern thread_local dim3 grid_dim;

void sync_block();
// Every lane of the calling warp publishes `bits`; returns what lane `src` published.
uint64_t warp_exchange(uint64_t bits, unsigned src);
void check_full_mask(unsigned mask);
// Every lane of the calling warp publishes `n` (≤ 8) words; `all` receives lane 0's, then
// lane 1's, ... (32 * n words).
void warp_allgather(const uint32_t* mine, unsigned n, uint32_t* all);
// The tensor-core tile D += A·B (m16n8k16, f16 inputs, f32 accumulation) with the PTX ISA's
// fragment layout, computed from every lane's fragments.
void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2]);

inline unsigned lane() { return current->linear & 31; }

template <class T> T exchange(T v, unsigned src) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    uint64_t got = warp_exchange(bits, src);
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}

} // namespace emu

#define threadIdx (::emu::current->idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define warpSize 32

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static thread_local

inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::check_full_mask(mask);
    emu::warp_exchange(0, 0);
}

template <class T> T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    emu::check_full_mask(mask);
    unsigned l = emu::lane();
    return emu::exchange(v, (l & ~(unsigned)(width - 1)) + ((unsigned)src & (unsigned)(width - 1)));
}
template <class T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    emu::check_full_mask(mask);
    unsigned l = emu::lane();
    unsigned src = l ^ (unsigned)lane_mask;
    if ((src & ~(unsigned)(width - 1)) != (l & ~(unsigned)(width - 1))) src = l;
    return emu::exchange(v, src);
}
template <class T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    emu::check_full_mask(mask);
    unsigned l = emu::lane();
    unsigned src = l + delta;
    if ((src & ~(unsigned)(width - 1)) != (l & ~(unsigned)(width - 1))) src = l;
    return emu::exchange(v, src);
}
unsigned __ballot_sync(unsigned mask, int predicate);
inline int __any_sync(unsigned mask, int p) { return __ballot_sync(mask, p) != 0; }
inline int __all_sync(unsigned mask, int p) { return __ballot_sync(mask, p) == 0xffffffffu; }

template <class T> T __ldg(const T* p) { return *p; }
template <class T> T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <class T> T atomicMax(T* p, T v) { T old = *p; if (v > old) *p = v; return old; }
template <class T> T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }

// Half precision: the bits, converted with the host's IEEE round-to-nearest-even.
struct __half { uint16_t bits; };
inline float __half2float(__half h) {
    _Float16 f;
    std::memcpy(&f, &h.bits, 2);
    return (float)f;
}
inline __half __float2half(float x) {
    _Float16 f = (_Float16)x;
    __half h;
    std::memcpy(&h.bits, &f, 2);
    return h;
}
inline __half __ushort_as_half(unsigned short b) { return __half{b}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
using std::exp;
using std::fmax;
using std::sqrt;
