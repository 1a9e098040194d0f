//! The model configuration (Llama family and Gemma 3), independent of the file format it came
//! from.

use std::f64::consts::PI;

/// How query/key channels are paired for rotary embeddings.
///
/// GGUF files of the `llama` architecture store Q/K rows permuted so that channel pairs are
/// adjacent (`2i, 2i+1`); HF checkpoints (and GGUF `qwen2`) pair channel `i` with `i + d/2`.
/// Both rotate pair `i` by `position * inv_freq[i]`; only the channel indices differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)` (ggml "normal" rope).
    Interleaved,
    /// Pairs `(i, i + d/2)` (HF `rotate_half`, ggml "neox" rope).
    HalfSplit,
}

/// Llama-3 style frequency-dependent rope scaling (HF `rope_type = "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub style: RopeStyle,
    /// Channels of each head that rotate (the rest pass through); equals `head_dim` for Llama.
    pub num_rotary_dims: usize,
    pub llama3_scaling: Option<Llama3Scaling>,
    /// Per-pair divisors of the frequencies (GGUF `rope_freqs.weight`), if the file has them.
    pub freq_factors: Option<Vec<f32>>,
}

impl RopeConfig {
    /// The inverse frequency of each rotary pair, `[num_rotary_dims / 2]`.
    ///
    /// Computed as HF does (`1 / theta^(2i/d)`), then scaled; f64 inside, rounded once.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.num_rotary_dims;
        (0..d / 2)
            .map(|i| {
                let mut f = 1.0 / self.theta.powf((2 * i) as f64 / d as f64);
                if let Some(s) = &self.llama3_scaling {
                    f = s.scale(f);
                }
                if let Some(factors) = &self.freq_factors {
                    f /= factors[i] as f64;
                }
                f as f32
            })
            .collect()
    }
}

impl Llama3Scaling {
    /// Low frequencies are divided by `factor`, high ones kept, the band between blended.
    fn scale(&self, inv_freq: f64) -> f64 {
        let low_wavelen = self.original_max_position_embeddings / self.low_freq_factor;
        let high_wavelen = self.original_max_position_embeddings / self.high_freq_factor;
        let wavelen = 2.0 * PI / inv_freq;
        if wavelen < high_wavelen {
            inv_freq
        } else if wavelen > low_wavelen {
            inv_freq / self.factor
        } else {
            let smooth =
                (self.original_max_position_embeddings / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor);
            (1.0 - smooth) * inv_freq / self.factor + smooth * inv_freq
        }
    }
}

/// The gate activation of the feed-forward block: `down(act(gate(x)) * up(x))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)` (Llama, Mistral, Qwen2).
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
}

/// Sliding-window attention on some layers (Gemma 3: five local layers to one global).
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Keys a local layer's query sees: its own and the `size - 1` before it.
    pub size: usize,
    /// Every `pattern`-th layer (layers `pattern - 1`, `2 * pattern - 1`, ...) is global, the
    /// others local; 1 would make every layer global.
    pub pattern: usize,
    /// The rope base of the local layers (unscaled); the global ones use [`ModelConfig::rope`].
    pub local_rope_theta: f64,
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Architecture name as the file states it (`llama`, `qwen2`, ...), for display.
    pub arch: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    /// Q, K and V projections carry a bias (Qwen2).
    pub qkv_bias: bool,
    /// The output projection is the token embedding.
    pub tie_word_embeddings: bool,
    /// What the architecture does beyond a Llama block.
    pub features: Features,
}

/// What a model's blocks do beyond Llama's; the default is none of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    pub activation: Activation,
    /// Multiplies the token embeddings (Gemma: `√hidden_size`).
    pub embed_scale: Option<f32>,
    /// Each query and key head is RMS-normalised (one weight per head dim) before the rope.
    pub qk_norm: bool,
    /// The attention and FFN outputs are RMS-normalised before they join the residual.
    pub post_norms: bool,
    /// Multiplies `q·k`; `None`: `1/√head_dim`.
    pub attention_scale: Option<f32>,
    /// Logits become `cap · tanh(logits / cap)`.
    pub final_logit_softcap: Option<f32>,
    pub sliding_window: Option<SlidingWindow>,
}

impl Default for Features {
    fn default() -> Features {
        Features {
            activation: Activation::Silu,
            embed_scale: None,
            qk_norm: false,
            post_norms: false,
            attention_scale: None,
            final_logit_softcap: None,
            sliding_window: None,
        }
    }
}

