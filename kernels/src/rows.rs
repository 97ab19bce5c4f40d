//! Fast row-wise and elementwise kernels, forward and backward: softmax and log-softmax (with
//! an optional scale and additive mask, as attention uses them), layer norm, GELU (erf and tanh
//! forms), SiLU, sigmoid and exp.
//!
//! Each kernel dispatches on [`Isa`] (AVX2+FMA intrinsics, or the portable scalar form of the same
//! algorithm; AVX-512 machines run the AVX2 form, which already saturates memory bandwidth for
//! these) and splits rows over the kernel thread pool when the work is large enough to pay
//! for it. Scalar references: `softmax.rs`, `norm.rs`, `activation.rs`; tests compare.

use rayon::prelude::*;

use crate::parallel;
use crate::simd::Isa;
use crate::vmath;

/// Below this many elements a kernel stays on the calling thread.
const PARALLEL_MIN: usize = 1 << 15;

/// An additive mask shared by groups of rows: row r adds `values[(r / rows_per_mask) * cols ..]`.
/// For attention scores (B, H, Tq, Tk) with a (B, Tk) padding mask, rows_per_mask = H * Tq.
#[derive(Clone, Copy, Debug)]
pub struct RowMask<'a> {
    pub values: &'a [f32],
    pub rows_per_mask: usize,
}

/// Runs `f(first_row, rows_out)` over row blocks of `out` (rows of `cols`), in parallel when large.
fn for_row_blocks(out: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if cols == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / cols;
    let threads = parallel::num_threads();
    if threads <= 1 || out.len() < PARALLEL_MIN || rows < 2 {
        f(0, out);
        return;
    }
    let rows_per_block = rows.div_ceil(threads * 4).max(1);
    parallel::install(|| {
        out.par_chunks_mut(rows_per_block * cols).enumerate().for_each(|(i, chunk)| f(i * rows_per_block, chunk));
    });
}

/// Elementwise map over (x -> out), in parallel when large.
fn for_elem_blocks(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let threads = parallel::num_threads();
    if threads <= 1 || out.len() < PARALLEL_MIN {
        f(0, out);
        return;
    }
    let block = out.len().div_ceil(threads * 4).next_multiple_of(64);
    parallel::install(|| {
        out.par_chunks_mut(block).enumerate().for_each(|(i, chunk)| f(i * block, chunk));
    });
}

// ---------------------------------------------------------------------------------------------
// Softmax / log-softmax
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Layer norm
// ---------------------------------------------------------------------------------------------

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
            Isa::Avx512 => unsafe { x86::row_stats_avx512(xr, eps) },
            #[cfg(target_arch = "x86_64")]
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
                Isa::Avx512 => unsafe { x86::normalise_row_avx512(xr, gamma, beta, yr, m, s) },
                #[cfg(target_arch = "x86_64")]
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

// ---------------------------------------------------------------------------------------------
// Elementwise activations
// ---------------------------------------------------------------------------------------------

/// Outputs at least this large are written with non-temporal stores: they cannot stay in
/// cache for their consumer anyway, and streaming skips reading every line before writing it
/// (a third of the memory traffic of a map).
const STREAM_MIN_BYTES: usize = 16 << 20;

/// Which activation an elementwise kernel computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    GeluErf,
    GeluTanh,
    Silu,
    Sigmoid,
    Exp,
}

const GELU_K: f32 = 0.797_884_6; // sqrt(2 / pi)
const GELU_C: f32 = 0.044_715;

