//! Weight initialisers: BERT's normal(0, 0.02), truncated normal (TF's, resampling beyond two
//! standard deviations), Xavier / Glorot uniform and Kaiming / He normal (fan-in or fan-out).
//!
//! Fan sizes follow PyTorch: for a weight of shape (out, in, ...) fan_in = in * receptive field,
//! fan_out = out * receptive field. Our NHWC conv weights are passed with explicit fans.

use tensor::{Rng, Tensor};

/// Normal(mean, std) samples: BERT initialises every Linear and Embedding with std 0.02.
pub fn normal(shape: &[usize], mean: f32, std: f32, rng: &mut Rng) -> Tensor {
    Tensor::randn_with(shape, mean, std, rng)
}

/// Normal(0, std) restricted to [-2 std, 2 std] by resampling (TF's `truncated_normal`).
pub fn truncated_normal(shape: &[usize], std: f32, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let mut data = Vec::with_capacity(n);
    while data.len() < n {
        let z = rng.normal();
        if z.abs() <= 2.0 {
            data.push((z * std as f64) as f32);
        }
    }
    Tensor::from_vec(data, shape).expect("length matches shape")
}

/// Xavier / Glorot uniform: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)).
pub fn xavier_uniform(shape: &[usize], fan_in: usize, fan_out: usize, gain: f32, rng: &mut Rng) -> Tensor {
    let a = gain * (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
    Tensor::rand_uniform_with(shape, -a, a, rng)
}

/// Kaiming / He normal for ReLU-like layers: N(0, gain / sqrt(fan)), gain = sqrt(2).
pub fn kaiming_normal(shape: &[usize], fan: usize, rng: &mut Rng) -> Tensor {
    let std = (2.0f32).sqrt() / (fan.max(1) as f32).sqrt();
    Tensor::randn_with(shape, 0.0, std, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(t: &Tensor) -> (f64, f64, f64) {
        let v = t.to_vec();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let max = v.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
        (mean, var.sqrt(), max)
    }

    #[test]
    fn initialisers_have_the_documented_moments_and_bounds() {
        let mut rng = Rng::new(5);
        let (m, s, _) = moments(&normal(&[200, 500], 0.0, 0.02, &mut rng));
        assert!(m.abs() < 1e-3 && (s - 0.02).abs() < 5e-4, "{m} {s}");
        let (m, s, max) = moments(&truncated_normal(&[200, 500], 1.0, &mut rng));
        // std of a standard normal truncated to +-2 is 0.8796
        assert!(m.abs() < 0.01 && (s - 0.8796).abs() < 0.01 && max <= 2.0, "{m} {s} {max}");
        let x = xavier_uniform(&[300, 100], 100, 300, 1.0, &mut rng);
        let bound = (6.0f64 / 400.0).sqrt();
        let (_, s, max) = moments(&x);
        assert!(max <= bound && (s - bound / 3f64.sqrt()).abs() < 0.005, "{s} {max}");
        let (_, s, _) = moments(&kaiming_normal(&[256, 64], 64, &mut rng));
        assert!((s - (2.0f64 / 64.0).sqrt()).abs() < 0.005);
    }
}
