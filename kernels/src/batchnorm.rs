//! Batch norm over channels-last data, fast path: threaded over blocks of rows, vectorised
//! along channels, with an optional fused activation (batch norm -> SiLU is every EfficientNet
//! stage's pattern; fusing saves writing and re-reading the pre-activation tensor in forward and
//! backward). The scalar references these are tested against are in [`reference`].
//!
//! Data is seen as (rows = N*H*W, channels). Per-channel sums are accumulated in f64 (the loops
//! are memory-bound, so the wider accumulator costs nothing measurable), per block of rows and
//! then across blocks in block order, so results do not depend on the thread count. Statistics use the shifted-data form (subtract the first row before
//! squaring), which stays accurate when the mean is large compared with the spread.
//!
//! Forward:  n = (x - mean) * rstd,  z = gamma * n + beta,  y = act(z)
//! Backward: dz = dy * act'(z) (z recomputed from x, not stored),
//!           training: dx = gamma * rstd * (dz - mean(dz) - n * mean(dz * n))
//!           eval:     dx = gamma * rstd * dz
//!           dgamma += sum(dz * n), dbeta += sum(dz)

use rayon::prelude::*;

use crate::activation::{activation_backward_with, activation_forward_with, Activation};
use crate::parallel;
use crate::simd::Isa;

/// Floats per task: big enough to amortise scheduling, small enough to stay in L2.
const BLOCK_FLOATS: usize = 1 << 14;

fn rows_per_block(channels: usize) -> usize {
    (BLOCK_FLOATS / channels.max(1)).max(1)
}

/// Runs `f(first_row, block)` over blocks of whole rows, in parallel when there is enough work,
/// and returns each block's result in order.
fn map_row_blocks<T: Send>(len: usize, channels: usize, f: impl Fn(usize, usize) -> T + Sync + Send) -> Vec<T> {
    let rows = len / channels.max(1);
    let per = rows_per_block(channels);
    let blocks: Vec<usize> = (0..rows.div_ceil(per)).collect();
    let run = |&b: &usize| f(b * per, ((b + 1) * per).min(rows));
    if parallel::num_threads() <= 1 || blocks.len() < 2 {
        blocks.iter().map(run).collect()
    } else {
        parallel::install(|| blocks.par_iter().map(run).collect())
    }
}

/// Same blocks over a mutable output of the same layout.
fn for_row_blocks_mut(out: &mut [f32], channels: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let per = rows_per_block(channels) * channels.max(1);
    if parallel::num_threads() <= 1 || out.len() <= per {
        out.chunks_mut(per).enumerate().for_each(|(b, chunk)| f(b * per / channels.max(1), chunk));
    } else {
        parallel::install(|| {
            out.par_chunks_mut(per).enumerate().for_each(|(b, chunk)| f(b * per / channels.max(1), chunk))
        });
    }
}

/// Compiles `body` once per instruction set (the loops are plain Rust over channel slices:
/// inside a `target_feature` function the compiler vectorises them with that ISA's registers).
macro_rules! with_isa {
    ($isa:expr, fn($($arg:ident : $ty:ty),*) $body:block) => {{
        #[inline(always)]
        fn body($($arg: $ty),*) $body
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512($($arg: $ty),*) { body($($arg),*) }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
        move |$($arg: $ty),*| match $isa {
            // SAFETY: `Isa::supported` only yields instruction sets this CPU has.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2($($arg),*) },
            _ => body($($arg),*),
        }
    }};
}

/// z = (x - mean) * scale + beta per channel over a block of rows, compiled for `isa`.
/// (Subtracting first keeps small-variance channels accurate: x * scale + offset would cancel
/// two large terms.)
/// Arguments: (x block, z block, mean, scale, beta).
#[allow(clippy::type_complexity)]
fn affine_rows(isa: Isa) -> impl Fn(&[f32], &mut [f32], &[f32], &[f32], &[f32]) + Copy + Sync {
    with_isa!(isa, fn(xb: &[f32], zb: &mut [f32], mean: &[f32], scale: &[f32], beta: &[f32]) {
        for (xr, zr) in xb.chunks_exact(scale.len()).zip(zb.chunks_exact_mut(scale.len())) {
            for ((((o, &v), &m), &a), &b) in zr.iter_mut().zip(xr).zip(mean).zip(scale).zip(beta) {
                *o = (v - m).mul_add(a, b);
            }
        }
    })
}

