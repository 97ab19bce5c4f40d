//! Layers with PyTorch parameter names: Linear, Embedding, LayerNorm, Dropout, DropPath,
//! Conv2d / DepthwiseConv2d (NHWC), BatchNorm2d, SqueezeExcite, MultiHeadSelfAttention and the
//! activations.
//!
//! Layouts: Linear keeps PyTorch's (out, in) weight and multiplies by its transpose as a strided
//! view (no copy), so Hugging Face checkpoints load as they are. Conv weights use our NHWC-friendly
//! layouts, (KH, KW, C_in, C_out) and (KH, KW, C); loaders transpose PyTorch's OIHW once.

use autograd::ops::{
    conv as cv, dropout, elementwise as ew,
    matmul::{linear, matmul},
    norm, shape, softmax,
};
use autograd::{no_grad, Var};
use kernels::Padding;
use tensor::{Result, Rng, Tensor, TensorError};

use crate::init;
use crate::module::{Buffer, Ctx, Forward};
use crate::Module;

/// y = x W^T + b, x (..., in) -> (..., out).
#[derive(Module)]
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl Linear {
    /// PyTorch's default init: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
    pub fn new(in_features: usize, out_features: usize, bias: bool, rng: &mut Rng) -> Linear {
        let bound = 1.0 / (in_features.max(1) as f32).sqrt();
        Linear {
            weight: Var::parameter(Tensor::rand_uniform_with(&[out_features, in_features], -bound, bound, rng)),
            bias: bias.then(|| Var::parameter(Tensor::rand_uniform_with(&[out_features], -bound, bound, rng))),
        }
    }

    /// BERT's init: weight ~ N(0, std), bias = 0.
    pub fn new_normal(in_features: usize, out_features: usize, std: f32, rng: &mut Rng) -> Linear {
        Linear {
            weight: Var::parameter(init::normal(&[out_features, in_features], 0.0, std, rng)),
            bias: Some(Var::parameter(Tensor::zeros(&[out_features]))),
        }
    }

    pub fn forward(&self, x: &Var, _ctx: &mut Ctx) -> Result<Var> {
        // Flatten leading axes so the whole batch is one GEMM (and the weight gradient one GEMM
        // too, instead of a batch of small products summed afterwards).
        let s = x.shape();
        let in_features =
            *s.last().ok_or_else(|| TensorError::Shape { op: "linear", msg: "input has no axes".into() })?;
        let rows: usize = s[..s.len() - 1].iter().product();
        let flat = if s.len() == 2 { x.clone() } else { shape::reshape(x, &[rows, in_features])? };
        let y = linear(&flat, &self.weight, self.bias.as_ref())?;
        if s.len() == 2 {
            return Ok(y);
        }
        let mut out_shape = s.clone();
        *out_shape.last_mut().expect("rank >= 1") = self.weight.shape()[0];
        shape::reshape(&y, &out_shape)
    }
}

/// Lookup table (num, dim).
#[derive(Module)]
pub struct Embedding {
    pub weight: Var,
}

impl Embedding {
    pub fn new(num: usize, dim: usize, std: f32, rng: &mut Rng) -> Embedding {
        Embedding { weight: Var::parameter(init::normal(&[num, dim], 0.0, std, rng)) }
    }

    /// ids (any shape) -> (ids..., dim). (A lookup of integer ids, not a function of a tensor,
    /// so it is not a [`Forward`] layer.)
    pub fn lookup(&self, ids: &[usize], ids_shape: &[usize]) -> Result<Var> {
        let rows = shape::index_select(&self.weight, 0, ids)?;
        let mut out_shape = ids_shape.to_vec();
        out_shape.push(self.weight.shape()[1]);
        shape::reshape(&rows, &out_shape)
    }
}

