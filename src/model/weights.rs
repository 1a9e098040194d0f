//! Model weights, generic over where they live: `HostWeights` as loaded from a file
//! (zero-copy views of the mapped file where possible), `ModelWeights<B::Matrix, B::Tensor>`
//! once a backend has taken them.

use crate::format::bytes::TensorBytes;
use crate::quant::{self, GgmlType, PackedFormat, QuantError};

/// A weight matrix in host memory: `rows` rows (output features) of `cols` elements
/// (input features), each row `dtype.row_bytes(cols)` bytes, in `layout`.
#[derive(Clone)]
pub struct HostMatrix {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub layout: Layout,
    pub data: TensorBytes,
}

/// How a [`HostMatrix`]'s rows are arranged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Rows back to back, as in the model file.
    RowMajor,
    /// Sixteen rows interleaved per block (`quant::packed`), the last group padded: for the
    /// CPU's 16-bit kernels. Every quantized file format has one.
    Packed16,
}

impl HostMatrix {
    pub fn row_bytes(&self) -> usize {
        // Checked when the matrix was built (see `new`).
        self.dtype.row_bytes(self.cols as u64).unwrap_or(0) as usize
    }

    /// A matrix over `data`, or a description of why the sizes disagree.
    pub fn new(dtype: GgmlType, rows: usize, cols: usize, data: TensorBytes) -> Result<HostMatrix, String> {
        let row_bytes = dtype.row_bytes(cols as u64).ok_or_else(|| format!("{cols} columns is not a whole number of {dtype} blocks"))?;
        let expected = row_bytes.checked_mul(rows as u64).ok_or("matrix size overflows")?;
        if data.len() as u64 != expected {
            return Err(format!("{rows}x{cols} {dtype} needs {expected} bytes, got {}", data.len()));
        }
        Ok(HostMatrix { dtype, rows, cols, layout: Layout::RowMajor, data })
    }

    /// This matrix in `target`'s blocks: each row dequantized and quantized again, on up to
    /// `threads` threads (rows in contiguous shares, so the result does not depend on them).
    pub fn requantized(&self, target: GgmlType, threads: usize) -> Result<HostMatrix, String> {
        let row_bytes =
            target.row_bytes(self.cols as u64).ok_or_else(|| format!("{} columns is not whole {target} blocks", self.cols))? as usize;
        let mut out = vec![0u8; row_bytes * self.rows];
        let share = self.rows.div_ceil(threads.max(1)).max(1);
        std::thread::scope(|scope| {
            let jobs: Vec<_> = out
                .chunks_mut(share * row_bytes)
                .enumerate()
                .map(|(i, dst)| {
                    scope.spawn(move || -> Result<(), String> {
                        let mut row = vec![0f32; self.cols];
                        for (k, dst) in dst.chunks_mut(row_bytes).enumerate() {
                            self.dequantize_row(i * share + k, &mut row).map_err(|e| e.to_string())?;
                            quant::quantize_row(target, &row, dst).map_err(|e| e.to_string())?;
                        }
                        Ok(())
                    })
                })
                .collect();
            jobs.into_iter().try_for_each(|j| j.join().unwrap_or_else(|_| Err("a requantizing thread panicked".into())))
        })?;
        HostMatrix::new(target, self.rows, self.cols, TensorBytes::from_vec(out))
    }

    /// Row `r`'s bytes. Row-major matrices only (a packed row is not contiguous).
    pub fn row(&self, r: usize) -> &[u8] {
        self.rows_bytes(r..r + 1)
    }

    /// Rows `rows`, back to back. Row-major matrices only.
    pub fn rows_bytes(&self, rows: std::ops::Range<usize>) -> &[u8] {
        assert_eq!(self.layout, Layout::RowMajor, "rows of a packed matrix are not contiguous");
        let n = self.row_bytes();
        &self.data[rows.start * n..rows.end * n]
    }

