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
        // SAFETY: `supported()` confirmed AVX2 at least; the kernel reads only within `x`.
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
        // SAFETY: `supported()` confirmed AVX2 at least; the kernel reads only within `x`.
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
        // SAFETY: `supported()` confirmed AVX2 at least; x and y have one length (asserted).
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::dot_like(x, Some(y)) },
        _ => dot_portable(x, y),
    }
}

/// Column sums of a row-major matrix `x` with `cols` columns, accumulated in f64 top to
/// bottom: the reference for [`column_sums`].
pub fn column_sums_reference(x: &[f32], cols: usize) -> Vec<f32> {
    let mut acc = vec![0.0f64; cols];
    for row in x.chunks_exact(cols.max(1)) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v as f64;
        }
    }
    acc.into_iter().map(|v| v as f32).collect()
}

/// Rows per block of [`column_sums`]: fixed, so that the result does not depend on the
/// number of threads.
const COLUMN_SUM_ROWS: usize = 256;
/// Columns per tile inside a block: the tile's f64 sums (8 KB) stay in L1 while the block's
/// rows stream past.
const COLUMN_SUM_TILE: usize = 1024;

/// Column sums of a row-major matrix `x` with `cols` columns (a bias gradient: the sum of the
/// output gradient over the batch), accumulated in f64. Blocks of 256 rows are summed into
/// f64 partials on the kernel threads, each block reading whole rows front to back; the
/// partials are then added in block order, so the result is the same for any thread count.
/// (Splitting by columns instead had each thread stride down the matrix a few hundred bytes
/// per row, page after page: 6-8 GB/s, slower on two threads than on one.)
pub fn column_sums(x: &[f32], cols: usize) -> Vec<f32> {
    column_sums_with(Isa::best(), x, cols)
}
pub fn column_sums_with(isa: Isa, x: &[f32], cols: usize) -> Vec<f32> {
    if cols == 0 {
        return Vec::new();
    }
    assert_eq!(x.len() % cols, 0, "column_sums: {} elements are not whole rows of {cols}", x.len());
    let rows = x.len() / cols;
    let blocks = rows.div_ceil(COLUMN_SUM_ROWS).max(1);
    // partials: (blocks, cols) f64
    let mut partials = vec![0.0f64; blocks * cols];
    let isa = isa.supported();
    // Threads only when there is enough work (a few hundred KB).
    let min_blocks = if x.len() >= 1 << 16 { 1 } else { blocks };
    crate::parallel::for_each_row_block(&mut partials, cols, min_blocks * cols, |start, out| {
        let first_block = start / cols;
        for (b, acc) in out.chunks_exact_mut(cols).enumerate() {
            let r0 = (first_block + b) * COLUMN_SUM_ROWS;
            let block = &x[r0 * cols..(r0 + COLUMN_SUM_ROWS).min(rows) * cols];
            for c0 in (0..cols).step_by(COLUMN_SUM_TILE) {
                let width = COLUMN_SUM_TILE.min(cols - c0);
                for row in block.chunks_exact(cols) {
                    add_row_f64(isa, &row[c0..c0 + width], &mut acc[c0..c0 + width]);
                }
            }
        }
    });
    let (first, rest) = partials.split_at_mut(cols);
    for block in rest.chunks_exact(cols) {
        for (a, &v) in first.iter_mut().zip(block) {
            *a += v;
        }
    }
    first.iter().map(|&v| v as f32).collect()
}