impl ModelConfig {
    /// Width of the query projection output (`num_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the key (and value) projection output.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// The keys layer `layer`'s queries see: `Some(window)` on a local layer.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let w = self.features.sliding_window.as_ref()?;
        (!(layer + 1).is_multiple_of(w.pattern)).then_some(w.size)
    }

    /// How the layers share KV pages when the local layers keep only their window
    /// (`kv::WindowGroups`): `(page_layers, local_pages)`, a page holding one block of
    /// `page_layers` layers (the global layers' number), the local layers in `local_pages`
    /// groups of that many (the last may be short). `None` without both kinds of layer.
    pub fn kv_groups(&self) -> Option<(usize, usize)> {
        let local = (0..self.num_layers).filter(|&i| self.layer_window(i).is_some()).count();
        let global = self.num_layers - local;
        (local > 0 && global > 0).then(|| (global, local.div_ceil(global)))
    }

    /// Where layer `layer`'s K/V lives when the pages are shared as [`Self::kv_groups`] says:
    /// `(plan, layer in the page)`, plan 0 the global one and `1 + g` local group `g`'s.
    pub fn kv_place(&self, layer: usize) -> (usize, usize) {
        let Some((page_layers, _)) = self.kv_groups() else { return (0, layer) };
        let local = self.layer_window(layer).is_some();
        let rank = (0..layer).filter(|&i| self.layer_window(i).is_some() == local).count();
        if local { (1 + rank / page_layers, rank % page_layers) } else { (0, rank) }
    }

    /// The rope of the local layers, where they have their own.
    pub fn local_rope(&self) -> Option<RopeConfig> {
        let w = self.features.sliding_window.as_ref()?;
        Some(RopeConfig { theta: w.local_rope_theta, llama3_scaling: None, freq_factors: None, ..self.rope.clone() })
    }

    /// `q·k`'s multiplier.
    pub fn attention_scale(&self) -> f32 {
        self.features.attention_scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt())
    }

    /// Checks the invariants the forward pass relies on; returns a description of the first
    /// violation.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} is 0"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!("num_heads ({}) is not a multiple of num_kv_heads ({})", self.num_heads, self.num_kv_heads));
        }
        let rot = self.rope.num_rotary_dims;
        if rot == 0 || !rot.is_multiple_of(2) || rot > self.head_dim {
            return Err(format!("rotary dims {rot} invalid for head_dim {}", self.head_dim));
        }
        if let Some(f) = &self.rope.freq_factors
            && f.len() != rot / 2
        {
            return Err(format!("rope_freqs has {} entries, expected {}", f.len(), rot / 2));
        }
        if !(self.rope.theta > 0.0 && self.rope.theta.is_finite()) {
            return Err(format!("rope theta {} is not a positive number", self.rope.theta));
        }
        if !(self.rms_eps >= 0.0 && self.rms_eps.is_finite()) {
            return Err(format!("rms eps {} invalid", self.rms_eps));
        }
        let f = &self.features;
        if let Some(w) = &f.sliding_window {
            if w.size == 0 || w.pattern == 0 {
                return Err(format!("sliding window of {} keys, every {}th layer global", w.size, w.pattern));
            }
            if !(w.local_rope_theta > 0.0 && w.local_rope_theta.is_finite()) {
                return Err(format!("local rope theta {} is not a positive number", w.local_rope_theta));
            }
        }
        for (name, v) in
            [("embedding scale", f.embed_scale), ("attention scale", f.attention_scale), ("logit soft-cap", f.final_logit_softcap)]
        {
            if v.is_some_and(|v| !(v > 0.0 && v.is_finite())) {
                return Err(format!("{name} {v:?} is not a positive number"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(scaling: Option<Llama3Scaling>) -> RopeConfig {
        RopeConfig { theta: 500000.0, style: RopeStyle::HalfSplit, num_rotary_dims: 16, llama3_scaling: scaling, freq_factors: None }
    }

    #[test]
    fn inv_freq_default_matches_formula() {
        let f = rope(None).inv_freq();
        assert_eq!(f.len(), 8);
        assert_eq!(f[0], 1.0);
        let expected = 1.0 / 500000f64.powf(14.0 / 16.0);
        assert!((f[7] as f64 - expected).abs() < 1e-12);
    }

    #[test]
    fn llama3_scaling_keeps_high_divides_low_blends_middle() {
        let s = Llama3Scaling { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64.0 };
        let plain = rope(None).inv_freq();
        let scaled = rope(Some(s)).inv_freq();
        for (p, q) in plain.iter().zip(&scaled) {
            let wavelen = 2.0 * PI / *p as f64;
            if wavelen < 16.0 {
                assert_eq!(p, q);
            } else if wavelen > 64.0 {
                assert!(((*p / 8.0) - q).abs() <= 1e-7 * p.abs());
            } else {
                assert!(q < p && *q > *p / 8.0);
            }
        }
        // The fixture's 16-dim heads cover all three bands.
        assert!(plain.iter().any(|p| 2.0 * PI / (*p as f64) < 16.0));
        assert!(plain.iter().any(|p| 2.0 * PI / (*p as f64) > 64.0));
    }
}
