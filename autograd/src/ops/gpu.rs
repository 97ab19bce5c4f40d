//! The GPU forms of the ops whose CPU forms call slice kernels directly (feature `wgpu`).
//!
//! Each op file checks [`on_gpu`] first and hands GPU operands to the function of the same name
//! here. Forward and backward are written with tensor ops (which run as WGSL kernels when the
//! tensors are on a GPU) and the row kernels of `tensor::gpu`, so nothing is read back to the
//! host: the loss value stays a one-element GPU tensor until the caller asks for it.

use kernels::activation::Activation;
use tensor::gpu as tg;
use tensor::{Result, Rng, Tensor, TensorError};

use super::maybe;
use crate::Var;

/// Is any operand's value on a GPU?
pub(crate) fn on_gpu(vars: &[&Var]) -> bool {
    vars.iter().any(|v| v.value().device().is_gpu())
}

/// exp, log, sqrt, rsqrt, tanh, relu, relu6: y = f(x), dx = g f'(x, y), as tensor ops.
pub(crate) fn unary(x: &Var, name: &'static str) -> Result<Var> {
    let xv = x.value();
    let y = match name {
        "exp" => xv.exp(),
        "log" => xv.ln(),
        "sqrt" => xv.sqrt(),
        "rsqrt" => xv.rsqrt(),
        "tanh" => xv.tanh(),
        "relu" => xv.relu(),
        "relu6" => xv.clamp(0.0, 6.0),
        _ => return Err(TensorError::Device { op: name, msg: "has no GPU form".into() }),
    };
    let saved_y = y.clone();
    Ok(Var::from_fn(y, &[x], name, move |g, _| {
        let y = &saved_y;
        let d = match name {
            "exp" => g.mul(y)?,
            "log" => g.div(&xv)?,
            "sqrt" => g.div(y)?.mul_scalar(0.5),
            "rsqrt" => g.mul(&y.mul(y)?.mul(y)?)?.mul_scalar(-0.5),
            "tanh" => g.mul(&y.square().neg().add_scalar(1.0))?,
            "relu" => g.mul(&step(&xv)?)?,
            // 1 on (0, 6), else 0
            _ => g.mul(&step(&xv)?.mul(&step(&xv.neg().add_scalar(6.0))?)?)?,
        };
        Ok(vec![Some(d)])
    }))
}

fn step(x: &Tensor) -> Result<Tensor> {
    tg::unary(x, kernels::gpu::ops::Unary::Step)
}

/// x^p with dx = g p x^(p - 1).
pub(crate) fn pow_scalar(x: &Var, p: f32) -> Var {
    let xv = x.value();
    Var::from_fn(xv.powf(p), &[x], "pow", move |g, _| Ok(vec![Some(g.mul(&xv.powf(p - 1.0).mul_scalar(p))?)]))
}

/// The vectorised activations (GELU, SiLU, sigmoid) with the fused derivative kernel.
pub(crate) fn activation(x: &Var, name: &'static str, act: Activation) -> Result<Var> {
    let xv = x.value();
    let y = tg::activation(&xv, act)?;
    Ok(Var::from_fn(y, &[x], name, move |g, _| Ok(vec![Some(tg::activation_grad(&xv, g, act)?)])))
}

/// y = x W^T + b (one tiled matmul, W read transposed, the bias added in its store);
/// dx = dy W, dW = dy^T x, db = column sums of dy.
pub(crate) fn linear(x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
    let (xv, wv) = (x.value(), w.value());
    let bv = b.map(|b| b.value());
    let y = tg::linear(&xv, &wv, bv.as_ref())?;
    let mut inputs = vec![x, w];
    inputs.extend(b);
    Ok(Var::from_fn(y, &inputs, "linear", move |g, needs| {
        let mut grads = vec![maybe(needs[0], || g.matmul(&wv))?, maybe(needs[1], || g.t()?.matmul(&xv))?];
        if needs.len() > 2 {
            grads.push(maybe(needs[2], || g.sum(&[0], false))?);
        }
        Ok(grads)
    }))
}

