//! Normalisation kernels, forward and backward (reference versions).
//!
//! Layer norm normalises each row of (rows, cols) over its cols; the forward returns the mean
//! and reciprocal standard deviation per row, which is all its backward needs besides the
//! input (as llm.c does: no centred copy of the input is kept).
//!
//! Batch norm works on channels-last data seen as (rows = N*H*W, channels): statistics are per
//! channel over all rows. Variance is the biased one (divide by rows), as PyTorch uses for
//! normalising in training mode.

/// y = (x - mean) * rstd * gamma + beta per row. Writes mean and rstd (one per row).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward(
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    cols: usize,
    eps: f32,
) {
    if cols == 0 {
        return;
    }
    for (r, (xr, yr)) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)).enumerate() {
        let m = xr.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        let var = xr.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / cols as f64;
        let s = 1.0 / (var + eps as f64).sqrt();
        mean[r] = m as f32;
        rstd[r] = s as f32;
        for (j, (o, &v)) in yr.iter_mut().zip(xr).enumerate() {
            let n = ((v as f64 - m) * s) as f32;
            *o = n * gamma.map_or(1.0, |g| g[j]) + beta.map_or(0.0, |b| b[j]);
        }
    }
}

/// Layer-norm backward. Accumulates (+=) into dgamma and dbeta when given; writes dx.
///
/// With n = (x - mean) * rstd and g = dy * gamma:
///   dx = rstd * (g - mean(g) - n * mean(g * n)).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    x: &[f32],
    gamma: Option<&[f32]>,
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    mut dgamma: Option<&mut [f32]>,
    mut dbeta: Option<&mut [f32]>,
    cols: usize,
) {
    if cols == 0 {
        return;
    }
    for (r, ((xr, dyr), dxr)) in
        x.chunks_exact(cols).zip(dy.chunks_exact(cols)).zip(dx.chunks_exact_mut(cols)).enumerate()
    {
        let (m, s) = (mean[r], rstd[r]);
        let mut mean_g = 0.0f64;
        let mut mean_gn = 0.0f64;
        for j in 0..cols {
            let n = (xr[j] - m) * s;
            let g = dyr[j] * gamma.map_or(1.0, |gm| gm[j]);
            mean_g += g as f64;
            mean_gn += (g * n) as f64;
            if let Some(dg) = dgamma.as_deref_mut() {
                dg[j] += dyr[j] * n;
            }
            if let Some(db) = dbeta.as_deref_mut() {
                db[j] += dyr[j];
            }
        }
        let (mean_g, mean_gn) = ((mean_g / cols as f64) as f32, (mean_gn / cols as f64) as f32);
        for j in 0..cols {
            let n = (xr[j] - m) * s;
            let g = dyr[j] * gamma.map_or(1.0, |gm| gm[j]);
            dxr[j] = s * (g - mean_g - n * mean_gn);
        }
    }
}

/// Per-channel mean and biased variance of (rows, channels) data.
pub fn batch_norm_stats(x: &[f32], channels: usize, mean: &mut [f32], var: &mut [f32]) {
    let rows = x.len().checked_div(channels).unwrap_or(0);
    let mut sum = vec![0.0f64; channels];
    let mut sq = vec![0.0f64; channels];
    for row in x.chunks_exact(channels.max(1)).take(rows) {
        for c in 0..channels {
            sum[c] += row[c] as f64;
        }
    }
    sum.iter_mut().for_each(|s| *s /= rows.max(1) as f64);
    for row in x.chunks_exact(channels.max(1)).take(rows) {
        for c in 0..channels {
            sq[c] += (row[c] as f64 - sum[c]).powi(2);
        }
    }
    for c in 0..channels {
        mean[c] = sum[c] as f32;
        var[c] = (sq[c] / rows.max(1) as f64) as f32;
    }
}

/// y = (x - mean[c]) * rstd[c] * gamma[c] + beta[c] over (rows, channels).
pub fn batch_norm_apply(
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    y: &mut [f32],
    channels: usize,
) {
    for (xr, yr) in x.chunks_exact(channels.max(1)).zip(y.chunks_exact_mut(channels.max(1))) {
        for c in 0..channels {
            yr[c] = (xr[c] - mean[c]) * rstd[c] * gamma[c] + beta[c];
        }
    }
}

/// Batch-norm backward. `training` selects whether mean and rstd were batch statistics (their
/// dependence on x is differentiated) or fixed running statistics. Accumulates dgamma, dbeta.
///   training: dx = gamma * rstd / M * (M * dy - sum(dy) - n * sum(dy * n))
///   eval:     dx = gamma * rstd * dy
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    channels: usize,
    training: bool,
) {
    if channels == 0 {
        return;
    }
    let rows = x.len() / channels;
    let mut sum_dy = vec![0.0f64; channels];
    let mut sum_dy_n = vec![0.0f64; channels];
    for (xr, dyr) in x.chunks_exact(channels).zip(dy.chunks_exact(channels)) {
        for c in 0..channels {
            let n = (xr[c] - mean[c]) * rstd[c];
            sum_dy[c] += dyr[c] as f64;
            sum_dy_n[c] += (dyr[c] * n) as f64;
        }
    }
    for c in 0..channels {
        dgamma[c] += sum_dy_n[c] as f32;
        dbeta[c] += sum_dy[c] as f32;
    }
    let m = rows.max(1) as f32;
    for ((xr, dyr), dxr) in x.chunks_exact(channels).zip(dy.chunks_exact(channels)).zip(dx.chunks_exact_mut(channels)) {
        for c in 0..channels {
            let k = gamma[c] * rstd[c];
            dxr[c] = if training {
                let n = (xr[c] - mean[c]) * rstd[c];
                k * (dyr[c] - (sum_dy[c] as f32) / m - n * (sum_dy_n[c] as f32) / m)
            } else {
                k * dyr[c]
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_output_has_zero_mean_unit_variance() {
        let x: Vec<f32> = (0..10).map(|i| (i * i) as f32).collect();
        let mut y = vec![0.0; 10];
        let (mut m, mut s) = (vec![0.0; 2], vec![0.0; 2]);
        layer_norm_forward(&x, None, None, &mut y, &mut m, &mut s, 5, 1e-5);
        for r in 0..2 {
            let row = &y[r * 5..r * 5 + 5];
            let mean: f32 = row.iter().sum::<f32>() / 5.0;
            let var: f32 = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 5.0;
            assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-4);
        }
        assert_eq!(m[0], 6.0);
    }

    #[test]
    fn batch_norm_stats_are_per_channel() {
        // rows: (1, 10), (3, 30) -> means (2, 20), vars (1, 100)
        let x = [1.0, 10.0, 3.0, 30.0];
        let (mut m, mut v) = ([0.0; 2], [0.0; 2]);
        batch_norm_stats(&x, 2, &mut m, &mut v);
        assert_eq!(m, [2.0, 20.0]);
        assert_eq!(v, [1.0, 100.0]);
    }
}