/// Per-channel mean and biased variance of (rows, channels) data (training-mode statistics).
pub fn batch_norm_stats(x: &[f32], channels: usize, mean: &mut [f32], var: &mut [f32]) {
    batch_norm_stats_with(Isa::best(), x, channels, mean, var)
}

pub fn batch_norm_stats_with(isa: Isa, x: &[f32], channels: usize, mean: &mut [f32], var: &mut [f32]) {
    let c = channels;
    assert!(c > 0 && x.len().is_multiple_of(c) && mean.len() == c && var.len() == c, "batch_norm_stats: shapes");
    let rows = x.len() / c;
    if rows == 0 {
        mean.fill(0.0);
        var.fill(0.0);
        return;
    }
    let shift = &x[..c];
    let isa = isa.supported();
    // sum and sum of squares of (x - shift) over rows of one block
    let block_sums = with_isa!(isa, fn(xb: &[f32], shift: &[f32], s: &mut [f64], q: &mut [f64]) {
        for row in xb.chunks_exact(shift.len()) {
            for (((s, q), &v), &m) in s.iter_mut().zip(q.iter_mut()).zip(row).zip(shift) {
                let d = (v - m) as f64;
                *s += d;
                *q += d * d;
            }
        }
    });
    let partial = map_row_blocks(x.len(), c, |r0, r1| {
        let (mut s, mut q) = (vec![0.0f64; c], vec![0.0f64; c]);
        block_sums(&x[r0 * c..r1 * c], shift, &mut s, &mut q);
        (s, q)
    });
    let (mut s, mut q) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (ps, pq) in &partial {
        for j in 0..c {
            s[j] += ps[j];
            q[j] += pq[j];
        }
    }
    let n = rows as f64;
    for j in 0..c {
        let m = s[j] / n;
        mean[j] = (shift[j] as f64 + m) as f32;
        var[j] = (q[j] / n - m * m).max(0.0) as f32;
    }
}

/// y = act((x - mean) * rstd * gamma + beta) over (rows, channels); `act` None is the identity.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward(
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    act: Option<Activation>,
    y: &mut [f32],
    channels: usize,
) {
    batch_norm_forward_with(Isa::best(), x, mean, rstd, gamma, beta, act, y, channels)
}

#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward_with(
    isa: Isa,
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    act: Option<Activation>,
    y: &mut [f32],
    channels: usize,
) {
    let c = channels;
    assert!(c > 0 && x.len() == y.len() && x.len().is_multiple_of(c), "batch_norm_forward: shapes");
    let scale: Vec<f32> = (0..c).map(|j| gamma[j] * rstd[j]).collect();
    let isa = isa.supported();
    let affine = affine_rows(isa);
    for_row_blocks_mut(y, c, |r0, yb| {
        let xb = &x[r0 * c..r0 * c + yb.len()];
        affine(xb, yb, mean, &scale, beta);
        if let Some(act) = act {
            activation_in_place(isa, act, yb, None);
        }
    });
}

/// z = act(z), or with `dy` z = dy * act'(z), through a small stack buffer (the activation
/// kernels take separate input and output slices).
fn activation_in_place(isa: Isa, act: Activation, z: &mut [f32], dy: Option<&[f32]>) {
    const CHUNK: usize = 1024;
    let mut tmp = [0.0f32; CHUNK];
    for (c, chunk) in z.chunks_mut(CHUNK).enumerate() {
        let t = &mut tmp[..chunk.len()];
        t.copy_from_slice(chunk);
        match dy {
            Some(dy) => activation_backward_with(isa, act, t, &dy[c * CHUNK..c * CHUNK + chunk.len()], chunk),
            None => activation_forward_with(isa, act, t, chunk),
        }
    }
}

