//! The two towers of a dual encoder, behind traits, and the registry that builds them by name.
//!
//! An image tower maps a batch of NHWC images to one feature vector per image; a text tower
//! maps a token batch to one vector per caption, already projected to the image tower's width
//! (the paper: BERT's [CLS] state through one linear layer). The dual encoder, the trainer,
//! evaluation and the command line see only these traits, so a new tower is one file that
//! implements one of them plus one line in [`IMAGE_TOWERS`] or [`TEXT_TOWERS`].

use autograd::Var;
use nn::{Ctx, Module};
use tensor::{Result, Rng};

use crate::bert::{BertConfig, TextTower as BertTextTower, TokenBatch};
use crate::efficientnet::{EfficientNet, EfficientNetConfig};
use crate::error::AlignError;

/// Images (N, H, W, 3) in [-1, 1] -> features (N, feature_dim), not normalised.
pub trait ImageTower: Module + Send + Sync {
    fn features(&self, images: &Var, ctx: &mut Ctx) -> Result<Var>;
    /// Width of the features, which is the width of the shared embedding space.
    fn feature_dim(&self) -> usize;
    /// Loads pretrained weights from `path` (a state dict file), or says why it cannot.
    fn load_pretrained(&self, path: &std::path::Path) -> Result<nn::LoadReport> {
        Err(tensor::TensorError::Format {
            file: path.display().to_string(),
            tensor: None,
            msg: "this image tower has no pretrained-weight loader".into(),
        })
    }
}

/// Token batch -> embeddings (batch, embed_dim), not normalised.
pub trait TextTower: Module + Send + Sync {
    fn embed(&self, tokens: &TokenBatch, ctx: &mut Ctx) -> Result<Var>;
    /// Loads a pretrained encoder from a model directory (the projection stays as built).
    fn load_pretrained(&self, dir: &std::path::Path) -> Result<nn::LoadReport> {
        Err(tensor::TensorError::Format {
            file: dir.display().to_string(),
            tensor: None,
            msg: "this text tower has no pretrained-weight loader".into(),
        })
    }
}

/// What a tower builder may read from the run's configuration.
pub struct TowerOptions<'a> {
    /// The architecture name given on the command line (`b0`, `vit-tiny`, `mini`, ...).
    pub arch: &'a str,
    /// Square image side in pixels (image towers).
    pub resolution: usize,
    /// Longest token sequence (text towers).
    pub max_tokens: usize,
    /// Vocabulary size (text towers).
    pub vocab_size: usize,
    /// Width of the shared embedding space (text towers project to it).
    pub embed_dim: usize,
    pub bn_momentum: f32,
    pub drop_connect: f32,
    pub dropout: f32,
    /// A text tower's BERT given outright (from a pretrained directory) instead of by name.
    pub bert: Option<&'a BertConfig>,
    /// An image tower's EfficientNet given outright (for pretrained weights) instead of by name.
    pub efficientnet: Option<&'a EfficientNetConfig>,
}

/// A builder returns `None` when the name is not one of its architectures.
pub type ImageTowerBuilder = fn(&TowerOptions, &mut Rng) -> Option<Result<Box<dyn ImageTower>>>;
pub type TextTowerBuilder = fn(&TowerOptions, &mut Rng) -> Option<Result<Box<dyn TextTower>>>;

/// Every image tower `--image-tower` accepts, tried in order.
pub const IMAGE_TOWERS: &[(&str, ImageTowerBuilder)] =
    &[("efficientnet b0..b7, l2, lite0..lite4, tiny", efficientnet_tower), ("vit-tiny, vit-micro", crate::vit::build)];

/// Every text tower `--text-tower` accepts, tried in order.
pub const TEXT_TOWERS: &[(&str, TextTowerBuilder)] = &[("bert tiny, mini, small, medium, base, large", bert_tower)];

pub fn build_image_tower(opts: &TowerOptions, rng: &mut Rng) -> std::result::Result<Box<dyn ImageTower>, AlignError> {
    for (_, build) in IMAGE_TOWERS {
        if let Some(tower) = build(opts, rng) {
            return Ok(tower?);
        }
    }
    let known: Vec<&str> = IMAGE_TOWERS.iter().map(|(names, _)| *names).collect();
    Err(AlignError::config("image tower", format!("unknown '{}' (known: {})", opts.arch, known.join("; "))))
}

