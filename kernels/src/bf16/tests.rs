use super::*;
use crate::gemm::GemmStrides;
use crate::simd::Isa;

#[test]
fn rounding_matches_half_on_every_class_of_value() {
    // every exponent, mantissa patterns around the rounding point, both signs
    let mut checked = 0;
    for exp in 0u32..=255 {
        for low in [
            0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff, 0x1_0000, 0x1_7fff, 0x1_8000, 0x1_8001, 0x7f_ffff, 0x40_0000,
            0x7f_8000,
        ] {
            for sign in [0u32, 1] {
                let bits = (sign << 31) | (exp << 23) | (low & 0x7f_ffff);
                let x = f32::from_bits(bits);
                let ours = to_bf16(x);
                let theirs = half::bf16::from_f32(x);
                if x.is_nan() {
                    assert!(ours.is_nan(), "{bits:#x} must stay NaN");
                    assert_eq!(ours.to_bits() & 0x8000, (bits >> 16) as u16 & 0x8000, "NaN sign");
                } else {
                    assert_eq!(ours.to_bits(), theirs.to_bits(), "{x:e} ({bits:#010x})");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 6000);
}

#[test]
fn rounding_edge_cases_are_pinned() {
    // ties to even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 and rounds to 1 (even)
    assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)).to_bits(), 0x3f80);
    // ... and 1 + 3 * 2^-8 rounds up to the even 1 + 2^-6
    assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)).to_bits(), 0x3f82);
    // just above the tie rounds up
    assert_eq!(to_bf16(f32::from_bits(0x3f80_8001)).to_bits(), 0x3f81);
    // f32::MAX is past the largest bf16's rounding boundary: infinity
    assert_eq!(to_bf16(f32::MAX).to_bits(), 0x7f80);
    assert_eq!(to_bf16(-f32::MAX).to_bits(), 0xff80);
    // the largest bf16 itself is exact
    assert_eq!(to_bf16(f32::from_bits(0x7f7f_0000)).to_bits(), 0x7f7f);
    assert_eq!(to_bf16(f32::INFINITY).to_bits(), 0x7f80);
    assert_eq!(to_bf16(f32::NEG_INFINITY).to_bits(), 0xff80);
    // a NaN whose payload lives only in the low bits must not round into infinity
    let low_nan = f32::from_bits(0x7f80_0001);
    assert!(to_bf16(low_nan).is_nan());
    assert!(to_bf16(f32::from_bits(0xff80_0001)).is_nan());
    // subnormals survive (no flush to zero) and round to nearest
    let smallest = f32::from_bits(0x0001_0000); // 2^-133: exactly the bf16 subnormal 0x0001
    assert_eq!(to_bf16(smallest).to_bits(), 0x0001);
    assert_eq!(to_bf16(f32::from_bits(0x0000_8000)).to_bits(), 0x0000, "half of it: tie to even (zero)");
    assert_eq!(to_bf16(f32::from_bits(0x0001_8000)).to_bits(), 0x0002, "1.5 of it: tie to even (2)");
    assert_eq!(to_bf16(f32::from_bits(0x0000_c000)).to_bits(), 0x0001, "0.75 of it: nearest (1)");
    assert_eq!(to_bf16(-0.0).to_bits(), 0x8000);
    // widening is exact
    for bits in [0u16, 1, 0x3f80, 0x7f7f, 0x7f80, 0xff80, 0x8001] {
        assert_eq!(to_bf16(bf16_bits_to_f32(bits)).to_bits(), bits);
    }
}

#[test]
fn slice_conversions_round_trip() {
    let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.0137).collect();
    let h = to_bf16_vec(&x);
    let back = to_f32_vec(&h);
    for (a, b) in x.iter().zip(&back) {
        assert!((a - b).abs() <= a.abs() * 2f32.powi(-8), "{a} -> {b}");
        assert_eq!(*b, round_through_bf16(*a));
    }
    let mut h2 = vec![bf16::ZERO; x.len()];
    f32_to_bf16_slice(&x, &mut h2);
    assert_eq!(h, h2);
}

