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
    Train {
        /// tiny (EfficientNet-B0 @64 + BERT-mini @32 tokens) or paper (L2 + BERT-Large: prints its size only)
        #[arg(long, default_value = "tiny")]
        config: String,
        /// Training data: `builtin` (generated, no download), a manifest (.tsv/.csv/.jsonl of
        /// image path and alt-text), a WebDataset .tar shard, or a folder of shards
        #[arg(long, default_value = "builtin")]
        data: String,
        #[arg(long)]
        steps: Option<u64>,
        #[arg(long)]
        batch_size: Option<usize>,
        #[arg(long)]
        lr: Option<f32>,
        /// Alt-text pairs generated before filtering.
        #[arg(long)]
        train_pairs: Option<usize>,
        /// Evaluate held-out retrieval every N steps (0: only at the end).
        #[arg(long)]
        eval_every: Option<u64>,
        #[arg(long, default_value = "runs/align-tiny")]
        out: PathBuf,
        /// Continue the run in --out from its checkpoint.
        #[arg(long)]
        resume: bool,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
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
    },
    /// Top-5 ImageNet classes of images with an EfficientNet checkpoint (PyTorch .pth).
    Classify {
        /// PyTorch state dict (lukemelas naming), e.g. efficientnet-lite0-57934424.pth
        #[arg(long)]
        weights: PathBuf,
        /// efficientnet-lite0..4, efficientnet-b0..b7
        #[arg(long, default_value = "efficientnet-lite0")]
        arch: String,
        /// JPEG / PNG files
        #[arg(required = true)]
        images: Vec<PathBuf>,
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
    /// Tour of the tensor engine and checkpoint I/O (the default until the trainer lands).
    Demo {
        /// Directory for the demo checkpoint.
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = Command::Train {
        config: "tiny".into(),
        data: "builtin".into(),
        steps: None,
        batch_size: None,
        lr: None,
        train_pairs: None,
        eval_every: None,
        out: PathBuf::from("runs/align-tiny"),
        resume: false,
        seed: 0,
    };
    let result = match cli.command.unwrap_or(default) {
        Command::Train { config, data, steps, batch_size, lr, train_pairs, eval_every, out, resume, seed } => {
            align::cli::train(&config, &data, steps, batch_size, lr, train_pairs, eval_every, &out, resume, seed)
        }
        Command::Demo { out } => align::demo::run(&out).map_err(|e| e.to_string()),
        Command::Tokenize { vocab, cased, max_len } => align::cli::tokenize(&vocab, cased, max_len),
        Command::Classify { weights, arch, images } => align::cli::classify(&weights, &arch, &images),
        Command::BertFeatures { model, max_len, batch_size } => align::cli::bert_features(&model, max_len, batch_size),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
