//! Matrix products (batched, batch axes broadcast) and their gradients:
//! for C = A B, dA = dC B^T and dB = A^T dC, each summed back over broadcast batch axes.
//! Transposes are views: the GEMM reads them through strides.
//!
//! [`linear`] is the fully-connected layer as one op, y = x W^T + b with W stored (out, in) as
//! PyTorch stores it: the bias is the GEMM's initial C (beta = 1), so there is no separate add
//! pass over the output, and dW = dy^T x comes out in W's own layout instead of as the
//! transpose of x^T dy (which a later copy would have to gather with a stride).

use kernels::bf16::{gemm_bf16, gemm_bf16_bias, gemm_bf16_packed_b, matmul_precision, MatmulPrecision};
use kernels::gemm::{sgemm, sgemm_bias_with, sgemm_packed_b, GemmStrides};
use kernels::Isa;
use tensor::{Result, Tensor, TensorError};

use super::{maybe, packed_weights};
use crate::Var;

pub fn matmul(a: &Var, b: &Var) -> Result<Var> {
    let (av, bv) = (a.value(), b.value());
    let out = av.matmul(&bv)?;
    let (sa, sb) = (av.shape().to_vec(), bv.shape().to_vec());
    let keep_b = a.requires_grad().then(|| bv.clone());
    let keep_a = b.requires_grad().then(|| av.clone());
    Ok(Var::from_fn(out, &[a, b], "matmul", move |g, needs| {
        Ok(vec![
            maybe(needs[0], || g.matmul(&keep_b.as_ref().expect("saved").t()?)?.sum_to_shape(&sa))?,
            maybe(needs[1], || keep_a.as_ref().expect("saved").t()?.matmul(g)?.sum_to_shape(&sb))?,
        ])
    }))
}

/// y = x [W_1; W_2; ...]^T + [b_1; b_2; ...]: one linear layer whose weight is the given
/// weights stacked along their rows (BERT's query, key and value projections as one GEMM).
/// With no gradient wanted at all, the stacked weight's packed panels come from the cache
/// (`packed_weights::packed_transpose_stacked`) and nothing is stacked per call; otherwise
/// the weights are concatenated (a differentiable op) and run through [`linear`].
pub fn linear_stacked(x: &Var, ws: &[&Var], bs: Option<&[&Var]>) -> Result<Var> {
    let bad = |msg: String| TensorError::Shape { op: "linear_stacked", msg };
    if ws.is_empty() || bs.is_some_and(|bs| bs.len() != ws.len()) {
        return Err(bad(format!("{} weights and {:?} biases", ws.len(), bs.map(|b| b.len()))));
    }
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x]) {
        let w = super::shape::concat(ws, 0)?;
        let b = bs.map(|bs| super::shape::concat(bs, 0)).transpose()?;
        return linear(x, &w, b.as_ref());
    }
    let wants_grad = crate::is_grad_enabled()
        && (x.requires_grad() || ws.iter().chain(bs.unwrap_or(&[])).any(|v| v.requires_grad()));
    let xv = x.value().contiguous();
    let values: Vec<Tensor> = ws.iter().map(|w| w.value()).collect();
    let fast = (!wants_grad && xv.shape().len() == 2 && xv.shape()[0] > 1)
        .then(|| packed_weights::packed_transpose_stacked(&values.iter().collect::<Vec<_>>()))
        .flatten();
    let Some(packed) = fast else {
        let w = super::shape::concat(ws, 0)?;
        let b = bs.map(|bs| super::shape::concat(bs, 0)).transpose()?;
        return linear(x, &w, b.as_ref());
    };
    let (rows, inp) = (xv.shape()[0], xv.shape()[1]);
    let (k, out) = packed.shape();
    if k != inp {
        return Err(bad(format!("input {:?} and weights of width {k}", xv.shape())));
    }
    let bias = match bs {
        Some(bs) => {
            let b = Tensor::concat(&bs.iter().map(|b| b.value()).collect::<Vec<_>>(), 0)?;
            if b.shape() != [out] {
                return Err(bad(format!("biases {:?} must stack to [{out}]", b.shape())));
            }
            Some(b)
        }
        None => None,
    };
    let mut y = tensor::recycled_vec(rows * out);
    let xd = xv.as_contiguous_slice().expect("contiguous");
    let bias_slice = bias.as_ref().map(|b| b.as_contiguous_slice().expect("contiguous"));
    packed_product(rows, inp, out, xd, &packed, bias_slice, &mut y);
    Ok(Var::constant(Tensor::from_vec(y, &[rows, out])?))
}

