//! The kernels' Rust side, generated at build time: the params structs (bindgen on
//! `kernels/params.h`), the emulator's entry point, and the nvcc fatbins.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/params.rs"));
include!(concat!(env!("OUT_DIR"), "/fatbins.rs"));

/// ptxas's report (`-Xptxas -v`) for every kernel and architecture, from the build.
pub const PTXAS_REPORT: &str = include_str!(concat!(env!("OUT_DIR"), "/ptxas-report.txt"));

/// A kernel's parameter struct: plain data, passed by value as the kernel's only argument.
///
/// # Safety
/// The type must be a `#[repr(C)]` struct of `kernels/params.h`, so that its bytes are what
/// the kernel reads.
pub unsafe trait KernelParams: Copy {}

macro_rules! params {
    ($($t:ty),*) => { $(unsafe impl KernelParams for $t {})* };
}
params!(
    EmbeddingParams,
    RmsNormParams,
    MatmulParams,
    RopeKvParams,
    AttentionParams,
    CombineParams,
    EltwiseParams,
    GatherParams,
    CopyBlocksParams,
    ArgmaxParams,
    RowScaleParams,
    EmuSelfTestParams
);
