//! Every kernel family writes only inside the slices it is given: each output (and input) sits
//! between guard zones of canary values, the kernel runs, and the guards must be untouched. The
//! families run on awkward sizes (tails of every vector width, odd channel counts, strided and
//! padded convolutions, several threads) so the raw-pointer paths' edges are exercised.

use kernels::conv::{ConvGeometry, Padding};

const GUARD: usize = 67;
const CANARY: f32 = -7777.25;

/// A buffer of `n` values between two guard zones.
struct Guarded {
    buf: Vec<f32>,
    n: usize,
}

impl Guarded {
    fn new(n: usize, seed: u32) -> Guarded {
        let mut buf = vec![CANARY; n + 2 * GUARD];
        for (i, v) in buf[GUARD..GUARD + n].iter_mut().enumerate() {
            *v = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2000) as f32 / 1000.0 - 1.0;
        }
        Guarded { buf, n }
    }
    fn get(&self) -> &[f32] {
        &self.buf[GUARD..GUARD + self.n]
    }
    fn get_mut(&mut self) -> &mut [f32] {
        &mut self.buf[GUARD..GUARD + self.n]
    }
    fn assert_intact(&self, what: &str) {
        let (before, after) = (&self.buf[..GUARD], &self.buf[GUARD + self.n..]);
        assert!(
            before.iter().chain(after).all(|&v| v.to_bits() == CANARY.to_bits()),
            "{what}: a guard zone was written"
        );
    }
}

#[test]
fn gemm_writes_only_its_output() {
    use kernels::gemm::{sgemm_with, GemmStrides};
    for isa in kernels::simd::Isa::available() {
        for threads in [1, 2] {
            for &(m, k, n) in &[(1, 1, 1), (13, 7, 33), (37, 65, 17), (64, 31, 100), (5, 300, 9)] {
                let (a, b) = (Guarded::new(m * k, 1), Guarded::new(k * n, 2));
                let mut c = Guarded::new(m * n, 3);
                sgemm_with(
                    isa,
                    threads,
                    m,
                    k,
                    n,
                    1.0,
                    a.get(),
                    b.get(),
                    0.5,
                    c.get_mut(),
                    GemmStrides::row_major(k, n),
                );
                c.assert_intact(&format!("sgemm {isa:?} {m}x{k}x{n}"));
                a.assert_intact("sgemm A");
                b.assert_intact("sgemm B");
            }
        }
    }
}

#[test]
fn convolutions_write_only_their_outputs() {
    for &(h, w, ci, co, k, s, pad) in &[
        (9, 11, 3, 5, 3, 1, Padding::Same),
        (10, 7, 8, 24, 1, 1, Padding::Valid),
        (13, 13, 16, 17, 3, 2, Padding::Same),
        (8, 9, 5, 7, 5, 2, Padding::Explicit { top: 2, bottom: 1, left: 2, right: 2 }),
        (6, 6, 32, 32, 3, 1, Padding::Same),
    ] {
        let g = ConvGeometry::new(2, h, w, ci, co, (k, k), (s, s), pad).unwrap();
        let x = Guarded::new(g.input_len(), 4);
        let wt = Guarded::new(k * k * ci * co, 5);
        let mut y = Guarded::new(g.output_len(), 6);
        kernels::conv::conv2d_forward(x.get(), wt.get(), y.get_mut(), &g);
        y.assert_intact(&format!("conv forward {g:?}"));
        let mut dx = Guarded::new(g.input_len(), 7);
        kernels::conv::conv2d_backward_input(y.get(), wt.get(), dx.get_mut(), &g);
        dx.assert_intact(&format!("conv backward input {g:?}"));
        let mut dw = Guarded::new(k * k * ci * co, 8);
        kernels::conv::conv2d_backward_weight(x.get(), y.get(), dw.get_mut(), &g);
        dw.assert_intact(&format!("conv backward weight {g:?}"));

        // depthwise on the same sizes (C channels in and out)
        let dg = ConvGeometry { c_out: ci, ..g };
        let dwt = Guarded::new(k * k * ci, 9);
        let mut dy = Guarded::new(dg.output_len(), 10);
        kernels::conv::depthwise_forward(x.get(), dwt.get(), dy.get_mut(), &dg);
        dy.assert_intact(&format!("depthwise forward {dg:?}"));
        let mut ddx = Guarded::new(dg.input_len(), 11);
        kernels::conv::depthwise_backward_input(dy.get(), dwt.get(), ddx.get_mut(), &dg);
        ddx.assert_intact(&format!("depthwise backward input {dg:?}"));
        let mut ddw = Guarded::new(k * k * ci, 12);
        kernels::conv::depthwise_backward_weight(x.get(), dy.get(), ddw.get_mut(), &dg);
        ddw.assert_intact(&format!("depthwise backward weight {dg:?}"));
    }
}

