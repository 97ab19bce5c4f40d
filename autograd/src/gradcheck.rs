//! The gradient checker: compares every analytic gradient with finite differences.
//!
//! For a function `f` of some input tensors, we fix a random weight tensor `w` shaped like the
//! output and check the gradient of the scalar `S = sum(w * f(x))` (so every output element,
//! not just their sum, is exercised). Analytic: one `backward_with(w)`. Numeric: for every
//! input element, central differences `D(h) = (S(x + h) - S(x - h)) / 2h` at h and h/2,
//! combined by Richardson extrapolation into `(4 D(h/2) - D(h)) / 3`, whose error is O(h^4);
//! the forward passes run on the same op graph under `no_grad`, the sums and differences in
//! f64, with `h` the step actually representable in f32 at that element. What remains is the
//! f32 rounding of the forward, about 1e-5 of the output's scale at h = 1e-2: the default
//! tolerances (1e-4 absolute plus 1e-4 relative) are twenty times below the distance between,
//! say, the erf and tanh forms of GELU's derivative.

use tensor::{Result, Rng, Tensor};

use crate::{no_grad, Var};

#[derive(Clone, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step.
    pub eps: f32,
    /// An element passes when |analytic - numeric| <= atol + rtol * |numeric|.
    pub atol: f64,
    pub rtol: f64,
    /// Seed of the output weights.
    pub seed: u64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions { eps: 1e-2, atol: 1e-4, rtol: 1e-4, seed: 0x5eed }
    }
}

/// Largest disagreement found, for reporting.
#[derive(Clone, Debug, Default)]
pub struct GradcheckReport {
    pub elements_checked: usize,
    pub max_abs_error: f64,
}

fn weighted_sum(out: &Tensor, w: &[f32]) -> f64 {
    out.to_vec().iter().zip(w).map(|(&o, &w)| o as f64 * w as f64).sum()
}

/// Checks the gradients of `f` with respect to every input. Returns `Err` with a description
/// of the first element whose analytic and numeric gradients disagree.
pub fn check_gradients(
    inputs: &[Tensor],
    f: impl Fn(&[Var]) -> Result<Var>,
    opts: &GradcheckOptions,
) -> std::result::Result<GradcheckReport, String> {
    let leaves: Vec<Var> = inputs.iter().map(|t| Var::parameter(t.contiguous())).collect();
    let out = f(&leaves).map_err(|e| format!("forward failed: {e}"))?;
    let out_shape = out.shape();
    let mut rng = Rng::new(opts.seed);
    let w = Tensor::rand_uniform_with(&out_shape, -1.0, 1.0, &mut rng);
    let w_vals = w.to_vec();
    if out.requires_grad() {
        out.backward_with(w).map_err(|e| format!("backward failed: {e}"))?;
    }
    drop(out);

    let mut report = GradcheckReport::default();
    for (i, input) in inputs.iter().enumerate() {
        let analytic = leaves[i].grad().map(|g| g.to_vec()).unwrap_or_else(|| vec![0.0; input.numel()]);
        let mut probe = input.to_vec();
        for j in 0..probe.len() {
            let orig = probe[j];
            let eval = |probe: &[f32]| -> std::result::Result<f64, String> {
                let vars: Vec<Var> = inputs
                    .iter()
                    .enumerate()
                    .map(|(k, t)| {
                        if k == i {
                            Var::constant(Tensor::from_vec(probe.to_vec(), t.shape()).expect("same shape"))
                        } else {
                            Var::constant(t.contiguous())
                        }
                    })
                    .collect();
                let y = no_grad(|| f(&vars)).map_err(|e| format!("forward failed: {e}"))?;
                Ok(weighted_sum(&y.value(), &w_vals))
            };
            // central difference over the steps actually representable around `orig`
            let mut central = |step: f32| -> std::result::Result<f64, String> {
                let (up, down) = (orig + step, orig - step);
                probe[j] = up;
                let s_up = eval(&probe)?;
                probe[j] = down;
                let s_down = eval(&probe)?;
                probe[j] = orig;
                Ok((s_up - s_down) / (up as f64 - down as f64))
            };
            // Richardson extrapolation: D(h) = f' + c h^2 + O(h^4), so (4 D(h/2) - D(h)) / 3
            // cancels the h^2 term. That leaves f32 rounding of the forward as the error, which
            // a step of 1e-2 keeps near 1e-5 of the output's scale.
            let numeric = (4.0 * central(opts.eps / 2.0)? - central(opts.eps)?) / 3.0;
            let a = analytic[j] as f64;
            let err = (a - numeric).abs();
            report.elements_checked += 1;
            report.max_abs_error = report.max_abs_error.max(err);
            // written so that a NaN error fails too
            let within = err <= opts.atol + opts.rtol * numeric.abs();
            if !within {
                return Err(format!(
                    "input {i} (shape {:?}) element {j}: analytic {a:.6e} vs numeric {numeric:.6e} (|diff| {err:.3e})",
                    input.shape()
                ));
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::elementwise::mul;

    /// x^2 with a backward that forgets the factor 2.
    fn broken_square(x: &Var) -> Var {
        let xv = x.value();
        Var::from_fn(xv.mul(&xv).unwrap(), &[x], "broken_square", move |g, _| Ok(vec![Some(g.mul(&xv)?)]))
    }

    #[test]
    fn checker_rejects_a_wrong_backward_and_accepts_a_right_one() {
        let x = Tensor::rand_uniform(&[3, 2], 0.5, 1.5, 1);
        let err =
            check_gradients(&[x.clone()], |v| Ok(broken_square(&v[0])), &GradcheckOptions::default()).unwrap_err();
        assert!(err.contains("analytic"), "{err}");
        let ok = check_gradients(&[x], |v| mul(&v[0], &v[0]), &GradcheckOptions::default()).unwrap();
        assert_eq!(ok.elements_checked, 6);
    }

    #[test]
    fn checker_notices_a_missing_gradient() {
        // An op that claims its input has no gradient although the output depends on it.
        let x = Tensor::rand_uniform(&[4], 0.5, 1.5, 2);
        let err = check_gradients(
            &[x],
            |v| {
                let xv = v[0].value();
                Ok(Var::from_fn(xv.mul_scalar(3.0), &[&v[0]], "no_grad_op", |_, _| Ok(vec![None])))
            },
            &GradcheckOptions::default(),
        )
        .unwrap_err();
        assert!(err.contains("analytic 0"), "{err}");
    }
}
