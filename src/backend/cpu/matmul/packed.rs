//! The packed matrices' path of the matmul: sixteen weight rows a kernel call, tokens in
//! groups (see `quant::packed`).

use super::{Acts, Q16Rows};
use crate::backend::cpu::par::SharedOut;
use crate::model::weights::HostMatrix;
use crate::quant::{self, ActKernel, BlockQ8P, BlockQ16, GgmlType, Isa, PackedKernel};
use bytemuck::cast_slice;
use std::ops::Range;

/// The packed kernel for `dtype` with 16-bit activations ([`BlockQ16`], `eight` false) or
/// 8-bit ones ([`BlockQ8P`]), if it has one.
pub(super) fn packed_kernel(dtype: GgmlType, eight: bool) -> Option<Q16Rows> {
    quant::with_packed_format!(dtype, F => Some(match eight {
        false => packed_rows::<F, BlockQ16> as Q16Rows,
        true => packed_rows::<F, BlockQ8P> as Q16Rows,
    }), _ => None)
}

/// Tokens per tile of [`packed_rows`]: their activations stay in L2 while the task's weight
/// groups go by.
const PACKED_TOKEN_TILE: usize = 64;

/// Rows `rows` (whole groups of 16, but for the matrix's end) of a packed `w` against every
/// token: per tile of tokens and per group, passes of up to 8 tokens (AVX2: 4), each
/// unpacking the group's weights once. What is left after the eights goes in one pass (six
/// or seven through the kernel for eight): the first pass streams the weights from memory,
/// and a pass of a few tokens costs about what one token's does, since one token is bound
/// by memory, not arithmetic. (Two to five rows used to run as fours and ones; Q4_K
/// 1536x8960 on 2 Xeon cores, before → after: 2 tokens 0.58 → 0.41 ms, 3 tokens 0.82 → 0.44
/// ms, 5 tokens, a speculative verification of four drafts, 0.56 → 0.50 ms; Q6_K 5 tokens
/// 1.22 → 0.76 ms.) Splitting long rows into chunks that stay in L1 across token groups,
/// GEMM-style, measured no faster here with a 1 MiB L2 and slowed single-token calls,
/// whose weights then stream in pieces.
fn packed_rows<F: PackedKernel, A: ActKernel>(w: &HostMatrix, acts: Acts, n_tok: usize, rows: Range<usize>, out: &SharedOut<f32>) {
    const P: usize = quant::PACK;
    let isa = Isa::best();
    let units = w.cols / F::DTYPE.block_size();
    let group_bytes = units * F::UNIT;
    let x = |t: usize| cast_slice::<u8, A>(acts.row(t));
    let wide = if isa == Isa::Avx512Vnni { 8 } else { 4 };
    for tile in (0..n_tok).step_by(PACKED_TOKEN_TILE) {
        let tile_end = (tile + PACKED_TOKEN_TILE).min(n_tok);
        for g in rows.start / P..rows.end.div_ceil(P) {
            let group = &w.data[g * group_bytes..(g + 1) * group_bytes];
            let (first, n) = (g * P, P.min(w.rows - g * P));
            let store = |t: usize, v: &[[f32; P]]| {
                for (k, v) in v.iter().enumerate() {
                    // SAFETY: this task alone owns columns `rows` of every output row.
                    let dst = unsafe { out.slice((t + k) * w.rows + first, n) };
                    // A whole group as one fixed-size copy (vector moves, not a memmove call).
                    match <&mut [f32; P]>::try_from(&mut *dst) {
                        Ok(whole) => *whole = *v,
                        Err(_) => dst.copy_from_slice(&v[..n]),
                    }
                }
            };
            let mut t = tile;
            while t < tile_end {
                let take = (tile_end - t).min(wide);
                // A kernel for `$n` tokens on the next `take` (at most `$n`; rows past them
                // repeat the last, and their results are dropped).
                macro_rules! run {
                    ($n:literal) => {{
                        let xs = std::array::from_fn(|k| x(t + k.min(take - 1)));
                        store(t, &quant::dot_packed_xn_on::<F, A, $n>(isa, group, units, xs, &[[0.0; P]; $n])[..take])
                    }};
                }
                match take {
                    6.. => run!(8),
                    5 => run!(5),
                    4 => run!(4),
                    3 => run!(3),
                    2 => run!(2),
                    _ => run!(1),
                }
                t += take;
            }
        }
    }
}
