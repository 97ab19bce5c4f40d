//! GPU speed (feature `wgpu`): the tiled WGSL matmul at 4096^3 and BERT-base's shapes, BERT-base's
//! forward, and the tiny ALIGN training step, each beside the CPU in the same run.
//!
//!     cargo run --release -p align --features wgpu --example gpu_bench -- [--adapter 0] [--quick]
//!
//! Prints `gemm M K N GFLOPS` per shape (the GPU's; the CPU's sgemm on the same shape after it),
//! `bert-base fwd MS` on both devices, and `tiny-align step PAIRS/S` on both. `--quick` uses
//! shapes small enough for a software rasteriser (lavapipe).

use std::time::Instant;

use align::bert::{Bert, BertConfig, TokenBatch};
use align::train::{train, RunOptions, TrainConfig};
use kernels::gpu::ops::{matmul, MatmulShape, Operand};
use nn::{Ctx, Module};
use tensor::{Device, Rng, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let adapter: usize = get("--adapter").and_then(|s| s.parse().ok()).unwrap_or(0);
    let quick = args.iter().any(|a| a == "--quick");
    let gpu = kernels::gpu::gpu(adapter).unwrap_or_else(|e| panic!("{e}"));
    println!("adapter gpu:{adapter}: {}", gpu.name);

    // 1. GEMM: 4096^3 and BERT-base's projections at 32 x 128 tokens
    let rows = if quick { 512 } else { 4096 };
    let shapes = [(rows, rows, rows), (rows, 768, 2304), (rows, 768, 768), (rows, 768, 3072), (rows, 3072, 768)];
    for (m, k, n) in shapes {
        let a = gpu.upload(&vec![0.5f32; m * k]).unwrap();
        let b = gpu.upload(&vec![0.25f32; k * n]).unwrap();
        let run = || {
            let s = MatmulShape { m, n, k, batch: [1, 1], alpha: 1.0 };
            matmul(s, Operand::dense(&a, m, k), Operand::dense(&b, k, n), None, None).unwrap()
        };
        drop(run());
        gpu.synchronize().unwrap();
        let reps = if quick { 2 } else { 10 };
        let t = Instant::now();
        for _ in 0..reps {
            drop(run());
        }
        gpu.synchronize().unwrap();
        let gpu_gflops = 2.0 * (m * n * k * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
        let (ca, cb) = (vec![0.5f32; m * k], vec![0.25f32; k * n]);
        let mut cc = vec![0.0f32; m * n];
        let t = Instant::now();
        kernels::sgemm(m, k, n, 1.0, &ca, &cb, 0.0, &mut cc, kernels::GemmStrides::row_major(k, n));
        let cpu_gflops = 2.0 * (m * n * k) as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!("gemm {m} {k} {n} {gpu_gflops:.1}   (cpu {cpu_gflops:.1})");
    }

    // 2. BERT-base forward
    let (b, t) = if quick { (2, 32) } else { (8, 128) };
    let mut rng = Rng::new(0);
    let tokens = TokenBatch {
        ids: (0..b * t).map(|_| 1000 + rng.below(20000)).collect(),
        mask: Tensor::ones(&[b, t]),
        batch: b,
        seq: t,
    };
    let bert = Bert::new(BertConfig::base(), &mut rng);
    for device in [Device::Cpu, Device::Gpu(adapter)] {
        bert.to_device(device).unwrap();
        let forward = || {
            let out = autograd::no_grad(|| bert.forward(&tokens, &mut Ctx::eval())).unwrap().value();
            out.sum_all() // waits for the device
        };
        forward();
        let start = Instant::now();
        forward();
        println!("bert-base fwd {:.1} ms on {device} (batch {b} x {t} tokens)", start.elapsed().as_secs_f64() * 1e3);
    }

    // 3. the tiny ALIGN step (the default recipe's model), a few steps after one warm-up
    let steps = if quick { 3 } else { 20 };
    for device in [Device::Cpu, Device::Gpu(adapter)] {
        let dir = std::env::temp_dir().join(format!("align-gpu-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = TrainConfig { steps, held_out: 8, train_pairs: 2000, checkpoint_every: 0, ..TrainConfig::tiny() };
        let s = train(&cfg, &dir, &RunOptions { quiet: true, device, ..Default::default() }).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "tiny-align step {:.1} pairs/s on {device} (batch {}, {} steps, whole run incl. setup)",
            (steps as usize * cfg.batch_size) as f64 / s.wall_seconds,
            cfg.batch_size,
            steps
        );
    }
}
