//! Criterion benchmarks of the kernels, with throughput set so criterion reports GFLOP/s
//! (shown as "Gelem/s": one element = one flop) for GEMM and GB/s for the row kernels.
//!
//!     cargo bench --bench kernels                  # all
//!     cargo bench --bench kernels -- gemm/1t       # a group
//!     ALIGN_NUM_THREADS=1 cargo bench ...          # pin the thread count for row kernels
//!
//! Reference numbers (numpy, PyTorch) come from `scripts/bench_reference.py`; see
//! benches/README.md for measured ratios.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kernels::attention::{attention_backward, attention_forward, AttentionShape};
use kernels::gemm::{sgemm_batched, sgemm_with, GemmStrides};
use kernels::rows::{self, Activation};
use kernels::Isa;

fn data(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919) % 2000) as f32 / 500.0 - 2.0).collect()
}

fn gemm(c: &mut Criterion) {
    for threads in [1, 2] {
        let mut g = c.benchmark_group(format!("gemm/{threads}t"));
        g.sample_size(10);
        for (m, k, n) in [(512, 512, 512), (1024, 1024, 1024), (2048, 768, 768), (2048, 768, 3072), (2048, 3072, 768)] {
            let (a, b) = (data(m * k), data(k * n));
            let mut out = vec![0.0f32; m * n];
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(BenchmarkId::from_parameter(format!("{m}x{k}x{n}")), |bch| {
                bch.iter(|| {
                    sgemm_with(Isa::best(), threads, m, k, n, 1.0, &a, &b, 0.0, &mut out, GemmStrides::row_major(k, n))
                })
            });
        }
        g.finish();
    }
    // Skinny shapes: a few rows (a small batch through a Linear layer) and matrix-vector.
    let mut g = c.benchmark_group("gemm/skinny");
    for (m, k, n) in [(1, 768, 3072), (4, 768, 3072), (16, 768, 768), (2048, 768, 1)] {
        let (a, b) = (data(m * k), data(k * n));
        let mut out = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("{m}x{k}x{n}")), |bch| {
            bch.iter(|| kernels::sgemm(m, k, n, 1.0, &a, &b, 0.0, &mut out, GemmStrides::row_major(k, n)))
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    // batch x heads small products: scores = Q K^T (K read transposed through strides).
    let mut g = c.benchmark_group("gemm/batched");
    for (batch, t, d) in [(32 * 4, 64, 64), (32 * 4, 32, 64), (8 * 12, 64, 64)] {
        let q = data(batch * t * d);
        let k = data(batch * t * d);
        let mut s = vec![0.0f32; batch * t * t];
        let strides = GemmStrides { a_row: d, a_col: 1, b_row: 1, b_col: d, c_row: t, c_col: 1 };
        g.throughput(Throughput::Elements((2 * batch * t * t * d) as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("{batch}x{t}x{d}x{t}")), |bch| {
            bch.iter(|| sgemm_batched(batch, t, d, t, 1.0, &q, t * d, &k, t * d, 0.0, &mut s, t * t, strides))
        });
    }
    g.finish();
    // the fused multi-head attention op (both products, masked softmax), BERT-mini and -base
    let mut g = c.benchmark_group("attention/fused");
    g.sample_size(20);
    for (batch, seq, heads, head_dim) in [(32, 64, 4, 64), (32, 64, 12, 64)] {
        let shape = AttentionShape { batch, seq, heads, head_dim };
        let qkv = data(shape.qkv_len());
        let d_out = data(shape.out_len());
        let (mut probs, mut out, mut d_qkv) =
            (vec![0.0f32; shape.probs_len()], vec![0.0f32; shape.out_len()], vec![0.0f32; shape.qkv_len()]);
        let flops = 2 * batch * heads * seq * seq * head_dim;
        g.throughput(Throughput::Elements((2 * flops) as u64));
        g.bench_function(BenchmarkId::new("forward", format!("{batch}x{seq}x{heads}x{head_dim}")), |bch| {
            bch.iter(|| attention_forward(shape, &qkv, None, None, 0.125, &mut probs, &mut out))
        });
        g.throughput(Throughput::Elements((4 * flops) as u64));
        g.bench_function(BenchmarkId::new("backward", format!("{batch}x{seq}x{heads}x{head_dim}")), |bch| {
            bch.iter(|| attention_backward(shape, &qkv, &probs, None, 0.125, &d_out, &mut d_qkv))
        });
    }
    g.finish();
}

fn row_kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("rows");
    g.sample_size(20);
    let x = data(256 * 16384);
    let mut y = vec![0.0f32; x.len()];
    g.throughput(Throughput::Bytes((x.len() * 8) as u64));
    g.bench_function("softmax/256x16384", |b| b.iter(|| rows::softmax_forward(&x, &mut y, 16384, 1.0, None)));

    let x = data(2048 * 768);
    let (gm, bt) = (vec![1.0f32; 768], vec![0.0f32; 768]);
    let mut y = vec![0.0f32; x.len()];
    let (mut mean, mut rstd) = (vec![0.0f32; 2048], vec![0.0f32; 2048]);
    g.throughput(Throughput::Bytes((x.len() * 8) as u64));
    g.bench_function("layer_norm/2048x768", |b| {
        b.iter(|| rows::layer_norm_forward(&x, &gm, &bt, &mut y, &mut mean, &mut rstd, 768, 1e-5))
    });

    let x = data(2048 * 3072);
    let mut y = vec![0.0f32; x.len()];
    g.throughput(Throughput::Bytes((x.len() * 8) as u64));
    g.bench_function("gelu/2048x3072", |b| b.iter(|| rows::activation_forward(Activation::GeluErf, &x, &mut y)));
    g.bench_function("gelu_tanh/2048x3072", |b| b.iter(|| rows::activation_forward(Activation::GeluTanh, &x, &mut y)));
    g.finish();
}

