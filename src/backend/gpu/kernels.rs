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

/// A kernel entry point, declared once: its name, its params struct (the type parameter: a
/// launch with another struct does not compile) and the block size it is written for.
pub struct Kernel<P: KernelParams> {
    pub name: &'static str,
    /// Threads per block (x), what the kernel's indexing assumes.
    pub block: u32,
    params: std::marker::PhantomData<fn(P)>,
}

impl<P: KernelParams> Kernel<P> {
    pub const fn new(name: &'static str, block: u32) -> Kernel<P> {
        Kernel { name, block, params: std::marker::PhantomData }
    }
}

pub const EMBEDDING: Kernel<EmbeddingParams> = Kernel::new("embedding", 128);
pub const RMS_NORM: Kernel<RmsNormParams> = Kernel::new("rms_norm", 256);
pub const MATMUL: Kernel<MatmulParams> = Kernel::new("matmul", 128);
pub const MATMUL_MMA: Kernel<MatmulParams> = Kernel::new("matmul_mma", 128);
pub const ROW_SCALES: Kernel<RowScaleParams> = Kernel::new("row_scales", 256);
pub const ROPE_KV: Kernel<RopeKvParams> = Kernel::new("rope_kv", 128);
pub const ATTENTION_COMBINE: Kernel<CombineParams> = Kernel::new("attention_combine", 128);
pub const ELTWISE: Kernel<EltwiseParams> = Kernel::new("eltwise", 256);
pub const GATHER_ROWS: Kernel<GatherParams> = Kernel::new("gather_rows", 128);
pub const COPY_BLOCKS: Kernel<CopyBlocksParams> = Kernel::new("copy_blocks", 256);
pub const ARGMAX: Kernel<ArgmaxParams> = Kernel::new("argmax", 256);

macro_rules! attention_kernels {
    ($($g:literal),*) => {
        [$([
            Kernel::new(concat!("attention_g", $g, "_d1"), 128),
            Kernel::new(concat!("attention_g", $g, "_d2"), 128),
            Kernel::new(concat!("attention_g", $g, "_d4"), 128),
            Kernel::new(concat!("attention_g", $g, "_d8"), 128),
        ]),*]
    };
}

/// `attention_g{G}_d{D}`: paged attention for a GQA group of G query heads per KV head, each
/// lane holding D consecutive head dimensions (head dims up to 32·D).
const ATTENTION: [[Kernel<AttentionParams>; 4]; 8] = attention_kernels!(1, 2, 3, 4, 5, 6, 7, 8);

/// The attention kernel for a GQA group of `g` query heads per KV head and `head_dim`.
pub fn attention(g: usize, head_dim: usize) -> Option<&'static Kernel<AttentionParams>> {
    let lanes = match head_dim {
        1..=32 => 0,
        33..=64 => 1,
        65..=128 => 2,
        129..=256 => 3,
        _ => return None,
    };
    ATTENTION.get(g.checked_sub(1)?).map(|row| &row[lanes])
}

/// Every kernel name the backend launches.
pub fn all_names() -> Vec<&'static str> {
    let mut names = vec![
        EMBEDDING.name,
        RMS_NORM.name,
        MATMUL.name,
        MATMUL_MMA.name,
        ROW_SCALES.name,
        ROPE_KV.name,
        ATTENTION_COMBINE.name,
        ELTWISE.name,
        GATHER_ROWS.name,
        COPY_BLOCKS.name,
        ARGMAX.name,
    ];
    names.extend(ATTENTION.iter().flatten().map(|k| k.name));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every handle names a kernel the build compiled (and the CUDA device loads), and the
    /// attention table covers exactly the group sizes and head dims the backend accepts.
    #[test]
    fn every_handle_names_a_compiled_kernel() {
        let compiled: std::collections::HashSet<String> =
            FATBINS.iter().flat_map(|(file, _)| super::super::cuda::kernel_names(file)).collect();
        for name in all_names() {
            assert!(compiled.contains(name), "{name} is not compiled");
        }
        assert_eq!(attention(4, 64).unwrap().name, "attention_g4_d2");
        assert_eq!(attention(8, 256).unwrap().name, "attention_g8_d8");
        assert_eq!(attention(1, 1).unwrap().name, "attention_g1_d1");
        assert!(attention(9, 64).is_none() && attention(0, 64).is_none() && attention(2, 257).is_none());
    }
}