/// Deterministic values in [-1, 1) (an LCG), varied enough to exercise rounding.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// |C - C_ref| within the f32 accumulation bound: K * 2^-23 * sum |a||b| (plus the alpha /
/// beta terms' own rounding).
#[allow(clippy::too_many_arguments)]
fn assert_close_to_reference(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    s: GemmStrides,
    c0: &[f32],
    beta: f32,
    got: &[f32],
    want: &[f32],
    what: &str,
) {
    for i in 0..m {
        for j in 0..n {
            let mut mag = 0.0f64;
            for p in 0..k {
                mag += (round_through_bf16(a[i * s.a_row + p * s.a_col]) as f64
                    * round_through_bf16(b[p * s.b_row + j * s.b_col]) as f64)
                    .abs();
            }
            let at = i * s.c_row + j * s.c_col;
            let bound = (k as f64 + 4.0) * 2f64.powi(-23) * (mag + (beta as f64 * c0[at] as f64).abs()) + 1e-30;
            let err = (got[at] as f64 - want[at] as f64).abs();
            assert!(
                err <= bound,
                "{what}: C[{i},{j}] = {} vs reference {} (err {err:e} > bound {bound:e})",
                got[at],
                want[at]
            );
        }
    }
}

#[test]
fn every_kernel_matches_the_reference_on_awkward_shapes() {
    // edges in every loop: M and N off the tile sizes, K odd and across the kc blocks
    let shapes =
        [(1, 1, 1), (3, 5, 7), (12, 32, 32), (33, 65, 31), (32, 32, 32), (45, 513, 70), (64, 1100, 97), (130, 40, 300)];
    for kernel in Bf16Kernel::available() {
        for &(m, k, n) in &shapes {
            for (alpha, beta) in [(1.0f32, 0.0f32), (1.0, 1.0), (0.5, -2.0)] {
                let a = values(m * k, 1);
                let b = values(k * n, 2);
                let s = GemmStrides::row_major(k, n);
                let c0 = values(m * n, 3);
                let mut want = c0.clone();
                gemm_bf16_reference(m, k, n, alpha, &a, &b, beta, &mut want, s);
                let mut got = c0.clone();
                gemm_bf16_with(kernel, 2, m, k, n, alpha, &a, &b, beta, &mut got, s);
                let what = format!("{} {m}x{k}x{n} alpha {alpha} beta {beta}", kernel.name());
                assert_close_to_reference(m, k, n, &a, &b, s, &c0, beta, &got, &want, &what);
                // bf16 operands give the same result as f32 operands rounded while packing
                let (ah, bh) = (to_bf16_vec(&a), to_bf16_vec(&b));
                let mut got_h = c0.clone();
                gemm_bf16_with(kernel, 2, m, k, n, alpha, &ah, &bh, beta, &mut got_h, s);
                assert_eq!(got, got_h, "{what}: bf16 and f32 operands differ");
            }
        }
    }
}

#[test]
fn transposed_and_strided_operands() {
    // B = W^T of a (n x k) row-major weight, as a linear layer reads it; C with a row stride
    let (m, k, n) = (37, 96, 50);
    let a = values(m * k, 4);
    let w = values(n * k, 5);
    let s = GemmStrides { a_row: k, a_col: 1, b_row: 1, b_col: k, c_row: n + 3, c_col: 1 };
    let c0 = values(m * (n + 3), 6);
    let mut want = c0.clone();
    gemm_bf16_reference(m, k, n, 1.0, &a, &w, 0.0, &mut want, s);
    for kernel in Bf16Kernel::available() {
        let mut got = c0.clone();
        gemm_bf16_with(kernel, 2, m, k, n, 1.0, &a, &w, 0.0, &mut got, s);
        assert_close_to_reference(m, k, n, &a, &w, s, &c0, 0.0, &got, &want, kernel.name());
        // the padding columns of C's rows are untouched
        for i in 0..m {
            for j in n..n + 3 {
                assert_eq!(got[i * (n + 3) + j], c0[i * (n + 3) + j]);
            }
        }
        // C column-major (c_col != 1)
        let sc = GemmStrides { c_row: 1, c_col: m, ..s };
        let mut want_t = vec![0.0; m * n];
        gemm_bf16_reference(m, k, n, 1.0, &a, &w, 0.0, &mut want_t, sc);
        let mut got_t = vec![f32::NAN; m * n];
        gemm_bf16_with(kernel, 2, m, k, n, 1.0, &a, &w, 0.0, &mut got_t, sc);
        assert_close_to_reference(m, k, n, &a, &w, sc, &vec![0.0; m * n], 0.0, &got_t, &want_t, kernel.name());
    }
}