/// Batch norm + SiLU (fused) forward and backward on EfficientNet-B0 activation shapes
/// (rows = N*H*W): B0 at 64x64 batch 64 (stem, expanded stage 2) and at 224x224 batch 16.
fn batch_norm(c: &mut Criterion) {
    use kernels::batchnorm::{batch_norm_backward, batch_norm_forward, batch_norm_stats};
    let mut g = c.benchmark_group("batch_norm_silu");
    g.sample_size(20);
    for &(rows, ch) in &[(64 * 32 * 32, 32), (64 * 16 * 16, 96), (16 * 112 * 112, 32), (16 * 56 * 56, 144)] {
        let x = data(rows * ch);
        let dy = data(rows * ch);
        let (gamma, beta) = (vec![1.1f32; ch], vec![0.1f32; ch]);
        let (mut mean, mut var) = (vec![0.0f32; ch], vec![0.0f32; ch]);
        batch_norm_stats(&x, ch, &mut mean, &mut var);
        let rstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + 1e-3).sqrt()).collect();
        let (mut y, mut dx) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
        let (mut dg, mut db) = (vec![0.0f32; ch], vec![0.0f32; ch]);
        let name = format!("{rows}x{ch}");
        // forward: stats pass + normalise pass (read x twice, write y)
        g.throughput(Throughput::Bytes((x.len() * 12) as u64));
        g.bench_with_input(BenchmarkId::new("train_forward", &name), &(), |b, _| {
            b.iter(|| {
                batch_norm_stats(&x, ch, &mut mean, &mut var);
                batch_norm_forward(&x, &mean, &rstd, &gamma, &beta, Some(Activation::Silu), &mut y, ch)
            })
        });
        // backward: pass 1 reads x, dy, writes dz; pass 2 reads x, dz, writes dx
        g.throughput(Throughput::Bytes((x.len() * 24) as u64));
        g.bench_with_input(BenchmarkId::new("train_backward", &name), &(), |b, _| {
            b.iter(|| {
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
                    ch,
                    true,
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, gemm, attention, row_kernels, batch_norm);
criterion_main!(benches);
