//! Bodies of the `align` subcommands that are thin wrappers over the library crates.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use tokenizer::{BertOptions, EncodeOptions, WordPiece};

use crate::bert::{cls_state, masked_mean, Bert, BertConfig, TokenBatch};
use crate::error::{io_error, AlignError, Result};
use nn::Module;
use tensor::Device;

/// Where a command's models run: `--device cpu|gpu|gpu:N`, `--adapter N`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// cpu, gpu or gpu:N (the GPU needs a build with `--features wgpu`; `align devices` lists
    /// the adapters)
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// GPU adapter index, as `align devices` numbers them (implies --device gpu)
    #[arg(long)]
    pub adapter: Option<usize>,
    /// f32, or bf16: the models' linear layers multiply bf16-rounded operands with f32
    /// accumulation (AMX or AVX-512 BF16 where the CPU has them), their weights held in bf16
    /// at inference; everything else stays f32
    #[arg(long)]
    pub precision: Option<String>,
}

impl DeviceArgs {
    /// The device named, opened: an error (never a quiet CPU run) when a GPU was asked for and
    /// this build or machine has none.
    /// Also sets `--precision` for the rest of the process (one command per process).
    pub fn resolve(&self) -> Result<Device> {
        if let Some(p) = &self.precision {
            let p: kernels::bf16::MatmulPrecision =
                p.parse().map_err(|e: String| AlignError::config("--precision", e))?;
            kernels::bf16::set_matmul_precision(p);
        }
        let named: Device = self.device.parse().map_err(|e: String| AlignError::config("--device", e))?;
        let device = match (named, self.adapter) {
            (_, Some(i)) => Device::Gpu(i),
            (d, None) => d,
        };
        device.check_available().map_err(|e| AlignError::config("--device", e.to_string()))?;
        if device.is_gpu() && kernels::bf16::matmul_precision() == kernels::bf16::MatmulPrecision::Bf16 {
            return Err(AlignError::config(
                "--precision",
                "bf16 runs on the CPU kernels; the GPU device computes in f32",
            ));
        }
        Ok(device)
    }
}

/// `align devices`: the GPU adapters wgpu finds, with their backend and limits.
pub fn devices() -> Result<()> {
    #[cfg(feature = "wgpu")]
    {
        let all = kernels::gpu::adapters();
        if all.is_empty() {
            return Err(AlignError::config(
                "devices",
                "wgpu found no Vulkan, Metal or DX12 adapter (on Linux without a GPU driver: apt-get install mesa-vulkan-drivers libvulkan1)",
            ));
        }
        for a in all {
            println!(
                "gpu:{}  {}  [{} {}]  driver {}  max storage binding {} MiB, max buffer {} MiB, workgroup memory {} KiB, {} invocations/workgroup",
                a.index,
                a.name,
                a.backend,
                a.device_type,
                if a.driver.is_empty() { "?" } else { &a.driver },
                a.max_storage_binding_bytes >> 20,
                a.max_buffer_bytes >> 20,
                a.max_workgroup_storage_bytes >> 10,
                a.max_invocations_per_workgroup
            );
        }
        Ok(())
    }
    #[cfg(not(feature = "wgpu"))]
    Err(AlignError::config(
        "devices",
        "this build has no GPU support: rebuild with `cargo build --release -p align --features wgpu`",
    ))
}

/// `align tokenize`: stdin lines -> JSON arrays of ids on stdout.
pub fn tokenize(vocab: &Path, cased: bool, max_len: Option<usize>) -> Result<()> {
    let mut tok = if vocab.is_dir() {
        WordPiece::from_dir(vocab)
    } else {
        WordPiece::from_vocab_file(vocab, BertOptions::default())
    }?;
    if cased {
        tok.options.do_lower_case = false;
        tok.options.strip_accents = Some(false);
    }
    let opts = EncodeOptions { max_len, ..Default::default() };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut buf = Vec::new();
    let mut reader = stdin.lock();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_error(Path::new("stdin")))?;
        if n == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        // Invalid UTF-8 is replaced (U+FFFD is then dropped by the tokenizer), never fatal.
        let line = String::from_utf8_lossy(&buf);
        let ids = tok.encode(&line, &opts).ids;
        let json = serde_json::to_string(&ids).expect("ids serialise");
        writeln!(out, "{json}").map_err(io_error(Path::new("stdout")))?;
    }
    out.flush().map_err(io_error(Path::new("stdout")))
}