/// y (rows, out) = x (rows, inp) W^T + b with W^T packed (`packed_weights`), every element
/// of y written: the inference product of [`linear`] and [`linear_stacked`].
fn packed_product(
    rows: usize,
    inp: usize,
    out: usize,
    x: &[f32],
    packed: &packed_weights::PackedWeight,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let s = GemmStrides { a_row: inp, a_col: 1, b_row: 1, b_col: inp, c_row: out, c_col: 1 };
    let threads = kernels::parallel::num_threads();
    match packed {
        packed_weights::PackedWeight::F32(p) => sgemm_packed_b(threads, rows, 1.0, x, p, 0.0, y, s, bias),
        packed_weights::PackedWeight::Bf16(p) => gemm_bf16_packed_b(threads, rows, 1.0, x, p, 0.0, y, s, bias),
    }
}

/// C = A B (beta 0) on the GEMM of the current matmul precision: the f32 GEMM, or operands
/// rounded to bf16 with f32 accumulation (`kernels::bf16`).
#[allow(clippy::too_many_arguments)]
fn product(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], s: GemmStrides) {
    match matmul_precision() {
        MatmulPrecision::F32 => sgemm(m, k, n, 1.0, a, b, 0.0, c, s),
        MatmulPrecision::Bf16 => gemm_bf16(m, k, n, 1.0, a, b, 0.0, c, s),
    }
}

/// A transformer's feed-forward block at inference in bf16 precision, `act(x W1^T + b1) W2^T
/// + b2` over the last axis of x, with the hidden layer kept in bf16 only
/// (`kernels::bf16::feed_forward_bf16`: biased, activated and rounded as it leaves the first
/// product, read in place by the second). The same values as `linear`, the activation and
/// `linear` under the bf16 matmul precision, up to one bf16 step of a hidden value.
///
/// `Ok(None)` where it does not apply, and the caller runs the separate ops: gradients are
/// being recorded, the matmul precision is f32, a tensor lives on a GPU, or the weights are not
/// packed (the packed-weight cache is off).
pub fn feed_forward_inference(
    x: &Var,
    w1: &Var,
    b1: Option<&Var>,
    act: Option<kernels::activation::Activation>,
    w2: &Var,
    b2: Option<&Var>,
) -> Result<Option<Var>> {
    if crate::is_grad_enabled() || matmul_precision() != MatmulPrecision::Bf16 {
        return Ok(None);
    }
    let (xv, w1v, w2v) = (x.value(), w1.value(), w2.value());
    let on_gpu = [&xv, &w1v, &w2v].iter().any(|t| t.device().is_gpu())
        || [b1, b2].iter().flatten().any(|b| b.value().device().is_gpu());
    if on_gpu {
        return Ok(None);
    }
    let bad = |msg: String| TensorError::Shape { op: "feed_forward", msg };
    let (ws1, ws2, xs) = (w1v.shape(), w2v.shape(), xv.shape());
    if ws1.len() != 2 || ws2.len() != 2 || ws2[1] != ws1[0] || xs.last() != Some(&ws1[1]) {
        return Err(bad(format!(
            "input {xs:?}, W1 {ws1:?} and W2 {ws2:?} must be (.., in), (hidden, in), (out, hidden)"
        )));
    }
    let (inp, hidden, out) = (ws1[1], ws1[0], ws2[0]);
    let check_bias = |b: Option<&Var>, len: usize| -> Result<Option<Tensor>> {
        match b {
            Some(b) if b.shape() != [len] => Err(bad(format!("bias {:?} must be [{len}]", b.shape()))),
            Some(b) => Ok(Some(b.value().contiguous())),
            None => Ok(None),
        }
    };
    let (bias1, bias2) = (check_bias(b1, hidden)?, check_bias(b2, out)?);
    let (Some(p1), Some(p2)) = (packed_weights::packed_transpose(&w1v), packed_weights::packed_transpose(&w2v)) else {
        return Ok(None);
    };
    let (packed_weights::PackedWeight::Bf16(p1), packed_weights::PackedWeight::Bf16(p2)) = (&*p1, &*p2) else {
        return Ok(None);
    };
    let rows = xv.numel() / inp.max(1);
    let xc = xv.contiguous();
    let xd = xc.as_contiguous_slice().expect("contiguous");
    let mut y = tensor::recycled_vec(rows * out);
    kernels::bf16::feed_forward_bf16(
        kernels::parallel::num_threads(),
        rows,
        xd,
        p1,
        bias1.as_ref().map(|b| b.as_contiguous_slice().expect("contiguous")),
        act,
        p2,
        bias2.as_ref().map(|b| b.as_contiguous_slice().expect("contiguous")),
        &mut y,
    );
    let mut shape = xs.to_vec();
    *shape.last_mut().expect("checked above") = out;
    Ok(Some(Var::constant(Tensor::from_vec(y, &shape)?)))
}