fn activation_scalar(act: Activation, x: f32) -> f32 {
    match act {
        Activation::GeluErf => 0.5 * x * (1.0 + vmath::erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        // 0.5 x (1 + tanh z) = x * sigmoid(2 z)
        Activation::GeluTanh => x / (1.0 + vmath::exp(-2.0 * GELU_K * (x + GELU_C * x * x * x))),
        Activation::Silu => x / (1.0 + vmath::exp(-x)),
        Activation::Sigmoid => 1.0 / (1.0 + vmath::exp(-x)),
        Activation::Exp => vmath::exp(x),
    }
}

fn activation_grad_scalar(act: Activation, x: f32) -> f32 {
    match act {
        Activation::GeluErf => {
            let cdf = 0.5 * (1.0 + vmath::erf(x * std::f32::consts::FRAC_1_SQRT_2));
            cdf + x * 0.398_942_3 * vmath::exp(-0.5 * x * x)
        }
        Activation::GeluTanh => {
            let z = GELU_K * (x + GELU_C * x * x * x);
            let s = 1.0 / (1.0 + vmath::exp(-2.0 * z)); // = (1 + tanh z) / 2
            let dz = GELU_K * (1.0 + 3.0 * GELU_C * x * x);
            // d/dx [x s(2z)] = s + x * 2 s (1 - s) dz
            s + 2.0 * x * s * (1.0 - s) * dz
        }
        Activation::Silu => {
            let s = 1.0 / (1.0 + vmath::exp(-x));
            s * (1.0 + x * (1.0 - s))
        }
        Activation::Sigmoid => {
            let s = 1.0 / (1.0 + vmath::exp(-x));
            s * (1.0 - s)
        }
        Activation::Exp => vmath::exp(x),
    }
}

/// y = act(x).
pub fn activation_forward(act: Activation, x: &[f32], y: &mut [f32]) {
    activation_forward_with(Isa::best(), act, x, y)
}

pub fn activation_forward_with(isa: Isa, act: Activation, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "activation: lengths differ");
    let isa = isa.supported();
    let stream = y.len() * 4 >= STREAM_MIN_BYTES;
    for_elem_blocks(y, |start, out| {
        let xs = &x[start..start + out.len()];
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::activation_avx512(act, xs, None, out, stream) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::activation_avx2(act, xs, None, out, stream) },
            _ => xs.iter().zip(out.iter_mut()).for_each(|(&v, o)| *o = activation_scalar(act, v)),
        }
    });
}

/// dx = dy * act'(x).
pub fn activation_backward(act: Activation, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    activation_backward_with(Isa::best(), act, x, dy, dx)
}

pub fn activation_backward_with(isa: Isa, act: Activation, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert!(x.len() == dy.len() && x.len() == dx.len(), "activation_backward: lengths differ");
    let isa = isa.supported();
    let stream = dx.len() * 4 >= STREAM_MIN_BYTES;
    for_elem_blocks(dx, |start, out| {
        let xs = &x[start..start + out.len()];
        let gs = &dy[start..start + out.len()];
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::activation_avx512(act, xs, Some(gs), out, stream) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::activation_avx2(act, xs, Some(gs), out, stream) },
            _ => {
                for ((o, &v), &g) in out.iter_mut().zip(xs).zip(gs) {
                    *o = g * activation_grad_scalar(act, v);
                }
            }
        }
    });
}

/// The vectorised bodies, written once over [`F32Vec`] and instantiated per instruction set.
mod generic {
    use super::{activation_grad_scalar, activation_scalar, Activation, GELU_C, GELU_K};
    use crate::vec::{self as v, F32Vec};