pub fn build_text_tower(opts: &TowerOptions, rng: &mut Rng) -> std::result::Result<Box<dyn TextTower>, AlignError> {
    for (_, build) in TEXT_TOWERS {
        if let Some(tower) = build(opts, rng) {
            return Ok(tower?);
        }
    }
    let known: Vec<&str> = TEXT_TOWERS.iter().map(|(names, _)| *names).collect();
    Err(AlignError::config("text tower", format!("unknown '{}' (known: {})", opts.arch, known.join("; "))))
}

// ---------------------------------------------------------------------------------------------
// EfficientNet: pooled features of the last block (ALIGN uses no head conv)
// ---------------------------------------------------------------------------------------------

impl ImageTower for EfficientNet {
    fn features(&self, images: &Var, ctx: &mut Ctx) -> Result<Var> {
        EfficientNet::features(self, images, ctx)
    }
    fn feature_dim(&self) -> usize {
        self.config.feature_dim()
    }
    /// A state dict file (lukemelas' or torchvision's naming) or a Hugging Face AlignModel
    /// directory (its `vision_model.*` tensors).
    fn load_pretrained(&self, path: &std::path::Path) -> Result<nn::LoadReport> {
        let format_error =
            |msg: String| tensor::TensorError::Format { file: path.display().to_string(), tensor: None, msg };
        if path.is_dir() {
            let (_, tensors) = crate::hf_align::read_weights(path).map_err(|e| format_error(e.to_string()))?;
            let renamed: Vec<(String, tensor::Tensor)> =
                tensors.iter().filter_map(|(n, t)| Some((crate::hf_align::vision_name(n)?, t.clone()))).collect();
            return self.load_pytorch(&renamed);
        }
        let tensors = tensor::io::load_named_tensors(path)?;
        if crate::efficientnet::is_torchvision_naming(tensors.iter().map(|(n, _)| n.as_str()))
            && self.config.padding != crate::efficientnet::PaddingStyle::Symmetric
        {
            return Err(format_error(
                "torchvision's weights need a tower built with its symmetric padding and batch-norm eps \
                 (TrainConfig::with_image_init sets that up)"
                    .into(),
            ));
        }
        self.load_pytorch(&tensors)
    }
}

fn efficientnet_tower(opts: &TowerOptions, rng: &mut Rng) -> Option<Result<Box<dyn ImageTower>>> {
    let mut config = match opts.efficientnet {
        Some(given) => given.clone(),
        None => EfficientNetConfig::by_name(opts.arch)?,
    };
    config.num_classes = 0; // pooled features only: no head conv, no classifier
    config.bn_momentum = opts.bn_momentum;
    config.drop_connect = opts.drop_connect;
    Some(Ok(Box::new(EfficientNet::new(config, rng))))
}

// ---------------------------------------------------------------------------------------------
// BERT: [CLS] state -> linear projection
// ---------------------------------------------------------------------------------------------

impl TextTower for BertTextTower {
    fn embed(&self, tokens: &TokenBatch, ctx: &mut Ctx) -> Result<Var> {
        self.forward(tokens, ctx)
    }
    fn load_pretrained(&self, dir: &std::path::Path) -> Result<nn::LoadReport> {
        self.bert.load_hf_safetensors(dir.join("model.safetensors"))
    }
}

fn bert_tower(opts: &TowerOptions, rng: &mut Rng) -> Option<Result<Box<dyn TextTower>>> {
    let mut config = match opts.bert {
        Some(given) => given.clone(),
        None => BertConfig::by_name(opts.arch)?,
    };
    config.vocab_size = opts.vocab_size;
    config.hidden_dropout = opts.dropout;
    config.attention_dropout = opts.dropout;
    config.max_position_embeddings = config.max_position_embeddings.max(opts.max_tokens);
    Some(Ok(Box::new(BertTextTower::new(config, opts.embed_dim, rng))))
}
