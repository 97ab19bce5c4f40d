//! One training step: both towers forward, the symmetric contrastive loss (label smoothing
//! 0.1), backward, gradient clipping and the optimiser update. [`train_step_data_parallel`] is
//! the same step as one of N ranks over a global batch (the scheme is in `crate::dist`).

use std::time::Instant;

use autograd::ops::contrastive::{contrastive_loss, contrastive_rows};
use autograd::ops::{elementwise as ew, norm::with_batch_stats_sync, reduce};
use autograd::Var;
use nn::optim::{clip_grad_norm, Optimizer};
use nn::{Ctx, Module};
use tensor::{Rng, Tensor};
use tokenizer::WordPiece;

use crate::dist::{purpose, Comm, GradientBuckets};
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
    /// Waiting for other ranks: gathers, the embedding gradients, the gradient buckets not yet
    /// reduced when backward ends (data-parallel runs only; the part overlapped with backward
    /// is not counted).
    pub communication: f64,
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
            ("communication", self.communication),
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
    let image_embeddings = embed_images(model, cfg, batch, &mut ctx)?;
    let t_text = Instant::now();
    let text_embeddings = embed_texts(model, cfg, &tokens, &mut ctx)?;
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
    update(model, opt, cfg, times)?;
    Ok(loss_value)
}

/// The image tower forward; a locked tower runs in eval mode and builds no graph.
fn embed_images(model: &DualEncoder, cfg: &TrainConfig, batch: &Batch, ctx: &mut Ctx) -> Result<Var> {
    if let Some(features) = &batch.features {
        // a locked tower's cached features: only the normalisation remains
        return Ok(autograd::ops::contrastive::l2_normalize(&Var::constant(features.clone()), 1e-12)?);
    }
    if cfg.lock_image {
        let mut eval = Ctx::eval();
        return Ok(autograd::no_grad(|| model.embed_images(&batch.images, &mut eval))?);
    }
    Ok(model.embed_images(&batch.images, ctx)?)
}

/// The text tower forward; a locked encoder runs in eval mode (no dropout) under its projection.
fn embed_texts(model: &DualEncoder, cfg: &TrainConfig, tokens: &crate::bert::TokenBatch, ctx: &mut Ctx) -> Result<Var> {
    if cfg.lock_text {
        return Ok(model.embed_texts(tokens, &mut Ctx::eval())?);
    }
    Ok(model.embed_texts(tokens, ctx)?)
}

/// Gradient clipping and the optimiser step, then the gradients cleared for the next step.
fn update(model: &DualEncoder, opt: &mut dyn Optimizer, cfg: &TrainConfig, times: &mut StepTimes) -> Result<()> {
    let t_update = Instant::now();
    if let Some(max_norm) = cfg.clip_norm {
        clip_grad_norm(&model.named_parameters(), max_norm);
    }
    opt.step()?;
    opt.zero_grad();
    times.optimiser += t_update.elapsed().as_secs_f64();
    Ok(())
}

/// What one data-parallel step did.
pub struct DataParallelStep {
    /// The loss of the global batch (the same on every rank); None when the step was skipped
    /// because some rank had no pair left or the global batch had fewer than 2.
    pub loss: Option<f32>,
    /// Pairs in the global batch.
    pub pairs: usize,
}

