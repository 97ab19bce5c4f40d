//! Multi-head self-attention as one differentiable op on a fused Q|K|V tensor (BERT's
//! self-attention block between the input projections and the output projection).
//!
//! The math and the kernel are in `kernels::attention`; this file checks shapes, turns the
//! padding mask into an additive one, draws the attention-dropout mask and wires the backward.
//! Compared with composing the op from reshape / permute / matmul / softmax / dropout / matmul /
//! permute, it makes no head-split or head-merge copies and keeps one (B, heads, T, T) buffer.

use kernels::attention::{attention_backward, attention_forward, AttentionShape};
use tensor::{Result, Rng, Tensor, TensorError};

use crate::Var;

/// softmax(Q K^T / sqrt(dh) + mask) V per head, for `qkv` (B, T, 3H) laid out [Q | K | V]
/// (head h of Q is columns h*dh.., and so on), returning the heads' outputs side by side,
/// (B, T, H). `key_mask` (B, T) holds 1 for real tokens and 0 for padding (padded keys get
/// exactly zero weight). `dropout`: drop probability and generator for attention dropout on the
/// probabilities (one draw per (b, head, query, key), in that order).
pub fn self_attention(
    qkv: &Var,
    heads: usize,
    key_mask: Option<&Tensor>,
    dropout: Option<(f32, &mut Rng)>,
) -> Result<Var> {
    let bad = |msg: String| TensorError::Shape { op: "self_attention", msg };
    let qv = qkv.value().contiguous();
    let sh = qv.shape().to_vec();
    if sh.len() != 3 || heads == 0 || !sh[2].is_multiple_of(3 * heads) {
        return Err(bad(format!("qkv {sh:?} must be (B, T, 3 * H) with H a multiple of {heads} heads")));
    }
    let (batch, seq, hidden) = (sh[0], sh[1], sh[2] / 3);
    if key_mask.is_some_and(|m| m.shape() != [batch, seq]) {
        return Err(bad(format!("mask {:?} must be [{batch}, {seq}]", key_mask.map(|m| m.shape().to_vec()))));
    }
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[qkv]) {
        return super::gpu::self_attention(qkv, heads, key_mask, dropout);
    }
    let shape = AttentionShape { batch, seq, heads, head_dim: hidden / heads };
    let additive: Option<Vec<f32>> = match key_mask {
        Some(m) if m.shape() != [batch, seq] => {
            return Err(bad(format!("mask {:?} must be [{batch}, {seq}]", m.shape())));
        }
        Some(m) => Some(m.to_vec().iter().map(|&v| if v > 0.0 { 0.0 } else { -1e9 }).collect()),
        None => None,
    };
    // (B, heads, T, T) multipliers, 0 or 1 / (1 - p); tensors (not bare vectors) so that their
    // buffers go back to the storage pool when the graph is dropped
    let drop: Option<Tensor> = match dropout {
        Some((p, _)) if !(0.0..1.0).contains(&p) => {
            return Err(bad(format!("drop probability {p} outside [0, 1)")));
        }
        Some((p, rng)) if p > 0.0 => {
            let keep_scale = 1.0 / (1.0 - p);
            let mut mask = tensor::recycled_vec(shape.probs_len());
            mask.iter_mut().for_each(|m| *m = if rng.next_f32() >= p { keep_scale } else { 0.0 });
            Some(Tensor::from_vec(mask, &[batch, heads, seq, seq])?)
        }
        _ => None,
    };
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let qkv_data = qv.as_contiguous_slice().expect("contiguous");
    // (B, heads, T, T) softmax output, saved for the backward; (B*T, H) output
    let mut probs = tensor::recycled_vec(shape.probs_len());
    let mut out = tensor::recycled_vec(shape.out_len());
    let drop_data = drop.as_ref().map(|d| d.as_contiguous_slice().expect("contiguous"));
    attention_forward(shape, qkv_data, additive.as_deref(), drop_data, scale, &mut probs, &mut out);
    let out = Tensor::from_vec(out, &[batch, seq, hidden])?;
    let probs = Tensor::from_vec(probs, &[batch, heads, seq, seq])?;
    let saved_qkv = qv.clone();
    Ok(Var::from_fn(out, &[qkv], "self_attention", move |g, _| {
        let g = g.contiguous();
        let mut d_qkv = tensor::recycled_vec(shape.qkv_len()); // every element written
        let qkv_data = saved_qkv.as_contiguous_slice().expect("contiguous");
        let d_out = g.as_contiguous_slice().expect("contiguous");
        let probs = probs.as_contiguous_slice().expect("contiguous");
        let drop = drop.as_ref().map(|d| d.as_contiguous_slice().expect("contiguous"));
        attention_backward(shape, qkv_data, probs, drop, scale, d_out, &mut d_qkv);
        Ok(vec![Some(Tensor::from_vec(d_qkv, saved_qkv.shape())?)])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};
    use crate::ops::{matmul::matmul, shape, softmax};

    /// The same attention composed from the general ops (reshape, permute, matmul, softmax).
    fn composed(qkv: &Var, heads: usize, mask: Option<&Tensor>) -> Result<Var> {
        let sh = qkv.shape();
        let (b, t, h) = (sh[0], sh[1], sh[2] / 3);
        let dh = h / heads;
        let part = |i: usize| -> Result<Var> {
            let x = shape::narrow(qkv, 2, i * h, h)?;
            shape::permute(&shape::reshape(&x, &[b, t, heads, dh])?, &[0, 2, 1, 3])
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = matmul(&q, &shape::transpose(&k, 2, 3)?)?;
        let probs = softmax::attention_softmax(&scores, 1.0 / (dh as f32).sqrt(), mask)?;
        shape::reshape(&shape::permute(&matmul(&probs, &v)?, &[0, 2, 1, 3])?, &[b, t, h])
    }

    #[test]
    fn fused_attention_matches_the_composed_ops_and_passes_gradcheck() {
        let (b, t, heads, dh) = (2, 5, 2, 3);
        let qkv = Tensor::rand_uniform(&[b, t, 3 * heads * dh], -1.0, 1.0, 11);
        let mask = Tensor::from_vec(vec![1., 1., 1., 1., 1., 1., 1., 1., 0., 0.], &[b, t]).unwrap();
        let fused = self_attention(&Var::constant(qkv.clone()), heads, Some(&mask), None).unwrap().value();
        let reference = composed(&Var::constant(qkv.clone()), heads, Some(&mask)).unwrap().value();
        let diff = fused.to_vec().iter().zip(reference.to_vec()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-6, "fused vs composed {diff}");
        let o = GradcheckOptions::default();
        check_gradients(&[qkv.clone()], |v| self_attention(&v[0], heads, Some(&mask), None), &o).unwrap();
        // with dropout: a fixed seed gives the same mask in every gradcheck evaluation
        check_gradients(&[qkv], |v| self_attention(&v[0], heads, None, Some((0.3, &mut Rng::new(4)))), &o).unwrap();
    }

    #[test]
    fn bad_shapes_and_probabilities_are_errors() {
        let qkv = Var::constant(Tensor::zeros(&[2, 3, 12]));
        assert!(self_attention(&qkv, 5, None, None).is_err()); // 4 columns per block, 5 heads
        assert!(self_attention(&Var::constant(Tensor::zeros(&[3, 12])), 2, None, None).is_err());
        assert!(self_attention(&qkv, 2, Some(&Tensor::ones(&[2, 4])), None).is_err());
        assert!(self_attention(&qkv, 2, None, Some((1.0, &mut Rng::new(0)))).is_err());
        assert_eq!(self_attention(&qkv, 2, Some(&Tensor::ones(&[2, 3])), None).unwrap().shape(), vec![2, 3, 4]);
    }
}
