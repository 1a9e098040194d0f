/* Kernel parameters: one plain-C struct per kernel, passed by value as the kernel's only
 * argument. Read by nvcc, by the host emulation (g++, kernels/emu/) and by bindgen, which
 * makes the Rust side (src/backend/gpu/kernels.rs). Pointers are device addresses. */
#ifndef BALLAST_PARAMS_H
#define BALLAST_PARAMS_H

#include <stdint.h>

/* Element formats of a device weight matrix. Quantized matrices keep their bits, re-laid out
 * per 32-element block b of a row (blocks numbered row by row, blk = row * cols / 32 + b), so
 * that every format decodes the same way (kernels/quant.cuh):
 * - `qs`: the low bits: 4-bit formats 16 bytes a block, byte j holding element j (low nibble)
 *   and j + 16 (high nibble), as ggml's Q4_0; Q8_0 32 signed bytes; Q2_K/Q3_K 8 bytes, element
 *   e in bits 2e..2e+1 of the little-endian 64-bit word;
 * - `qh`: the high bits: one per element (Q5_0, Q5_1, Q5_K's fifth, Q3_K's third) a uint32 a
 *   block, element e in bit e; two per element (Q6_K's top two) two uint32 a block, element e
 *   in bits 2e..2e+1 of the 64-bit word;
 * - `scales`: Q4_0/Q4_1/Q5_0/Q5_1/Q8_0: one uint32 a block, the f16 scale d in the low half,
 *   the f16 min m of Q4_1/Q5_1 in the high half. k-quants: one uint32 per 256-element
 *   super-block (8 blocks), f16 d in the low half, f16 dmin (Q2_K, Q4_K, Q5_K) in the high;
 * - `sub`: k-quants only, one uint16 a block: Q4_K/Q5_K the 6-bit scale | 6-bit min << 8;
 *   Q6_K/Q3_K the signed scales of elements 0..16 | 16..32 << 8; Q2_K the scale bytes
 *   (4-bit scale | 4-bit min << 4) of elements 0..16 | 16..32 << 8.
 * A weight is s * q + m with, per 16 elements: Q4_0 s = d, m = -8d; Q4_1/Q5_1 s = d, m = min;
 * Q5_0 s = d, m = -16d; Q8_0 s = d, m = 0; Q4_K/Q5_K s = d*sc, m = -dmin*mn; Q6_K s = d*sc,
 * m = -32s; Q3_K s = d*sc, m = -4s; Q2_K s = d*sc, m = -dmin*mn. Device memory is the
 * file's size within a few percent. */
enum BallastFormat {
    BALLAST_F32 = 0,
    BALLAST_F16 = 1,
    BALLAST_BF16 = 2,
    BALLAST_Q4_0 = 3,
    BALLAST_Q4_1 = 4,
    BALLAST_Q8_0 = 5,
    BALLAST_Q5_0 = 6,
    BALLAST_Q5_1 = 7,
    BALLAST_Q2_K = 8,
    BALLAST_Q3_K = 9,
    BALLAST_Q4_K = 10,
    BALLAST_Q5_K = 11,
    BALLAST_Q6_K = 12
};

/* A weight matrix [rows, cols]. Float formats use `qs` only, row-major. */
typedef struct {
    const void* qs;
    const uint32_t* scales;
    const uint32_t* qh;
    const uint16_t* sub;
    uint32_t rows;
    uint32_t cols;
    uint32_t format;
} BallastMatrix;

/* out[t] = table[token_ids[t]]. Grid: (tokens). */
typedef struct {
    BallastMatrix table;
    const uint32_t* token_ids;
    float* out;
    uint32_t num_tokens; /* ids are checked against the table on the host */
} EmbeddingParams;

/* If delta: residual += delta. Then out = residual / rms(residual) * weight. Grid: (rows). */
typedef struct {
    float* residual;
    const float* delta;
    const float* weight;
    float* out;
    uint32_t rows;
    uint32_t cols;
    float eps;
} RmsNormParams;

/* out[t][r] = W[r] . x[t] for r < rows, t < tokens. Grid: matmul (ceil(rows / 4),
 * ceil(tokens / 8)); matmul_mma (ceil(rows / 64), ceil(tokens / 64)). */
typedef struct {
    BallastMatrix w;
    const float* x;
    float* out;
    const float* bias;    /* optional, added to every row of out */
    const float* x_scale; /* matmul_mma: per token, a power of two bringing x into f16 range */
    uint32_t tokens;
    /* matmul only: up to two more matrices of the same width sharing x (Q/K/V, gate/up), in
     * one launch. blocks[i]: grid.x blocks of matrix i (w, then w_more); 0 ends the list. */
    BallastMatrix w_more[2];
    float* out_more[2];
    uint32_t blocks[3];
} MatmulParams;