/// Layer norm over the last axis with weight and bias.
#[derive(Module)]
pub struct LayerNorm {
    pub weight: Var,
    pub bias: Var,
    #[module(skip)]
    pub eps: f32,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f32) -> LayerNorm {
        LayerNorm { weight: Var::parameter(Tensor::ones(&[dim])), bias: Var::parameter(Tensor::zeros(&[dim])), eps }
    }
    pub fn forward(&self, x: &Var, _ctx: &mut Ctx) -> Result<Var> {
        norm::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// Dropout: active only in training mode.
pub struct Dropout {
    pub p: f32,
}

impl Dropout {
    pub fn forward(&self, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        if !ctx.training || self.p == 0.0 {
            return Ok(x.clone());
        }
        dropout::dropout(x, self.p, &mut ctx.rng)
    }
}

/// Stochastic depth (drop-connect): each sample's whole residual branch is dropped with
/// probability p; kept samples are divided by 1 - p. One Bernoulli draw per sample.
pub struct DropPath {
    pub p: f32,
}

impl DropPath {
    pub fn forward(&self, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        if !ctx.training || self.p == 0.0 {
            return Ok(x.clone());
        }
        let mask = self.sample_scales(x.shape()[0], ctx);
        scale_samples(x, mask)
    }
}

/// out[n, ...] = x[n, ...] * scale[n], forward and backward in one pass over each sample's
/// contiguous block (a broadcast multiply by an (N, 1, 1, 1) tensor would index per element).
fn scale_samples(x: &Var, scale: Vec<f32>) -> Result<Var> {
    let xv = x.value().contiguous();
    if xv.device().is_gpu() {
        // On a GPU the broadcast multiply is one kernel either way.
        let mut shape = vec![1; xv.rank()];
        shape[0] = scale.len();
        let factors = Var::constant(Tensor::from_vec(scale, &shape)?.to_device(xv.device())?);
        return autograd::ops::elementwise::mul(x, &factors);
    }
    let per = xv.numel() / scale.len().max(1);
    let apply = move |t: &Tensor, scale: &[f32]| -> Result<Tensor> {
        let t = t.contiguous();
        let mut out = t.to_vec();
        for (chunk, &k) in out.chunks_mut(per.max(1)).zip(scale) {
            chunk.iter_mut().for_each(|v| *v *= k);
        }
        Tensor::from_vec(out, t.shape())
    };
    let out = apply(&xv, &scale)?;
    Ok(Var::from_fn(out, &[x], "drop_path", move |g, _| Ok(vec![Some(apply(g, &scale)?)])))
}

impl DropPath {
    /// The scale each sample of a batch of `n` gets in training (0 or 1 / (1 - p)).
    pub fn sample_scales(&self, n: usize, ctx: &mut Ctx) -> Vec<f32> {
        let keep = 1.0 - self.p;
        (0..n).map(|_| if ctx.rng.next_f32() < keep { 1.0 / keep } else { 0.0 }).collect()
    }
}

/// Dense 2-D convolution on NHWC input; weight (KH, KW, C_in, C_out).
#[derive(Module)]
pub struct Conv2d {
    pub weight: Var,
    pub bias: Option<Var>,
    #[module(skip)]
    pub stride: usize,
    #[module(skip)]
    pub padding: Padding,
}

impl Conv2d {
    /// Kaiming-normal init with fan-out (EfficientNet's conv init).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: Padding,
        bias: bool,
        rng: &mut Rng,
    ) -> Conv2d {
        Conv2d {
            weight: Var::parameter(init::kaiming_normal(&[k, k, c_in, c_out], k * k * c_out, rng)),
            bias: bias.then(|| Var::parameter(Tensor::zeros(&[c_out]))),
            stride,
            padding,
        }
    }
    pub fn forward(&self, x: &Var, _ctx: &mut Ctx) -> Result<Var> {
        let y = cv::conv2d(x, &self.weight, self.stride, self.padding)?;
        match &self.bias {
            Some(b) => ew::add(&y, b),
            None => Ok(y),
        }
    }
}

/// Depthwise convolution (one k x k filter per channel); weight (KH, KW, C).
#[derive(Module)]
pub struct DepthwiseConv2d {
    pub weight: Var,
    #[module(skip)]
    pub stride: usize,
    #[module(skip)]
    pub padding: Padding,
}

impl DepthwiseConv2d {
    pub fn new(channels: usize, k: usize, stride: usize, padding: Padding, rng: &mut Rng) -> DepthwiseConv2d {
        DepthwiseConv2d { weight: Var::parameter(init::kaiming_normal(&[k, k, channels], k * k, rng)), stride, padding }
    }
    pub fn forward(&self, x: &Var, _ctx: &mut Ctx) -> Result<Var> {
        cv::depthwise_conv2d(x, &self.weight, self.stride, self.padding)
    }
}

