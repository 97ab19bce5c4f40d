//! EfficientNet (Tan & Le 2019), the ALIGN image tower, and its Lite variants.
//!
//! Follows the TF reference (tensorflow/tpu) as docs/paper.md summarises it: compound scaling of
//! width, depth and resolution; MBConv blocks (1x1 expand -> BN -> act -> depthwise k x k ->
//! BN -> act -> squeeze-excite -> 1x1 project -> BN, residual with drop-connect when stride 1
//! and in == out); TF "SAME" padding; batch norm with TF momentum 0.99 (PyTorch 0.01) and eps
//! 1e-3. Lite variants use ReLU6, no squeeze-excite, and keep the stem, the head and the first
//! and last stages unscaled. ALIGN uses the globally pooled output of the last block (no 1x1
//! head conv); the head and classifier are there for ImageNet classification.
//!
//! Parameter names follow lukemelas' EfficientNet-PyTorch (`_blocks.3._depthwise_conv.weight`),
//! the naming of the published Lite weights; [`EfficientNet::load_pytorch`] converts PyTorch's
//! OIHW conv weights to our NHWC layouts once at load time, and also takes torchvision's naming
//! (`features.2.1.block.1.0.weight`, see [`torchvision_to_ours`]). torchvision's models differ in
//! two numeric details that a config must match: symmetric padding ((k-1)/2 on each side, so a
//! stride-2 layer sees other pixels than under TF SAME) and, for B0-B4, BN eps 1e-5
//! ([`EfficientNetConfig::torchvision`]).

use std::collections::BTreeMap;

use autograd::ops::conv as cv;
use autograd::ops::elementwise as ew;
use autograd::Var;
use kernels::Padding;
use nn::layers::{Activation, BatchNorm2d, Conv2d, DepthwiseConv2d, DropPath, Dropout, Linear, SqueezeExcite};
use nn::{Ctx, LoadReport, Module};
use tensor::{Result, Rng, Tensor, TensorError};

/// How convolutions pad: TF's SAME (the TF reference, lukemelas' port, the Lite weights),
/// torchvision's symmetric (k-1)/2 on each side, or Hugging Face's EfficientNet / AlignVision.
/// They agree at stride 1 and differ at stride 2: on even sizes SAME pads 0 before and 1 after
/// for k = 3, symmetric 1 and 1; Hugging Face pads k/2 - 1 before and k/2 after whatever the
/// size, which is SAME on even sizes but not on odd ones (ALIGN's 289: SAME gives 145 rows
/// after the stem, Hugging Face 144).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PaddingStyle {
    TfSame,
    Symmetric,
    HuggingFace,
}

impl PaddingStyle {
    /// The padding of a k x k convolution of stride `stride` (k odd).
    pub fn for_conv(self, k: usize, stride: usize) -> Padding {
        let symmetric = |p: usize| Padding::Explicit { top: p, bottom: p, left: p, right: p };
        match self {
            PaddingStyle::TfSame => Padding::Same,
            PaddingStyle::Symmetric => symmetric((k - 1) / 2),
            PaddingStyle::HuggingFace if stride == 1 => symmetric(k / 2),
            PaddingStyle::HuggingFace => {
                let (before, after) = ((k / 2).saturating_sub(1), k / 2);
                Padding::Explicit { top: before, bottom: after, left: before, right: after }
            }
        }
    }
}

/// One stage of the block table (before scaling).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StageArgs {
    pub repeats: usize,
    pub kernel: usize,
    pub stride: usize,
    pub expand: usize,
    pub in_ch: usize,
    pub out_ch: usize,
}

