//! Convolution timings at the shapes of the PyTorch comparison (NHWC, batch 16).
//!
//!     cargo run --release -p kernels --example conv_bench -- --threads 1
//!     python3 scripts/bench_reference.py conv --threads 1      # PyTorch, channels_last
//!
//! Prints `name fwd_ms fwd+bwd_ms` (median of several runs); fwd+bwd = forward, input gradient
//! and weight gradient, as one training step needs.

use kernels::conv::{self, ConvGeometry, Padding};

use kernels::timing::median_ms;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let threads: usize = get("--threads").and_then(|s| s.parse().ok()).unwrap_or(1);
    let runs: usize = get("--runs").and_then(|s| s.parse().ok()).unwrap_or(7);
    kernels::parallel::set_num_threads(threads);
    let data = |n: usize| -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(7919) % 1000) as f32 / 1000.0 - 0.5).collect()
    };
    // (name, N, H, C_in, C_out, k, depthwise)
    let cases = [
        ("conv3x3_32to32_112", 16, 112, 32, 32, 3, false),
        ("dw3x3_c96_56", 16, 56, 96, 96, 3, true),
        ("dw5x5_c96_56", 16, 56, 96, 96, 5, true),
        ("conv1x1_96to24_56", 16, 56, 96, 24, 1, false),
    ];
    // `--only NAME`: one case (for profilers); `--forward-only`: skip the training step;
    // `--compare-direct`: the forward against the implicit GEMM without Winograd, alternated
    let only = get("--only");
    let forward_only = args.iter().any(|a| a == "--forward-only");
    for (name, n, h, ci, co, k, depthwise) in cases {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let g = ConvGeometry::new(n, h, h, ci, co, (k, k), (1, 1), Padding::Same).unwrap();
        let x = data(g.input_len());
        let w = data(if depthwise { k * k * ci } else { k * k * ci * co });
        let mut y = vec![0.0f32; g.output_len()];
        let dy = data(g.output_len());
        let mut dx = vec![0.0f32; g.input_len()];
        let mut dw = vec![0.0f32; w.len()];
        let fwd = median_ms(runs, || {
            if depthwise {
                conv::depthwise_forward(&x, &w, &mut y, &g)
            } else {
                conv::conv2d_forward(&x, &w, &mut y, &g)
            }
        });
        if args.iter().any(|a| a == "--compare-direct") && !depthwise {
            // conv2d_forward (Winograd where it applies) against the implicit GEMM alone,
            // alternated call by call
            let mut y2 = y.clone();
            let (fast, direct) = kernels::timing::alternating_median_ms(
                runs,
                || conv::conv2d_forward(&x, &w, &mut y, &g),
                || conv::conv2d_forward_direct(&x, &w, &mut y2, &g),
            );
            println!("{name} forward {fast:.2} direct {direct:.2} speedup {:.3}", direct / fast);
            continue;
        }
        if forward_only {
            println!("{name} {fwd:.2}");
            continue;
        }
        let step = median_ms(runs, || {
            if depthwise {
                conv::depthwise_forward(&x, &w, &mut y, &g);
                conv::depthwise_backward_input(&dy, &w, &mut dx, &g);
                conv::depthwise_backward_weight(&x, &dy, &mut dw, &g);
            } else {
                conv::conv2d_forward(&x, &w, &mut y, &g);
                conv::conv2d_backward_input(&dy, &w, &mut dx, &g);
                conv::conv2d_backward_weight(&x, &dy, &mut dw, &g);
            }
        });
        println!("{name} {fwd:.2} {step:.2}");
    }
}
