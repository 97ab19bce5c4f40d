//! ALIGN training, top to bottom (read it like llm.c's train_gpt2.c):
//!
//! 1. data: the built-in corpus is generated and cleaned by the paper's filters; a WordPiece
//!    vocabulary is trained on the kept alt-texts; 1,000 clean pairs are held out;
//! 2. model: EfficientNet image tower (pooled features, no head) and BERT text tower ([CLS] ->
//!    Linear to the image width), both L2-normalised, plus one learnable temperature
//!    sigma = exp(t), t = 0 at the start (sigma = 1.0, the paper's initialisation);
//! 3. loss: the fused symmetric contrastive loss with label smoothing 0.1;
//! 4. optimiser: LAMB, weight decay 1e-5 with biases and norms excluded, linear warm-up then
//!    linear decay; the temperature has its own group with a larger learning rate (short CPU
//!    runs cannot afford the paper's million steps for sigma to travel from 1 to ~1/64);
//! 5. every step: a JSONL log line and a progress line (loss, sigma, lr, pairs/s, ETA);
//!    checkpoints (atomic) every N steps and at the end; a non-finite loss stops the run with an
//!    error and leaves the last good checkpoint; `resume` continues a run where it stopped;
//! 6. at the end (and every `eval_every` steps): held-out retrieval, R@1/5/10 both ways.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use autograd::ops::contrastive::{contrastive_loss, l2_normalize};
use autograd::{no_grad, Var};
use nn::checkpoint::{load_checkpoint, save_checkpoint};
use nn::optim::{clip_grad_norm, decay_groups, Lamb, Optimizer, ParamGroup};
use nn::schedule::LrSchedule;
use nn::{Ctx, Module};
use tensor::{Result, Rng, Tensor, TensorError};
use tokenizer::trainer::{train as train_vocab, write_vocab, TrainerOptions};
use tokenizer::{BertOptions, EncodeOptions, Padding, WordPiece};

use crate::bert::{BertConfig, TextTower, TokenBatch};
use crate::data::{
    apply_filters, builtin_corpus, image_batch_checked, read_manifest, read_shards, FilterReport, Pair, SkipReport,
};
use crate::efficientnet::{EfficientNet, EfficientNetConfig};
use crate::retrieval::{retrieval_metrics, RetrievalMetrics};

/// Everything that defines a run (stored as JSON in every checkpoint's metadata, so evaluation
/// rebuilds the same model; fields missing from older checkpoints take the `tiny` values).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    pub image_arch: String,
    pub resolution: usize,
    pub text_arch: String,
    pub max_tokens: usize,
    pub batch_size: usize,
    pub steps: u64,
    pub warmup: u64,
    pub lr: f32,
    pub temperature_lr_scale: f32,
    pub weight_decay: f32,
    pub clip_norm: Option<f32>,
    pub train_pairs: usize,
    pub held_out: usize,
    pub vocab_size: usize,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub eval_every: u64,
    /// Batch-norm momentum of the image tower (PyTorch convention; TF's 0.99 is 0.01).
    pub bn_momentum: f32,
    /// Drop-connect rate of the image tower's last block (EfficientNet's default 0.2).
    pub drop_connect: f32,
    /// Text tower dropout, hidden and attention (BERT's default 0.1).
    pub text_dropout: f32,
    /// `builtin`, or a manifest file (.tsv / .csv / .jsonl of image path and alt-text).
    pub data: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig::tiny()
    }
}

