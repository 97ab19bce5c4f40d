//! Elementwise activations, forward and backward: GELU in its two forms (as in PyTorch: the
//! exact x * Phi(x) with the normal CDF through erf, and the tanh approximation of the original
//! BERT code), SiLU, sigmoid and exp.
//!
//! The fast kernels run one monomorphised, unrolled loop per activation and instruction set,
//! stream outputs past the cache when they are too large to stay there, and split the elements
//! over the kernel pool. [`reference`] holds the scalar definitions in f64 that they, and
//! autograd's gradient checks, are tested against.

use crate::parallel::for_elem_blocks;
use crate::simd::Isa;
use crate::vmath;

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
            // SAFETY: `isa` passed `supported()`; xs and out have one length (sliced above).
            Isa::Avx512 => unsafe { x86::activation_avx512(act, xs, None, out, stream) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
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
            // SAFETY: `isa` passed `supported()`; xs, gs and out have one length (sliced above).
            Isa::Avx512 => unsafe { x86::activation_avx512(act, xs, Some(gs), out, stream) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { x86::activation_avx2(act, xs, Some(gs), out, stream) },
            _ => {
                for ((o, &v), &g) in out.iter_mut().zip(xs).zip(gs) {
                    *o = g * activation_grad_scalar(act, v);
                }
            }
        }
    });
}

/// The vectorised bodies, written once over [`F32Vec`](crate::vec::F32Vec).
mod vector {
    use super::{activation_grad_scalar, activation_scalar, Activation, GELU_C, GELU_K};
    use crate::vec::{self as v, F32Vec};

    #[inline(always)]
    unsafe fn activation_vec<V: F32Vec>(act: Activation, grad: bool, x: V) -> V {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
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
    }

    /// out = act(x) (or act'(x) * dy when `dy` is given).
    #[inline(always)]
    pub unsafe fn activation<V: F32Vec>(act: Activation, x: &[f32], dy: Option<&[f32]>, out: &mut [f32], stream: bool) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
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
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
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
                    crate::gemm::prefetch_span(xp.wrapping_add(i + ACTIVATION_PREFETCH), 4 * w);
                    if let Some(g) = dy {
                        crate::gemm::prefetch_span(g.as_ptr().wrapping_add(i + ACTIVATION_PREFETCH), 4 * w);
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
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{vector, Activation};
    use crate::vec::x86::{Avx2, Avx512};

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn activation_avx2(act: Activation, x: &[f32], dy: Option<&[f32]>, out: &mut [f32], stream: bool) {
        // SAFETY: callers guarantee a CPU with avx2,fma (they dispatch on `Isa::supported()`)
        // and pointers valid for what this reads and writes.
        unsafe { vector::activation::<Avx2>(act, x, dy, out, stream) }
    }
    #[target_feature(enable = "avx512f")]
    pub unsafe fn activation_avx512(act: Activation, x: &[f32], dy: Option<&[f32]>, out: &mut [f32], stream: bool) {
        // SAFETY: callers guarantee a CPU with avx512f (they dispatch on `Isa::supported()`)
        // and pointers valid for what this reads and writes.
        unsafe { vector::activation::<Avx512>(act, x, dy, out, stream) }
    }
}

/// The scalar definitions, evaluated in f64.
pub mod reference {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    const INV_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
    const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

    /// erf(x), evaluated in f64 through the Chebyshev fit of erfc in Numerical Recipes
    /// (fractional error below 1.2e-7 everywhere: below f32 resolution for |erf| near 1, and
    /// measured at < 1.2e-7 absolute against a 40-term series on [-4, 4]).
    pub fn erf(x: f64) -> f64 {
        let z = x.abs();
        let t = 1.0 / (1.0 + 0.5 * z);
        let poly = -z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
        let erfc = t * poly.exp();
        if x >= 0.0 {
            1.0 - erfc
        } else {
            erfc - 1.0
        }
    }

    /// GELU, exact (erf) form: x * Phi(x).
    pub fn gelu_erf(x: f32) -> f32 {
        let x = x as f64;
        (0.5 * x * (1.0 + erf(x * INV_SQRT_2))) as f32
    }

    /// d/dx GELU(erf form) = Phi(x) + x * phi(x).
    pub fn gelu_erf_grad(x: f32) -> f32 {
        let x = x as f64;
        let cdf = 0.5 * (1.0 + erf(x * INV_SQRT_2));
        let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
        (cdf + x * pdf) as f32
    }

    /// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    pub fn gelu_tanh(x: f32) -> f32 {
        let x = x as f64;
        let inner = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
        (0.5 * x * (1.0 + inner.tanh())) as f32
    }

    pub fn gelu_tanh_grad(x: f32) -> f32 {
        let x = x as f64;
        let inner = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
        let th = inner.tanh();
        let d_inner = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x);
        (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * d_inner) as f32
    }

    /// Logistic sigmoid, stable for large |x|.
    pub fn sigmoid(x: f32) -> f32 {
        if x >= 0.0 {
            1.0 / (1.0 + (-x).exp())
        } else {
            let e = x.exp();
            e / (1.0 + e)
        }
    }

    /// SiLU (swish): x * sigmoid(x).
    pub fn silu(x: f32) -> f32 {
        x * sigmoid(x)
    }

    /// d/dx SiLU = s (1 + x (1 - s)), s = sigmoid(x).
    pub fn silu_grad(x: f32) -> f32 {
        let s = sigmoid(x);
        s * (1.0 + x * (1.0 - s))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn erf_series(x: f64) -> f64 {
            // Maclaurin series, exact enough in f64 on [-4, 4] with 60 terms.
            let mut term = x;
            let mut sum = x;
            for n in 1..120 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }

        #[test]
        fn erf_matches_series_and_derivatives_match_differences() {
            let mut worst = 0.0f64;
            for i in -400..=400 {
                let x = i as f64 / 100.0;
                worst = worst.max((erf(x) - erf_series(x)).abs());
            }
            assert!(worst < 1.3e-7, "max |erf - series| = {worst}");
            // Central differences with h = 1e-2: truncation (h^2 / 6 times the third derivative)
            // and f32 rounding of f (an ulp over 2h) each stay below 3e-5 here, so a 1e-4 bound
            // separates the erf and tanh forms of GELU, whose derivatives differ by up to 8.7e-4.
            let mut max_gap = 0.0f64;
            for i in -60..=60 {
                let x = i as f32 / 10.0;
                let h = 1e-2f64;
                for (f, g) in [
                    (gelu_erf as fn(f32) -> f32, gelu_erf_grad as fn(f32) -> f32),
                    (gelu_tanh, gelu_tanh_grad),
                    (silu, silu_grad),
                ] {
                    let num = (f((x as f64 + h) as f32) as f64 - f((x as f64 - h) as f32) as f64) / (2.0 * h);
                    assert!((num - g(x) as f64).abs() < 1e-4, "x={x} num={num} ana={}", g(x));
                }
                max_gap = max_gap.max((gelu_erf_grad(x) - gelu_tanh_grad(x)).abs() as f64);
            }
            assert!(max_gap > 5e-4, "the two GELU derivatives must differ visibly on this grid: {max_gap}");
            assert_eq!(sigmoid(-1000.0), 0.0);
            assert_eq!(sigmoid(1000.0), 1.0);
            assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
            assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::{close, data, SIZES};

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
}