/// Reads stdin lines (invalid UTF-8 replaced), without their line endings.
fn stdin_lines() -> Result<Vec<String>> {
    let mut lines = vec![];
    let mut buf = Vec::new();
    let mut reader = std::io::stdin().lock();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_error(Path::new("stdin")))?;
        if n == 0 {
            return Ok(lines);
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        lines.push(String::from_utf8_lossy(&buf).into_owned());
    }
}

/// `align bert-features`: one JSON object per input line.
pub fn bert_features(model_dir: &Path, max_len: usize, batch_size: usize, device: Device) -> Result<()> {
    let cfg = BertConfig::from_json_file(model_dir.join("config.json"))?;
    let tok = WordPiece::from_dir(model_dir)?;
    let max_len = max_len.clamp(2, cfg.max_position_embeddings);
    let bert = Bert::new(cfg, &mut tensor::Rng::new(0));
    bert.load_hf_safetensors(model_dir.join("model.safetensors"))?;
    bert.to_device(device)?;
    let lines = stdin_lines()?;
    let opts = EncodeOptions { max_len: Some(max_len), ..Default::default() };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for chunk in lines.chunks(batch_size.max(1)) {
        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let encs = tok.encode_batch(&texts, &opts);
        let tokens = TokenBatch::from_encodings(&encs)?;
        let (cls, mean) = autograd::no_grad(|| -> tensor::Result<_> {
            let hidden = bert.forward(&tokens, &mut nn::Ctx::eval())?;
            Ok((cls_state(&hidden)?.value(), masked_mean(&hidden, &tokens.mask)?.value()))
        })?;
        let h = cls.shape()[1];
        let (cls, mean) = (cls.to_vec(), mean.to_vec());
        for (i, e) in encs.iter().enumerate() {
            let obj =
                serde_json::json!({"ids": e.ids, "cls": &cls[i * h..(i + 1) * h], "mean": &mean[i * h..(i + 1) * h]});
            writeln!(out, "{obj}").map_err(io_error(Path::new("stdout")))?;
        }
    }
    out.flush().map_err(io_error(Path::new("stdout")))
}

/// ImageNet class names (torchvision's list), shipped with the project.
pub const IMAGENET_CLASSES: &str = include_str!("../data/imagenet_classes.txt");

/// Top classes of one image as (class index, probability), or why it could not be read.
pub type ImageResult = Result<Vec<(usize, f32)>, String>;

/// Top-`k` (class index, probability) of each image under an EfficientNet checkpoint.
/// Unreadable images give an `Err` in their slot; the rest are still classified.
pub fn classify_images(
    weights: &Path,
    arch: &str,
    images: &[std::path::PathBuf],
    k: usize,
    device: Device,
) -> Result<Vec<ImageResult>> {
    use crate::efficientnet::{EfficientNet, EfficientNetConfig};
    use crate::images::{load_image_tensor, Normalisation};
    let mut cfg = EfficientNetConfig::by_name(arch)
        .ok_or_else(|| AlignError::config("--arch", format!("unknown '{arch}' (b0..b7, l2, lite0..lite4)")))?;
    let tensors = tensor::io::load_named_tensors(weights)?;
    // torchvision's weights need its padding and eps, which its parameter names reveal
    if crate::efficientnet::is_torchvision_naming(tensors.iter().map(|(n, _)| n.as_str())) {
        cfg = cfg.torchvision();
    }
    let norm = if cfg.lite { Normalisation::Lite } else { Normalisation::ImageNet };
    let crop = cfg.resolution as u32;
    let resize = (crop as f32 / 0.875).round() as u32; // the usual 224 / 256 ratio
    let model = EfficientNet::new(cfg, &mut tensor::Rng::new(0));
    model.load_pytorch(&tensors).map_err(|e| AlignError::data(weights, e.to_string()))?;
    model.to_device(device)?;
    let classify_one = |path: &Path| -> ImageResult {
        let x =
            load_image_tensor(path, resize, crop, norm).and_then(|x| x.to_device(device)).map_err(|e| e.to_string())?;
        let probs = autograd::no_grad(|| -> tensor::Result<tensor::Tensor> {
            let logits = model.logits(&autograd::Var::constant(x), &mut nn::Ctx::eval())?;
            autograd::ops::softmax::softmax(&logits)?.value().to_cpu()
        })
        .map_err(|e| e.to_string())?;
        let (top, idx) = probs.topk(k.min(probs.shape()[1]), 1, true).map_err(|e| e.to_string())?;
        Ok(idx.to_vec().iter().map(|&i| i as usize).zip(top.to_vec()).collect())
    };
    Ok(images.iter().map(|p| classify_one(p)).collect())
}

