// x += y, x = silu(x) * y, x = gelu_tanh(x) * y, x *= s, soft-capping, and gathering rows.
#include "common.cuh"

BALLAST_KERNEL(eltwise, EltwiseParams, 256) {
    size_t i = (size_t)blockIdx.x * 256 + threadIdx.x;
    if (i >= p.n) return;
    float x = p.x[i];
    switch (p.op) {
    case BALLAST_SCALE: p.x[i] = x * p.s; return;
    case BALLAST_SOFTCAP: p.x[i] = p.s * tanhf(x / p.s); return;
    default: break;
    }
    float y = p.y[p.y_cols ? i % p.y_cols : i];
    if (p.op == BALLAST_ADD) {
        p.x[i] = x + y;
    } else if (p.op == BALLAST_SILU_MUL) {
        p.x[i] = x / (1.0f + expf(-x)) * y;
    } else {
        // x/2 (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)
        float z = 1.5957692f * (x + 0.044715f * x * x * x);
        p.x[i] = x / (1.0f + expf(-z)) * y;
    }
}

BALLAST_KERNEL(gather_rows, GatherParams, 128) {
    const float* src = p.src + (size_t)p.rows[blockIdx.x] * p.cols;
    float* dst = p.dst + (size_t)blockIdx.x * p.cols;
    for (unsigned c = threadIdx.x; c < p.cols; c += 128) dst[c] = src[c];
}

// Whole KV blocks, pairs in order (a later pair may read what an earlier one wrote).
BALLAST_KERNEL(copy_blocks, CopyBlocksParams, 256) {
    for (unsigned i = 0; i < p.n; i++) {
        size_t src = p.pairs[2 * i], dst = p.pairs[2 * i + 1];
        for (unsigned layer = 0; layer < p.num_layers; layer++) {
            size_t base = layer * p.layer_elems;
            for (size_t e = threadIdx.x; e < p.block_elems; e += 256) {
                p.k_cache[base + dst * p.block_elems + e] = p.k_cache[base + src * p.block_elems + e];
                p.v_cache[base + dst * p.block_elems + e] = p.v_cache[base + src * p.block_elems + e];
            }
        }
        __syncthreads();
    }
}
