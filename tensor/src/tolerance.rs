//! The one tolerance helper every numeric test uses (in the spirit of burn's `Tolerance`).
//!
//! An element passes when `|got - want| <= abs + rel * |want|`. Where values of very different
//! magnitudes share a tensor (gradients), [`Tolerance::scaled`] measures the relative part
//! against the largest |want| of the tensor instead, so tiny entries are not judged on noise.

#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub rel: f64,
    pub abs: f64,
    /// Judge `rel` against max |want| of the whole tensor rather than per element.
    pub tensor_scale: bool,
}

impl Tolerance {
    /// Per-element relative + absolute tolerance.
    pub fn new(rel: f64, abs: f64) -> Self {
        Tolerance { rel, abs, tensor_scale: false }
    }

    /// Relative to the tensor's largest magnitude: |got - want| <= abs + rel * max|want|.
    pub fn scaled(rel: f64, abs: f64) -> Self {
        Tolerance { rel, abs, tensor_scale: true }
    }

    /// `Ok(max abs error)` or an error naming the first offending element.
    pub fn check(&self, what: &str, got: &[f32], want: &[f32]) -> Result<f64, String> {
        if got.len() != want.len() {
            return Err(format!("{what}: {} values, expected {}", got.len(), want.len()));
        }
        let scale = want.iter().fold(0.0f64, |m, &w| m.max((w as f64).abs()));
        let mut worst = 0.0f64;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g as f64 - w as f64).abs();
            let reference = if self.tensor_scale { scale } else { (w as f64).abs() };
            let allowed = self.abs + self.rel * reference;
            let within = err <= allowed; // false for NaN
            if !within {
                return Err(format!("{what}[{i}]: got {g:e}, want {w:e} (|diff| {err:.3e} > {allowed:.3e})"));
            }
            worst = worst.max(err);
        }
        Ok(worst)
    }

    /// Panics with the message of [`Tolerance::check`] (for tests).
    pub fn assert(&self, what: &str, got: &[f32], want: &[f32]) {
        if let Err(e) = self.check(what, got, want) {
            panic!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_accepts_close_and_rejects_far_and_nan() {
        let t = Tolerance::new(1e-3, 0.0);
        assert!(t.check("x", &[1.0005], &[1.0]).is_ok());
        assert!(t.check("x", &[1.002], &[1.0]).is_err());
        assert!(t.check("x", &[f32::NAN], &[1.0]).is_err());
        assert!(t.check("x", &[1.0], &[1.0, 2.0]).is_err());
        let s = Tolerance::scaled(1e-3, 0.0);
        assert!(s.check("x", &[100.0, 0.05], &[100.0, 0.0]).is_ok());
        assert!(s.check("x", &[100.0, 0.5], &[100.0, 0.0]).is_err());
    }
}
