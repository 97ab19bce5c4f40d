//! EfficientNet (Tan & Le 2019), the ALIGN image tower, and its Lite variants.
//!
//! Follows the TF reference (tensorflow/tpu) as SPEC.md summarises it: compound scaling of
//! width, depth and resolution; MBConv blocks (1x1 expand -> BN -> act -> depthwise k x k ->
//! BN -> act -> squeeze-excite -> 1x1 project -> BN, residual with drop-connect when stride 1
//! and in == out); TF "SAME" padding; batch norm with TF momentum 0.99 (PyTorch 0.01) and eps
//! 1e-3. Lite variants use ReLU6, no squeeze-excite, and keep the stem, the head and the first
//! and last stages unscaled. ALIGN uses the globally pooled output of the last block (no 1x1
//! head conv); the head and classifier are there for ImageNet classification.
//!
//! Parameter names follow lukemelas' EfficientNet-PyTorch (`_blocks.3._depthwise_conv.weight`),
//! the naming of the published Lite weights; [`EfficientNet::load_pytorch`] converts PyTorch's
//! OIHW conv weights to our NHWC layouts once at load time.

use std::collections::BTreeMap;

use autograd::ops::conv as cv;
use autograd::ops::elementwise as ew;
use autograd::Var;
use kernels::Padding;
use nn::layers::{Activation, BatchNorm2d, Conv2d, DepthwiseConv2d, DropPath, Dropout, Linear, SqueezeExcite};
use nn::module::{join, Buffer};
use nn::{Ctx, LoadReport, Module};
use tensor::{Result, Rng, Tensor, TensorError};

/// One stage of the block table (before scaling).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StageArgs {
    pub repeats: usize,
    pub kernel: usize,
    pub stride: usize,
    pub expand: usize,
    pub in_ch: usize,
    pub out_ch: usize,
}

/// The B0 block table of SPEC.md.
pub const B0_STAGES: [StageArgs; 7] = [
    StageArgs { repeats: 1, kernel: 3, stride: 1, expand: 1, in_ch: 32, out_ch: 16 },
    StageArgs { repeats: 2, kernel: 3, stride: 2, expand: 6, in_ch: 16, out_ch: 24 },
    StageArgs { repeats: 2, kernel: 5, stride: 2, expand: 6, in_ch: 24, out_ch: 40 },
    StageArgs { repeats: 3, kernel: 3, stride: 2, expand: 6, in_ch: 40, out_ch: 80 },
    StageArgs { repeats: 3, kernel: 5, stride: 1, expand: 6, in_ch: 80, out_ch: 112 },
    StageArgs { repeats: 4, kernel: 5, stride: 2, expand: 6, in_ch: 112, out_ch: 192 },
    StageArgs { repeats: 1, kernel: 3, stride: 1, expand: 6, in_ch: 192, out_ch: 320 },
];

#[derive(Clone, Debug, PartialEq)]
pub struct EfficientNetConfig {
    pub name: String,
    pub width: f64,
    pub depth: f64,
    pub resolution: usize,
    pub dropout: f32,
    pub drop_connect: f32,
    /// Lite: ReLU6, no squeeze-excite, stem / head / first and last stages unscaled.
    pub lite: bool,
    pub num_classes: usize,
    pub stages: Vec<StageArgs>,
    /// Batch-norm momentum in PyTorch's convention (TF's decay 0.99 = 0.01 here). Short runs
    /// use a larger value so the running statistics used at evaluation catch up.
    pub bn_momentum: f32,
}

impl EfficientNetConfig {
    fn make(name: &str, width: f64, depth: f64, resolution: usize, dropout: f32, lite: bool) -> Self {
        EfficientNetConfig {
            name: name.into(),
            width,
            depth,
            resolution,
            dropout,
            drop_connect: 0.2,
            lite,
            num_classes: 1000,
            stages: B0_STAGES.to_vec(),
            bn_momentum: BN_MOMENTUM,
        }
    }

