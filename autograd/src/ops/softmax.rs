//! Softmax, log-softmax (last axis) and cross-entropy from logits with label smoothing.
//! All three have fused backward passes: softmax's gradient is computed from its output
//! (dx = y * (dy - sum(dy * y))), and cross-entropy's is simply (softmax - target) / N, which is
//! both cheaper and more stable than chaining log and softmax.

use kernels::softmax as kernel;
use tensor::{Result, Tensor, TensorError};

use crate::Var;

/// Runs a row kernel over the last axis of `x`, producing a same-shaped contiguous tensor.
fn rowwise(x: &Tensor, f: impl Fn(&[f32], &mut [f32], usize)) -> Tensor {
    let xc = x.contiguous();
    let cols = *x.shape().last().unwrap_or(&1);
    let mut out = tensor::recycled_vec(x.numel()); // the row kernels write every element
    f(xc.as_contiguous_slice().expect("contiguous"), &mut out, cols);
    Tensor::from_vec(out, x.shape()).expect("same shape")
}

fn rowwise2(a: &Tensor, b: &Tensor, f: impl Fn(&[f32], &[f32], &mut [f32], usize)) -> Tensor {
    let (ac, bc) = (a.contiguous(), b.contiguous());
    let cols = *a.shape().last().unwrap_or(&1);
    let mut out = tensor::recycled_vec(a.numel());
    f(ac.as_contiguous_slice().expect("contiguous"), bc.as_contiguous_slice().expect("contiguous"), &mut out, cols);
    Tensor::from_vec(out, a.shape()).expect("same shape")
}

fn check_rank(op: &'static str, x: &Tensor) -> Result<()> {
    if x.rank() == 0 {
        return Err(TensorError::Shape { op, msg: "needs at least one axis".into() });
    }
    Ok(())
}

/// softmax over the last axis.
pub fn softmax(x: &Var) -> Result<Var> {
    let xv = x.value();
    check_rank("softmax", &xv)?;
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x]) {
        return super::gpu::softmax(x, "softmax", 1.0, None, false);
    }
    let y = rowwise(&xv, |x, y, c| kernel::softmax_forward(x, y, c, 1.0, None));
    let saved = y.clone();
    Ok(Var::from_fn(y, &[x], "softmax", move |g, _| {
        Ok(vec![Some(rowwise2(&saved, g, |y, dy, dx, c| kernel::softmax_backward(y, dy, dx, c, 1.0)))])
    }))
}

/// log(softmax) over the last axis, computed stably.
pub fn log_softmax(x: &Var) -> Result<Var> {
    let xv = x.value();
    check_rank("log_softmax", &xv)?;
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x]) {
        return super::gpu::softmax(x, "log_softmax", 1.0, None, true);
    }
    let y = rowwise(&xv, |x, y, c| kernel::log_softmax_forward(x, y, c, 1.0, None));
    let saved = y.clone();
    Ok(Var::from_fn(y, &[x], "log_softmax", move |g, _| {
        Ok(vec![Some(rowwise2(&saved, g, |y, dy, dx, c| kernel::log_softmax_backward(y, dy, dx, c, 1.0)))])
    }))
}

/// Attention's fused softmax: softmax(scale * scores + mask) over the last axis of scores
/// (B, H, Tq, Tk), where `key_mask` (B, Tk) holds 1 for real tokens and 0 for padding (padded
/// keys get exactly zero weight). One pass forward, one backward; saves only the output.
pub fn attention_softmax(scores: &Var, scale: f32, key_mask: Option<&Tensor>) -> Result<Var> {
    let sv = scores.value();
    let sh = sv.shape().to_vec();
    if sh.len() != 4 {
        return Err(TensorError::Shape {
            op: "attention_softmax",
            msg: format!("scores must be (B, H, Tq, Tk), got {sh:?}"),
        });
    }
    let (b, h, tq, tk) = (sh[0], sh[1], sh[2], sh[3]);
    let additive: Option<Vec<f32>> = match key_mask {
        Some(m) if m.shape() != [b, tk] => {
            return Err(TensorError::Shape {
                op: "attention_softmax",
                msg: format!("mask {:?} must be [{b}, {tk}]", m.shape()),
            })
        }
        Some(m) => Some(m.to_vec().iter().map(|&v| if v > 0.0 { 0.0 } else { -1e9 }).collect()),
        None => None,
    };
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[scores]) {
        return super::gpu::attention_softmax(scores, scale, key_mask);
    }
    let mask = additive.as_ref().map(|v| kernel::RowMask { values: v, rows_per_mask: h * tq });
    let y = rowwise(&sv, |x, y, c| kernel::softmax_forward(x, y, c, scale, mask));
    let saved = y.clone();
    Ok(Var::from_fn(y, &[scores], "attention_softmax", move |g, _| {
        Ok(vec![Some(rowwise2(&saved, g, |y, dy, dx, c| kernel::softmax_backward(y, dy, dx, c, scale)))])
    }))
}

