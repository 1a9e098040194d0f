//! The paged KV cache: one pool of fixed-size blocks per model, addressed through per-sequence
//! block tables.
//!
//! **Layout** (shared by every backend): V is an array of shape
//! `[num_layers][num_blocks][block_size][num_kv_heads][head_dim]`; K has the same size with
//! the last three dimensions in the order `[num_kv_heads][head_dim][block_size]`, a block's
//! keys innermost, so attention scores a block's keys one per vector lane. A *slot* is
//! `block_id * block_size + offset_in_block`, so the V vector of (layer, slot, head) starts at
//! element `layer * layer_stride + slot * token_stride + head * head_dim`, and element `i` of
//! its K vector is at [`KvLayout::k_index`]. A sequence's token at position `p` lives in slot
//! `table[p / block_size] * block_size + p % block_size`.
//!
//! [`BlockManager`] hands out block ids with reference counts, keeps the automatic prefix
//! cache, and gives each sequence a [`SeqBlocks`] table that releases its blocks when dropped;
//! its module doc states the contract (invariants and the cost of each operation).

mod block_manager;

pub use block_manager::{BlockManager, CacheStats, PrefixHit, SeqBlocks, root_hash};

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

    /// Element offset of the vector of (layer, slot, head 0).
    pub fn slot_offset(&self, layer: usize, slot: usize) -> usize {
        layer * self.layer_stride() + slot * self.token_stride()
    }

    /// Element index of K's value `j` (head `j / head_dim`, dimension `j % head_dim`) for
    /// (layer, slot): `j` steps by `block_size`.
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
