// residual += delta (when given); out = residual / rms(residual) * weight. One block of 256
// threads per row.
#include "common.cuh"

BALLAST_KERNEL(rms_norm, RmsNormParams, 256) {
    __shared__ float scratch[8];
    size_t base = (size_t)blockIdx.x * p.cols;
    float* x = p.residual + base;
    float sumsq = 0.0f;
    for (unsigned c = threadIdx.x; c < p.cols; c += 256) {
        float v = x[c];
        if (p.delta) {
            v += p.delta[base + c];
            x[c] = v;
        }
        sumsq += v * v;
    }
    float total = block_sum<8>(sumsq, scratch);
    float inv = 1.0f / sqrtf(total / (float)p.cols + p.eps);
    for (unsigned c = threadIdx.x; c < p.cols; c += 256) p.out[base + c] = x[c] * inv * p.weight[c];
}
