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
    let result = match cli.command.unwrap_or(Command::Demo { out: PathBuf::from("runs/demo") }) {
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