impl TrainConfig {
    /// The CPU default: EfficientNet-B0 at 64x64 + BERT-mini at 32 tokens, batch 64.
    pub fn tiny() -> TrainConfig {
        TrainConfig {
            image_arch: "b0".into(),
            resolution: 64,
            text_arch: "mini".into(),
            max_tokens: 32,
            batch_size: 64,
            steps: 800,
            warmup: 40,
            lr: 3e-3,
            temperature_lr_scale: 20.0,
            weight_decay: 1e-5,
            clip_norm: Some(5.0),
            train_pairs: 60_000,
            held_out: 1000,
            vocab_size: 400,
            seed: 0,
            checkpoint_every: 100,
            eval_every: 0,
            // a few hundred steps: running statistics must catch up quickly
            bn_momentum: 0.1,
            // a 15-minute CPU run underfits; regularisation only slows it down (measured: R@5
            // after 250 steps 0.08 without drop-connect and dropout vs 0.04 with them)
            drop_connect: 0.0,
            text_dropout: 0.0,
            data: "builtin".into(),
        }
    }

    /// The paper's model: EfficientNet-L2 at 289 + BERT-Large at 64 tokens, batch 16384.
    pub fn paper() -> TrainConfig {
        TrainConfig {
            drop_connect: 0.2,
            text_dropout: 0.1,
            image_arch: "l2".into(),
            resolution: 289,
            text_arch: "large".into(),
            max_tokens: 64,
            batch_size: 16384,
            steps: 1_200_000,
            warmup: 10_000,
            lr: 1e-3,
            temperature_lr_scale: 1.0,
            weight_decay: 1e-5,
            clip_norm: None,
            vocab_size: 100_000,
            bn_momentum: 0.01,
            ..TrainConfig::tiny()
        }
    }
}

/// The dual encoder.
pub struct DualEncoder {
    pub image: EfficientNet,
    pub text: TextTower,
    /// t = ln(sigma)
    pub log_temperature: Var,
}

impl DualEncoder {
    pub fn new(cfg: &TrainConfig, vocab_size: usize, rng: &mut Rng) -> Result<DualEncoder> {
        let bad = |what: &str, name: &str| TensorError::Shape { op: "config", msg: format!("unknown {what} '{name}'") };
        let mut icfg =
            EfficientNetConfig::by_name(&cfg.image_arch).ok_or_else(|| bad("image tower", &cfg.image_arch))?;
        icfg.num_classes = 1; // the classifier is not used by ALIGN
        icfg.bn_momentum = cfg.bn_momentum;
        icfg.drop_connect = cfg.drop_connect;
        let mut tcfg = BertConfig::by_name(&cfg.text_arch).ok_or_else(|| bad("text tower", &cfg.text_arch))?;
        tcfg.vocab_size = vocab_size;
        tcfg.hidden_dropout = cfg.text_dropout;
        tcfg.attention_dropout = cfg.text_dropout;
        tcfg.max_position_embeddings = tcfg.max_position_embeddings.max(cfg.max_tokens);
        let embed = icfg.feature_dim();
        Ok(DualEncoder {
            image: EfficientNet::new(icfg, rng),
            text: TextTower::new(tcfg, embed, rng),
            log_temperature: Var::parameter(Tensor::scalar(0.0)),
        })
    }

    pub fn embed_images(&self, images: &Tensor, ctx: &mut Ctx) -> Result<Var> {
        l2_normalize(&self.image.features(&Var::constant(images.clone()), ctx)?, 1e-12)
    }

    pub fn embed_texts(&self, tokens: &TokenBatch, ctx: &mut Ctx) -> Result<Var> {
        l2_normalize(&self.text.forward(tokens, ctx)?, 1e-12)
    }

    pub fn temperature(&self) -> f32 {
        self.log_temperature.value().item().map(f32::exp).unwrap_or(f32::NAN)
    }
}

