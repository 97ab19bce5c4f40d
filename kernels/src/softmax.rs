//! Row-wise softmax and log-softmax over the last axis, forward and backward (reference).
//!
//! Rows are max-subtracted before exponentiation so large logits never overflow.
//! Buffers are (rows, cols) row-major.

/// y = softmax(x) per row. x, y: (rows, cols).
pub fn softmax_rows(x: &[f32], y: &mut [f32], cols: usize) {
    if cols == 0 {
        return;
    }
    for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
        let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = (v - max).exp();
            sum += *o as f64;
        }
        let inv = (1.0 / sum) as f32;
        yr.iter_mut().for_each(|o| *o *= inv);
    }
}

/// y = log_softmax(x) per row.
pub fn log_softmax_rows(x: &[f32], y: &mut [f32], cols: usize) {
    if cols == 0 {
        return;
    }
    for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
        let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = xr.iter().map(|&v| ((v - max) as f64).exp()).sum();
        // (v - max) - ln(sum) keeps precision when the logits are large.
        let log_sum = sum.ln() as f32;
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = (v - max) - log_sum;
        }
    }
}

/// Softmax backward from its output: dx = y * (dy - sum(dy * y)).
pub fn softmax_rows_backward(y: &[f32], dy: &[f32], dx: &mut [f32], cols: usize) {
    if cols == 0 {
        return;
    }
    for ((yr, dyr), dxr) in y.chunks_exact(cols).zip(dy.chunks_exact(cols)).zip(dx.chunks_exact_mut(cols)) {
        let dot: f64 = yr.iter().zip(dyr).map(|(&a, &b)| a as f64 * b as f64).sum();
        let dot = dot as f32;
        for ((o, &yv), &g) in dxr.iter_mut().zip(yr).zip(dyr) {
            *o = yv * (g - dot);
        }
    }
}

/// Log-softmax backward from its output: dx = dy - exp(y) * sum(dy).
pub fn log_softmax_rows_backward(y: &[f32], dy: &[f32], dx: &mut [f32], cols: usize) {
    if cols == 0 {
        return;
    }
    for ((yr, dyr), dxr) in y.chunks_exact(cols).zip(dy.chunks_exact(cols)).zip(dx.chunks_exact_mut(cols)) {
        let sum: f64 = dyr.iter().map(|&g| g as f64).sum();
        let sum = sum as f32;
        for ((o, &yv), &g) in dxr.iter_mut().zip(yr).zip(dyr) {
            *o = g - yv.exp() * sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_normalised() {
        let x = [1000.0, 1001.0, 999.0, -5.0, 0.0, 5.0];
        let mut y = [0.0; 6];
        softmax_rows(&x, &mut y, 3);
        assert!((y[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((y[1] - 0.665_240_9).abs() < 1e-6);
        let mut ly = [0.0; 6];
        log_softmax_rows(&x, &mut ly, 3);
        for i in 0..6 {
            assert!((ly[i].exp() - y[i]).abs() < 1e-6);
        }
    }
}