/// Mean cross-entropy of `logits` (N, C) against class indices, with label smoothing
/// `smoothing` (PyTorch's convention: the target is (1 - s) * one_hot + s / C).
pub fn cross_entropy(logits: &Var, targets: &[usize], smoothing: f32) -> Result<Var> {
    let lv = logits.value();
    if lv.rank() != 2 || lv.shape()[0] != targets.len() {
        return Err(TensorError::Shape {
            op: "cross_entropy",
            msg: format!("logits {:?} need shape (N, C) with N = {} targets", lv.shape(), targets.len()),
        });
    }
    if !(0.0..=1.0).contains(&smoothing) {
        return Err(TensorError::Shape {
            op: "cross_entropy",
            msg: format!("label smoothing {smoothing} outside [0, 1]"),
        });
    }
    let (n, c) = (lv.shape()[0], lv.shape()[1]);
    if let Some(&bad) = targets.iter().find(|&&t| t >= c) {
        return Err(TensorError::Index { op: "cross_entropy", index: bad, size: c });
    }
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[logits]) {
        return super::gpu::cross_entropy(logits, targets, smoothing);
    }
    let logp = rowwise(&lv, |x, y, c| kernel::log_softmax_forward(x, y, c, 1.0, None));
    let lp = logp.as_contiguous_slice().expect("contiguous");
    let off = smoothing / c as f32;
    let on = 1.0 - smoothing + off;
    let mut total = 0.0f64;
    for (i, &t) in targets.iter().enumerate() {
        let row = &lp[i * c..(i + 1) * c];
        let row_sum: f64 = row.iter().map(|&v| v as f64).sum();
        total -= off as f64 * row_sum + (on - off) as f64 * row[t] as f64;
    }
    let loss = Tensor::scalar((total / n.max(1) as f64) as f32);
    let targets = targets.to_vec();
    Ok(Var::from_fn(loss, &[logits], "cross_entropy", move |g, _| {
        let scale = g.item()? / n.max(1) as f32;
        let lp = logp.as_contiguous_slice().expect("contiguous");
        let mut d: Vec<f32> = lp.iter().map(|&v| (v.exp() - off) * scale).collect();
        for (i, &t) in targets.iter().enumerate() {
            d[i * c + t] -= (on - off) * scale;
        }
        Ok(vec![Some(Tensor::from_vec(d, &[n, c])?)])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};

    #[test]
    fn softmax_family_passes_gradcheck() {
        let o = GradcheckOptions::default();
        let x = Tensor::rand_uniform(&[3, 5], -2.0, 2.0, 1);
        check_gradients(&[x.clone()], |v| softmax(&v[0]), &o).unwrap();
        check_gradients(&[x.clone()], |v| log_softmax(&crate::ops::shape::transpose(&v[0], 0, 1)?), &o).unwrap();
        let scores = Tensor::rand_uniform(&[2, 2, 3, 4], -2.0, 2.0, 2);
        let mask = Tensor::from_vec(vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0], &[2, 4]).unwrap();
        check_gradients(&[scores], |v| attention_softmax(&v[0], 0.7, Some(&mask)), &o).unwrap();
        for s in [0.0, 0.1, 1.0] {
            check_gradients(&[x.clone()], |v| cross_entropy(&v[0], &[4, 0, 2], s), &o).unwrap();
        }
    }

    #[test]
    fn cross_entropy_values_and_errors() {
        // uniform logits: loss = ln(C) whatever the smoothing
        let l = Var::constant(Tensor::zeros(&[2, 4]));
        let v = cross_entropy(&l, &[1, 3], 0.1).unwrap().value().item().unwrap();
        assert!((v - 4f32.ln()).abs() < 1e-6);
        // huge logits stay finite
        let big = Var::constant(Tensor::from_vec(vec![1e4, -1e4, 0.0], &[1, 3]).unwrap());
        let v = cross_entropy(&big, &[1], 0.0).unwrap().value().item().unwrap();
        assert!((v - 2e4).abs() < 1.0, "{v}");
        assert!(cross_entropy(&l, &[4, 0], 0.1).is_err());
        assert!(cross_entropy(&l, &[0], 0.1).is_err());
        assert!(cross_entropy(&l, &[0, 0], 1.5).is_err());
    }
}
