//! Shape ops: reshape, permute / transpose, slice / narrow, broadcast, squeeze / unsqueeze,
//! concat, and the indexing ops (index_select for embeddings, gather). Forward passes are views
//! where the tensor layer allows; backward passes route the gradient back to input positions.

use tensor::layout::{contiguous_strides, for_each_offset_pair};
use tensor::{Result, Tensor};

use super::maybe;
use crate::Var;

pub fn reshape(x: &Var, shape: &[usize]) -> Result<Var> {
    let xv = x.value();
    let out = xv.reshape(shape)?;
    let orig = xv.shape().to_vec();
    Ok(Var::from_fn(out, &[x], "reshape", move |g, _| Ok(vec![Some(g.reshape(&orig)?)])))
}

/// Output axis i is input axis perm[i].
pub fn permute(x: &Var, perm: &[usize]) -> Result<Var> {
    let out = x.value().permute(perm)?;
    let mut inverse = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    Ok(Var::from_fn(out, &[x], "permute", move |g, _| Ok(vec![Some(g.permute(&inverse)?.contiguous())])))
}

pub fn transpose(x: &Var, a: usize, b: usize) -> Result<Var> {
    let rank = x.shape().len();
    if a >= rank || b >= rank {
        // let the tensor layer produce its error message
        x.value().transpose(a, b)?;
    }
    let mut perm: Vec<usize> = (0..rank).collect();
    perm.swap(a, b);
    permute(x, &perm)
}

/// Python's x[start:end:step] along `axis`.
pub fn slice(x: &Var, axis: usize, start: usize, end: usize, step: usize) -> Result<Var> {
    let xv = x.value();
    let out = xv.slice(axis, start, end, step)?;
    let in_shape = xv.shape().to_vec();
    Ok(Var::from_fn(out, &[x], "slice", move |g, _| {
        if g.device().is_gpu() {
            return Ok(vec![Some(pad_along(g, &in_shape, axis, start, step)?)]);
        }
        // Scatter g into zeros of the input shape through the same slice layout.
        let strides = contiguous_strides(&in_shape);
        let mut data = vec![0.0f32; in_shape.iter().product()];
        let mut slice_strides = strides.clone();
        slice_strides[axis] *= step;
        let offset = if g.numel() > 0 { start * strides[axis] } else { 0 };
        let gc = g.contiguous();
        let gs = gc.as_contiguous_slice().expect("contiguous");
        let g_strides = contiguous_strides(g.shape());
        for_each_offset_pair(g.shape(), (&slice_strides, offset), (&g_strides, 0), |dst, src| data[dst] += gs[src]);
        Ok(vec![Some(Tensor::from_vec(data, &in_shape)?)])
    }))
}

