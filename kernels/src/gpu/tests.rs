//! Every GPU kernel against its CPU reference on odd shapes: sizes that are not multiples of
//! the workgroup or the matmul tile, transposed and broadcast (stride 0) operands, batch 1.
//! Tolerance: 1e-4 of the output's scale (its largest magnitude).
//!
//! These run on whatever adapter 0 is: in CI, Mesa's lavapipe (software Vulkan), so shapes are
//! kept small.

use std::sync::Arc;

use super::ops::{self, Binary, MatmulShape, Operand, RowReduce, Unary, View};
use super::{gpu, Gpu};
use crate::activation::{activation_backward, activation_forward, Activation};
use crate::gemm::{gemm_reference, GemmStrides};
use crate::test_data::data;

fn device() -> Arc<Gpu> {
    gpu(0).unwrap_or_else(|e| panic!("the GPU tests need an adapter (CI installs lavapipe): {e}"))
}

/// Asserts max |got - want| <= tol * max |want| (the output's scale).
fn close_to_scale(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f32, |m, w| m.max(w.abs())).max(1e-30);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}[{i}]: {g} vs {w} (scale {scale})");
    }
}

const TOL: f32 = 1e-4;

#[test]
fn matmul_matches_reference_on_odd_and_transposed_shapes() {
    let g = device();
    for &(m, k, n) in &[(1, 1, 1), (1, 7, 5), (7, 13, 5), (65, 33, 129), (130, 70, 66)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (a, b) = (data(m * k, 1, 1.0), data(k * n, 2, 1.0));
            let s = GemmStrides {
                a_row: if ta { 1 } else { k },
                a_col: if ta { m } else { 1 },
                b_row: if tb { 1 } else { n },
                b_col: if tb { k } else { 1 },
                c_row: n,
                c_col: 1,
            };
            let mut want = vec![0.0; m * n];
            gemm_reference(m, k, n, 0.5, &a, &b, 0.0, &mut want, s);
            let (ga, gb) = (g.upload(&a).unwrap(), g.upload(&b).unwrap());
            let oa =
                Operand { buffer: &ga, offset: 0, row_stride: s.a_row, col_stride: s.a_col, batch_strides: [0, 0] };
            let ob =
                Operand { buffer: &gb, offset: 0, row_stride: s.b_row, col_stride: s.b_col, batch_strides: [0, 0] };
            let shape = MatmulShape { m, n, k, batch: [1, 1], alpha: 0.5 };
            let c = ops::matmul(shape, oa, ob, None, None).unwrap();
            close_to_scale(&format!("matmul {m}x{k}x{n} ta {ta} tb {tb}"), &c.to_vec().unwrap(), &want, TOL);
        }
    }
}

#[test]
fn matmul_batches_broadcast_bias_and_accumulation() {
    let g = device();
    // A (2, 3, m, k) times B (3, k, n) broadcast over the first batch axis, plus a bias.
    let (z0, z1, m, k, n) = (2, 3, 17, 19, 21);
    let (a, b, bias) = (data(z0 * z1 * m * k, 3, 1.0), data(z1 * k * n, 4, 1.0), data(n, 5, 1.0));
    let mut want = vec![0.0; z0 * z1 * m * n];
    for i0 in 0..z0 {
        for i1 in 0..z1 {
            let a_at = (i0 * z1 + i1) * m * k;
            let c_at = (i0 * z1 + i1) * m * n;
            gemm_reference(
                m,
                k,
                n,
                1.0,
                &a[a_at..],
                &b[i1 * k * n..],
                0.0,
                &mut want[c_at..],
                GemmStrides::row_major(k, n),
            );
            for r in 0..m {
                for c in 0..n {
                    want[c_at + r * n + c] += bias[c];
                }
            }
        }
    }
    let (ga, gb, gbias) = (g.upload(&a).unwrap(), g.upload(&b).unwrap(), g.upload(&bias).unwrap());
    let oa = Operand { buffer: &ga, offset: 0, row_stride: k, col_stride: 1, batch_strides: [z1 * m * k, m * k] };
    let ob = Operand { buffer: &gb, offset: 0, row_stride: n, col_stride: 1, batch_strides: [0, k * n] };
    let shape = MatmulShape { m, n, k, batch: [z0, z1], alpha: 1.0 };
    let c = ops::matmul(shape, oa, ob, Some(&gbias), None).unwrap();
    close_to_scale("batched matmul", &c.to_vec().unwrap(), &want, TOL);

    // Accumulating: C += A B adds the same product again (without the bias this time).
    let c = ops::matmul(shape, oa, ob, None, Some(c)).unwrap();
    let twice: Vec<f32> = want.iter().enumerate().map(|(i, w)| 2.0 * w - bias[i % n]).collect();
    close_to_scale("accumulated matmul", &c.to_vec().unwrap(), &twice, TOL);
}

