//! Unit tests of the GEMM internals (packing layouts, the reference); the sweep against the
//! reference on every path lives in `kernels/tests/gemm.rs`.

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

#[test]
fn transposing_pack_matches_its_reference_on_every_path() {
    // rows cover the 8-, 4- and 1-row groups; kc covers the 8-step blocks and leftovers
    for isa in Isa::available() {
        for &(width, rows) in &[(12, 12), (12, 11), (12, 5), (32, 32), (32, 17), (16, 3), (6, 6), (4, 4), (8, 1)] {
            for &kc in &[1, 7, 8, 9, 17, 64] {
                let stride = kc + 3;
                let src: Vec<f32> = (0..rows * stride).map(|i| i as f32 * 0.5 - 7.0).collect();
                let mut want = vec![f32::NAN; kc * width];
                let mut got = vec![f32::NAN; kc * width];
                // SAFETY: `isa` comes from Isa::available(); src holds rows x stride floats and
                // both outputs kc x width.
                unsafe {
                    pack_transposed_reference(rows, kc, width, src.as_ptr(), stride, &mut want);
                    pack_transposed(isa, rows, kc, width, src.as_ptr(), stride, &mut got);
                }
                assert_eq!(got, want, "{isa:?} width {width} rows {rows} kc {kc}");
            }
        }
    }
}

/// Outputs that two threads would write at once are refused before any thread starts: rows of
/// C on one address (stride 0), products whose C views overlap, strides that overflow.
#[test]
fn overlapping_outputs_are_refused_not_raced() {
    use std::panic::catch_unwind;
    let a = vec![1.0f32; 64];
    let b = vec![1.0f32; 64];
    let refused = |f: &dyn Fn()| {
        let r = catch_unwind(std::panic::AssertUnwindSafe(f));
        let msg = r
            .err()
            .and_then(|p| p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string())));
        msg.unwrap_or_default()
    };
    // every row of C on the same 4 elements
    let aliased = GemmStrides { c_row: 0, ..GemmStrides::row_major(4, 4) };
    let msg = refused(&|| {
        let mut c = vec![0.0f32; 16];
        sgemm_with(Isa::best(), 2, 4, 4, 4, 1.0, &a, &b, 0.0, &mut c, aliased);
    });
    assert!(msg.contains("twice"), "{msg}");
    // two products of a batch on one C region
    let msg = refused(&|| {
        let mut c = vec![0.0f32; 32];
        sgemm_batched(2, 4, 4, 4, 1.0, &a, 16, &b, 16, 0.0, &mut c, 0, GemmStrides::row_major(4, 4));
    });
    assert!(msg.contains("twice"), "{msg}");
    let msg = refused(&|| {
        let mut c = vec![0.0f32; 32];
        sgemm_offsets(4, 4, 4, 1.0, &a, &[0, 16], &b, &[0, 16], 0.0, &mut c, &[0, 8], GemmStrides::row_major(4, 4));
    });
    assert!(msg.contains("twice"), "{msg}");
    // strides whose extent overflows
    let huge = GemmStrides { c_row: usize::MAX / 2, ..GemmStrides::row_major(4, 4) };
    let msg = refused(&|| {
        let mut c = vec![0.0f32; 16];
        sgemm_with(Isa::best(), 1, 4, 4, 4, 1.0, &a, &b, 0.0, &mut c, huge);
    });
    assert!(msg.contains("overflow"), "{msg}");
    // interleaved but disjoint views (heads of attention through permuted strides) still run
    let mut c = vec![0.0f32; 32];
    let heads = GemmStrides { c_row: 8, ..GemmStrides::row_major(4, 4) };
    sgemm_offsets(4, 4, 4, 1.0, &a, &[0, 16], &b, &[0, 16], 0.0, &mut c, &[0, 4], heads);
    assert!(c.iter().all(|&v| v == 4.0));
}
