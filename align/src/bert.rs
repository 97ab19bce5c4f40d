//! BERT (Devlin et al. 2019), the ALIGN text tower, with Hugging Face parameter names so that
//! `model.safetensors` files load as they are (with or without the `bert.` prefix).
//!
//! Post-LN encoder layers: x = LN(x + Attn(x)); x = LN(x + FFN(x)), FFN = Linear -> GELU ->
//! Linear. Q, K and V come from one fused projection GEMM and attention is one op
//! (`autograd::ops::attention`: scores, masked softmax, dropout and the weighted sum per head,
//! with no head-split copies). The ALIGN text tower takes the final
//! hidden state of [CLS] (not the tanh pooler) through one Linear layer to the embedding width.
//! Compare candle-transformers' `bert.rs` for another compact take with the same names.

use std::collections::BTreeMap;
use std::path::Path;

use autograd::ops::{attention, elementwise as ew, matmul::linear_stacked, reduce, shape};
use autograd::Var;
use kernels::activation::Activation;
use nn::layers::{Dropout, Embedding, LayerNorm, Linear};
use nn::{Ctx, LoadReport, Module};
use tensor::io::safetensors::SafeTensors;
use tensor::{Result, Rng, Tensor, TensorError};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    pub hidden_dropout: f32,
    pub attention_dropout: f32,
    /// GELU in erf form ("gelu") or tanh form ("gelu_new").
    pub gelu_tanh: bool,
}

impl BertConfig {
    /// From a Hugging Face BERT `config.json` (or AlignModel's `text_config`); missing keys take
    /// BERT-base's values. Errors say which setting is not supported.
    pub fn from_hf(v: &serde_json::Value) -> std::result::Result<BertConfig, String> {
        use crate::hf_align::{count, number};
        let act = v.get("hidden_act").and_then(serde_json::Value::as_str).unwrap_or("gelu");
        if !matches!(act, "gelu" | "gelu_new" | "gelu_pytorch_tanh") {
            return Err(format!("activation {act} is not supported"));
        }
        if v.get("position_embedding_type").and_then(serde_json::Value::as_str).is_some_and(|p| p != "absolute") {
            return Err("only absolute position embeddings are supported".into());
        }
        Ok(BertConfig {
            vocab_size: count(v, "vocab_size", 30522),
            hidden_size: count(v, "hidden_size", 768),
            num_layers: count(v, "num_hidden_layers", 12),
            num_heads: count(v, "num_attention_heads", 12),
            intermediate_size: count(v, "intermediate_size", 3072),
            max_position_embeddings: count(v, "max_position_embeddings", 512),
            type_vocab_size: count(v, "type_vocab_size", 2),
            layer_norm_eps: number(v, "layer_norm_eps", 1e-12) as f32,
            hidden_dropout: number(v, "hidden_dropout_prob", 0.1) as f32,
            attention_dropout: number(v, "attention_probs_dropout_prob", 0.1) as f32,
            gelu_tanh: act != "gelu",
        })
    }

    fn preset(layers: usize, hidden: usize, heads: usize, inter: usize) -> BertConfig {
        BertConfig {
            vocab_size: 30522,
            hidden_size: hidden,
            num_layers: layers,
            num_heads: heads,
            intermediate_size: inter,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_dropout: 0.1,
            attention_dropout: 0.1,
            gelu_tanh: false,
        }
    }
    pub fn tiny() -> BertConfig {
        Self::preset(2, 128, 2, 512)
    }
    pub fn mini() -> BertConfig {
        Self::preset(4, 256, 4, 1024)
    }
    pub fn small() -> BertConfig {
        Self::preset(4, 512, 8, 2048)
    }
    pub fn medium() -> BertConfig {
        Self::preset(8, 512, 8, 2048)
    }
    pub fn base() -> BertConfig {
        Self::preset(12, 768, 12, 3072)
    }
    pub fn large() -> BertConfig {
        Self::preset(24, 1024, 16, 4096)
    }