    /// Row `r` as f32, whatever the layout (`out.len() == cols`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), QuantError> {
        if self.layout == Layout::RowMajor {
            return quant::dequantize_row(self.dtype, self.row(r), out);
        }
        if out.len() != self.cols {
            return Err(QuantError::RowLength { dtype: self.dtype, len: out.len() });
        }
        let units = self.cols / self.dtype.block_size();
        quant::with_packed_format!(self.dtype, F => quant::dequantize_packed_row::<F>(&self.data, units, r, out),
            _ => return Err(QuantError::Unsupported { dtype: self.dtype, op: "packed layout" }));
        Ok(())
    }

    /// This matrix in [`Layout::Packed16`] (a new buffer), or unchanged where its type has
    /// no packed layout or it is packed already.
    pub fn packed16(self) -> HostMatrix {
        match self.packed16_len() {
            Some(n) => {
                let mut data = vec![0u8; n];
                self.pack16_into(&mut data);
                self.with_packed16(TensorBytes::from_vec(data))
            }
            None => self,
        }
    }

    /// Bytes of this matrix in [`Layout::Packed16`], or `None` where its type has no packed
    /// layout or it is packed already.
    pub fn packed16_len(&self) -> Option<usize> {
        if self.layout != Layout::RowMajor {
            return None;
        }
        let units = self.cols / self.dtype.block_size();
        quant::with_packed_format!(self.dtype, F => Some(quant::packed_bytes::<F>(self.rows, units)), _ => None)
    }

    /// Writes this matrix in [`Layout::Packed16`] into `out` ([`HostMatrix::packed16_len`]
    /// bytes).
    ///
    /// # Panics
    /// If the matrix has no packed layout or `out` has another length.
    pub fn pack16_into(&self, out: &mut [u8]) {
        fn pack<F: PackedFormat>(m: &HostMatrix, out: &mut [u8]) {
            let units = m.cols / F::DTYPE.block_size();
            match bytemuck::try_cast_slice::<u8, F>(&m.data) {
                Ok(w) => quant::pack_into(w, m.rows, units, out),
                // Bytes at an odd address: copy them into blocks first.
                Err(_) => quant::pack_into(&bytemuck::pod_collect_to_vec::<u8, F>(&m.data), m.rows, units, out),
            }
        }
        assert_eq!(self.packed16_len(), Some(out.len()), "pack16_into: {self:?} into {} bytes", out.len());
        quant::with_packed_format!(self.dtype, F => pack::<F>(self, out), _ => unreachable!("checked by packed16_len"));
    }

    /// The packed matrix whose bytes [`HostMatrix::pack16_into`] wrote into `data`.
    pub fn with_packed16(self, data: TensorBytes) -> HostMatrix {
        debug_assert_eq!(self.packed16_len(), Some(data.len()));
        HostMatrix { layout: Layout::Packed16, data, ..self }
    }
}

impl std::fmt::Debug for HostMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostMatrix({} {}x{})", self.dtype, self.rows, self.cols)
    }
}

/// One transformer block's weights. `M`: a matrix `[out, in]`; `V`: an f32 vector.
#[derive(Debug)]
pub struct LayerWeights<M, V> {
    /// `[hidden]`
    pub attn_norm: V,
    /// `[num_heads * head_dim, hidden]`
    pub wq: M,
    /// `[num_kv_heads * head_dim, hidden]`
    pub wk: M,
    /// `[num_kv_heads * head_dim, hidden]`
    pub wv: M,
    /// `[num_heads * head_dim]`, `[kv_dim]`, `[kv_dim]` when the model has qkv bias.
    pub bq: Option<V>,
    pub bk: Option<V>,
    pub bv: Option<V>,
    /// `[hidden, num_heads * head_dim]`
    pub wo: M,
    /// `[hidden]`
    pub ffn_norm: V,
    /// `[intermediate, hidden]`
    pub w_gate: M,
    /// `[intermediate, hidden]`
    pub w_up: M,
    /// `[hidden, intermediate]`
    pub w_down: M,
    /// The norms beyond Llama's, where the model has them.
    pub norms: ExtraNorms<V>,
}

/// A block's norms beyond its input and pre-FFN ones (Gemma 3 has all four).
#[derive(Debug)]
pub struct ExtraNorms<V> {
    /// `[head_dim]` each: every query and key head's norm.
    pub q: Option<V>,
    pub k: Option<V>,
    /// `[hidden]` each: the attention and FFN outputs' norms.
    pub post_attn: Option<V>,
    pub post_ffn: Option<V>,
}

impl<V> Default for ExtraNorms<V> {
    fn default() -> Self {
        ExtraNorms { q: None, k: None, post_attn: None, post_ffn: None }
    }
}

impl<V> ExtraNorms<V> {
    fn try_map<V2, E>(self, f: &mut impl FnMut(V) -> Result<V2, E>) -> Result<ExtraNorms<V2>, E> {
        Ok(ExtraNorms {
            q: self.q.map(&mut *f).transpose()?,
            k: self.k.map(&mut *f).transpose()?,
            post_attn: self.post_attn.map(&mut *f).transpose()?,
            post_ffn: self.post_ffn.map(&mut *f).transpose()?,
        })
    }
}

#[derive(Debug)]
pub struct ModelWeights<M, V> {
    /// `[vocab, hidden]`
    pub embed: M,
    pub layers: Vec<LayerWeights<M, V>>,
    /// `[hidden]`
    pub final_norm: V,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<M>,
}

