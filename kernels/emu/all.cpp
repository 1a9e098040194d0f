// The host emulation as one translation unit: the runtime and every kernel source, so the
// kernels' registrations travel with the launch entry point.
#define BALLAST_EMU 1
#include "emu.cpp"
#include "../argmax.cu"
#include "../attention.cu"
#include "../eltwise.cu"
#include "../embedding.cu"
#include "../gemm.cu"
#include "../matmul.cu"
#include "../rms_norm.cu"
#include "../rope_kv.cu"
#include "selftest.cu"
