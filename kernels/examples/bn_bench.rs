//! Batch-norm (+ fused SiLU) kernel timings on EfficientNet-B0 activation shapes.
//!
//! `cargo run --release -p kernels --example bn_bench -- [--threads T] [--no-activation]` prints one line per
//! shape: milliseconds for the training statistics, the fused forward and the fused backward,
//! and the memory bandwidth the backward reaches (it reads x and dy and writes dx, twice over).
//! Compare with `python3 scripts/bench_reference.py bn` (PyTorch batch_norm + silu).

use kernels::activation::Activation;
use kernels::batchnorm::{batch_norm_backward, batch_norm_forward, batch_norm_stats};
use kernels::timing::median_ms;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // --no-activation: batch norm alone, without the fused SiLU
    let no_activation = args.iter().any(|a| a == "--no-activation");
    if let Some(i) = args.iter().position(|a| a == "--threads") {
        kernels::parallel::set_num_threads(args[i + 1].parse().expect("--threads N"));
    }
    println!("threads {}", kernels::parallel::num_threads());
    // (N*H*W, C): B0 at 64x64, batch 64: stem, expanded stage 2, stage 4 / batch 16 at 224: stage 2
    for &(rows, c) in &[(64 * 32 * 32, 32), (64 * 16 * 16, 96), (64 * 4 * 4, 480), (16 * 56 * 56, 144)] {
        let x: Vec<f32> = (0..rows * c).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let dy: Vec<f32> = (0..rows * c).map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0).collect();
        let (gamma, beta) = (vec![1.1f32; c], vec![0.1f32; c]);
        let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
        let mut y = vec![0.0; rows * c];
        let mut dx = vec![0.0; rows * c];
        let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
        let stats = median_ms(7, || batch_norm_stats(&x, c, &mut mean, &mut var));
        let rstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + 1e-3).sqrt()).collect();
        let fwd = median_ms(7, || {
            batch_norm_forward(
                &x,
                &mean,
                &rstd,
                &gamma,
                &beta,
                if no_activation { None } else { Some(Activation::Silu) },
                &mut y,
                c,
            )
        });
        let bwd = median_ms(7, || {
            batch_norm_backward(
                &x,
                &mean,
                &rstd,
                &gamma,
                &beta,
                Some(Activation::Silu),
                &dy,
                &mut dx,
                &mut dg,
                &mut db,
                c,
                true,
            )
        });
        let gb = (rows * c * 4 * 5) as f64 / (bwd * 1e-3) / 1e9;
        println!(
            "bn_silu rows {rows} c {c}: stats {stats:.2} ms, forward {fwd:.2} ms, backward {bwd:.2} ms ({gb:.1} GB/s)"
        );
    }
}