/// The gradient of a step-1 slice on a GPU: `g` placed at `start` along `axis` between zero
/// blocks, by concatenation (no host copy).
fn pad_along(g: &Tensor, in_shape: &[usize], axis: usize, start: usize, step: usize) -> Result<Tensor> {
    if step != 1 {
        return Err(tensor::TensorError::Device {
            op: "slice",
            msg: format!("the GPU backward takes step 1, not {step}"),
        });
    }
    let mut parts = Vec::new();
    let block = |len: usize| {
        let mut s = in_shape.to_vec();
        s[axis] = len;
        Tensor::zeros_on(&s, g.device())
    };
    let after = in_shape[axis] - start - g.shape()[axis];
    if start > 0 {
        parts.push(block(start)?);
    }
    parts.push(g.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    Tensor::concat(&parts, axis)
}

pub fn narrow(x: &Var, axis: usize, start: usize, len: usize) -> Result<Var> {
    slice(x, axis, start, start.saturating_add(len), 1)
}

pub fn broadcast_to(x: &Var, shape: &[usize]) -> Result<Var> {
    let xv = x.value();
    let out = xv.broadcast_to(shape)?;
    let orig = xv.shape().to_vec();
    Ok(Var::from_fn(out, &[x], "broadcast_to", move |g, _| Ok(vec![Some(g.sum_to_shape(&orig)?)])))
}

pub fn unsqueeze(x: &Var, axis: usize) -> Result<Var> {
    let out = x.value().unsqueeze(axis)?;
    let shape = out.shape().to_vec();
    reshape(x, &shape)
}

pub fn squeeze(x: &Var, axis: usize) -> Result<Var> {
    let out = x.value().squeeze(axis)?;
    let shape = out.shape().to_vec();
    reshape(x, &shape)
}

/// Joins along an existing axis.
pub fn concat(xs: &[&Var], axis: usize) -> Result<Var> {
    let values: Vec<Tensor> = xs.iter().map(|v| v.value()).collect();
    let out = Tensor::concat(&values, axis)?;
    let sizes: Vec<usize> = values.iter().map(|t| t.shape()[axis]).collect();
    Ok(Var::from_fn(out, xs, "concat", move |g, needs| {
        let mut start = 0;
        let mut grads = Vec::with_capacity(sizes.len());
        for (k, &n) in sizes.iter().enumerate() {
            grads.push(maybe(needs[k], || Ok(g.narrow(axis, start, n)?.contiguous()))?);
            start += n;
        }
        Ok(grads)
    }))
}

/// Rows `indices` of `table` along `axis` (axis 0: an embedding lookup). The backward
/// scatter-adds, so repeated indices accumulate.
pub fn index_select(table: &Var, axis: usize, indices: &[usize]) -> Result<Var> {
    let tv = table.value();
    let out = tv.index_select(axis, indices)?;
    let shape = tv.shape().to_vec();
    let indices = indices.to_vec();
    Ok(Var::from_fn(out, &[table], "index_select", move |g, _| {
        // uniquely owned: the scatter-add writes in place
        let mut grad = Tensor::zeros_on(&shape, g.device())?;
        grad.index_add_in_place(axis, &indices, g)?;
        Ok(vec![Some(grad)])
    }))
}

/// PyTorch's gather along `axis` with a constant index tensor.
pub fn gather(x: &Var, axis: usize, index: &Tensor) -> Result<Var> {
    let xv = x.value();
    let out = xv.gather(axis, index)?;
    let shape = xv.shape().to_vec();
    let index = index.clone();
    Ok(Var::from_fn(out, &[x], "gather", move |g, _| {
        Ok(vec![Some(Tensor::zeros(&shape).scatter_add(axis, &index, g)?)])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};
    use crate::ops::elementwise::mul;

    #[test]
    fn view_ops_pass_gradcheck() {
        let o = GradcheckOptions::default();
        let x = Tensor::rand_uniform(&[2, 3, 4], -1.0, 1.0, 1);
        // multiply by a fixed tensor after the view so position errors show up
        let check = |f: &dyn Fn(&Var) -> Result<Var>| {
            check_gradients(
                &[x.clone()],
                |v| {
                    let y = f(&v[0])?;
                    let w = Var::constant(Tensor::rand_uniform(&y.shape(), 0.5, 1.5, 3));
                    mul(&y, &w)
                },
                &o,
            )
            .unwrap()
        };
        check(&|v| reshape(v, &[4, 6]));
        check(&|v| permute(v, &[2, 0, 1]));
        check(&|v| reshape(&transpose(v, 0, 2)?, &[24]));
        check(&|v| narrow(v, 2, 1, 2));
        check(&|v| slice(&transpose(v, 1, 2)?, 1, 0, 4, 3));
        check(&|v| broadcast_to(&unsqueeze(v, 1)?, &[2, 5, 3, 4]));
        check(&|v| squeeze(&narrow(v, 0, 1, 1)?, 0));
        check(&|v| {
            let a = narrow(v, 1, 0, 1)?;
            let b = narrow(v, 1, 1, 2)?;
            concat(&[&b, &a, &b], 1)
        });
        check(&|v| index_select(v, 1, &[2, 0, 2, 2]));
        let idx = Tensor::from_vec(vec![3.0, 0.0, 3.0, 1.0, 2.0, 2.0], &[2, 3, 1]).unwrap();
        check(&|v| gather(v, 2, &idx));
    }
}