    /// b0..b7, l2, lite0..lite4, tiny.
    pub fn by_name(name: &str) -> Option<Self> {
        let n = name.trim_start_matches("efficientnet-");
        Some(match n {
            "b0" => Self::make(n, 1.0, 1.0, 224, 0.2, false),
            "b1" => Self::make(n, 1.0, 1.1, 240, 0.2, false),
            "b2" => Self::make(n, 1.1, 1.2, 260, 0.3, false),
            "b3" => Self::make(n, 1.2, 1.4, 300, 0.3, false),
            "b4" => Self::make(n, 1.4, 1.8, 380, 0.4, false),
            "b5" => Self::make(n, 1.6, 2.2, 456, 0.4, false),
            "b6" => Self::make(n, 1.8, 2.6, 528, 0.5, false),
            "b7" => Self::make(n, 2.0, 3.1, 600, 0.5, false),
            "l2" => Self::make(n, 4.3, 5.3, 800, 0.5, false),
            "lite0" => Self::make(n, 1.0, 1.0, 224, 0.2, true),
            "lite1" => Self::make(n, 1.0, 1.1, 240, 0.2, true),
            "lite2" => Self::make(n, 1.1, 1.2, 260, 0.3, true),
            "lite3" => Self::make(n, 1.2, 1.4, 280, 0.3, true),
            "lite4" => Self::make(n, 1.4, 1.8, 300, 0.3, true),
            // a quarter-width, shallow B0 for fast CPU runs and tests
            "tiny" => Self::make(n, 0.25, 0.34, 64, 0.1, false),
            _ => return None,
        })
    }

    /// SPEC.md's channel rounding: max(8, floor((c w + 4) / 8) * 8), plus 8 if that lost >10%.
    pub fn round_channels(&self, c: usize) -> usize {
        let scaled = c as f64 * self.width;
        let mut r = (((scaled + 4.0) / 8.0).floor() as usize * 8).max(8);
        if (r as f64) < 0.9 * scaled {
            r += 8;
        }
        r
    }

    pub fn round_repeats(&self, r: usize) -> usize {
        (self.depth * r as f64).ceil() as usize
    }

    pub fn stem_channels(&self) -> usize {
        if self.lite {
            32
        } else {
            self.round_channels(32)
        }
    }

    pub fn head_channels(&self) -> usize {
        if self.lite {
            1280
        } else {
            self.round_channels(1280)
        }
    }

    /// The concrete blocks: (kernel, stride, expand, in, out) per block.
    pub fn blocks(&self) -> Vec<(usize, usize, usize, usize, usize)> {
        let mut out = vec![];
        let last = self.stages.len() - 1;
        for (i, s) in self.stages.iter().enumerate() {
            let fixed = self.lite && (i == 0 || i == last);
            let mut inp = if fixed && i == 0 { 32 } else { self.round_channels(s.in_ch) };
            let outp = self.round_channels(s.out_ch);
            let repeats = if fixed { s.repeats } else { self.round_repeats(s.repeats) };
            for r in 0..repeats {
                out.push((s.kernel, if r == 0 { s.stride } else { 1 }, s.expand, inp, outp));
                inp = outp;
            }
        }
        out
    }

    /// Width of the pooled features ALIGN uses (the last block's channels).
    pub fn feature_dim(&self) -> usize {
        self.blocks().last().map_or(0, |b| b.4)
    }
}

/// One MBConv block.
pub struct MBConv {
    pub expand: Option<(Conv2d, BatchNorm2d)>,
    pub depthwise: DepthwiseConv2d,
    pub bn_depthwise: BatchNorm2d,
    pub se: Option<SqueezeExcite>,
    pub project: Conv2d,
    pub bn_project: BatchNorm2d,
    pub act: Activation,
    pub residual: bool,
    pub drop_path: DropPath,
}

impl MBConv {
    pub fn forward(&self, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        let mut h = x.clone();
        if let Some((conv, bn)) = &self.expand {
            h = bn.forward_with(&conv.forward(&h)?, ctx, self.act)?;
        }
        h = self.bn_depthwise.forward_with(&self.depthwise.forward(&h)?, ctx, self.act)?;
        if let Some(se) = &self.se {
            h = se.forward(&h)?;
        }
        h = self.bn_project.forward(&self.project.forward(&h)?, ctx)?;
        if self.residual {
            h = ew::add(&self.drop_path.forward(&h, ctx)?, x)?;
        }
        Ok(h)
    }
}

impl Module for MBConv {
    fn parameters(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        if let Some((conv, bn)) = &self.expand {
            conv.parameters(&join(prefix, "_expand_conv"), out);
            bn.parameters(&join(prefix, "_bn0"), out);
        }
        self.depthwise.parameters(&join(prefix, "_depthwise_conv"), out);
        self.bn_depthwise.parameters(&join(prefix, "_bn1"), out);
        if let Some(se) = &self.se {
            se.reduce.parameters(&join(prefix, "_se_reduce"), out);
            se.expand.parameters(&join(prefix, "_se_expand"), out);
        }
        self.project.parameters(&join(prefix, "_project_conv"), out);
        self.bn_project.parameters(&join(prefix, "_bn2"), out);
    }
    fn buffers(&self, prefix: &str, out: &mut Vec<(String, Buffer)>) {
        if let Some((_, bn)) = &self.expand {
            bn.buffers(&join(prefix, "_bn0"), out);
        }
        self.bn_depthwise.buffers(&join(prefix, "_bn1"), out);
        self.bn_project.buffers(&join(prefix, "_bn2"), out);
    }
}

