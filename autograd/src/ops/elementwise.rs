//! Elementwise ops: binary arithmetic with NumPy broadcasting, scalar arithmetic, and the
//! unary maths and activations.
//!
//! Broadcast gradients are reduced back to each input's shape by `Tensor::sum_to_shape`,
//! the one place where that reduction lives.

use kernels::activation::{self as kernel, Activation};
use tensor::{Result, Tensor};

use super::maybe;
use crate::Var;

// ---------------------------------------------------------------------------------------------
// Binary ops (broadcasting)
// ---------------------------------------------------------------------------------------------

/// a + b
pub fn add(a: &Var, b: &Var) -> Result<Var> {
    let (av, bv) = (a.value(), b.value());
    let out = av.add(&bv)?;
    let (sa, sb) = (av.shape().to_vec(), bv.shape().to_vec());
    Ok(Var::from_fn(out, &[a, b], "add", move |g, needs| {
        Ok(vec![maybe(needs[0], || g.sum_to_shape(&sa))?, maybe(needs[1], || g.sum_to_shape(&sb))?])
    }))
}

/// a - b
pub fn sub(a: &Var, b: &Var) -> Result<Var> {
    let (av, bv) = (a.value(), b.value());
    let out = av.sub(&bv)?;
    let (sa, sb) = (av.shape().to_vec(), bv.shape().to_vec());
    Ok(Var::from_fn(out, &[a, b], "sub", move |g, needs| {
        Ok(vec![maybe(needs[0], || g.sum_to_shape(&sa))?, maybe(needs[1], || g.neg().sum_to_shape(&sb))?])
    }))
}

/// a * b
pub fn mul(a: &Var, b: &Var) -> Result<Var> {
    let (av, bv) = (a.value(), b.value());
    let out = av.mul(&bv)?;
    // d/da = g * b, d/db = g * a: keep each operand only if the *other* side needs a gradient.
    let keep_b = a.requires_grad().then(|| bv.clone());
    let keep_a = b.requires_grad().then(|| av.clone());
    let (sa, sb) = (av.shape().to_vec(), bv.shape().to_vec());
    Ok(Var::from_fn(out, &[a, b], "mul", move |g, needs| {
        Ok(vec![
            maybe(needs[0], || g.mul(keep_b.as_ref().expect("saved"))?.sum_to_shape(&sa))?,
            maybe(needs[1], || g.mul(keep_a.as_ref().expect("saved"))?.sum_to_shape(&sb))?,
        ])
    }))
}

/// a / b
pub fn div(a: &Var, b: &Var) -> Result<Var> {
    let (av, bv) = (a.value(), b.value());
    let out = av.div(&bv)?;
    let (sa, sb) = (av.shape().to_vec(), bv.shape().to_vec());
    let quotient = out.clone();
    Ok(Var::from_fn(out, &[a, b], "div", move |g, needs| {
        Ok(vec![
            maybe(needs[0], || g.div(&bv)?.sum_to_shape(&sa))?,
            // d(a/b)/db = -(a/b) / b
            maybe(needs[1], || g.mul(&quotient)?.div(&bv)?.neg().sum_to_shape(&sb))?,
        ])
    }))
}

// ---------------------------------------------------------------------------------------------
// Scalar ops
// ---------------------------------------------------------------------------------------------

/// x + s
pub fn add_scalar(x: &Var, s: f32) -> Var {
    Var::from_fn(x.value().add_scalar(s), &[x], "add_scalar", |g, _| Ok(vec![Some(g.clone())]))
}

/// x * s
pub fn mul_scalar(x: &Var, s: f32) -> Var {
    Var::from_fn(x.value().mul_scalar(s), &[x], "mul_scalar", move |g, _| Ok(vec![Some(g.mul_scalar(s))]))
}

/// x ^ p for a constant exponent p.
pub fn pow_scalar(x: &Var, p: f32) -> Var {
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x]) {
        return super::gpu::pow_scalar(x, p);
    }
    let xv = x.value();
    let out = xv.powf(p);
    Var::from_fn(out, &[x], "pow", move |g, _| {
        let d = xv.map(|v| p * v.powf(p - 1.0));
        Ok(vec![Some(g.mul(&d)?)])
    })
}

// ---------------------------------------------------------------------------------------------
// Unary maths and activations: y = f(x), dx = g * f'(x, y)
// ---------------------------------------------------------------------------------------------

/// Which value the derivative is computed from: the input, the output, or both.
fn unary(x: &Var, name: &'static str, f: fn(f32) -> f32, df: fn(f32, f32) -> f32) -> Var {
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x]) {
        return super::gpu::unary(x, name).unwrap_or_else(|e| panic!("{e}"));
    }
    let xv = x.value();
    let y = xv.map(f);
    let saved_y = y.clone();
    Var::from_fn(y, &[x], name, move |g, _| {
        let d = xv.zip_map(&saved_y, name, df)?;
        Ok(vec![Some(g.mul(&d)?)])
    })
}

pub fn neg(x: &Var) -> Var {
    mul_scalar(x, -1.0)
}

pub fn exp(x: &Var) -> Var {
    unary(x, "exp", f32::exp, |_, y| y)
}

