//! Hugging Face `AlignModel` directories: the released ALIGN (`kakaobrain/align-base`,
//! EfficientNet-B7 + BERT-base trained on COYO-700M) as transformers stores it, read into our
//! dual encoder.
//!
//! A directory holds `config.json` (`text_config`, `vision_config`, `projection_dim`),
//! `model.safetensors` or `pytorch_model.bin`, the tokenizer's `vocab.txt` and
//! `tokenizer_config.json`, and the image processor's settings in `preprocessor_config.json`
//! (or, as newer transformers write it, under `image_processor` in `processor_config.json`).
//! What differs from our own towers, and is reproduced here:
//! - AlignVision is EfficientNet under other names (`encoder.blocks.I.expansion.expand_conv`
//!   for `_blocks.I._expand_conv`, ...), with no head conv (ALIGN pools the last block), batch
//!   norm eps 1e-3, and Hugging Face's padding (k/2 - 1 before and k/2 after at stride 2,
//!   [`PaddingStyle::HuggingFace`]);
//! - the text embedding is `text_projection` of BERT's [CLS] state (the pooler is unused);
//! - `temperature` is sigma itself (logits = cosine / sigma); we keep t = ln(sigma);
//! - images are resized to a fixed height x width with Pillow's filter (bicubic for
//!   align-base), not cropped, and rescaled to x / 127.5 - 1.

use std::path::{Path, PathBuf};

use autograd::Var;
use image::RgbImage;
use nn::{Ctx, Module};
use serde_json::Value;
use tensor::{Rng, Tensor};
use tokenizer::{BertOptions, WordPiece};

use crate::bert::{BertConfig, TextTower as BertTextTower};
use crate::efficientnet::{EfficientNet, EfficientNetConfig, PaddingStyle, StageArgs};
use crate::error::{io_error, AlignError, Result};
use crate::model::{token_batch, DualEncoder};
use crate::resample::{resize, Filter};

/// An AlignModel ready to embed: the dual encoder, its tokenizer and its image preprocessing.
pub struct HfAlign {
    pub model: DualEncoder,
    pub tokenizer: WordPiece,
    pub images: ImageProcessor,
    /// Captions are cut to this many tokens ([CLS] and [SEP] included); AlignProcessor's 64.
    pub max_tokens: usize,
    pub dir: PathBuf,
}

/// Hugging Face's `EfficientNetImageProcessor`, in its order: resize, centre crop, rescale
/// (with offset: x * factor - 1), normalise.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessor {
    /// (width, height), or None to keep the image's size.
    pub resize: Option<(u32, u32)>,
    pub filter: Filter,
    pub center_crop: Option<(u32, u32)>,
    /// x * factor, then minus 1 when `offset`.
    pub rescale: Option<f32>,
    pub offset: bool,
    /// (mean, std) per channel.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// Reads a JSON file, naming it in errors.
fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    serde_json::from_str(&text).map_err(|e| AlignError::data(path, format!("not JSON: {e}")))
}

fn usize_list(v: &Value, key: &str, default: &[usize], file: &Path) -> Result<Vec<usize>> {
    match v.get(key) {
        None => Ok(default.to_vec()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| AlignError::data(file, format!("{key}: not a list of counts")))
            })
            .collect(),
        Some(_) => Err(AlignError::data(file, format!("{key}: not a list"))),
    }
}

pub(crate) fn number(v: &Value, key: &str, default: f64) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(default)
}

pub(crate) fn count(v: &Value, key: &str, default: usize) -> usize {
    v.get(key).and_then(Value::as_u64).map_or(default, |x| x as usize)
}

/// The largest side an image processor may resize or crop to.
pub const MAX_PROCESSOR_SIDE: u64 = 4096;

