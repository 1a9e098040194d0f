/* The host emulation's entry point (plain C; bindgen reads it). */
#ifndef BALLAST_EMU_H
#define BALLAST_EMU_H

#include <stdint.h>

typedef struct {
    uint32_t x, y, z;
} EmuDim;

/* Runs kernel `name` over `grid` blocks of `block` threads with `params` (the kernel's params
 * struct). Returns 0, or -1 with a message in `error` (unknown kernel, bad geometry, a
 * barrier that can never complete). */
/* The emulation's own test kernel (kernels/emu/selftest.cu; host build only). mode 0: warp
 * shuffles, votes, shared memory and atomics write what CUDA defines into `out`; mode 1:
 * __syncthreads in divergent code; mode 2: __syncthreads after some threads returned. */
typedef struct {
    uint32_t* out;
    uint32_t mode;
} EmuSelfTestParams;

#ifdef __cplusplus
extern "C" {
#endif
int ballast_emu_launch(const char* name, EmuDim grid, EmuDim block, const void* params,
                       char* error, uint64_t error_len);
#ifdef __cplusplus
}
#endif

#endif
