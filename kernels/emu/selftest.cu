// The emulation's test kernel (host build only): see EmuSelfTestParams in emu.h.
#include "../common.cuh"
#include "emu.h"

// Block size 0: any (the tests launch several).
BALLAST_KERNEL(emu_selftest, EmuSelfTestParams, 0) {
    unsigned tid = threadIdx.x + threadIdx.y * blockDim.x;
    unsigned n = blockDim.x * blockDim.y;
    unsigned lane = tid & 31;
    if (p.mode == 1) {
        if (tid < 32) __syncthreads();
        return;
    }
    if (p.mode == 2) {
        if (tid >= 32) return;
        __syncthreads();
        return;
    }
    __shared__ unsigned s[1024];
    unsigned v = lane * 10 + blockIdx.x;
    uint32_t* o = p.out + ((size_t)blockIdx.x * n + tid) * 6;
    o[0] = __shfl_xor_sync(FULL_MASK, v, 5);
    o[1] = __shfl_down_sync(FULL_MASK, v, 3);
    o[2] = __shfl_sync(FULL_MASK, v, 7);
    o[3] = __ballot_sync(FULL_MASK, lane % 3 == 0);
    s[tid] = tid;
    __syncthreads();
    o[4] = s[n - 1 - tid];
    o[5] = (unsigned)warp_sum((float)lane);
    atomicAdd(p.out + (size_t)gridDim.x * n * 6, 1u);
}
