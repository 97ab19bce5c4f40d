//! ALIGN's symmetric contrastive loss as one fused op (Jia et al. 2021, docs/paper.md "Loss").
//!
//! For L2-normalised image embeddings x (N, D) and text embeddings y (N, D), pair i matching:
//!   Z = x y^T / sigma,   L = CE(Z, I) + CE(Z^T, I)
//! with each cross-entropy averaged over the N rows and label-smoothed targets
//! Q = (1 - s) I + s / N. The temperature is learned through t = ln(sigma), so sigma = e^t is
//! positive whatever the optimiser does; t = 0 starts it at 1.0 as the paper does.
//!
//! Backward, fused: with P_r = softmax over rows of Z and P_c = softmax over columns,
//!   dZ = (P_r - Q) / N + (P_c - Q) / N
//!   dx = (dZ / sigma) y,   dy = (dZ / sigma)^T x,   dt = -sum(dZ * Z)
//! which avoids materialising two log-softmax graphs and is stable for any temperature.

use kernels::gemm::{sgemm, GemmStrides};
use kernels::softmax;
use tensor::{Result, Tensor, TensorError};

use super::maybe;
use crate::Var;

/// Symmetric image-text contrastive loss (scalar) from normalised embeddings and ln(sigma).
pub fn contrastive_loss(x: &Var, y: &Var, log_temperature: &Var, smoothing: f32) -> Result<Var> {
    let (xv, yv, tv) = (x.value().contiguous(), y.value().contiguous(), log_temperature.value());
    if xv.rank() != 2 || xv.shape() != yv.shape() || xv.shape()[0] == 0 {
        return Err(TensorError::Shape {
            op: "contrastive_loss",
            msg: format!(
                "embeddings must be two non-empty (N, D) tensors of one shape, got {:?} and {:?}",
                xv.shape(),
                yv.shape()
            ),
        });
    }
    if tv.numel() != 1 {
        return Err(TensorError::Shape {
            op: "contrastive_loss",
            msg: format!("temperature must be one value, got {:?}", tv.shape()),
        });
    }
    if !(0.0..=1.0).contains(&smoothing) {
        return Err(TensorError::Shape {
            op: "contrastive_loss",
            msg: format!("label smoothing {smoothing} outside [0, 1]"),
        });
    }
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x, y, log_temperature]) {
        return super::gpu::contrastive_loss(x, y, log_temperature, smoothing);
    }
    let (n, d) = (xv.shape()[0], xv.shape()[1]);
    let t = tv.item()?;
    let inv_sigma = (-t).exp();
    // Z = x y^T / sigma  (N, N)
    let mut z = vec![0.0f32; n * n];
    let s = GemmStrides { a_row: d, a_col: 1, b_row: 1, b_col: d, c_row: n, c_col: 1 };
    sgemm(
        n,
        d,
        n,
        inv_sigma,
        xv.as_contiguous_slice().expect("contiguous"),
        yv.as_contiguous_slice().expect("contiguous"),
        0.0,
        &mut z,
        s,
    );
    // row and column log-softmax
    let mut lr = vec![0.0f32; n * n];
    softmax::log_softmax_forward(&z, &mut lr, n, 1.0, None);
    let zt: Vec<f32> = (0..n * n).map(|k| z[(k % n) * n + k / n]).collect(); // transpose
    let mut lc_t = vec![0.0f32; n * n];
    softmax::log_softmax_forward(&zt, &mut lc_t, n, 1.0, None);
    let off = smoothing / n as f32;
    let on = 1.0 - smoothing + off;
    let mut total = 0.0f64;
    for i in 0..n {
        let (row_r, row_c) = (&lr[i * n..(i + 1) * n], &lc_t[i * n..(i + 1) * n]);
        let sr: f64 = row_r.iter().map(|&v| v as f64).sum();
        let sc: f64 = row_c.iter().map(|&v| v as f64).sum();
        total -= off as f64 * (sr + sc) + (on - off) as f64 * (row_r[i] + row_c[i]) as f64;
    }
    let loss = Tensor::scalar((total / n as f64) as f32);
    Ok(Var::from_fn(loss, &[x, y, log_temperature], "contrastive_loss", move |g, needs| {
        let scale = g.item()? / n as f32;
        // dZ = (P_r - Q + P_c - Q) / N
        let mut dz = vec![0.0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                let q = if i == j { on } else { off };
                let pr = lr[i * n + j].exp();
                let pc = lc_t[j * n + i].exp(); // column j of Z is row j of Z^T
                dz[i * n + j] = (pr + pc - 2.0 * q) * scale;
            }
        }
        let dt = -dz.iter().zip(&z).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
        let (xs, ys) = (xv.as_contiguous_slice().expect("contiguous"), yv.as_contiguous_slice().expect("contiguous"));
        let rs = GemmStrides::row_major(n, d);
        Ok(vec![
            maybe(needs[0], || {
                // dx = (dZ / sigma) y
                let mut dx = vec![0.0f32; n * d];
                sgemm(n, n, d, inv_sigma, &dz, ys, 0.0, &mut dx, rs);
                Tensor::from_vec(dx, &[n, d])
            })?,
            maybe(needs[1], || {
                // dy = (dZ / sigma)^T x
                let mut dy = vec![0.0f32; n * d];
                let st = GemmStrides { a_row: 1, a_col: n, b_row: d, b_col: 1, c_row: d, c_col: 1 };
                sgemm(n, n, d, inv_sigma, &dz, xs, 0.0, &mut dy, st);
                Tensor::from_vec(dy, &[n, d])
            })?,
            maybe(needs[2], || Tensor::from_vec(vec![dt], tv.shape()))?,
        ])
    }))
}

