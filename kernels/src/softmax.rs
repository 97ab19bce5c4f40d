//! Row-wise softmax and log-softmax over the last axis, forward and backward, with an optional
//! scale and additive mask as attention uses them: y = softmax(scale * x + mask).
//!
//! Rows are max-subtracted before exponentiation, so large logits never overflow. The fast
//! kernels dispatch on [`Isa`] (AVX-512 and AVX2 instantiate one vector body written over
//! `F32Vec`; the portable path is the same algorithm on scalars) and split rows over the kernel
//! pool when the work is large enough to pay for it. [`reference`] holds the scalar definitions
//! the tests compare them with. Buffers are (rows, cols) row-major.

use crate::parallel::for_row_blocks;
use crate::simd::Isa;
use crate::vmath;

/// An additive mask shared by groups of rows: row r adds `values[(r / rows_per_mask) * cols ..]`.
/// For attention scores (B, H, Tq, Tk) with a (B, Tk) padding mask, rows_per_mask = H * Tq.
#[derive(Clone, Copy, Debug)]
pub struct RowMask<'a> {
    pub values: &'a [f32],
    pub rows_per_mask: usize,
}

/// y = softmax(scale * x + mask) over rows of `cols`.
pub fn softmax_forward(x: &[f32], y: &mut [f32], cols: usize, scale: f32, mask: Option<RowMask>) {
    softmax_forward_with(Isa::best(), x, y, cols, scale, mask, false)
}

/// y = log_softmax(scale * x + mask) over rows of `cols`.
pub fn log_softmax_forward(x: &[f32], y: &mut [f32], cols: usize, scale: f32, mask: Option<RowMask>) {
    softmax_forward_with(Isa::best(), x, y, cols, scale, mask, true)
}

/// Shared implementation; `log` selects log-softmax.
pub fn softmax_forward_with(
    isa: Isa,
    x: &[f32],
    y: &mut [f32],
    cols: usize,
    scale: f32,
    mask: Option<RowMask>,
    log: bool,
) {
    assert_eq!(x.len(), y.len(), "softmax: x and y lengths differ");
    let isa = isa.supported();
    for_row_blocks(y, cols, |first, out| {
        for (r, yr) in out.chunks_exact_mut(cols).enumerate() {
            let row = first + r;
            let xr = &x[row * cols..(row + 1) * cols];
            let mr = mask.map(|m| {
                let g = row / m.rows_per_mask.max(1);
                &m.values[g * cols..(g + 1) * cols]
            });
            softmax_row(isa, xr, mr, yr, scale, log);
        }
    });
}