/// `(width, height)` from `{"height": h, "width": w}` or a bare number (square); sides must be
/// 1 ..= [`MAX_PROCESSOR_SIDE`].
fn size_of(v: Option<&Value>, key: &str, file: &Path) -> Result<Option<(u32, u32)>> {
    let Some(v) = v else { return Ok(None) };
    let (w, h) = match (v.get("height").and_then(Value::as_u64), v.get("width").and_then(Value::as_u64)) {
        (Some(h), Some(w)) => (w, h),
        _ => match v.as_u64() {
            Some(s) => (s, s),
            None => return Ok(None),
        },
    };
    if !(1..=MAX_PROCESSOR_SIDE).contains(&w) || !(1..=MAX_PROCESSOR_SIDE).contains(&h) {
        return Err(AlignError::data(
            file,
            format!("{key} {w} x {h}: each side must be 1 to {MAX_PROCESSOR_SIDE} (image processor size limit)"),
        ));
    }
    Ok(Some((w as u32, h as u32)))
}

impl ImageProcessor {
    /// From the settings of a Hugging Face image processor (missing keys take
    /// `EfficientNetImageProcessor`'s defaults).
    pub fn from_json(v: &Value, file: &Path) -> Result<ImageProcessor> {
        let flag = |k: &str, default: bool| v.get(k).and_then(Value::as_bool).unwrap_or(default);
        // transformers 5's EfficientNetImageProcessor defaults to bicubic
        let code = v.get("resample").and_then(Value::as_i64).unwrap_or(3);
        let filter = Filter::from_pil_code(code).ok_or_else(|| {
            AlignError::data(file, format!("resample {code}: only PIL's bilinear (2) and bicubic (3) are supported"))
        })?;
        let triple = |k: &str, default: [f32; 3]| -> [f32; 3] {
            v.get(k)
                .and_then(Value::as_array)
                .filter(|a| a.len() == 3)
                .map(|a| [0, 1, 2].map(|i| a[i].as_f64().unwrap_or(default[i] as f64) as f32))
                .unwrap_or(default)
        };
        Ok(ImageProcessor {
            resize: if flag("do_resize", true) {
                size_of(v.get("size"), "size", file)?.or(Some((346, 346)))
            } else {
                None
            },
            filter,
            center_crop: if flag("do_center_crop", false) {
                size_of(v.get("crop_size"), "crop_size", file)?
            } else {
                None
            },
            rescale: flag("do_rescale", true).then(|| number(v, "rescale_factor", 1.0 / 255.0) as f32),
            offset: flag("rescale_offset", false),
            normalize: flag("do_normalize", true).then(|| {
                (triple("image_mean", [0.485, 0.456, 0.406]), triple("image_std", [0.47853944, 0.4732864, 0.47434163]))
            }),
        })
    }

    /// One image -> (H, W, 3) f32, as the processor's `pixel_values` (channels last).
    pub fn preprocess(&self, img: &RgbImage) -> Result<Tensor> {
        if img.width() == 0 || img.height() == 0 {
            return Err(AlignError::config("image", "empty image"));
        }
        let mut img = match self.resize {
            Some((w, h)) => resize(img, w, h, self.filter),
            None => img.clone(),
        };
        if let Some((cw, ch)) = self.center_crop {
            let (w, h) = img.dimensions();
            let (cw, ch) = (cw.min(w), ch.min(h));
            // Hugging Face's center_crop: top = (h - ch) // 2
            img = image::imageops::crop_imm(&img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
        }
        let (w, h) = img.dimensions();
        let mut data = Vec::with_capacity((w * h * 3) as usize);
        for p in img.pixels() {
            for c in 0..3 {
                let mut x = p[c] as f32;
                if let Some(factor) = self.rescale {
                    x = (p[c] as f64 * factor as f64) as f32;
                    if self.offset {
                        x -= 1.0;
                    }
                }
                if let Some((mean, std)) = self.normalize {
                    x = (x - mean[c]) / std[c];
                }
                data.push(x);
            }
        }
        Ok(Tensor::from_vec(data, &[h as usize, w as usize, 3])?)
    }
}

impl std::fmt::Display for ImageProcessor {
    /// One line in the processor's order, e.g. "resize to 289x289 (bicubic), x * 0.00784 - 1".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut steps = vec![];
        if let Some((w, h)) = self.resize {
            steps.push(format!("resize to {w}x{h} ({:?})", self.filter).to_lowercase());
        }
        if let Some((w, h)) = self.center_crop {
            steps.push(format!("centre crop {w}x{h}"));
        }
        if let Some(factor) = self.rescale {
            steps.push(format!("x * {factor:.6}{}", if self.offset { " - 1" } else { "" }));
        }
        if let Some((mean, std)) = self.normalize {
            steps.push(format!("(x - {mean:?}) / {std:?}"));
        }
        write!(f, "{}", if steps.is_empty() { "none".into() } else { steps.join(", ") })
    }
}