/// Layer norm over the last axis, saving the row statistics.
pub(crate) fn layer_norm(x: &Var, gamma: &Var, beta: &Var, eps: f32) -> Result<Var> {
    let (xv, gv) = (x.value(), gamma.value());
    let (y, stats) = tg::layer_norm(&xv, &gv, &beta.value(), eps)?;
    Ok(Var::from_fn(y, &[x, gamma, beta], "layer_norm", move |g, needs| {
        let (dx, dgamma, dbeta) = tg::layer_norm_backward(&xv, &gv, &stats, g)?;
        Ok(vec![needs[0].then_some(dx), needs[1].then_some(dgamma), needs[2].then_some(dbeta)])
    }))
}

/// softmax(scale * x + mask) or its log over the last axis; the backward uses only the output.
pub(crate) fn softmax(
    x: &Var,
    name: &'static str,
    scale: f32,
    mask: Option<(Tensor, usize)>,
    log: bool,
) -> Result<Var> {
    let y = tg::softmax_rows(&x.value(), scale, mask.as_ref().map(|(m, per)| (m, *per)), log)?;
    let saved = y.clone();
    Ok(Var::from_fn(y, &[x], name, move |g, _| Ok(vec![Some(tg::softmax_rows_backward(&saved, g, scale, log)?)])))
}

/// The additive attention mask (0 for real tokens, -1e9 for padding) of a (B, T) 0/1 mask,
/// on the scores' device.
fn additive_mask(key_mask: &Tensor, device: tensor::Device) -> Result<Tensor> {
    let host: Vec<f32> = key_mask.to_vec().iter().map(|&v| if v > 0.0 { 0.0 } else { -1e9 }).collect();
    Tensor::from_vec(host, key_mask.shape())?.to_device(device)
}

/// Attention's softmax over scores (B, H, Tq, Tk) with a (B, Tk) key mask.
pub(crate) fn attention_softmax(scores: &Var, scale: f32, key_mask: Option<&Tensor>) -> Result<Var> {
    let sv = scores.value();
    let (h, tq) = (sv.shape()[1], sv.shape()[2]);
    let mask = key_mask.map(|m| additive_mask(m, sv.device())).transpose()?;
    softmax(scores, "attention_softmax", scale, mask.map(|m| (m, h * tq)), false)
}

/// Inverted dropout whose mask is a counter hash of (seed, element): the seed is drawn from
/// `rng` (one draw per call), and the backward recomputes the mask from it.
pub(crate) fn dropout(x: &Var, p: f32, rng: &mut Rng) -> Result<Var> {
    let seed = rng.next_u64();
    let y = tg::dropout(&x.value(), p, seed)?;
    Ok(Var::from_fn(y, &[x], "dropout", move |g, _| Ok(vec![Some(tg::dropout(g, p, seed)?)])))
}

/// Multi-head self-attention on a fused (B, T, 3H) [Q | K | V] tensor, composed from
/// differentiable ops: head-split views, two batched matmuls, the masked softmax and dropout.
pub(crate) fn self_attention(
    qkv: &Var,
    heads: usize,
    key_mask: Option<&Tensor>,
    dropout_with: Option<(f32, &mut Rng)>,
) -> Result<Var> {
    use super::{matmul::matmul, shape};
    let sh = qkv.shape();
    let (batch, seq, hidden) = (sh[0], sh[1], sh[2] / 3);
    let head_dim = hidden / heads;
    // (B, T, 3, heads, dh) -> (3, B, heads, T, dh): q, k, v as strided views
    let split = shape::permute(&shape::reshape(qkv, &[batch, seq, 3, heads, head_dim])?, &[2, 0, 3, 1, 4])?;
    let part =
        |i: usize| -> Result<Var> { shape::reshape(&shape::narrow(&split, 0, i, 1)?, &[batch, heads, seq, head_dim]) };
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    let scores = matmul(&q, &shape::transpose(&k, 2, 3)?)?;
    let mut probs = attention_softmax(&scores, 1.0 / (head_dim as f32).sqrt(), key_mask)?;
    if let Some((p, rng)) = dropout_with {
        if p > 0.0 {
            probs = dropout(&probs, p, rng)?;
        }
    }
    let context = matmul(&probs, &v)?; // (B, heads, T, dh)
    shape::reshape(&shape::permute(&context, &[0, 2, 1, 3])?, &[batch, seq, hidden])
}

