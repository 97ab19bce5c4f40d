//! ALIGN training, top to bottom (read it like llm.c's train_gpt2.c). [`train`] is the loop;
//! each part it calls lives in a file of its own:
//!
//! 1. data (`source.rs`): the built-in corpus or a user's manifest / shards, cleaned by the
//!    paper's frequency filters, a held-out split, and a WordPiece vocabulary trained on the
//!    kept alt-texts;
//! 2. model (`crate::model`): the image and text towers named by the configuration, both
//!    L2-normalised, and the learnable temperature sigma = exp(t), t = 0 at the start;
//! 3. optimiser and schedule (`schedule.rs`): LAMB with parameter groups found by name, linear
//!    warm-up then linear decay;
//! 4. batches (`batches.rs`): a shuffled epoch order, each batch's images decoded on a worker
//!    thread while the previous step computes;
//! 5. the step (`step.rs`): forward, the symmetric contrastive loss, backward, update;
//! 6. checkpoints (`checkpoint.rs`): model, optimiser, step and data order, so a resumed run
//!    continues bit for bit as the uninterrupted one;
//! 7. evaluation (`crate::eval::Embedder`, shared with `align eval`): held-out retrieval,
//!    R@1/5/10 both ways, every `eval_every` steps and at the end.
//!
//! Every step writes a JSONL log line and a progress line (loss, sigma, lr, pairs/s, ETA). A
//! non-finite loss stops the run with an error and leaves the last good checkpoint; Ctrl-C
//! writes a checkpoint and stops cleanly.
//!
//! Under `mpirun -np N` (feature `mpi`) the same loop runs on N ranks, each on its share of
//! every global batch, through `crate::dist`; rank 0 writes the log, the checkpoints and the
//! summary, and all ranks stop together.

mod batches;
mod cache;
mod checkpoint;
mod run_dir;
mod schedule;
mod source;
mod step;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use nn::optim::Lamb;
use nn::Module;
use tensor::Rng;

pub use batches::{Batch, Batches, Draw, EpochSampler};
pub use cache::FeatureCache;
pub use checkpoint::RunCheckpoint;
pub use run_dir::RunLock;
pub use schedule::{param_groups, Schedule};
pub use source::{vocabulary, TrainingData};
pub use step::{train_step, train_step_data_parallel, DataParallelStep, StepTimes, LABEL_SMOOTHING};

use crate::data::{FilterReport, SkipReport};
use crate::error::{io_error, Result};
use crate::eval::Embedder;
use crate::model::DualEncoder;
use crate::retrieval::RetrievalMetrics;

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
    /// `f32`, or `bf16`: linear layers' products on bf16-rounded operands with f32
    /// accumulation (`kernels::bf16::MatmulPrecision`); weights, optimiser state, norms,
    /// softmax and the loss stay f32.
    pub precision: String,
    /// Data-parallel runs: batch-norm statistics over the global batch (all-reduced sums)
    /// instead of each rank's share (the default, as each of the paper's TPU cores had).
    pub sync_bn: bool,
    /// Pretrained image tower: an EfficientNet state dict (`.pth` in lukemelas' naming, as the
    /// lite0 weights, or safetensors) for `image_arch`; "" starts from random weights.
    pub image_init: String,
    /// Pretrained text tower: a Hugging Face BERT directory (config.json, model.safetensors,
    /// vocab.txt), whose encoder, vocabulary and casing the run takes; "" starts from random
    /// weights and a vocabulary trained on the alt-texts.
    pub text_init: String,
    /// LiT (Zhai et al. 2022): the image tower runs in eval mode with no gradients and no
    /// optimiser state; only the text tower and the temperature train.
    pub lock_image: bool,
    /// The text tower locked likewise (its projection still trains).
    pub lock_text: bool,
    /// The text tower's BERT when it comes from `text_init` (not a named preset), so a
    /// checkpoint rebuilds it without the original directory.
    pub text_bert: Option<crate::bert::BertConfig>,
    /// The image tower's EfficientNet when `image_init` needs one other than `image_arch`'s
    /// preset (an AlignModel's vision tower, torchvision's padding and eps), kept so a
    /// checkpoint rebuilds it without the original weights.
    pub image_efficientnet: Option<crate::efficientnet::EfficientNetConfig>,
    /// Lowercase captions before WordPiece (the vocabulary's casing).
    pub lowercase: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig::tiny()
    }
}

