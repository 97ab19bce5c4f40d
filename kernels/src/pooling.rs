//! Global average pooling over the pixels of NHWC images and its gradient, and the per-image
//! channel scale that squeeze-and-excitation applies with the pooled result; each beside its
//! scalar reference.

use rayon::prelude::*;

use crate::parallel;

/// Global average pooling, scalar reference: y (N, C) = mean over the `pixels` rows of x (N, pixels, C).
pub fn global_avg_pool_forward_reference(x: &[f32], y: &mut [f32], batch: usize, pixels: usize, c: usize) {
    let inv = 1.0 / pixels.max(1) as f32;
    for n in 0..batch {
        let yr = &mut y[n * c..(n + 1) * c];
        yr.fill(0.0);
        for p in 0..pixels {
            let xr = &x[(n * pixels + p) * c..(n * pixels + p + 1) * c];
            for ch in 0..c {
                yr[ch] += xr[ch];
            }
        }
        yr.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Pooling backward, scalar reference: every pixel of image n gets dy[n] / pixels.
pub fn global_avg_pool_backward_reference(dy: &[f32], dx: &mut [f32], batch: usize, pixels: usize, c: usize) {
    let inv = 1.0 / pixels.max(1) as f32;
    for n in 0..batch {
        for p in 0..pixels {
            for ch in 0..c {
                dx[(n * pixels + p) * c + ch] = dy[n * c + ch] * inv;
            }
        }
    }
}

/// Runs `f(image, out_block)` over per-image blocks of `out`, threaded over images.
fn per_image(out: &mut [f32], per: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if per == 0 {
        return;
    }
    if parallel::num_threads() <= 1 || out.len() < 1 << 14 {
        out.chunks_mut(per).enumerate().for_each(|(n, b)| f(n, b));
    } else {
        parallel::install(|| out.par_chunks_mut(per).enumerate().for_each(|(n, b)| f(n, b)));
    }
}

/// Global average pooling (N, pixels, C) -> (N, C), threaded over images.
pub fn global_avg_pool_forward(x: &[f32], y: &mut [f32], batch: usize, pixels: usize, c: usize) {
    let inv = 1.0 / pixels.max(1) as f32;
    assert!(x.len() == batch * pixels * c && y.len() == batch * c, "global_avg_pool: shapes");
    // threads split the (small) output by image; each reads its own image's rows
    per_image(y, c, |n, yr| {
        yr.fill(0.0);
        for xr in x[n * pixels * c..(n + 1) * pixels * c].chunks_exact(c.max(1)) {
            yr.iter_mut().zip(xr).for_each(|(a, &v)| *a += v);
        }
        yr.iter_mut().for_each(|v| *v *= inv);
    });
}

/// Pooling backward, threaded over images: dx[n, p, :] = dy[n, :] / pixels.
pub fn global_avg_pool_backward(dy: &[f32], dx: &mut [f32], batch: usize, pixels: usize, c: usize) {
    let inv = 1.0 / pixels.max(1) as f32;
    assert!(dx.len() == batch * pixels * c && dy.len() == batch * c, "global_avg_pool_backward: shapes");
    per_image(dx, pixels * c, |n, dxn| {
        let g = &dy[n * c..(n + 1) * c];
        for row in dxn.chunks_exact_mut(c.max(1)) {
            row.iter_mut().zip(g).for_each(|(o, &v)| *o = v * inv);
        }
    });
}

/// Squeeze-excite channel scale, scalar reference: y[n, p, c] = x[n, p, c] * s[n, c].
pub fn channel_scale_forward_reference(x: &[f32], s: &[f32], y: &mut [f32], batch: usize, pixels: usize, c: usize) {
    for n in 0..batch {
        for p in 0..pixels {
            for ch in 0..c {
                let i = (n * pixels + p) * c + ch;
                y[i] = x[i] * s[n * c + ch];
            }
        }
    }
}

/// Channel scale backward, scalar reference: dx = dy * s[n, c], ds[n, c] = sum_p dy * x.
#[allow(clippy::too_many_arguments)]
pub fn channel_scale_backward_reference(
    x: &[f32],
    s: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    ds: &mut [f32],
    batch: usize,
    pixels: usize,
    c: usize,
) {
    ds.fill(0.0);
    for n in 0..batch {
        for p in 0..pixels {
            for ch in 0..c {
                let i = (n * pixels + p) * c + ch;
                dx[i] = dy[i] * s[n * c + ch];
                ds[n * c + ch] += dy[i] * x[i];
            }
        }
    }
}

/// Channel scale, threaded over images.
pub fn channel_scale_forward(x: &[f32], s: &[f32], y: &mut [f32], batch: usize, pixels: usize, c: usize) {
    assert!(x.len() == batch * pixels * c && y.len() == x.len() && s.len() == batch * c, "channel_scale: shapes");
    per_image(y, pixels * c, |n, yn| {
        let sn = &s[n * c..(n + 1) * c];
        for (yr, xr) in yn.chunks_exact_mut(c.max(1)).zip(x[n * pixels * c..].chunks_exact(c.max(1))) {
            yr.iter_mut().zip(xr).zip(sn).for_each(|((o, &v), &k)| *o = v * k);
        }
    });
}

/// Channel scale backward, threaded over images (one pass: dx and ds together).
#[allow(clippy::too_many_arguments)]
pub fn channel_scale_backward(
    x: &[f32],
    s: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    ds: &mut [f32],
    batch: usize,
    pixels: usize,
    c: usize,
) {
    assert!(
        x.len() == batch * pixels * c && dy.len() == x.len() && dx.len() == x.len() && ds.len() == batch * c,
        "channel_scale_backward: shapes"
    );
    let per = pixels * c;
    if per == 0 {
        ds.fill(0.0);
        return;
    }
    let work = |(n, (dxn, dsn)): (usize, (&mut [f32], &mut [f32]))| {
        let sn = &s[n * c..(n + 1) * c];
        dsn.fill(0.0);
        let (xn, gn) = (&x[n * per..(n + 1) * per], &dy[n * per..(n + 1) * per]);
        for ((dr, xr), gr) in dxn.chunks_exact_mut(c).zip(xn.chunks_exact(c)).zip(gn.chunks_exact(c)) {
            for ((((o, &v), &g), &k), a) in dr.iter_mut().zip(xr).zip(gr).zip(sn).zip(dsn.iter_mut()) {
                *o = g * k;
                *a += g * v;
            }
        }
    };
    if parallel::num_threads() <= 1 || dx.len() < 1 << 14 {
        dx.chunks_mut(per).zip(ds.chunks_mut(c)).enumerate().for_each(work);
    } else {
        parallel::install(|| dx.par_chunks_mut(per).zip(ds.par_chunks_mut(c)).enumerate().for_each(work));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_and_channel_scale_match_their_references() {
        let vals = |n: usize, seed: usize| -> Vec<f32> {
            (0..n).map(|i| (((i + seed) * 7919) % 2003) as f32 / 1001.0 - 1.0).collect()
        };
        // odd sizes; the last case is big enough to take the threaded path
        for &(batch, pixels, c) in &[(1, 1, 1), (3, 7, 5), (2, 17, 33), (5, 63, 65), (16, 64, 96)] {
            let (x, s, dy4, dy2) =
                (vals(batch * pixels * c, 1), vals(batch * c, 2), vals(batch * pixels * c, 3), vals(batch * c, 4));
            let (mut a, mut b) = (vec![0.0; batch * c], vec![0.0; batch * c]);
            global_avg_pool_forward(&x, &mut a, batch, pixels, c);
            global_avg_pool_forward_reference(&x, &mut b, batch, pixels, c);
            assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5));
            // The fast forms overwrite their outputs (callers hand them recycled buffers): they
            // start from NaN here.
            let (mut a, mut b) = (vec![f32::NAN; x.len()], vec![0.0; x.len()]);
            global_avg_pool_backward(&dy2, &mut a, batch, pixels, c);
            global_avg_pool_backward_reference(&dy2, &mut b, batch, pixels, c);
            assert_eq!(a, b);
            a.fill(f32::NAN);
            channel_scale_forward(&x, &s, &mut a, batch, pixels, c);
            channel_scale_forward_reference(&x, &s, &mut b, batch, pixels, c);
            assert_eq!(a, b);
            a.fill(f32::NAN);
            let (mut da, mut db) = (vec![f32::NAN; batch * c], vec![2.0; batch * c]);
            channel_scale_backward(&x, &s, &dy4, &mut a, &mut da, batch, pixels, c);
            channel_scale_backward_reference(&x, &s, &dy4, &mut b, &mut db, batch, pixels, c);
            assert_eq!(a, b);
            assert!(da.iter().zip(&db).all(|(p, q)| (p - q).abs() < 1e-4), "{batch} {pixels} {c}");
        }
    }
}
