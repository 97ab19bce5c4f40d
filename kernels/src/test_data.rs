//! Test inputs shared by the kernels' unit tests: awkward sizes, deterministic values.

/// Lengths that put every vector loop's tail and every unrolled loop's remainder to work.
pub const SIZES: [usize; 12] = [1, 3, 7, 15, 17, 31, 33, 63, 65, 127, 257, 1000];

/// `n` deterministic values in [-range, range) (a multiplicative hash of the index).
pub fn data(n: usize, seed: u32, range: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
                * 2.0
                * range
        })
        .collect()
}

/// Asserts |got - want| <= tol (1 + |want|) element by element.
pub fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
    }
}
