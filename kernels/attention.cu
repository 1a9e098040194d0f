// Causal paged attention for decode and prefill: each query token attends to its sequence's
// first `context_len` cached keys (the last `window` of them when set), read through the
// block table.
//
// One block (4 warps) per (kv head, token, split). All G query heads that share the KV head
// are handled together, so each key and value is read once for the group (GQA). Warps take
// keys round-robin; in a warp, lane l holds dimensions l*D .. l*D + D - 1 of the queries, of
// its running output and of each key and value it reads (D = 1, 2, 4 or 8: one 2- to 16-byte
// load per key and lane). Per key: G dot products (warp sums),
// then an online-softmax update. The warps' states are merged in shared memory at the end.
//
// Long contexts are split (flash-decoding): a token with more than `split_len` keys gets one
// block per split, writing (max, sum, unnormalised output) to `partials` for
// attention_combine. A token's splits depend only on its own context length, so its result
// never depends on the rest of the batch.
#include "common.cuh"

#define ATT_WARPS 4

// DL consecutive halves as floats: one vector load when the row length allows it.
template <int DL> __device__ __forceinline__ void load_halves(const uint16_t* p, bool vector, unsigned valid, float out[DL]) {
    if (!vector) {
#pragma unroll
        for (int i = 0; i < DL; i++) out[i] = (unsigned)i < valid ? half_bits_to_float(p[i]) : 0.0f;
        return;
    }
    if constexpr (DL == 1) {
        out[0] = half_bits_to_float(*p);
    } else {
        unsigned w[DL / 2];
        if constexpr (DL == 2) {
            w[0] = *(const unsigned*)p;
        } else if constexpr (DL == 4) {
            uint2 v = *(const uint2*)p;
            w[0] = v.x, w[1] = v.y;
        } else {
            uint4 v = *(const uint4*)p;
            w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
        }
#pragma unroll
        for (int i = 0; i < DL; i++) out[i] = half_bits_to_float(w[i / 2] >> (16 * (i % 2)));
    }
}

template <int G, int DL> __device__ void attention_body(const AttentionParams& p) {
    __shared__ float sm_m[ATT_WARPS][G];
    __shared__ float sm_l[ATT_WARPS][G];
    __shared__ float sm_acc[ATT_WARPS][G][DL * 32];

    unsigned kvh = blockIdx.x, local = blockIdx.y, t = p.first_token + local, split = blockIdx.z;
    unsigned warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    const TokenAttn info = p.tokens[t];
    unsigned hd = p.head_dim;
    unsigned begin = split * p.split_len;
    unsigned end = begin + p.split_len < info.context_len ? begin + p.split_len : info.context_len;
    // A sliding window starts the keys later; a split before it sees none (max -inf, sum 0).
    unsigned lo = p.window && info.context_len > p.window ? info.context_len - p.window : 0;
    bool split_mode = info.context_len > p.split_len;
    if (begin >= info.context_len) return; // uniform across the block

    float q[G][DL], acc[G][DL], m[G], l[G];
#pragma unroll
    for (int g = 0; g < G; g++) {
        const float* qh = p.q + ((size_t)t * p.num_heads + kvh * G + g) * hd;
#pragma unroll
        for (int i = 0; i < DL; i++) {
            unsigned d = lane * DL + i;
            q[g][i] = d < hd ? qh[d] * p.scale : 0.0f;
            acc[g][i] = 0.0f;
        }
        m[g] = -INFINITY;
        l[g] = 0.0f;
    }
    const uint32_t* table = p.block_tables + info.table_start;
    // This lane's dimensions: lane*DL .. +DL, `valid` of them inside the head.
    unsigned first = lane * DL;
    unsigned valid = first < hd ? (hd - first < DL ? hd - first : DL) : 0;
    bool vector = hd % DL == 0 && valid == DL;
    for (unsigned key = (begin > lo ? begin : lo) + warp; key < end; key += ATT_WARPS) {
        size_t block = table[key / p.block_size];
        size_t base = ((block * p.num_kv_heads + kvh) * p.block_size + key % p.block_size) * hd;
        float k[DL], v[DL];
        load_halves<DL>(p.k_cache + base + first, vector, valid, k);
        load_halves<DL>(p.v_cache + base + first, vector, valid, v);
#pragma unroll
        for (int g = 0; g < G; g++) {
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < DL; i++) s += q[g][i] * k[i];
            s = warp_sum(s);
            float m_new = fmaxf(m[g], s);
            float correction = expf(m[g] - m_new);
            float weight = expf(s - m_new);
            l[g] = l[g] * correction + weight;
#pragma unroll
            for (int i = 0; i < DL; i++) acc[g][i] = acc[g][i] * correction + weight * v[i];
            m[g] = m_new;
        }
    }
