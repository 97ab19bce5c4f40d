//! Layer norm over the last axis, forward and backward: each row of (rows, cols) is normalised
//! over its cols, then scaled and shifted per column. The forward returns each row's mean and
//! reciprocal standard deviation, which is all the backward needs besides the input (as llm.c
//! does: no centred copy of the input is kept).
//!
//! The fast kernels vectorise the row statistics and the normalisation per [`Isa`] and split
//! rows over the kernel pool; [`reference`] holds the scalar definitions they are tested against.
//! Batch norm, which normalises over rows per channel instead, is `crate::batchnorm`.

use crate::parallel::for_row_blocks;
use crate::simd::Isa;

/// Layer norm over rows of `cols`: writes y, and mean / rstd per row for the backward.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    cols: usize,
    eps: f32,
) {
    layer_norm_forward_with(Isa::best(), x, gamma, beta, y, mean, rstd, cols, eps)
}

#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward_with(
    isa: Isa,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    cols: usize,
    eps: f32,
) {
    if cols == 0 {
        return;
    }
    let rows = x.len() / cols;
    assert!(
        y.len() == x.len() && mean.len() >= rows && rstd.len() >= rows && gamma.len() == cols && beta.len() == cols
    );
    let isa = isa.supported();
    let stats = |xr: &[f32]| -> (f32, f32) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa` passed `supported()`; the kernel reads only within the row.
            Isa::Avx512 => unsafe { x86::row_stats_avx512(xr, eps) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { x86::row_stats_avx2(xr, eps) },
            _ => {
                let m = xr.iter().sum::<f32>() / cols as f32;
                let var = xr.iter().map(|&v| (v - m) * (v - m)).sum::<f32>() / cols as f32;
                (m, 1.0 / (var + eps).sqrt())
            }
        }
    };
    // Statistics and normalisation in one sweep per row block (the row stays in L1).
    let mean_ptr = crate::parallel::SharedPtr(mean.as_mut_ptr());
    let rstd_ptr = crate::parallel::SharedPtr(rstd.as_mut_ptr());
    for_row_blocks(y, cols, |first, out| {
        let (mean_ptr, rstd_ptr) = (&mean_ptr, &rstd_ptr);
        for (r, yr) in out.chunks_exact_mut(cols).enumerate() {
            let row = first + r;
            let xr = &x[row * cols..(row + 1) * cols];
            let (m, s) = stats(xr);
            // SAFETY: each row index is written by exactly one block.
            unsafe {
                *mean_ptr.get().add(row) = m;
                *rstd_ptr.get().add(row) = s;
            }
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `isa` passed `supported()`; xr, yr, gamma and beta are `cols` long
                // (asserted above).
                Isa::Avx512 => unsafe { x86::normalise_row_avx512(xr, gamma, beta, yr, m, s) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Isa::Avx2 => unsafe { x86::normalise_row_avx2(xr, gamma, beta, yr, m, s) },
                _ => {
                    for j in 0..cols {
                        yr[j] = (xr[j] - m) * s * gamma[j] + beta[j];
                    }
                }
            }
        }
    });
}

/// Layer-norm backward; writes dx and accumulates (+=) dgamma, dbeta.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    cols: usize,
) {
    if cols == 0 {
        return;
    }
    let rows = x.len() / cols;
    for r in 0..rows {
        let (xr, dyr) = (&x[r * cols..(r + 1) * cols], &dy[r * cols..(r + 1) * cols]);
        let (m, s) = (mean[r], rstd[r]);
        for j in 0..cols {
            let n = (xr[j] - m) * s;
            dgamma[j] += dyr[j] * n;
            dbeta[j] += dyr[j];
        }
    }
    for_row_blocks(dx, cols, |first, out| {
        for (r, dxr) in out.chunks_exact_mut(cols).enumerate() {
            let row = first + r;
            let (xr, dyr) = (&x[row * cols..(row + 1) * cols], &dy[row * cols..(row + 1) * cols]);
            let (m, s) = (mean[row], rstd[row]);
            let (mut mean_g, mut mean_gn) = (0.0f32, 0.0f32);
            for j in 0..cols {
                let g = dyr[j] * gamma[j];
                mean_g += g;
                mean_gn += g * (xr[j] - m) * s;
            }
            mean_g /= cols as f32;
            mean_gn /= cols as f32;
            for j in 0..cols {
                let n = (xr[j] - m) * s;
                dxr[j] = s * (dyr[j] * gamma[j] - mean_g - n * mean_gn);
            }
        }
    });
}

/// The vectorised bodies, written once over [`F32Vec`](crate::vec::F32Vec).
mod vector {
    use crate::vec::F32Vec;

    /// Mean and reciprocal std of one row (two-pass variance).
    #[inline(always)]
    pub unsafe fn row_stats<V: F32Vec>(x: &[f32], eps: f32) -> (f32, f32) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let n = x.len();
            let w = V::LANES;
            let p = x.as_ptr();
            let mut acc = V::splat(0.0);
            let mut i = 0;
            while i + w <= n {
                acc = acc.add(V::load(p.add(i)));
                i += w;
            }
            let mut sum = acc.reduce_sum();
            while i < n {
                sum += *p.add(i);
                i += 1;
            }
            let mean = sum / n as f32;
            let mv = V::splat(mean);
            let mut acc = V::splat(0.0);
            let mut i = 0;
            while i + w <= n {
                let d = V::load(p.add(i)).sub(mv);
                acc = d.mul_add(d, acc);
                i += w;
            }
            let mut var = acc.reduce_sum();
            while i < n {
                let d = *p.add(i) - mean;
                var += d * d;
                i += 1;
            }
            (mean, 1.0 / (var / n as f32 + eps).sqrt())
        }
    }

    /// y = (x - mean) * rstd * gamma + beta for one row.
    #[inline(always)]
    pub unsafe fn normalise_row<V: F32Vec>(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        y: &mut [f32],
        mean: f32,
        rstd: f32,
    ) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let n = x.len();
            let w = V::LANES;
            let (mv, sv) = (V::splat(mean), V::splat(rstd));
            let mut i = 0;
            while i + w <= n {
                let nrm = V::load(x.as_ptr().add(i)).sub(mv).mul(sv);
                nrm.mul_add(V::load(gamma.as_ptr().add(i)), V::load(beta.as_ptr().add(i))).store(y.as_mut_ptr().add(i));
                i += w;
            }
            while i < n {
                y[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
                i += 1;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::vector;
    use crate::vec::x86::{Avx2, Avx512};

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_stats_avx2(x: &[f32], eps: f32) -> (f32, f32) {
        // SAFETY: callers guarantee a CPU with avx2,fma (they dispatch on `Isa::supported()`)
        // and pointers valid for what this reads and writes.
        unsafe { vector::row_stats::<Avx2>(x, eps) }
    }
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row_stats_avx512(x: &[f32], eps: f32) -> (f32, f32) {
        // SAFETY: callers guarantee a CPU with avx512f (they dispatch on `Isa::supported()`)
        // and pointers valid for what this reads and writes.
        unsafe { vector::row_stats::<Avx512>(x, eps) }
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn normalise_row_avx2(x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [f32], mean: f32, rstd: f32) {
        // SAFETY: callers guarantee a CPU with avx2,fma (they dispatch on `Isa::supported()`)
        // and pointers valid for what this reads and writes.
        unsafe { vector::normalise_row::<Avx2>(x, gamma, beta, y, mean, rstd) }
    }
    #[target_feature(enable = "avx512f")]
    pub unsafe fn normalise_row_avx512(x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [f32], mean: f32, rstd: f32) {
        // SAFETY: callers guarantee a CPU with avx512f (they dispatch on `Isa::supported()`)
        // and pointers valid for what this reads and writes.
        unsafe { vector::normalise_row::<Avx512>(x, gamma, beta, y, mean, rstd) }
    }
}

/// The scalar definitions (f64 accumulation) the fast kernels are tested against.
pub mod reference {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::{close, data, SIZES};

    #[test]
    fn layer_norm_output_has_zero_mean_unit_variance() {
        let x: Vec<f32> = (0..10).map(|i| (i * i) as f32).collect();
        let mut y = vec![0.0; 10];
        let (mut m, mut s) = (vec![0.0; 2], vec![0.0; 2]);
        reference::layer_norm_forward(&x, None, None, &mut y, &mut m, &mut s, 5, 1e-5);
        for r in 0..2 {
            let row = &y[r * 5..r * 5 + 5];
            let mean: f32 = row.iter().sum::<f32>() / 5.0;
            let var: f32 = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 5.0;
            assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-4);
        }
        assert_eq!(m[0], 6.0);
    }

    #[test]
    fn layer_norm_matches_reference_on_awkward_sizes() {
        for &cols in &SIZES {
            let rows = 4;
            let x = data(rows * cols, 3, 5.0);
            let gamma = data(cols, 4, 1.0);
            let beta = data(cols, 5, 1.0);
            let (mut y1, mut y2) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            let (mut m1, mut s1, mut m2, mut s2) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows], vec![0.0; rows]);
            reference::layer_norm_forward(&x, Some(&gamma), Some(&beta), &mut y1, &mut m1, &mut s1, cols, 1e-5);
            for isa in Isa::available() {
                layer_norm_forward_with(isa, &x, &gamma, &beta, &mut y2, &mut m2, &mut s2, cols, 1e-5);
                close("ln y", &y2, &y1, 2e-5);
                close("ln rstd", &s2, &s1, 1e-5);
            }
            let dy = data(x.len(), 6, 1.0);
            let (mut dx1, mut dx2) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            let (mut dg1, mut db1, mut dg2, mut db2) =
                (vec![0.0; cols], vec![0.0; cols], vec![0.0; cols], vec![0.0; cols]);
            reference::layer_norm_backward(
                &x,
                Some(&gamma),
                &m1,
                &s1,
                &dy,
                &mut dx1,
                Some(&mut dg1),
                Some(&mut db1),
                cols,
            );
            layer_norm_backward(&x, &gamma, &m2, &s2, &dy, &mut dx2, &mut dg2, &mut db2, cols);
            close("ln dx", &dx2, &dx1, 5e-5);
            close("ln dgamma", &dg2, &dg1, 5e-5);
            close("ln dbeta", &db2, &db1, 5e-5);
        }
    }
}
