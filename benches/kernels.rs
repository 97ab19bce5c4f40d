//! Criterion benchmarks of the kernels, with throughput set so criterion reports GFLOP/s
//! (shown as "Gelem/s": one element = one flop) for GEMM and GB/s for the row kernels.
//!
//!     cargo bench --bench kernels                  # all
//!     cargo bench --bench kernels -- gemm/1t       # a group
//!     cargo bench --bench kernels -- conv/1t/forward/b0@224   # EfficientNet-B0's convs at 224
//!     ALIGN_NUM_THREADS=1 cargo bench ...          # pin the thread count for row kernels
//!
//! Reference numbers (numpy, PyTorch) come from `scripts/bench_reference.py`; see
//! benches/README.md for measured ratios.

use align::efficientnet::EfficientNetConfig;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kernels::activation::{self, Activation};
use kernels::attention::{attention_backward, attention_forward, AttentionShape};
use kernels::conv::{self, ConvGeometry, Padding};
use kernels::gemm::{sgemm_batched, sgemm_with, GemmStrides};
use kernels::pooling;
use kernels::Isa;
use kernels::{norm, softmax};

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

/// bf16 operands, f32 accumulation and output, one group per kernel the machine has
/// (`gemm-bf16/2t/amx-bf16`, `.../avx512bf16`, `.../widen+avx512f`).
fn gemm_bf16(c: &mut Criterion) {
    use kernels::bf16::{gemm_bf16_with, to_bf16_vec, Bf16Kernel};
    let threads = 2;
    for kernel in Bf16Kernel::available().into_iter().rev().take(3) {
        let mut g = c.benchmark_group(format!("gemm-bf16/{threads}t/{}", kernel.name()));
        g.sample_size(10);
        for (m, k, n) in [(2048, 768, 3072), (2048, 3072, 768), (2048, 2048, 2048)] {
            let (a, b) = (to_bf16_vec(&data(m * k)), to_bf16_vec(&data(k * n)));
            let mut out = vec![0.0f32; m * n];
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(BenchmarkId::from_parameter(format!("{m}x{k}x{n}")), |bch| {
                bch.iter(|| {
                    gemm_bf16_with(kernel, threads, m, k, n, 1.0, &a, &b, 0.0, &mut out, GemmStrides::row_major(k, n))
                })
            });
        }
        g.finish();
    }
}

