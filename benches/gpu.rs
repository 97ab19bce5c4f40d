//! Criterion benchmarks of the GPU matmul and convolution shaders (feature `wgpu`), on adapter 0,
//! with throughput in flops (criterion's "Gelem/s" = GFLOP/s). Each iteration records the
//! dispatch and waits for the GPU, so the time is the kernel's plus one submission.
//!
//!     cargo bench --features wgpu --bench gpu
//!
//! On a software adapter (lavapipe) these measure the rasteriser, not a GPU.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kernels::conv::{ConvGeometry, Padding};
use kernels::gpu::ops::{conv, matmul, ConvPass, MatmulShape, Operand};

fn gpu_matmul(c: &mut Criterion) {
    let gpu = kernels::gpu::gpu(0).unwrap_or_else(|e| panic!("{e}"));
    let mut g = c.benchmark_group(format!("gpu/matmul/{}", gpu.name));
    g.sample_size(10);
    for (m, k, n) in [(256, 256, 256), (512, 768, 768), (512, 768, 3072)] {
        let a = gpu.upload(&vec![0.5; m * k]).unwrap();
        let b = gpu.upload(&vec![0.25; k * n]).unwrap();
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("{m}x{k}x{n}")), |bch| {
            bch.iter(|| {
                let s = MatmulShape { m, n, k, batch: [1, 1], alpha: 1.0 };
                drop(matmul(s, Operand::dense(&a, m, k), Operand::dense(&b, k, n), None, None).unwrap());
                gpu.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

fn gpu_conv(c: &mut Criterion) {
    let gpu = kernels::gpu::gpu(0).unwrap_or_else(|e| panic!("{e}"));
    let mut g = c.benchmark_group(format!("gpu/conv/{}", gpu.name));
    g.sample_size(10);
    // EfficientNet-B0 @64: the stem, a 3x3 depthwise and a 5x5 stride-2 depthwise
    let cases = [
        ("stem 3x3 s2", false, 8, 64, 3, 32, 3, 2),
        ("dw 3x3", true, 8, 32, 96, 96, 3, 1),
        ("dw 5x5 s2", true, 8, 16, 144, 144, 5, 2),
    ];
    for (name, depthwise, n, hw, c_in, c_out, k, s) in cases {
        let geo = ConvGeometry::new(n, hw, hw, c_in, c_out, (k, k), (s, s), Padding::Same).unwrap();
        let w_len = if depthwise { k * k * c_in } else { k * k * c_in * c_out };
        let x = gpu.upload(&vec![0.5; geo.input_len()]).unwrap();
        let w = gpu.upload(&vec![0.25; w_len]).unwrap();
        let per_output = if depthwise { k * k } else { k * k * c_in };
        g.throughput(Throughput::Elements((2 * geo.output_len() * per_output) as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("forward {name}")), |bch| {
            bch.iter(|| {
                drop(conv(ConvPass::Forward, depthwise, &geo, &x, &w).unwrap());
                gpu.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, gpu_matmul, gpu_conv);
criterion_main!(benches);