/// Our EfficientNet configuration for an AlignVision `vision_config` (defaults: align-base's B7).
pub fn vision_config(v: &Value, file: &Path) -> Result<EfficientNetConfig> {
    let list = |k: &str, d: &[usize]| usize_list(v, k, d, file);
    let kernels = list("kernel_sizes", &[3, 3, 5, 3, 5, 5, 3])?;
    let strides = list("strides", &[1, 2, 2, 2, 1, 2, 1])?;
    let expands = list("expand_ratios", &[1, 6, 6, 6, 6, 6, 6])?;
    let ins = list("in_channels", &[32, 16, 24, 40, 80, 112, 192])?;
    let outs = list("out_channels", &[16, 24, 40, 80, 112, 192, 320])?;
    let repeats = list("num_block_repeats", &[1, 2, 2, 3, 3, 4, 1])?;
    let n = kernels.len();
    if [strides.len(), expands.len(), ins.len(), outs.len(), repeats.len()].iter().any(|&l| l != n) {
        return Err(AlignError::data(file, "vision_config: the per-stage lists differ in length"));
    }
    let unsupported = |what: String| Err(AlignError::data(file, format!("vision_config: {what} is not supported")));
    if count(v, "depth_divisor", 8) != 8 {
        return unsupported(format!("depth_divisor {}", count(v, "depth_divisor", 8)));
    }
    if (number(v, "squeeze_expansion_ratio", 0.25) - 0.25).abs() > 1e-9 {
        return unsupported("a squeeze ratio other than 0.25".into());
    }
    if !matches!(v.get("hidden_act").and_then(Value::as_str).unwrap_or("swish"), "swish" | "silu") {
        return unsupported("an activation other than swish".into());
    }
    if !usize_list(v, "depthwise_padding", &[], file)?.is_empty() {
        return unsupported("depthwise_padding (blocks with symmetric stride-2 padding)".into());
    }
    if v.get("pooling_type").and_then(Value::as_str).unwrap_or("mean") != "mean" {
        return unsupported("max pooling".into());
    }
    let stages = (0..n)
        .map(|i| StageArgs {
            repeats: repeats[i],
            kernel: kernels[i],
            stride: strides[i],
            expand: expands[i],
            in_ch: ins[i],
            out_ch: outs[i],
        })
        .collect();
    Ok(EfficientNetConfig {
        name: "align-vision".into(),
        width: number(v, "width_coefficient", 2.0),
        depth: number(v, "depth_coefficient", 3.1),
        resolution: count(v, "image_size", 600),
        dropout: 0.0,
        drop_connect: number(v, "drop_connect_rate", 0.2) as f32,
        lite: false,
        num_classes: 0,
        stages,
        // transformers passes batch_norm_momentum = 0.99 to PyTorch, where it would weigh each
        // new batch at 0.99; it is TF's decay, which is 0.01 in PyTorch's convention
        bn_momentum: (1.0 - number(v, "batch_norm_momentum", 0.99)) as f32,
        bn_eps: number(v, "batch_norm_eps", 1e-3) as f32,
        padding: PaddingStyle::HuggingFace,
        first_block_residual: false,
    })
}

/// Our BERT configuration for an AlignText `text_config` (defaults: BERT-base).
pub fn text_config(v: &Value, file: &Path) -> Result<BertConfig> {
    BertConfig::from_hf(v).map_err(|msg| AlignError::data(file, format!("text_config: {msg}")))
}

