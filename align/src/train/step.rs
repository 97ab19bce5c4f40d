//! One training step: both towers forward, the symmetric contrastive loss (label smoothing
//! 0.1), backward, gradient clipping and the optimiser update.

use std::time::Instant;

use autograd::ops::contrastive::contrastive_loss;
use nn::optim::{clip_grad_norm, Optimizer};
use nn::{Ctx, Module};
use tensor::Rng;
use tokenizer::WordPiece;

use crate::error::{AlignError, Result};
use crate::model::{token_batch, DualEncoder};
use crate::train::batches::Batch;
use crate::train::TrainConfig;

/// The paper's label smoothing of the contrastive targets.
pub const LABEL_SMOOTHING: f32 = 0.1;

/// Seconds spent in each part of the steps so far.
#[derive(Clone, Debug, Default)]
pub struct StepTimes {
    pub data: f64,
    pub image_forward: f64,
    pub text_forward_and_loss: f64,
    pub backward: f64,
    pub optimiser: f64,
}

impl StepTimes {
    /// "data 3%, image forward 30%, ..." for the console.
    pub fn shares(&self) -> String {
        let parts = [
            ("data", self.data),
            ("image forward", self.image_forward),
            ("text forward + loss", self.text_forward_and_loss),
            ("backward", self.backward),
            ("optimiser", self.optimiser),
        ];
        let total: f64 = parts.iter().map(|p| p.1).sum::<f64>().max(1e-9);
        parts.iter().map(|(name, s)| format!("{name} {:.1}%", 100.0 * s / total)).collect::<Vec<_>>().join(", ")
    }
}

/// Trains on one batch at the optimiser's current learning rates; returns the loss.
/// A non-finite loss is an error before anything is updated.
pub fn train_step(
    model: &DualEncoder,
    opt: &mut dyn Optimizer,
    tok: &WordPiece,
    cfg: &TrainConfig,
    batch: &Batch,
    step: u64,
    times: &mut StepTimes,
) -> Result<f32> {
    let texts: Vec<&str> = batch.texts.iter().map(String::as_str).collect();
    let tokens = token_batch(tok, &texts, cfg.max_tokens)?;
    // forward: (N, D) unit rows from each tower, then the loss over the N x N similarities
    let t_forward = Instant::now();
    let mut ctx = Ctx { training: true, rng: Rng::new(batch.ctx_seed) };
    let image_embeddings = model.embed_images(&batch.images, &mut ctx)?;
    let t_text = Instant::now();
    let text_embeddings = model.embed_texts(&tokens, &mut ctx)?;
    let loss = contrastive_loss(&image_embeddings, &text_embeddings, &model.log_temperature, LABEL_SMOOTHING)?;
    times.image_forward += t_text.duration_since(t_forward).as_secs_f64();
    times.text_forward_and_loss += t_text.elapsed().as_secs_f64();
    let loss_value = loss.value().item()?;
    if !loss_value.is_finite() {
        return Err(AlignError::training(Some(step), format!("the loss is {loss_value}")));
    }
    // backward
    let t_backward = Instant::now();
    loss.backward()?;
    times.backward += t_backward.elapsed().as_secs_f64();
    // update
    let t_update = Instant::now();
    if let Some(max_norm) = cfg.clip_norm {
        clip_grad_norm(&model.named_parameters(), max_norm);
    }
    opt.step()?;
    opt.zero_grad();
    times.optimiser += t_update.elapsed().as_secs_f64();
    Ok(loss_value)
}