/// One rank's part of a data-parallel step over the global batch (all ranks call it together
/// with their own share of the batch). The loss and every parameter gradient equal those of
/// one process training on the concatenated batch; the update is the same on every rank.
#[allow(clippy::too_many_arguments)]
pub fn train_step_data_parallel(
    model: &DualEncoder,
    opt: &mut dyn Optimizer,
    tok: &WordPiece,
    cfg: &TrainConfig,
    batch: &Batch,
    step: u64,
    times: &mut StepTimes,
    comm: &Comm,
    buckets: &GradientBuckets,
) -> Result<DataParallelStep> {
    // how many pairs each rank holds this step (some images may have failed to decode)
    let t_comm = Instant::now();
    let counts = comm.all_gather_u64(purpose::CONTROL, batch.texts.len() as u64)?;
    times.communication += t_comm.elapsed().as_secs_f64();
    let pairs: usize = counts.iter().map(|&c| c as usize).sum();
    if counts.contains(&0) || pairs < 2 {
        return Ok(DataParallelStep { loss: None, pairs });
    }
    let offset: usize = counts[..comm.rank()].iter().map(|&c| c as usize).sum();
    let texts: Vec<&str> = batch.texts.iter().map(String::as_str).collect();
    let tokens = token_batch(tok, &texts, cfg.max_tokens)?;

    // 1. forward, local pairs: (n, D) unit rows from each tower. Dropout masks differ per rank.
    let t_forward = Instant::now();
    let mut ctx = Ctx {
        training: true,
        rng: Rng::new(batch.ctx_seed ^ (comm.rank() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    };
    let bn_sync = if cfg.sync_bn { comm.batch_stats_sync() } else { None };
    let (image_embeddings, text_embeddings) = with_batch_stats_sync(bn_sync, || -> Result<(Var, Var)> {
        let x = embed_images(model, cfg, batch, &mut ctx)?;
        let t_text = Instant::now();
        let y = embed_texts(model, cfg, &tokens, &mut ctx)?;
        times.image_forward += t_text.duration_since(t_forward).as_secs_f64();
        times.text_forward_and_loss += t_text.elapsed().as_secs_f64();
        Ok((x, y))
    })?;
    let t_loss = Instant::now();
    let (x_local, y_local) = (image_embeddings.value(), text_embeddings.value());
    let d = x_local.shape()[1];

    // 2. the global batch's embeddings, in rank order: (M, D)
    let t_comm = Instant::now();
    let (x_all, _) = comm.all_gather_rows(purpose::EMBEDDINGS, &x_local.to_vec(), d)?;
    let (y_all, _) = comm.all_gather_rows(purpose::EMBEDDINGS, &y_local.to_vec(), d)?;
    times.communication += t_comm.elapsed().as_secs_f64();

    // 3. this rank's shard of the loss, on leaves cut from the towers: its rows against all
    //    columns, both directions. The shards of all ranks sum to the global loss.
    let leaf = |t: Tensor| {
        let v = Var::constant(t);
        v.set_requires_grad(true);
        v
    };
    let (xr, yr) = (leaf(x_local.clone()), leaf(y_local.clone()));
    let (xa, ya) = (leaf(Tensor::from_vec(x_all, &[pairs, d])?), leaf(Tensor::from_vec(y_all, &[pairs, d])?));
    let t = &model.log_temperature;
    let shard_loss = ew::add(
        &contrastive_rows(&xr, &ya, t, offset, LABEL_SMOOTHING)?,
        &contrastive_rows(&yr, &xa, t, offset, LABEL_SMOOTHING)?,
    )?;
    let mut control = [shard_loss.value().item()? as f64];
    comm.all_reduce_f64(purpose::CONTROL, &mut control)?;
    let loss_value = control[0] as f32;
    if !loss_value.is_finite() {
        return Err(AlignError::training(Some(step), format!("the loss is {loss_value}")));
    }
    // gradients of its rows, of all columns, and the temperature's share (summed over ranks
    // with the parameter gradients below)
    shard_loss.backward()?;
    times.text_forward_and_loss += t_loss.elapsed().as_secs_f64();

    // 4. column gradients summed over ranks; this rank keeps its own rows: dL/dx_r, dL/dy_r
    let t_comm = Instant::now();
    let grad = |v: &Var| v.grad().map(|g| g.to_vec()).unwrap_or_else(|| vec![0.0; v.value().numel()]);
    let columns: Vec<f32> = grad(&xa).into_iter().chain(grad(&ya)).collect();
    let columns = comm.all_reduce(purpose::EMBEDDING_GRADIENTS, columns)?;
    times.communication += t_comm.elapsed().as_secs_f64();
    let n = batch.texts.len();
    let own = |rows: Vec<f32>, start: usize| -> Result<Tensor> {
        let summed = &columns[start + offset * d..start + (offset + n) * d];
        Ok(Tensor::from_vec(rows.iter().zip(summed).map(|(a, b)| a + b).collect(), &[n, d])?)
    };
    let gx = own(grad(&xr), 0)?;
    let gy = own(grad(&yr), pairs * d)?;

    // 5. backward through both towers (one root: sum(x * gx) + sum(y * gy) has exactly these
    //    gradients), each gradient bucket reduced over ranks as soon as backward fills it
    let t_backward = Instant::now();
    let root = ew::add(
        &reduce::sum_all(&ew::mul(&image_embeddings, &Var::constant(gx))?)?,
        &reduce::sum_all(&ew::mul(&text_embeddings, &Var::constant(gy))?)?,
    )?;
    let mut reducer = buckets.reducer(comm);
    reducer.mark_those_with_gradients()?;
    root.backward_with_hook(Tensor::scalar(1.0), &mut |ids| {
        reducer.mark_ready(ids).map_err(|e| tensor::TensorError::Graph(e.to_string()))
    })?;
    times.backward += t_backward.elapsed().as_secs_f64();
    let t_comm = Instant::now();
    reducer.finish()?;
    times.communication += t_comm.elapsed().as_secs_f64();

    // 6. the same update on every rank
    update(model, opt, cfg, times)?;

    // 7. batch norm's running statistics: each rank folded in its own batch statistics (unless
    //    synchronised, when they are equal already); their mean over ranks keeps every replica
    //    identical at every step, so checkpoints, evaluation and resumed runs see one model
    if !cfg.sync_bn {
        let t_comm = Instant::now();
        crate::dist::average_buffers(&model.named_buffers(), comm)?;
        times.communication += t_comm.elapsed().as_secs_f64();
    }
    Ok(DataParallelStep { loss: Some(loss_value), pairs })
}
