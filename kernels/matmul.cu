// out[t][r] = W[r] . x[t] (+ bias[r]) for quantized and float weights: the GEMV of decode and
// (for now) of prefill too.
//
// A block is 4 warps; each warp owns one row and up to MM_TOKENS tokens. A lane takes the
// row's 32-element blocks lane, lane + 32, ...: one 16-byte load brings a whole 4-bit block
// (two for 8-bit), dequantized in registers and dotted with each token's 32 activations
// (float4 loads). Warp sums finish each token. A token's result depends only on its own
// activations and the row, never on the other tokens of the launch: batch invariant.
#include "common.cuh"

#define MM_WARPS 4
#define MM_TOKENS 8

// The 32 quants of a 4-bit block (ggml's order: byte j holds elements j and j + 16).
__device__ __forceinline__ void unpack_q4(uint4 raw, float q[32]) {
    unsigned words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int w = 0; w < 4; w++)
#pragma unroll
        for (int b = 0; b < 4; b++) {
            unsigned byte = (words[w] >> (8 * b)) & 0xffu;
            q[w * 4 + b] = (float)(byte & 15u);
            q[w * 4 + b + 16] = (float)(byte >> 4);
        }
}

__device__ __forceinline__ void unpack_q8(uint4 lo, uint4 hi, float q[32]) {
    unsigned words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
    for (int w = 0; w < 8; w++)
#pragma unroll
        for (int b = 0; b < 4; b++) q[w * 4 + b] = (float)(signed char)((words[w] >> (8 * b)) & 0xffu);
}

// sum_j q[j] * x[j] and sum_j x[j] over one block's 32 activations.
__device__ __forceinline__ void dot32(const float q[32], const float* x, float& qx, float& sx) {
    const float4* x4 = (const float4*)x;
    float a = 0.0f, s = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float4 v = x4[i];
        a += q[4 * i] * v.x + q[4 * i + 1] * v.y + q[4 * i + 2] * v.z + q[4 * i + 3] * v.w;
        s += (v.x + v.y) + (v.z + v.w);
    }
    qx = a;
    sx = s;
}

BALLAST_KERNEL(matmul, MatmulParams, 128) {
    // Which matrix this block serves (one launch may cover up to three sharing x).
    BallastMatrix w = p.w;
    float* out = p.out;
    unsigned bx = blockIdx.x;
    for (int i = 0; i < 2 && p.blocks[i + 1] != 0 && bx >= p.blocks[i]; i++) {
        bx -= p.blocks[i];
        w = p.w_more[i];
        out = p.out_more[i];
    }
    unsigned warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    unsigned row = bx * MM_WARPS + warp;
    unsigned t0 = blockIdx.y * MM_TOKENS;
    unsigned nt = p.tokens - t0 < MM_TOKENS ? p.tokens - t0 : MM_TOKENS;
    bool active = row < w.rows; // uniform across the warp
    float acc[MM_TOKENS];
#pragma unroll
    for (int t = 0; t < MM_TOKENS; t++) acc[t] = 0.0f;
    const float* x0 = p.x + (size_t)t0 * w.cols;

    if (active && (w.format == BALLAST_Q4_0 || w.format == BALLAST_Q4_1 || w.format == BALLAST_Q8_0)) {
        unsigned nb = w.cols / 32;
        bool q8 = w.format == BALLAST_Q8_0;
        const uint4* qs = (const uint4*)w.qs + (size_t)row * nb * (q8 ? 2 : 1);
        const unsigned* sc = w.scales + (size_t)row * nb;
        for (unsigned b = lane; b < nb; b += 32) {
            float q[32];
            if (q8)
                unpack_q8(qs[2 * b], qs[2 * b + 1], q);
            else
                unpack_q4(qs[b], q);
            unsigned s = sc[b];
            float d = half_bits_to_float(s), m = half_bits_to_float(s >> 16);
            // Q4_1: d*q + m; Q4_0: d*(q - 8); Q8_0: d*q.
            float bias = w.format == BALLAST_Q4_1 ? m : (w.format == BALLAST_Q4_0 ? -8.0f * d : 0.0f);
#pragma unroll
            for (int t = 0; t < MM_TOKENS; t++) {
                if (t < (int)nt) {
                    float qx, sx;
                    dot32(q, x0 + (size_t)t * w.cols + b * 32, qx, sx);
                    acc[t] += d * qx + bias * sx;
                }
            }
        }
    } else if (active) {
        const float* wf = (const float*)w.qs + (size_t)row * w.cols;
        const unsigned short* wh = (const unsigned short*)w.qs + (size_t)row * w.cols;
        for (unsigned c = lane; c < w.cols; c += 32) {
            float v = w.format == BALLAST_F32 ? wf[c]
                      : w.format == BALLAST_F16 ? half_bits_to_float(wh[c])
                                                : bf16_bits_to_float(wh[c]);
#pragma unroll
            for (int t = 0; t < MM_TOKENS; t++)
                if (t < (int)nt) acc[t] += v * x0[(size_t)t * w.cols + c];
        }
    }
#pragma unroll
    for (int t = 0; t < MM_TOKENS; t++)
        if (t < (int)nt) acc[t] = warp_sum(acc[t]); // nt is uniform: every lane takes part
    if (active && lane == 0) {
        float bias = p.bias && out == p.out ? p.bias[row] : 0.0f;
#pragma unroll
        for (int t = 0; t < MM_TOKENS; t++)
            if (t < (int)nt) out[(size_t)(t0 + t) * w.rows + row] = acc[t] + bias;
    }
}