/// Our name for an AlignVision parameter or buffer (lukemelas' EfficientNet names), or None.
pub fn vision_name(hf: &str) -> Option<String> {
    let rest = hf.strip_prefix("vision_model.")?;
    if let Some(leaf) = rest.strip_prefix("embeddings.convolution.") {
        return Some(format!("_conv_stem.{leaf}"));
    }
    if let Some(leaf) = rest.strip_prefix("embeddings.batchnorm.") {
        return Some(format!("_bn0.{leaf}"));
    }
    let rest = rest.strip_prefix("encoder.blocks.")?;
    let (block, rest) = rest.split_once('.')?;
    let block: usize = block.parse().ok()?;
    const PARTS: [(&str, &str); 8] = [
        ("expansion.expand_conv.", "_expand_conv"),
        ("expansion.expand_bn.", "_bn0"),
        ("depthwise_conv.depthwise_conv.", "_depthwise_conv"),
        ("depthwise_conv.depthwise_norm.", "_bn1"),
        ("squeeze_excite.reduce.", "_se_reduce"),
        ("squeeze_excite.expand.", "_se_expand"),
        ("projection.project_conv.", "_project_conv"),
        ("projection.project_bn.", "_bn2"),
    ];
    PARTS
        .iter()
        .find_map(|(theirs, ours)| rest.strip_prefix(theirs).map(|leaf| format!("_blocks.{block}.{ours}.{leaf}")))
}

/// Our name (inside the text tower) for an AlignText parameter, or None for what the text
/// embedding does not use (the pooler, `position_ids`).
pub fn text_name(hf: &str) -> Option<String> {
    if let Some(rest) = hf.strip_prefix("text_model.") {
        if rest.starts_with("pooler.") || rest.ends_with("position_ids") {
            return None;
        }
        return Some(format!("bert.{rest}"));
    }
    hf.strip_prefix("text_projection.").map(|leaf| format!("text_projection.{leaf}"))
}