/// Batch norm over the channel (last) axis of NHWC input.
///
/// Momentum follows PyTorch: running = (1 - momentum) * running + momentum * batch, so
/// TensorFlow's decay 0.99 is momentum 0.01 here (EfficientNet's setting, with eps 1e-3).
/// The running variance is updated with the unbiased batch variance, as PyTorch does, while
/// the batch is normalised with the biased one.
#[derive(Module)]
pub struct BatchNorm2d {
    pub weight: Var,
    pub bias: Var,
    pub running_mean: Buffer,
    pub running_var: Buffer,
    pub num_batches_tracked: Buffer,
    #[module(skip)]
    pub momentum: f32,
    #[module(skip)]
    pub eps: f32,
}

impl BatchNorm2d {
    pub fn new(channels: usize, momentum: f32, eps: f32) -> BatchNorm2d {
        BatchNorm2d {
            weight: Var::parameter(Tensor::ones(&[channels])),
            bias: Var::parameter(Tensor::zeros(&[channels])),
            running_mean: Buffer::new(Tensor::zeros(&[channels])),
            running_var: Buffer::new(Tensor::ones(&[channels])),
            num_batches_tracked: Buffer::new(Tensor::zeros(&[])),
            momentum,
            eps,
        }
    }

    pub fn forward(&self, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        self.forward_act(x, ctx, None)
    }

    /// act(batch_norm(x)) through the fused kernel when the activation has one (SiLU, sigmoid,
    /// GELU); otherwise batch norm followed by the separate activation.
    pub fn forward_with(&self, x: &Var, ctx: &mut Ctx, act: Activation) -> Result<Var> {
        match act.fused_kernel() {
            Some(k) => self.forward_act(x, ctx, Some(k)),
            None => act.forward(&self.forward_act(x, ctx, None)?, ctx),
        }
    }

    fn forward_act(&self, x: &Var, ctx: &Ctx, act: Option<kernels::activation::Activation>) -> Result<Var> {
        if !ctx.training {
            let mode = norm::BatchNormMode::Eval {
                running_mean: self.running_mean.get(),
                running_var: self.running_var.get(),
                eps: self.eps,
            };
            return Ok(norm::batch_norm_act(x, &self.weight, &self.bias, &mode, act)?.y);
        }
        let out =
            norm::batch_norm_act(x, &self.weight, &self.bias, &norm::BatchNormMode::Train { eps: self.eps }, act)?;
        // every worker's values per channel when batch norm is synchronised
        let count = out.count;
        if count < 2 {
            return Err(TensorError::Shape {
                op: "batch_norm",
                msg: "training needs more than one value per channel".into(),
            });
        }
        no_grad(|| -> Result<()> {
            let m = self.momentum;
            let mean = out.batch_mean.as_ref().expect("training stats");
            let var = out.batch_var.as_ref().expect("training stats").mul_scalar(count as f32 / (count - 1) as f32);
            self.running_mean.set(self.running_mean.get().mul_scalar(1.0 - m).add(&mean.mul_scalar(m))?);
            self.running_var.set(self.running_var.get().mul_scalar(1.0 - m).add(&var.mul_scalar(m))?);
            self.num_batches_tracked.set(self.num_batches_tracked.get().add_scalar(1.0));
            Ok(())
        })?;
        Ok(out.y)
    }
}

/// Element-wise activations by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Relu6,
    Silu,
    Gelu,
    GeluTanh,
    Sigmoid,
    Tanh,
    Identity,
}

impl Activation {
    pub fn forward(&self, x: &Var, _ctx: &mut Ctx) -> Result<Var> {
        Ok(match self {
            Activation::Relu => ew::relu(x),
            Activation::Relu6 => ew::relu6(x),
            Activation::Silu => ew::silu(x),
            Activation::Gelu => ew::gelu(x),
            Activation::GeluTanh => ew::gelu_tanh(x),
            Activation::Sigmoid => ew::sigmoid(x),
            Activation::Tanh => ew::tanh(x),
            Activation::Identity => x.clone(),
        })
    }

    /// The vectorised kernel a fused op (batch norm + activation) can apply, if there is one.
    pub fn fused_kernel(self) -> Option<kernels::activation::Activation> {
        match self {
            Activation::Silu => Some(kernels::activation::Activation::Silu),
            Activation::Gelu => Some(kernels::activation::Activation::GeluErf),
            Activation::GeluTanh => Some(kernels::activation::Activation::GeluTanh),
            Activation::Sigmoid => Some(kernels::activation::Activation::Sigmoid),
            _ => None,
        }
    }
}

