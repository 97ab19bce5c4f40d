//! GEMM throughput at the shapes the ALIGN towers use.
//!
//!     cargo run --release -p kernels --example gemm_bench -- --threads 1 [--isa avx2] [--runs 7]
//!     ... -- --threads 2 --bert-mini --ab-threads    # one thread against T, alternated call by call
//!     ... -- --threads 2 --dtype bf16|f32-bf16 [--bf16-kernel amx-bf16|avx512bf16|widen]
//!     ... -- --fma-peak                              # f32 FMA, bf16 dot and AMX tile ceilings
//!
//! With `--dtype bf16`, A and B are bf16 and C f32 (`kernels::bf16::gemm_bf16`); the GFLOP/s
//! count the same 2 M N K flops.
//! Prints one line per shape, `gemm M K N GFLOPS` (M x K times K x N, row-major), the median of
//! several timed runs after a warm-up. Compare with `python3 scripts/bench_reference.py gemm`,
//! which prints numpy's (OpenBLAS) figures in the same format: run both in one sitting.

use std::time::Instant;

use kernels::bf16::{gemm_bf16_with, to_bf16_vec, Bf16Kernel};
use kernels::gemm::{sgemm_with, GemmStrides};
use kernels::memory::huge_page_vec;
use kernels::Isa;

