//! Optimiser kernels: the elementwise part of an Adam-family step, in one pass over memory.
//!
//! LAMB (You et al. 2019; `nn::optim::Lamb` holds the per-tensor logic and the formulas) needs,
//! for every tensor, the new Adam moments, the update direction
//!
//! ```text
//! m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
//! u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd w
//! ```
//!
//! and the squared norms ||w||^2 and ||u||^2 of its trust ratio ||w|| / ||u||.
//! [`lamb_direction`] does all of it in one pass that reads (g, w, m, v) and writes (m, v, u).
//! The scalar loop it replaces summed the norms into one f64 accumulator, a dependency chain
//! that kept the compiler from vectorising the square root and the division next to it: 8% of
//! the main job's step. [`sum_squares_f64`] is the gradient-clipping norm, written the same way.
//!
//! Bits: m, v and u come from the same operations in the same order as the scalar reference
//! (no fused multiply-adds; division and square root are correctly rounded on every path), so
//! they are equal bit for bit. The norms add exact f64 squares in per-lane partial sums, so only
//! the order of the f64 additions differs from the reference's sequential sum: a relative
//! difference near 1e-16, far below the f32 the trust ratio is rounded to.

use crate::simd::Isa;
use crate::vec::F32Vec;

/// The constants of one Adam / LAMB step for one parameter group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub beta1: f32,
    pub beta2: f32,
    /// 1 / (1 - beta1^t), the bias correction of the first moment at step t
    pub inv_bias1: f32,
    /// 1 / (1 - beta2^t)
    pub inv_bias2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl AdamStep {
    /// The constants at step `t` (1-based, as the bias corrections count).
    pub fn at(beta1: f32, beta2: f32, eps: f32, weight_decay: f32, t: u64) -> AdamStep {
        let t = t.min(i32::MAX as u64) as i32;
        AdamStep {
            beta1,
            beta2,
            inv_bias1: 1.0 / (1.0 - beta1.powi(t)),
            inv_bias2: 1.0 / (1.0 - beta2.powi(t)),
            eps,
            weight_decay,
        }
    }
}

/// The buffers of one tensor (or one chunk of it) in a LAMB step, all of one length: the
/// gradient and weights read, the moments updated in place, the direction written.
pub struct LambSlices<'a> {
    pub grad: &'a [f32],
    pub w: &'a [f32],
    pub m: &'a mut [f32],
    pub v: &'a mut [f32],
    pub u: &'a mut [f32],
}

impl LambSlices<'_> {
    fn check_lengths(&self) {
        let n = self.w.len();
        assert!(
            self.grad.len() == n && self.m.len() == n && self.v.len() == n && self.u.len() == n,
            "lamb_direction: lengths differ (grad {}, w {n}, m {}, v {}, u {})",
            self.grad.len(),
            self.m.len(),
            self.v.len(),
            self.u.len()
        );
    }

    /// Elements `start..` of every buffer.
    fn tail(&mut self, start: usize) -> LambSlices<'_> {
        LambSlices {
            grad: &self.grad[start..],
            w: &self.w[start..],
            m: &mut self.m[start..],
            v: &mut self.v[start..],
            u: &mut self.u[start..],
        }
    }
}

/// Scalar reference for [`lamb_direction`]: updates the moments `m`, `v` in place, writes the
/// direction `u` and returns (||w||^2, ||u||^2) summed in f64 in index order.
pub fn lamb_direction_reference(h: &AdamStep, s: LambSlices) -> (f64, f64) {
    s.check_lengths();
    let LambSlices { grad, w, m, v, u } = s;
    let (b1, b2) = (h.beta1, h.beta2);
    let (mut w_sq, mut u_sq) = (0.0f64, 0.0f64);
    for i in 0..w.len() {
        m[i] = b1 * m[i] + (1.0 - b1) * grad[i];
        v[i] = b2 * v[i] + (1.0 - b2) * grad[i] * grad[i];
        u[i] = (m[i] * h.inv_bias1) / ((v[i] * h.inv_bias2).sqrt() + h.eps) + h.weight_decay * w[i];
        w_sq += w[i] as f64 * w[i] as f64;
        u_sq += u[i] as f64 * u[i] as f64;
    }
    (w_sq, u_sq)
}