/// Backward of [`batch_norm_forward`]. Writes dx; accumulates (+=) dgamma and dbeta.
/// `training` says whether mean / rstd were batch statistics (their dependence on x is
/// differentiated) or running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    act: Option<Activation>,
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    channels: usize,
    training: bool,
) {
    batch_norm_backward_with(Isa::best(), x, mean, rstd, gamma, beta, act, dy, dx, dgamma, dbeta, channels, training)
}

#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_with(
    isa: Isa,
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    act: Option<Activation>,
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    channels: usize,
    training: bool,
) {
    batch_norm_backward_synced_with(
        isa,
        x,
        mean,
        rstd,
        gamma,
        beta,
        act,
        dy,
        dx,
        dgamma,
        dbeta,
        channels,
        training,
        &mut |_| {},
    )
}

/// [`batch_norm_backward_with`] for batch statistics taken over several workers' batches
/// (synchronised batch norm). Between its two passes it hands `sync` the local per-channel sums
/// [sum dz (C), sum dz * n (C), rows (1)], which `sync` replaces with the sums over all workers;
/// dx then subtracts the global means. dgamma and dbeta stay local: the gradient all-reduce of
/// data-parallel training sums them with every other parameter gradient.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_synced_with(
    isa: Isa,
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    act: Option<Activation>,
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    channels: usize,
    training: bool,
    sync: &mut dyn FnMut(&mut [f64]),
) {
    let c = channels;
    assert!(
        c > 0 && x.len() == dy.len() && x.len() == dx.len() && x.len().is_multiple_of(c),
        "batch_norm_backward: shapes"
    );
    let rows = x.len() / c;
    let isa = isa.supported();
    let scale: Vec<f32> = (0..c).map(|j| gamma[j] * rstd[j]).collect();
    // Pass 1, per block: dz (into dx, as scratch) and the per-channel sums of dz and dz * n.
    let affine = affine_rows(isa);
    let sums = with_isa!(isa, fn(xb: &[f32], dzb: &[f32], mean: &[f32], rstd: &[f32], s: &mut [f64], sn: &mut [f64]) {
        for (xr, dzr) in xb.chunks_exact(mean.len()).zip(dzb.chunks_exact(mean.len())) {
            for (((((s, sn), &v), &g), &m), &r) in
                s.iter_mut().zip(sn.iter_mut()).zip(xr).zip(dzr).zip(mean).zip(rstd)
            {
                *s += g as f64;
                *sn += (g * ((v - m) * r)) as f64;
            }
        }
    });
    let per = rows_per_block(c) * c;
    let block_sums: Vec<(Vec<f64>, Vec<f64>)> = {
        let work = |(b, dzb): (usize, &mut [f32])| {
            let start = b * per;
            let (xb, dyb) = (&x[start..start + dzb.len()], &dy[start..start + dzb.len()]);
            match act {
                Some(act) => {
                    // z recomputed into the dz buffer, then dz = dy * act'(z) in place
                    affine(xb, dzb, mean, &scale, beta);
                    activation_in_place(isa, act, dzb, Some(dyb));
                }
                None => dzb.copy_from_slice(dyb),
            }
            let (mut s, mut sn) = (vec![0.0f64; c], vec![0.0f64; c]);
            sums(xb, dzb, mean, rstd, &mut s, &mut sn);
            (s, sn)
        };
        if parallel::num_threads() <= 1 || dx.len() <= per {
            dx.chunks_mut(per).enumerate().map(work).collect()
        } else {
            parallel::install(|| dx.par_chunks_mut(per).enumerate().map(work).collect())
        }
    };
    let (mut sum_dz, mut sum_dz_n) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (s, sn) in &block_sums {
        for j in 0..c {
            sum_dz[j] += s[j];
            sum_dz_n[j] += sn[j];
        }
    }
    for j in 0..c {
        dgamma[j] += sum_dz_n[j] as f32;
        dbeta[j] += sum_dz[j] as f32;
    }
    // Pass 2: dx = scale * (dz - mean(dz) - n * mean(dz n)), in place over dz.
    let mut m = rows as f64;
    if training {
        let mut shared: Vec<f64> = sum_dz.iter().chain(&sum_dz_n).copied().chain([m]).collect();
        sync(&mut shared);
        sum_dz.copy_from_slice(&shared[..c]);
        sum_dz_n.copy_from_slice(&shared[c..2 * c]);
        m = shared[2 * c];
    }
    let m = m.max(1.0);
    let (mean_dz, mean_dz_n): (Vec<f32>, Vec<f32>) = if training {
        (sum_dz.iter().map(|&s| (s / m) as f32).collect(), sum_dz_n.iter().map(|&s| (s / m) as f32).collect())
    } else {
        (vec![0.0; c], vec![0.0; c])
    };
    let finish = with_isa!(isa, fn(xb: &[f32], dxb: &mut [f32], mean: &[f32], rstd: &[f32], scale: &[f32], mdz: &[f32], mdzn: &[f32]) {
        let c = mean.len();
        for (xr, dr) in xb.chunks_exact(c).zip(dxb.chunks_exact_mut(c)) {
            for j in 0..c {
                let n = (xr[j] - mean[j]) * rstd[j];
                dr[j] = scale[j] * (dr[j] - mdz[j] - n * mdzn[j]);
            }
        }
    });
    for_row_blocks_mut(dx, c, |r0, dxb| {
        let xb = &x[r0 * c..r0 * c + dxb.len()];
        finish(xb, dxb, mean, rstd, &scale, &mean_dz, &mean_dz_n);
    });
}