pub struct EfficientNet {
    pub config: EfficientNetConfig,
    pub stem: Conv2d,
    pub bn_stem: BatchNorm2d,
    pub blocks: Vec<MBConv>,
    pub head: Conv2d,
    pub bn_head: BatchNorm2d,
    pub dropout: Dropout,
    pub classifier: Linear,
    pub act: Activation,
}

const BN_MOMENTUM: f32 = 0.01; // = TF's decay 0.99
const BN_EPS: f32 = 1e-3;

impl EfficientNet {
    pub fn new(config: EfficientNetConfig, rng: &mut Rng) -> EfficientNet {
        let act = if config.lite { Activation::Relu6 } else { Activation::Silu };
        let stem_c = config.stem_channels();
        let blocks_cfg = config.blocks();
        let n_blocks = blocks_cfg.len();
        let blocks = blocks_cfg
            .iter()
            .enumerate()
            .map(|(i, &(k, s, e, cin, cout))| {
                let mid = cin * e;
                MBConv {
                    expand: (e != 1).then(|| {
                        (
                            Conv2d::new(cin, mid, 1, 1, Padding::Same, false, rng),
                            BatchNorm2d::new(mid, config.bn_momentum, BN_EPS),
                        )
                    }),
                    depthwise: DepthwiseConv2d::new(mid, k, s, Padding::Same, rng),
                    bn_depthwise: BatchNorm2d::new(mid, config.bn_momentum, BN_EPS),
                    se: (!config.lite)
                        .then(|| SqueezeExcite::new(mid, ((cin as f32 * 0.25) as usize).max(1), act, rng)),
                    project: Conv2d::new(mid, cout, 1, 1, Padding::Same, false, rng),
                    bn_project: BatchNorm2d::new(cout, config.bn_momentum, BN_EPS),
                    act,
                    residual: s == 1 && cin == cout,
                    // linearly increasing rate: 0.2 * block_index / num_blocks
                    drop_path: DropPath { p: config.drop_connect * i as f32 / n_blocks as f32 },
                }
            })
            .collect();
        let feat = config.feature_dim();
        let head_c = config.head_channels();
        EfficientNet {
            stem: Conv2d::new(3, stem_c, 3, 2, Padding::Same, false, rng),
            bn_stem: BatchNorm2d::new(stem_c, config.bn_momentum, BN_EPS),
            blocks,
            head: Conv2d::new(feat, head_c, 1, 1, Padding::Same, false, rng),
            bn_head: BatchNorm2d::new(head_c, config.bn_momentum, BN_EPS),
            dropout: Dropout { p: config.dropout },
            classifier: Linear::new(head_c, config.num_classes, true, rng),
            act,
            config,
        }
    }

    /// Output of the last block: (N, H/32, W/32, C_last), from NHWC images (N, H, W, 3).
    pub fn forward_blocks(&self, images: &Var, ctx: &mut Ctx) -> Result<Var> {
        let s = images.shape();
        if s.len() != 4 || s[3] != 3 {
            return Err(TensorError::Shape {
                op: "efficientnet",
                msg: format!("images must be (N, H, W, 3), got {s:?}"),
            });
        }
        let mut x = self.bn_stem.forward_with(&self.stem.forward(images)?, ctx, self.act)?;
        for b in &self.blocks {
            x = b.forward(&x, ctx)?;
        }
        Ok(x)
    }

    /// ALIGN's image features: global average pool of the last block, no head conv. (N, C_last)
    pub fn features(&self, images: &Var, ctx: &mut Ctx) -> Result<Var> {
        cv::global_avg_pool(&self.forward_blocks(images, ctx)?)
    }

    /// ImageNet logits: head conv -> BN -> act -> pool -> dropout -> classifier. (N, classes)
    pub fn logits(&self, images: &Var, ctx: &mut Ctx) -> Result<Var> {
        let x = self.forward_blocks(images, ctx)?;
        let x = self.bn_head.forward_with(&self.head.forward(&x)?, ctx, self.act)?;
        let pooled = self.dropout.forward(&cv::global_avg_pool(&x)?, ctx)?;
        self.classifier.forward(&pooled)
    }