/// `align classify`: top-5 ImageNet classes per image.
pub fn classify(weights: &Path, arch: &str, images: &[std::path::PathBuf], device: Device) -> Result<()> {
    let names: Vec<&str> = IMAGENET_CLASSES.lines().collect();
    let results = classify_images(weights, arch, images, 5, device)?;
    let mut failed = 0;
    for (path, r) in images.iter().zip(results) {
        match r {
            Ok(top) => {
                println!("{}", path.display());
                for (i, p) in top {
                    println!("  {i:4}  {:<30} {p:.4}", names.get(i).copied().unwrap_or("?"));
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(AlignError::Data {
            file: "images".into(),
            record: None,
            msg: format!("{failed} of {} could not be read", images.len()),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Released models: a Hugging Face AlignModel directory
// ---------------------------------------------------------------------------------------------

/// Decodes every image, naming the file that fails.
fn read_images(paths: &[std::path::PathBuf]) -> Result<Vec<crate::images::RgbImage>> {
    paths.iter().map(|p| crate::images::load_rgb(p).map_err(|e| AlignError::data(p, e.to_string()))).collect()
}

/// `align features --model DIR (--text | --image FILE...)`: one JSON array (the unit embedding)
/// per stdin line, or per image.
pub fn features(model: &Path, text: bool, images: &[std::path::PathBuf], device: Device) -> Result<()> {
    use std::io::{BufRead, Write};
    if text != images.is_empty() {
        return Err(AlignError::config("features", "give either --text (lines on stdin) or --image FILE..."));
    }
    let hf = crate::hf_align::HfAlign::open(model)?;
    hf.model.to_device(device)?;
    let d = hf.model.embed_dim();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut print = |rows: &[f32]| -> Result<()> {
        for row in rows.chunks_exact(d) {
            writeln!(out, "{}", serde_json::to_string(row).expect("json")).map_err(io_error(Path::new("stdout")))?;
        }
        Ok(())
    };
    if text {
        let lines: Vec<String> =
            std::io::stdin().lock().lines().collect::<std::io::Result<_>>().map_err(io_error(Path::new("stdin")))?;
        for chunk in lines.chunks(32) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            print(&hf.embed_texts(&refs)?)?;
        }
    } else {
        for chunk in images.chunks(16) {
            print(&hf.embed_images(&read_images(chunk)?)?)?;
        }
    }
    out.flush().map_err(io_error(Path::new("stdout")))
}

/// Zero-shot classification with a released model: for each image, the labels ranked by
/// softmax(cosine / temperature) over prompt-ensembled label embeddings.
pub fn zeroshot_ranked(
    hf: &crate::hf_align::HfAlign,
    labels: &[String],
    templates: &[String],
    images: &[std::path::PathBuf],
) -> Result<Vec<Vec<(usize, f32)>>> {
    if labels.is_empty() {
        return Err(AlignError::config("--labels", "no labels"));
    }
    let d = hf.model.embed_dim();
    let classes = crate::eval::ensemble_prompts(&|t| hf.embed_texts(t), d, labels, templates)?;
    let embeddings = hf.embed_images(&read_images(images)?)?;
    let scores = crate::eval::similarity(&embeddings, &classes, d)?;
    let sigma = hf.temperature();
    Ok(scores
        .chunks_exact(labels.len())
        .map(|row| {
            let top = row.iter().fold(f32::MIN, |m, &v| m.max(v / sigma));
            let exp: Vec<f32> = row.iter().map(|&v| (v / sigma - top).exp()).collect();
            let total: f32 = exp.iter().sum();
            let mut ranked: Vec<(usize, f32)> = exp.iter().map(|&e| e / total).enumerate().collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            ranked
        })
        .collect())
}

/// `align zeroshot --model DIR --labels "cat,dog" [--templates FILE] IMAGE...`.
pub fn zeroshot(
    model: &Path,
    labels: &str,
    templates: Option<&Path>,
    images: &[std::path::PathBuf],
    device: Device,
) -> Result<()> {
    let hf = crate::hf_align::HfAlign::open(model)?;
    hf.model.to_device(device)?;
    let labels: Vec<String> = labels.split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    let templates = match templates {
        Some(p) => crate::eval::read_lines(p)?,
        None => crate::eval::parse_lines(crate::eval::CLIP_TEMPLATES),
    };
    for (path, ranked) in images.iter().zip(zeroshot_ranked(&hf, &labels, &templates, images)?) {
        println!("{}", path.display());
        for (label, p) in ranked {
            println!("  {:<30} {p:.4}", labels[label]);
        }
    }
    Ok(())
}

/// Flags of `align train` (every one optional: no flags trains the `tiny` default).
#[derive(clap::Parser, Debug, Clone)]
pub struct TrainArgs {
    /// tiny (EfficientNet-B0 @64 + BERT-mini @32 tokens) or paper (L2 + BERT-Large: prints its size only)
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Training data: `builtin` (generated, no download), a manifest (.tsv/.csv/.jsonl of
    /// image path and alt-text), a WebDataset .tar shard, or a folder of shards
    #[arg(long, default_value = "builtin")]
    pub data: String,
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (LAMB, after linear warm-up; decays linearly to 0).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Warm-up steps.
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Image tower: b0..b7, l2, lite0..lite4, tiny (EfficientNet), vit-tiny, vit-micro (ViT).
    #[arg(long)]
    pub image_tower: Option<String>,
    /// Image resolution (square crops).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Text tower: tiny, mini, small, medium, base, large.
    #[arg(long)]
    pub text_tower: Option<String>,
    /// Maximum caption length in tokens (including [CLS] and [SEP]).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Drop-connect rate of the last image block (earlier blocks scale linearly from 0).
    #[arg(long)]
    pub drop_connect: Option<f32>,
    /// Dropout of the text tower (hidden and attention).
    #[arg(long)]
    pub text_dropout: Option<f32>,
    /// Learning-rate multiplier of the temperature.
    #[arg(long)]
    pub temperature_lr_scale: Option<f32>,
    /// Alt-text pairs generated before filtering.
    #[arg(long)]
    pub train_pairs: Option<usize>,
    /// Evaluate held-out retrieval every N steps (0: only at the end).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Built-in corpus: held-out pairs kept aside for retrieval.
    #[arg(long)]
    pub held_out: Option<usize>,
    /// Write the checkpoint every N steps (and always at the end; 0: only at the end).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    #[arg(long, default_value = "runs/align-tiny")]
    pub out: std::path::PathBuf,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Stop cleanly after this many completed steps, with a checkpoint (as Ctrl-C does);
    /// `--resume` continues. The learning-rate schedule still runs to --steps.
    #[arg(long)]
    pub stop_at: Option<u64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data-parallel runs (`mpirun -np N align train ...`, feature `mpi`): batch-norm
    /// statistics over the global batch instead of each rank's share.
    #[arg(long)]
    pub sync_bn: bool,
    /// Data-parallel runs: check after every step that all ranks hold identical parameters.
    #[arg(long)]
    pub check_replicas: bool,
    /// Start the image tower from pretrained weights: an EfficientNet state dict for
    /// --image-tower (.pth or .safetensors, lukemelas' or torchvision's naming, e.g. the lite0
    /// package's efficientnet-lite0-57934424.pth) or a Hugging Face AlignModel directory (its
    /// vision tower).
    #[arg(long, value_name = "PATH")]
    pub image_init: Option<PathBuf>,
    /// Start the text tower from a Hugging Face BERT directory (config.json, model.safetensors,
    /// vocab.txt), with its vocabulary and casing (e.g. all-MiniLM-L6-v2).
    #[arg(long, value_name = "DIR")]
    pub text_init: Option<PathBuf>,
    /// LiT: keep the image tower fixed (eval mode, no gradients, no optimiser state).
    #[arg(long)]
    pub lock_image: bool,
    /// Keep the text encoder fixed (its projection still trains).
    #[arg(long)]
    pub lock_text: bool,
    /// With `--config paper`: print what N data-parallel ranks would send, receive and hold
    /// per step (see README, "Training on many machines").
    #[arg(long, value_name = "N")]
    pub plan_replicas: Option<usize>,
    /// Link bandwidth per rank for `--plan-replicas`, in Gbit/s.
    #[arg(long, default_value_t = 100.0)]
    pub link_gbps: f64,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `align train`.
pub fn train(args: &TrainArgs) -> Result<()> {
    use crate::train::TrainConfig;
    let (config, data, out, resume, seed) =
        (args.config.as_str(), args.data.as_str(), &args.out, args.resume, args.seed);
    let mut cfg = match config {
        "tiny" => TrainConfig::tiny(),
        "paper" => {
            let cfg = TrainConfig::paper();
            if let Some(n) = args.plan_replicas {
                // the paper's batch is global: each of n ranks holds 1/n of it
                let per_rank = TrainConfig { batch_size: cfg.batch_size.div_ceil(n.max(1)), ..cfg };
                let plan = crate::dist::plan::Plan::for_config(&per_rank, n)?;
                print!("{}", plan.table(args.link_gbps));
                return Ok(());
            }
            let image = crate::efficientnet::EfficientNetConfig::by_name("l2").expect("l2");
            let text = crate::bert::BertConfig::large();
            println!(
                "paper configuration: EfficientNet-L2 at {} px ({:.1}M parameters, {}-d embeddings) + BERT-Large at {} tokens ({:.1}M), batch {}, {} steps",
                cfg.resolution,
                crate::efficientnet::count_parameters(&image) as f64 / 1e6,
                image.feature_dim(),
                cfg.max_tokens,
                text.num_parameters() as f64 / 1e6,
                cfg.batch_size,
                cfg.steps
            );
            println!("(printed, not trained: it needs the paper's 1024 TPUv3 cores)");
            return Ok(());
        }
        other => return Err(AlignError::config("--config", format!("unknown '{other}' (tiny, paper)"))),
    };
    if data != "builtin" && !Path::new(data).exists() {
        return Err(AlignError::config(
            "--data",
            format!("{data}: not `builtin`, a manifest (.tsv / .csv / .jsonl), a .tar shard or a folder of shards"),
        ));
    }
    cfg.data = data.to_string();
    cfg.seed = seed;
    if let Some(s) = args.steps {
        cfg.steps = s;
        cfg.warmup = cfg.warmup.min(s / 10 + 1);
    }
    if let Some(w) = args.warmup {
        cfg.warmup = w;
    }
    if let Some(b) = args.batch_size {
        cfg.batch_size = b.max(2);
    }
    if let Some(l) = args.lr {
        cfg.lr = l;
    }
    if let Some(n) = args.train_pairs {
        cfg.train_pairs = n;
    }
    if let Some(e) = args.eval_every {
        cfg.eval_every = e;
    }
    if let Some(n) = args.held_out {
        cfg.held_out = n;
    }
    if let Some(n) = args.checkpoint_every {
        cfg.checkpoint_every = n;
    }
    if let Some(t) = &args.image_tower {
        cfg.image_arch = t.clone();
    }
    if let Some(r) = args.resolution {
        cfg.resolution = r.max(8);
    }
    if let Some(t) = &args.text_tower {
        cfg.text_arch = t.clone();
    }
    if let Some(t) = args.max_tokens {
        cfg.max_tokens = t.max(3);
    }
    if let Some(d) = args.drop_connect {
        cfg.drop_connect = d.clamp(0.0, 0.9);
    }
    if let Some(d) = args.text_dropout {
        cfg.text_dropout = d.clamp(0.0, 0.9);
    }
    if let Some(t) = args.temperature_lr_scale {
        cfg.temperature_lr_scale = t;
    }
    if let Some(p) = &args.device.precision {
        cfg.precision = p.clone();
    }
    if args.plan_replicas.is_some() {
        let plan = crate::dist::plan::Plan::for_config(&cfg, args.plan_replicas.unwrap_or(1))?;
        print!("{}", plan.table(args.link_gbps));
        return Ok(());
    }
    cfg.sync_bn = args.sync_bn;
    if let Some(p) = &args.image_init {
        cfg = cfg.with_image_init(p)?;
    }
    if let Some(dir) = &args.text_init {
        cfg = cfg.with_text_init(dir)?;
    }
    cfg.lock_image = args.lock_image;
    cfg.lock_text = args.lock_text;
    crate::train::install_interrupt_handler();
    let device = args.device.resolve()?;
    // one rank, or every rank of an `mpirun` job
    let comm = crate::dist::Comm::from_environment()?;
    let root = comm.is_root();
    let opts = crate::train::RunOptions {
        resume,
        quiet: false,
        stop_at: args.stop_at,
        device,
        comm,
        check_replicas: args.check_replicas,
    };
    let summary = crate::train::train(&cfg, out, &opts)?;
    if !root {
        return Ok(());
    }
    if summary.interrupted {
        println!(
            "stopped at step {} of {}; resume with: align train --resume --out {}",
            summary.steps,
            cfg.steps,
            out.display()
        );
        return Ok(());
    }
    let unreadable = match summary.held_out_unreadable {
        0 => String::new(),
        n => format!("; {n} held-out pairs with unreadable images left out"),
    };
    match &summary.held_out {
        Some(m) => println!(
            "held-out retrieval ({} pairs{unreadable}): image->text R@1 {:.3} R@5 {:.3} R@10 {:.3} | text->image R@1 {:.3} R@5 {:.3} R@10 {:.3} | temperature {:.4} | {:.0} s",
            summary.held_out_pairs, m.i2t_r1, m.i2t_r5, m.i2t_r10, m.t2i_r1, m.t2i_r5, m.t2i_r10, summary.temperature, summary.wall_seconds
        ),
        None => println!(
            "held-out retrieval: not measured, none of the {} held-out images could be read | temperature {:.4} | {:.0} s",
            summary.held_out_unreadable, summary.temperature, summary.wall_seconds
        ),
    }
    println!(
        "run directory: {} (log.jsonl, checkpoint.safetensors, vocab.txt, filters.json, summary.json)",
        out.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Evaluation, embedding index and search
// ---------------------------------------------------------------------------------------------

pub(crate) fn open_model(checkpoint: &Path, device: Device) -> Result<crate::eval::LoadedModel> {
    let lm = crate::eval::LoadedModel::open(checkpoint)?;
    lm.model.to_device(device)?;
    Ok(lm)
}

fn print_skips(skipped: &crate::data::SkipReport) {
    if skipped.total() > 0 {
        eprintln!("skipped records: {skipped}");
    }
}

/// An evaluation that scored nothing is an error, not a score of 0.
fn require_scored(scored: usize, data: &Path, skipped: &crate::data::SkipReport) -> Result<()> {
    if scored == 0 {
        return Err(AlignError::data(
            data,
            format!("no image could be read, nothing to score (skipped records: {skipped})"),
        ));
    }
    Ok(())
}

/// `align eval retrieval`
pub fn eval_retrieval(checkpoint: &Path, data: &Path, json: bool, device: Device) -> Result<()> {
    let lm = open_model(checkpoint, device)?;
    let r = crate::eval::eval_retrieval(&lm, data)?;
    require_scored(r.images, data, &r.skipped)?;
    if json {
        println!("{}", serde_json::to_string(&r).expect("json"));
    } else {
        print_skips(&r.skipped);
        let m = &r.metrics;
        println!("{} images, {} captions", r.images, r.captions);
        println!(
            "image->text R@1 {:.3} R@5 {:.3} R@10 {:.3} median rank {}",
            m.i2t_r1, m.i2t_r5, m.i2t_r10, m.i2t_median_rank
        );
        println!(
            "text->image R@1 {:.3} R@5 {:.3} R@10 {:.3} median rank {}",
            m.t2i_r1, m.t2i_r5, m.t2i_r10, m.t2i_median_rank
        );
    }
    Ok(())
}

/// `align eval zeroshot`
pub fn eval_zeroshot(
    checkpoint: &Path,
    data: &Path,
    classes: &Path,
    templates: Option<&Path>,
    json: bool,
    device: Device,
) -> Result<()> {
    let lm = open_model(checkpoint, device)?;
    let classes = crate::eval::read_lines(classes)?;
    let templates = match templates {
        Some(p) => crate::eval::read_lines(p)?,
        None => crate::eval::parse_lines(crate::eval::CLIP_TEMPLATES),
    };
    let a = crate::eval::eval_zeroshot(&lm, data, &classes, &templates)?;
    require_scored(a.images, data, &a.skipped)?;
    if json {
        println!("{}", serde_json::to_string(&a).expect("json"));
    } else {
        print_skips(&a.skipped);
        println!(
            "zero-shot ({} classes, {} templates): {} images, top-1 {:.3}, top-5 {:.3}",
            classes.len(),
            templates.len(),
            a.images,
            a.top1,
            a.top5.unwrap_or(f32::NAN)
        );
    }
    Ok(())
}

/// `align eval knn`
pub fn eval_knn(checkpoint: &Path, train: &Path, test: &Path, k: usize, json: bool, device: Device) -> Result<()> {
    let lm = open_model(checkpoint, device)?;
    let a = crate::eval::eval_knn(&lm, train, test, k)?;
    require_scored(a.images, test, &a.skipped)?;
    if json {
        println!("{}", serde_json::to_string(&a).expect("json"));
    } else {
        print_skips(&a.skipped);
        println!("KNN (k = {k}, cosine, similarity-weighted votes): {} test images, top-1 {:.3}", a.images, a.top1);
    }
    Ok(())
}

/// `align eval arithmetic`
pub fn eval_arithmetic(
    checkpoint: &Path,
    gallery: usize,
    queries: usize,
    k: usize,
    json: bool,
    device: Device,
) -> Result<()> {
    let lm = open_model(checkpoint, device)?;
    let r = crate::eval::eval_arithmetic(&lm, gallery, queries, k)?;
    if json {
        println!("{}", serde_json::to_string(&r).expect("json"));
    } else {
        println!(
            "image + \"B\" - \"A\" over {} held-out built-in scenes: {} queries, an object of colour B in the top {}: {:.1}% (the image alone: {:.1}%)",
            gallery,
            r.queries,
            r.k,
            100.0 * r.hit_rate,
            100.0 * r.baseline_hit_rate
        );
    }
    Ok(())
}

/// What `align embed` writes besides the index.
#[derive(Clone, Debug, Default)]
pub struct EmbedOptions {
    /// How the index stores its rows.
    pub dtype: crate::index::IndexDtype,
    /// Also write the rows as a NumPy float32 (n, dim) file.
    pub export_npy: Option<std::path::PathBuf>,
    /// No progress line on stderr.
    pub quiet: bool,
}

/// `align embed`: embeds a folder's or a manifest's images into a search index, a batch at a
/// time, showing progress; an interrupted run of the same command continues where it stopped.
pub fn embed(checkpoint: &Path, images: &Path, out: &Path, options: &EmbedOptions, device: Device) -> Result<()> {
    use crate::index::{EmbeddingIndex, IndexBuilder};
    let lm = open_model(checkpoint, device)?;
    // a manifest's first caption of each image goes into the index (the server shows it)
    let (files, captions) = crate::eval::list_images_with_captions(images)?;
    if files.is_empty() {
        return Err(AlignError::data(images, "no images found"));
    }
    let (mut builder, done) = IndexBuilder::open(out, &lm.checkpoint, &files, lm.dim())?;
    if done > 0 {
        eprintln!("resuming: {done} of {} images already embedded", files.len());
    }
    const BATCH: usize = 256;
    let started = std::time::Instant::now();
    for start in (done..files.len()).step_by(BATCH) {
        let end = (start + BATCH).min(files.len());
        let (embeddings, kept) = lm.embed_files(&files[start..end])?;
        let kept: Vec<usize> = kept.iter().map(|&i| start + i).collect();
        builder.append(end - start, &embeddings, &kept)?;
        if !options.quiet {
            let rate = (end - done) as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let eta = (files.len() - end) as f64 / rate.max(1e-9);
            eprint!("\rembedded {end}/{} images ({rate:.1}/s, ETA {eta:.0} s)   ", files.len());
        }
    }
    if !options.quiet && done < files.len() {
        eprintln!();
    }
    let (rows, kept) = builder.rows()?;
    let paths: Vec<std::path::PathBuf> = kept.iter().map(|&i| files[i].clone()).collect();
    let mut index = EmbeddingIndex::from_embeddings(rows, lm.dim(), paths, lm.checkpoint.clone())?;
    index.captions = captions.map(|c| kept.iter().map(|&i| c[i].clone()).collect());
    let index = index.into_dtype(options.dtype);
    index.save(out)?;
    if let Some(npy) = &options.export_npy {
        index.export_npy(npy)?;
    }
    builder.clean();
    let bad = files.len() - index.len();
    println!(
        "{} images embedded ({}-d, {}) into {}{}",
        index.len(),
        index.dim,
        index.dtype(),
        out.display(),
        if bad > 0 { format!("; {bad} could not be decoded and were skipped") } else { String::new() }
    );
    if let Some(npy) = &options.export_npy {
        println!("rows also written to {} (NumPy float32, {} x {})", npy.display(), index.len(), index.dim);
    }
    Ok(())
}

/// `align search`
#[allow(clippy::too_many_arguments)]
pub fn search(
    index: &Path,
    checkpoint: Option<&Path>,
    text: Option<&str>,
    image: Option<&Path>,
    plus: &[String],
    minus: &[String],
    top: usize,
    html: Option<&Path>,
    device: Device,
) -> Result<()> {
    use crate::eval::{EmbeddingIndex, Query};
    let idx = EmbeddingIndex::load(index)?;
    let ck = checkpoint.map(Path::to_path_buf).unwrap_or_else(|| idx.checkpoint.clone());
    let lm = open_model(&ck, device)?;
    if lm.dim() != idx.dim {
        return Err(AlignError::data(index, format!("holds {}-d embeddings, the model makes {}-d", idx.dim, lm.dim())));
    }
    let (query, title) = match (text, image) {
        (Some(t), None) => (Query::Text(t), format!("\"{t}\"")),
        (None, Some(p)) => {
            let mut title = p.display().to_string();
            plus.iter().for_each(|t| title.push_str(&format!(" + \"{t}\"")));
            minus.iter().for_each(|t| title.push_str(&format!(" - \"{t}\"")));
            (Query::Image { path: p, plus, minus }, title)
        }
        _ => return Err(AlignError::config("--text / --image", "give exactly one of them")),
    };
    let q = crate::eval::query_vector(&lm, &query)?;
    let hits = idx.search(&q, top)?;
    for (i, s) in &hits {
        println!("{s:.4}\t{}", idx.paths[*i].display());
    }
    if let Some(h) = html {
        let rows: Vec<(std::path::PathBuf, f32)> = hits.iter().map(|&(i, s)| (idx.paths[i].clone(), s)).collect();
        let page = crate::eval::results_html(&format!("search: {title}"), &rows);
        std::fs::write(h, page).map_err(io_error(h))?;
        eprintln!("wrote {}", h.display());
    }
    Ok(())
}