/// One LAMB pass over a tensor (or a chunk of one): see the module header. Returns
/// (||w||^2, ||u||^2). All slices must have the same length.
///
/// ```
/// use kernels::optim::{lamb_direction, AdamStep, LambSlices};
/// let h = AdamStep::at(0.9, 0.999, 1e-6, 0.0, 1); // step 1, no weight decay
/// let (grad, w) = ([0.5f32, -1.0], [1.0f32, 2.0]);
/// let (mut m, mut v, mut u) = ([0.0f32; 2], [0.0f32; 2], [0.0f32; 2]);
/// let (w_sq, u_sq) = lamb_direction(&h, LambSlices { grad: &grad, w: &w, m: &mut m, v: &mut v, u: &mut u });
/// // at step 1 the bias-corrected direction is g / (|g| + eps): the sign of g
/// assert!((u[0] - 1.0).abs() < 1e-5 && (u[1] + 1.0).abs() < 1e-5);
/// assert_eq!(w_sq, 5.0);
/// let trust_ratio = (w_sq / u_sq).sqrt() as f32; // LAMB scales this tensor's step by it
/// assert!((trust_ratio - (5.0f32 / 2.0).sqrt()).abs() < 1e-5);
/// ```
pub fn lamb_direction(h: &AdamStep, s: LambSlices) -> (f64, f64) {
    lamb_direction_with(Isa::best(), h, s)
}

pub fn lamb_direction_with(isa: Isa, h: &AdamStep, s: LambSlices) -> (f64, f64) {
    s.check_lengths();
    match isa.supported() {
        // SAFETY: the lengths were checked; the CPU supports the path (`supported`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::lamb_direction_avx512(h, s) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::lamb_direction_avx2(h, s) },
        _ => lamb_direction_reference(h, s),
    }
}

/// Scalar reference for [`sum_squares_f64`]: sum of x^2 in f64, in index order.
pub fn sum_squares_f64_reference(x: &[f32]) -> f64 {
    x.iter().map(|&a| a as f64 * a as f64).sum()
}

/// Sum of squares in double precision (exact squares, per-lane partial sums): the global
/// gradient norm of clipping, without the f32 rounding of [`crate::reduce::sum_sq`].
pub fn sum_squares_f64(x: &[f32]) -> f64 {
    sum_squares_f64_with(Isa::best(), x)
}

pub fn sum_squares_f64_with(isa: Isa, x: &[f32]) -> f64 {
    match isa.supported() {
        // SAFETY: the CPU supports the path (`supported`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::sum_squares_avx512(x) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::sum_squares_avx2(x) },
        _ => sum_squares_f64_reference(x),
    }
}

mod generic {
    use super::*;