impl Module for DualEncoder {
    fn parameters(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        // The image head conv / classifier get no gradient in ALIGN; they are left out.
        let tower = nn::module::join(prefix, "image_tower");
        let head: Vec<String> = ["_conv_head.weight", "_bn1.weight", "_bn1.bias", "_fc.weight", "_fc.bias"]
            .iter()
            .map(|n| nn::module::join(&tower, n))
            .collect();
        let mut img = vec![];
        self.image.parameters(&tower, &mut img);
        out.extend(img.into_iter().filter(|(n, _)| !head.contains(n)));
        self.text.parameters(&nn::module::join(prefix, "text_tower"), out);
        out.push((nn::module::join(prefix, "log_temperature"), self.log_temperature.clone()));
    }
    fn buffers(&self, prefix: &str, out: &mut Vec<(String, nn::Buffer)>) {
        self.image.buffers(&nn::module::join(prefix, "image_tower"), out);
    }
}

/// Tokenises captions to a padded batch.
pub fn token_batch(tok: &WordPiece, texts: &[&str], max_tokens: usize) -> Result<TokenBatch> {
    let encs = tok.encode_batch(
        texts,
        &EncodeOptions { max_len: Some(max_tokens), padding: Padding::Longest, ..Default::default() },
    );
    TokenBatch::from_encodings(&encs)
}

/// Held-out retrieval of a model.
pub fn evaluate(model: &DualEncoder, tok: &WordPiece, cfg: &TrainConfig, held: &[Pair]) -> Result<RetrievalMetrics> {
    let mut img_emb = vec![];
    let mut txt_emb = vec![];
    no_grad(|| -> Result<()> {
        for chunk in held.chunks(100) {
            let refs: Vec<&Pair> = chunk.iter().collect();
            let (images, decoded, _) = image_batch_checked(cfg.seed, &refs, cfg.resolution, false, 0)?;
            if decoded.is_empty() {
                continue;
            }
            img_emb.extend(model.embed_images(&images, &mut Ctx::eval())?.value().to_vec());
            let texts: Vec<&str> = decoded.iter().map(|&i| chunk[i].text.as_str()).collect();
            txt_emb.extend(
                model.embed_texts(&token_batch(tok, &texts, cfg.max_tokens)?, &mut Ctx::eval())?.value().to_vec(),
            );
        }
        Ok(())
    })?;
    let d = model.image.config.feature_dim();
    let n = img_emb.len() / d.max(1);
    if n == 0 {
        return Ok(RetrievalMetrics::default());
    }
    let a = Tensor::from_vec(img_emb, &[n, d])?;
    let b = Tensor::from_vec(txt_emb, &[n, d])?;
    let sim = a.matmul(&b.t()?)?;
    let owners: Vec<usize> = (0..n).collect();
    Ok(retrieval_metrics(&sim.to_vec(), n, n, &owners))
}

/// Set by Ctrl-C (see [`install_interrupt_handler`]); the training loop checks it every step,
/// writes a checkpoint and stops cleanly.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes Ctrl-C request a clean stop (checkpoint, then exit) instead of killing the process.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // a second Ctrl-C while the checkpoint is written: give up immediately
            std::process::exit(130);
        }
    });
}

/// What a finished run reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub final_loss: f32,
    pub temperature: f32,
    pub wall_seconds: f64,
    /// True when Ctrl-C stopped the run early (a checkpoint was written; `--resume` continues).
    pub interrupted: bool,
    pub filters: FilterReport,
    /// Records skipped by reason (manifest data: bad lines, missing / empty / corrupt images).
    pub skipped: SkipReport,
    pub held_out: RetrievalMetrics,
    /// How many held-out pairs the retrieval metrics rank.
    pub held_out_pairs: usize,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> TensorError + '_ {
    move |source| TensorError::Io { path: path.to_path_buf(), source }
}