#[test]
fn matmul_gives_the_same_bits_every_run() {
    let g = device();
    let (m, k, n) = (70, 300, 45);
    let (ga, gb) = (g.upload(&data(m * k, 6, 1.0)).unwrap(), g.upload(&data(k * n, 7, 1.0)).unwrap());
    let shape = MatmulShape { m, n, k, batch: [1, 1], alpha: 1.0 };
    let run = || {
        ops::matmul(shape, Operand::dense(&ga, m, k), Operand::dense(&gb, k, n), None, None).unwrap().to_vec().unwrap()
    };
    let first = run();
    assert!((0..3).all(|_| run() == first));
}

#[test]
fn unary_maps_follow_the_cpu_formulas_on_strided_views() {
    let g = device();
    // A transposed (5, 37) view of a (37, 5) buffer, with values away from log / sqrt poles.
    let (rows, cols) = (37, 5);
    let x: Vec<f32> = data(rows * cols, 8, 3.0);
    let positive: Vec<f32> = x.iter().map(|v| v.abs() + 0.1).collect();
    let transposed = |v: &[f32]| -> Vec<f32> {
        let mut t = vec![0.0; v.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = v[r * cols + c];
            }
        }
        t
    };
    type Case<'a> = (Unary, &'a [f32], fn(f32) -> f32);
    let cases: Vec<Case> = vec![
        (Unary::Affine { alpha: 1.0, beta: 0.0 }, &x, |v| v),
        (Unary::Affine { alpha: -2.5, beta: 0.75 }, &x, |v| -2.5 * v + 0.75),
        (Unary::Exp, &x, f32::exp),
        (Unary::Log, &positive, f32::ln),
        (Unary::Sqrt, &positive, f32::sqrt),
        (Unary::Abs, &x, f32::abs),
        (Unary::Relu, &x, |v| v.max(0.0)),
        (Unary::Tanh, &x, f32::tanh),
        (Unary::Recip, &positive, |v| 1.0 / v),
        (Unary::Powf(1.5), &positive, |v| v.powf(1.5)),
        (Unary::Fill(3.25), &x, |_| 3.25),
        (Unary::Square, &x, |v| v * v),
        (Unary::Step, &x, |v| if v > 0.0 { 1.0 } else { 0.0 }),
    ];
    for (op, input, f) in cases {
        let buffer = g.upload(input).unwrap();
        let view = View { buffer: &buffer, offset: 0, shape: &[cols, rows], strides: &[1, cols] };
        let got = ops::unary(op, view).unwrap().to_vec().unwrap();
        let want: Vec<f32> = transposed(input).iter().map(|&v| f(v)).collect();
        close_to_scale(&format!("{op:?}"), &got, &want, TOL);
    }
    for act in [Activation::GeluErf, Activation::GeluTanh, Activation::Silu, Activation::Sigmoid, Activation::Exp] {
        for n in [1, 255, 257, 1000] {
            let x = data(n, 9, 4.0);
            let mut want = vec![0.0; n];
            activation_forward(act, &x, &mut want);
            let buffer = g.upload(&x).unwrap();
            let view = View { buffer: &buffer, offset: 0, shape: &[n], strides: &[1] };
            let got = ops::unary(Unary::Activation(act), view).unwrap().to_vec().unwrap();
            close_to_scale(&format!("{act:?} {n}"), &got, &want, TOL);

            let dy = data(n, 10, 1.0);
            let mut want_dx = vec![0.0; n];
            activation_backward(act, &x, &dy, &mut want_dx);
            let got_dx = ops::activation_grad(act, &buffer, &g.upload(&dy).unwrap()).unwrap().to_vec().unwrap();
            close_to_scale(&format!("{act:?} grad {n}"), &got_dx, &want_dx, TOL);
        }
    }
}