/// Squeeze-and-excitation: pool -> 1x1 reduce (bias) -> act -> 1x1 expand (bias) -> sigmoid ->
/// channel scale. The 1x1 convs on a pooled (N, C) tensor are Linear layers; names follow the
/// EfficientNet checkpoints (lukemelas' `_se_reduce`, `_se_expand`), which list them flat
/// beside the rest of the block.
#[derive(Module)]
pub struct SqueezeExcite {
    #[module(name = "_se_reduce")]
    pub reduce: Linear,
    #[module(name = "_se_expand")]
    pub expand: Linear,
    #[module(skip)]
    pub act: Activation,
}

impl SqueezeExcite {
    pub fn new(channels: usize, reduced: usize, act: Activation, rng: &mut Rng) -> SqueezeExcite {
        SqueezeExcite {
            reduce: Linear::new(channels, reduced, true, rng),
            expand: Linear::new(reduced, channels, true, rng),
            act,
        }
    }
    pub fn forward(&self, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        let s = cv::global_avg_pool(x)?;
        let s = self.act.forward(&self.reduce.forward(&s, ctx)?, ctx)?;
        let s = ew::sigmoid(&self.expand.forward(&s, ctx)?);
        cv::channel_scale(x, &s)
    }
}

/// Multi-head self-attention with a padding mask.
#[derive(Module)]
pub struct MultiHeadSelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub output: Linear,
    #[module(skip)]
    pub heads: usize,
    #[module(skip)]
    pub attn_dropout: Dropout,
}

impl MultiHeadSelfAttention {
    pub fn new(dim: usize, heads: usize, dropout_p: f32, rng: &mut Rng) -> Result<MultiHeadSelfAttention> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(TensorError::Shape {
                op: "attention",
                msg: format!("width {dim} is not divisible by {heads} heads"),
            });
        }
        Ok(MultiHeadSelfAttention {
            query: Linear::new_normal(dim, dim, 0.02, rng),
            key: Linear::new_normal(dim, dim, 0.02, rng),
            value: Linear::new_normal(dim, dim, 0.02, rng),
            output: Linear::new_normal(dim, dim, 0.02, rng),
            heads,
            attn_dropout: Dropout { p: dropout_p },
        })
    }

    /// Unmasked: every position attends to every other.
    pub fn forward(&self, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        self.forward_masked(x, None, ctx)
    }

    /// x (B, T, D); `mask` (B, T): 1 for tokens, 0 for padding (keys at padding get no weight).
    pub fn forward_masked(&self, x: &Var, mask: Option<&Tensor>, ctx: &mut Ctx) -> Result<Var> {
        let s = x.shape();
        let (b, t, d) = (s[0], s[1], s[2]);
        let dh = d / self.heads;
        let heads =
            |v: Var| -> Result<Var> { shape::permute(&shape::reshape(&v, &[b, t, self.heads, dh])?, &[0, 2, 1, 3]) };
        let q = heads(self.query.forward(x, ctx)?)?;
        let k = heads(self.key.forward(x, ctx)?)?;
        let v = heads(self.value.forward(x, ctx)?)?;
        let mut scores = ew::mul_scalar(&matmul(&q, &shape::transpose(&k, 2, 3)?)?, 1.0 / (dh as f32).sqrt());
        if let Some(m) = mask {
            if m.shape() != [b, t] {
                return Err(TensorError::Shape {
                    op: "attention",
                    msg: format!("mask {:?} must be [{b}, {t}]", m.shape()),
                });
            }
            let add = Var::constant(m.map(|v| if v > 0.0 { 0.0 } else { -1e9 }).reshape(&[b, 1, 1, t])?);
            scores = ew::add(&scores, &add)?;
        }
        let probs = self.attn_dropout.forward(&softmax::softmax(&scores)?, ctx)?;
        let ctx_heads = matmul(&probs, &v)?;
        let merged = shape::reshape(&shape::permute(&ctx_heads, &[0, 2, 1, 3])?, &[b, t, d])?;
        self.output.forward(&merged, ctx)
    }
}

