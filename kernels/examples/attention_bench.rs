//! Fused multi-head self-attention (`kernels::attention`) at BERT's shapes, forward and
//! backward, against the same products run as one strided-batched GEMM each (what a composed
//! reshape / matmul / softmax / matmul graph costs before its permute copies).
//!
//!     cargo run --release -p kernels --example attention_bench -- --threads 2
//!
//! Prints `attention B T heads dh: forward MS (GFLOP/s), backward MS (GFLOP/s)` per shape.

use kernels::attention::{attention_backward, attention_forward, AttentionShape};
use kernels::timing::median_ms;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let threads: usize = get("--threads").and_then(|s| s.parse().ok()).unwrap_or(2);
    let runs: usize = get("--runs").and_then(|s| s.parse().ok()).unwrap_or(11);
    kernels::parallel::set_num_threads(threads);
    // BERT-mini and BERT-base at batch 32 x 64 tokens
    for (batch, seq, heads, head_dim) in [(32, 64, 4, 64), (32, 64, 12, 64), (8, 256, 12, 64)] {
        let shape = AttentionShape { batch, seq, heads, head_dim };
        let qkv: Vec<f32> = (0..shape.qkv_len()).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let d_out: Vec<f32> = (0..shape.out_len()).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let (mut probs, mut out, mut d_qkv) =
            (vec![0.0; shape.probs_len()], vec![0.0; shape.out_len()], vec![0.0; shape.qkv_len()]);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let fwd = median_ms(runs, || attention_forward(shape, &qkv, None, None, scale, &mut probs, &mut out));
        let bwd = median_ms(runs, || attention_backward(shape, &qkv, &probs, None, scale, &d_out, &mut d_qkv));
        // two (T, dh, T)-sized products forward, four backward
        let product = 2.0 * (batch * heads * seq * seq * head_dim) as f64;
        println!(
            "attention {batch} {seq} {heads} {head_dim}: forward {fwd:.2} ms ({:.1} GFLOP/s), backward {bwd:.2} ms ({:.1} GFLOP/s)",
            2.0 * product / fwd / 1e6,
            4.0 * product / bwd / 1e6
        );
    }
}