#[test]
fn unary_copies_a_contiguous_window_at_an_unaligned_offset() {
    let g = device();
    let x = data(1000, 11, 1.0);
    let buffer = g.upload(&x).unwrap();
    let view = View { buffer: &buffer, offset: 77, shape: &[3, 300], strides: &[300, 1] };
    let got = ops::unary(Unary::Affine { alpha: 1.0, beta: 0.0 }, view).unwrap().to_vec().unwrap();
    assert_eq!(got, x[77..977].to_vec());
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let g = device();
    // a (4, 1, 33) and b (7, 1) broadcast to (4, 7, 33).
    let (a, b) = (data(4 * 33, 12, 2.0), data(7, 13, 2.0));
    let b_pos: Vec<f32> = b.iter().map(|v| v.abs() + 0.5).collect();
    let (ga, gb) = (g.upload(&a).unwrap(), g.upload(&b_pos).unwrap());
    let shape = [4, 7, 33];
    let va = View { buffer: &ga, offset: 0, shape: &shape, strides: &[33, 0, 1] };
    let vb = View { buffer: &gb, offset: 0, shape: &shape, strides: &[0, 1, 0] };
    type Case = (Binary, fn(f32, f32) -> f32);
    let ops_and_f: [Case; 7] = [
        (Binary::Add, |x, y| x + y),
        (Binary::Sub, |x, y| x - y),
        (Binary::Mul, |x, y| x * y),
        (Binary::Div, |x, y| x / y),
        (Binary::Max, f32::max),
        (Binary::Min, f32::min),
        (Binary::Pow, |x: f32, y| x.abs().powf(y)),
    ];
    for (op, f) in ops_and_f {
        let a_in: Vec<f32> = if op == Binary::Pow { a.iter().map(|v| v.abs()).collect() } else { a.clone() };
        let ga = g.upload(&a_in).unwrap();
        let va = View { buffer: &ga, ..va };
        let got = ops::binary(op, va, vb).unwrap().to_vec().unwrap();
        let mut want = Vec::new();
        for i in 0..4 {
            for &bj in &b_pos {
                for k in 0..33 {
                    want.push(f(a_in[i * 33 + k], bj));
                }
            }
        }
        close_to_scale(&format!("{op:?}"), &got, &want, TOL);
    }
}