/// Every tensor of the directory's weights, as f32.
pub fn read_weights(dir: &Path) -> Result<(PathBuf, Vec<(String, Tensor)>)> {
    let st_path = dir.join("model.safetensors");
    if st_path.exists() {
        let st = tensor::io::safetensors::SafeTensors::open(&st_path)?;
        let tensors = st.names().map(|n| Ok((n.to_string(), st.tensor(n)?))).collect::<Result<Vec<_>>>()?;
        return Ok((st_path, tensors));
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.exists() {
        return Ok((bin.clone(), tensor::io::torch::load_state_dict(&bin)?));
    }
    Err(AlignError::data(dir, "no model.safetensors or pytorch_model.bin"))
}

impl HfAlign {
    /// Opens a transformers AlignModel directory.
    pub fn open(dir: &Path) -> Result<HfAlign> {
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        let empty = Value::Object(Default::default());
        let vision = vision_config(config.get("vision_config").unwrap_or(&empty), &config_path)?;
        let text = text_config(config.get("text_config").unwrap_or(&empty), &config_path)?;
        let projection_dim = count(&config, "projection_dim", 640);
        if projection_dim != vision.feature_dim() {
            return Err(AlignError::data(
                &config_path,
                format!(
                    "projection_dim {projection_dim} differs from the image features' width {}",
                    vision.feature_dim()
                ),
            ));
        }
        let (weights_path, tensors) = read_weights(dir)?;
        let bad = |msg: String| AlignError::data(&weights_path, msg);
        let mut rng = Rng::new(0);

        // image tower: renamed to lukemelas' names, loaded (and OIHW converted) as EfficientNet
        let image = EfficientNet::new(vision, &mut rng);
        let renamed: Vec<(String, Tensor)> =
            tensors.iter().filter_map(|(n, t)| Some((vision_name(n)?, t.clone()))).collect();
        image.load_pytorch(&renamed).map_err(|e| bad(format!("vision model: {e}")))?;

        // text tower: BERT + projection
        let text_tower = BertTextTower::new(text.clone(), projection_dim, &mut rng);
        let sd = tensors.iter().filter_map(|(n, t)| Some((text_name(n)?, t.clone()))).collect();
        let report = text_tower.load_state_dict(&sd, false)?;
        if !report.missing.is_empty() {
            return Err(bad(format!("text model lacks: {}", report.missing.join(", "))));
        }
        let sigma = tensors
            .iter()
            .find(|(n, _)| n == "temperature")
            .map(|(_, t)| t.item())
            .transpose()?
            .unwrap_or_else(|| number(&config, "temperature_init_value", 1.0) as f32);
        if !(sigma > 0.0 && sigma.is_finite()) {
            return Err(bad(format!("temperature {sigma} is not positive")));
        }
        let model = DualEncoder {
            image: Box::new(image),
            text: Box::new(text_tower),
            log_temperature: Var::parameter(Tensor::scalar(sigma.ln())),
        };

        // tokenizer and image processor
        let tok_config = dir.join("tokenizer_config.json");
        let lower = if tok_config.exists() {
            read_json(&tok_config)?.get("do_lower_case").and_then(Value::as_bool).unwrap_or(true)
        } else {
            true
        };
        let vocab = dir.join("vocab.txt");
        let tokenizer = WordPiece::from_vocab_file(&vocab, BertOptions { do_lower_case: lower, ..Default::default() })
            .map_err(|e| AlignError::data(&vocab, e.to_string()))?;
        if tokenizer.vocab_size() > text.vocab_size {
            return Err(AlignError::data(
                &vocab,
                format!("{} tokens for an embedding table of {}", tokenizer.vocab_size(), text.vocab_size),
            ));
        }
        let (processor_path, processor) = {
            let old = dir.join("preprocessor_config.json");
            let new = dir.join("processor_config.json");
            if old.exists() {
                let v = read_json(&old)?;
                (old, v)
            } else if new.exists() {
                let v = read_json(&new)?;
                let inner = v.get("image_processor").cloned().unwrap_or(v);
                (new, inner)
            } else {
                return Err(AlignError::data(dir, "no preprocessor_config.json or processor_config.json"));
            }
        };
        let images = ImageProcessor::from_json(&processor, &processor_path)?;
        Ok(HfAlign {
            model,
            tokenizer,
            images,
            max_tokens: 64.min(text.max_position_embeddings),
            dir: dir.to_path_buf(),
        })
    }

    /// L2-normalised image embeddings, one row per image: (N, D) flattened.
    pub fn embed_images(&self, images: &[RgbImage]) -> Result<Vec<f32>> {
        let tensors = images.iter().map(|img| self.images.preprocess(img)).collect::<Result<Vec<_>>>()?;
        if tensors.is_empty() {
            return Ok(vec![]);
        }
        let embed = |x: Tensor| -> Result<Vec<f32>> {
            Ok(autograd::no_grad(|| self.model.embed_images(&x, &mut Ctx::eval()))?.value().to_vec())
        };
        let shape = tensors[0].shape().to_vec();
        if tensors.iter().all(|t| t.shape() == shape.as_slice()) {
            // one batch: (N, H, W, 3)
            let data: Vec<f32> = tensors.iter().flat_map(|t| t.to_vec()).collect();
            return embed(Tensor::from_vec(data, &[tensors.len(), shape[0], shape[1], 3])?);
        }
        // a processor that keeps each image's size: one image at a time
        let mut out = Vec::new();
        for t in &tensors {
            out.extend(embed(t.unsqueeze(0)?)?);
        }
        Ok(out)
    }

    /// L2-normalised text embeddings, one row per text: (N, D) flattened.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<f32>> {
        if texts.is_empty() {
            return Ok(vec![]);
        }
        let tokens = token_batch(&self.tokenizer, texts, self.max_tokens)?;
        let e = autograd::no_grad(|| self.model.embed_texts(&tokens, &mut Ctx::eval()))?;
        Ok(e.value().to_vec())
    }

    /// sigma: logits are cosine similarities divided by it.
    pub fn temperature(&self) -> f32 {
        self.model.temperature()
    }
}