/// The scalar definitions (f64 accumulation) the fast kernels are tested against.
pub mod reference {
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
        for ((xr, dyr), dxr) in
            x.chunks_exact(channels).zip(dy.chunks_exact(channels)).zip(dx.chunks_exact_mut(channels))
        {
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
        fn batch_norm_stats_are_per_channel() {
            // rows: (1, 10), (3, 30) -> means (2, 20), vars (1, 100)
            let x = [1.0, 10.0, 3.0, 30.0];
            let (mut m, mut v) = ([0.0; 2], [0.0; 2]);
            batch_norm_stats(&x, 2, &mut m, &mut v);
            assert_eq!(m, [2.0, 20.0]);
            assert_eq!(v, [1.0, 100.0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reference;
    use super::*;

    fn data(n: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                lo + (hi - lo) * (s as f32 / u32::MAX as f32)
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y} (scale {scale})");
        }
    }

    /// Reference activation via the scalar activation module.
    fn act_ref(act: Activation, z: f32) -> (f32, f32) {
        let h = 1e-3f64;
        let f = |v: f64| -> f64 {
            match act {
                Activation::Silu => v / (1.0 + (-v).exp()),
                Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
                _ => unreachable!(),
            }
        };
        let z = z as f64;
        (f(z) as f32, ((f(z + h) - f(z - h)) / (2.0 * h)) as f32)
    }

    #[test]
    fn stats_forward_and_backward_match_the_references_on_every_path() {
        for isa in Isa::available() {
            for &(rows, c) in &[(1usize, 3usize), (7, 1), (33, 17), (65, 31), (1000, 33), (3000, 16), (257, 127)] {
                // an offset mean exercises the shifted-data statistics
                let x = data(rows * c, (rows * 31 + c) as u32, 2.0, 5.0);
                let gamma = data(c, 7, 0.5, 1.5);
                let beta = data(c, 8, -0.5, 0.5);
                let dy = data(rows * c, 9, -1.0, 1.0);
                let (mut m, mut v) = (vec![0.0; c], vec![0.0; c]);
                let (mut mr, mut vr) = (vec![0.0; c], vec![0.0; c]);
                batch_norm_stats_with(isa, &x, c, &mut m, &mut v);
                reference::batch_norm_stats(&x, c, &mut mr, &mut vr);
                close(&m, &mr, 1e-6, "mean");
                close(&v, &vr, 1e-4, "var");
                let rstd: Vec<f32> = vr.iter().map(|v| 1.0 / (v + 1e-3).sqrt()).collect();
                for training in [true, false] {
                    // plain batch norm against the reference (y and dx start as NaN: they are
                    // overwritten, so callers may hand in recycled buffers; dgamma and dbeta
                    // accumulate)
                    let mut y = vec![f32::NAN; x.len()];
                    let mut yr = vec![0.0; x.len()];
                    batch_norm_forward_with(isa, &x, &mr, &rstd, &gamma, &beta, None, &mut y, c);
                    reference::batch_norm_apply(&x, &mr, &rstd, &gamma, &beta, &mut yr, c);
                    close(&y, &yr, 1e-5, "y");
                    let (mut dx, mut dg, mut db) = (vec![f32::NAN; x.len()], vec![0.0; c], vec![0.0; c]);
                    let (mut dxr, mut dgr, mut dbr) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
                    batch_norm_backward_with(
                        isa, &x, &mr, &rstd, &gamma, &beta, None, &dy, &mut dx, &mut dg, &mut db, c, training,
                    );
                    reference::batch_norm_backward(
                        &x, &mr, &rstd, &gamma, &dy, &mut dxr, &mut dgr, &mut dbr, c, training,
                    );
                    close(&dx, &dxr, 1e-4, "dx");
                    close(&dg, &dgr, 1e-4, "dgamma");
                    close(&db, &dbr, 1e-4, "dbeta");
                    // fused SiLU / sigmoid: the reference is BN, then the activation and its
                    // derivative in f64, then BN's backward with dz = dy * act'(z)
                    for act in [Activation::Silu, Activation::Sigmoid] {
                        let mut y = vec![f32::NAN; x.len()];
                        batch_norm_forward_with(isa, &x, &mr, &rstd, &gamma, &beta, Some(act), &mut y, c);
                        let (ya, da): (Vec<f32>, Vec<f32>) = yr.iter().map(|&z| act_ref(act, z)).unzip();
                        close(&y, &ya, 1e-5, "act(y)");
                        let dz: Vec<f32> = dy.iter().zip(&da).map(|(g, d)| g * d).collect();
                        let (mut dx, mut dg, mut db) = (vec![f32::NAN; x.len()], vec![0.0; c], vec![0.0; c]);
                        let (mut dxr, mut dgr, mut dbr) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
                        batch_norm_backward_with(
                            isa,
                            &x,
                            &mr,
                            &rstd,
                            &gamma,
                            &beta,
                            Some(act),
                            &dy,
                            &mut dx,
                            &mut dg,
                            &mut db,
                            c,
                            training,
                        );
                        reference::batch_norm_backward(
                            &x, &mr, &rstd, &gamma, &dz, &mut dxr, &mut dgr, &mut dbr, c, training,
                        );
                        close(&dx, &dxr, 1e-4, "fused dx");
                        close(&dg, &dgr, 1e-4, "fused dgamma");
                        close(&db, &dbr, 1e-4, "fused dbeta");
                    }
                }
            }
        }
    }

    #[test]
    fn statistics_are_bitwise_reproducible_across_threaded_runs() {
        let (rows, c) = (5000, 24);
        let x = data(rows * c, 3, -1.0, 1.0);
        let (mut m1, mut v1) = (vec![0.0; c], vec![0.0; c]);
        let blocks = map_row_blocks(x.len(), c, |r0, r1| r1 - r0);
        assert!(blocks.len() > 2, "the test must span several blocks");
        batch_norm_stats(&x, c, &mut m1, &mut v1);
        // blocks are fixed by size, not by thread count, and combined in block order, so
        // repeated (threaded) runs give bit-identical statistics
        for _ in 0..5 {
            let (mut m, mut v) = (vec![0.0; c], vec![0.0; c]);
            batch_norm_stats(&x, c, &mut m, &mut v);
            assert_eq!((&m, &v), (&m1, &v1));
        }
    }
}