#[test]
fn reductions_match_reference_sums() {
    let g = device();
    for &(rows, cols) in &[(1, 1), (3, 257), (17, 1000), (1000, 3)] {
        let x = data(rows * cols, 14, 1.0);
        let buffer = g.upload(&x).unwrap();
        let sums = ops::reduce_rows(&buffer, rows, cols, RowReduce::Sum, 0.5).unwrap().to_vec().unwrap();
        let maxes = ops::reduce_rows(&buffer, rows, cols, RowReduce::Max, 1.0).unwrap().to_vec().unwrap();
        let squares = ops::reduce_rows(&buffer, rows, cols, RowReduce::SumSquares, 1.0).unwrap().to_vec().unwrap();
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let s: f64 = row.iter().map(|&v| v as f64).sum();
            let q: f64 = row.iter().map(|&v| v as f64 * v as f64).sum();
            let mx = row.iter().cloned().fold(f32::MIN, f32::max);
            assert!((sums[r] as f64 - 0.5 * s).abs() <= 1e-4 * (1.0 + s.abs()), "row sum {r}");
            assert!((squares[r] as f64 - q).abs() <= 1e-4 * q.max(1.0), "row sum of squares {r}");
            assert_eq!(maxes[r], mx, "row max {r}");
        }
        let want_cols = crate::reduce::column_sums_reference(&x, cols);
        let cols_sum = ops::reduce_cols(&buffer, rows, cols, 1.0, None).unwrap();
        close_to_scale("column sums", &cols_sum.to_vec().unwrap(), &want_cols, TOL);
        let doubled = ops::reduce_cols(&buffer, rows, cols, 1.0, Some(cols_sum)).unwrap().to_vec().unwrap();
        close_to_scale(
            "accumulated column sums",
            &doubled,
            &want_cols.iter().map(|v| 2.0 * v).collect::<Vec<_>>(),
            TOL,
        );
    }
    for n in [1, 4095, 4097, 70_001] {
        let x = data(n, 15, 1.0);
        let total = ops::sum_all(&g.upload(&x).unwrap(), RowReduce::SumSquares).unwrap().to_vec().unwrap()[0];
        let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        assert!((total as f64 - want).abs() <= 1e-5 * want, "sum of squares of {n}: {total} vs {want}");
    }
}

#[test]
fn softmax_with_mask_scale_and_log_and_its_backward() {
    let g = device();
    use crate::softmax::{log_softmax_backward, log_softmax_forward, softmax_backward, softmax_forward, RowMask};
    for &(rows, cols, per) in &[(1, 1, 1), (6, 7, 3), (8, 300, 4), (3, 1000, 1)] {
        let x = data(rows * cols, 16, 3.0);
        let mut mask = data(rows.div_ceil(per) * cols, 17, 2.0);
        mask[0] = -1e9; // a masked-out position
        let dy = data(rows * cols, 18, 1.0);
        let (gx, gm, gdy) = (g.upload(&x).unwrap(), g.upload(&mask).unwrap(), g.upload(&dy).unwrap());
        for log in [false, true] {
            let mut want = vec![0.0; rows * cols];
            let row_mask = RowMask { values: &mask, rows_per_mask: per };
            if log {
                log_softmax_forward(&x, &mut want, cols, 0.7, Some(row_mask));
            } else {
                softmax_forward(&x, &mut want, cols, 0.7, Some(row_mask));
            }
            let y = ops::softmax(&gx, rows, cols, 0.7, Some((&gm, per)), log).unwrap();
            let got = y.to_vec().unwrap();
            close_to_scale(&format!("softmax {rows}x{cols} log {log}"), &got, &want, TOL);

            let mut want_dx = vec![0.0; rows * cols];
            if log {
                log_softmax_backward(&want, &dy, &mut want_dx, cols, 0.7);
            } else {
                softmax_backward(&want, &dy, &mut want_dx, cols, 0.7);
            }
            let dx = ops::softmax_backward(&y, &gdy, rows, cols, 0.7, log).unwrap().to_vec().unwrap();
            close_to_scale(&format!("softmax backward {rows}x{cols} log {log}"), &dx, &want_dx, TOL);
        }
    }
}

