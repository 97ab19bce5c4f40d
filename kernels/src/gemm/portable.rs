//! The portable micro-kernel (plain loops the compiler vectorises) and the matrix-vector path
//! for M = 1 or N = 1.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel_portable_4x8(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        const MR: usize = 4;
        const NR: usize = 8;
        let mut acc = [[0.0f32; NR]; MR];
        for p in 0..kc {
            let bp = std::slice::from_raw_parts(b.add(p * NR), NR);
            let ap = std::slice::from_raw_parts(a.add(p * MR), MR);
            for i in 0..MR {
                for j in 0..NR {
                    acc[i][j] += ap[i] * bp[j];
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let dst = c.add(i * rsc + j);
                let v = if bias.is_null() { alpha * v } else { alpha * v + *bias.add(j) };
                *dst = if beta == 0.0 { v } else { v + beta * *dst };
            }
        }
    }
}

/// Matrix-vector products (M = 1 or N = 1): no packing, the matrix is streamed once.
/// Computes y = alpha * Mat x + beta * y with Mat = A (when N = 1) or B^T (when M = 1).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemv_path(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    s: GemmStrides,
    bias: *const f32,
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let (rows, mat, m_rs, m_cs, x, x_s, y, y_s) = if n == 1 {
            (m, a, s.a_row, s.a_col, b, s.b_row, c, s.c_row)
        } else {
            (n, b, s.b_col, s.b_row, a, s.a_col, c, s.c_col)
        };
        let xv: Vec<f32> = (0..k).map(|p| *x.add(p * x_s)).collect();
        let store = |i: usize, v: f32| {
            let dst = y.add(i * y_s);
            // output i lies in column 0 (N = 1) or column i (M = 1)
            let v = match (bias.is_null(), n == 1) {
                (true, _) => alpha * v,
                (false, true) => alpha * v + *bias,
                (false, false) => alpha * v + *bias.add(i),
            };
            *dst = if beta == 0.0 { v } else { v + beta * *dst };
        };
        if m_cs == 1 {
            // dot form: each output is a contiguous matrix row dotted with x
            for i in 0..rows {
                let row = std::slice::from_raw_parts(mat.add(i * m_rs), k);
                store(i, crate::reduce::dot(row, &xv));
            }
        } else {
            // axpy form: accumulate x[p] times column p of the matrix
            let mut acc = vec![0.0f32; rows];
            for (p, &xp) in xv.iter().enumerate() {
                if m_rs == 1 {
                    let col = std::slice::from_raw_parts(mat.add(p * m_cs), rows);
                    crate::reduce::axpy(xp, col, &mut acc);
                } else {
                    for (i, slot) in acc.iter_mut().enumerate() {
                        *slot += xp * *mat.add(i * m_rs + p * m_cs);
                    }
                }
            }
            for (i, v) in acc.into_iter().enumerate() {
                store(i, v);
            }
        }
    }
}