#pragma unroll
    for (int g = 0; g < G; g++) {
        if (lane == 0) {
            sm_m[warp][g] = m[g];
            sm_l[warp][g] = l[g];
        }
#pragma unroll
        for (int i = 0; i < DL; i++) sm_acc[warp][g][lane * DL + i] = acc[g][i];
    }
    __syncthreads();
    for (unsigned e = threadIdx.x; e < G * hd; e += blockDim.x) {
        unsigned g = e / hd, d = e % hd;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) mx = fmaxf(mx, sm_m[w][g]);
        float sum = 0.0f, out = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) {
            // A warp that saw no key has max -inf and contributes nothing.
            float f = sm_m[w][g] == -INFINITY ? 0.0f : expf(sm_m[w][g] - mx);
            sum += sm_l[w][g] * f;
            out += sm_acc[w][g][d] * f;
        }
        unsigned head = kvh * G + g;
        if (!split_mode) {
            p.out[((size_t)t * p.num_heads + head) * hd + d] = out / sum;
        } else {
            float* part = p.partials + (((size_t)local * p.num_heads + head) * p.splits + split) * (hd + 2);
            part[2 + d] = out;
            if (d == 0) {
                part[0] = mx;
                part[1] = sum;
            }
        }
    }
}

#define ATTENTION_KERNEL(G, DL)                                                                 \
    BALLAST_KERNEL(attention_g##G##_d##DL, AttentionParams, 128) { attention_body<G, DL>(p); }
#define ATTENTION_KERNELS(G)                                                                    \
    ATTENTION_KERNEL(G, 1)                                                                      \
    ATTENTION_KERNEL(G, 2)                                                                      \
    ATTENTION_KERNEL(G, 4)                                                                      \
    ATTENTION_KERNEL(G, 8)
ATTENTION_KERNELS(1)
ATTENTION_KERNELS(2)
ATTENTION_KERNELS(3)
ATTENTION_KERNELS(4)
ATTENTION_KERNELS(5)
ATTENTION_KERNELS(6)
ATTENTION_KERNELS(7)
ATTENTION_KERNELS(8)

// Merges the splits of tokens whose context was split; others were written directly.
BALLAST_KERNEL(attention_combine, CombineParams, 128) {
    unsigned head = blockIdx.x, local = blockIdx.y, t = p.first_token + local;
    unsigned ctx = p.tokens[t].context_len;
    if (ctx <= p.split_len) return;
    unsigned used = (ctx + p.split_len - 1) / p.split_len;
    const float* parts = p.partials + ((size_t)local * p.num_heads + head) * p.splits * (p.head_dim + 2);
    float mx = -INFINITY;
    for (unsigned s = 0; s < used; s++) mx = fmaxf(mx, parts[s * (p.head_dim + 2)]);
    for (unsigned d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
        float sum = 0.0f, out = 0.0f;
        for (unsigned s = 0; s < used; s++) {
            const float* part = parts + s * (p.head_dim + 2);
            // A split wholly before a sliding window saw no key.
            float f = part[0] == -INFINITY ? 0.0f : expf(part[0] - mx);
            sum += part[1] * f;
            out += part[2 + d] * f;
        }
        p.out[((size_t)t * p.num_heads + head) * p.head_dim + d] = out / sum;
    }
}