impl TrainConfig {
    /// Starts the text tower from a Hugging Face BERT directory: its architecture (kept in the
    /// configuration), vocabulary and casing.
    pub fn with_text_init(mut self, dir: &Path) -> Result<TrainConfig> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| crate::error::AlignError::data(&config_path, e.to_string()))?;
        let bert = crate::bert::BertConfig::from_hf(&v).map_err(|e| crate::error::AlignError::data(&config_path, e))?;
        let tok_config = dir.join("tokenizer_config.json");
        if let Ok(t) = std::fs::read_to_string(&tok_config) {
            let t: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
            self.lowercase = t.get("do_lower_case").and_then(serde_json::Value::as_bool).unwrap_or(true);
        }
        self.text_arch = "pretrained".into();
        self.max_tokens = self.max_tokens.min(bert.max_position_embeddings);
        self.text_bert = Some(bert);
        self.text_init = dir.display().to_string();
        Ok(self)
    }

    /// Starts the image tower from pretrained weights at `path`: a state dict (.pth or
    /// safetensors) for `image_arch` in lukemelas' naming, or in torchvision's (the tower is then
    /// built with torchvision's padding and eps), or a Hugging Face AlignModel directory (its
    /// vision tower, built from its `vision_config`).
    pub fn with_image_init(mut self, path: &Path) -> Result<TrainConfig> {
        use crate::efficientnet::EfficientNetConfig;
        let refuse = |msg: String| crate::error::AlignError::config("--image-init", msg);
        if path.is_dir() {
            if !crate::eval::is_hf_align_dir(path) {
                return Err(refuse(format!(
                    "{}: a directory, but not a Hugging Face AlignModel (config.json with vision_config)",
                    path.display()
                )));
            }
            let config_path = path.join("config.json");
            let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| crate::error::AlignError::data(&config_path, e.to_string()))?;
            let mut vision = crate::hf_align::vision_config(&v["vision_config"], &config_path)?;
            vision.num_classes = 0;
            self.image_arch = "pretrained".into();
            self.image_efficientnet = Some(vision);
        } else if path.is_file() {
            let tensors = tensor::io::load_named_tensors(path)?;
            if crate::efficientnet::is_torchvision_naming(tensors.iter().map(|(n, _)| n.as_str())) {
                let preset = EfficientNetConfig::by_name(&self.image_arch).ok_or_else(|| {
                    refuse(format!("torchvision weights need a torchvision architecture, not '{}'", self.image_arch))
                })?;
                if preset.lite {
                    return Err(refuse("torchvision has no EfficientNet-Lite; these weights are torchvision's".into()));
                }
                let mut tv = preset.torchvision();
                tv.num_classes = 0;
                self.image_efficientnet = Some(tv);
            }
        } else {
            return Err(refuse(format!("{}: no such file or directory", path.display())));
        }
        self.image_init = path.display().to_string();
        Ok(self)
    }

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
            precision: "f32".into(),
            sync_bn: false,
            image_init: String::new(),
            text_init: String::new(),
            lock_image: false,
            lock_text: false,
            text_bert: None,
            image_efficientnet: None,
            lowercase: true,
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

/// How one invocation of [`train`] runs (not part of the run's identity, unlike the config).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from the run's checkpoint instead of starting over.
    pub resume: bool,
    /// No progress output on stderr.
    pub quiet: bool,
    /// Stop cleanly after this many completed steps, with a checkpoint, as Ctrl-C would (a
    /// later `--resume` continues; the schedule still runs to `steps`).
    pub stop_at: Option<u64>,
    /// Where the model trains (`--device`): its parameters, activations and optimiser state
    /// live there; batches are decoded on the host and moved once per step.
    pub device: tensor::Device,
    /// The ranks of a data-parallel job (`crate::dist`); one rank by default. Each rank trains
    /// on its share of a global batch of `batch_size` x ranks pairs; rank 0 alone writes files
    /// and prints.
    pub comm: crate::dist::Comm,
    /// Data-parallel runs: compare a fingerprint of every rank's parameters after each step and
    /// stop with an error if the replicas have drifted apart.
    pub check_replicas: bool,
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
    /// True when the run stopped early (Ctrl-C or `stop_at`); a checkpoint was written and
    /// `--resume` continues.
    pub interrupted: bool,
    pub filters: FilterReport,
    /// Records skipped by reason (manifest data: bad lines, missing / empty / corrupt images).
    pub skipped: SkipReport,
    /// Held-out retrieval; None when the run stopped early or no held-out image could be read.
    pub held_out: Option<RetrievalMetrics>,
    /// How many held-out pairs the retrieval metrics rank (pairs whose image could not be read
    /// are left out and counted in `held_out_unreadable`).
    pub held_out_pairs: usize,
    pub held_out_unreadable: usize,
    /// Data-parallel runs: the ranks, and what this rank's collectives moved, by purpose
    /// (empty for one rank).
    pub ranks: usize,
    pub traffic: std::collections::BTreeMap<&'static str, crate::dist::Traffic>,
}