pub type HostWeights = ModelWeights<HostMatrix, Vec<f32>>;

impl<V> ModelWeights<HostMatrix, V> {
    /// Bytes of weights one forward step reads whatever its batch: every layer matrix and the
    /// output matrix (the tied embedding when there is none; the embedding lookup reads only
    /// a row per token).
    pub fn step_bytes(&self) -> u64 {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].iter().map(|m| m.data.len()).sum::<usize>())
            .sum();
        (layers + self.lm_head.as_ref().unwrap_or(&self.embed).data.len()) as u64
    }
}

impl<M, V> ModelWeights<M, V> {
    /// Converts every matrix and vector, keeping the structure (e.g. uploading to a device).
    pub fn try_map<M2, V2, E>(
        self,
        mut matrix: impl FnMut(M) -> Result<M2, E>,
        mut vector: impl FnMut(V) -> Result<V2, E>,
    ) -> Result<ModelWeights<M2, V2>, E> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in self.layers {
            layers.push(LayerWeights {
                attn_norm: vector(l.attn_norm)?,
                wq: matrix(l.wq)?,
                wk: matrix(l.wk)?,
                wv: matrix(l.wv)?,
                bq: l.bq.map(&mut vector).transpose()?,
                bk: l.bk.map(&mut vector).transpose()?,
                bv: l.bv.map(&mut vector).transpose()?,
                wo: matrix(l.wo)?,
                ffn_norm: vector(l.ffn_norm)?,
                w_gate: matrix(l.w_gate)?,
                w_up: matrix(l.w_up)?,
                w_down: matrix(l.w_down)?,
                norms: l.norms.try_map(&mut vector)?,
            });
        }
        Ok(ModelWeights {
            embed: matrix(self.embed)?,
            layers,
            final_norm: vector(self.final_norm)?,
            lm_head: self.lm_head.map(matrix).transpose()?,
        })
    }

    /// The output projection: the dedicated head, or the tied embedding.
    pub fn output(&self) -> &M {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

impl HostWeights {
    /// Checks every shape against `config`; returns the first mismatch.
    pub fn check_shapes(&self, config: &super::ModelConfig) -> Result<(), String> {
        let (h, q, kv, ff) = (config.hidden_size, config.q_dim(), config.kv_dim(), config.intermediate_size);
        let mat = |name: &str, m: &HostMatrix, rows: usize, cols: usize| {
            if (m.rows, m.cols) == (rows, cols) { Ok(()) } else { Err(format!("{name} is {}x{}, expected {rows}x{cols}", m.rows, m.cols)) }
        };
        let vec = |name: &str, v: &Vec<f32>, len: usize| {
            if v.len() == len { Ok(()) } else { Err(format!("{name} has {} entries, expected {len}", v.len())) }
        };
        mat("token embedding", &self.embed, config.vocab_size, h)?;
        if let Some(head) = &self.lm_head {
            mat("output", head, config.vocab_size, h)?;
        }
        vec("output norm", &self.final_norm, h)?;
        for (i, l) in self.layers.iter().enumerate() {
            let n = |s: &str| format!("layer {i} {s}");
            vec(&n("attn_norm"), &l.attn_norm, h)?;
            vec(&n("ffn_norm"), &l.ffn_norm, h)?;
            mat(&n("q"), &l.wq, q, h)?;
            mat(&n("k"), &l.wk, kv, h)?;
            mat(&n("v"), &l.wv, kv, h)?;
            mat(&n("o"), &l.wo, h, q)?;
            mat(&n("gate"), &l.w_gate, ff, h)?;
            mat(&n("up"), &l.w_up, ff, h)?;
            mat(&n("down"), &l.w_down, h, ff)?;
            let f = &config.features;
            let hd = config.head_dim;
            let optional = [
                (&l.bq, q, "q bias", config.qkv_bias),
                (&l.bk, kv, "k bias", config.qkv_bias),
                (&l.bv, kv, "v bias", config.qkv_bias),
                (&l.norms.q, hd, "q norm", f.qk_norm),
                (&l.norms.k, hd, "k norm", f.qk_norm),
                (&l.norms.post_attn, h, "post-attention norm", f.post_norms),
                (&l.norms.post_ffn, h, "post-FFN norm", f.post_norms),
            ];
            for (b, len, s, wanted) in optional {
                match b {
                    Some(b) if wanted => vec(&n(s), b, len)?,
                    Some(_) => return Err(format!("{} present but unused by the model", n(s))),
                    None if wanted => return Err(format!("{} missing", n(s))),
                    None => {}
                }
            }
        }
        if self.layers.len() != config.num_layers {
            return Err(format!("{} layers, expected {}", self.layers.len(), config.num_layers));
        }
        Ok(())
    }
}