    pub fn by_name(name: &str) -> Option<BertConfig> {
        Some(match name {
            "tiny" => Self::tiny(),
            "mini" => Self::mini(),
            "small" => Self::small(),
            "medium" => Self::medium(),
            "base" => Self::base(),
            "large" => Self::large(),
            _ => return None,
        })
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<BertConfig> {
        let path = path.as_ref();
        let err = |msg: String| TensorError::Format { file: path.display().to_string(), tensor: None, msg };
        let text =
            std::fs::read_to_string(path).map_err(|source| TensorError::Io { path: path.to_path_buf(), source })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let num = |k: &str| {
            v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize).ok_or_else(|| err(format!("missing integer '{k}'")))
        };
        let act = v.get("hidden_act").and_then(|a| a.as_str()).unwrap_or("gelu");
        let cfg = BertConfig {
            vocab_size: num("vocab_size")?,
            hidden_size: num("hidden_size")?,
            num_layers: num("num_hidden_layers")?,
            num_heads: num("num_attention_heads")?,
            intermediate_size: num("intermediate_size")?,
            max_position_embeddings: num("max_position_embeddings")?,
            type_vocab_size: num("type_vocab_size").unwrap_or(2),
            layer_norm_eps: v.get("layer_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-12) as f32,
            hidden_dropout: v.get("hidden_dropout_prob").and_then(|x| x.as_f64()).unwrap_or(0.1) as f32,
            attention_dropout: v.get("attention_probs_dropout_prob").and_then(|x| x.as_f64()).unwrap_or(0.1) as f32,
            gelu_tanh: match act {
                "gelu" => false,
                "gelu_new" | "gelu_pytorch_tanh" => true,
                other => return Err(err(format!("unsupported hidden_act '{other}'"))),
            },
        };
        if cfg.num_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_heads) {
            return Err(err(format!("hidden_size {} not divisible by {} heads", cfg.hidden_size, cfg.num_heads)));
        }
        Ok(cfg)
    }

    /// Parameters of the encoder (embeddings + layers, no pooler).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let emb = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let layer = 4 * (h * h + h)
            + 2 * (2 * h)
            + (h * self.intermediate_size + self.intermediate_size)
            + (self.intermediate_size * h + h);
        emb + self.num_layers * layer
    }
}

/// A batch of token ids: (batch, seq) row-major, with its attention mask (1 token, 0 padding).
#[derive(Clone, Debug)]
pub struct TokenBatch {
    pub ids: Vec<usize>,
    pub mask: Tensor,
    pub batch: usize,
    pub seq: usize,
}

impl TokenBatch {
    /// Pads encodings to the longest one.
    pub fn from_encodings(encs: &[tokenizer::Encoding]) -> Result<TokenBatch> {
        let seq = encs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let batch = encs.len();
        let mut ids = vec![0usize; batch * seq];
        let mut mask = vec![0.0f32; batch * seq];
        for (b, e) in encs.iter().enumerate() {
            for (t, &id) in e.ids.iter().enumerate() {
                ids[b * seq + t] = id as usize;
                mask[b * seq + t] = e.attention_mask[t] as f32;
            }
        }
        Ok(TokenBatch { ids, mask: Tensor::from_vec(mask, &[batch, seq])?, batch, seq })
    }
}

#[derive(Module)]
pub struct BertEmbeddings {
    #[module(name = "word_embeddings")]
    pub word: Embedding,
    #[module(name = "position_embeddings")]
    pub position: Embedding,
    #[module(name = "token_type_embeddings")]
    pub token_type: Embedding,
    #[module(name = "LayerNorm")]
    pub layer_norm: LayerNorm,
    #[module(skip)]
    pub dropout: Dropout,
}

#[derive(Module)]
pub struct BertLayer {
    #[module(name = "attention.self.query")]
    pub query: Linear,
    #[module(name = "attention.self.key")]
    pub key: Linear,
    #[module(name = "attention.self.value")]
    pub value: Linear,
    #[module(name = "attention.output.dense")]
    pub attention_output: Linear,
    #[module(name = "attention.output.LayerNorm")]
    pub attention_norm: LayerNorm,
    #[module(name = "intermediate.dense")]
    pub intermediate: Linear,
    #[module(name = "output.dense")]
    pub output: Linear,
    #[module(name = "output.LayerNorm")]
    pub output_norm: LayerNorm,
}

impl BertLayer {
    /// x (rows, H) -> [x Wq^T + bq | x Wk^T + bk | x Wv^T + bv] (rows, 3H) in one GEMM.
    pub fn qkv_projection(&self, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        let weights = [&self.query.weight, &self.key.weight, &self.value.weight];
        match (&self.query.bias, &self.key.bias, &self.value.bias) {
            (Some(q), Some(k), Some(v)) => linear_stacked(x, &weights, Some(&[q, k, v])),
            (None, None, None) => linear_stacked(x, &weights, None),
            // mixed biases (no checkpoint we know has them): three projections side by side
            _ => {
                let parts = [self.query.forward(x, ctx)?, self.key.forward(x, ctx)?, self.value.forward(x, ctx)?];
                shape::concat(&[&parts[0], &parts[1], &parts[2]], 1)
            }
        }
    }
}

