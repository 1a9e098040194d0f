// Rotary embedding fused with writing K/V into their pages. One block per token.
#include "common.cuh"

__device__ __forceinline__ void rotate(float* x, unsigned heads, unsigned head_dim, unsigned rot,
                                       bool neox, float pos, const float* inv_freq) {
    unsigned half_rot = rot / 2;
    for (unsigned e = threadIdx.x; e < heads * half_rot; e += blockDim.x) {
        unsigned h = e / half_rot, i = e % half_rot;
        // As on the CPU (and HF): the angle in f32, then its sine and cosine.
        float angle = pos * inv_freq[i];
        float s = sinf(angle), c = cosf(angle);
        unsigned a = neox ? i : 2 * i, b = neox ? i + half_rot : 2 * i + 1;
        float* head = x + h * head_dim;
        float x0 = head[a], x1 = head[b];
        head[a] = x0 * c - x1 * s;
        head[b] = x0 * s + x1 * c;
    }
}

BALLAST_KERNEL(rope_kv, RopeKvParams, 128) {
    unsigned t = blockIdx.x;
    float pos = (float)p.positions[t];
    unsigned kv_dim = p.num_kv_heads * p.head_dim;
    if (p.q) rotate(p.q + (size_t)t * p.num_heads * p.head_dim, p.num_heads, p.head_dim, p.rotary_dims, p.neox, pos, p.inv_freq);
    if (p.rotate_k) rotate(p.k + (size_t)t * kv_dim, p.num_kv_heads, p.head_dim, p.rotary_dims, p.neox, pos, p.inv_freq);
    if (!p.k_cache) return;
    __syncthreads(); // every thread reads k as rotated by the others
    size_t slot = p.slot_mapping[t];
    size_t block = slot / p.block_size, in_block = slot % p.block_size;
    for (unsigned j = threadIdx.x; j < kv_dim; j += blockDim.x) {
        unsigned h = j / p.head_dim, d = j % p.head_dim;
        size_t at = ((block * p.num_kv_heads + h) * p.block_size + in_block) * p.head_dim + d;
        p.k_cache[at] = float_to_half_bits(p.k[(size_t)t * kv_dim + j]);
        p.v_cache[at] = float_to_half_bits(p.v[(size_t)t * kv_dim + j]);
    }
}
