//! The engine's KV pool: whether the sliding-window layers keep only their window's pages,
//! how many blocks (pages) the budget holds, and the longest sequence that fits.

use super::{EngineConfig, EngineError};
use crate::backend::Backend;
use crate::kv::WindowGroups;
use crate::model::Llama;

/// The model's pool (and the draft model's, with as many blocks) sized from the budget: the
/// window geometry when the local layers keep only their window, the number of blocks.
#[allow(clippy::type_complexity)]
pub(super) fn allocate<B: Backend>(
    backend: &B,
    llama: &Llama<B>,
    draft: Option<&Llama<B>>,
    config: &EngineConfig,
) -> Result<(Option<WindowGroups>, usize, B::KvPool, Option<B::KvPool>), EngineError> {
    let window = match (llama.config().kv_groups(), &llama.config().features.sliding_window) {
        (Some((_, local_pages)), Some(w)) if config.window_pages && draft.is_none() && w.size < llama.config().max_position_embeddings => {
            Some(WindowGroups { window: w.size, local_pages })
        }
        _ => None,
    };
    // A block holds its positions' K/V in the model's pool and in the draft model's; with
    // window pages, a page holds one block of a group of layers.
    let (bs, dtype) = (config.block_size, config.kv_dtype);
    let layout_of =
        |m: &Llama<B>, n| if window.is_some() { m.kv_page_layout(n, bs, dtype).expect("kv groups") } else { m.kv_layout(n, bs, dtype) };
    let block_bytes = layout_of(llama, 1).bytes_per_block() + draft.map_or(0, |d| d.kv_layout(1, bs, dtype).bytes_per_block());
    // A GPU sizes the pools from its free memory (--gpu-memory-fraction) once every
    // weight is in; the CPU from the configured budget.
    let kv_bytes = backend.kv_memory_budget()?.unwrap_or(config.kv_cache_bytes);
    let num_blocks = kv_bytes / block_bytes.max(1);
    if num_blocks == 0 {
        return Err(EngineError::Config(format!("a KV budget of {kv_bytes} bytes holds no block of {block_bytes} bytes")));
    }
    let kv = backend.alloc_kv(&layout_of(llama, num_blocks))?;
    match window {
        Some(w) => {
            let (page, full) = (layout_of(llama, 1).bytes_per_block(), llama.kv_layout(1, bs, dtype).bytes_per_block());
            let at = |context: usize| {
                let blocks = context.div_ceil(bs);
                (blocks + w.local_pages * (blocks - w.first_block(context, bs))) * page
            };
            tracing::info!(
                "KV cache: {num_blocks} pages of {bs} tokens; the sliding-window layers keep their last {} positions: a sequence of 8192 tokens holds {:.1} MiB (every block kept: {:.1} MiB)",
                w.window,
                at(8192) as f64 / (1u64 << 20) as f64,
                (8192usize.div_ceil(bs) * full) as f64 / (1u64 << 20) as f64
            )
        }
        None => tracing::debug!("engine started: {num_blocks} KV blocks of {} tokens", config.block_size),
    }
    let draft_kv = draft.map(|d| backend.alloc_kv(&d.kv_layout(num_blocks, bs, dtype))).transpose()?;
    Ok((window, num_blocks, kv, draft_kv))
}

/// The longest sequence a pool of `num_blocks` blocks holds alone; with window pages, its
/// local layers keep at most the window before a prompt chunk and the chunk (a partial block
/// at each end) in each page group.
pub(super) fn kv_capacity(num_blocks: usize, window: Option<WindowGroups>, config: &EngineConfig) -> usize {
    let bs = config.block_size;
    let Some(w) = window else { return num_blocks * bs };
    let local_max = (w.window + config.max_num_batched_tokens).div_ceil(bs) + 1;
    let k = w.local_pages;
    if num_blocks >= (1 + k) * local_max { (num_blocks - k * local_max) * bs } else { num_blocks / (1 + k) * bs }
}
