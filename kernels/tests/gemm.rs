//! The fast GEMM against the reference on awkward sizes, every transpose combination, strided C,
//! alpha / beta, every instruction set the machine has and 1 or 2 threads; and bitwise equality
//! between thread counts.

use kernels::gemm::{
    gemm_reference, sgemm_batched, sgemm_bias_with, sgemm_blocked, sgemm_with, CacheBlocking, GemmStrides,
};
use kernels::Isa;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// Strides for A (m x k) and B (k x n), optionally transposed, and C (m x n) with a padded row
/// stride and optionally column-major.
fn strides(m: usize, k: usize, n: usize, ta: bool, tb: bool, c_colmajor: bool) -> GemmStrides {
    let (a_row, a_col) = if ta { (1, m) } else { (k, 1) };
    let (b_row, b_col) = if tb { (1, k) } else { (n, 1) };
    let (c_row, c_col) = if c_colmajor { (1, m + 3) } else { (n + 2, 1) };
    GemmStrides { a_row, a_col, b_row, b_col, c_row, c_col }
}

#[allow(clippy::too_many_arguments)]
fn check(isa: Isa, threads: usize, m: usize, k: usize, n: usize, ta: bool, tb: bool, cc: bool, alpha: f32, beta: f32) {
    let s = strides(m, k, n, ta, tb, cc);
    let a = data(m * k, (m * 31 + k) as u64);
    let b = data(k * n, (k * 17 + n) as u64);
    let c_len = if cc { (m + 3) * n.max(1) } else { (n + 2) * m.max(1) };
    let c0 = data(c_len, 99);
    let mut want = c0.clone();
    gemm_reference(m, k, n, alpha, &a, &b, beta, &mut want, s);
    let mut got = c0.clone();
    sgemm_with(isa, threads, m, k, n, alpha, &a, &b, beta, &mut got, s);
    let tol = 1e-5 * (k as f32).sqrt().max(1.0);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{isa:?} t{threads} m{m} k{k} n{n} ta{ta} tb{tb} cc{cc}: C[{i}] = {g}, want {w}"
        );
    }
}

const SIZES: [usize; 12] = [1, 3, 7, 15, 17, 31, 33, 63, 65, 127, 257, 1000];

#[test]
fn fast_gemm_matches_reference_on_awkward_shapes_all_paths() {
    for isa in Isa::available() {
        for (i, &m) in SIZES.iter().enumerate() {
            // vary k and n with m so the sweep stays affordable but covers edges
            let k = SIZES[(i + 3) % SIZES.len()];
            let n = SIZES[(i + 7) % SIZES.len()];
            for &(ta, tb, cc) in
                &[(false, false, false), (true, false, false), (false, true, false), (true, true, true)]
            {
                check(isa, 1, m, k, n, ta, tb, cc, 1.0, 0.0);
            }
            check(isa, 2, m, k, n, false, false, false, 0.5, 2.0);
            check(isa, 2, n, m, k, true, false, false, -1.0, 1.0);
        }
        // skinny shapes, K spanning several kc blocks, and zero-size edges
        for &(m, k, n) in &[
            (1, 700, 300),
            (300, 700, 1),
            (16, 520, 65),
            (5, 1, 40),
            (200, 1, 200),
            (64, 64, 64),
            (0, 5, 5),
            (5, 0, 5),
        ] {
            check(isa, 1, m, k, n, false, false, false, 1.0, 0.5);
            check(isa, 2, m, k, n, true, true, false, 1.0, 0.0);
        }
    }
}

#[test]
fn beta_zero_ignores_nan_in_c() {
    for isa in Isa::available() {
        let (m, k, n) = (13, 9, 40);
        let a = data(m * k, 1);
        let b = data(k * n, 2);
        let mut c = vec![f32::NAN; m * n];
        sgemm_with(isa, 1, m, k, n, 1.0, &a, &b, 0.0, &mut c, GemmStrides::row_major(k, n));
        assert!(c.iter().all(|v| v.is_finite()), "{isa:?}");
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    for isa in Isa::available() {
        let (m, k, n) = (300, 400, 500);
        let a = data(m * k, 3);
        let b = data(k * n, 4);
        let mut one = vec![0.0; m * n];
        let mut two = vec![0.0; m * n];
        sgemm_with(isa, 1, m, k, n, 1.0, &a, &b, 0.0, &mut one, GemmStrides::row_major(k, n));
        sgemm_with(isa, 2, m, k, n, 1.0, &a, &b, 0.0, &mut two, GemmStrides::row_major(k, n));
        assert_eq!(one, two, "{isa:?}");
    }
}

#[test]
fn batched_gemm_matches_per_product_reference() {
    // attention-like: (batch*heads) products of (T x d) x (d x T), B given transposed
    let (batch, m, k, n) = (12, 33, 16, 33);
    let a = data(batch * m * k, 5);
    let b = data(batch * n * k, 6);
    let s = GemmStrides { a_row: k, a_col: 1, b_row: 1, b_col: k, c_row: n, c_col: 1 };
    let mut c = vec![0.0; batch * m * n];
    sgemm_batched(batch, m, k, n, 0.25, &a, m * k, &b, n * k, 0.0, &mut c, m * n, s);
    for i in 0..batch {
        let mut want = vec![0.0; m * n];
        gemm_reference(m, k, n, 0.25, &a[i * m * k..], &b[i * n * k..], 0.0, &mut want, s);
        for (g, w) in c[i * m * n..(i + 1) * m * n].iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "product {i}");
        }
    }
}

