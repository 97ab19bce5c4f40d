//! EfficientNet-B0 training-step speed (forward + backward, batch 16, training-mode BN).
//!
//!     cargo run --release -p align --example efficientnet_bench -- --threads 2 [--size 64]
//!     python3 scripts/bench_reference.py effnet --threads 2 [--size 64]   # PyTorch channels_last
//!
//! Prints `effnet-b0 SIZE fwd+bwd MS` (median of several runs).

use std::time::Instant;

use align::efficientnet::{EfficientNet, EfficientNetConfig};
use autograd::ops::reduce;
use autograd::Var;
use nn::Ctx;
use tensor::{Rng, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let threads: usize = get("--threads").and_then(|s| s.parse().ok()).unwrap_or(2);
    let size: usize = get("--size").and_then(|s| s.parse().ok()).unwrap_or(224);
    let runs: usize = get("--runs").and_then(|s| s.parse().ok()).unwrap_or(5);
    kernels::parallel::set_num_threads(threads);
    let model = EfficientNet::new(EfficientNetConfig::by_name("b0").unwrap(), &mut Rng::new(0));
    let images = Var::constant(Tensor::randn(&[16, size, size, 3], 0.0, 1.0, 1));
    let step = || {
        let logits = model.logits(&images, &mut Ctx::train(0)).unwrap();
        reduce::mean_all(&logits).unwrap().backward().unwrap();
    };
    step();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            step();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("effnet-b0 {size} fwd+bwd {:.1}", t[t.len() / 2]);
}