#[test]
fn the_widening_path_equals_the_f32_gemm_on_rounded_inputs() {
    let (m, k, n) = (20, 70, 40);
    let a = values(m * k, 7);
    let b = values(k * n, 8);
    let s = GemmStrides::row_major(k, n);
    let (ar, br): (Vec<f32>, Vec<f32>) =
        (a.iter().map(|&x| round_through_bf16(x)).collect(), b.iter().map(|&x| round_through_bf16(x)).collect());
    for isa in Isa::available() {
        let mut want = vec![0.0; m * n];
        crate::gemm::sgemm_with(isa, 1, m, k, n, 1.0, &ar, &br, 0.0, &mut want, s);
        let mut got = vec![0.0; m * n];
        gemm_bf16_with(Bf16Kernel::Widen(isa), 1, m, k, n, 1.0, &a, &b, 0.0, &mut got, s);
        assert_eq!(got, want, "{}", isa.name());
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (m, k, n) = (96, 300, 160);
    let a = values(m * k, 9);
    let b = values(k * n, 10);
    let s = GemmStrides::row_major(k, n);
    for kernel in Bf16Kernel::available() {
        let mut one = vec![0.0; m * n];
        gemm_bf16_with(kernel, 1, m, k, n, 1.0, &a, &b, 0.0, &mut one, s);
        for threads in [2, 3] {
            let mut many = vec![0.0; m * n];
            gemm_bf16_with(kernel, threads, m, k, n, 1.0, &a, &b, 0.0, &mut many, s);
            assert_eq!(one, many, "{} with {threads} threads", kernel.name());
        }
    }
}

#[test]
fn nan_and_infinity_propagate() {
    let (m, k, n) = (32, 64, 32);
    let mut a = values(m * k, 11);
    let b = values(k * n, 12);
    a[5 * k + 3] = f32::NAN;
    a[9 * k + 1] = f32::INFINITY;
    let s = GemmStrides::row_major(k, n);
    for kernel in Bf16Kernel::available() {
        let mut c = vec![0.0; m * n];
        gemm_bf16_with(kernel, 1, m, k, n, 1.0, &a, &b, 0.0, &mut c, s);
        assert!(c[5 * n..6 * n].iter().all(|v| v.is_nan()), "{}", kernel.name());
        assert!(c[9 * n..10 * n].iter().all(|v| v.is_infinite() || v.is_nan()), "{}", kernel.name());
        assert!(c[..5 * n].iter().all(|v| v.is_finite()), "{}", kernel.name());
    }
}

#[test]
fn a_prepacked_b_gives_the_bits_of_the_plain_product() {
    for kernel in Bf16Kernel::available() {
        for &(m, k, n) in &[(5, 7, 3), (70, 600, 90), (64, 1100, 1300)] {
            let a = values(m * k, 13);
            let w = values(n * k, 14); // (n x k): B = W^T
            let s = GemmStrides { a_row: k, a_col: 1, b_row: 1, b_col: k, c_row: n, c_col: 1 };
            let packed = PackedBf16B::new(kernel, k, n, &w, 1, k);
            for (alpha, beta) in [(1.0f32, 0.0f32), (1.0, 1.0)] {
                let c0 = values(m * n, 15);
                let mut plain = c0.clone();
                gemm_bf16_with(kernel, 2, m, k, n, alpha, &a, &w, beta, &mut plain, s);
                let mut pre = c0.clone();
                gemm_bf16_packed_b(2, m, alpha, &a, &packed, beta, &mut pre, s, None);
                // the same K blocks, so the same sums in the same order
                assert_eq!(plain, pre, "{} {m}x{k}x{n} alpha {alpha} beta {beta}", kernel.name());
            }
        }
    }
}

#[test]
fn a_read_in_place_copied_or_transposed_gives_the_same_bits() {
    // The AMX kernel reads a cache-aligned bf16 A where it lies and copies any other A into an
    // aligned bf16 buffer first: both must give the same bits, as must A read transposed.
    let (m, k, n) = (70, 96, 80);
    let a = values(m * k, 16);
    let b = values(k * n, 17);
    let s = GemmStrides::row_major(k, n);
    let ah = to_bf16_vec(&a);
    // the same bf16 A at every 2-byte offset within a cache line (one of them aligned)
    let mut storage = vec![bf16::ZERO; m * k + 32];
    for kernel in Bf16Kernel::available() {
        let mut first: Option<Vec<f32>> = None;
        for shift in 0..32 {
            storage[shift..shift + m * k].copy_from_slice(&ah);
            let mut c = vec![0.0; m * n];
            gemm_bf16_with(kernel, 2, m, k, n, 1.0, &storage[shift..shift + m * k], &b, 0.0, &mut c, s);
            match &first {
                None => first = Some(c),
                Some(f) => assert_eq!(f, &c, "{} A at offset {shift}", kernel.name()),
            }
        }
        // A^T stored (k x m), read with strides (1, m)
        let at: Vec<f32> = (0..k * m).map(|e| a[(e % m) * k + e / m]).collect();
        let st = GemmStrides { a_row: 1, a_col: m, ..s };
        let mut c = vec![0.0; m * n];
        gemm_bf16_with(kernel, 2, m, k, n, 1.0, &at, &b, 0.0, &mut c, st);
        assert_eq!(first.as_ref().unwrap(), &c, "{} transposed A", kernel.name());
    }
}

#[test]
fn the_bias_row_is_added_in_the_merge() {
    // C = alpha A B + beta C + bias equals the product followed by adding the bias, on every
    // kernel, plain and with B pre-packed, with and without reading C
    let (m, k, n) = (45, 70, 90);
    let a = values(m * k, 18);
    let w = values(n * k, 19);
    let bias = values(n, 20);
    let s = GemmStrides { a_row: k, a_col: 1, b_row: 1, b_col: k, c_row: n, c_col: 1 };
    for kernel in Bf16Kernel::available() {
        let packed = PackedBf16B::new(kernel, k, n, &w, 1, k);
        for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 2.0)] {
            let c0 = values(m * n, 21);
            let mut want = c0.clone();
            gemm_bf16_with(kernel, 2, m, k, n, alpha, &a, &w, beta, &mut want, s);
            for (i, v) in want.iter_mut().enumerate() {
                *v += bias[i % n];
            }
            let mut got = c0.clone();
            gemm_bf16_bias_with(kernel, 2, m, k, n, alpha, &a, &w, beta, &mut got, s, Some(&bias));
            let mut pre = c0.clone();
            gemm_bf16_packed_b(2, m, alpha, &a, &packed, beta, &mut pre, s, Some(&bias));
            for i in 0..m * n {
                let tol = 1e-6 * (1.0 + want[i].abs());
                let what = format!("{} alpha {alpha} beta {beta} at {i}", kernel.name());
                assert!((got[i] - want[i]).abs() <= tol, "{what}: {} vs {}", got[i], want[i]);
                assert_eq!(got[i], pre[i], "{what}: pre-packed differs");
            }
        }
    }
}