#[test]
fn bias_epilogue_adds_one_bias_row_on_every_path() {
    // C = alpha A B + beta C + bias[j]: the reference product plus the bias added afterwards.
    // Shapes cover full and edge tiles, K over several kc blocks (the bias must go in once),
    // every thread split (static halves, shared-B row chunks, shared-A column chunks, the
    // last two also with several K blocks), strided C, and the GEMV paths.
    for isa in Isa::available() {
        for &(m, k, n) in &[
            (1, 9, 33),
            (37, 1, 1),
            (13, 17, 29),
            (65, 800, 70),
            (300, 40, 31),
            (24, 100, 300),
            (40, 800, 300),
            (200, 800, 40),
            (5, 0, 7),
        ] {
            for &(threads, ta, tb, cc, alpha, beta) in &[
                (1, false, true, false, 1.0, 0.0),
                (2, true, false, false, 0.5, 1.0),
                (2, false, false, true, -1.0, 0.5),
            ] {
                let s = strides(m, k, n, ta, tb, cc);
                let a = data(m * k, 3);
                let b = data(k * n, 4);
                let bias = data(n, 5);
                let c_len = if cc { (m + 3) * n } else { (n + 2) * m };
                let c0 = data(c_len, 6);
                let mut want = c0.clone();
                gemm_reference(m, k, n, alpha, &a, &b, beta, &mut want, s);
                for i in 0..m {
                    for (j, &bj) in bias.iter().enumerate() {
                        want[i * s.c_row + j * s.c_col] += bj;
                    }
                }
                let mut got = c0.clone();
                sgemm_bias_with(isa, threads, m, k, n, alpha, &a, &b, beta, &mut got, s, Some(&bias));
                let tol = 1e-5 * (k as f32).sqrt().max(1.0);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= tol * (1.0 + w.abs()),
                        "{isa:?} t{threads} m{m} k{k} n{n} ta{ta} tb{tb} cc{cc}: C[{i}] = {g}, want {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn prepacked_b_gives_the_same_bits_as_sgemm() {
    // (m, k, n) over edge tiles, several K blocks, B plain and transposed, with and without
    // bias, one and two threads: the packed-B product must equal sgemm bit for bit.
    for &(m, k, n) in &[(2, 3, 2), (13, 17, 33), (50, 400, 70), (97, 785, 31), (200, 64, 300)] {
        for tb in [false, true] {
            let a = data(m * k, 11);
            let b = data(k * n, 12);
            let bias = data(n, 13);
            let s = strides(m, k, n, false, tb, false);
            let c_len = m * s.c_row;
            for threads in [1, 2] {
                for with_bias in [false, true] {
                    let bias = with_bias.then_some(&bias[..]);
                    let mut want = data(c_len, 14);
                    let mut got = want.clone();
                    sgemm_bias_with(Isa::best(), threads, m, k, n, 0.5, &a, &b, 0.25, &mut want, s, bias);
                    let packed = kernels::gemm::PackedB::new(Isa::best(), k, n, &b, s.b_row, s.b_col);
                    assert_eq!(packed.shape(), (k, n));
                    kernels::gemm::sgemm_packed_b(threads, m, 0.5, &a, &packed, 0.25, &mut got, s, bias);
                    assert!(
                        want.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "({m}, {k}, {n}) tb {tb} threads {threads} bias {with_bias}"
                    );
                }
            }
        }
    }
}

/// Small and odd cache blocks put every loop's edge inside the test sizes: K split into many
/// blocks (the beta of later blocks is 1), row blocks of one micro-panel, column panels of one
/// micro-tile, on one thread and on two (where the split and the shared packing meet them).
#[test]
fn every_blocking_gives_the_reference_result() {
    for isa in Isa::available() {
        let default = CacheBlocking::default_for(isa);
        for blocking in [
            CacheBlocking { kc: 1, mc: 1, nc: 1 },
            CacheBlocking { kc: 7, mc: 13, nc: 17 },
            CacheBlocking { kc: 64, mc: 50, nc: 40 },
            default,
        ] {
            // the last two are large enough (over 2^20 flops) to be split across two threads
            for (m, k, n) in [(33, 65, 47), (130, 17, 70), (7, 300, 129), (257, 33, 9), (200, 150, 70), (40, 120, 300)]
            {
                for &(ta, tb) in &[(false, false), (true, true), (false, true)] {
                    for threads in [1, 2] {
                        let s = strides(m, k, n, ta, tb, false);
                        let a = data(m * k, (m + k) as u64);
                        let b = data(k * n, (k + 3 * n) as u64);
                        let c0 = data((n + 2) * m, 5);
                        let mut want = c0.clone();
                        gemm_reference(m, k, n, 0.5, &a, &b, 0.25, &mut want, s);
                        let mut got = c0.clone();
                        sgemm_blocked(isa, threads, blocking, m, k, n, 0.5, &a, &b, 0.25, &mut got, s);
                        let tol = 1e-5 * (k as f32).sqrt();
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - w).abs() <= tol * (1.0 + w.abs()),
                                "{isa:?} {blocking:?} t{threads} m{m} k{k} n{n}: C[{i}] = {g}, want {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