/// y = x W^T + b for x (rows, in), W (out, in), b (out); y is (rows, out).
pub fn linear(x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
    let (xv, wv) = (x.value().contiguous(), w.value().contiguous());
    let (xs, ws) = (xv.shape(), wv.shape());
    let bad = |msg: String| TensorError::Shape { op: "linear", msg };
    if xs.len() != 2 || ws.len() != 2 || xs[1] != ws[1] {
        return Err(bad(format!("input {xs:?} and weight {ws:?} must be (rows, in) and (out, in)")));
    }
    let (rows, inp, out) = (xs[0], xs[1], ws[0]);
    let bv = match b {
        Some(b) if b.shape() != [out] => return Err(bad(format!("bias {:?} must be [{out}]", b.shape()))),
        Some(b) => Some(b.value().contiguous()),
        None => None,
    };
    if xv.device().is_gpu() || wv.device().is_gpu() {
        let mut all = vec![&xv, &wv];
        all.extend(bv.as_ref());
        tensor::same_device("linear", &all)?;
        #[cfg(feature = "wgpu")]
        return super::gpu::linear(x, w, b);
    }
    let (xd, wd) = (xv.as_contiguous_slice().expect("contiguous"), wv.as_contiguous_slice().expect("contiguous"));
    // (rows, out): every element is written by the GEMM (beta = 0), the bias added in its store
    let mut y = tensor::recycled_vec(rows * out);
    // B = W^T: element (k, j) is W[j, k]
    let s = GemmStrides { a_row: inp, a_col: 1, b_row: 1, b_col: inp, c_row: out, c_col: 1 };
    let bias = bv.as_ref().map(|b| b.as_contiguous_slice().expect("contiguous"));
    // No gradient wanted for W (inference, or a frozen layer): W is constant from call to
    // call, so its packed panels are reused (packed_weights). Same bits as the plain GEMM,
    // which one-row products (the matrix-vector path) keep.
    let frozen = !(crate::is_grad_enabled() && w.requires_grad());
    // (Looked up by W's own buffer: a non-contiguous W is copied into a fresh one on every
    // call, which no cache entry could ever match again, so it takes the plain GEMM.)
    match (frozen && rows > 1 && out > 1).then(|| packed_weights::packed_transpose(&w.value())).flatten() {
        Some(packed) => packed_product(rows, inp, out, xd, &packed, bias, &mut y),
        None if matmul_precision() == MatmulPrecision::Bf16 => {
            gemm_bf16_bias(rows, inp, out, 1.0, xd, wd, 0.0, &mut y, s, bias)
        }
        None => sgemm_bias_with(
            Isa::best(),
            kernels::parallel::num_threads(),
            rows,
            inp,
            out,
            1.0,
            xd,
            wd,
            0.0,
            &mut y,
            s,
            bias,
        ),
    }
    let y = Tensor::from_vec(y, &[rows, out])?;
    let mut inputs = vec![x, w];
    inputs.extend(b);
    let keep_x = w.requires_grad().then(|| xv.clone());
    let keep_w = x.requires_grad().then(|| wv.clone());
    Ok(Var::from_fn(y, &inputs, "linear", move |g, needs| {
        let g = g.contiguous();
        let gd = g.as_contiguous_slice().expect("contiguous");
        let mut grads = vec![
            // dx = dy W: (rows, out) x (out, in)
            maybe(needs[0], || {
                let w = keep_w.as_ref().expect("saved");
                let mut dx = tensor::recycled_vec(rows * inp);
                let s = GemmStrides { a_row: out, a_col: 1, b_row: inp, b_col: 1, c_row: inp, c_col: 1 };
                product(rows, out, inp, gd, w.as_contiguous_slice().expect("contiguous"), &mut dx, s);
                Tensor::from_vec(dx, &[rows, inp])
            })?,
            // dW = dy^T x: (out, rows) x (rows, in), in W's layout
            maybe(needs[1], || {
                let x = keep_x.as_ref().expect("saved");
                let mut dw = tensor::recycled_vec(out * inp);
                let s = GemmStrides { a_row: 1, a_col: out, b_row: inp, b_col: 1, c_row: inp, c_col: 1 };
                product(out, rows, inp, gd, x.as_contiguous_slice().expect("contiguous"), &mut dw, s);
                Tensor::from_vec(dw, &[out, inp])
            })?,
        ];
        if needs.len() > 2 {
            // db = column sums of dy
            grads.push(maybe(needs[2], || g.sum(&[0], false))?);
        }
        Ok(grads)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};
    use tensor::Tensor;

    #[test]
    fn matmul_and_batched_matmul_pass_gradcheck() {
        let o = GradcheckOptions::default();
        let a = Tensor::rand_uniform(&[3, 5], -1.0, 1.0, 1);
        let b = Tensor::rand_uniform(&[5, 2], -1.0, 1.0, 2);
        check_gradients(&[a.clone(), b.clone()], |v| matmul(&v[0], &v[1]), &o).unwrap();
        // transposed operand (a view)
        let bt = Tensor::rand_uniform(&[2, 5], -1.0, 1.0, 3);
        check_gradients(&[a, bt], |v| matmul(&v[0], &crate::ops::shape::transpose(&v[1], 0, 1)?), &o).unwrap();
        // batch broadcast: (2, 1, 3, 4) x (3, 4, 2)
        let a = Tensor::rand_uniform(&[2, 1, 3, 4], -1.0, 1.0, 4);
        let b = Tensor::rand_uniform(&[3, 4, 2], -1.0, 1.0, 5);
        check_gradients(&[a, b], |v| matmul(&v[0], &v[1]), &o).unwrap();
    }

    #[test]
    fn linear_matches_matmul_plus_bias_and_passes_gradcheck() {
        let o = GradcheckOptions::default();
        let x = Tensor::rand_uniform(&[5, 3], -1.0, 1.0, 6);
        let w = Tensor::rand_uniform(&[4, 3], -1.0, 1.0, 7);
        let b = Tensor::rand_uniform(&[4], -1.0, 1.0, 8);
        check_gradients(&[x.clone(), w.clone(), b.clone()], |v| linear(&v[0], &v[1], Some(&v[2])), &o).unwrap();
        check_gradients(&[x.clone(), w.clone()], |v| linear(&v[0], &v[1], None), &o).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap().add(&b).unwrap();
        let got =
            linear(&Var::constant(x.clone()), &Var::constant(w.clone()), Some(&Var::constant(b))).unwrap().value();
        tensor::Tolerance::new(1e-6, 1e-6).assert("linear", &got.to_vec(), &want.to_vec());
        // shape errors, not panics
        assert!(linear(&Var::constant(x.clone()), &Var::constant(Tensor::zeros(&[4, 2])), None).is_err());
        let bad_bias = Var::constant(Tensor::zeros(&[3]));
        assert!(linear(&Var::constant(x), &Var::constant(w), Some(&bad_bias)).is_err());
    }
}

#[cfg(test)]
mod bf16_tests {
    use super::*;
    use kernels::bf16::{round_through_bf16, with_matmul_precision};

    /// y = x W^T + b on bf16-rounded x and W, summed in f64: what a bf16 linear layer must
    /// give up to f32 accumulation error.
    fn rounded_reference(x: &Tensor, w: &Tensor, b: &Tensor) -> Vec<f64> {
        let (rows, inp, out) = (x.shape()[0], x.shape()[1], w.shape()[0]);
        let (xd, wd, bd) = (x.to_vec(), w.to_vec(), b.to_vec());
        let mut y = vec![0.0f64; rows * out];
        for i in 0..rows {
            for j in 0..out {
                let dot: f64 = (0..inp)
                    .map(|p| round_through_bf16(xd[i * inp + p]) as f64 * round_through_bf16(wd[j * inp + p]) as f64)
                    .sum();
                y[i * out + j] = dot + bd[j] as f64;
            }
        }
        y
    }

    #[test]
    fn a_bf16_linear_layer_is_the_product_of_rounded_operands_in_training_and_inference() {
        let x = Tensor::rand_uniform(&[41, 96], -1.0, 1.0, 1);
        let w = Tensor::rand_uniform(&[70, 96], -1.0, 1.0, 2);
        let b = Tensor::rand_uniform(&[70], -1.0, 1.0, 3);
        let want = rounded_reference(&x, &w, &b);
        let (xv, wv, bv) = (Var::parameter(x.clone()), Var::parameter(w.clone()), Var::parameter(b.clone()));
        let f32_out = linear(&xv, &wv, Some(&bv)).unwrap().value().to_vec();
        with_matmul_precision(MatmulPrecision::Bf16, || {
            let trained = linear(&xv, &wv, Some(&bv)).unwrap();
            let inferred = crate::no_grad(|| linear(&xv, &wv, Some(&bv)).unwrap().value().to_vec());
            for (got, what) in [(trained.value().to_vec(), "training"), (inferred, "inference (packed bf16 weight)")] {
                let mut differs_from_f32 = false;
                for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                    assert!((g as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()), "{what}: y[{i}] = {g} vs {r}");
                    differs_from_f32 |= g != f32_out[i];
                }
                assert!(differs_from_f32, "{what}: the bf16 path must actually round its operands");
            }
            // backward: dx = dy W and dW = dy^T x, each on rounded operands
            let loss = crate::ops::reduce::sum_all(&trained).unwrap();
            loss.backward().unwrap();
            let dx = xv.grad().unwrap().to_vec();
            let dw = wv.grad().unwrap().to_vec();
            let (rows, inp, out) = (41, 96, 70);
            let wd = w.to_vec();
            for i in 0..rows {
                for p in 0..inp {
                    let r: f64 = (0..out).map(|j| round_through_bf16(wd[j * inp + p]) as f64).sum();
                    assert!((dx[i * inp + p] as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()), "dx[{i},{p}]");
                }
            }
            let xd = x.to_vec();
            for j in 0..out {
                for p in 0..inp {
                    let r: f64 = (0..rows).map(|i| round_through_bf16(xd[i * inp + p]) as f64).sum();
                    assert!((dw[j * inp + p] as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()), "dW[{j},{p}]");
                }
            }
        });
        // the setting does not leak out of the closure
        assert_eq!(kernels::bf16::matmul_precision(), MatmulPrecision::F32);
    }
}