const SHAPES: [(usize, usize, usize); 6] =
    [(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (2048, 768, 768), (2048, 768, 3072), (2048, 3072, 768)];

/// `--bert-mini`: the twelve products of one BERT-mini layer's linear maps at batch 32 x 64
/// tokens (M x K x N, then whether A or B is read transposed): forward Y = X W^T, input
/// gradient dX = dY W, weight gradient dW = dY^T X, for the Q|K|V, output, and both
/// feed-forward projections. The same set runs in `bench_reference.py gemm --bert-mini`.
const BERT_MINI_SHAPES: [(usize, usize, usize, bool, bool); 12] = [
    (2048, 256, 768, false, true),
    (2048, 256, 256, false, true),
    (2048, 256, 1024, false, true),
    (2048, 1024, 256, false, true),
    (2048, 768, 256, false, false),
    (2048, 256, 256, false, false),
    (2048, 1024, 256, false, false),
    (2048, 256, 1024, false, false),
    (768, 2048, 256, true, false),
    (256, 2048, 256, true, false),
    (1024, 2048, 256, true, false),
    (256, 2048, 1024, true, false),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let threads: usize = get("--threads").and_then(|s| s.parse().ok()).unwrap_or(1);
    let runs: usize = get("--runs").and_then(|s| s.parse().ok()).unwrap_or(7);
    let isa = match get("--isa").as_deref() {
        Some("portable") => Isa::Portable,
        Some("avx2") => Isa::Avx2,
        Some("avx512") => Isa::Avx512,
        _ => Isa::best(),
    }
    .supported();
    kernels::parallel::set_num_threads(threads);
    eprintln!("# isa {} threads {threads} runs {runs}", isa.name());
    if args.iter().any(|a| a == "--fma-peak") {
        // The register-only FMA ceiling, then each kernel shape as a fraction of it, measured
        // back to back (see kernels::gemm::fma_peak).
        println!("fma-peak {:.1}", kernels::gemm::fma_peak(isa, 20_000_000));
        println!("bf16-dot-peak {:.1}", kernels::bf16::bf16_dot_peak(20_000_000));
        println!("amx-bf16-peak {:.1}", kernels::bf16::amx_peak(2_000_000));
        return;
    }
    if args.iter().any(|a| a == "--micro") && get("--dtype").as_deref() == Some("bf16") {
        for kc in [32, 64, 128, 256, 512, 1024] {
            println!("amx kernel kc {kc}: {:.1} GFLOP/s", kernels::bf16::amx_kernel_peak(kc, 200_000));
        }
        return;
    }
    if args.iter().any(|a| a == "--micro") {
        for kc in [16, 32, 64, 128, 384] {
            println!("micro-kernel kc {kc}: {:.1} GFLOP/s", kernels::gemm::micro_kernel_peak(isa, kc, 200_000));
        }
        return;
    }
    let custom: Option<(usize, usize, usize)> = args.iter().position(|a| a == "--shape").map(|i| {
        let v: Vec<usize> = args[i + 1..i + 4].iter().map(|s| s.parse().expect("--shape M K N")).collect();
        (v[0], v[1], v[2])
    });
    let (ta, tb) = (args.iter().any(|a| a == "--ta"), args.iter().any(|a| a == "--tb"));
    let shapes: Vec<(usize, usize, usize, bool, bool)> = if args.iter().any(|a| a == "--bert-mini") {
        BERT_MINI_SHAPES.to_vec()
    } else {
        custom
            .map(|s| vec![s])
            .unwrap_or_else(|| SHAPES.to_vec())
            .into_iter()
            .map(|(m, k, n)| (m, k, n, ta, tb))
            .collect()
    };
    if args.iter().any(|a| a == "--serve") {
        // For `bench_reference.py gemm --interleave`: each stdin line "M K N OP" (OP: -, ta
        // or tb) is answered with the milliseconds of one product, so that numpy and this
        // program alternate call by call.
        println!("ready");
        // (shape, A, B, C) of the last request
        type Buffers = ((usize, usize, usize), Vec<f32>, Vec<f32>, Vec<f32>);
        let mut buffers: Option<Buffers> = None;
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(m), Some(k), Some(n)) = (
                f.first().and_then(|v| v.parse::<usize>().ok()),
                f.get(1).and_then(|v| v.parse::<usize>().ok()),
                f.get(2).and_then(|v| v.parse::<usize>().ok()),
            ) else {
                break;
            };
            let (ta, tb) = (f.get(3) == Some(&"ta"), f.get(3) == Some(&"tb"));
            if buffers.as_ref().map(|b| b.0) != Some((m, k, n)) {
                buffers = Some(((m, k, n), matrix(m * k, 7919), matrix(k * n, 104729), huge_page_vec(m * n)));
            }
            let (_, a, b, c) = buffers.as_mut().expect("just filled");
            let s = strides(m, k, n, ta, tb);
            let t = Instant::now();
            sgemm_with(isa, threads, m, k, n, 1.0, a, b, 0.0, c, s);
            println!("{:.4}", t.elapsed().as_secs_f64() * 1e3);
        }
        return;
    }
    let dtype = get("--dtype");
    if dtype.as_deref() == Some("bf16") || dtype.as_deref() == Some("f32-bf16") {
        // f32-bf16: f32 operands rounded to bf16 while they are packed (the matmul precision
        // `Bf16` of an f32 model), bf16 arithmetic, f32 result.
        let kernel = get("--bf16-kernel")
            .map(|name| Bf16Kernel::from_name(&name).unwrap_or_else(|| panic!("unknown --bf16-kernel {name}")))
            .unwrap_or_else(Bf16Kernel::best)
            .supported();
        eprintln!("# dtype {} kernel {}", dtype.as_deref().unwrap_or(""), kernel.name());
        for (m, k, n, ta, tb) in shapes {
            let (a32, b32) = (matrix(m * k, 7919), matrix(k * n, 104729));
            let (a, b) = (to_bf16_vec(&a32), to_bf16_vec(&b32));
            let mut c = huge_page_vec(m * n);
            let s = strides(m, k, n, ta, tb);
            let from_f32 = dtype.as_deref() == Some("f32-bf16");
            let mut run = || {
                if from_f32 {
                    gemm_bf16_with(kernel, threads, m, k, n, 1.0, &a32, &b32, 0.0, &mut c, s)
                } else {
                    gemm_bf16_with(kernel, threads, m, k, n, 1.0, &a, &b, 0.0, &mut c, s)
                }
            };
            run(); // warm-up
            let mut times: Vec<f64> = (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    run();
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(|x, y| x.partial_cmp(y).unwrap());
            let op = if ta {
                " ta"
            } else if tb {
                " tb"
            } else {
                ""
            };
            println!("gemm {m} {k} {n}{op} {:.1}", 2.0 * (m * n * k) as f64 / times[times.len() / 2] / 1e9);
        }
        return;
    }
    for (m, k, n, ta, tb) in shapes {
        let (a, b) = (matrix(m * k, 7919), matrix(k * n, 104729));
        let mut c = huge_page_vec(m * n);
        // --ta / --tb: read A or B through transposed strides (the data is the same buffer)
        let s = strides(m, k, n, ta, tb);
        let op = if ta {
            " ta"
        } else if tb {
            " tb"
        } else {
            ""
        };
        let gflops = |ms: f64| 2.0 * (m * n * k) as f64 / ms / 1e6;
        if args.iter().any(|a| a == "--ab-threads") {
            // One thread against `threads`, alternated call by call: the scaling, free of drift.
            let mut c2 = c.clone();
            let (t_one, t_many) = kernels::timing::alternating_median_ms(
                runs,
                || sgemm_with(isa, 1, m, k, n, 1.0, &a, &b, 0.0, &mut c, s),
                || sgemm_with(isa, threads, m, k, n, 1.0, &a, &b, 0.0, &mut c2, s),
            );
            println!("gemm {m} {k} {n}{op} 1t {:.1} {threads}t {:.1}", gflops(t_one), gflops(t_many));
            continue;
        }
        sgemm_with(isa, threads, m, k, n, 1.0, &a, &b, 0.0, &mut c, s); // warm-up
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                sgemm_with(isa, threads, m, k, n, 1.0, &a, &b, 0.0, &mut c, s);
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let median = times[times.len() / 2];
        println!("gemm {m} {k} {n}{op} {:.1}", gflops(median * 1e3));
    }
}

/// Row-major A (M x K), B (K x N), C; `ta` / `tb` read A or B as the transpose of the buffer.
fn strides(m: usize, k: usize, n: usize, ta: bool, tb: bool) -> GemmStrides {
    GemmStrides {
        a_row: if ta { 1 } else { k },
        a_col: if ta { m } else { 1 },
        b_row: if tb { 1 } else { n },
        b_col: if tb { k } else { 1 },
        c_row: n,
        c_col: 1,
    }
}

/// A deterministic test matrix of `len` values in [-0.5, 0.5), on huge pages when large, as
/// numpy puts its arrays (kernels::memory): the comparison is then page for page.
fn matrix(len: usize, step: usize) -> Vec<f32> {
    let mut v = huge_page_vec(len);
    for (i, x) in v.iter_mut().enumerate() {
        *x = ((i * step) % 1000) as f32 / 1000.0 - 0.5;
    }
    v
}
