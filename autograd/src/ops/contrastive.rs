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

/// One shard of the contrastive loss, for data-parallel training over a global batch.
///
/// `rows` (n, D) are this worker's embeddings of one modality, `columns` (M, D) the embeddings of
/// the other modality from the whole global batch (gathered from every worker), and row i's
/// positive is column `offset + i`. Returns
///   (1 / M) * sum_i CE(rows_i columns^T / sigma, Q_i),   Q = (1 - s) [j = offset + i] + s / M
/// so that, over the workers r of a global batch of M pairs,
///   sum_r contrastive_rows(x_r, y_all, o_r) + contrastive_rows(y_r, x_all, o_r)
/// is exactly [`contrastive_loss`] of the whole batch (open_clip's "local loss": each worker
/// computes an (n, M) block, never the (M, M) matrix).
///
/// Backward, with P = softmax over the rows of Z = rows columns^T / sigma and dZ = g (P - Q) / M:
///   d rows = (dZ / sigma) columns,   d columns = (dZ / sigma)^T rows,   dt = -sum(dZ * Z).
pub fn contrastive_rows(
    rows: &Var,
    columns: &Var,
    log_temperature: &Var,
    offset: usize,
    smoothing: f32,
) -> Result<Var> {
    let (rv, cv, tv) = (rows.value().contiguous(), columns.value().contiguous(), log_temperature.value());
    let bad = |msg: String| TensorError::Shape { op: "contrastive_rows", msg };
    if rv.rank() != 2 || cv.rank() != 2 || rv.shape()[1] != cv.shape()[1] || rv.shape()[0] == 0 {
        return Err(bad(format!(
            "rows (n, D) and columns (M, D) must be non-empty matrices of one width, got {:?} and {:?}",
            rv.shape(),
            cv.shape()
        )));
    }
    let (n, m, d) = (rv.shape()[0], cv.shape()[0], rv.shape()[1]);
    if offset + n > m {
        return Err(bad(format!("rows {offset}..{} do not fit in {m} columns", offset + n)));
    }
    if tv.numel() != 1 {
        return Err(bad(format!("temperature must be one value, got {:?}", tv.shape())));
    }
    if !(0.0..=1.0).contains(&smoothing) {
        return Err(bad(format!("label smoothing {smoothing} outside [0, 1]")));
    }
    if rows.value().device().is_gpu() || columns.value().device().is_gpu() {
        return Err(bad("the sharded loss runs on the CPU only".into()));
    }
    let inv_sigma = (-tv.item()?).exp();
    let (rs, cs) = (rv.as_contiguous_slice().expect("contiguous"), cv.as_contiguous_slice().expect("contiguous"));
    // Z = rows columns^T / sigma  (n, M)
    let mut z = vec![0.0f32; n * m];
    let zt = GemmStrides { a_row: d, a_col: 1, b_row: 1, b_col: d, c_row: m, c_col: 1 };
    sgemm(n, d, m, inv_sigma, rs, cs, 0.0, &mut z, zt);
    let mut log_p = vec![0.0f32; n * m];
    softmax::log_softmax_forward(&z, &mut log_p, m, 1.0, None);
    let off = smoothing / m as f32;
    let on = 1.0 - smoothing + off;
    let mut total = 0.0f64;
    for (i, row) in log_p.chunks_exact(m).enumerate() {
        let sum: f64 = row.iter().map(|&v| v as f64).sum();
        total -= off as f64 * sum + (on - off) as f64 * row[offset + i] as f64;
    }
    let loss = Tensor::scalar((total / m as f64) as f32);
    Ok(Var::from_fn(loss, &[rows, columns, log_temperature], "contrastive_rows", move |g, needs| {
        let scale = g.item()? / m as f32;
        // dZ = g (P - Q) / M
        let mut dz = vec![0.0f32; n * m];
        for (i, (dz_row, lp_row)) in dz.chunks_exact_mut(m).zip(log_p.chunks_exact(m)).enumerate() {
            for (j, (dzv, &lp)) in dz_row.iter_mut().zip(lp_row).enumerate() {
                let q = if j == offset + i { on } else { off };
                *dzv = (lp.exp() - q) * scale;
            }
        }
        let dt = -dz.iter().zip(&z).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
        let (rs, cs) = (rv.as_contiguous_slice().expect("contiguous"), cv.as_contiguous_slice().expect("contiguous"));
        Ok(vec![
            maybe(needs[0], || {
                // d rows = (dZ / sigma) columns: (n, M) x (M, D)
                let mut dr = vec![0.0f32; n * d];
                sgemm(n, m, d, inv_sigma, &dz, cs, 0.0, &mut dr, GemmStrides::row_major(m, d));
                Tensor::from_vec(dr, &[n, d])
            })?,
            maybe(needs[1], || {
                // d columns = (dZ / sigma)^T rows: (M, n) x (n, D)
                let mut dc = vec![0.0f32; m * d];
                let st = GemmStrides { a_row: 1, a_col: m, b_row: d, b_col: 1, c_row: d, c_col: 1 };
                sgemm(m, n, d, inv_sigma, &dz, rs, 0.0, &mut dc, st);
                Tensor::from_vec(dc, &[m, d])
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

    #[test]
    fn the_sharded_loss_passes_gradcheck_and_its_shards_sum_to_the_whole_loss() {
        let o = GradcheckOptions::default();
        let rows = Tensor::randn(&[2, 4], 0.0, 1.0, 3);
        let cols = Tensor::randn(&[5, 4], 0.0, 1.0, 4);
        let t = Tensor::from_vec(vec![0.2], &[]).unwrap();
        check_gradients(&[rows, cols, t], |v| contrastive_rows(&v[0], &v[1], &v[2], 3, 0.1), &o).unwrap();

        // three workers holding 2, 3 and 1 pairs of a batch of 6
        let norm = |seed| l2_normalize(&Var::constant(Tensor::randn(&[6, 4], 0.0, 1.0, seed)), 1e-12).unwrap();
        let (x, y) = (norm(5), norm(6));
        let t = Var::constant(Tensor::scalar(-0.7));
        let whole = contrastive_loss(&x, &y, &t, 0.1).unwrap().value().item().unwrap();
        let mut sum = 0.0;
        for (start, len) in [(0, 2), (2, 3), (5, 1)] {
            let (xr, yr) = (
                crate::ops::shape::narrow(&x, 0, start, len).unwrap(),
                crate::ops::shape::narrow(&y, 0, start, len).unwrap(),
            );
            sum += contrastive_rows(&xr, &y, &t, start, 0.1).unwrap().value().item().unwrap();
            sum += contrastive_rows(&yr, &x, &t, start, 0.1).unwrap().value().item().unwrap();
        }
        assert!((sum - whole).abs() < 1e-5 * whole.abs(), "{sum} vs {whole}");
        let e = contrastive_rows(&x, &y, &t, 1, 0.1).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
    }
}