    /// Loads a PyTorch state dict in lukemelas' naming (as `tensor::io::torch` reads it),
    /// converting conv weights from OIHW. Every tensor the model needs must be present with
    /// the right shape; nothing changes otherwise.
    pub fn load_pytorch(&self, tensors: &[(String, Tensor)]) -> Result<LoadReport> {
        let ours: BTreeMap<String, Vec<usize>> = self
            .named_parameters()
            .into_iter()
            .map(|(n, p)| (n, p.shape()))
            .chain(self.named_buffers().into_iter().map(|(n, b)| (n, b.get().shape().to_vec())))
            .collect();
        let mut sd = BTreeMap::new();
        for (name, t) in tensors {
            let Some(want) = ours.get(name) else {
                sd.insert(name.clone(), t.clone());
                continue;
            };
            let converted = match (t.rank(), want.len()) {
                // dense conv OIHW -> HWIO
                (4, 4) => t.permute(&[2, 3, 1, 0])?.contiguous(),
                // depthwise (C, 1, KH, KW) -> (KH, KW, C)
                (4, 3) => t.reshape(&[t.shape()[0], t.shape()[2], t.shape()[3]])?.permute(&[1, 2, 0])?.contiguous(),
                // 1x1 conv with bias used as Linear (SE): (out, in, 1, 1) -> (out, in)
                (4, 2) => t.reshape(&[t.shape()[0], t.shape()[1]])?,
                _ => t.clone(),
            };
            sd.insert(name.clone(), converted);
        }
        let report = self.load_state_dict(&sd, false)?;
        if !report.missing.is_empty() {
            return Err(TensorError::Format {
                file: "state dict".into(),
                tensor: None,
                msg: format!("missing: {}", report.missing.join(", ")),
            });
        }
        Ok(report)
    }
}

impl Module for EfficientNet {
    fn parameters(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        self.stem.parameters(&join(prefix, "_conv_stem"), out);
        self.bn_stem.parameters(&join(prefix, "_bn0"), out);
        for (i, b) in self.blocks.iter().enumerate() {
            b.parameters(&join(prefix, &format!("_blocks.{i}")), out);
        }
        self.head.parameters(&join(prefix, "_conv_head"), out);
        self.bn_head.parameters(&join(prefix, "_bn1"), out);
        self.classifier.parameters(&join(prefix, "_fc"), out);
    }
    fn buffers(&self, prefix: &str, out: &mut Vec<(String, Buffer)>) {
        self.bn_stem.buffers(&join(prefix, "_bn0"), out);
        for (i, b) in self.blocks.iter().enumerate() {
            b.buffers(&join(prefix, &format!("_blocks.{i}")), out);
        }
        self.bn_head.buffers(&join(prefix, "_bn1"), out);
    }
}

/// Parameter count of a configuration without building it (classification model: head + fc).
pub fn count_parameters(cfg: &EfficientNetConfig) -> usize {
    let bn = |c: usize| 2 * c;
    let stem = cfg.stem_channels();
    let mut total = 27 * stem + bn(stem);
    for (k, _s, e, cin, cout) in cfg.blocks() {
        let mid = cin * e;
        if e != 1 {
            total += cin * mid + bn(mid);
        }
        total += k * k * mid + bn(mid);
        if !cfg.lite {
            let r = ((cin as f32 * 0.25) as usize).max(1);
            total += mid * r + r + r * mid + mid;
        }
        total += mid * cout + bn(cout);
    }
    let head = cfg.head_channels();
    total + cfg.feature_dim() * head + bn(head) + head * cfg.num_classes + cfg.num_classes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_published_figures() {
        // Classification models as published (PyTorch ports: parameters, BN statistics excluded;
        // L2 as quoted by the Noisy Student paper). The paper's table rounds these (B3 "12M").
        let published = [
            ("b0", 5.288548),
            ("b1", 7.794184),
            ("b2", 9.109994),
            ("b3", 12.233232),
            ("b4", 19.341616),
            ("b5", 30.389784),
            ("b6", 43.040704),
            ("b7", 66.347960),
            ("l2", 480.0),
            ("lite0", 4.652008),
        ];
        for (name, millions) in published {
            let cfg = EfficientNetConfig::by_name(name).unwrap();
            let n = count_parameters(&cfg) as f64 / 1e6;
            assert!((n / millions - 1.0).abs() < 0.01, "{name}: {n:.3}M vs published {millions}M");
        }
        // the built model agrees with the formula
        let cfg = EfficientNetConfig::by_name("b0").unwrap();
        let model = EfficientNet::new(cfg.clone(), &mut Rng::new(0));
        assert_eq!(model.num_parameters(), count_parameters(&cfg));
        assert_eq!(cfg.feature_dim(), 320);
        assert_eq!(EfficientNetConfig::by_name("b7").unwrap().feature_dim(), 640);
        assert_eq!(EfficientNetConfig::by_name("l2").unwrap().feature_dim(), 1376);
    }
}
