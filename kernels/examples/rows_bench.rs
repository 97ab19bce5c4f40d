//! Row-kernel timings at the shapes of the PyTorch comparison.
//!
//!     cargo run --release -p kernels --example rows_bench -- --threads 1
//!     python3 scripts/bench_reference.py rows --threads 1      # PyTorch CPU, same format
//!
//! Prints the median time of several runs for softmax (256, 16384), layer norm (2048, 768) and
//! GELU (2048, 3072), forward.

use kernels::activation::{self, Activation};
use kernels::{norm, softmax};

use kernels::timing::median_ms;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let threads: usize = get("--threads").and_then(|s| s.parse().ok()).unwrap_or(1);
    let runs: usize = get("--runs").and_then(|s| s.parse().ok()).unwrap_or(21);
    kernels::parallel::set_num_threads(threads);
    let data = |n: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7919) % 2000) as f32 / 250.0 - 4.0).collect() };

    if args.iter().any(|a| a == "--small") {
        let x = data(4096);
        let mut y = vec![0.0; 4096];
        let t = median_ms(5, || {
            for _ in 0..1000 {
                activation::activation_forward(Activation::GeluErf, &x, &mut y)
            }
        });
        println!("gelu in-cache: {:.3} ns/element", t * 1e6 / 4096e3);
        let t = median_ms(5, || {
            for _ in 0..1000 {
                softmax::softmax_forward(&x, &mut y, 4096, 1.0, None)
            }
        });
        println!("softmax in-cache: {:.3} ns/element", t * 1e6 / 4096e3);
        return;
    }
    let x = data(256 * 16384);
    let mut y = vec![0.0; x.len()];
    println!(
        "softmax 256x16384 fwd {:.3} ms",
        median_ms(runs, || softmax::softmax_forward(&x, &mut y, 16384, 1.0, None))
    );

    let x = data(2048 * 768);
    let (g, b) = (vec![1.0; 768], vec![0.0; 768]);
    let mut y = vec![0.0; x.len()];
    let (mut m, mut r) = (vec![0.0; 2048], vec![0.0; 2048]);
    println!(
        "layer_norm 2048x768 fwd {:.3} ms",
        median_ms(runs, || norm::layer_norm_forward(&x, &g, &b, &mut y, &mut m, &mut r, 768, 1e-5))
    );

    let x = data(2048 * 3072);
    let mut y = vec![0.0; x.len()];
    println!(
        "gelu 2048x3072 fwd {:.3} ms",
        median_ms(runs, || activation::activation_forward(Activation::GeluErf, &x, &mut y))
    );
}