/// Trains (or resumes) a run in `out_dir`.
pub fn train(cfg: &TrainConfig, out_dir: &Path, resume: bool, quiet: bool) -> Result<TrainSummary> {
    let started = Instant::now();
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    // 1. data
    let mut skipped = SkipReport::default();
    let (train_pairs, held, filters) = if cfg.data == "builtin" {
        builtin_corpus(cfg.seed, cfg.train_pairs, cfg.held_out)
    } else {
        let source = Path::new(&cfg.data);
        let shards = source.is_dir() || source.extension().is_some_and(|e| e == "tar");
        // (width, height, caption) for the filters, and how to fetch each image
        type ImageRef = (Option<PathBuf>, Option<std::sync::Arc<Vec<u8>>>);
        let (meta, images): (Vec<(u32, u32, String)>, Vec<ImageRef>) = if shards {
            let (records, skips) = read_shards(source)?;
            skipped = skips;
            records.into_iter().map(|(w, h, t, b)| ((w, h, t), (None, Some(b)))).unzip()
        } else {
            let (records, skips) = read_manifest(source)?;
            skipped = skips;
            records.into_iter().map(|(w, h, t, f)| ((w, h, t), (Some(f), None))).unzip()
        };
        // small sets (tests, toy data) cannot demand 5 sightings of every word
        let min_count = if meta.len() < 1000 { 1 } else { 5 };
        let (kept, report) = apply_filters(&meta, 200_000, min_count);
        let mut pairs: Vec<Pair> = kept
            .into_iter()
            .map(|i| Pair {
                index: i as u64,
                file: images[i].0.clone(),
                bytes: images[i].1.clone(),
                text: meta[i].2.clone(),
            })
            .collect();
        // hold out the last tenth (at most `held_out`) for retrieval
        let n_held = (pairs.len() / 10).min(cfg.held_out);
        let held = pairs.split_off(pairs.len() - n_held);
        (pairs, held, report)
    };
    if train_pairs.len() < 2 {
        return Err(TensorError::Shape {
            op: "train",
            msg: format!("only {} pairs survive the filters", train_pairs.len()),
        });
    }
    let vocab_path = out_dir.join("vocab.txt");
    let vocab = if resume && vocab_path.exists() {
        std::fs::read_to_string(&vocab_path).map_err(io_err(&vocab_path))?.lines().map(String::from).collect()
    } else {
        let v = train_vocab(
            train_pairs.iter().map(|p| p.text.as_str()),
            &TrainerOptions { vocab_size: cfg.vocab_size, ..Default::default() },
        );
        write_vocab(&vocab_path, &v).map_err(io_err(&vocab_path))?;
        v
    };
    let tok = WordPiece::from_tokens(vocab, BertOptions::default())
        .map_err(|e| TensorError::Shape { op: "vocabulary", msg: e.to_string() })?;
    let report = serde_json::json!({"filters": &filters, "skipped": &skipped});
    std::fs::write(out_dir.join("filters.json"), serde_json::to_string_pretty(&report).expect("json"))
        .map_err(io_err(out_dir))?;
    if !quiet && skipped.total() > 0 {
        eprintln!("skipped records: {}", serde_json::to_string(&skipped).expect("json"));
    }
    if !quiet {
        eprintln!(
            "data: {} alt-texts in, {} kept (small image {}, aspect {}, shared text {}, length {}, rare token {}); vocabulary {}",
            filters.input, filters.kept, filters.image_too_small, filters.image_aspect, filters.text_shared_by_many,
            filters.text_unigrams_out_of_range, filters.text_rare_token, tok.vocab_size()
        );
    }
    // 2. model and 4. optimiser
    let mut rng = Rng::new(cfg.seed);
    let model = DualEncoder::new(cfg, tok.vocab_size(), &mut rng)?;
    let params: Vec<(String, Var)> =
        model.named_parameters().into_iter().filter(|(n, _)| n != "log_temperature").collect();
    let mut groups = decay_groups(params, cfg.lr, cfg.weight_decay);
    groups.push(ParamGroup {
        params: vec![("log_temperature".into(), model.log_temperature.clone())],
        lr: cfg.lr * cfg.temperature_lr_scale,
        weight_decay: 0.0,
        no_trust_ratio: true,
    });
    let mut opt = Lamb::new(groups);
    let schedule = LrSchedule::WarmupLinear { peak: cfg.lr, warmup: cfg.warmup, total: cfg.steps, end: 0.0 };
    let ckpt = out_dir.join("checkpoint.safetensors");
    let mut start = 0;
    let mut data_rng = Rng::new(cfg.seed ^ 0xDA7A);
    if resume && ckpt.exists() {
        let r = load_checkpoint(&ckpt, &model, &mut opt)?;
        start = r.step;
        data_rng = r.rng;
        if !quiet {
            eprintln!("resumed from {} at step {start}", ckpt.display());
        }
    }
    let log_path = out_dir.join("log.jsonl");
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io_err(&log_path))?;
    let n_params: usize = model.named_parameters().iter().map(|(_, p)| p.value().numel()).sum();
    if !quiet {
        eprintln!(
            "model: {} + {} ({:.1}M trained parameters), batch {}, {} steps",
            cfg.image_arch,
            cfg.text_arch,
            n_params as f64 / 1e6,
            cfg.batch_size,
            cfg.steps
        );
    }
    let mut order: Vec<usize> = (0..train_pairs.len()).collect();
    let mut cursor = order.len(); // forces a shuffle on the first batch
                                  // Draws the next batch (indices, crop seed, dropout seed) from the data RNG on this thread,
                                  // so runs stay deterministic, and starts decoding it on a worker thread.
    type Decoded = Result<(Tensor, Vec<usize>, usize)>;
    // the worker hands the batch back with its images (no second copy of the pairs)
    type Pending = (std::thread::JoinHandle<(Vec<Pair>, Decoded)>, u64);
    let (res, seed, batch_size) = (cfg.resolution, cfg.seed, cfg.batch_size.min(train_pairs.len()));
    let prefetch = |rng: &mut Rng, order: &mut Vec<usize>, cursor: &mut usize| -> Pending {
        let mut batch: Vec<Pair> = Vec::with_capacity(batch_size);
        while batch.len() < batch_size {
            if *cursor == order.len() {
                rng.shuffle(order);
                *cursor = 0;
            }
            batch.push(train_pairs[order[*cursor]].clone());
            *cursor += 1;
        }
        let (crop_seed, ctx_seed) = (rng.next_u64(), rng.next_u64());
        let handle = std::thread::spawn(move || {
            let refs: Vec<&Pair> = batch.iter().collect();
            let decoded = image_batch_checked(seed, &refs, res, true, crop_seed);
            (batch, decoded)
        });
        (handle, ctx_seed)
    };
    let mut pending: Option<Pending> = None;
    // the data RNG as it was before the prefetched batch was drawn: what a checkpoint saves, so
    // a resumed run draws that batch again
    let mut rng_at_next_draw = data_rng.clone();
    let mut last_loss = f32::NAN;
    let loop_start = Instant::now();
    let meta = BTreeMap::from([("config".to_string(), serde_json::to_string(cfg).expect("json"))]);
    let mut interrupted = false;
    let mut steps_done = start;
    // seconds spent in: data, image forward, text forward + loss, backward, optimiser
    let mut phase = [0.0f64; 5];
    for step in start..cfg.steps {
        if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            let rng = if pending.is_some() { &rng_at_next_draw } else { &data_rng };
            save_checkpoint(&ckpt, &model, &opt, step, rng, &meta)?;
            if !quiet {
                eprintln!(
                    "\ninterrupted: checkpoint at step {step} written to {}; continue with --resume",
                    ckpt.display()
                );
            }
            interrupted = true;
            break;
        }
        // batch of pairs (epochs reshuffled), decoded and augmented on a worker thread one step
        // ahead: this step's images were prepared while the previous step computed
        let (handle, ctx_seed) = match pending.take() {
            Some(p) => p,
            None => prefetch(&mut data_rng, &mut order, &mut cursor),
        };
        if step + 1 < cfg.steps {
            rng_at_next_draw = data_rng.clone();
            pending = Some(prefetch(&mut data_rng, &mut order, &mut cursor));
        }
        let t_data = Instant::now();
        let (batch, result) =
            handle.join().map_err(|_| TensorError::Shape { op: "train", msg: "the data worker panicked".into() })?;
        let (images, decoded, corrupt) = result?;
        phase[0] += t_data.elapsed().as_secs_f64();
        skipped.corrupt_image += corrupt;
        if decoded.len() < 2 {
            continue; // nothing to contrast in this batch
        }
        let texts: Vec<&str> = decoded.iter().map(|&i| batch[i].text.as_str()).collect();
        let tokens = token_batch(&tok, &texts, cfg.max_tokens)?;
        // 3. forward, loss, backward
        let t_fwd = Instant::now();
        let mut ctx = Ctx { training: true, rng: Rng::new(ctx_seed) };
        let x = model.embed_images(&images, &mut ctx)?;
        let t_txt = Instant::now();
        let y = model.embed_texts(&tokens, &mut ctx)?;
        let loss = contrastive_loss(&x, &y, &model.log_temperature, 0.1)?;
        phase[1] += t_txt.duration_since(t_fwd).as_secs_f64();
        phase[2] += t_txt.elapsed().as_secs_f64();
        let loss_value = loss.value().item()?;
        if !loss_value.is_finite() {
            return Err(TensorError::Shape {
                op: "train",
                msg: format!("non-finite loss at step {step}; the last good checkpoint is {}", ckpt.display()),
            });
        }
        let t_bwd = Instant::now();
        loss.backward()?;
        phase[3] += t_bwd.elapsed().as_secs_f64();
        let t_opt = Instant::now();
        if let Some(c) = cfg.clip_norm {
            clip_grad_norm(&model.named_parameters(), c);
        }
        let lr = schedule.lr_at(step);
        let n_groups = opt.groups_mut().len();
        for (i, g) in opt.groups_mut().iter_mut().enumerate() {
            g.lr = if i + 1 == n_groups { lr * cfg.temperature_lr_scale } else { lr };
        }
        opt.step()?;
        opt.zero_grad();
        phase[4] += t_opt.elapsed().as_secs_f64();
        last_loss = loss_value;
        steps_done = step + 1;
        // 5. logging and checkpoints
        let done = step + 1 - start;
        let elapsed = loop_start.elapsed().as_secs_f64();
        let pairs_per_s = (done as usize * texts.len()) as f64 / elapsed;
        let eta = elapsed / done as f64 * (cfg.steps - step - 1) as f64;
        let line = serde_json::json!({"step": step + 1, "loss": loss_value, "temperature": model.temperature(), "lr": lr, "pairs_per_s": pairs_per_s, "elapsed_s": started.elapsed().as_secs_f64()});
        writeln!(log, "{line}").map_err(io_err(&log_path))?;
        if !quiet {
            eprint!(
                "\rstep {:>6}/{} loss {loss_value:.4} temp {:.4} lr {lr:.2e} {pairs_per_s:.1} pairs/s ETA {:.0}s   ",
                step + 1,
                cfg.steps,
                model.temperature(),
                eta
            );
        }
        if (cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0) || step + 1 == cfg.steps {
            let rng = if pending.is_some() { &rng_at_next_draw } else { &data_rng };
            save_checkpoint(&ckpt, &model, &opt, step + 1, rng, &meta)?;
        }
        if cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0 && step + 1 != cfg.steps {
            let m = evaluate(&model, &tok, cfg, &held)?;
            if !quiet {
                eprintln!(
                    "\n  held-out: i2t R@1/5/10 {:.3}/{:.3}/{:.3}  t2i {:.3}/{:.3}/{:.3}",
                    m.i2t_r1, m.i2t_r5, m.i2t_r10, m.t2i_r1, m.t2i_r5, m.t2i_r10
                );
            }
        }
    }
    if !quiet {
        let total: f64 = phase.iter().sum::<f64>().max(1e-9);
        let pct = |i: usize| 100.0 * phase[i] / total;
        eprintln!(
            "\ntime per step: data {:.0}%, image forward {:.0}%, text forward + loss {:.0}%, backward {:.0}%, optimiser {:.0}%",
            pct(0), pct(1), pct(2), pct(3), pct(4)
        );
        if autograd::profile::enabled() {
            eprintln!("backward time by op (ALIGN_PROFILE_BACKWARD):\n{}", autograd::profile::report());
        }
    }
    // 6. held-out retrieval (skipped when interrupted: the user asked to stop)
    let metrics = if interrupted { RetrievalMetrics::default() } else { evaluate(&model, &tok, cfg, &held)? };
    let summary = TrainSummary {
        steps: steps_done,
        interrupted,
        final_loss: last_loss,
        temperature: model.temperature(),
        wall_seconds: started.elapsed().as_secs_f64(),
        filters,
        skipped,
        held_out: metrics,
        held_out_pairs: held.len(),
    };
    let p: PathBuf = out_dir.join("summary.json");
    std::fs::write(&p, serde_json::to_string_pretty(&summary).expect("json")).map_err(io_err(&p))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> TrainConfig {
        TrainConfig {
            image_arch: "tiny".into(),
            resolution: 32,
            text_arch: "tiny".into(),
            max_tokens: 16,
            batch_size: 8,
            steps: 4,
            warmup: 1,
            train_pairs: 600,
            held_out: 20,
            vocab_size: 120,
            checkpoint_every: 2,
            ..TrainConfig::tiny()
        }
    }

    #[test]
    fn a_short_run_logs_checkpoints_evaluates_and_resumes() {
        let dir = std::env::temp_dir().join(format!("align-train-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = small();
        let s = train(&cfg, &dir, false, true).unwrap();
        assert!(s.final_loss.is_finite());
        assert!(s.held_out.i2t_r10 >= 0.0 && s.held_out.i2t_r10 <= 1.0);
        let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
        assert_eq!(log.lines().count(), 4);
        for f in ["checkpoint.safetensors", "vocab.txt", "filters.json", "summary.json"] {
            assert!(dir.join(f).exists(), "{f} missing");
        }
        // resume to 6 steps: the log continues at step 5
        let more = TrainConfig { steps: 6, ..cfg };
        train(&more, &dir, true, true).unwrap();
        let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
        let steps: Vec<u64> = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_manifest_with_bad_records_trains_and_counts_every_skip() {
        let dir = std::env::temp_dir().join(format!("align-manifest-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let img_dir = dir.join("images");
        std::fs::create_dir_all(&img_dir).unwrap();
        let mut lines: Vec<Vec<u8>> = vec![];
        for i in 0..24u64 {
            let mut scene = crate::data::Scene::generate(3, i);
            scene.width = 240;
            scene.height = 260;
            scene.render().save(img_dir.join(format!("{i}.png"))).unwrap();
            lines.push(format!("images/{i}.png\t{} number {i}", scene.clean_caption(i as usize)).into_bytes());
        }
        // a PNG whose header is intact but whose data is cut: passes the size read, fails decoding
        let good = std::fs::read(img_dir.join("0.png")).unwrap();
        std::fs::write(img_dir.join("cut.png"), &good[..good.len() / 3]).unwrap();
        lines.push(b"images/cut.png\ta red circle cut short".to_vec());
        std::fs::write(img_dir.join("bad.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
        lines.push(b"images/bad.jpg\ta blue square that is corrupt".to_vec());
        std::fs::write(img_dir.join("zero.png"), b"").unwrap();
        lines.push(b"images/zero.png\ta green star with no bytes".to_vec());
        lines.push(b"images/missing.png\ta yellow ring that is missing".to_vec());
        lines.push(b"images/1.png\t".to_vec());
        lines.push(b"images/2.png\tcaf\xe9 in latin-1, not utf-8".to_vec());
        lines.push(b"no tab on this line".to_vec());
        let manifest = dir.join("pairs.tsv");
        std::fs::write(&manifest, lines.join(&b'\n')).unwrap();
        let cfg = TrainConfig { data: manifest.display().to_string(), held_out: 2, ..small() };
        let s = train(&cfg, &dir.join("run"), false, true).unwrap();
        let k = &s.skipped;
        assert_eq!(
            (k.missing_image, k.empty_file, k.empty_caption, k.non_utf8_caption, k.malformed_line),
            (1, 1, 1, 1, 1),
            "{k:?}"
        );
        assert!(k.corrupt_image >= 1, "the unreadable JPEG is counted: {k:?}");
        assert!(s.final_loss.is_finite());
        assert_eq!(s.steps, cfg.steps);
    }

    #[test]
    fn webdataset_shards_including_a_truncated_one_train_and_report_skips() {
        let dir = std::env::temp_dir().join(format!("align-shards-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write_shard = |name: &str, range: std::ops::Range<u64>, extra: bool| -> Vec<u8> {
            let mut builder = tar::Builder::new(Vec::new());
            let mut add = |path: String, data: &[u8]| {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                builder.append_data(&mut h, path, data).unwrap();
            };
            for i in range {
                let mut scene = crate::data::Scene::generate(4, i);
                scene.width = 230;
                scene.height = 250;
                let mut png = Vec::new();
                scene.render().write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
                add(format!("{i:05}.png"), &png);
                add(format!("{i:05}.txt"), format!("{} item {i}", scene.clean_caption(i as usize)).as_bytes());
                add(format!("{i:05}.json"), b"{}");
            }
            if extra {
                add("90000.txt".into(), b"a caption without an image");
                add("90001.png".into(), b"\x89PNG not really");
                add("90001.txt".into(), b"a corrupt png");
                add("90002.txt".into(), b"\xff\xfe not utf-8");
                let mut scene = crate::data::Scene::generate(4, 1);
                scene.width = 230;
                scene.height = 250;
                let mut png = Vec::new();
                scene.render().write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
                add("90002.png".into(), &png);
            }
            let bytes = builder.into_inner().unwrap();
            std::fs::write(dir.join(name), &bytes).unwrap();
            bytes
        };
        write_shard("shard-000.tar", 0..14, true);
        let full = write_shard("shard-001.tar", 14..28, false);
        // truncate the second shard in the middle of a member
        std::fs::write(dir.join("shard-001.tar"), &full[..full.len() / 2 + 100]).unwrap();
        let cfg = TrainConfig { data: dir.display().to_string(), held_out: 2, ..small() };
        let s = train(&cfg, &dir.join("run"), false, true).unwrap();
        let k = &s.skipped;
        assert!(k.truncated_member >= 1, "{k:?}");
        assert_eq!((k.empty_caption, k.corrupt_image, k.non_utf8_caption), (1, 1, 1), "{k:?}");
        assert!(s.filters.input >= 14 + 5, "{:?}", s.filters);
        assert!(s.final_loss.is_finite());
    }

    #[test]
    fn dual_encoder_names_and_temperature_start() {
        let m = DualEncoder::new(&small(), 120, &mut Rng::new(0)).unwrap();
        assert!((m.temperature() - 1.0).abs() < 1e-6, "sigma starts at 1.0");
        let names: Vec<String> = m.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"text_tower.bert.embeddings.word_embeddings.weight".to_string()));
        assert!(names.contains(&"image_tower._blocks.0._bn1.weight".to_string()));
        assert!(!names.iter().any(|n| n.contains("_conv_head") || n.contains("_fc.")));
        assert!(names.contains(&"log_temperature".to_string()));
    }
}