/// ALIGN's symmetric contrastive loss with label smoothing (the CPU op's formula), as tensor
/// ops on the GPU: Z = X Y^T / sigma, loss = -(sum(Q . logsoftmax_rows(Z)) +
/// sum(Q . logsoftmax_rows(Z^T))) / N with the smoothed targets Q = off + (on - off) I.
pub(crate) fn contrastive_loss(x: &Var, y: &Var, log_temperature: &Var, smoothing: f32) -> Result<Var> {
    let (xv, yv, tv) = (x.value(), y.value(), log_temperature.value());
    tensor::same_device("contrastive_loss", &[&xv, &yv, &tv])?;
    let (n, device) = (xv.shape()[0], xv.device());
    let off = smoothing / n as f32;
    let on = 1.0 - smoothing + off;
    let targets: Vec<f32> = (0..n * n).map(|k| if k / n == k % n { on } else { off }).collect();
    let q = Tensor::from_vec(targets, &[n, n])?.to_device(device)?;
    let inv_sigma = tv.reshape(&[1, 1])?.neg().exp(); // (1, 1), stays on the device
    let z = xv.matmul(&yv.t()?)?.mul(&inv_sigma)?;
    let lr = tg::softmax_rows(&z, 1.0, None, true)?;
    let lc_t = tg::softmax_rows(&z.t()?, 1.0, None, true)?;
    let loss = q.mul(&lr.add(&lc_t)?)?.sum(&[0, 1], false)?.mul_scalar(-1.0 / n as f32);
    Ok(Var::from_fn(loss, &[x, y, log_temperature], "contrastive_loss", move |g, needs| {
        // dZ = (softmax_rows(Z) + softmax_cols(Z) - 2 Q) g / N
        let scale = g.reshape(&[1, 1])?.mul_scalar(1.0 / n as f32);
        let dz = lr.exp().add(&lc_t.exp().t()?)?.sub(&q.mul_scalar(2.0))?.mul(&scale)?;
        Ok(vec![
            maybe(needs[0], || dz.matmul(&yv)?.mul(&inv_sigma))?,
            maybe(needs[1], || dz.t()?.matmul(&xv)?.mul(&inv_sigma))?,
            // dL/dt = -sum(dZ . Z)
            maybe(needs[2], || dz.mul(&z)?.sum(&[0, 1], false)?.neg().reshape(tv.shape()))?,
        ])
    }))
}

/// Mean cross-entropy with label smoothing (the CPU op's formula) from log-softmax rows:
/// loss = -sum(T . logp) / N with T = (1 - s) one_hot + s / C; dlogits = (softmax - T) g / N.
pub(crate) fn cross_entropy(logits: &Var, targets: &[usize], smoothing: f32) -> Result<Var> {
    let lv = logits.value();
    let (n, c) = (lv.shape()[0], lv.shape()[1]);
    let off = smoothing / c as f32;
    let on = 1.0 - smoothing + off;
    let mut t = vec![off; n * c];
    for (i, &k) in targets.iter().enumerate() {
        t[i * c + k] = on;
    }
    let t = Tensor::from_vec(t, &[n, c])?.to_device(lv.device())?;
    let logp = tg::softmax_rows(&lv, 1.0, None, true)?;
    let loss = t.mul(&logp)?.sum(&[0, 1], false)?.mul_scalar(-1.0 / n.max(1) as f32);
    Ok(Var::from_fn(loss, &[logits], "cross_entropy", move |g, _| {
        let scale = g.reshape(&[1, 1])?.mul_scalar(1.0 / n.max(1) as f32);
        Ok(vec![Some(logp.exp().sub(&t)?.mul(&scale)?)])
    }))
}