#[test]
fn the_fused_feed_forward_equals_its_steps_taken_one_by_one() {
    // act(x W1^T + b1) rounded to bf16, times W2^T, + b2: fused (the hidden layer activated
    // and rounded as it leaves the accumulators) against separate products and passes
    use crate::activation::{activation_forward, Activation};
    let (m, k, n1, n2) = (45, 70, 100, 37);
    let x = values(m * k, 22);
    let w1 = values(n1 * k, 23);
    let w2 = values(n2 * n1, 24);
    let (b1, b2) = (values(n1, 25), values(n2, 26));
    for kernel in Bf16Kernel::available() {
        let p1 = PackedBf16B::new(kernel, k, n1, &w1, 1, k);
        let p2 = PackedBf16B::new(kernel, n1, n2, &w2, 1, n1);
        for act in [None, Some(Activation::GeluErf), Some(Activation::GeluTanh)] {
            for with_bias in [false, true] {
                let (bias1, bias2) = if with_bias { (Some(&b1[..]), Some(&b2[..])) } else { (None, None) };
                let mut fused = vec![f32::NAN; m * n2];
                feed_forward_bf16(2, m, &x, &p1, bias1, act, &p2, bias2, &mut fused);
                let s1 = GemmStrides { a_row: k, a_col: 1, b_row: 0, b_col: 0, c_row: n1, c_col: 1 };
                let mut pre = vec![0.0; m * n1];
                gemm_bf16_packed_b(1, m, 1.0, &x, &p1, 0.0, &mut pre, s1, bias1);
                let mut post = pre.clone();
                if let Some(act) = act {
                    activation_forward(act, &pre, &mut post);
                }
                let hidden = to_bf16_vec(&post);
                let s2 = GemmStrides { a_row: n1, a_col: 1, b_row: 0, b_col: 0, c_row: n2, c_col: 1 };
                let mut steps = vec![0.0; m * n2];
                gemm_bf16_packed_b(1, m, 1.0, &hidden, &p2, 0.0, &mut steps, s2, bias2);
                // the same sums; a hidden value may differ by one bf16 step where a vector and a
                // scalar activation round the last bit of an f32 differently
                let scale = steps.iter().fold(0.0f32, |s, v| s.max(v.abs()));
                for (i, (a, b)) in fused.iter().zip(&steps).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-3 * scale,
                        "{} {act:?} bias {with_bias}: y[{i}] = {a} vs {b} (scale {scale})",
                        kernel.name()
                    );
                }
            }
        }
    }
}