#[derive(Module)]
pub struct Bert {
    #[module(skip)]
    pub config: BertConfig,
    pub embeddings: BertEmbeddings,
    #[module(name = "encoder.layer")]
    pub layers: Vec<BertLayer>,
}

impl Bert {
    /// Random BERT with the original initialisation (normal(0, 0.02), zero biases, unit norms).
    pub fn new(config: BertConfig, rng: &mut Rng) -> Bert {
        let h = config.hidden_size;
        let lin = |i: usize, o: usize, rng: &mut Rng| Linear::new_normal(i, o, 0.02, rng);
        let embeddings = BertEmbeddings {
            word: Embedding::new(config.vocab_size, h, 0.02, rng),
            position: Embedding::new(config.max_position_embeddings, h, 0.02, rng),
            token_type: Embedding::new(config.type_vocab_size, h, 0.02, rng),
            layer_norm: LayerNorm::new(h, config.layer_norm_eps),
            dropout: Dropout { p: config.hidden_dropout },
        };
        let layers = (0..config.num_layers)
            .map(|_| BertLayer {
                query: lin(h, h, rng),
                key: lin(h, h, rng),
                value: lin(h, h, rng),
                attention_output: lin(h, h, rng),
                attention_norm: LayerNorm::new(h, config.layer_norm_eps),
                intermediate: lin(h, config.intermediate_size, rng),
                output: lin(config.intermediate_size, h, rng),
                output_norm: LayerNorm::new(h, config.layer_norm_eps),
            })
            .collect();
        Bert { config, embeddings, layers }
    }

    /// Last hidden states (batch, seq, hidden). Token types are all 0.
    pub fn forward(&self, tokens: &TokenBatch, ctx: &mut Ctx) -> Result<Var> {
        let (b, t, h) = (tokens.batch, tokens.seq, self.config.hidden_size);
        if t > self.config.max_position_embeddings {
            return Err(TensorError::Shape {
                op: "bert",
                msg: format!("{t} tokens exceed {} positions", self.config.max_position_embeddings),
            });
        }
        if let Some(&bad) = tokens.ids.iter().find(|&&i| i >= self.config.vocab_size) {
            return Err(TensorError::Index { op: "bert token id", index: bad, size: self.config.vocab_size });
        }
        let e = &self.embeddings;
        let words = e.word.lookup(&tokens.ids, &[b, t])?;
        let positions: Vec<usize> = (0..t).collect();
        let pos = e.position.lookup(&positions, &[1, t])?;
        let types = e.token_type.lookup(&[0], &[1, 1])?;
        let x = ew::add(&ew::add(&words, &pos)?, &types)?;
        let mut x = e.dropout.forward(&e.layer_norm.forward(&x, ctx)?, ctx)?;
        let heads = self.config.num_heads;
        let dropout = Dropout { p: self.config.hidden_dropout };
        for layer in &self.layers {
            // One projection GEMM for Q, K and V: x (B*T, H) times [Wq; Wk; Wv]^T (3H, H).
            // Concatenating the weights costs 3H*H copies per step and saves two passes over
            // x, two GEMM launches and, in the backward, two (B*T, H) gradient sums.
            let qkv = layer.qkv_projection(&shape::reshape(&x, &[b * t, h])?, ctx)?;
            let qkv = shape::reshape(&qkv, &[b, t, 3 * h])?;
            // (B, T, 3H) -> (B, T, H): every head's softmax(Q K^T / sqrt(dh) + mask) V
            let attn_drop = (ctx.training && self.config.attention_dropout > 0.0)
                .then_some((self.config.attention_dropout, &mut ctx.rng));
            let context = attention::self_attention(&qkv, heads, Some(&tokens.mask), attn_drop)?;
            let attn = dropout.forward(&layer.attention_output.forward(&context, ctx)?, ctx)?;
            x = layer.attention_norm.forward(&ew::add(&x, &attn)?, ctx)?;
            // Inference in bf16 runs the feed-forward block fused, its 4H-wide hidden layer held
            // in bf16 only; otherwise (training, f32) the separate ops.
            let act = if self.config.gelu_tanh { Activation::GeluTanh } else { Activation::GeluErf };
            let (inter, output) = (&layer.intermediate, &layer.output);
            let fused = autograd::ops::matmul::feed_forward_inference(
                &x,
                &inter.weight,
                inter.bias.as_ref(),
                Some(act),
                &output.weight,
                output.bias.as_ref(),
            )?;
            let out = match fused {
                Some(out) => out,
                None => {
                    let hidden = inter.forward(&x, ctx)?;
                    let hidden = if self.config.gelu_tanh { ew::gelu_tanh(&hidden) } else { ew::gelu(&hidden) };
                    output.forward(&hidden, ctx)?
                }
            };
            let out = dropout.forward(&out, ctx)?;
            x = layer.output_norm.forward(&ew::add(&x, &out)?, ctx)?;
        }
        Ok(x)
    }

