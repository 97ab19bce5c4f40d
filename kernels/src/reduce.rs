//! Vectorised reductions and BLAS-1 helpers: sum, max, sum of squares, dot, axpy.
//! Each has a scalar reference (`*_reference`), an AVX2 form with four independent
//! accumulators (to hide FMA latency), and dispatches once on [`Isa::best`].

use crate::simd::Isa;

pub fn sum_reference(x: &[f32]) -> f32 {
    x.iter().map(|&v| v as f64).sum::<f64>() as f32
}
pub fn max_reference(x: &[f32]) -> f32 {
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}
pub fn sum_sq_reference(x: &[f32]) -> f32 {
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32
}
pub fn dot_reference(x: &[f32], y: &[f32]) -> f32 {
    x.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32
}

/// Portable forms: eight independent lanes so the compiler can vectorise without reassociation.
fn sum_portable(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}
fn max_portable(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    acc.iter().chain(rest).copied().fold(f32::NEG_INFINITY, f32::max)
}
fn dot_portable(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let n = x.len().min(y.len());
    let (xc, yc) = (x[..n].chunks_exact(8), y[..n].chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + xr.iter().zip(yr).map(|(a, b)| a * b).sum::<f32>()
}

/// Sum of a slice.
pub fn sum(x: &[f32]) -> f32 {
    sum_with(Isa::best(), x)
}
pub fn sum_with(isa: Isa, x: &[f32]) -> f32 {
    match isa.supported() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::dot_like(x, None) },
        _ => sum_portable(x),
    }
}

/// Maximum of a slice (-inf for an empty slice).
pub fn max(x: &[f32]) -> f32 {
    max_with(Isa::best(), x)
}
pub fn max_with(isa: Isa, x: &[f32]) -> f32 {
    match isa.supported() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::max(x) },
        _ => max_portable(x),
    }
}

/// Sum of squares.
pub fn sum_sq(x: &[f32]) -> f32 {
    dot(x, x)
}

/// Dot product of two slices of equal length.
pub fn dot(x: &[f32], y: &[f32]) -> f32 {
    dot_with(Isa::best(), x, y)
}
pub fn dot_with(isa: Isa, x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len(), "dot: lengths differ");
    match isa.supported() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::dot_like(x, Some(y)) },
        _ => dot_portable(x, y),
    }
}

/// y += alpha * x.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: lengths differ");
    for (o, &v) in y.iter_mut().zip(x) {
        *o += alpha * v;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::vmath::x86::{hmax256, hsum256};
    use std::arch::x86_64::*;

    /// sum(x) when `y` is None, else dot(x, y). Four accumulators of 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_like(x: &[f32], y: Option<&[f32]>) -> f32 {
        let n = x.len();
        let (xp, yp) = (x.as_ptr(), y.map(|y| y.as_ptr()));
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(xp.add(i + 8 * j));
                *a = match yp {
                    Some(yp) => _mm256_fmadd_ps(xv, _mm256_loadu_ps(yp.add(i + 8 * j)), *a),
                    None => _mm256_add_ps(xv, *a),
                };
            }
            i += 32;
        }
        while i + 8 <= n {
            let xv = _mm256_loadu_ps(xp.add(i));
            acc[0] = match yp {
                Some(yp) => _mm256_fmadd_ps(xv, _mm256_loadu_ps(yp.add(i)), acc[0]),
                None => _mm256_add_ps(xv, acc[0]),
            };
            i += 8;
        }
        let total = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum256(total);
        while i < n {
            s += match yp {
                Some(yp) => *xp.add(i) * *yp.add(i),
                None => *xp.add(i),
            };
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn max(x: &[f32]) -> f32 {
        let n = x.len();
        let p = x.as_ptr();
        let mut acc = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_max_ps(*a, _mm256_loadu_ps(p.add(i + 8 * j)));
            }
            i += 32;
        }
        let mut m = hmax256(_mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3])));
        while i < n {
            m = m.max(*p.add(i));
            i += 1;
        }
        m
    }
}
