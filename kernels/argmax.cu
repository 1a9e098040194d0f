// Greedy sampling on the device: the index of each row's largest logit (the lowest such
// index on ties; NaN never wins, and an all-NaN row gives its last index, as the host's
// sampler::argmax), so a decode step copies one id per row, not the logits.
#include "common.cuh"

BALLAST_KERNEL(argmax, ArgmaxParams, 256) {
    __shared__ float best_v[8];
    __shared__ unsigned best_i[8];
    const float* row = p.logits + (size_t)blockIdx.x * p.cols;
    float v = -INFINITY;
    unsigned idx = 0xffffffffu;
    for (unsigned c = threadIdx.x; c < p.cols; c += 256) {
        float x = row[c];
        if (x > v || (idx == 0xffffffffu && x == x)) {
            v = x;
            idx = c;
        }
    }
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, v, m);
        unsigned oi = __shfl_xor_sync(FULL_MASK, idx, m);
        if (ov > v || (ov == v && oi < idx)) {
            v = ov;
            idx = oi;
        }
    }
    unsigned warp = threadIdx.x / 32;
    if ((threadIdx.x & 31) == 0) {
        best_v[warp] = v;
        best_i[warp] = idx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < 8; w++)
            if (best_v[w] > v || (best_v[w] == v && best_i[w] < idx)) {
                v = best_v[w];
                idx = best_i[w];
            }
        p.out[blockIdx.x] = idx == 0xffffffffu ? p.cols - 1 : idx;
    }
}