    /// Loads a Hugging Face checkpoint (safetensors), with or without the `bert.` prefix.
    /// Pooler weights, `position_ids` and heads of other tasks are ignored (listed in the
    /// report as unexpected); anything this model needs that is missing or mis-shaped is an
    /// error and nothing is changed.
    pub fn load_hf_safetensors(&self, path: impl AsRef<Path>) -> Result<LoadReport> {
        let st = SafeTensors::open(path.as_ref())?;
        let mut sd = BTreeMap::new();
        for name in st.names() {
            let key = name.strip_prefix("bert.").unwrap_or(name);
            if key.starts_with("embeddings.") || key.starts_with("encoder.") {
                if key.ends_with("position_ids") {
                    continue;
                }
                sd.insert(key.to_string(), st.tensor(name)?);
            }
        }
        let report = self.load_state_dict(&sd, false)?;
        if !report.missing.is_empty() {
            return Err(TensorError::Format {
                file: path.as_ref().display().to_string(),
                tensor: None,
                msg: format!("checkpoint lacks: {}", report.missing.join(", ")),
            });
        }
        Ok(report)
    }
}

/// Final hidden state of [CLS] (position 0): (batch, hidden).
pub fn cls_state(hidden: &Var) -> Result<Var> {
    let s = hidden.shape();
    shape::reshape(&shape::narrow(hidden, 1, 0, 1)?, &[s[0], s[2]])
}

/// Mean of the hidden states over real (mask = 1) tokens: (batch, hidden).
pub fn masked_mean(hidden: &Var, mask: &Tensor) -> Result<Var> {
    let s = hidden.shape();
    let m = Var::constant(mask.reshape(&[s[0], s[1], 1])?);
    let summed = reduce::sum(&ew::mul(hidden, &m)?, &[1], false)?;
    let counts = Var::constant(mask.sum(&[1], true)?.map(|c| c.max(1e-9)));
    ew::div(&summed, &counts)
}

/// ALIGN's text tower: BERT, then [CLS] through one Linear layer to the embedding width.
#[derive(Module)]
pub struct TextTower {
    pub bert: Bert,
    #[module(name = "text_projection")]
    pub projection: Linear,
}

impl TextTower {
    pub fn new(config: BertConfig, embed_dim: usize, rng: &mut Rng) -> TextTower {
        let h = config.hidden_size;
        TextTower { bert: Bert::new(config, rng), projection: Linear::new_normal(h, embed_dim, 0.02, rng) }
    }
    /// Unnormalised text embeddings (batch, embed_dim).
    pub fn forward(&self, tokens: &TokenBatch, ctx: &mut Ctx) -> Result<Var> {
        let hidden = self.bert.forward(tokens, ctx)?;
        self.projection.forward(&cls_state(&hidden)?, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_parameter_counts() {
        // BERT-base encoder without pooler: 108.9M (the published 110M includes the pooler)
        let base = BertConfig::base();
        assert_eq!(base.num_parameters() + 768 * 768 + 768, 109_482_240);
        let tiny = Bert::new(BertConfig { vocab_size: 100, ..BertConfig::tiny() }, &mut Rng::new(0));
        assert_eq!(tiny.num_parameters(), BertConfig { vocab_size: 100, ..BertConfig::tiny() }.num_parameters());
        assert!(BertConfig::by_name("large").is_some() && BertConfig::by_name("huge").is_none());
    }
}
