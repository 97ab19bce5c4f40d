//! The ALIGN dual encoder: an image tower and a text tower mapping into one embedding space,
//! both L2-normalised, and one learnable temperature sigma = exp(t) with t = 0 at the start
//! (sigma = 1.0, the paper's initialisation).
//!
//! Checkpoint names: `image_tower.*`, `text_tower.*` and `log_temperature`.

use autograd::ops::contrastive::l2_normalize;
use autograd::Var;
use nn::{Buffer, Ctx, Module};
use tensor::{Rng, Tensor};
use tokenizer::{EncodeOptions, Padding, WordPiece};

use crate::bert::TokenBatch;
use crate::error::Result;
use crate::towers::{build_image_tower, build_text_tower, ImageTower, TextTower, TowerOptions};
use crate::train::TrainConfig;

pub struct DualEncoder {
    pub image: Box<dyn ImageTower>,
    pub text: Box<dyn TextTower>,
    /// t = ln(sigma)
    pub log_temperature: Var,
}

/// The temperature's parameter name (the schedule gives it its own group).
pub const LOG_TEMPERATURE: &str = "log_temperature";

impl DualEncoder {
    /// Builds the towers the configuration names. Initialisation draws from `rng`, image tower
    /// first, so the same seed gives the same model.
    pub fn new(cfg: &TrainConfig, vocab_size: usize, rng: &mut Rng) -> Result<DualEncoder> {
        let mut opts = TowerOptions {
            arch: &cfg.image_arch,
            resolution: cfg.resolution,
            max_tokens: cfg.max_tokens,
            vocab_size,
            embed_dim: 0,
            bn_momentum: cfg.bn_momentum,
            drop_connect: cfg.drop_connect,
            dropout: cfg.text_dropout,
            bert: None,
            efficientnet: cfg.image_efficientnet.as_ref(),
        };
        let image = build_image_tower(&opts, rng)?;
        opts.arch = &cfg.text_arch;
        opts.embed_dim = image.feature_dim();
        opts.bert = cfg.text_bert.as_ref();
        let text = build_text_tower(&opts, rng)?;
        Ok(DualEncoder { image, text, log_temperature: Var::parameter(Tensor::scalar(0.0)) })
    }

    /// Width of the shared embedding space.
    pub fn embed_dim(&self) -> usize {
        self.image.feature_dim()
    }

    /// (N, H, W, 3) images -> (N, D) unit rows.
    pub fn embed_images(&self, images: &Tensor, ctx: &mut Ctx) -> tensor::Result<Var> {
        // the images go to the model's device (a no-op on the CPU)
        let images = images.to_device(self.log_temperature.value().device())?;
        l2_normalize(&self.image.features(&Var::constant(images), ctx)?, 1e-12)
    }

    /// Token batch -> (N, D) unit rows.
    pub fn embed_texts(&self, tokens: &TokenBatch, ctx: &mut Ctx) -> tensor::Result<Var> {
        l2_normalize(&self.text.embed(tokens, ctx)?, 1e-12)
    }

    pub fn temperature(&self) -> f32 {
        self.log_temperature.value().item().map(f32::exp).unwrap_or(f32::NAN)
    }
}

impl Module for DualEncoder {
    fn parameters(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        self.image.parameters(&nn::module::join(prefix, "image_tower"), out);
        self.text.parameters(&nn::module::join(prefix, "text_tower"), out);
        out.push((nn::module::join(prefix, LOG_TEMPERATURE), self.log_temperature.clone()));
    }
    fn buffers(&self, prefix: &str, out: &mut Vec<(String, Buffer)>) {
        self.image.buffers(&nn::module::join(prefix, "image_tower"), out);
        self.text.buffers(&nn::module::join(prefix, "text_tower"), out);
    }
}

/// Tokenises captions to a batch padded to its longest caption (at most `max_tokens`).
pub fn token_batch(tok: &WordPiece, texts: &[&str], max_tokens: usize) -> tensor::Result<TokenBatch> {
    let encs = tok.encode_batch(
        texts,
        &EncodeOptions { max_len: Some(max_tokens), padding: Padding::Longest, ..Default::default() },
    );
    TokenBatch::from_encodings(&encs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::{Bert, BertConfig, TextTower as Bert2Embedding};
    use crate::efficientnet::{EfficientNet, EfficientNetConfig};
    use nn::module::check_state_lists;

    fn config(image: &str, text: &str) -> TrainConfig {
        TrainConfig { image_arch: image.into(), text_arch: text.into(), resolution: 32, ..TrainConfig::tiny() }
    }

    #[test]
    fn every_model_lists_saves_and_loads_all_it_owns() {
        for (image, text) in [("tiny", "tiny"), ("b0", "mini"), ("lite0", "tiny"), ("vit-micro", "tiny")] {
            check_state_lists(|| DualEncoder::new(&config(image, text), 60, &mut Rng::new(1)).unwrap())
                .unwrap_or_else(|e| panic!("{image} + {text}: {e}"));
        }
        // the networks on their own, with their classification parts
        for name in ["b0", "lite0"] {
            let cfg = EfficientNetConfig::by_name(name).unwrap();
            check_state_lists(|| EfficientNet::new(cfg.clone(), &mut Rng::new(2)))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        check_state_lists(|| Bert::new(BertConfig::tiny(), &mut Rng::new(3))).unwrap();
        check_state_lists(|| Bert2Embedding::new(BertConfig::tiny(), 24, &mut Rng::new(4))).unwrap();
    }

    #[test]
    fn an_unknown_tower_names_the_known_ones() {
        let e = DualEncoder::new(&config("b9", "tiny"), 60, &mut Rng::new(0)).err().unwrap().to_string();
        assert!(e.contains("unknown 'b9'") && e.contains("vit-tiny"), "{e}");
    }
}