// Every layer above follows the one forward convention (`Forward`): `forward(x, ctx)`.
macro_rules! forward_layers {
    ($($layer:ty),*) => {$(
        impl Forward for $layer {
            fn forward(&self, x: &Var, ctx: &mut Ctx) -> Result<Var> {
                <$layer>::forward(self, x, ctx)
            }
        }
    )*};
}
forward_layers!(
    Linear,
    LayerNorm,
    Dropout,
    DropPath,
    Conv2d,
    DepthwiseConv2d,
    BatchNorm2d,
    Activation,
    SqueezeExcite,
    MultiHeadSelfAttention
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::check_state_lists;
    use crate::optim::{single_group, Optimizer, Sgd};

    #[test]
    fn every_layer_lists_saves_and_loads_all_it_owns() {
        let rng = || Rng::new(3);
        check_state_lists(|| Linear::new(5, 3, true, &mut rng())).unwrap();
        check_state_lists(|| Linear::new(5, 3, false, &mut rng())).unwrap();
        check_state_lists(|| Embedding::new(7, 4, 0.02, &mut rng())).unwrap();
        check_state_lists(|| LayerNorm::new(6, 1e-5)).unwrap();
        check_state_lists(|| Conv2d::new(3, 4, 3, 2, Padding::Same, true, &mut rng())).unwrap();
        check_state_lists(|| DepthwiseConv2d::new(4, 5, 1, Padding::Same, &mut rng())).unwrap();
        check_state_lists(|| BatchNorm2d::new(4, 0.1, 1e-3)).unwrap();
        check_state_lists(|| SqueezeExcite::new(8, 2, Activation::Silu, &mut rng())).unwrap();
        check_state_lists(|| MultiHeadSelfAttention::new(8, 2, 0.0, &mut rng()).unwrap()).unwrap();
    }

    #[test]
    fn derived_lists_follow_fields_renames_vectors_options_and_flattening() {
        #[derive(Module)]
        struct Pair {
            #[module(name = "_first")]
            a: Linear,
            #[module(name = "_second")]
            b: BatchNorm2d,
        }
        #[derive(Module)]
        struct Net {
            scale: Var,
            #[module(name = "encoder.layer")]
            layers: Vec<LayerNorm>,
            missing: Option<Linear>,
            #[module(flatten)]
            pair: Option<Pair>,
            #[module(skip)]
            _width: usize,
        }
        let net = Net {
            scale: Var::parameter(Tensor::ones(&[1])),
            layers: vec![LayerNorm::new(2, 1e-5), LayerNorm::new(2, 1e-5)],
            missing: None,
            pair: Some(Pair { a: Linear::new(2, 2, false, &mut Rng::new(0)), b: BatchNorm2d::new(2, 0.1, 1e-3) }),
            _width: 2,
        };
        let names: Vec<String> = net.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "scale",
                "encoder.layer.0.weight",
                "encoder.layer.0.bias",
                "encoder.layer.1.weight",
                "encoder.layer.1.bias",
                "_first.weight",
                "_second.weight",
                "_second.bias"
            ]
        );
        let buffers: Vec<String> = net.named_buffers().into_iter().map(|(n, _)| n).collect();
        assert_eq!(buffers, ["_second.running_mean", "_second.running_var", "_second.num_batches_tracked"]);
    }

    #[test]
    fn a_forgotten_parameter_or_buffer_is_caught() {
        // a layer whose `parameters` leaves out its bias, and one that forgets a buffer
        struct NoBias(Linear);
        impl Module for NoBias {
            fn parameters(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
                out.push((crate::module::join(prefix, "weight"), self.0.weight.clone()));
            }
        }
        let e = check_state_lists(|| NoBias(Linear::new(5, 3, true, &mut Rng::new(0)))).unwrap_err();
        assert!(e.contains("shape [3]") && e.contains("listed 0 times"), "{e}");
        struct NoStats(BatchNorm2d);
        impl Module for NoStats {
            fn parameters(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
                self.0.parameters(prefix, out);
            }
        }
        let e = check_state_lists(|| NoStats(BatchNorm2d::new(4, 0.1, 1e-3))).unwrap_err();
        assert!(e.contains("buffer") && e.contains("listed 0 times"), "{e}");
    }
    use autograd::gradcheck::{check_gradients, GradcheckOptions};
    use autograd::ops::reduce;

    #[test]
    fn attention_ignores_padded_positions_and_passes_gradcheck() {
        let mut rng = Rng::new(1);
        let mha = MultiHeadSelfAttention::new(8, 2, 0.0, &mut rng).unwrap();
        let mask = Tensor::from_vec(vec![1.0, 1.0, 1.0, 0.0, 0.0], &[1, 5]).unwrap();
        let x = Tensor::randn(&[1, 5, 8], 0.0, 1.0, 2);
        // change only the padded tokens
        let mut x2 = x.to_vec();
        for v in &mut x2[3 * 8..] {
            *v += 10.0;
        }
        let x2 = Tensor::from_vec(x2, &[1, 5, 8]).unwrap();
        let mut ctx = Ctx::eval();
        let y1 = mha.forward_masked(&Var::constant(x), Some(&mask), &mut ctx).unwrap().value();
        let y2 = mha.forward_masked(&Var::constant(x2), Some(&mask), &mut ctx).unwrap().value();
        let (a, b) = (y1.narrow(1, 0, 3).unwrap().to_vec(), y2.narrow(1, 0, 3).unwrap().to_vec());
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-5, "real tokens must not see padding: {p} vs {q}");
        }
        let xin = Tensor::randn(&[2, 3, 8], 0.0, 1.0, 3);
        let m2 = Tensor::from_vec(vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0], &[2, 3]).unwrap();
        check_gradients(
            &[xin],
            |v| mha.forward_masked(&v[0], Some(&m2), &mut Ctx::eval()),
            &GradcheckOptions::default(),
        )
        .unwrap();
        assert!(mha
            .forward_masked(&Var::constant(Tensor::zeros(&[1, 5, 8])), Some(&Tensor::ones(&[1, 4])), &mut ctx)
            .is_err());
        assert!(MultiHeadSelfAttention::new(10, 3, 0.0, &mut rng).is_err());
    }

    #[test]
    fn drop_path_drops_whole_samples_and_is_identity_in_eval() {
        let dp = DropPath { p: 0.5 };
        let x = Var::constant(Tensor::ones(&[64, 2, 2, 3]));
        let y = dp.forward(&x, &mut Ctx::train(4)).unwrap().value();
        let mut dropped = 0;
        for n in 0..64 {
            let s = y.narrow(0, n, 1).unwrap().to_vec();
            assert!(s.iter().all(|&v| v == s[0]) && (s[0] == 0.0 || s[0] == 2.0));
            dropped += (s[0] == 0.0) as usize;
        }
        assert!(dropped > 16 && dropped < 48, "{dropped}");
        assert_eq!(dp.forward(&x, &mut Ctx::eval()).unwrap().value().to_vec(), x.value().to_vec());
    }

    #[test]
    fn names_counts_and_freezing() {
        let mut rng = Rng::new(0);
        let se = SqueezeExcite::new(8, 2, Activation::Silu, &mut rng);
        let names: Vec<String> = se.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["_se_reduce.weight", "_se_reduce.bias", "_se_expand.weight", "_se_expand.bias"]);
        assert_eq!(se.num_parameters(), 8 * 2 + 2 + 2 * 8 + 8);
        let bn = BatchNorm2d::new(4, 0.01, 1e-3);
        assert_eq!(
            bn.state_dict().keys().cloned().collect::<Vec<_>>(),
            ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"]
        );
        // frozen parameters get no gradient and no update
        assert_eq!(se.set_frozen("_se_reduce", true), 2);
        let before = se.reduce.weight.value().to_vec();
        let mut opt = Sgd::new(single_group(se.named_parameters(), 0.1, 0.0), 0.0, false);
        let x = Var::constant(Tensor::randn(&[2, 3, 3, 8], 0.0, 1.0, 1));
        reduce::sum_all(&se.forward(&x, &mut Ctx::eval()).unwrap()).unwrap().backward().unwrap();
        assert!(se.reduce.weight.grad().is_none());
        assert!(se.expand.weight.grad().is_some());
        opt.step().unwrap();
        assert_eq!(se.reduce.weight.value().to_vec(), before);
    }

    #[test]
    fn conv_layers_and_embedding_shapes() {
        let mut rng = Rng::new(0);
        let conv = Conv2d::new(3, 16, 3, 2, Padding::Same, false, &mut rng);
        let y = conv.forward(&Var::constant(Tensor::zeros(&[2, 9, 9, 3])), &mut Ctx::eval()).unwrap();
        assert_eq!(y.shape(), [2, 5, 5, 16]);
        let dw = DepthwiseConv2d::new(16, 5, 1, Padding::Same, &mut rng);
        assert_eq!(dw.forward(&y, &mut Ctx::eval()).unwrap().shape(), [2, 5, 5, 16]);
        let emb = Embedding::new(10, 4, 0.02, &mut rng);
        let e = emb.lookup(&[1, 2, 3, 9, 0, 0], &[2, 3]).unwrap();
        assert_eq!(e.shape(), [2, 3, 4]);
        assert!(emb.lookup(&[10], &[1]).is_err());
    }
}