/// Rows scaled to unit L2 norm: x / sqrt(sum(x^2) + eps), composed from differentiable ops.
pub fn l2_normalize(x: &Var, eps: f32) -> Result<Var> {
    use super::{elementwise as ew, reduce};
    let last = x
        .shape()
        .len()
        .checked_sub(1)
        .ok_or_else(|| TensorError::Shape { op: "l2_normalize", msg: "input has no axes".into() })?;
    let norm = ew::sqrt(&ew::add_scalar(&reduce::sum(&ew::mul(x, x)?, &[last], true)?, eps));
    ew::div(x, &norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};

    #[test]
    fn contrastive_loss_passes_gradcheck_and_has_the_right_limits() {
        let o = GradcheckOptions::default();
        let x = Tensor::randn(&[5, 4], 0.0, 1.0, 1);
        let y = Tensor::randn(&[5, 4], 0.0, 1.0, 2);
        let t = Tensor::from_vec(vec![-0.3], &[]).unwrap();
        check_gradients(
            &[x.clone(), y.clone(), t.clone()],
            |v| {
                let (a, b) = (l2_normalize(&v[0], 1e-12)?, l2_normalize(&v[1], 1e-12)?);
                contrastive_loss(&a, &b, &v[2], 0.1)
            },
            &o,
        )
        .unwrap();
        // identical, orthogonal embeddings at a low temperature: near-zero loss without smoothing
        let eye = Tensor::from_vec((0..16).map(|k| if k % 5 == 0 { 1.0 } else { 0.0 }).collect(), &[4, 4]).unwrap();
        let low = Var::constant(Tensor::from_vec(vec![-5.0], &[]).unwrap());
        let l = contrastive_loss(&Var::constant(eye.clone()), &Var::constant(eye), &low, 0.0).unwrap();
        assert!(l.value().item().unwrap() < 1e-3);
        // all-equal embeddings: each direction is ln N
        let same = Var::constant(Tensor::ones(&[4, 3]));
        let l = contrastive_loss(&same, &same, &Var::constant(Tensor::scalar(0.0)), 0.1).unwrap();
        assert!((l.value().item().unwrap() - 2.0 * 4f32.ln()).abs() < 1e-5);
        assert!(contrastive_loss(&same, &Var::constant(Tensor::ones(&[3, 3])), &low, 0.1).is_err());
    }
}