/// NHWC convolution on the GPU: a pointwise dense conv (1x1, stride 1, no padding) is a matrix
/// product (x (N*H*W, C_in) times w (C_in, C_out)) on the tiled matmul; the rest run the direct
/// conv shaders, forward and both gradients.
pub(crate) fn conv(x: &Var, w: &Var, depthwise: bool, g: kernels::conv::ConvGeometry) -> Result<Var> {
    use kernels::gpu::ops::ConvPass;
    let (xv, wv) = (x.value(), w.value());
    tensor::same_device("conv2d", &[&xv, &wv])?;
    let (x_shape, w_shape) = (xv.shape().to_vec(), wv.shape().to_vec());
    let y_shape = [g.batch, g.out_h, g.out_w, g.c_out];
    let name = if depthwise { "depthwise_conv2d" } else { "conv2d" };
    let pointwise = !depthwise
        && g.k_h == 1
        && g.k_w == 1
        && g.stride_h == 1
        && g.stride_w == 1
        && g.pad_top == 0
        && g.pad_left == 0;
    if pointwise {
        let pixels = g.batch * g.in_h * g.in_w;
        let (x2, w2) = (xv.reshape(&[pixels, g.c_in])?, wv.reshape(&[g.c_in, g.c_out])?);
        let y = x2.matmul(&w2)?.reshape(&y_shape)?;
        return Ok(Var::from_fn(y, &[x, w], name, move |dy, needs| {
            let dy2 = dy.reshape(&[pixels, g.c_out])?;
            Ok(vec![
                maybe(needs[0], || dy2.matmul(&w2.t()?)?.reshape(&x_shape))?,
                maybe(needs[1], || x2.t()?.matmul(&dy2)?.reshape(&w_shape))?,
            ])
        }));
    }
    let y = tg::conv(ConvPass::Forward, depthwise, &g, &xv, &wv, &y_shape)?;
    Ok(Var::from_fn(y, &[x, w], name, move |dy, needs| {
        Ok(vec![
            maybe(needs[0], || tg::conv(ConvPass::BackwardInput, depthwise, &g, dy, &wv, &x_shape))?,
            maybe(needs[1], || tg::conv(ConvPass::BackwardWeight, depthwise, &g, &xv, dy, &w_shape))?,
        ])
    }))
}

/// Mean over H and W of (N, H, W, C); the gradient spreads g / (H W) back over every pixel.
pub(crate) fn global_avg_pool(x: &Var) -> Result<Var> {
    let xv = x.value();
    let s = xv.shape().to_vec();
    let (n, pixels, c) = (s[0], s[1] * s[2], s[3]);
    let y = xv.mean(&[1, 2], false)?;
    Ok(Var::from_fn(y, &[x], "global_avg_pool", move |g, _| {
        let spread = g.reshape(&[n, 1, 1, c])?.mul_scalar(1.0 / pixels as f32);
        Ok(vec![Some(Tensor::zeros_on(&s, g.device())?.add(&spread)?)])
    }))
}

/// x (N, H, W, C) times s (N, C) broadcast over H and W (squeeze-excite).
pub(crate) fn channel_scale(x: &Var, s: &Var) -> Result<Var> {
    let (xv, sv) = (x.value(), s.value());
    let (n, c) = (xv.shape()[0], xv.shape()[3]);
    let s4 = sv.reshape(&[n, 1, 1, c])?;
    let y = xv.mul(&s4)?;
    Ok(Var::from_fn(y, &[x, s], "channel_scale", move |g, needs| {
        Ok(vec![maybe(needs[0], || g.mul(&s4))?, maybe(needs[1], || g.mul(&xv)?.sum(&[1, 2], false))?])
    }))
}

