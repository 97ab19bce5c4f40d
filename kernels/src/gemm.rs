//! Single-precision matrix multiply: C = alpha * A * B + beta * C.
//!
//! Operands are described by row and column strides (in elements), so a transposed operand is
//! just swapped strides and costs no copy. This file currently holds the plain reference kernel
//! that every faster GEMM is tested against.

/// Row / column strides of the three operands, in elements.
///
/// Element (i, j) of A lives at `a[i * a_row + j * a_col]`; likewise for B and C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmStrides {
    pub a_row: usize,
    pub a_col: usize,
    pub b_row: usize,
    pub b_col: usize,
    pub c_row: usize,
    pub c_col: usize,
}

impl GemmStrides {
    /// Strides of three row-major contiguous matrices A (m, k), B (k, n), C (m, n).
    pub fn row_major(k: usize, n: usize) -> Self {
        GemmStrides { a_row: k, a_col: 1, b_row: n, b_col: 1, c_row: n, c_col: 1 }
    }
}

/// Reference GEMM: C (m, n) = alpha * A (m, k) * B (k, n) + beta * C.
///
/// Accumulates each dot product in f64 (so it is a good oracle for the fast kernels' f32
/// rounding). When `beta == 0` C is overwritten without being read, so it may hold NaN.
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    s: GemmStrides,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                acc += a[i * s.a_row + p * s.a_col] as f64 * b[p * s.b_row + j * s.b_col] as f64;
            }
            let dst = &mut c[i * s.c_row + j * s.c_col];
            let scaled = alpha as f64 * acc;
            *dst = if beta == 0.0 { scaled as f32 } else { (scaled + beta as f64 * *dst as f64) as f32 };
        }
    }
}

/// The GEMM every caller uses. Currently the reference kernel; the fast BLIS-style kernel
/// replaces the body behind this same signature.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(m: usize, k: usize, n: usize, alpha: f32, a: &[f32], b: &[f32], beta: f32, c: &mut [f32], s: GemmStrides) {
    gemm_reference(m, k, n, alpha, a, b, beta, c, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_gemm_matches_hand_computed_product_and_transposed_strides() {
        // A = [[1,2,3],[4,5,6]] (2x3), B = [[7,8],[9,10],[11,12]] (3x2)
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
        let mut c = [1.0f32; 4];
        gemm_reference(2, 3, 2, 1.0, &a, &b, 0.5, &mut c, GemmStrides::row_major(3, 2));
        assert_eq!(c, [58.5, 64.5, 139.5, 154.5]);
        // Same product with A given as its transpose stored row-major (3x2) read via swapped strides.
        let at = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        let mut c2 = [f32::NAN; 4];
        let s = GemmStrides { a_row: 1, a_col: 2, b_row: 2, b_col: 1, c_row: 2, c_col: 1 };
        gemm_reference(2, 3, 2, 2.0, &at, &b, 0.0, &mut c2, s);
        assert_eq!(c2, [116.0, 128.0, 278.0, 308.0]);
    }
}