/// The B0 block table of docs/paper.md.
pub const B0_STAGES: [StageArgs; 7] = [
    StageArgs { repeats: 1, kernel: 3, stride: 1, expand: 1, in_ch: 32, out_ch: 16 },
    StageArgs { repeats: 2, kernel: 3, stride: 2, expand: 6, in_ch: 16, out_ch: 24 },
    StageArgs { repeats: 2, kernel: 5, stride: 2, expand: 6, in_ch: 24, out_ch: 40 },
    StageArgs { repeats: 3, kernel: 3, stride: 2, expand: 6, in_ch: 40, out_ch: 80 },
    StageArgs { repeats: 3, kernel: 5, stride: 1, expand: 6, in_ch: 80, out_ch: 112 },
    StageArgs { repeats: 4, kernel: 5, stride: 2, expand: 6, in_ch: 112, out_ch: 192 },
    StageArgs { repeats: 1, kernel: 3, stride: 1, expand: 6, in_ch: 192, out_ch: 320 },
];

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Batch-norm eps: TF's 1e-3, except torchvision's B0-B4 (PyTorch's default 1e-5).
    pub bn_eps: f32,
    pub padding: PaddingStyle,
    /// Whether the first block of a stage takes a skip connection when its stride is 1 and its
    /// input and output widths agree (lukemelas, torchvision: yes; Hugging Face: only the
    /// stage's later blocks do). Real widths never meet the condition; narrow ones can.
    pub first_block_residual: bool,
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
            bn_eps: BN_EPS,
            padding: PaddingStyle::TfSame,
            first_block_residual: true,
        }
    }

    /// The same architecture as torchvision builds it (`torchvision.models.efficientnet_b0`...):
    /// symmetric padding, and for B0-B4 PyTorch's default batch norm (eps 1e-5, momentum 0.1);
    /// B5-B7 keep eps 1e-3, momentum 0.01 as torchvision sets them. Lite has no torchvision model.
    pub fn torchvision(mut self) -> Self {
        self.padding = PaddingStyle::Symmetric;
        if matches!(self.name.as_str(), "b0" | "b1" | "b2" | "b3" | "b4" | "tiny") {
            self.bn_eps = 1e-5;
            self.bn_momentum = 0.1;
        }
        self
    }

    /// Blocks per stage after depth scaling (Lite keeps its first and last stages).
    pub fn stage_repeats(&self) -> Vec<usize> {
        let last = self.stages.len() - 1;
        self.stages
            .iter()
            .enumerate()
            .map(|(i, s)| if self.lite && (i == 0 || i == last) { s.repeats } else { self.round_repeats(s.repeats) })
            .collect()
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

    /// docs/paper.md's channel rounding: max(8, floor((c w + 4) / 8) * 8), plus 8 if that lost >10%.
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
        for (i, (s, repeats)) in self.stages.iter().zip(self.stage_repeats()).enumerate() {
            let mut inp = if self.lite && i == 0 { 32 } else { self.round_channels(s.in_ch) };
            let outp = self.round_channels(s.out_ch);
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

/// One MBConv block. Checkpoint names are lukemelas' (`_expand_conv`, `_bn0`, `_depthwise_conv`,
/// `_bn1`, `_se_reduce`, `_se_expand`, `_project_conv`, `_bn2`), flat under the block.
#[derive(Module)]
pub struct MBConv {
    #[module(flatten)]
    pub expand: Option<ExpandConv>,
    #[module(name = "_depthwise_conv")]
    pub depthwise: DepthwiseConv2d,
    #[module(name = "_bn1")]
    pub bn_depthwise: BatchNorm2d,
    /// Names its layers `_se_reduce` / `_se_expand` itself.
    #[module(flatten)]
    pub se: Option<SqueezeExcite>,
    #[module(name = "_project_conv")]
    pub project: Conv2d,
    #[module(name = "_bn2")]
    pub bn_project: BatchNorm2d,
    #[module(skip)]
    pub act: Activation,
    #[module(skip)]
    pub residual: bool,
    #[module(skip)]
    pub drop_path: DropPath,
}

/// The 1x1 expansion of an MBConv block and its batch norm (absent at expansion ratio 1).
#[derive(Module)]
pub struct ExpandConv {
    #[module(name = "_expand_conv")]
    pub conv: Conv2d,
    #[module(name = "_bn0")]
    pub bn: BatchNorm2d,
}

impl MBConv {
    pub fn forward(&self, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        let mut h = x.clone();
        if let Some(e) = &self.expand {
            h = e.bn.forward_with(&e.conv.forward(&h, ctx)?, ctx, self.act)?;
        }
        h = self.bn_depthwise.forward_with(&self.depthwise.forward(&h, ctx)?, ctx, self.act)?;
        if let Some(se) = &self.se {
            h = se.forward(&h, ctx)?;
        }
        h = self.bn_project.forward(&self.project.forward(&h, ctx)?, ctx)?;
        if self.residual {
            h = ew::add(&self.drop_path.forward(&h, ctx)?, x)?;
        }
        Ok(h)
    }
}

#[derive(Module)]
pub struct EfficientNet {
    #[module(skip)]
    pub config: EfficientNetConfig,
    #[module(name = "_conv_stem")]
    pub stem: Conv2d,
    #[module(name = "_bn0")]
    pub bn_stem: BatchNorm2d,
    #[module(name = "_blocks")]
    pub blocks: Vec<MBConv>,
    /// The ImageNet head; absent when the configuration asks for 0 classes (ALIGN's image
    /// tower uses the pooled last block only).
    #[module(flatten)]
    pub head: Option<ClassifierHead>,
    #[module(skip)]
    pub act: Activation,
}

/// 1x1 head conv -> BN -> activation -> pool -> dropout -> linear classifier.
#[derive(Module)]
pub struct ClassifierHead {
    #[module(name = "_conv_head")]
    pub conv: Conv2d,
    #[module(name = "_bn1")]
    pub bn: BatchNorm2d,
    #[module(skip)]
    pub dropout: Dropout,
    #[module(name = "_fc")]
    pub classifier: Linear,
}

const BN_MOMENTUM: f32 = 0.01; // = TF's decay 0.99
const BN_EPS: f32 = 1e-3;

impl EfficientNet {
    pub fn new(config: EfficientNetConfig, rng: &mut Rng) -> EfficientNet {
        let act = if config.lite { Activation::Relu6 } else { Activation::Silu };
        let (momentum, eps) = (config.bn_momentum, config.bn_eps);
        let pad = |k: usize, stride: usize| config.padding.for_conv(k, stride);
        let stem_c = config.stem_channels();
        let blocks_cfg = config.blocks();
        let n_blocks = blocks_cfg.len();
        let first_of_stage: Vec<bool> = config.stage_repeats().iter().flat_map(|&r| (0..r).map(|j| j == 0)).collect();
        let blocks = blocks_cfg
            .iter()
            .enumerate()
            .map(|(i, &(k, s, e, cin, cout))| {
                let mid = cin * e;
                MBConv {
                    expand: (e != 1).then(|| ExpandConv {
                        conv: Conv2d::new(cin, mid, 1, 1, pad(1, 1), false, rng),
                        bn: BatchNorm2d::new(mid, momentum, eps),
                    }),
                    depthwise: DepthwiseConv2d::new(mid, k, s, pad(k, s), rng),
                    bn_depthwise: BatchNorm2d::new(mid, momentum, eps),
                    se: (!config.lite)
                        .then(|| SqueezeExcite::new(mid, ((cin as f32 * 0.25) as usize).max(1), act, rng)),
                    project: Conv2d::new(mid, cout, 1, 1, pad(1, 1), false, rng),
                    bn_project: BatchNorm2d::new(cout, momentum, eps),
                    act,
                    residual: s == 1 && cin == cout && (config.first_block_residual || !first_of_stage[i]),
                    // linearly increasing rate: 0.2 * block_index / num_blocks
                    drop_path: DropPath { p: config.drop_connect * i as f32 / n_blocks as f32 },
                }
            })
            .collect();
        let feat = config.feature_dim();
        let head_c = config.head_channels();
        let stem = Conv2d::new(3, stem_c, 3, 2, pad(3, 2), false, rng);
        let head = (config.num_classes > 0).then(|| ClassifierHead {
            conv: Conv2d::new(feat, head_c, 1, 1, pad(1, 1), false, rng),
            bn: BatchNorm2d::new(head_c, momentum, eps),
            dropout: Dropout { p: config.dropout },
            classifier: Linear::new(head_c, config.num_classes, true, rng),
        });
        EfficientNet { stem, bn_stem: BatchNorm2d::new(stem_c, momentum, eps), blocks, head, act, config }
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
        let mut x = self.bn_stem.forward_with(&self.stem.forward(images, ctx)?, ctx, self.act)?;
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
        let head = self.head.as_ref().ok_or_else(|| TensorError::Shape {
            op: "efficientnet",
            msg: "built without a classifier head (num_classes 0): use features()".into(),
        })?;
        let x = self.forward_blocks(images, ctx)?;
        let x = head.bn.forward_with(&head.conv.forward(&x, ctx)?, ctx, self.act)?;
        let pooled = head.dropout.forward(&cv::global_avg_pool(&x)?, ctx)?;
        head.classifier.forward(&pooled, ctx)
    }

    /// Loads a PyTorch state dict in lukemelas' naming or torchvision's (as `tensor::io::torch`
    /// reads it), converting conv weights from OIHW. Every tensor the model needs must be
    /// present with the right shape; nothing changes otherwise. torchvision weights also need
    /// the model built from [`EfficientNetConfig::torchvision`] (padding, eps).
    pub fn load_pytorch(&self, tensors: &[(String, Tensor)]) -> Result<LoadReport> {
        let renamed: Vec<(String, Tensor)>;
        let tensors = if is_torchvision_naming(tensors.iter().map(|(n, _)| n.as_str())) {
            renamed = tensors
                .iter()
                .map(|(n, t)| (torchvision_to_ours(&self.config, n).unwrap_or_else(|| n.clone()), t.clone()))
                .collect();
            &renamed[..]
        } else {
            tensors
        };
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

/// Whether a state dict uses torchvision's names (`features.0.0.weight`, `classifier.1.weight`).
pub fn is_torchvision_naming<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|n| n.starts_with("features.0.0.") || n.starts_with("classifier.1."))
}

/// Our name for one of torchvision's EfficientNet parameters or buffers, or None for a name
/// that is not part of the model. torchvision nests the model as
///
/// ```text
/// features.0.{0 conv, 1 bn}                                  stem       -> _conv_stem, _bn0
/// features.S.J.block.K.{0 conv, 1 bn} | .block.K.{fc1, fc2}  stage S (1-based), block J
///     K runs over [expand (if expand ratio != 1), depthwise, squeeze-excite, project]
///                                                            -> _blocks.I._expand_conv/_bn0,
///                                       _depthwise_conv/_bn1, _se_reduce/_se_expand, _project_conv/_bn2
/// features.{stages+1}.{0 conv, 1 bn}                         head       -> _conv_head, _bn1
/// classifier.1                                               (0 is dropout) -> _fc
/// ```
/// where I counts blocks across stages, so it needs the config's repeats per stage.
pub fn torchvision_to_ours(cfg: &EfficientNetConfig, name: &str) -> Option<String> {
    let conv_bn = |rest: &str, conv: &str, bn: &str| -> Option<String> {
        let (idx, leaf) = rest.split_once('.')?;
        match idx {
            "0" => Some(format!("{conv}.{leaf}")),
            "1" => Some(format!("{bn}.{leaf}")),
            _ => None,
        }
    };
    if let Some(leaf) = name.strip_prefix("classifier.1.") {
        return Some(format!("_fc.{leaf}"));
    }
    let rest = name.strip_prefix("features.")?;
    let (stage, rest) = rest.split_once('.')?;
    let stage: usize = stage.parse().ok()?;
    let repeats = cfg.stage_repeats();
    if stage == 0 {
        return conv_bn(rest, "_conv_stem", "_bn0");
    }
    if stage == repeats.len() + 1 {
        return conv_bn(rest, "_conv_head", "_bn1");
    }
    let block_in_stage = stage - 1;
    let (j, rest) = rest.split_once('.')?;
    let j: usize = j.parse().ok()?;
    if block_in_stage >= repeats.len() || j >= repeats[block_in_stage] {
        return None;
    }
    let flat = repeats[..block_in_stage].iter().sum::<usize>() + j;
    let rest = rest.strip_prefix("block.")?;
    let (k, rest) = rest.split_once('.')?;
    let k: usize = k.parse().ok()?;
    let has_expand = cfg.stages[block_in_stage].expand != 1;
    let mut parts: Vec<&str> = vec![];
    if has_expand {
        parts.push("expand");
    }
    parts.push("depthwise");
    if !cfg.lite {
        parts.push("se");
    }
    parts.push("project");
    let prefix = format!("_blocks.{flat}");
    match *parts.get(k)? {
        "expand" => conv_bn(rest, &format!("{prefix}._expand_conv"), &format!("{prefix}._bn0")),
        "depthwise" => conv_bn(rest, &format!("{prefix}._depthwise_conv"), &format!("{prefix}._bn1")),
        "project" => conv_bn(rest, &format!("{prefix}._project_conv"), &format!("{prefix}._bn2")),
        _ => {
            let (fc, leaf) = rest.split_once('.')?;
            let ours = match fc {
                "fc1" => "_se_reduce",
                "fc2" => "_se_expand",
                _ => return None,
            };
            Some(format!("{prefix}.{ours}.{leaf}"))
        }
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