    #[inline(always)]
    pub unsafe fn softmax_row<V: F32Vec>(x: &[f32], mask: Option<&[f32]>, y: &mut [f32], scale: f32, log: bool) {
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

    #[inline(always)]
    unsafe fn activation_vec<V: F32Vec>(act: Activation, grad: bool, x: V) -> V {
        let one = V::splat(1.0);
        let half = V::splat(0.5);
        match (act, grad) {
            (Activation::GeluErf, false) => {
                let e = v::erf(x.mul(V::splat(std::f32::consts::FRAC_1_SQRT_2)));
                half.mul(x).mul(one.add(e))
            }
            (Activation::GeluErf, true) => {
                let e = v::erf(x.mul(V::splat(std::f32::consts::FRAC_1_SQRT_2)));
                let cdf = half.mul(one.add(e));
                let pdf = V::splat(0.398_942_3).mul(v::exp(V::splat(-0.5).mul(x.mul(x))));
                x.mul_add(pdf, cdf)
            }
            (Activation::GeluTanh, g) => {
                let x3 = x.mul(x).mul(x);
                let z = V::splat(GELU_K).mul(V::splat(GELU_C).mul_add(x3, x));
                let (s, one_minus_s) = v::sigmoid_pair(z.add(z));
                if !g {
                    x.mul(s)
                } else {
                    let dz = V::splat(GELU_K).mul(V::splat(3.0 * GELU_C).mul_add(x.mul(x), one));
                    s.add(x.add(x).mul(s.mul(one_minus_s)).mul(dz))
                }
            }
            (Activation::Silu, false) => x.mul(v::sigmoid(x)),
            (Activation::Silu, true) => {
                let (s, one_minus_s) = v::sigmoid_pair(x);
                s.mul(x.mul_add(one_minus_s, one))
            }
            (Activation::Sigmoid, false) => v::sigmoid(x),
            (Activation::Sigmoid, true) => {
                let (s, one_minus_s) = v::sigmoid_pair(x);
                s.mul(one_minus_s)
            }
            (Activation::Exp, _) => v::exp(x),
        }
    }

    /// out = act(x) (or act'(x) * dy when `dy` is given).
    #[inline(always)]
    pub unsafe fn activation<V: F32Vec>(act: Activation, x: &[f32], dy: Option<&[f32]>, out: &mut [f32], stream: bool) {
        // One monomorphised loop per (activation, direction): with the choice made inside the
        // loop, every vector went through a jump table and the approximations' dependency
        // chains could not overlap (GELU ran at ~58 cycles per 16 floats in cache). Const
        // parameters, not a closure: a closure is compiled without the caller's target
        // features, and every vector operation in it became a function call.
        macro_rules! dispatch {
            ($x:expr, $dy:expr, $out:expr, $stream:expr; $($a:ident = $k:literal),*) => {
                match (act, $dy.is_some()) {
                    $(
                        (Activation::$a, false) => activation_loop::<V, $k, false>($x, $dy, $out, $stream),
                        (Activation::$a, true) => activation_loop::<V, $k, true>($x, $dy, $out, $stream),
                    )*
                }
            };
        }
        macro_rules! run {
            ($x:expr, $dy:expr, $out:expr, $stream:expr) => {
                dispatch!($x, $dy, $out, $stream; GeluErf = 0, GeluTanh = 1, Silu = 2, Sigmoid = 3, Exp = 4)
            };
        }
        let n = x.len();
        let w = V::LANES;
        // Streaming stores need aligned addresses. The first vector is written with a plain
        // store and the streamed loop starts at the first aligned element after it; the
        // elements in between are computed twice, with the same result, so every element
        // still goes through the vector code whatever the alignment or the thread split.
        let mut start = 0;
        if stream && n >= w {
            let misalign = (out.as_ptr() as usize) % (w * 4);
            if misalign != 0 {
                run!(&x[..w], dy.map(|g| &g[..w]), &mut out[..w], false);
                start = (w * 4 - misalign) / 4;
            }
        }
        let (xs, outs) = (&x[start..], &mut out[start..]);
        run!(xs, dy.map(|g| &g[start..]), outs, stream && n >= w);
        if stream {
            // non-temporal stores are weakly ordered: make them visible before returning
            #[cfg(target_arch = "x86_64")]
            std::arch::x86_64::_mm_sfence();
        }
        let done = start + (n - start) / w * w;
        if stream && done < n && n >= w {
            // the same trick at the end: one more vector over the last w elements
            run!(&x[n - w..], dy.map(|g| &g[n - w..]), &mut out[n - w..], false);
            return;
        }
        // scalar tail
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        for i in done..n {
            let xv = *xp.add(i);
            *op.add(i) = match dy {
                Some(g) => g[i] * activation_grad_scalar(act, xv),
                None => activation_scalar(act, xv),
            };
        }
    }

    /// out[i] = act(x[i]) or act'(x[i]) dy[i] over whole vectors (activation number ACT in
    /// `Activation`'s order), four at a time so that independent approximations overlap in
    /// the pipeline.
    /// How far ahead (floats) [`activation_loop`] prefetches its inputs.
    const ACTIVATION_PREFETCH: usize = 1024;

    #[inline(always)]
    unsafe fn activation_loop<V: F32Vec, const ACT: u8, const GRAD: bool>(
        x: &[f32],
        dy: Option<&[f32]>,
        out: &mut [f32],
        stream: bool,
    ) {
        let act = match ACT {
            0 => Activation::GeluErf,
            1 => Activation::GeluTanh,
            2 => Activation::Silu,
            3 => Activation::Sigmoid,
            _ => Activation::Exp,
        };
        let n = x.len();
        let w = V::LANES;
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        while i + 4 * w <= n {
            // Ask for the input a few KB ahead: the approximations keep the out-of-order
            // window busy, so the loads of the next lines issue late and the memory time added
            // to the arithmetic instead of overlapping it.
            if i + ACTIVATION_PREFETCH + 4 * w <= n {
                crate::gemm::prefetch_span(xp.add(i + ACTIVATION_PREFETCH), 4 * w);
                if let Some(g) = dy {
                    crate::gemm::prefetch_span(g.as_ptr().add(i + ACTIVATION_PREFETCH), 4 * w);
                }
            }
            // (spelled out, not std::array::from_fn: its closure would be compiled without
            // the caller's target features and call every intrinsic out of line)
            let r = [
                activation_vec::<V>(act, GRAD, V::load(xp.add(i))),
                activation_vec::<V>(act, GRAD, V::load(xp.add(i + w))),
                activation_vec::<V>(act, GRAD, V::load(xp.add(i + 2 * w))),
                activation_vec::<V>(act, GRAD, V::load(xp.add(i + 3 * w))),
            ];
            for (j, mut v) in r.into_iter().enumerate() {
                if let Some(g) = dy {
                    v = v.mul(V::load(g.as_ptr().add(i + j * w)));
                }
                if stream {
                    v.store_stream(op.add(i + j * w));
                } else {
                    v.store(op.add(i + j * w));
                }
            }
            i += 4 * w;
        }
        while i + w <= n {
            let mut v = activation_vec::<V>(act, GRAD, V::load(xp.add(i)));
            if let Some(g) = dy {
                v = v.mul(V::load(g.as_ptr().add(i)));
            }
            v.store(op.add(i));
            i += w;
        }
    }

    /// Mean and reciprocal std of one row (two-pass variance).
    #[inline(always)]
    pub unsafe fn row_stats<V: F32Vec>(x: &[f32], eps: f32) -> (f32, f32) {
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{generic, Activation};
    use crate::vec::x86::{Avx2, Avx512};

    macro_rules! entry_points {
        ($feature:literal, $vec:ty, $softmax:ident, $activation:ident, $stats:ident, $normalise:ident) => {
            #[target_feature(enable = $feature)]
            pub unsafe fn $softmax(x: &[f32], mask: Option<&[f32]>, y: &mut [f32], scale: f32, log: bool) {
                generic::softmax_row::<$vec>(x, mask, y, scale, log)
            }
            #[target_feature(enable = $feature)]
            pub unsafe fn $activation(act: Activation, x: &[f32], dy: Option<&[f32]>, out: &mut [f32], stream: bool) {
                generic::activation::<$vec>(act, x, dy, out, stream)
            }
            #[target_feature(enable = $feature)]
            pub unsafe fn $stats(x: &[f32], eps: f32) -> (f32, f32) {
                generic::row_stats::<$vec>(x, eps)
            }
            #[target_feature(enable = $feature)]
            pub unsafe fn $normalise(x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [f32], mean: f32, rstd: f32) {
                generic::normalise_row::<$vec>(x, gamma, beta, y, mean, rstd)
            }
        };
    }
    entry_points!("avx2,fma", Avx2, softmax_row_avx2, activation_avx2, row_stats_avx2, normalise_row_avx2);
    entry_points!("avx512f", Avx512, softmax_row_avx512, activation_avx512, row_stats_avx512, normalise_row_avx512);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation as reference;

    const SIZES: [usize; 12] = [1, 3, 7, 15, 17, 31, 33, 63, 65, 127, 257, 1000];

    fn data(n: usize, seed: u32, range: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
                    * 2.0
                    * range
            })
            .collect()
    }

    fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
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
                        crate::softmax::log_softmax_rows(&z, &mut want, cols);
                    } else {
                        crate::softmax::softmax_rows(&z, &mut want, cols);
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
                        crate::softmax::log_softmax_rows_backward(&want, &dy, &mut want_dx, cols);
                    } else {
                        crate::softmax::softmax_rows_backward(&want, &dy, &mut want_dx, cols);
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
    fn layer_norm_matches_reference_on_awkward_sizes() {
        for &cols in &SIZES {
            let rows = 4;
            let x = data(rows * cols, 3, 5.0);
            let gamma = data(cols, 4, 1.0);
            let beta = data(cols, 5, 1.0);
            let (mut y1, mut y2) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            let (mut m1, mut s1, mut m2, mut s2) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows], vec![0.0; rows]);
            crate::norm::layer_norm_forward(&x, Some(&gamma), Some(&beta), &mut y1, &mut m1, &mut s1, cols, 1e-5);
            for isa in Isa::available() {
                layer_norm_forward_with(isa, &x, &gamma, &beta, &mut y2, &mut m2, &mut s2, cols, 1e-5);
                close("ln y", &y2, &y1, 2e-5);
                close("ln rstd", &s2, &s1, 1e-5);
            }
            let dy = data(x.len(), 6, 1.0);
            let (mut dx1, mut dx2) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            let (mut dg1, mut db1, mut dg2, mut db2) =
                (vec![0.0; cols], vec![0.0; cols], vec![0.0; cols], vec![0.0; cols]);
            crate::norm::layer_norm_backward(
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

    #[test]
    fn activations_match_reference_on_awkward_sizes_and_paths() {
        type Case = (Activation, fn(f32) -> f32, fn(f32) -> f32);
        let cases: [Case; 4] = [
            (Activation::GeluErf, reference::gelu_erf, reference::gelu_erf_grad),
            (Activation::GeluTanh, reference::gelu_tanh, reference::gelu_tanh_grad),
            (Activation::Silu, reference::silu, reference::silu_grad),
            (Activation::Sigmoid, reference::sigmoid, |x| reference::sigmoid(x) * (1.0 - reference::sigmoid(x))),
        ];
        for isa in Isa::available() {
            for &n in &SIZES {
                let x = data(n, n as u32, 10.0);
                let dy = data(n, 9, 1.0);
                for (act, f, df) in cases {
                    let mut y = vec![0.0; n];
                    activation_forward_with(isa, act, &x, &mut y);
                    let want: Vec<f32> = x.iter().map(|&v| f(v)).collect();
                    close(&format!("{isa:?} {act:?} n={n}"), &y, &want, 1e-6);
                    let mut dx = vec![0.0; n];
                    activation_backward_with(isa, act, &x, &dy, &mut dx);
                    let want: Vec<f32> = x.iter().zip(&dy).map(|(&v, &g)| g * df(v)).collect();
                    close(&format!("{isa:?} {act:?}' n={n}"), &dx, &want, 2e-6);
                }
                let mut y = vec![0.0; n];
                let xs: Vec<f32> = x.iter().map(|v| v * 8.0).collect();
                activation_forward_with(isa, Activation::Exp, &xs, &mut y);
                for (g, v) in y.iter().zip(&xs) {
                    let w = v.exp();
                    assert!((g - w).abs() <= 1e-6 * w, "exp {v}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn streamed_outputs_beyond_the_cache_threshold_match_the_cached_path() {
        // Past STREAM_MIN_BYTES the vector loop uses non-temporal stores after a scalar head
        // that reaches the alignment (an output slice 3 floats into its buffer makes the head
        // non-empty). Streaming must not change a value: every element the vector loop
        // computes equals the same element computed below the threshold (in chunks of 2^20),
        // bit for bit; the few scalar-path elements at either end match the reference.
        let n = STREAM_MIN_BYTES / 4 + 1001;
        let chunk = 1 << 20;
        let x = data(n, 5, 6.0);
        let dy = data(n, 6, 1.0);
        // (the portable path has no streaming stores: it maps element by element)
        for isa in Isa::available().into_iter().filter(|&i| i != Isa::Portable) {
            let mut streamed = vec![0.0; n + 3];
            activation_forward_with(isa, Activation::GeluErf, &x, &mut streamed[3..]);
            let mut cached = vec![0.0; n];
            for (xs, ys) in x.chunks(chunk).zip(cached.chunks_mut(chunk)) {
                activation_forward_with(isa, Activation::GeluErf, xs, ys);
            }
            let ends = 64..n - 64;
            assert!(streamed[3..][ends.clone()] == cached[ends.clone()], "{isa:?} streamed gelu differs");
            let want: Vec<f32> = x.iter().map(|&v| reference::gelu_erf(v)).collect();
            close(&format!("{isa:?} streamed gelu head"), &streamed[3..67], &want[..64], 2e-6);

            let mut streamed = vec![0.0; n + 3];
            activation_backward_with(isa, Activation::Silu, &x, &dy, &mut streamed[3..]);
            let mut cached = vec![0.0; n];
            for ((xs, gs), ds) in x.chunks(chunk).zip(dy.chunks(chunk)).zip(cached.chunks_mut(chunk)) {
                activation_backward_with(isa, Activation::Silu, xs, gs, ds);
            }
            assert!(streamed[3..][ends.clone()] == cached[ends.clone()], "{isa:?} streamed silu' differs");
        }
    }

    #[test]
    fn reductions_match_reference() {
        for isa in Isa::available() {
            for &n in &SIZES {
                let x = data(n, 1, 3.0);
                let y = data(n, 2, 3.0);
                let tol = 1e-5 * n as f32;
                assert!((crate::reduce::sum_with(isa, &x) - crate::reduce::sum_reference(&x)).abs() < tol);
                assert_eq!(crate::reduce::max_with(isa, &x), crate::reduce::max_reference(&x));
                assert!((crate::reduce::dot_with(isa, &x, &y) - crate::reduce::dot_reference(&x, &y)).abs() < tol);
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