#[test]
fn layer_norm_forward_and_backward_match_cpu() {
    let g = device();
    use crate::norm::{layer_norm_backward, layer_norm_forward};
    for &(rows, cols) in &[(1, 1), (5, 7), (3, 384), (33, 1000)] {
        let x: Vec<f32> = data(rows * cols, 19, 2.0).iter().map(|v| v + 0.3).collect();
        let (gamma, beta, dy) = (data(cols, 20, 1.0), data(cols, 21, 1.0), data(rows * cols, 22, 1.0));
        let (mut y, mut mean, mut rstd) = (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
        layer_norm_forward(&x, &gamma, &beta, &mut y, &mut mean, &mut rstd, cols, 1e-5);
        let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; rows * cols], vec![0.5; cols], vec![0.25; cols]);
        layer_norm_backward(&x, &gamma, &mean, &rstd, &dy, &mut dx, &mut dgamma, &mut dbeta, cols);

        let (gx, ggamma, gbeta) = (g.upload(&x).unwrap(), g.upload(&gamma).unwrap(), g.upload(&beta).unwrap());
        let (gy, stats) = ops::layer_norm(&gx, &ggamma, &gbeta, rows, cols, 1e-5).unwrap();
        close_to_scale(&format!("layer norm {rows}x{cols}"), &gy.to_vec().unwrap(), &y, TOL);
        let (gdgamma, gdbeta) = (g.upload(&vec![0.5; cols]).unwrap(), g.upload(&vec![0.25; cols]).unwrap());
        let gdx =
            ops::layer_norm_backward(&gx, &ggamma, &stats, &g.upload(&dy).unwrap(), &gdgamma, &gdbeta, rows, cols)
                .unwrap();
        close_to_scale("layer norm dx", &gdx.to_vec().unwrap(), &dx, TOL);
        close_to_scale("layer norm dgamma", &gdgamma.to_vec().unwrap(), &dgamma, TOL);
        close_to_scale("layer norm dbeta", &gdbeta.to_vec().unwrap(), &dbeta, TOL);
    }
}

#[test]
fn embedding_gather_and_scatter_add() {
    let g = device();
    let (vocab, dim) = (11, 13);
    let table = data(vocab * dim, 23, 1.0);
    let ids: Vec<u32> = vec![3, 0, 10, 3, 3, 7, 0];
    let gt = g.upload(&table).unwrap();
    let out = ops::gather_rows(&gt, vocab, dim, &ids).unwrap().to_vec().unwrap();
    let want: Vec<f32> = ids.iter().flat_map(|&i| table[i as usize * dim..(i as usize + 1) * dim].to_vec()).collect();
    assert_eq!(out, want);

    let dy = data(ids.len() * dim, 24, 1.0);
    let mut want_grad = vec![1.0; vocab * dim];
    for (p, &i) in ids.iter().enumerate() {
        for c in 0..dim {
            want_grad[i as usize * dim + c] += dy[p * dim + c];
        }
    }
    let grad = g.upload(&vec![1.0; vocab * dim]).unwrap();
    ops::scatter_add_rows(&g.upload(&dy).unwrap(), &grad, vocab, dim, &ids).unwrap();
    close_to_scale("embedding gradient", &grad.to_vec().unwrap(), &want_grad, TOL);

    let err = ops::gather_rows(&gt, vocab, dim, &[11]).unwrap_err();
    assert!(err.to_string().contains("id 11 out of range"), "{err}");
}

#[test]
fn dropout_mask_is_the_counter_hash() {
    let g = device();
    let n = 10_001;
    let x = data(n, 25, 1.0);
    let (p, seed) = (0.3, 0x1234_5678_9abc_def0u64);
    let y = ops::dropout(&g.upload(&x).unwrap(), p, seed).unwrap().to_vec().unwrap();
    let mut kept = 0;
    for i in 0..n {
        let keep = ops::dropout_keeps(seed, i as u32, p);
        kept += keep as usize;
        let want = if keep { x[i] / (1.0 - p) } else { 0.0 };
        assert!((y[i] - want).abs() <= 1e-6, "dropout[{i}]");
    }
    let rate = kept as f32 / n as f32;
    assert!((rate - 0.7).abs() < 0.02, "keep rate {rate}");
    assert!(ops::dropout(&g.upload(&x).unwrap(), 1.0, seed).is_err());
}

