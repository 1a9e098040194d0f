// One 32-element block of a quantized device matrix (layout in params.h), decoded the same
// way for every format: its bits loaded once (`load_qblock`), then any four consecutive
// elements as small integers (`quad`), each half of sixteen with its scale and min so that a
// weight is s[h] * q + m[h].
#pragma once

#include "common.cuh"

struct QBlock {
    unsigned w[8];    // low bits: 4-bit w[0..4], Q8_0 w[0..8], 2-bit w[0..2]
    unsigned hi[2];   // high bits: 1-bit hi[0]; 2-bit hi[0] (elements 0..16), hi[1] (16..32)
    float s[2], m[2]; // per half
};

__device__ __forceinline__ bool is_quantized(unsigned format) {
    return format >= BALLAST_Q4_0;
}

__device__ __forceinline__ QBlock load_qblock(const BallastMatrix& w, size_t blk) {
    QBlock b;
    unsigned f = w.format;
#pragma unroll
    for (int i = 0; i < 8; i++) b.w[i] = 0;
    b.hi[0] = b.hi[1] = 0;
    if (f == BALLAST_Q8_0) {
        uint4 lo = ((const uint4*)w.qs)[2 * blk], hi = ((const uint4*)w.qs)[2 * blk + 1];
        b.w[0] = lo.x, b.w[1] = lo.y, b.w[2] = lo.z, b.w[3] = lo.w;
        b.w[4] = hi.x, b.w[5] = hi.y, b.w[6] = hi.z, b.w[7] = hi.w;
    } else if (f == BALLAST_Q2_K || f == BALLAST_Q3_K) {
        uint2 lo = ((const uint2*)w.qs)[blk];
        b.w[0] = lo.x, b.w[1] = lo.y;
    } else {
        uint4 lo = ((const uint4*)w.qs)[blk];
        b.w[0] = lo.x, b.w[1] = lo.y, b.w[2] = lo.z, b.w[3] = lo.w;
    }
    if (f == BALLAST_Q5_0 || f == BALLAST_Q5_1 || f == BALLAST_Q5_K || f == BALLAST_Q3_K) b.hi[0] = w.qh[blk];
    if (f == BALLAST_Q6_K) b.hi[0] = w.qh[2 * blk], b.hi[1] = w.qh[2 * blk + 1];
    if (f <= BALLAST_Q5_1) { // the 32-element formats: a scale (and min) per block
        unsigned sc = w.scales[blk];
        float d = half_bits_to_float(sc), mn = half_bits_to_float(sc >> 16);
        float m = f == BALLAST_Q4_0 ? -8.0f * d : f == BALLAST_Q5_0 ? -16.0f * d : f == BALLAST_Q8_0 ? 0.0f : mn;
        b.s[0] = b.s[1] = d;
        b.m[0] = b.m[1] = m;
    } else { // k-quants: d (and dmin) per super-block of 8 blocks, sub-block scales per block
        unsigned sup = w.scales[blk / 8], sub = w.sub[blk];
        float d = half_bits_to_float(sup), dmin = half_bits_to_float(sup >> 16);
        if (f == BALLAST_Q4_K || f == BALLAST_Q5_K) {
            b.s[0] = b.s[1] = d * (float)(sub & 0xffu);
            b.m[0] = b.m[1] = -(dmin * (float)(sub >> 8));
        } else {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                unsigned byte = (sub >> (8 * h)) & 0xffu;
                if (f == BALLAST_Q2_K) {
                    b.s[h] = d * (float)(byte & 15u);
                    b.m[h] = -(dmin * (float)(byte >> 4));
                } else {
                    b.s[h] = d * (float)(signed char)byte;
                    b.m[h] = (f == BALLAST_Q6_K ? -32.0f : -4.0f) * b.s[h];
                }
            }
        }
    }
    return b;
}

// One of four values by a (possibly run-time) index, without indexing a register array
// (which would put it in local memory).
__device__ __forceinline__ unsigned sel4(unsigned a, unsigned b, unsigned c, unsigned d, unsigned i) {
    return i == 0 ? a : i == 1 ? b : i == 2 ? c : d;
}

// Elements 16h + 4wd .. 16h + 4wd + 4 of the block as integers (unsigned but Q8_0's).
__device__ __forceinline__ void quad(const QBlock& b, unsigned format, unsigned h, unsigned wd, float q[4]) {
    unsigned lo = format == BALLAST_Q8_0 ? (h ? sel4(b.w[4], b.w[5], b.w[6], b.w[7], wd) : sel4(b.w[0], b.w[1], b.w[2], b.w[3], wd))
                : format == BALLAST_Q2_K || format == BALLAST_Q3_K ? (h ? b.w[1] : b.w[0])
                : sel4(b.w[0], b.w[1], b.w[2], b.w[3], wd);
    unsigned hi = format == BALLAST_Q6_K && h ? b.hi[1] : b.hi[0];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        unsigned e = 16 * h + 4 * wd + i;
        int v;
        if (format == BALLAST_Q8_0) {
            v = (signed char)((lo >> (8 * i)) & 0xffu);
        } else if (format == BALLAST_Q2_K || format == BALLAST_Q3_K) {
            v = (lo >> (2 * (4 * wd + i))) & 3u;
            if (format == BALLAST_Q3_K) v |= ((hi >> e) & 1u) << 2;
        } else {
            v = (lo >> (8 * i + 4 * h)) & 15u;
            if (format == BALLAST_Q6_K) v |= ((hi >> (2 * (4 * wd + i))) & 3u) << 4;
            else if (format == BALLAST_Q5_0 || format == BALLAST_Q5_1 || format == BALLAST_Q5_K) v |= ((hi >> e) & 1u) << 4;
        }
        q[i] = (float)v;
    }
}

// Element (row, col) of a device matrix (the slow path: embedding lookups).
__device__ __forceinline__ float matrix_elem(const BallastMatrix& m, size_t row, unsigned col) {
    size_t i = row * m.cols + col;
    switch (m.format) {
    case BALLAST_F32:
        return ((const float*)m.qs)[i];
    case BALLAST_F16:
        return half_bits_to_float(((const unsigned short*)m.qs)[i]);
    case BALLAST_BF16:
        return bf16_bits_to_float(((const unsigned short*)m.qs)[i]);
    default:
        break;
    }
    QBlock b = load_qblock(m, row * (m.cols / 32) + col / 32);
    unsigned j = col % 32, h = j / 16;
    float q[4];
    quad(b, m.format, h, (j % 16) / 4, q);
    // As the CPU dequantizes, bit for bit: symmetric formats scale the centred quant.
    float centre = m.format == BALLAST_Q4_0 ? 8.0f : m.format == BALLAST_Q5_0 ? 16.0f : m.format == BALLAST_Q6_K ? 32.0f
                 : m.format == BALLAST_Q3_K ? 4.0f : 0.0f;
    float scale = h ? b.s[1] : b.s[0], min = h ? b.m[1] : b.m[0];
    float qj = j % 4 == 0 ? q[0] : j % 4 == 1 ? q[1] : j % 4 == 2 ? q[2] : q[3];
    if (centre != 0.0f) return scale * (qj - centre);
    return scale * qj + min;
}