/// BERT-base's feed-forward block at 32 x 64 tokens in bf16 (768 -> 3072, GELU, -> 768), two
/// threads: fused (`feed_forward_bf16`: the hidden layer activated and rounded as it leaves
/// the accumulators) against the same steps as separate passes (an f32 hidden layer written,
/// activated, then rounded again while packed). Throughput in flops of the two products.
fn feed_forward_bf16(c: &mut Criterion) {
    use kernels::activation::{activation_forward, Activation};
    use kernels::bf16::{feed_forward_bf16, gemm_bf16_packed_b, Bf16Kernel, PackedBf16B};
    let (threads, m, h, inner) = (2, 2048, 768, 3072);
    let (x, w1, w2) = (data(m * h), data(inner * h), data(h * inner));
    let (b1, b2) = (data(inner), data(h));
    let p1 = PackedBf16B::new(Bf16Kernel::best(), h, inner, &w1, 1, h);
    let p2 = PackedBf16B::new(Bf16Kernel::best(), inner, h, &w2, 1, inner);
    let mut g = c.benchmark_group(format!("feed-forward-bf16/{threads}t/{}", p1.kernel().name()));
    g.sample_size(10);
    g.throughput(Throughput::Elements((2 * 2 * m * h * inner) as u64));
    let mut y = vec![0.0f32; m * h];
    g.bench_function("fused", |bch| {
        bch.iter(|| {
            feed_forward_bf16(threads, m, &x, &p1, Some(&b1), Some(Activation::GeluErf), &p2, Some(&b2), &mut y)
        })
    });
    let (mut pre, mut post) = (vec![0.0f32; m * inner], vec![0.0f32; m * inner]);
    g.bench_function("separate", |bch| {
        bch.iter(|| {
            let s1 = GemmStrides { a_row: h, a_col: 1, b_row: 0, b_col: 0, c_row: inner, c_col: 1 };
            gemm_bf16_packed_b(threads, m, 1.0, &x, &p1, 0.0, &mut pre, s1, Some(&b1));
            activation_forward(Activation::GeluErf, &pre, &mut post);
            let s2 = GemmStrides { a_row: inner, a_col: 1, b_row: 0, b_col: 0, c_row: h, c_col: 1 };
            gemm_bf16_packed_b(threads, m, 1.0, &post, &p2, 0.0, &mut y, s2, Some(&b2));
        })
    });
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
    g.bench_function("softmax/256x16384", |b| b.iter(|| softmax::softmax_forward(&x, &mut y, 16384, 1.0, None)));

    let x = data(2048 * 768);
    let (gm, bt) = (vec![1.0f32; 768], vec![0.0f32; 768]);
    let mut y = vec![0.0f32; x.len()];
    let (mut mean, mut rstd) = (vec![0.0f32; 2048], vec![0.0f32; 2048]);
    g.throughput(Throughput::Bytes((x.len() * 8) as u64));
    g.bench_function("layer_norm/2048x768", |b| {
        b.iter(|| norm::layer_norm_forward(&x, &gm, &bt, &mut y, &mut mean, &mut rstd, 768, 1e-5))
    });

    let x = data(2048 * 3072);
    let mut y = vec![0.0f32; x.len()];
    g.throughput(Throughput::Bytes((x.len() * 8) as u64));
    g.bench_function("gelu/2048x3072", |b| b.iter(|| activation::activation_forward(Activation::GeluErf, &x, &mut y)));
    g.bench_function("gelu_tanh/2048x3072", |b| {
        b.iter(|| activation::activation_forward(Activation::GeluTanh, &x, &mut y))
    });
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

/// One convolution layer to time: dense (HWIO weight) or depthwise (HWC weight).
struct ConvCase {
    name: String,
    g: ConvGeometry,
    depthwise: bool,
}

/// Every distinct convolution of EfficientNet-B0 at `size` x `size`, batch 16, TF SAME
/// padding, as `align::efficientnet` builds it: the stem, each block's expand 1x1 (expand
/// ratio 6), depthwise k x k and project 1x1, and the head 1x1. Layers repeated within a stage
/// appear once.
fn efficientnet_b0_convs(size: usize) -> Vec<ConvCase> {
    let cfg = EfficientNetConfig::by_name("b0").expect("b0 is a preset");
    let same = |h: usize, ci: usize, co: usize, k: usize, s: usize| {
        ConvGeometry::new(16, h, h, ci, co, (k, k), (s, s), Padding::Same).expect("valid B0 layer")
    };
    let mut cases: Vec<ConvCase> = Vec::new();
    let mut add = |kind: &str, g: ConvGeometry, depthwise: bool| {
        if !cases.iter().any(|c| c.g == g && c.depthwise == depthwise) {
            let name =
                format!("b0@{size}/{kind}{}x{}_s{}_{}to{}_at{}", g.k_h, g.k_w, g.stride_h, g.c_in, g.c_out, g.in_h);
            cases.push(ConvCase { name, g, depthwise });
        }
    };
    let stem = same(size, 3, cfg.stem_channels(), 3, 2);
    add("conv", stem, false);
    let mut h = stem.out_h;
    for (k, s, expand, c_in, c_out) in cfg.blocks() {
        let wide = c_in * expand;
        if expand != 1 {
            add("conv", same(h, c_in, wide, 1, 1), false);
        }
        let dw = same(h, wide, wide, k, s);
        add("dw", dw, true);
        h = dw.out_h;
        add("conv", same(h, wide, c_out, 1, 1), false);
    }
    let last = cfg.blocks().last().map_or(0, |b| b.4);
    add("conv", same(h, last, cfg.head_channels(), 1, 1), false);
    cases
}

/// Convolutions, one thread: the four shapes of the PyTorch comparison (forward, and forward
/// plus both backwards as a training step runs them; the dense 3x3 stride 1 takes Winograd,
/// and `direct` is the implicit GEMM alone), then every distinct layer of EfficientNet-B0 at
/// 64x64 and 224x224, batch 16 (forward and training step). Throughput: forward flops.
fn convolutions(c: &mut Criterion) {
    kernels::parallel::set_num_threads(1);
    let same = |h: usize, ci: usize, co: usize, k: usize| {
        ConvGeometry::new(16, h, h, ci, co, (k, k), (1, 1), Padding::Same).expect("valid shape")
    };
    let mut cases = vec![
        ConvCase { name: "conv3x3_32to32_112".into(), g: same(112, 32, 32, 3), depthwise: false },
        ConvCase { name: "dw3x3_c96_56".into(), g: same(56, 96, 96, 3), depthwise: true },
        ConvCase { name: "dw5x5_c96_56".into(), g: same(56, 96, 96, 5), depthwise: true },
        ConvCase { name: "conv1x1_96to24_56".into(), g: same(56, 96, 24, 1), depthwise: false },
    ];
    cases.extend(efficientnet_b0_convs(64));
    cases.extend(efficientnet_b0_convs(224));
    let mut group = c.benchmark_group("conv/1t");
    group.sample_size(10).warm_up_time(std::time::Duration::from_millis(500));
    group.measurement_time(std::time::Duration::from_secs(2));
    for case in &cases {
        let g = case.g;
        let taps = g.k_h * g.k_w * if case.depthwise { 1 } else { g.c_in };
        let w = data(taps * g.c_out);
        let (x, dy) = (data(g.input_len()), data(g.output_len()));
        let (mut y, mut dx, mut dw) =
            (vec![0.0f32; g.output_len()], vec![0.0f32; g.input_len()], vec![0.0f32; w.len()]);
        group.throughput(Throughput::Elements((2 * g.output_len() * taps) as u64));
        if case.depthwise {
            group.bench_function(BenchmarkId::new("forward", &case.name), |b| {
                b.iter(|| conv::depthwise_forward(&x, &w, &mut y, &g))
            });
            group.bench_function(BenchmarkId::new("train_step", &case.name), |b| {
                b.iter(|| {
                    conv::depthwise_forward(&x, &w, &mut y, &g);
                    conv::depthwise_backward_input(&dy, &w, &mut dx, &g);
                    conv::depthwise_backward_weight(&x, &dy, &mut dw, &g);
                })
            });
            // The block's squeeze-excite on the depthwise output: global average pool, then
            // (after its two small FC layers, GEMMs) the channel scale; forward and backward.
            let (n, pixels, ch) = (g.batch, g.out_h * g.out_w, g.c_out);
            let (mut pooled, scale) = (vec![0.0f32; n * ch], data(n * ch));
            let (mut dpix, mut dscale) = (vec![0.0f32; g.output_len()], vec![0.0f32; n * ch]);
            // bytes: the pool reads y; the scale reads y, writes; its backward reads y and dy,
            // writes dx; the pool's backward writes dx
            group.throughput(Throughput::Bytes((6 * g.output_len() * 4) as u64));
            group.bench_function(BenchmarkId::new("se_pool_scale", &case.name), |b| {
                b.iter(|| {
                    pooling::global_avg_pool_forward(&y, &mut pooled, n, pixels, ch);
                    pooling::channel_scale_forward(&y, &scale, &mut dx[..g.output_len()], n, pixels, ch);
                    pooling::channel_scale_backward(&y, &scale, &dy, &mut dpix, &mut dscale, n, pixels, ch);
                    pooling::global_avg_pool_backward(&dscale, &mut dpix, n, pixels, ch);
                })
            });
        } else {
            group.bench_function(BenchmarkId::new("forward", &case.name), |b| {
                b.iter(|| conv::conv2d_forward(&x, &w, &mut y, &g))
            });
            if (g.k_h, g.stride_h) == (3, 1) {
                group.bench_function(BenchmarkId::new("forward_direct", &case.name), |b| {
                    b.iter(|| conv::conv2d_forward_direct(&x, &w, &mut y, &g))
                });
            }
            group.bench_function(BenchmarkId::new("train_step", &case.name), |b| {
                b.iter(|| {
                    conv::conv2d_forward(&x, &w, &mut y, &g);
                    conv::conv2d_backward_input(&dy, &w, &mut dx, &g);
                    conv::conv2d_backward_weight(&x, &dy, &mut dw, &g);
                })
            });
        }
    }
    group.finish();
    kernels::parallel::set_num_threads(0);
}

criterion_group!(benches, gemm, gemm_bf16, feed_forward_bf16, attention, row_kernels, batch_norm, convolutions);
criterion_main!(benches);
