//! The paged KV cache: one pool of fixed-size blocks per model, addressed through per-sequence
//! block tables.
//!
//! **Shape and order.** A [`KvLayout`] is a pool's shape: K and V are each
//! `num_layers × num_blocks` blocks of `block_size × num_kv_heads × head_dim` elements, a
//! layer's blocks contiguous. A *slot* is `block_id * block_size + offset_in_block`; a
//! sequence's token at position `p` lives in slot `table[p / block_size] * block_size +
//! p % block_size`. How the elements sit inside a block is the backend's [`KvOrder`] (each
//! backend has exactly one, `Backend::KV_ORDER`), and [`KvLayout::k_at`] / [`KvLayout::v_at`]
//! are each order's one definition:
//! - [`KvOrder::KeysByLane`] (the CPU): V `[slot][kv head][head dim]`, K
//!   `[kv head][head dim][slot]`: a block's keys innermost, so attention scores a block's
//!   keys one per vector lane.
//! - [`KvOrder::HeadMajor`] (the GPU; `kernels/params.h` indexes the same way): K and V both
//!   `[kv head][slot][head dim]`: one head's vectors of a block contiguous, so each lane of a
//!   warp loads a key's consecutive dimensions in one vector load.
//!
//! [`BlockManager`] hands out block ids with reference counts, keeps the automatic prefix
//! cache, and gives each sequence a [`SeqBlocks`] table that releases its blocks when dropped;
//! its module doc states the contract (invariants and the cost of each operation). For a
//! model with sliding-window layers the ids are *pages* ([`WindowGroups`]): the pool's
//! `num_layers` is the number of global layers, and the local layers' groups address the same
//! pool through tables of their own that keep only the window.

mod block_manager;
pub mod events;

pub use block_manager::{BlockManager, CacheStats, NO_BLOCK, PrefixHit, SeqBlocks, WindowGroups, root_hash};
pub use events::{KvEvent, KvEventBatch, KvEventSink};

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    #[error("KV cache full: need {needed} more blocks, {free} free")]
    OutOfBlocks { needed: usize, free: usize },
}

/// Element type of the KV pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    F16,
}

impl KvDtype {
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
        }
    }
}

/// How a backend arranges a block's elements (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvOrder {
    /// V `[slot][kv head][head dim]`, K `[kv head][head dim][slot]` (the CPU's).
    KeysByLane,
    /// K and V `[kv head][slot][head dim]` (the GPU's).
    HeadMajor,
}

/// The shape of a paged KV pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub num_layers: usize,
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: KvDtype,
}

impl KvLayout {
    /// Elements between consecutive tokens (slots) of one layer.
    pub fn token_stride(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Elements of one layer's K (or V) array.
    pub fn layer_stride(&self) -> usize {
        self.num_blocks * self.block_size * self.token_stride()
    }

    /// Elements of the whole K (or V) array.
    pub fn num_elements(&self) -> usize {
        self.num_layers * self.layer_stride()
    }

    /// Elements of one block of one layer.
    pub fn block_elems(&self) -> usize {
        self.block_size * self.token_stride()
    }

    /// Element index of dimension `dim` of head `head`'s K vector at (layer, slot), in `order`.
    pub fn k_at(&self, order: KvOrder, layer: usize, slot: usize, head: usize, dim: usize) -> usize {
        let (block, at) = (slot / self.block_size, slot % self.block_size);
        let base = layer * self.layer_stride() + block * self.block_elems();
        match order {
            KvOrder::KeysByLane => base + (head * self.head_dim + dim) * self.block_size + at,
            KvOrder::HeadMajor => base + (head * self.block_size + at) * self.head_dim + dim,
        }
    }

    /// Element index of dimension `dim` of head `head`'s V vector at (layer, slot), in `order`.
    pub fn v_at(&self, order: KvOrder, layer: usize, slot: usize, head: usize, dim: usize) -> usize {
        let (block, at) = (slot / self.block_size, slot % self.block_size);
        let base = layer * self.layer_stride() + block * self.block_elems();
        match order {
            KvOrder::KeysByLane => base + (at * self.num_kv_heads + head) * self.head_dim + dim,
            KvOrder::HeadMajor => base + (head * self.block_size + at) * self.head_dim + dim,
        }
    }

    /// [`KvOrder::KeysByLane`]'s V vectors of (layer, slot), all heads: their first element
    /// (the CPU's fast path of [`Self::v_at`]).
    pub fn slot_offset(&self, layer: usize, slot: usize) -> usize {
        layer * self.layer_stride() + slot * self.token_stride()
    }

    /// [`KvOrder::KeysByLane`]'s element of K's value `j` (head `j / head_dim`, dimension
    /// `j % head_dim`) for (layer, slot): `j` steps by `block_size` (the CPU's fast path of
    /// [`Self::k_at`]).
    pub fn k_index(&self, layer: usize, slot: usize, j: usize) -> usize {
        let in_block = slot % self.block_size;
        self.slot_offset(layer, slot - in_block) + j * self.block_size + in_block
    }

    /// Bytes one block costs across all layers, K and V.
    pub fn bytes_per_block(&self) -> usize {
        2 * self.num_layers * self.block_size * self.token_stride() * self.dtype.size()
    }

    /// Total bytes of K and V.
    pub fn num_bytes(&self) -> usize {
        self.num_blocks * self.bytes_per_block()
    }

    /// The number of blocks that fit in `budget_bytes` (with this layout's other fields).
    pub fn blocks_for_budget(&self, budget_bytes: usize) -> usize {
        budget_bytes / self.bytes_per_block().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each order places every element of the pool exactly once, and the CPU's fast paths are
    /// its order's definition.
    #[test]
    fn each_order_is_a_bijection_and_the_fast_paths_agree() {
        let l = KvLayout { num_layers: 2, num_blocks: 3, block_size: 4, num_kv_heads: 3, head_dim: 5, dtype: KvDtype::F16 };
        for order in [KvOrder::KeysByLane, KvOrder::HeadMajor] {
            for at in [KvLayout::k_at, KvLayout::v_at] {
                let mut seen = vec![false; l.num_elements()];
                for layer in 0..l.num_layers {
                    for slot in 0..l.num_blocks * l.block_size {
                        for head in 0..l.num_kv_heads {
                            for dim in 0..l.head_dim {
                                let i = at(&l, order, layer, slot, head, dim);
                                assert!(!seen[i], "{order:?}: element {i} twice");
                                seen[i] = true;
                                let block = (layer * l.num_blocks + slot / l.block_size) * l.block_elems();
                                assert!((block..block + l.block_elems()).contains(&i), "{order:?}: outside its block");
                            }
                        }
                    }
                }
                assert!(seen.iter().all(|&s| s), "{order:?}: some element never placed");
            }
        }
        for layer in 0..l.num_layers {
            for slot in 0..l.num_blocks * l.block_size {
                for j in 0..l.token_stride() {
                    let (head, dim) = (j / l.head_dim, j % l.head_dim);
                    assert_eq!(l.k_index(layer, slot, j), l.k_at(KvOrder::KeysByLane, layer, slot, head, dim));
                    assert_eq!(l.slot_offset(layer, slot) + j, l.v_at(KvOrder::KeysByLane, layer, slot, head, dim));
                }
            }
        }
    }
}
