// out[t] = table[token_ids[t]]: one block per token. Token ids are checked on the host.
#include "quant.cuh"

BALLAST_KERNEL(embedding, EmbeddingParams, 128) {
    unsigned t = blockIdx.x;
    size_t row = p.token_ids[t];
    float* out = p.out + (size_t)t * p.table.cols;
    for (unsigned c = threadIdx.x; c < p.table.cols; c += blockDim.x) out[c] = matrix_elem(p.table, row, c);
}
