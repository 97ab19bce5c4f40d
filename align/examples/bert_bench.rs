//! BERT speed at the shapes of the PyTorch comparison (batch 32 x 64 tokens, random weights).
//!
//!     cargo run --release -p align --example bert_bench -- --threads 2
//!     python3 scripts/bench_reference.py bert --threads 2     # transformers BertModel, same shapes
//!
//! Prints `bert-mini fwd+bwd MS` and `bert-base fwd MS` (median of several runs). `--split`
//! adds the forward alone (and, with ALIGN_PROFILE_BACKWARD=1, a backward table);
//! `--mini-only` skips BERT-base (for profilers); `--serve` answers one timed step per stdin
//! line, for `bench_reference.py bert --interleave` (see there). `--precision bf16` runs the
//! linear layers' products in bf16 (`kernels::bf16::MatmulPrecision`); compare with
//! `bench_reference.py bert --autocast`.

use align::bert::{Bert, BertConfig, TokenBatch};
use autograd::ops::reduce;
use nn::Ctx;
use tensor::{Rng, Tensor};

use kernels::timing::median_ms;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let threads: usize = get("--threads").and_then(|s| s.parse().ok()).unwrap_or(2);
    let runs: usize = get("--runs").and_then(|s| s.parse().ok()).unwrap_or(5);
    kernels::parallel::set_num_threads(threads);
    if let Some(p) = get("--precision") {
        kernels::bf16::set_matmul_precision(p.parse().expect("--precision f32|bf16"));
    }
    let (b, t) = (32, 64);
    let mut rng = Rng::new(0);
    let tokens = TokenBatch {
        ids: (0..b * t).map(|_| 1000 + rng.below(20000)).collect(),
        mask: Tensor::ones(&[b, t]),
        batch: b,
        seq: t,
    };
    let mini = Bert::new(BertConfig { hidden_dropout: 0.0, attention_dropout: 0.0, ..BertConfig::mini() }, &mut rng);
    if args.iter().any(|a| a == "--serve") {
        // For `bench_reference.py bert --interleave`: one timed step per request line
        // ("mini" or "base"), answered with its milliseconds, so that the reference and
        // this program alternate step by step and the host's drift falls on both alike.
        let base = Bert::new(BertConfig::base(), &mut rng);
        println!("ready");
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            let t = std::time::Instant::now();
            match line.trim() {
                "mini" => {
                    let h = mini.forward(&tokens, &mut Ctx::train(0)).unwrap();
                    reduce::mean_all(&h).unwrap().backward().unwrap();
                }
                "base" => {
                    autograd::no_grad(|| base.forward(&tokens, &mut Ctx::eval()).unwrap());
                }
                _ => break,
            }
            println!("{:.3}", t.elapsed().as_secs_f64() * 1e3);
        }
        return;
    }
    let ms = median_ms(runs, || {
        let h = mini.forward(&tokens, &mut Ctx::train(0)).unwrap();
        reduce::mean_all(&h).unwrap().backward().unwrap();
    });
    println!("bert-mini fwd+bwd {ms:.1}");
    if args.iter().any(|a| a == "--split") {
        let f = median_ms(runs, || {
            mini.forward(&tokens, &mut Ctx::train(0)).unwrap();
        });
        println!("bert-mini fwd only {f:.1}");
        if autograd::profile::enabled() {
            let _ = autograd::profile::report();
            let h = mini.forward(&tokens, &mut Ctx::train(0)).unwrap();
            reduce::mean_all(&h).unwrap().backward().unwrap();
            print!("{}", autograd::profile::report());
        }
    }
    if args.iter().any(|a| a == "--mini-only") {
        return;
    }
    let base = Bert::new(BertConfig::base(), &mut rng);
    let ms = median_ms(runs.min(3), || {
        autograd::no_grad(|| base.forward(&tokens, &mut Ctx::eval()).unwrap());
    });
    println!("bert-base fwd {ms:.1}");
}