/* scale[t] = the power of two (at most 1) that brings row t's largest |x| under 2^14, so
 * the tensor cores' f16 activations cannot overflow. Grid: (rows). */
typedef struct {
    const float* x;
    float* scale;
    uint32_t cols;
} RowScaleParams;

/* Per token: rotates the heads of `q` (when set) by the token's position; rotates `k` too
 * when `rotate_k`; then, when `k_cache` is set, writes k and v (f16) to the token's slot of one
 * layer, whose layout is [block][kv head][slot in block][head dim] (KvOrder::HeadMajor in
 * src/kv/mod.rs, KvLayout::k_at and v_at: the one definition). Grid: (tokens). */
typedef struct {
    float* q;
    float* k;
    const float* v;
    const uint32_t* positions;
    const float* inv_freq;
    const uint32_t* slot_mapping;
    uint16_t* k_cache;
    uint16_t* v_cache;
    uint32_t num_heads;
    uint32_t num_kv_heads;
    uint32_t head_dim;
    uint32_t rotary_dims;
    uint32_t neox; /* 1: rotate pairs (i, i + rotary/2); 0: adjacent pairs (2i, 2i + 1) */
    uint32_t rotate_k;
    uint32_t block_size;
} RopeKvParams;

/* One row per query token of the step, for the sequence it belongs to. */
typedef struct {
    uint32_t seq_start;      /* first row of the token's sequence */
    uint32_t context_len;    /* keys this token attends to (its position + 1) */
    uint32_t table_start;    /* start of the sequence's block table */
    uint32_t pad;
} TokenAttn;

/* Causal paged attention, each token over its sequence's cached keys (the last `window` of
 * them when set). One block handles one
 * (kv head, token, split): every query head of the group reads each key once. With more than
 * one split, partial results go to `partials` and attention_combine finishes them. A launch
 * covers tokens first_token .. first_token + gridDim.y (the host launches groups of tokens
 * so the partials fit a fixed buffer). Grid: (num_kv_heads, tokens in the group, splits). */
typedef struct {
    const float* q;
    float* out;
    const uint16_t* k_cache; /* this layer */
    const uint16_t* v_cache;
    const TokenAttn* tokens;
    const uint32_t* block_tables;
    float* partials; /* [group's tokens][num_heads][splits][head_dim + 2] (max, sum, acc) */
    uint32_t first_token;
    uint32_t num_tokens;
    uint32_t num_heads;
    uint32_t num_kv_heads;
    uint32_t head_dim;
    uint32_t block_size;
    uint32_t split_len; /* keys per split (a multiple of block_size) */
    uint32_t splits;
    float scale;
    uint32_t window; /* sliding window: a token sees its last `window` keys; 0: all of them */
} AttentionParams;

/* out = combination of the splits' partials, for the tokens of one attention launch.
 * Grid: (num_heads, tokens in the group). */
typedef struct {
    const float* partials;
    float* out;
    const TokenAttn* tokens;
    uint32_t first_token;
    uint32_t num_heads;
    uint32_t head_dim;
    uint32_t split_len;
    uint32_t splits;
} CombineParams;

/* Elementwise ops over n floats. Grid: (ceil(n / 256)). */
enum BallastEltOp { BALLAST_ADD = 0, BALLAST_SILU_MUL = 1, BALLAST_GELU_MUL = 2, BALLAST_SCALE = 3, BALLAST_SOFTCAP = 4 };
typedef struct {
    float* x;
    const float* y;  /* ADD, SILU_MUL, GELU_MUL only */
    uint64_t n;
    uint32_t op;     /* ADD: x += y; SILU_MUL: x = silu(x) * y; GELU_MUL: x = gelu_tanh(x) * y;
                      * SCALE: x *= s; SOFTCAP: x = s * tanh(x / s) */
    uint32_t y_cols; /* 0: y has n elements; else y is one row of y_cols, added to every row */
    float s;
} EltwiseParams;

/* dst[i] = src[rows[i]] for i < n, rows of `cols` floats. Grid: (n). */
typedef struct {
    const float* src;
    float* dst;
    const uint32_t* rows;
    uint32_t n;
    uint32_t cols;
} GatherParams;

/* Copies whole KV blocks src -> dst, pairs in order, every layer, K and V.
 * Grid: (1): the pairs are applied in order, as on the CPU. */
typedef struct {
    uint16_t* k_cache;
    uint16_t* v_cache;
    const uint32_t* pairs; /* [n][2] */
    uint32_t n;
    uint32_t num_layers;
    uint64_t block_elems;  /* halves per block per layer */
    uint64_t layer_elems;  /* halves per layer */
} CopyBlocksParams;

/* Greedy argmax of each row of logits (lowest index on ties). Grid: (rows). */
typedef struct {
    const float* logits;
    uint32_t* out;
    uint32_t rows;
    uint32_t cols;
} ArgmaxParams;

#endif
