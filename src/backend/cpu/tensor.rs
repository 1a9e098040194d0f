//! CPU activations and the CPU KV pool.

use crate::backend::{BackendError, Result};
use crate::kv::{KvDtype, KvLayout};
use crate::plan::BatchPlan;
use half::f16;

/// A row-major f32 matrix whose row count changes from step to step within a fixed capacity.
#[derive(Clone, Debug)]
pub struct CpuTensor {
    /// `[max_rows * cols]`; only the first `rows * cols` are meaningful.
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

fn try_zeroed<T: Clone + Default>(len: usize, what: &'static str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| BackendError::OutOfMemory { what, bytes: len.saturating_mul(size_of::<T>()) })?;
    v.resize(len, T::default());
    Ok(v)
}

impl CpuTensor {
    pub fn zeros(max_rows: usize, cols: usize) -> Result<CpuTensor> {
        let len = max_rows.checked_mul(cols).ok_or(BackendError::OutOfMemory { what: "activation buffer", bytes: usize::MAX })?;
        Ok(CpuTensor { data: try_zeroed(len, "activation buffer")?, rows: 0, cols })
    }

    pub fn from_row(row: &[f32]) -> CpuTensor {
        CpuTensor { data: row.to_vec(), rows: 1, cols: row.len() }
    }

    /// A tensor holding `rows` rows copied from `data`.
    pub fn from_rows(data: &[f32], cols: usize) -> CpuTensor {
        assert!(cols > 0 && data.len().is_multiple_of(cols), "data is not whole rows");
        CpuTensor { data: data.to_vec(), rows: data.len() / cols, cols }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn max_rows(&self) -> usize {
        self.data.len() / self.cols.max(1)
    }

    /// Sets the row count for an op's output.
    pub fn set_rows(&mut self, op: &'static str, rows: usize) -> Result<()> {
        if rows > self.max_rows() {
            return Err(BackendError::Shape { op, detail: format!("{rows} rows exceed the buffer's capacity of {}", self.max_rows()) });
        }
        self.rows = rows;
        Ok(())
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data[..self.rows * self.cols]
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data[..self.rows * self.cols]
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// K and V arrays with the layout of [`KvLayout`].
pub enum CpuKvPool {
    F32 { layout: KvLayout, k: Vec<f32>, v: Vec<f32> },
    F16 { layout: KvLayout, k: Vec<f16>, v: Vec<f16> },
}

impl CpuKvPool {
    pub fn new(layout: KvLayout) -> Result<CpuKvPool> {
        let n = layout.num_elements();
        Ok(match layout.dtype {
            KvDtype::F32 => CpuKvPool::F32 { layout, k: try_zeroed(n, "KV cache")?, v: try_zeroed(n, "KV cache")? },
            KvDtype::F16 => CpuKvPool::F16 { layout, k: try_zeroed(n, "KV cache")?, v: try_zeroed(n, "KV cache")? },
        })
    }

    pub fn layout(&self) -> &KvLayout {
        match self {
            CpuKvPool::F32 { layout, .. } | CpuKvPool::F16 { layout, .. } => layout,
        }
    }

    /// Copies blocks `src → dst` in every layer, K and V.
    pub fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> Result<()> {
        let layout = *self.layout();
        if let Some(&(s, d)) = pairs.iter().find(|(s, d)| *s as usize >= layout.num_blocks || *d as usize >= layout.num_blocks) {
            return Err(BackendError::Shape {
                op: "copy_blocks",
                detail: format!("block pair ({s}, {d}) beyond the pool's {}", layout.num_blocks),
            });
        }
        let block_len = layout.block_size * layout.token_stride();
        fn copy<T: Copy>(a: &mut [T], layout: &KvLayout, block_len: usize, pairs: &[(u32, u32)]) {
            for layer in 0..layout.num_layers {
                for &(s, d) in pairs {
                    let src = layout.slot_offset(layer, s as usize * layout.block_size);
                    let dst = layout.slot_offset(layer, d as usize * layout.block_size);
                    a.copy_within(src..src + block_len, dst);
                }
            }
        }
        match self {
            CpuKvPool::F32 { k, v, .. } => {
                copy(k, &layout, block_len, pairs);
                copy(v, &layout, block_len, pairs);
            }
            CpuKvPool::F16 { k, v, .. } => {
                copy(k, &layout, block_len, pairs);
                copy(v, &layout, block_len, pairs);
            }
        }
        Ok(())
    }

    /// Stores row `t` of `k` and `v` in slot `plan.slot_mapping[t]` of `layer`.
    pub fn write(&mut self, plan: &BatchPlan, layer: usize, k: &CpuTensor, v: &CpuTensor) -> Result<()> {
        let layout = *self.layout();
        let width = layout.token_stride();
        let shape_ok = k.cols() == width
            && v.cols() == width
            && k.rows() == plan.num_tokens()
            && v.rows() == plan.num_tokens()
            && layer < layout.num_layers;
        if !shape_ok {
            return Err(BackendError::Shape {
                op: "write_kv",
                detail: format!(
                    "k {}x{}, v {}x{}, {} tokens, layer {layer}, expected width {width}",
                    k.rows(),
                    k.cols(),
                    v.rows(),
                    v.cols(),
                    plan.num_tokens()
                ),
            });
        }
        let num_slots = layout.num_blocks * layout.block_size;
        for (t, &slot) in plan.slot_mapping.iter().enumerate() {
            if slot as usize >= num_slots {
                return Err(BackendError::Shape { op: "write_kv", detail: format!("slot {slot} beyond the pool's {num_slots}") });
            }
            let off = layout.slot_offset(layer, slot as usize);
            // K's values step by `block_size` from the first (see `KvLayout`).
            let k0 = layout.k_index(layer, slot as usize, 0);
            let bs = layout.block_size;
            match self {
                CpuKvPool::F32 { k: kc, v: vc, .. } => {
                    for (j, &x) in k.row(t).iter().enumerate() {
                        kc[k0 + j * bs] = x;
                    }
                    vc[off..off + width].copy_from_slice(v.row(t));
                }
                CpuKvPool::F16 { k: kc, v: vc, .. } => {
                    for (j, &x) in k.row(t).iter().enumerate() {
                        kc[k0 + j * bs] = f16::from_f32(x);
                    }
                    for (dst, src) in vc[off..off + width].iter_mut().zip(v.row(t)) {
                        *dst = f16::from_f32(*src);
                    }
                }
            }
        }
        Ok(())
    }
}