    /// The vector form of [`lamb_direction_reference`]: whole vectors, then the reference on the
    /// tail. The operations and their order per element are the reference's.
    #[inline(always)]
    pub unsafe fn lamb_direction<V: F32Vec>(h: &AdamStep, mut s: LambSlices) -> (f64, f64) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let n = s.w.len();
            let whole = n - n % V::LANES;
            let (b1, b2) = (V::splat(h.beta1), V::splat(h.beta2));
            let (keep1, keep2) = (V::splat(1.0 - h.beta1), V::splat(1.0 - h.beta2));
            let (inv_bias1, inv_bias2) = (V::splat(h.inv_bias1), V::splat(h.inv_bias2));
            let (eps, decay) = (V::splat(h.eps), V::splat(h.weight_decay));
            let (mut w_sq, mut u_sq) = (V::f64_sums_zero(), V::f64_sums_zero());
            let (gp, wp) = (s.grad.as_ptr(), s.w.as_ptr());
            let (mp, vp, up) = (s.m.as_mut_ptr(), s.v.as_mut_ptr(), s.u.as_mut_ptr());
            let mut i = 0;
            while i < whole {
                let g = V::load(gp.add(i));
                let wv = V::load(wp.add(i));
                let mv = b1.mul(V::load(mp.add(i))).add(keep1.mul(g));
                let vv = b2.mul(V::load(vp.add(i))).add(keep2.mul(g).mul(g));
                let uv = mv.mul(inv_bias1).div(vv.mul(inv_bias2).sqrt().add(eps)).add(decay.mul(wv));
                mv.store(mp.add(i));
                vv.store(vp.add(i));
                uv.store(up.add(i));
                w_sq = wv.add_squares_f64(w_sq);
                u_sq = uv.add_squares_f64(u_sq);
                i += V::LANES;
            }
            let (w_tail, u_tail) = lamb_direction_reference(h, s.tail(whole));
            (V::f64_sums_total(w_sq) + w_tail, V::f64_sums_total(u_sq) + u_tail)
        }
    }

    /// Two sets of partial sums, so that consecutive vectors do not wait on one FMA chain.
    #[inline(always)]
    pub unsafe fn sum_squares<V: F32Vec>(x: &[f32]) -> f64 {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let n = x.len();
            let pairs = n - n % (2 * V::LANES);
            let (mut even, mut odd) = (V::f64_sums_zero(), V::f64_sums_zero());
            let mut i = 0;
            while i < pairs {
                even = V::load(x.as_ptr().add(i)).add_squares_f64(even);
                odd = V::load(x.as_ptr().add(i + V::LANES)).add_squares_f64(odd);
                i += 2 * V::LANES;
            }
            V::f64_sums_total(even) + V::f64_sums_total(odd) + sum_squares_f64_reference(&x[pairs..])
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{generic, AdamStep, LambSlices};
    use crate::vec::x86::{Avx2, Avx512};

    macro_rules! entry_points {
        ($feature:literal, $vec:ty, $lamb:ident, $sum_squares:ident) => {
            #[target_feature(enable = $feature)]
            pub unsafe fn $lamb(h: &AdamStep, s: LambSlices) -> (f64, f64) {
                // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
                // and the CPU features of the vector type in use.
                unsafe { generic::lamb_direction::<$vec>(h, s) }
            }
            #[target_feature(enable = $feature)]
            pub unsafe fn $sum_squares(x: &[f32]) -> f64 {
                // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
                // and the CPU features of the vector type in use.
                unsafe { generic::sum_squares::<$vec>(x) }
            }
        };
    }
    entry_points!("avx2,fma", Avx2, lamb_direction_avx2, sum_squares_avx2);
    entry_points!("avx512f", Avx512, lamb_direction_avx512, sum_squares_avx512);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-range, range), with some exact zeros in the gradient (as
    /// embedding rows that a batch did not touch).
    fn data(n: usize, seed: u32, range: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let bits = (i as u32).wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)) >> 8;
                (bits as f32 / (1u32 << 24) as f32 - 0.5) * 2.0 * range
            })
            .collect()
    }

    const SIZES: [usize; 9] = [0, 1, 7, 15, 16, 17, 33, 100, 1031];

    #[test]
    fn lamb_direction_paths_equal_the_reference_bit_for_bit() {
        for t in [1, 2, 50] {
            let h = AdamStep::at(0.9, 0.999, 1e-6, 1e-2, t);
            for &n in &SIZES {
                let mut grad = data(n, 1, 0.5);
                grad.iter_mut().step_by(5).for_each(|g| *g = 0.0);
                let w = data(n, 2, 1.0);
                let m0 = data(n, 3, 0.1);
                let v0: Vec<f32> = data(n, 4, 0.1).iter().map(|x| x * x).collect();
                let (mut m_ref, mut v_ref, mut u_ref) = (m0.clone(), v0.clone(), vec![0.0; n]);
                let (w_ref, un_ref) = lamb_direction_reference(
                    &h,
                    LambSlices { grad: &grad, w: &w, m: &mut m_ref, v: &mut v_ref, u: &mut u_ref },
                );
                for isa in Isa::available() {
                    let (mut m, mut v, mut u) = (m0.clone(), v0.clone(), vec![f32::NAN; n]);
                    let slices = LambSlices { grad: &grad, w: &w, m: &mut m, v: &mut v, u: &mut u };
                    let (w_sq, u_sq) = lamb_direction_with(isa, &h, slices);
                    let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&m), bits(&m_ref), "{isa:?} n {n} t {t}: m");
                    assert_eq!(bits(&v), bits(&v_ref), "{isa:?} n {n} t {t}: v");
                    assert_eq!(bits(&u), bits(&u_ref), "{isa:?} n {n} t {t}: u");
                    assert!((w_sq - w_ref).abs() <= 1e-12 * w_ref, "{isa:?} n {n}: ||w||^2 {w_sq} vs {w_ref}");
                    assert!((u_sq - un_ref).abs() <= 1e-12 * un_ref, "{isa:?} n {n}: ||u||^2 {u_sq} vs {un_ref}");
                }
            }
        }
    }

    #[test]
    fn lamb_direction_reference_follows_the_formulas() {
        // one element by hand, step 1: m = 0.1 g, v = 0.001 g^2, m_hat = g, v_hat = g^2,
        // u = g / (|g| + eps) + wd w
        let h = AdamStep::at(0.9, 0.999, 1e-6, 0.5, 1);
        let (mut m, mut v, mut u) = ([0.0f32], [0.0f32], [0.0f32]);
        let slices = LambSlices { grad: &[-2.0], w: &[4.0], m: &mut m, v: &mut v, u: &mut u };
        let (w_sq, u_sq) = lamb_direction_reference(&h, slices);
        // (1 - b1 and 1 - b2 are not exact in f32: 0.100000024 and 0.0010000467)
        assert!((m[0] + 0.2).abs() < 1e-6 && (v[0] - 0.004).abs() < 1e-6, "m {} v {}", m[0], v[0]);
        let want = -2.0 / (2.0 + 1e-6) + 0.5 * 4.0;
        assert!((u[0] - want).abs() < 1e-6, "{} vs {want}", u[0]);
        assert_eq!(w_sq, 16.0);
        assert!((u_sq - (want * want) as f64).abs() < 1e-5);
    }

    #[test]
    fn sum_squares_paths_match_the_reference() {
        for &n in SIZES.iter().chain(&[4096 + 5]) {
            let x = data(n, 7, 3.0);
            let want = sum_squares_f64_reference(&x);
            for isa in Isa::available() {
                let got = sum_squares_f64_with(isa, &x);
                assert!((got - want).abs() <= 1e-12 * want, "{isa:?} n {n}: {got} vs {want}");
            }
        }
        // squares of f32 values are exact in f64: 2^-20 squared survives next to 1
        let x = [1.0f32, 2f32.powi(-20), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        for isa in Isa::available() {
            assert_eq!(sum_squares_f64_with(isa, &x), 1.0 + 2f64.powi(-40), "{isa:?}");
        }
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn lamb_direction_refuses_mismatched_lengths() {
        let h = AdamStep::at(0.9, 0.999, 1e-6, 0.0, 1);
        let (mut m, mut v, mut u) = (vec![0.0; 3], vec![0.0; 3], vec![0.0; 2]);
        lamb_direction(&h, LambSlices { grad: &[0.0; 3], w: &[0.0; 3], m: &mut m, v: &mut v, u: &mut u });
    }
}