pub fn log(x: &Var) -> Var {
    unary(x, "log", f32::ln, |x, _| 1.0 / x)
}

pub fn sqrt(x: &Var) -> Var {
    unary(x, "sqrt", f32::sqrt, |_, y| 0.5 / y)
}

pub fn rsqrt(x: &Var) -> Var {
    unary(x, "rsqrt", |v| 1.0 / v.sqrt(), |_, y| -0.5 * y * y * y)
}

pub fn tanh(x: &Var) -> Var {
    unary(x, "tanh", f32::tanh, |_, y| 1.0 - y * y)
}

/// y = act(x) through the vectorised kernel; saves x for the backward.
fn activation(x: &Var, name: &'static str, act: Activation) -> Var {
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x]) {
        return super::gpu::activation(x, name, act).unwrap_or_else(|e| panic!("{e}"));
    }
    let xv = x.value().contiguous();
    let xs = xv.as_contiguous_slice().expect("contiguous");
    let mut y = tensor::recycled_vec(xs.len()); // written in full by the kernel
    kernel::activation_forward(act, xs, &mut y);
    let out = Tensor::from_vec(y, xv.shape()).expect("same shape");
    Var::from_fn(out, &[x], name, move |g, _| {
        let gc = g.contiguous();
        let mut dx = tensor::recycled_vec(xv.numel());
        kernel::activation_backward(
            act,
            xv.as_contiguous_slice().expect("contiguous"),
            gc.as_contiguous_slice().expect("contiguous"),
            &mut dx,
        );
        Ok(vec![Some(Tensor::from_vec(dx, xv.shape())?)])
    })
}

pub fn sigmoid(x: &Var) -> Var {
    activation(x, "sigmoid", Activation::Sigmoid)
}

pub fn relu(x: &Var) -> Var {
    unary(x, "relu", |v| v.max(0.0), |x, _| if x > 0.0 { 1.0 } else { 0.0 })
}

/// min(max(x, 0), 6): EfficientNet-Lite's activation.
pub fn relu6(x: &Var) -> Var {
    unary(x, "relu6", |v| v.clamp(0.0, 6.0), |x, _| if x > 0.0 && x < 6.0 { 1.0 } else { 0.0 })
}

/// x * sigmoid(x) (swish), EfficientNet's activation.
pub fn silu(x: &Var) -> Var {
    activation(x, "silu", Activation::Silu)
}

/// GELU, exact erf form (PyTorch's default, BERT in Hugging Face).
pub fn gelu(x: &Var) -> Var {
    activation(x, "gelu", Activation::GeluErf)
}

/// GELU, tanh approximation (original BERT code, `gelu_new`).
pub fn gelu_tanh(x: &Var) -> Var {
    activation(x, "gelu_tanh", Activation::GeluTanh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};

    fn opts() -> GradcheckOptions {
        GradcheckOptions::default()
    }

    #[test]
    fn binary_ops_with_broadcasting_pass_gradcheck() {
        let shapes: &[(&[usize], &[usize])] =
            &[(&[3, 4], &[3, 4]), (&[3, 4], &[4]), (&[2, 1, 4], &[3, 1]), (&[], &[2, 3])];
        for (i, (sa, sb)) in shapes.iter().enumerate() {
            let a = Tensor::rand_uniform(sa, -1.0, 1.0, i as u64);
            let b = Tensor::rand_uniform(sb, 0.5, 1.5, 10 + i as u64); // away from 0 for div
            for (name, f) in [("add", add as fn(&Var, &Var) -> Result<Var>), ("sub", sub), ("mul", mul), ("div", div)] {
                check_gradients(&[a.clone(), b.clone()], |v| f(&v[0], &v[1]), &opts())
                    .unwrap_or_else(|e| panic!("{name} {sa:?} {sb:?}: {e}"));
            }
        }
    }

    #[test]
    fn unary_ops_pass_gradcheck_on_strided_inputs() {
        // A permuted, sliced input: the ops must handle non-contiguous values.
        let base = Tensor::rand_uniform(&[4, 6], 0.3, 2.0, 7);
        let signed = Tensor::rand_uniform(&[4, 6], -3.0, 3.0, 8);
        type Op = fn(&Var) -> Var;
        let positive: &[(&str, Op)] =
            &[("log", log), ("sqrt", sqrt), ("rsqrt", rsqrt), ("pow", |x| pow_scalar(x, 1.7))];
        let any: &[(&str, Op)] = &[
            ("exp", exp),
            ("neg", neg),
            ("tanh", tanh),
            ("sigmoid", sigmoid),
            ("relu", relu),
            ("relu6", |x| relu6(&mul_scalar(x, 3.0))),
            ("silu", silu),
            ("gelu", gelu),
            ("gelu_tanh", gelu_tanh),
            ("add_scalar", |x| add_scalar(x, 2.0)),
        ];
        for (input, ops) in [(&base, positive), (&signed, any)] {
            for (name, op) in ops {
                check_gradients(
                    &[input.clone()],
                    |v| {
                        let strided =
                            crate::ops::shape::slice(&crate::ops::shape::transpose(&v[0], 0, 1)?, 0, 1, 6, 2)?;
                        Ok(op(&strided))
                    },
                    &opts(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
}
