//! Central finite differences in f64: the oracle every analytic gradient is checked against.

/// d f / d x_i for every i, by (f(x + h e_i) - f(x - h e_i)) / 2h, evaluated in f64.
pub fn central_difference(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = probe[i];
            probe[i] = orig + h;
            let up = f(&probe);
            probe[i] = orig - h;
            let down = f(&probe);
            probe[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn central_difference_of_known_functions() {
        // f(x, y) = x^2 y + sin(y): df/dx = 2xy, df/dy = x^2 + cos(y)
        let g = central_difference(&[1.5, -0.7], 1e-5, |v| v[0] * v[0] * v[1] + v[1].sin());
        assert!((g[0] - 2.0 * 1.5 * -0.7).abs() < 1e-8);
        assert!((g[1] - (2.25 + (-0.7f64).cos())).abs() < 1e-8);
    }
}