#[test]
fn adamw_and_lamb_steps_match_the_cpu_updates() {
    let g = device();
    let n = 1000;
    let (w0, grad) = (data(n, 26, 1.0), data(n, 27, 0.1));
    // AdamW, three steps (torch.optim.AdamW's update, as nn::optim::AdamW writes it).
    let (lr, wd, b1, b2, eps) = (1e-2f32, 0.1f32, 0.9f32, 0.999f32, 1e-8f32);
    let (mut w, mut m, mut v) = (w0.clone(), vec![0.0f32; n], vec![0.0f32; n]);
    let (gw, gm, gv, gg) = (g.upload(&w0).unwrap(), g.zeros(n).unwrap(), g.zeros(n).unwrap(), g.upload(&grad).unwrap());
    for t in 1..=3 {
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        for i in 0..n {
            w[i] *= 1.0 - lr * wd;
            m[i] += (grad[i] - m[i]) * (1.0 - b1);
            v[i] = v[i] * b2 + (1.0 - b2) * grad[i] * grad[i];
            w[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
        }
        ops::adamw(&gg, &gw, &gm, &gv, lr, wd, (b1, b2, eps), t as u64).unwrap();
    }
    close_to_scale("adamw w", &gw.to_vec().unwrap(), &w, TOL);
    close_to_scale("adamw v", &gv.to_vec().unwrap(), &v, TOL);

    // LAMB, two steps: the kernels' reference direction, then the trust ratio.
    let (mut w, mut m, mut v, mut u) = (w0.clone(), vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    let (gw, gm, gv) = (g.upload(&w0).unwrap(), g.zeros(n).unwrap(), g.zeros(n).unwrap());
    for t in 1..=2 {
        let h = crate::optim::AdamStep::at(0.9, 0.999, 1e-6, 0.01, t);
        let (w_sq, u_sq) = crate::optim::lamb_direction_reference(
            &h,
            crate::optim::LambSlices { grad: &grad, w: &w, m: &mut m, v: &mut v, u: &mut u },
        );
        let ratio = (w_sq.sqrt() / u_sq.sqrt()) as f32;
        for i in 0..n {
            w[i] -= 0.05 * ratio * u[i];
        }
        ops::lamb(&gg, &gw, &gm, &gv, 0.05, &h, true).unwrap();
    }
    close_to_scale("lamb w", &gw.to_vec().unwrap(), &w, TOL);
    close_to_scale("lamb m", &gm.to_vec().unwrap(), &m, TOL);
}

#[test]
fn the_pool_reuses_buffers_and_work_is_batched_into_few_submissions() {
    let g = device();
    let (m, k, n) = (33, 20, 17);
    let (ga, gb) = (g.upload(&data(m * k, 28, 1.0)).unwrap(), g.upload(&data(k * n, 29, 1.0)).unwrap());
    let shape = MatmulShape { m, n, k, batch: [1, 1], alpha: 1.0 };
    let step = || {
        let c = ops::matmul(shape, Operand::dense(&ga, m, k), Operand::dense(&gb, k, n), None, None).unwrap();
        let view = View { buffer: &c, offset: 0, shape: &[m, n], strides: &[n, 1] };
        let y = ops::unary(Unary::Activation(Activation::GeluErf), view).unwrap();
        ops::softmax(&y, m, n, 1.0, None, false).unwrap()
    };
    drop(step());
    let warm = g.pool_stats();
    let submissions = g.submissions();
    for _ in 0..100 {
        drop(step());
    }
    let after = g.pool_stats();
    // Other tests share the device and may allocate meanwhile; this loop itself allocates
    // nothing new once warm, and 300 kernels go out in at most one submission per 512.
    assert!(after.reused >= warm.reused + 300, "{warm:?} -> {after:?}");
    let last = step().to_vec().unwrap();
    assert!(g.submissions() - submissions <= 2 + 300 / super::MAX_PENDING_DISPATCHES as u64 + 8);
    assert_eq!(last.len(), m * n);
}

#[test]
fn convolutions_match_the_cpu_kernels_for_strides_and_paddings() {
    use super::ops::ConvPass;
    use crate::conv::{self as cpu, ConvGeometry, Padding};
    let g = device();
    let cases = [
        (1, 5, 5, 3, 4, (3, 3), 1, Padding::Same),
        (2, 7, 6, 5, 3, (3, 3), 2, Padding::Same), // odd sizes, stride 2: TF's uneven SAME padding
        (2, 9, 8, 4, 6, (5, 5), 2, Padding::Same),
        (1, 6, 7, 3, 5, (3, 3), 2, Padding::Explicit { top: 1, bottom: 1, left: 1, right: 1 }), // torchvision
        (3, 4, 4, 2, 7, (1, 1), 1, Padding::Valid),
        (1, 6, 5, 3, 2, (2, 3), 1, Padding::Valid),
    ];
    for (i, &(n, h, w, c_in, c_out, k, stride, pad)) in cases.iter().enumerate() {
        let what = format!("case {i}");
        let geo = ConvGeometry::new(n, h, w, c_in, c_out, k, (stride, stride), pad).unwrap();
        let x = data(geo.input_len(), 40 + i as u32, 1.0);
        let wd = data(k.0 * k.1 * c_in * c_out, 50 + i as u32, 1.0);
        let dy = data(geo.output_len(), 60 + i as u32, 1.0);
        let (gx, gw, gdy) = (g.upload(&x).unwrap(), g.upload(&wd).unwrap(), g.upload(&dy).unwrap());
        let mut y = vec![0.0; geo.output_len()];
        cpu::conv2d_forward(&x, &wd, &mut y, &geo);
        let got = ops::conv(ConvPass::Forward, false, &geo, &gx, &gw).unwrap().to_vec().unwrap();
        close_to_scale(&format!("{what} forward"), &got, &y, TOL);
        let mut dx = vec![0.0; geo.input_len()];
        cpu::conv2d_backward_input(&dy, &wd, &mut dx, &geo);
        let got = ops::conv(ConvPass::BackwardInput, false, &geo, &gdy, &gw).unwrap().to_vec().unwrap();
        close_to_scale(&format!("{what} dx"), &got, &dx, TOL);
        let mut dw = vec![0.0; wd.len()];
        cpu::conv2d_backward_weight(&x, &dy, &mut dw, &geo);
        let got = ops::conv(ConvPass::BackwardWeight, false, &geo, &gx, &gdy).unwrap().to_vec().unwrap();
        close_to_scale(&format!("{what} dw"), &got, &dw, TOL);

        // depthwise over c_in channels
        let dgeo = ConvGeometry::new(n, h, w, c_in, c_in, k, (stride, stride), pad).unwrap();
        let dwk = data(k.0 * k.1 * c_in, 70 + i as u32, 1.0);
        let ddy = data(dgeo.output_len(), 80 + i as u32, 1.0);
        let (gdw, gddy) = (g.upload(&dwk).unwrap(), g.upload(&ddy).unwrap());
        let mut y = vec![0.0; dgeo.output_len()];
        cpu::depthwise_forward(&x, &dwk, &mut y, &dgeo);
        let got = ops::conv(ConvPass::Forward, true, &dgeo, &gx, &gdw).unwrap().to_vec().unwrap();
        close_to_scale(&format!("{what} depthwise forward"), &got, &y, TOL);
        let mut dx = vec![0.0; dgeo.input_len()];
        cpu::depthwise_backward_input(&ddy, &dwk, &mut dx, &dgeo);
        let got = ops::conv(ConvPass::BackwardInput, true, &dgeo, &gddy, &gdw).unwrap().to_vec().unwrap();
        close_to_scale(&format!("{what} depthwise dx"), &got, &dx, TOL);
        let mut dw = vec![0.0; dwk.len()];
        cpu::depthwise_backward_weight(&x, &ddy, &mut dw, &dgeo);
        let got = ops::conv(ConvPass::BackwardWeight, true, &dgeo, &gx, &gddy).unwrap().to_vec().unwrap();
        close_to_scale(&format!("{what} depthwise dw"), &got, &dw, TOL);
    }
}
