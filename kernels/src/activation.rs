//! Scalar activation functions and their derivatives: the reference definitions that
//! autograd and the vectorised row kernels are tested against.
//!
//! GELU comes in two forms, as in PyTorch: the exact one, x * Phi(x) with the normal CDF
//! written through erf, and the tanh approximation used by the original BERT code.

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const INV_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// erf(x), evaluated in f64 through the Chebyshev fit of erfc in Numerical Recipes
/// (fractional error below 1.2e-7 everywhere: below f32 resolution for |erf| near 1, and
/// measured at < 1.2e-7 absolute against a 40-term series on [-4, 4]).
pub fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 {
        1.0 - erfc
    } else {
        erfc - 1.0
    }
}

/// GELU, exact (erf) form: x * Phi(x).
pub fn gelu_erf(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + erf(x * INV_SQRT_2))) as f32
}

/// d/dx GELU(erf form) = Phi(x) + x * phi(x).
pub fn gelu_erf_grad(x: f32) -> f32 {
    let x = x as f64;
    let cdf = 0.5 * (1.0 + erf(x * INV_SQRT_2));
    let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
    (cdf + x * pdf) as f32
}

/// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
pub fn gelu_tanh(x: f32) -> f32 {
    let x = x as f64;
    let inner = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    (0.5 * x * (1.0 + inner.tanh())) as f32
}

pub fn gelu_tanh_grad(x: f32) -> f32 {
    let x = x as f64;
    let inner = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    let th = inner.tanh();
    let d_inner = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x);
    (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * d_inner) as f32
}

/// Logistic sigmoid, stable for large |x|.
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// SiLU (swish): x * sigmoid(x).
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// d/dx SiLU = s (1 + x (1 - s)), s = sigmoid(x).
pub fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_series(x: f64) -> f64 {
        // Maclaurin series, exact enough in f64 on [-4, 4] with 60 terms.
        let mut term = x;
        let mut sum = x;
        for n in 1..120 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_matches_series_and_derivatives_match_differences() {
        let mut worst = 0.0f64;
        for i in -400..=400 {
            let x = i as f64 / 100.0;
            worst = worst.max((erf(x) - erf_series(x)).abs());
        }
        assert!(worst < 1.3e-7, "max |erf - series| = {worst}");
        // Central differences with h = 1e-2: truncation (h^2 / 6 times the third derivative)
        // and f32 rounding of f (an ulp over 2h) each stay below 3e-5 here, so a 1e-4 bound
        // separates the erf and tanh forms of GELU, whose derivatives differ by up to 8.7e-4.
        let mut max_gap = 0.0f64;
        for i in -60..=60 {
            let x = i as f32 / 10.0;
            let h = 1e-2f64;
            for (f, g) in [
                (gelu_erf as fn(f32) -> f32, gelu_erf_grad as fn(f32) -> f32),
                (gelu_tanh, gelu_tanh_grad),
                (silu, silu_grad),
            ] {
                let num = (f((x as f64 + h) as f32) as f64 - f((x as f64 - h) as f32) as f64) / (2.0 * h);
                assert!((num - g(x) as f64).abs() < 1e-4, "x={x} num={num} ana={}", g(x));
            }
            max_gap = max_gap.max((gelu_erf_grad(x) - gelu_tanh_grad(x)).abs() as f64);
        }
        assert!(max_gap > 5e-4, "the two GELU derivatives must differ visibly on this grid: {max_gap}");
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
    }
}