#[test]
fn row_kernels_write_only_their_outputs() {
    use kernels::activation::Activation;
    for isa in kernels::simd::Isa::available() {
        for n in [1, 15, 16, 17, 33, 1000, 70_000] {
            let x = Guarded::new(n, 13);
            let dy = Guarded::new(n, 14);
            for act in
                [Activation::GeluErf, Activation::GeluTanh, Activation::Silu, Activation::Sigmoid, Activation::Exp]
            {
                let mut y = Guarded::new(n, 15);
                kernels::activation::activation_forward_with(isa, act, x.get(), y.get_mut());
                y.assert_intact(&format!("{act:?} forward {isa:?} n={n}"));
                let mut dx = Guarded::new(n, 16);
                kernels::activation::activation_backward_with(isa, act, x.get(), dy.get(), dx.get_mut());
                dx.assert_intact(&format!("{act:?} backward {isa:?} n={n}"));
            }
        }
        for &(rows, cols) in &[(1, 1), (3, 17), (7, 33), (64, 384)] {
            let n = rows * cols;
            let (x, dy) = (Guarded::new(n, 17), Guarded::new(n, 18));
            let (gamma, beta) = (Guarded::new(cols, 19), Guarded::new(cols, 20));
            let (mut y, mut mean, mut rstd) = (Guarded::new(n, 21), Guarded::new(rows, 22), Guarded::new(rows, 23));
            kernels::norm::layer_norm_forward_with(
                isa,
                x.get(),
                gamma.get(),
                beta.get(),
                y.get_mut(),
                mean.get_mut(),
                rstd.get_mut(),
                cols,
                1e-5,
            );
            for (b, what) in [(&y, "y"), (&mean, "mean"), (&rstd, "rstd")] {
                b.assert_intact(&format!("layer norm {what} {isa:?} {rows}x{cols}"));
            }
            let (mut dx, mut dg, mut db) = (Guarded::new(n, 24), Guarded::new(cols, 25), Guarded::new(cols, 26));
            kernels::norm::layer_norm_backward(
                x.get(),
                gamma.get(),
                mean.get(),
                rstd.get(),
                dy.get(),
                dx.get_mut(),
                dg.get_mut(),
                db.get_mut(),
                cols,
            );
            for (b, what) in [(&dx, "dx"), (&dg, "dgamma"), (&db, "dbeta")] {
                b.assert_intact(&format!("layer norm backward {what} {rows}x{cols}"));
            }
            let mut s = Guarded::new(n, 27);
            kernels::softmax::softmax_forward_with(isa, x.get(), s.get_mut(), cols, 1.0, None, false);
            s.assert_intact(&format!("softmax {isa:?} {rows}x{cols}"));
            let mut ds = Guarded::new(n, 28);
            kernels::softmax::softmax_backward_with(isa, s.get(), dy.get(), ds.get_mut(), cols, 1.0, false);
            ds.assert_intact(&format!("softmax backward {isa:?} {rows}x{cols}"));
        }
    }
}

#[test]
fn batch_norm_and_pooling_write_only_their_outputs() {
    for &(pixels, c) in &[(1, 1), (49, 17), (196, 40), (3, 96)] {
        let n = 2 * pixels * c;
        let (x, dy) = (Guarded::new(n, 29), Guarded::new(n, 30));
        let (mut mean, mut var) = (Guarded::new(c, 31), Guarded::new(c, 32));
        kernels::batchnorm::batch_norm_stats(x.get(), c, mean.get_mut(), var.get_mut());
        mean.assert_intact("bn mean");
        var.assert_intact("bn var");
        let rstd: Vec<f32> = var.get().iter().map(|v| 1.0 / (v + 1e-3).sqrt()).collect();
        let (gamma, beta) = (Guarded::new(c, 33), Guarded::new(c, 34));
        let mut y = Guarded::new(n, 35);
        let act = Some(kernels::activation::Activation::Silu);
        kernels::batchnorm::batch_norm_forward(
            x.get(),
            mean.get(),
            &rstd,
            gamma.get(),
            beta.get(),
            act,
            y.get_mut(),
            c,
        );
        y.assert_intact("bn forward");
        let (mut dx, mut dg, mut db) = (Guarded::new(n, 36), Guarded::new(c, 37), Guarded::new(c, 38));
        kernels::batchnorm::batch_norm_backward(
            x.get(),
            mean.get(),
            &rstd,
            gamma.get(),
            beta.get(),
            act,
            dy.get(),
            dx.get_mut(),
            dg.get_mut(),
            db.get_mut(),
            c,
            true,
        );
        for (b, what) in [(&dx, "dx"), (&dg, "dgamma"), (&db, "dbeta")] {
            b.assert_intact(&format!("bn backward {what} {pixels}x{c}"));
        }
        let mut pooled = Guarded::new(2 * c, 39);
        kernels::pooling::global_avg_pool_forward(x.get(), pooled.get_mut(), 2, pixels, c);
        pooled.assert_intact("pool forward");
        let mut dpool = Guarded::new(n, 40);
        kernels::pooling::global_avg_pool_backward(pooled.get(), dpool.get_mut(), 2, pixels, c);
        dpool.assert_intact("pool backward");
    }
}
