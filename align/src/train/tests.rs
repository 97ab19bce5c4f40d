//! The trainer's tests: short real runs on the built-in corpus, a manifest and shards; exact
//! resume; names and the temperature's start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use tensor::Tensor;

fn quiet() -> RunOptions {
    RunOptions { quiet: true, ..Default::default() }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("align-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `n` rendered scenes (large enough for the size filter) and a TSV manifest of them
/// into `dir/images` and `dir/pairs.tsv`; returns the manifest's lines.
fn write_scene_manifest(dir: &Path, n: u64) -> Vec<Vec<u8>> {
    let img_dir = dir.join("images");
    std::fs::create_dir_all(&img_dir).unwrap();
    let mut lines: Vec<Vec<u8>> = vec![];
    for i in 0..n {
        let mut scene = crate::data::Scene::generate(3, i);
        scene.width = 240;
        scene.height = 260;
        scene.render().save(img_dir.join(format!("{i}.png"))).unwrap();
        lines.push(format!("images/{i}.png\t{} number {i}", scene.clean_caption(i as usize)).into_bytes());
    }
    lines
}

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
    let s = train(&cfg, &dir, &quiet()).unwrap();
    assert!(s.final_loss.is_finite());
    let m = s.held_out.expect("held-out metrics");
    assert!(m.i2t_r10 >= 0.0 && m.i2t_r10 <= 1.0);
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 4);
    for f in ["checkpoint.safetensors", "vocab.txt", "filters.json", "summary.json"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    // resume to 6 steps: the log continues at step 5
    let more = TrainConfig { steps: 6, ..cfg };
    train(&more, &dir, &RunOptions { resume: true, ..quiet() }).unwrap();
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    let steps: Vec<u64> =
        log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_manifest_with_bad_records_trains_and_counts_every_skip() {
    let dir = std::env::temp_dir().join(format!("align-manifest-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let img_dir = dir.join("images");
    let mut lines = write_scene_manifest(&dir, 24);
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
    let s = train(&cfg, &dir.join("run"), &quiet()).unwrap();
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
    let s = train(&cfg, &dir.join("run"), &quiet()).unwrap();
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

// ---------------------------------------------------------------------------------------------
// Exact resume: N straight steps and N/2 + resume + N/2 give the same bits
// ---------------------------------------------------------------------------------------------

/// Every logged loss (as bits) and every tensor of the final checkpoint (model, optimiser
/// moments and counters, data order) of a run.
/// (step, loss bits) of every log line, and each checkpoint tensor's bits by name.
type RunBits = (Vec<(u64, u32)>, BTreeMap<String, Vec<u32>>);

fn run_bits(dir: &Path) -> RunBits {
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    let losses = log
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), (v["loss"].as_f64().unwrap() as f32).to_bits())
        })
        .collect();
    let st = tensor::io::safetensors::SafeTensors::open(dir.join("checkpoint.safetensors")).unwrap();
    let mut tensors = BTreeMap::new();
    for name in st.names() {
        let bits = match st.tensor(name) {
            Ok(t) => t.to_vec().iter().map(|x| x.to_bits()).collect(),
            Err(_) => st.tensor_i64(name).unwrap().1.iter().map(|&x| x as u32 ^ (x >> 32) as u32).collect(),
        };
        tensors.insert(name.to_string(), bits);
    }
    (losses, tensors)
}

/// Runs `cfg` straight through, and again stopped halfway and resumed; asserts both end with
/// the same losses and checkpoint, bit for bit.
fn assert_resume_is_exact(cfg: &TrainConfig, name: &str) {
    let straight = temp_dir(&format!("{name}-straight"));
    let resumed = temp_dir(&format!("{name}-resumed"));
    train(cfg, &straight, &quiet()).unwrap();
    let half = cfg.steps / 2;
    let first = train(cfg, &resumed, &RunOptions { stop_at: Some(half), ..quiet() }).unwrap();
    assert!(first.interrupted && first.steps == half, "{first:?}");
    let second = train(cfg, &resumed, &RunOptions { resume: true, ..quiet() }).unwrap();
    assert_eq!(second.steps, cfg.steps);
    let (loss_a, ckpt_a) = run_bits(&straight);
    let (loss_b, ckpt_b) = run_bits(&resumed);
    assert_eq!(loss_a.len() as u64, cfg.steps);
    assert_eq!(loss_a, loss_b, "losses differ between the straight and the resumed run");
    assert_eq!(ckpt_a.keys().collect::<Vec<_>>(), ckpt_b.keys().collect::<Vec<_>>());
    for (name, bits) in &ckpt_a {
        assert!(bits == &ckpt_b[name], "checkpoint tensor {name} differs after resume");
    }
    assert!(ckpt_a.contains_key("train.order") && ckpt_a.contains_key("optim.step"));
}

/// A config whose run crosses epoch boundaries (about 20 kept pairs, batches of 8) and whose
/// forward passes draw random numbers (dropout, drop-connect): the resumed run must restore
/// the epoch order, its cursor and the seeds, not only the step.
fn epochs_and_dropout(cfg: TrainConfig) -> TrainConfig {
    TrainConfig { steps: 8, checkpoint_every: 0, drop_connect: 0.2, text_dropout: 0.1, ..cfg }
}

#[test]
fn resume_is_bitwise_exact_on_the_builtin_corpus() {
    let cfg = epochs_and_dropout(TrainConfig { train_pairs: 40, ..small() });
    let data = TrainingData::load(&cfg).unwrap();
    assert!(
        data.train.len() * 2 < cfg.steps as usize * cfg.batch_size,
        "the run must cross epochs: {}",
        data.train.len()
    );
    assert!(!data.train.len().is_multiple_of(cfg.batch_size), "an epoch must end inside a batch");
    assert_resume_is_exact(&cfg, "resume-builtin");
}

#[test]
fn resume_is_bitwise_exact_on_a_manifest() {
    let dir = temp_dir("resume-manifest");
    let lines = write_scene_manifest(&dir, 22);
    let manifest = dir.join("pairs.tsv");
    std::fs::write(&manifest, lines.join(&b'\n')).unwrap();
    let cfg = epochs_and_dropout(TrainConfig { data: manifest.display().to_string(), held_out: 2, ..small() });
    assert_resume_is_exact(&cfg, "resume-manifest");
}

#[test]
fn a_checkpoint_of_other_data_is_refused_on_resume() {
    let dir = temp_dir("resume-other-data");
    let cfg = TrainConfig { train_pairs: 90, steps: 2, ..small() };
    train(&cfg, &dir, &quiet()).unwrap();
    let more = TrainConfig { train_pairs: 200, steps: 4, ..cfg };
    let e = train(&more, &dir, &RunOptions { resume: true, ..quiet() }).expect_err("other data must be refused");
    assert!(e.to_string().contains("resume with the data the run trained on"), "{e}");
}

#[test]
fn a_vision_transformer_tower_trains() {
    let dir = temp_dir("train-vit");
    let cfg = TrainConfig { image_arch: "vit-micro".into(), steps: 3, ..small() };
    let s = train(&cfg, &dir, &quiet()).unwrap();
    assert!(s.final_loss.is_finite() && s.steps == 3, "{s:?}");
    let names = crate::eval::LoadedModel::open(&dir).unwrap().model.named_parameters();
    assert!(names.iter().any(|(n, _)| n == "image_tower.embeddings.cls_token"));
}

/// `--device gpu`: the same run on the GPU device (lavapipe in CI) follows the CPU run's loss
/// at every step, and its checkpoint loads on the host.
#[cfg(feature = "wgpu")]
#[test]
fn a_run_on_the_gpu_follows_the_cpu_losses_step_by_step() {
    let losses = |device: tensor::Device, tag: &str| {
        let dir = std::env::temp_dir().join(format!("align-train-gpu-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = TrainConfig { steps: 20, held_out: 8, checkpoint_every: 0, ..small() };
        train(&cfg, &dir, &RunOptions { device, ..quiet() }).unwrap();
        let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
        let losses: Vec<f64> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("loss").and_then(|l| l.as_f64()))
            .collect();
        let checkpoint = crate::eval::LoadedModel::open(&dir.join("checkpoint.safetensors"));
        assert!(checkpoint.is_ok(), "the {tag} run's checkpoint loads");
        let _ = std::fs::remove_dir_all(&dir);
        losses
    };
    let cpu = losses(tensor::Device::Cpu, "cpu");
    let gpu = losses(tensor::Device::Gpu(0), "gpu");
    assert_eq!(cpu.len(), 20);
    assert_eq!(gpu.len(), cpu.len());
    for (step, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        assert!((g - c).abs() <= 1e-3, "step {}: GPU loss {g} vs CPU {c}", step + 1);
    }
}

#[test]
fn a_bf16_run_follows_the_f32_run_and_an_unknown_precision_is_refused() {
    let base = std::env::temp_dir().join(format!("align-train-bf16-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let f32_cfg = TrainConfig { steps: 3, checkpoint_every: 0, ..small() };
    let bf16_cfg = TrainConfig { precision: "bf16".into(), ..f32_cfg.clone() };
    let f32_run = train(&f32_cfg, &base.join("f32"), &quiet()).unwrap();
    let bf16_run = train(&bf16_cfg, &base.join("bf16"), &quiet()).unwrap();
    assert!(bf16_run.final_loss.is_finite());
    // the same data, weights and order: bf16 products move the loss only slightly
    let rel = (bf16_run.final_loss - f32_run.final_loss).abs() / f32_run.final_loss.abs();
    assert!(rel < 0.02, "bf16 loss {} vs f32 {}", bf16_run.final_loss, f32_run.final_loss);
    assert_ne!(bf16_run.final_loss, f32_run.final_loss, "the bf16 run must actually round");
    let bad = TrainConfig { precision: "fp8".into(), ..f32_cfg };
    let err = train(&bad, &base.join("bad"), &quiet()).unwrap_err().to_string();
    assert!(err.contains("fp8") && err.contains("bf16"), "{err}");
    let _ = std::fs::remove_dir_all(&base);
}

// ---------------------------------------------------------------------------------------------
// Data parallel: N ranks (threads of this process) against one process on the same global batch
// ---------------------------------------------------------------------------------------------

/// Each rank's (loss, parameters) after each of `steps` steps of `ranks` ranks of
/// `cfg.batch_size` pairs (one process of the whole batch for `ranks` = 1), and rank 0's traffic.
fn data_parallel_steps(
    cfg: &TrainConfig,
    ranks: usize,
    steps: u64,
) -> (Vec<StepsSeen>, BTreeMap<&'static str, crate::dist::Traffic>) {
    use crate::dist::{Comm, GradientBuckets};
    let comms = if ranks > 1 { Comm::thread_group(ranks).unwrap() } else { vec![Comm::solo()] };
    let data = TrainingData::load(cfg).unwrap();
    let tok = vocabulary(cfg, Path::new("unused"), &data.train, false, false).unwrap();
    let results: Vec<(StepsSeen, _)> = std::thread::scope(|s| {
        let workers: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let (data, tok) = (&data, &tok);
                s.spawn(move || {
                    let model = DualEncoder::new(cfg, tok.vocab_size(), &mut Rng::new(cfg.seed)).unwrap();
                    let mut opt = Recording {
                        inner: Lamb::new(param_groups(model.named_parameters(), cfg)),
                        named: model.named_parameters().into_iter().map(|(_, p)| p).collect(),
                        grads: vec![],
                    };
                    let schedule = Schedule::new(cfg);
                    // small buckets: many of them, started while backward runs
                    let buckets = GradientBuckets::new(&model.named_parameters(), 256 << 10);
                    assert!(buckets.len() > 4);
                    let mut batches = Batches::new(&data.train, cfg.batch_size * ranks, cfg.resolution, cfg.seed)
                        .sharded(comm.rank(), ranks);
                    let mut times = StepTimes::default();
                    let mut seen = vec![];
                    for step in 0..steps {
                        let batch = batches.next(step + 1 < steps).unwrap();
                        schedule.apply(&mut opt, step);
                        let loss = if ranks > 1 {
                            train_step_data_parallel(
                                &model, &mut opt, tok, cfg, &batch, step, &mut times, &comm, &buckets,
                            )
                            .unwrap()
                            .loss
                            .unwrap()
                        } else {
                            train_step(&model, &mut opt, tok, cfg, &batch, step, &mut times).unwrap()
                        };
                        let grads = std::mem::take(&mut opt.grads);
                        seen.push((
                            loss,
                            grads,
                            model.named_parameters().iter().map(|(_, p)| p.value().to_vec()).collect(),
                        ));
                    }
                    (seen, comm.traffic())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let traffic = results[0].1.clone();
    (results.into_iter().map(|r| r.0).collect(), traffic)
}

/// (loss, every parameter's gradient, every parameter's values after the update) of each step.
type StepsSeen = Vec<(f32, Vec<Vec<f32>>, Vec<Vec<f32>>)>;

/// LAMB that remembers the gradients it was given (after clipping, before its update).
struct Recording {
    inner: Lamb,
    /// The model's parameters in `named_parameters` order.
    named: Vec<autograd::Var>,
    grads: Vec<Vec<f32>>,
}

impl nn::optim::Optimizer for Recording {
    fn groups(&self) -> &[nn::optim::ParamGroup] {
        self.inner.groups()
    }
    fn groups_mut(&mut self) -> &mut [nn::optim::ParamGroup] {
        self.inner.groups_mut()
    }
    fn step(&mut self) -> tensor::Result<()> {
        self.grads = self.named.iter().map(|p| p.grad().map(|t| t.to_vec()).unwrap_or_default()).collect();
        self.inner.step()
    }
    fn step_count(&self) -> u64 {
        self.inner.step_count()
    }
    fn state(&self) -> (u64, Vec<(String, Tensor)>) {
        self.inner.state()
    }
    fn check_state(&self, state: &BTreeMap<String, Tensor>) -> tensor::Result<()> {
        self.inner.check_state(state)
    }
    fn set_state(&mut self, step: u64, state: &BTreeMap<String, Tensor>) -> tensor::Result<()> {
        self.inner.set_state(step, state)
    }
}

/// With synchronised batch norm and no dropout, 2 and 4 ranks of 8 pairs follow one process of
/// 16 and 32 pairs through 5 LAMB steps (a gradient summed over ranks and then averaged, or a
/// temperature gradient counted N times, would be off by a factor of N at the first step):
/// - every loss within 1e-5 relative;
/// - the first step's gradients (same parameters in both runs) within 5e-5 of each tensor's
///   largest gradient. Tensors whose gradient is zero in exact arithmetic (a batch norm's bias
///   feeding a convolution and another batch norm, which subtracts any constant it adds) hold
///   only rounding noise, below 1e-6 of the model's largest gradient, in both runs;
/// - every other parameter within 2e-3 of its tensor's largest value after each step (the
///   noise-driven ones stay below 1e-4 in both runs). LAMB divides
///   each gradient element by its own magnitude (plus eps = 1e-6), so elements at the level of
///   rounding noise become updates of up to lr: a summation in another order moves them. One
///   process on 1 and on 2 threads already differs by 8e-5 after two steps.
///
/// The replicas stay bit-identical, and the traffic is what the plan predicts.
#[test]
fn data_parallel_ranks_follow_the_one_process_run_on_the_global_batch() {
    let base = TrainConfig { batch_size: 8, steps: 5, sync_bn: true, drop_connect: 0.0, text_dropout: 0.0, ..small() };
    let worst = |a: &[f32], b: &[f32]| -> (f32, f32) {
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        (a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())), scale)
    };
    for ranks in [2, 4] {
        let (one, _) = data_parallel_steps(&TrainConfig { batch_size: 8 * ranks, ..base.clone() }, 1, 5);
        let (all, traffic) = data_parallel_steps(&base, ranks, 5);
        let (one, dp) = (&one[0], &all[0]);
        // the first step's gradients
        let largest = one[0].1.iter().map(|g| worst(g, g).1).fold(0.0f32, f32::max);
        let mut noise_only = vec![false; one[0].1.len()];
        for (k, (a, b)) in one[0].1.iter().zip(&dp[0].1).enumerate() {
            let (off, scale) = worst(a, b);
            if scale < 1e-6 * largest {
                noise_only[k] = true;
                let (_, scale_dp) = worst(b, b);
                assert!(scale_dp < 1e-6 * largest, "{ranks} ranks: parameter {k}'s gradient is noise in one run only");
            } else {
                assert!(off <= 5e-5 * scale, "{ranks} ranks: gradient of parameter {k} off by {off} at scale {scale}");
            }
        }
        for (step, ((loss_one, _, params_one), (loss_dp, _, params_dp))) in one.iter().zip(dp).enumerate() {
            assert!(
                (loss_one - loss_dp).abs() <= 1e-5 * loss_one.abs(),
                "{ranks} ranks, step {step}: loss {loss_dp} vs {loss_one}"
            );
            for (k, (a, b)) in params_one.iter().zip(params_dp).enumerate() {
                let (off, scale) = worst(a, b);
                if noise_only[k] {
                    // zero-initialised and driven by noise alone: both stay tiny
                    assert!(scale < 1e-4 && worst(b, b).1 < 1e-4, "{ranks} ranks, step {step}, parameter {k}: {scale}");
                } else {
                    assert!(
                        off <= 2e-3 * scale,
                        "{ranks} ranks, step {step}, parameter {k}: off by {off} at scale {scale}"
                    );
                }
            }
            for (r, other) in all.iter().enumerate().skip(1) {
                assert!(other[step].2 == *params_dp, "rank {r}'s parameters differ from rank 0's after step {step}");
            }
        }
        // what rank 0 moved in 5 steps, against the plan (the plan's per-step control includes
        // the stop agreement of the training loop, which these bare steps do not make)
        let plan = crate::dist::plan::Plan::for_config(&base, ranks).unwrap();
        for (purpose, predicted) in plan.traffic_per_step() {
            let loop_only = if purpose == crate::dist::purpose::CONTROL { 8 } else { 0 };
            let measured = traffic[purpose];
            assert_eq!(measured.sent, 5 * (predicted.sent - loop_only), "{purpose}");
            assert_eq!(measured.received, 5 * (predicted.received - loop_only), "{purpose}");
            if purpose != crate::dist::purpose::GRADIENTS {
                assert_eq!(measured.calls, 5 * (predicted.calls - (loop_only > 0) as u64), "{purpose}");
            }
        }
    }
}

/// A locked image tower in a data-parallel run: the feature cache is computed in shares by the
/// ranks and summed, so the file is the one-process file bit for bit and the two ranks' losses
/// follow the one-process run on the same global batch.
#[test]
fn a_locked_tower_caches_its_features_across_ranks() {
    let cfg = TrainConfig { lock_image: true, train_pairs: 300, steps: 3, checkpoint_every: 0, ..small() };
    let one = temp_dir("cache-one");
    let solo = train(&TrainConfig { batch_size: 16, ..cfg.clone() }, &one, &quiet()).unwrap();
    let two = temp_dir("cache-two");
    let comms = crate::dist::Comm::thread_group(2).unwrap();
    let summaries: Vec<TrainSummary> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let (cfg, dir) = (&cfg, &two);
                s.spawn(move || train(cfg, dir, &RunOptions { comm, ..quiet() }).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let bytes = |dir: &Path| std::fs::read(dir.join("image_features.safetensors")).unwrap();
    assert!(bytes(&one) == bytes(&two), "the shared-out cache differs from the one-process cache");
    assert!(summaries[0].traffic.contains_key(crate::dist::purpose::FEATURE_CACHE));
    for s in &summaries {
        assert!((s.final_loss - solo.final_loss).abs() < 1e-5, "{} vs {}", s.final_loss, solo.final_loss);
    }
    let _ = std::fs::remove_dir_all(&one);
    let _ = std::fs::remove_dir_all(&two);
}