/// One row of softmax or log-softmax on `isa` (already capped to what the CPU has).
fn softmax_row(isa: Isa, x: &[f32], mask: Option<&[f32]>, y: &mut [f32], scale: f32, log: bool) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` was checked against the CPU by `Isa::supported`.
        Isa::Avx512 => unsafe { x86::softmax_row_avx512(x, mask, y, scale, log) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::softmax_row_avx2(x, mask, y, scale, log) },
        _ => softmax_row_portable(x, mask, y, scale, log),
    }
}

/// One row of the softmax (or log-softmax) backward from the output.
fn softmax_backward_row(isa: Isa, y: &[f32], dy: &[f32], dx: &mut [f32], scale: f32, log: bool) {
    if log {
        let s = crate::reduce::sum_with(isa, dy);
        for ((o, &yv), &g) in dx.iter_mut().zip(y).zip(dy) {
            *o = scale * (g - vmath::exp(yv) * s);
        }
    } else {
        let d = crate::reduce::dot_with(isa, y, dy);
        for ((o, &yv), &g) in dx.iter_mut().zip(y).zip(dy) {
            *o = scale * yv * (g - d);
        }
    }
}

/// Softmax of every row of `x` (rows of `cols`) on the calling thread, all rows sharing one
/// additive `mask` row: y = softmax(scale * x + mask). Attention calls this from inside its own
/// parallel loop over (batch, head) pairs, where a nested thread split would only add overhead.
pub fn softmax_rows_serial(isa: Isa, x: &[f32], y: &mut [f32], cols: usize, scale: f32, mask: Option<&[f32]>) {
    assert_eq!(x.len(), y.len(), "softmax: x and y lengths differ");
    assert!(mask.is_none_or(|m| m.len() == cols), "softmax: mask row length differs from cols");
    let isa = isa.supported();
    for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
        softmax_row(isa, xr, mask, yr, scale, false);
    }
}

/// Softmax backward from the output on the calling thread: dx = scale * y * (dy - sum(dy * y))
/// per row (the serial partner of [`softmax_rows_serial`]).
pub fn softmax_backward_rows_serial(isa: Isa, y: &[f32], dy: &[f32], dx: &mut [f32], cols: usize, scale: f32) {
    assert!(y.len() == dy.len() && y.len() == dx.len(), "softmax_backward: lengths differ");
    let isa = isa.supported();
    for ((yr, dyr), dxr) in y.chunks_exact(cols).zip(dy.chunks_exact(cols)).zip(dx.chunks_exact_mut(cols)) {
        softmax_backward_row(isa, yr, dyr, dxr, scale, false);
    }
}

fn softmax_row_portable(x: &[f32], mask: Option<&[f32]>, y: &mut [f32], scale: f32, log: bool) {
    let mut max = f32::NEG_INFINITY;
    for (j, (o, &v)) in y.iter_mut().zip(x).enumerate() {
        *o = v * scale + mask.map_or(0.0, |m| m[j]);
        max = max.max(*o);
    }
    if max == f32::NEG_INFINITY {
        max = 0.0; // fully masked row: avoid inf - inf
    }
    let mut sum = 0.0f32;
    for o in y.iter_mut() {
        let e = vmath::exp(*o - max);
        sum += e;
        if !log {
            *o = e;
        }
    }
    if log {
        let shift = max + sum.ln();
        y.iter_mut().for_each(|o| *o -= shift);
    } else {
        let inv = 1.0 / sum;
        y.iter_mut().for_each(|o| *o *= inv);
    }
}

/// Softmax backward from the output: dx = scale * y * (dy - sum(dy * y)).
pub fn softmax_backward(y: &[f32], dy: &[f32], dx: &mut [f32], cols: usize, scale: f32) {
    softmax_backward_with(Isa::best(), y, dy, dx, cols, scale, false)
}

/// Log-softmax backward from the output: dx = scale * (dy - exp(y) * sum(dy)).
pub fn log_softmax_backward(y: &[f32], dy: &[f32], dx: &mut [f32], cols: usize, scale: f32) {
    softmax_backward_with(Isa::best(), y, dy, dx, cols, scale, true)
}

pub fn softmax_backward_with(isa: Isa, y: &[f32], dy: &[f32], dx: &mut [f32], cols: usize, scale: f32, log: bool) {
    assert!(y.len() == dy.len() && y.len() == dx.len(), "softmax_backward: lengths differ");
    let isa = isa.supported();
    for_row_blocks(dx, cols, |first, out| {
        for (r, dxr) in out.chunks_exact_mut(cols).enumerate() {
            let row = first + r;
            let (yr, dyr) = (&y[row * cols..(row + 1) * cols], &dy[row * cols..(row + 1) * cols]);
            softmax_backward_row(isa, yr, dyr, dxr, scale, log);
        }
    });
}

/// The vectorised row, written once over [`F32Vec`](crate::vec::F32Vec) and instantiated per
/// instruction set.
mod vector {
    use crate::vec::{self as v, F32Vec};

    #[inline(always)]
    pub unsafe fn softmax_row<V: F32Vec>(x: &[f32], mask: Option<&[f32]>, y: &mut [f32], scale: f32, log: bool) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let n = x.len();
            let w = V::LANES;
            let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
            let sv = V::splat(scale);
            // pass 1: max of z = scale * x + mask (reads x only)
            let z_at = |i: usize| -> V {
                if let Some(m) = mask {
                    V::load(xp.add(i)).mul(sv).add(V::load(m.as_ptr().add(i)))
                } else {
                    V::load(xp.add(i)).mul(sv)
                }
            };
            let z_scalar = |i: usize| -> f32 { *xp.add(i) * scale + mask.map_or(0.0, |m| m[i]) };
            let mut maxv = V::splat(f32::NEG_INFINITY);
            let mut i = 0;
            while i + w <= n {
                maxv = maxv.max(z_at(i));
                i += w;
            }
            let mut max = maxv.reduce_max();
            while i < n {
                max = max.max(z_scalar(i));
                i += 1;
            }
            if max == f32::NEG_INFINITY {
                max = 0.0; // fully masked row
            }
            // pass 2: e = exp(z - max), summed; stored for softmax (log-softmax only needs the sum)
            let mv = V::splat(max);
            let mut sumv = V::splat(0.0);
            let mut i = 0;
            while i + w <= n {
                let e = v::exp(z_at(i).sub(mv));
                if !log {
                    e.store(yp.add(i));
                }
                sumv = sumv.add(e);
                i += w;
            }
            let mut sum = sumv.reduce_sum();
            while i < n {
                let e = crate::vmath::exp(z_scalar(i) - max);
                if !log {
                    *yp.add(i) = e;
                }
                sum += e;
                i += 1;
            }
            // pass 3: softmax scales the stored exponentials (still in cache); log-softmax writes
            // z - max - ln(sum) straight from x
            let mut i = 0;
            if log {
                let shift = max + sum.ln();
                let shv = V::splat(shift);
                while i + w <= n {
                    z_at(i).sub(shv).store(yp.add(i));
                    i += w;
                }
                while i < n {
                    *yp.add(i) = z_scalar(i) - shift;
                    i += 1;
                }
            } else {
                let inv = 1.0 / sum;
                let iv = V::splat(inv);
                while i + w <= n {
                    V::load(yp.add(i)).mul(iv).store(yp.add(i));
                    i += w;
                }
                while i < n {
                    *yp.add(i) *= inv;
                    i += 1;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::vector;
    use crate::vec::x86::{Avx2, Avx512};

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_row_avx2(x: &[f32], mask: Option<&[f32]>, y: &mut [f32], scale: f32, log: bool) {
        // SAFETY: callers guarantee a CPU with avx2,fma (they dispatch on `Isa::supported()`)
        // and pointers valid for what this reads and writes.
        unsafe { vector::softmax_row::<Avx2>(x, mask, y, scale, log) }
    }
    #[target_feature(enable = "avx512f")]
    pub unsafe fn softmax_row_avx512(x: &[f32], mask: Option<&[f32]>, y: &mut [f32], scale: f32, log: bool) {
        // SAFETY: callers guarantee a CPU with avx512f (they dispatch on `Isa::supported()`)
        // and pointers valid for what this reads and writes.
        unsafe { vector::softmax_row::<Avx512>(x, mask, y, scale, log) }
    }
}

/// The scalar definitions (f64 accumulation) the fast kernels are tested against.
pub mod reference {
    /// y = softmax(x) per row. x, y: (rows, cols).
    pub fn softmax_rows(x: &[f32], y: &mut [f32], cols: usize) {
        if cols == 0 {
            return;
        }
        for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
            let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f64;
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = (v - max).exp();
                sum += *o as f64;
            }
            let inv = (1.0 / sum) as f32;
            yr.iter_mut().for_each(|o| *o *= inv);
        }
    }

    /// y = log_softmax(x) per row.
    pub fn log_softmax_rows(x: &[f32], y: &mut [f32], cols: usize) {
        if cols == 0 {
            return;
        }
        for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
            let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = xr.iter().map(|&v| ((v - max) as f64).exp()).sum();
            // (v - max) - ln(sum) keeps precision when the logits are large.
            let log_sum = sum.ln() as f32;
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = (v - max) - log_sum;
            }
        }
    }

    /// Softmax backward from its output: dx = y * (dy - sum(dy * y)).
    pub fn softmax_rows_backward(y: &[f32], dy: &[f32], dx: &mut [f32], cols: usize) {
        if cols == 0 {
            return;
        }
        for ((yr, dyr), dxr) in y.chunks_exact(cols).zip(dy.chunks_exact(cols)).zip(dx.chunks_exact_mut(cols)) {
            let dot: f64 = yr.iter().zip(dyr).map(|(&a, &b)| a as f64 * b as f64).sum();
            let dot = dot as f32;
            for ((o, &yv), &g) in dxr.iter_mut().zip(yr).zip(dyr) {
                *o = yv * (g - dot);
            }
        }
    }

    /// Log-softmax backward from its output: dx = dy - exp(y) * sum(dy).
    pub fn log_softmax_rows_backward(y: &[f32], dy: &[f32], dx: &mut [f32], cols: usize) {
        if cols == 0 {
            return;
        }
        for ((yr, dyr), dxr) in y.chunks_exact(cols).zip(dy.chunks_exact(cols)).zip(dx.chunks_exact_mut(cols)) {
            let sum: f64 = dyr.iter().map(|&g| g as f64).sum();
            let sum = sum as f32;
            for ((o, &yv), &g) in dxr.iter_mut().zip(yr).zip(dyr) {
                *o = g - yv.exp() * sum;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reference::*;
    use super::*;
    use crate::test_data::{close, data, SIZES};

    #[test]
    fn softmax_is_stable_and_normalised() {
        let x = [1000.0, 1001.0, 999.0, -5.0, 0.0, 5.0];
        let mut y = [0.0; 6];
        softmax_rows(&x, &mut y, 3);
        assert!((y[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((y[1] - 0.665_240_9).abs() < 1e-6);
        let mut ly = [0.0; 6];
        log_softmax_rows(&x, &mut ly, 3);
        for i in 0..6 {
            assert!((ly[i].exp() - y[i]).abs() < 1e-6);
        }
    }

    #[test]
    fn softmax_paths_match_reference_on_awkward_sizes() {
        for isa in Isa::available() {
            for &cols in &SIZES {
                let rows = 3;
                let x = data(rows * cols, cols as u32, 8.0);
                let mask: Vec<f32> = (0..cols).map(|j| if j % 5 == 4 { -1e9 } else { 0.0 }).collect();
                let scale = 0.7;
                // reference on pre-scaled, pre-masked input
                let z: Vec<f32> = x.iter().enumerate().map(|(i, &v)| v * scale + mask[i % cols]).collect();
                for log in [false, true] {
                    let mut want = vec![0.0; z.len()];
                    if log {
                        log_softmax_rows(&z, &mut want, cols);
                    } else {
                        softmax_rows(&z, &mut want, cols);
                    }
                    let mut got = vec![0.0; z.len()];
                    softmax_forward_with(
                        isa,
                        &x,
                        &mut got,
                        cols,
                        scale,
                        Some(RowMask { values: &mask, rows_per_mask: rows }),
                        log,
                    );
                    let finite: Vec<(f32, f32)> =
                        got.iter().zip(&want).filter(|(_, w)| w.abs() < 1e8).map(|(a, b)| (*a, *b)).collect();
                    let (g, w): (Vec<f32>, Vec<f32>) = finite.into_iter().unzip();
                    close(&format!("{isa:?} log={log} cols={cols}"), &g, &w, 2e-6);
                    // backward
                    let dy = data(z.len(), 7, 1.0);
                    let mut want_dx = vec![0.0; z.len()];
                    if log {
                        log_softmax_rows_backward(&want, &dy, &mut want_dx, cols);
                    } else {
                        softmax_rows_backward(&want, &dy, &mut want_dx, cols);
                    }
                    want_dx.iter_mut().for_each(|v| *v *= scale);
                    let mut got_dx = vec![0.0; z.len()];
                    softmax_backward_with(isa, &got, &dy, &mut got_dx, cols, scale, log);
                    if !log {
                        close(&format!("{isa:?} backward cols={cols}"), &got_dx, &want_dx, 2e-6);
                    }
                }
            }
        }
    }

    #[test]
    fn threaded_rows_match_single_threaded_bitwise() {
        let cols = 1000;
        let x = data(200 * cols, 11, 4.0);
        let mut one = vec![0.0; x.len()];
        let mut two = vec![0.0; x.len()];
        crate::parallel::set_num_threads(1);
        softmax_forward(&x, &mut one, cols, 1.0, None);
        crate::parallel::set_num_threads(2);
        softmax_forward(&x, &mut two, cols, 1.0, None);
        crate::parallel::set_num_threads(0);
        assert_eq!(one, two);
    }
}