/// act(batch_norm(x)) over channels-last x, as tensor ops: statistics by column reductions,
/// the normalisation and affine map broadcast over rows, the activation's fused derivative.
pub(crate) fn batch_norm_act(
    x: &Var,
    gamma: &Var,
    beta: &Var,
    mode: &super::norm::BatchNormMode,
    act: Option<Activation>,
) -> Result<super::norm::BatchNormOutput> {
    use super::norm::{BatchNormMode, BatchNormOutput};
    let (xv, gv, bv) = (x.value(), gamma.value(), beta.value());
    tensor::same_device("batch_norm", &[&xv, &gv, &bv])?;
    let shape = xv.shape().to_vec();
    let c = *shape.last().unwrap_or(&1);
    let rows = xv.numel() / c.max(1);
    let x2 = xv.reshape(&[rows, c])?;
    let (mean, var, eps, training) = match mode {
        BatchNormMode::Train { eps } => {
            let mean = x2.mean(&[0], false)?;
            let var = x2.sub(&mean)?.square().mean(&[0], false)?;
            (mean, var, *eps, true)
        }
        BatchNormMode::Eval { running_mean, running_var, eps } => {
            (running_mean.to_device(xv.device())?, running_var.to_device(xv.device())?, *eps, false)
        }
    };
    let rstd = var.add_scalar(eps).rsqrt();
    let xhat = x2.sub(&mean)?.mul(&rstd)?;
    let pre = xhat.mul(&gv)?.add(&bv)?;
    let y = match act {
        Some(a) => tg::activation(&pre, a)?,
        None => pre.clone(),
    };
    let name = if act.is_some() { "batch_norm_act" } else { "batch_norm" };
    let y = Var::from_fn(y.reshape(&shape)?, &[x, gamma, beta], name, move |g, needs| {
        let g2 = g.reshape(&[rows, c])?;
        let dpre = match act {
            Some(a) => tg::activation_grad(&pre, &g2, a)?,
            None => g2,
        };
        let dxhat = dpre.mul(&gv)?;
        let dx = if training {
            // rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), column means over the batch
            let centred = dxhat.sub(&dxhat.mean(&[0], false)?)?;
            centred.sub(&xhat.mul(&dxhat.mul(&xhat)?.mean(&[0], false)?)?)?.mul(&rstd)?
        } else {
            dxhat.mul(&rstd)?
        };
        Ok(vec![
            maybe(needs[0], || dx.reshape(&shape))?,
            maybe(needs[1], || dpre.mul(&xhat)?.sum(&[0], false))?,
            maybe(needs[2], || dpre.sum(&[0], false))?,
        ])
    });
    let (batch_mean, batch_var) = if training { (Some(mean), Some(var)) } else { (None, None) };
    Ok(BatchNormOutput { y, batch_mean, batch_var, count: x.value().numel() / c })
}

#[cfg(test)]
mod tests {
    //! Every differentiable op on the GPU device against the same op on the CPU: the value and
    //! every input's gradient within 1e-4 of its tensor's scale.

    use super::super::{
        attention, contrastive, dropout as drop_op, elementwise as ew, matmul, norm, reduce, shape, softmax,
    };
    use crate::Var;
    use tensor::{Device, Rng, Tensor};

    const GPU: Device = Device::Gpu(0);

