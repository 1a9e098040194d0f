// Shared by every kernel: the emulation switch, the export macro, reductions and element
// loads of device matrices.
#pragma once

#include "params.h"

#ifdef BALLAST_EMU
#include "emu/cuda_emu.h"
namespace emu {
int register_kernel(const char* name, unsigned threads, void (*body)(const void*));
}
// Host build: a plain function, registered under its name for ballast_emu_launch with the
// block size it is written for (0: any), which launches must use.
#define BALLAST_KERNEL(name, P, threads)                                                        \
    extern "C" void name(P p);                                                                  \
    static int name##_registered = emu::register_kernel(                                        \
        #name, threads, [](const void* a) { name(*static_cast<const P*>(a)); });              \
    extern "C" void name(P p)
#else
#include <cuda_fp16.h>
#define BALLAST_KERNEL(name, P, threads) extern "C" __global__ void __launch_bounds__(threads, 2) name(P p)
#endif

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(FULL_MASK, v, m);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, m));
    return v;
}

// Sum over a block of WARPS warps; every thread gets the total. `scratch` holds WARPS floats.
template <int WARPS> __device__ __forceinline__ float block_sum(float v, float* scratch) {
    v = warp_sum(v);
    unsigned warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; w++) total += scratch[w];
    __syncthreads();
    return total;
}

__device__ __forceinline__ float half_bits_to_float(unsigned bits) {
    return __half2float(__ushort_as_half((unsigned short)(bits & 0xffffu)));
}

__device__ __forceinline__ unsigned short float_to_half_bits(float x) {
    return __half_as_ushort(__float2half(x));
}

__device__ __forceinline__ float bf16_bits_to_float(unsigned bits) {
    return __uint_as_float((bits & 0xffffu) << 16);
}

// D += A·B on the tensor cores: one m16n8k16 tile, f16 inputs, f32 accumulation. Fragments as
// the PTX ISA lays them out (g = lane / 4, t = lane % 4): a[0] = A[g][2t..2t+1],
// a[1] = A[g+8][2t..], a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]; b[0] = B[2t..2t+1][g],
// b[1] = B[2t+8..2t+9][g]; d = D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]. The lower
// index sits in a register's low half. The emulation computes the same tile from every
// lane's fragments.
__device__ __forceinline__ void mma_16816(float d[4], const unsigned a[4], const unsigned b[2]) {
#ifdef BALLAST_EMU
    emu::mma_m16n8k16(d, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
