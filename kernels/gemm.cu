// out[t][r] = W[r] . x[t] on the tensor cores, for prefill chunks and large decode batches:
// quantized weights (every format, decoded by kernels/quant.cuh) and float ones (F16, BF16
// and F32, converted to f16; rows a multiple of 32 long).
//
// A block computes 64 rows x 64 tokens; its 4 warps take 16 rows each, across all 64 tokens
// (eight m16n8k16 tiles). Per 32-element quant block along K, the threads dequantize the 64
// rows' blocks and convert the 64 tokens' activations to f16 in shared memory, then each warp
// runs two k16 steps. Each token's activations are first scaled by a power of two (row_scales)
// so none overflows f16; the outputs are scaled back, exactly.
// Activations meet the tensor cores in f16 (f32 accumulation), so results
// differ from the GEMV kernel's f32 arithmetic in the last bits: the backend uses this kernel
// only when it may (not with --deterministic, which keeps every batch size on one kernel).
#include "quant.cuh"

#define GM_ROWS 64
#define GM_TOKENS 64
#define GM_PAD 40 // halves per shared row: 32 + 8, so lanes of a fragment load hit distinct banks

__device__ __forceinline__ unsigned pack_halves(unsigned short lo, unsigned short hi) {
    return (unsigned)lo | ((unsigned)hi << 16);
}

BALLAST_KERNEL(matmul_mma, MatmulParams, 128) {
    __shared__ unsigned short ws[GM_ROWS][GM_PAD];
    __shared__ unsigned short xs[GM_TOKENS][GM_PAD];
    const BallastMatrix w = p.w;
    unsigned warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    unsigned g = lane >> 2, t = lane & 3;
    unsigned r0 = blockIdx.x * GM_ROWS, t0 = blockIdx.y * GM_TOKENS;
    unsigned nb = w.cols / 32;
    float c[8][4];
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
        for (int i = 0; i < 4; i++) c[n][i] = 0.0f;

    // Staging: thread i takes row (or token) i / 2, elements (i % 2) * 16 .. + 16.
    unsigned srow = threadIdx.x / 2, shalf = threadIdx.x % 2;
    for (unsigned b = 0; b < nb; b++) {
        unsigned row = r0 + srow;
        unsigned short wv[16];
        if (row < w.rows && (w.format == BALLAST_F16 || w.format == BALLAST_BF16)) {
            // 16 consecutive 16-bit weights: two 16-byte loads (cols is a multiple of 32).
            const uint4* src = (const uint4*)((const unsigned short*)w.qs + (size_t)row * w.cols + b * 32 + shalf * 16);
            uint4 lo = src[0], hi = src[1];
            unsigned words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
            for (int j = 0; j < 16; j++) {
                unsigned bits = (words[j / 2] >> (16 * (j % 2))) & 0xffffu;
                wv[j] = w.format == BALLAST_F16 ? (unsigned short)bits : float_to_half_bits(bf16_bits_to_float(bits));
            }
        } else if (row < w.rows && w.format == BALLAST_F32) {
            const float4* src = (const float4*)((const float*)w.qs + (size_t)row * w.cols + b * 32 + shalf * 16);
#pragma unroll
            for (int j = 0; j < 16; j += 4) {
                float4 v = src[j / 4];
                wv[j] = float_to_half_bits(v.x), wv[j + 1] = float_to_half_bits(v.y);
                wv[j + 2] = float_to_half_bits(v.z), wv[j + 3] = float_to_half_bits(v.w);
            }
        } else if (row < w.rows) {
            QBlock qb = load_qblock(w, (size_t)row * nb + b);
#pragma unroll
            for (int wd = 0; wd < 4; wd++) {
                float q[4];
                quad(qb, w.format, shalf, wd, q);
#pragma unroll
                for (int i = 0; i < 4; i++) wv[4 * wd + i] = float_to_half_bits((shalf ? qb.s[1] : qb.s[0]) * q[i] + (shalf ? qb.m[1] : qb.m[0]));
            }
        } else {
#pragma unroll
            for (int j = 0; j < 16; j++) wv[j] = 0;
        }
#pragma unroll
        for (int j = 0; j < 16; j++) ws[srow][shalf * 16 + j] = wv[j];
        unsigned tok = t0 + srow;
        float sc = tok < p.tokens && p.x_scale ? p.x_scale[tok] : 1.0f;
#pragma unroll
        for (int j = 0; j < 16; j += 4) {
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (tok < p.tokens) v = *(const float4*)(p.x + (size_t)tok * w.cols + b * 32 + shalf * 16 + j);
            xs[srow][shalf * 16 + j] = float_to_half_bits(v.x * sc);
            xs[srow][shalf * 16 + j + 1] = float_to_half_bits(v.y * sc);
            xs[srow][shalf * 16 + j + 2] = float_to_half_bits(v.z * sc);
            xs[srow][shalf * 16 + j + 3] = float_to_half_bits(v.w * sc);
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < 32; ks += 16) {
            unsigned ra = warp * 16 + g;
            unsigned a[4] = {
                pack_halves(ws[ra][ks + 2 * t], ws[ra][ks + 2 * t + 1]),
                pack_halves(ws[ra + 8][ks + 2 * t], ws[ra + 8][ks + 2 * t + 1]),
                pack_halves(ws[ra][ks + 2 * t + 8], ws[ra][ks + 2 * t + 9]),
                pack_halves(ws[ra + 8][ks + 2 * t + 8], ws[ra + 8][ks + 2 * t + 9]),
            };
#pragma unroll
            for (int n = 0; n < 8; n++) {
                unsigned tb = n * 8 + g;
                unsigned bf[2] = {
                    pack_halves(xs[tb][ks + 2 * t], xs[tb][ks + 2 * t + 1]),
                    pack_halves(xs[tb][ks + 2 * t + 8], xs[tb][ks + 2 * t + 9]),
                };
                mma_16816(c[n], a, bf);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            unsigned row = r0 + warp * 16 + g + (i >= 2 ? 8 : 0);
            unsigned tok = t0 + n * 8 + 2 * t + (i & 1);
            if (row < w.rows && tok < p.tokens) {
                float unscale = p.x_scale ? 1.0f / p.x_scale[tok] : 1.0f; // a power of two: exact
                p.out[(size_t)tok * w.rows + row] = c[n][i] * unscale + (p.bias ? p.bias[row] : 0.0f);
            }
        }
}

BALLAST_KERNEL(row_scales, RowScaleParams, 256) {
    __shared__ float scratch[8];
    const float* x = p.x + (size_t)blockIdx.x * p.cols;
    float m = 0.0f;
    for (unsigned c = threadIdx.x; c < p.cols; c += 256) m = fmaxf(m, fabsf(x[c]));
    m = warp_max(m);
    unsigned warp = threadIdx.x / 32;
    if ((threadIdx.x & 31) == 0) scratch[warp] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 0; w < 8; w++) m = fmaxf(m, scratch[w]);
        // Halve until under 2^14: a power of two keeps every mantissa bit. Not finite: leave
        // the row alone, its inf or NaN shows in the output either way.
        float s = 1.0f;
        if (m < INFINITY)
            while (m * s >= 16384.0f) s *= 0.5f;
        p.scale[blockIdx.x] = s;
    }
}