    fn close(what: &str, got: &Tensor, want: &Tensor) {
        assert_eq!(got.shape(), want.shape(), "{what}: shape");
        let (g, w) = (got.to_cpu().unwrap().to_vec(), want.to_vec());
        let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!((a - b).abs() <= 1e-4 * scale, "{what}[{i}]: {a} vs {b} (scale {scale})");
        }
    }

    /// Runs `f` on CPU parameters and on their GPU copies; sums the output against fixed
    /// weights (so every output element gets a distinct gradient) and compares the value and
    /// every parameter's gradient.
    fn compare(what: &str, inputs: &[Tensor], f: impl Fn(&[Var]) -> tensor::Result<Var>) {
        let run = |device: Device| {
            let params: Vec<Var> = inputs.iter().map(|t| Var::parameter(t.to_device(device).unwrap())).collect();
            let out = f(&params).unwrap();
            let value = out.value();
            assert_eq!(value.device(), device, "{what}: output on the wrong device");
            let weights = Tensor::randn(value.shape(), 0.0, 1.0, 99).to_device(device).unwrap();
            let loss = reduce::sum_all(&ew::mul(&out, &Var::constant(weights)).unwrap()).unwrap();
            loss.backward().unwrap();
            (value, params.iter().map(|p| p.grad().expect("gradient")).collect::<Vec<_>>())
        };
        let (cpu_value, cpu_grads) = run(Device::Cpu);
        let (gpu_value, gpu_grads) = run(GPU);
        close(&format!("{what} value"), &gpu_value, &cpu_value);
        for (i, (g, c)) in gpu_grads.iter().zip(&cpu_grads).enumerate() {
            assert_eq!(g.device(), GPU, "{what}: gradient {i} left the GPU");
            close(&format!("{what} grad {i}"), g, c);
        }
    }

    fn r(shape: &[usize], seed: u64) -> Tensor {
        Tensor::randn(shape, 0.0, 1.0, seed)
    }

    #[test]
    fn elementwise_and_activation_ops() {
        let x = r(&[5, 7], 1);
        let pos = x.abs().add_scalar(0.2);
        compare("exp", &[x.clone()], |v| Ok(ew::exp(&v[0])));
        compare("log", &[pos.clone()], |v| Ok(ew::log(&v[0])));
        compare("sqrt", &[pos.clone()], |v| Ok(ew::sqrt(&v[0])));
        compare("rsqrt", &[pos.clone()], |v| Ok(ew::rsqrt(&v[0])));
        compare("pow", &[pos.clone()], |v| Ok(ew::pow_scalar(&v[0], 1.7)));
        compare("tanh", &[x.clone()], |v| Ok(ew::tanh(&v[0])));
        compare("relu", &[x.clone()], |v| Ok(ew::relu(&v[0])));
        compare("relu6", &[x.mul_scalar(4.0)], |v| Ok(ew::relu6(&v[0])));
        compare("sigmoid", &[x.clone()], |v| Ok(ew::sigmoid(&v[0])));
        compare("silu", &[x.clone()], |v| Ok(ew::silu(&v[0])));
        compare("gelu", &[x.clone()], |v| Ok(ew::gelu(&v[0])));
        compare("gelu_tanh", &[x.clone()], |v| Ok(ew::gelu_tanh(&v[0])));
        compare("broadcast mul/div/sub", &[x.clone(), pos.narrow(0, 0, 1).unwrap().contiguous()], |v| {
            ew::sub(&ew::div(&ew::mul(&v[0], &v[1])?, &v[1])?, &v[1])
        });
        compare("strided input", &[x.clone()], |v| Ok(ew::gelu(&shape::transpose(&v[0], 0, 1)?)));
    }

    #[test]
    fn matmul_linear_and_reductions() {
        compare("matmul", &[r(&[2, 3, 9, 5], 2), r(&[3, 5, 4], 3)], |v| matmul::matmul(&v[0], &v[1]));
        compare("linear", &[r(&[7, 5], 4), r(&[3, 5], 5), r(&[3], 6)], |v| matmul::linear(&v[0], &v[1], Some(&v[2])));
        compare("linear_stacked", &[r(&[7, 5], 7), r(&[3, 5], 8), r(&[2, 5], 9)], |v| {
            matmul::linear_stacked(&v[0], &[&v[1], &v[2]], None)
        });
        compare("sum / mean", &[r(&[3, 4, 5], 10)], |v| reduce::mean(&reduce::sum(&v[0], &[1], true)?, &[0, 2], false));
        compare("concat / narrow", &[r(&[3, 4], 11), r(&[3, 2], 12)], |v| {
            shape::narrow(&shape::concat(&[&v[0], &v[1]], 1)?, 1, 1, 4)
        });
        compare("embedding", &[r(&[10, 6], 13)], |v| shape::index_select(&v[0], 0, &[3, 0, 9, 3]));
    }

    #[test]
    fn norms_softmaxes_attention_and_losses() {
        compare("layer_norm", &[r(&[6, 33], 14), r(&[33], 15), r(&[33], 16)], |v| {
            norm::layer_norm(&v[0], &v[1], &v[2], 1e-5)
        });
        compare("softmax", &[r(&[4, 9], 17)], |v| softmax::softmax(&v[0]));
        compare("log_softmax", &[r(&[4, 9], 18)], |v| softmax::log_softmax(&v[0]));
        let mask = Tensor::from_vec(vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0], &[2, 4]).unwrap();
        compare("attention_softmax", &[r(&[2, 3, 5, 4], 19)], |v| softmax::attention_softmax(&v[0], 0.7, Some(&mask)));
        let mask5 = Tensor::from_vec(vec![1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], &[2, 5]).unwrap();
        compare("self_attention", &[r(&[2, 5, 12], 20)], |v| attention::self_attention(&v[0], 2, Some(&mask5), None));
        compare("cross_entropy", &[r(&[3, 5], 21)], |v| softmax::cross_entropy(&v[0], &[4, 0, 2], 0.1));
        let temperature = Tensor::from_vec(vec![-0.3], &[]).unwrap();
        compare("contrastive_loss", &[r(&[6, 4], 22), r(&[6, 4], 23), temperature], |v| {
            let (a, b) = (contrastive::l2_normalize(&v[0], 1e-12)?, contrastive::l2_normalize(&v[1], 1e-12)?);
            contrastive::contrastive_loss(&a, &b, &v[2], 0.1)
        });
    }

    #[test]
    fn dropout_on_the_gpu_is_seeded_and_its_backward_reuses_the_mask() {
        let x = Var::parameter(Tensor::ones(&[1000]).to_device(GPU).unwrap());
        let y = drop_op::dropout(&x, 0.25, &mut Rng::new(3)).unwrap();
        let again = drop_op::dropout(&x, 0.25, &mut Rng::new(3)).unwrap();
        let (yv, av) = (y.value().to_vec(), again.value().to_vec());
        assert_eq!(yv, av);
        let kept = yv.iter().filter(|&&v| v != 0.0).count();
        assert!((700..800).contains(&kept), "{kept}");
        reduce::sum_all(&y).unwrap().backward().unwrap();
        assert_eq!(x.grad().unwrap().to_vec(), yv, "the gradient of sum(dropout(1)) is the mask itself");
    }

    #[test]
    fn convolutions_pooling_and_batch_norm() {
        use super::super::conv as cv;
        use super::super::norm::{batch_norm_act, BatchNormMode};
        use kernels::activation::Activation;
        use kernels::conv::Padding;
        let x = r(&[2, 7, 6, 3], 30);
        for (k, stride, pad) in [
            (3, 1, Padding::Same),
            (3, 2, Padding::Same),
            (1, 1, Padding::Valid),
            (3, 2, Padding::Explicit { top: 1, bottom: 1, left: 1, right: 1 }),
        ] {
            compare(&format!("conv2d k{k} s{stride} {pad:?}"), &[x.clone(), r(&[k, k, 3, 4], 31)], |v| {
                cv::conv2d(&v[0], &v[1], stride, pad)
            });
            compare(&format!("depthwise k{k} s{stride} {pad:?}"), &[x.clone(), r(&[k, k, 3], 32)], |v| {
                cv::depthwise_conv2d(&v[0], &v[1], stride, pad)
            });
        }
        compare("global_avg_pool", &[x.clone()], |v| cv::global_avg_pool(&v[0]));
        compare("channel_scale", &[x.clone(), r(&[2, 3], 33)], |v| cv::channel_scale(&v[0], &v[1]));
        let (gamma, beta) = (r(&[3], 34).abs().add_scalar(0.5), r(&[3], 35));
        for act in [None, Some(Activation::Silu)] {
            compare(&format!("batch_norm train {act:?}"), &[x.clone(), gamma.clone(), beta.clone()], |v| {
                Ok(batch_norm_act(&v[0], &v[1], &v[2], &BatchNormMode::Train { eps: 1e-3 }, act)?.y)
            });
            let mode = BatchNormMode::Eval {
                running_mean: r(&[3], 36),
                running_var: r(&[3], 37).abs().add_scalar(0.5),
                eps: 1e-3,
            };
            compare(&format!("batch_norm eval {act:?}"), &[x.clone(), gamma.clone(), beta.clone()], |v| {
                Ok(batch_norm_act(&v[0], &v[1], &v[2], &mode, act)?.y)
            });
        }
    }
}