/// Trains (or resumes) a run in `out_dir`.
pub fn train(cfg: &TrainConfig, out_dir: &Path, opts: &RunOptions) -> Result<TrainSummary> {
    let precision: kernels::bf16::MatmulPrecision =
        cfg.precision.parse().map_err(|e: String| crate::error::AlignError::config("precision", e))?;
    // on this thread only: runs beside each other in one process (tests) keep their own
    kernels::bf16::with_matmul_precision(precision, || train_at_precision(cfg, out_dir, opts))
}

fn train_at_precision(cfg: &TrainConfig, out_dir: &Path, opts: &RunOptions) -> Result<TrainSummary> {
    let started = Instant::now();
    let comm = &opts.comm;
    let (ranks, root) = (comm.size(), comm.is_root());
    let verbose = root && !opts.quiet;
    let say = |msg: String| {
        if verbose {
            eprintln!("{msg}");
        }
    };
    if ranks > 1 && opts.device.is_gpu() {
        return Err(crate::error::AlignError::config("device", "data-parallel training runs on the CPU only"));
    }
    std::fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
    // one trainer per run directory (rank 0 holds the lock for the job); a crash's leftovers go
    let _lock = if root { Some(run_dir::RunLock::acquire(out_dir)?) } else { None };
    if root {
        run_dir::remove_stale_temporaries(out_dir)?;
    }
    let mut trace = run_dir::PhaseTrace::from_env();
    trace.enter("setup");

    // 1. data and vocabulary (every rank computes the same; rank 0 writes them)
    let mut data = TrainingData::load(cfg)?;
    let tok = vocabulary(cfg, out_dir, &data.train, opts.resume, root)?;
    if root {
        data.write_report(out_dir)?;
    }
    if data.skipped.total() > 0 {
        say(format!("skipped records: {}", data.skipped));
    }
    say(format!("{}; vocabulary {}", data.describe(), tok.vocab_size()));

    // 2. model
    let model = DualEncoder::new(cfg, tok.vocab_size(), &mut Rng::new(cfg.seed))?;
    // pretrained towers (a resumed run takes every weight from its checkpoint instead)
    let resuming = opts.resume && RunCheckpoint::new(out_dir, cfg).exists();
    if !resuming && !cfg.image_init.is_empty() {
        let r = model.image.load_pretrained(Path::new(&cfg.image_init))?;
        say(format!("image tower from {} ({} tensors not used)", cfg.image_init, r.unexpected.len()));
    }
    if !resuming && !cfg.text_init.is_empty() {
        model.text.load_pretrained(Path::new(&cfg.text_init))?;
        say(format!("text tower from {}", cfg.text_init));
    }
    // locked towers: no gradients, no optimiser state (LiT); a locked text tower keeps its
    // projection trainable
    if cfg.lock_image {
        model.image.set_frozen("", true);
    }
    if cfg.lock_text {
        model.text.set_frozen("bert.", true);
    }
    let n_params: usize =
        model.named_parameters().iter().filter(|(_, p)| p.requires_grad()).map(|(_, p)| p.value().numel()).sum();
    let global_batch = cfg.batch_size * ranks;
    say(format!(
        "model: {} + {} ({:.1}M trained parameters), batch {}{}, {} steps",
        cfg.image_arch,
        cfg.text_arch,
        n_params as f64 / 1e6,
        global_batch,
        if ranks > 1 {
            format!(
                " ({ranks} ranks x {}{})",
                cfg.batch_size,
                if cfg.sync_bn { ", synchronised batch norm" } else { "" }
            )
        } else {
            String::new()
        },
        cfg.steps
    ));

    // 3. optimiser and learning-rate schedule
    let trainable = model.named_parameters().into_iter().filter(|(_, p)| p.requires_grad()).collect();
    let mut opt = Lamb::new(param_groups(trainable, cfg));
    let schedule = Schedule::new(cfg);

    // 4. batches, and where a resumed run left off
    // a locked image tower: its features computed once (below, shared out over the ranks),
    // then only read
    let use_cache = cfg.lock_image && !opts.device.is_gpu();
    let mut batches = Batches::new(&data.train, global_batch, cfg.resolution, cfg.seed).sharded(comm.rank(), ranks);
    if use_cache {
        batches = batches.without_images();
    }
    let buckets = crate::dist::GradientBuckets::new(&model.named_parameters(), crate::dist::DEFAULT_BUCKET_BYTES);
    let checkpoint = RunCheckpoint::new(out_dir, cfg);
    let mut start = 0;
    if opts.resume && checkpoint.exists() {
        start = checkpoint.restore(&model, &mut opt, &mut batches)?;
        say(format!("resumed from {} at step {start}", checkpoint.path.display()));
    }
    let cache = if use_cache {
        let progress = |line: String| {
            if verbose {
                eprint!("\r{line}   ");
            }
        };
        let c = FeatureCache::build_or_open(cfg, out_dir, &data.train, &model, comm, &progress)?;
        say(format!("\nimage features: {}", c.path.display()));
        Some(c)
    } else {
        None
    };
    // the model (and, from its first step, the optimiser state) on the training device
    model.to_device(opts.device)?;
    if opts.device.is_gpu() {
        say(format!("device: {}", opts.device));
    }
    let log_path = out_dir.join("log.jsonl");
    let mut log = if root {
        Some(std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io_error(&log_path))?)
    } else {
        None
    };
    // only rank 0 writes; every rank holds the same model (see `train_step_data_parallel`)
    let save = |model: &DualEncoder, opt: &Lamb, step: u64, batches: &Batches| -> Result<()> {
        if root {
            checkpoint.save(model, opt, step, batches)?;
        }
        Ok(())
    };
    let evaluate = |model: &DualEncoder| {
        Embedder { model, tokenizer: &tok, config: cfg, processor: None }.retrieval(&data.held_out)
    };

    // 5. the loop
    let loop_start = Instant::now();
    let mut times = StepTimes::default();
    let mut global_pairs = 0usize;
    let (mut last_loss, mut steps_done, mut interrupted) = (f32::NAN, start, false);
    // consecutive steps whose batch had nothing to contrast
    let (mut empty_steps, steps_per_epoch) = (0u64, data.train.len().div_ceil(global_batch).max(1) as u64);
    for step in start..cfg.steps {
        let mut stop = [(INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
            || opts.stop_at.is_some_and(|s| step >= s)) as u8 as f64];
        if ranks > 1 {
            // one rank's Ctrl-C stops all of them, at the same step
            comm.all_reduce_f64(crate::dist::purpose::CONTROL, &mut stop)?;
        }
        if stop[0] > 0.0 {
            save(&model, &opt, step, &batches)?;
            say(format!(
                "\nstopped: checkpoint at step {step} written to {}; continue with --resume",
                checkpoint.path.display()
            ));
            interrupted = true;
            break;
        }
        // a whole epoch of batches without two readable pairs: the data cannot train
        if empty_steps >= steps_per_epoch {
            break;
        }
        trace.enter("data");
        let t_data = Instant::now();
        let mut batch = batches.next(step + 1 < cfg.steps)?;
        if let Some(cache) = &cache {
            // the cached rows of the pairs whose images decoded
            let keep: Vec<usize> = (0..batch.pairs.len()).filter(|&k| cache.usable(batch.pairs[k])).collect();
            batch.corrupt += batch.pairs.len() - keep.len();
            batch.texts = keep.iter().map(|&k| std::mem::take(&mut batch.texts[k])).collect();
            batch.pairs = keep.iter().map(|&k| batch.pairs[k]).collect();
            batch.features = Some(cache.rows(&batch.pairs)?);
        }
        times.data += t_data.elapsed().as_secs_f64();
        data.skipped.corrupt_image += batch.corrupt;
        let lr = schedule.apply(&mut opt, step);
        trace.enter("step");
        let (loss, pairs) = if ranks > 1 {
            let r = train_step_data_parallel(&model, &mut opt, &tok, cfg, &batch, step, &mut times, comm, &buckets)?;
            match r.loss {
                Some(loss) => (loss, r.pairs),
                None => {
                    empty_steps += 1;
                    continue; // some rank has nothing to contrast in this batch
                }
            }
        } else {
            if batch.texts.len() < 2 {
                empty_steps += 1;
                continue; // nothing to contrast in this batch
            }
            (train_step(&model, &mut opt, &tok, cfg, &batch, step, &mut times)?, batch.texts.len())
        };
        if opts.check_replicas && ranks > 1 {
            let prints = comm.all_gather_u64(
                crate::dist::purpose::CONTROL,
                crate::dist::parameter_fingerprint(&model.named_parameters()),
            )?;
            if let Some(r) = prints.iter().position(|&p| p != prints[0]) {
                return Err(crate::error::AlignError::training(
                    Some(step + 1),
                    format!("rank {r}'s parameters differ from rank 0's (fingerprints {:x?})", prints),
                ));
            }
        }
        last_loss = loss;
        steps_done = step + 1;
        empty_steps = 0;
        global_pairs += pairs;

        // 6. logging, checkpoints, evaluation
        let done = step + 1 - start;
        let elapsed = loop_start.elapsed().as_secs_f64();
        let pairs_per_s = global_pairs as f64 / elapsed;
        let eta = elapsed / done as f64 * (cfg.steps - step - 1) as f64;
        trace.enter("log");
        let line = serde_json::json!({"step": step + 1, "loss": loss, "temperature": model.temperature(), "lr": lr, "pairs_per_s": pairs_per_s, "elapsed_s": started.elapsed().as_secs_f64()});
        if let Some(log) = log.as_mut() {
            writeln!(log, "{line}").map_err(io_error(&log_path))?;
        }
        if verbose {
            eprint!(
                "\rstep {:>6}/{} loss {loss:.4} temp {:.4} lr {lr:.2e} {pairs_per_s:.1} pairs/s ETA {eta:.0}s   ",
                step + 1,
                cfg.steps,
                model.temperature(),
            );
        }
        if (cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0) || step + 1 == cfg.steps {
            trace.enter("checkpoint");
            save(&model, &opt, step + 1, &batches)?;
        }
        if cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0 && step + 1 != cfg.steps {
            trace.enter("evaluate");
            if let (Some(m), n) = evaluate(&model)? {
                say(format!(
                    "\n  held-out ({n} pairs): i2t R@1/5/10 {:.3}/{:.3}/{:.3}  t2i {:.3}/{:.3}/{:.3}",
                    m.i2t_r1, m.i2t_r5, m.i2t_r10, m.t2i_r1, m.t2i_r5, m.t2i_r10
                ));
            }
        }
    }
    say(format!("\ntime per step: {}", times.shares()));
    if autograd::profile::enabled() {
        say(format!("backward time by op (ALIGN_PROFILE_BACKWARD):\n{}", autograd::profile::report()));
    }

    // a run in which no step could train has nothing to save or evaluate: say why, loudly
    if ((steps_done == start && start < cfg.steps) || empty_steps >= steps_per_epoch) && !interrupted {
        return Err(crate::error::AlignError::training(
            None,
            format!(
                "{} training steps ran, then {empty_steps} batches in a row (an epoch) had fewer than two \
                 readable pairs (skipped records: {})",
                steps_done - start,
                data.skipped
            ),
        ));
    }

    // 7. held-out retrieval (skipped when stopped early: the user asked to stop)
    trace.enter("evaluate");
    let (held_out, held_out_pairs) = if interrupted { (None, 0) } else { evaluate(&model)? };
    say(format!("skipped records: {}", data.skipped));
    let summary = TrainSummary {
        steps: steps_done,
        interrupted,
        final_loss: last_loss,
        temperature: model.temperature(),
        wall_seconds: started.elapsed().as_secs_f64(),
        held_out_pairs,
        held_out_unreadable: if interrupted { 0 } else { data.held_out.len() - held_out_pairs },
        ranks,
        traffic: comm.traffic(),
        filters: data.filters,
        skipped: data.skipped,
        held_out,
    };
    trace.enter("summary");
    if root {
        let path = out_dir.join("summary.json");
        std::fs::write(&path, serde_json::to_string_pretty(&summary).expect("json")).map_err(io_error(&path))?;
    }
    trace.enter("done");
    Ok(summary)
}

#[cfg(test)]
mod tests;