/// acc[j] += row[j] in f64.
fn add_row_f64(isa: Isa, row: &[f32], acc: &mut [f64]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers pass `Isa::supported()`; the kernels stay within row and acc.
        Isa::Avx512 => unsafe { x86::add_row_f64_avx512(row, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::add_row_f64_avx2(row, acc) },
        _ => {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v as f64;
            }
        }
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
        // SAFETY: this unsafe fn's callers guarantee a CPU with avx2,fma (they dispatch on
        // `Isa::supported()`) and pointers valid for every offset it reads and writes.
        unsafe {
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
    }

    /// acc[j] += row[j] in f64, 16 columns per step (two 8-lane f64 halves).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn add_row_f64_avx512(row: &[f32], acc: &mut [f64]) {
        // SAFETY: this unsafe fn's callers guarantee a CPU with avx512f (they dispatch on
        // `Isa::supported()`) and pointers valid for every offset it reads and writes.
        unsafe {
            let n = row.len().min(acc.len());
            let (x, a) = (row.as_ptr(), acc.as_mut_ptr());
            let mut j = 0;
            while j + 16 <= n {
                let v = _mm512_loadu_ps(x.add(j));
                let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
                let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))));
                _mm512_storeu_pd(a.add(j), _mm512_add_pd(_mm512_loadu_pd(a.add(j)), lo));
                _mm512_storeu_pd(a.add(j + 8), _mm512_add_pd(_mm512_loadu_pd(a.add(j + 8)), hi));
                j += 16;
            }
            while j < n {
                *a.add(j) += *x.add(j) as f64;
                j += 1;
            }
        }
    }

    /// acc[j] += row[j] in f64, 8 columns per step.
    #[target_feature(enable = "avx2")]
    pub unsafe fn add_row_f64_avx2(row: &[f32], acc: &mut [f64]) {
        // SAFETY: this unsafe fn's callers guarantee a CPU with avx2 (they dispatch on
        // `Isa::supported()`) and pointers valid for every offset it reads and writes.
        unsafe {
            let n = row.len().min(acc.len());
            let (x, a) = (row.as_ptr(), acc.as_mut_ptr());
            let mut j = 0;
            while j + 8 <= n {
                let lo = _mm256_cvtps_pd(_mm_loadu_ps(x.add(j)));
                let hi = _mm256_cvtps_pd(_mm_loadu_ps(x.add(j + 4)));
                _mm256_storeu_pd(a.add(j), _mm256_add_pd(_mm256_loadu_pd(a.add(j)), lo));
                _mm256_storeu_pd(a.add(j + 4), _mm256_add_pd(_mm256_loadu_pd(a.add(j + 4)), hi));
                j += 8;
            }
            while j < n {
                *a.add(j) += *x.add(j) as f64;
                j += 1;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn max(x: &[f32]) -> f32 {
        // SAFETY: this unsafe fn's callers guarantee a CPU with avx2,fma (they dispatch on
        // `Isa::supported()`) and pointers valid for every offset it reads and writes.
        unsafe {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::{data, SIZES};

    fn matrix(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    #[test]
    fn column_sums_match_the_reference_on_every_path() {
        for isa in Isa::available() {
            for &(rows, cols) in &[(1, 1), (3, 7), (65, 17), (127, 33), (257, 1000), (1000, 3), (200, 1025), (64, 2049)]
            {
                let x = matrix(rows, cols);
                let want = column_sums_reference(&x, cols);
                let got = column_sums_with(isa, &x, cols);
                assert_eq!(got.len(), cols);
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    // f64 sums of the same floats in another order: equal after rounding to f32
                    // but for the last bit.
                    assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{isa:?} {rows}x{cols} col {j}: {g} vs {w}");
                }
            }
        }
        assert!(column_sums(&[], 0).is_empty());
        assert_eq!(column_sums(&[], 5), vec![0.0; 5]);
    }

    #[test]
    fn column_sums_are_the_fixed_block_order_sum_whatever_the_threads() {
        // The threads only decide who computes which 256-row block; the f64 arithmetic is the
        // serial block-by-block sum below, bit for bit, on every path.
        let (rows, cols) = (2048 + 5, 300);
        let x = matrix(rows, cols);
        let mut total = vec![0.0f64; cols];
        for (b, block) in x.chunks(COLUMN_SUM_ROWS * cols).enumerate() {
            let mut partial = vec![0.0f64; cols];
            for row in block.chunks_exact(cols) {
                for (a, &v) in partial.iter_mut().zip(row) {
                    *a += v as f64;
                }
            }
            for (t, p) in total.iter_mut().zip(&partial) {
                *t = if b == 0 { *p } else { *t + p };
            }
        }
        let want: Vec<f32> = total.iter().map(|&v| v as f32).collect();
        for isa in Isa::available() {
            assert_eq!(column_sums_with(isa, &x, cols), want, "{isa:?}");
        }
    }

    #[test]
    fn reductions_match_reference() {
        for isa in Isa::available() {
            for &n in &SIZES {
                let x = data(n, 1, 3.0);
                let y = data(n, 2, 3.0);
                let tol = 1e-5 * n as f32;
                assert!((sum_with(isa, &x) - sum_reference(&x)).abs() < tol);
                assert_eq!(max_with(isa, &x), max_reference(&x));
                assert!((dot_with(isa, &x, &y) - dot_reference(&x, &y)).abs() < tol);
            }
        }
    }
}
