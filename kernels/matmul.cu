// out[t][r] = W[r] . x[t] (+ bias[r]) for quantized and float weights: the GEMV of decode and
// (for now) of prefill too.
//
// A block is 4 warps; each warp owns one row and up to MM_TOKENS tokens. A lane takes the
// row's 32-element blocks lane, lane + 32, ...: a 16-byte load brings a whole block's low
// bits (two for 8-bit, an 8-byte one for 2-bit) and a word or two its high bits, decoded in
// registers four elements at a time (kernels/quant.cuh; few registers, so many warps stay
// resident to keep loads in flight) and dotted with each token's activations (float4
// loads), per half block of sixteen with its scale and min. Warp sums finish each token. A
// token's result depends only on its own activations and the row, never on the other tokens
// of the launch: batch invariant.
#include "quant.cuh"

#define MM_WARPS 4
#define MM_TOKENS 8

// Adds q . v to qx and the sum of v to sx (four weights, four activations).
__device__ __forceinline__ void dot4(float q0, float q1, float q2, float q3, float4 v, float& qx, float& sx) {
    qx += q0 * v.x + q1 * v.y + q2 * v.z + q3 * v.w;
    sx += (v.x + v.y) + (v.z + v.w);
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

    if (active && is_quantized(w.format)) {
        unsigned nb = w.cols / 32;
        size_t first = (size_t)row * nb;
        for (unsigned b = lane; b < nb; b += 32) {
            QBlock qb = load_qblock(w, first + b);
            // Token by token, four weights at a time: the quants are decoded again for each
            // token (integer work is cheap here) so only a few weights are live at a time.
#pragma unroll
            for (int t = 0; t < MM_TOKENS; t++) {
                if (t >= (int)nt) continue;
                const float4* x4 = (const float4*)(x0 + (size_t)t * w.cols + b * 32);
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    float qx = 0.0f, sx = 0.0f; // sum of quant * activation, sum of activations
#pragma unroll
                    for (int wd = 0; wd < 4; wd++) {
                        float q[4];
                        quad(qb, w.format, h, wd, q);
                        dot4(q[0], q[1], q[2], q[3], x4[4 * h + wd], qx, sx);
                    }
                    acc[t] += qb.s[h] * qx + qb.m[h] * sx;
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
