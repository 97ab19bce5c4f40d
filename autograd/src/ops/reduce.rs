//! Reductions: sum and mean over any set of axes, max over one axis.

use tensor::{Result, Tensor};

use crate::Var;

/// Shape of `shape` with `axes` kept as size 1.
fn keepdim_shape(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    shape.iter().enumerate().map(|(d, &n)| if axes.contains(&d) { 1 } else { n }).collect()
}

pub fn sum(x: &Var, axes: &[usize], keepdim: bool) -> Result<Var> {
    let xv = x.value();
    let out = xv.sum(axes, keepdim)?;
    let shape = xv.shape().to_vec();
    let kept = keepdim_shape(&shape, axes);
    Ok(Var::from_fn(out, &[x], "sum", move |g, _| Ok(vec![Some(g.reshape(&kept)?.broadcast_to(&shape)?.contiguous())])))
}

pub fn mean(x: &Var, axes: &[usize], keepdim: bool) -> Result<Var> {
    let xv = x.value();
    let out = xv.mean(axes, keepdim)?;
    let shape = xv.shape().to_vec();
    let kept = keepdim_shape(&shape, axes);
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    let scale = 1.0 / count.max(1) as f32;
    Ok(Var::from_fn(out, &[x], "mean", move |g, _| {
        Ok(vec![Some(g.reshape(&kept)?.broadcast_to(&shape)?.mul_scalar(scale))])
    }))
}

/// Sum of every element, as a scalar (shape []).
pub fn sum_all(x: &Var) -> Result<Var> {
    let axes: Vec<usize> = (0..x.shape().len()).collect();
    sum(x, &axes, false)
}

/// Mean of every element, as a scalar.
pub fn mean_all(x: &Var) -> Result<Var> {
    let axes: Vec<usize> = (0..x.shape().len()).collect();
    mean(x, &axes, false)
}

/// Maximum along `axis`; the gradient goes to the first maximal element.
pub fn max(x: &Var, axis: usize, keepdim: bool) -> Result<Var> {
    let xv = x.value();
    let out = xv.max(&[axis], keepdim)?;
    let arg = xv.argmax(axis, true)?;
    let shape = xv.shape().to_vec();
    let kept = keepdim_shape(&shape, &[axis]);
    Ok(Var::from_fn(out, &[x], "max", move |g, _| {
        Ok(vec![Some(Tensor::zeros(&shape).scatter_add(axis, &arg, &g.reshape(&kept)?)?)])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};

    #[test]
    fn reductions_pass_gradcheck() {
        let o = GradcheckOptions::default();
        let x = Tensor::rand_uniform(&[3, 4, 2], -1.0, 1.0, 4);
        check_gradients(&[x.clone()], |v| sum(&v[0], &[0, 2], false), &o).unwrap();
        check_gradients(&[x.clone()], |v| sum(&v[0], &[1], true), &o).unwrap();
        check_gradients(&[x.clone()], |v| mean(&v[0], &[2, 0], true), &o).unwrap();
        check_gradients(&[x.clone()], |v| sum_all(&v[0]), &o).unwrap();
        check_gradients(&[x.clone()], |v| mean_all(&crate::ops::shape::transpose(&v[0], 0, 1)?), &o).unwrap();
        check_gradients(&[x.clone()], |v| max(&v[0], 1, false), &o).unwrap();
        check_gradients(&[x], |v| max(&crate::ops::shape::permute(&v[0], &[2, 0, 1])?, 0, true), &o).unwrap();
    }
}
