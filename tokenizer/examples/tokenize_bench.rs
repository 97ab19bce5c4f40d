//! Single-threaded encoding speed on a text file.
//!
//!     cargo run --release -p tokenizer --example tokenize_bench -- VOCAB_DIR FILE
//!     python3 scripts/bench_reference.py tokenize VOCAB_DIR FILE     # Hugging Face, one thread
//!
//! Prints MB/s of input text (median of 5 passes over the whole file).

use std::time::Instant;

use tokenizer::{EncodeOptions, WordPiece};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: tokenize_bench VOCAB_DIR FILE");
        std::process::exit(2);
    }
    let tok = WordPiece::from_dir(&args[1]).expect("vocabulary");
    let text = std::fs::read_to_string(&args[2]).expect("text file");
    let lines: Vec<&str> = text.split('\n').collect();
    let opts = EncodeOptions::default();
    let mut times = vec![];
    let mut tokens = 0;
    for _ in 0..5 {
        let t = Instant::now();
        tokens = lines.iter().map(|l| tok.encode(l, &opts).ids.len()).sum::<usize>();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let t = times[2];
    println!("ours: {} lines, {tokens} tokens, {:.1} MB/s", lines.len(), text.len() as f64 / t / 1e6);
}
