//! A small Vision Transformer image tower (Dosovitskiy et al., ICLR 2021), written as the
//! example of adding a tower: this file plus one line in `towers::IMAGE_TOWERS`.
//!
//! Images (N, H, W, 3) are cut into P x P patches by a P x P stride-P convolution (one linear
//! map per patch, NHWC, so no reshuffling), a learned [CLS] token is put in front, learned
//! position embeddings are added, and pre-norm encoder blocks follow:
//! x + attention(LN(x)), then x + MLP(LN(x)) with a GELU MLP four times as wide. The final
//! layer norm of the [CLS] token is the image feature, as in the paper's classification setup.
//!
//! Names follow the Hugging Face `ViTModel` state dict (`embeddings.patch_embeddings...`,
//! `encoder.layer.0.attention...`). Not here: dropout (the CPU recipe trains without it) and
//! loading pretrained weights (the patch convolution's layout would need HF's OIHW turned).

use autograd::ops::{elementwise as ew, shape};
use autograd::Var;
use kernels::Padding;
use nn::layers::{Conv2d, LayerNorm, Linear, MultiHeadSelfAttention};
use nn::{Ctx, Module};
use tensor::{Result, Rng, TensorError};

use crate::towers::{ImageTower, TowerOptions};

/// Sizes of a ViT.
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    pub patch: usize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    /// Square input side in pixels (position embeddings are sized for it).
    pub resolution: usize,
}

impl VitConfig {
    /// `vit-tiny`: ViT-Ti's width and heads (192, 3) at depth 4, patches of 8 pixels (64 of
    /// them at the CPU recipe's 64 x 64). `vit-micro`: width 32, one block (tests).
    pub fn by_name(name: &str, resolution: usize) -> Option<VitConfig> {
        let (patch, width, depth, heads) = match name {
            "vit-tiny" => (8, 192, 4, 3),
            "vit-micro" => (8, 32, 1, 2),
            _ => return None,
        };
        Some(VitConfig { patch, width, depth, heads, resolution })
    }

    fn patches(&self) -> usize {
        (self.resolution / self.patch).pow(2)
    }
}

/// One pre-norm encoder block.
#[derive(Module)]
pub struct VitBlock {
    #[module(name = "layernorm_before")]
    pub norm_attention: LayerNorm,
    pub attention: MultiHeadSelfAttention,
    #[module(name = "layernorm_after")]
    pub norm_mlp: LayerNorm,
    #[module(name = "intermediate.dense")]
    pub mlp_in: Linear,
    #[module(name = "output.dense")]
    pub mlp_out: Linear,
}

impl VitBlock {
    /// x (N, T, D) -> (N, T, D)
    fn forward(&self, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        let x = ew::add(x, &self.attention.forward(&self.norm_attention.forward(x, ctx)?, ctx)?)?;
        let hidden = ew::gelu(&self.mlp_in.forward(&self.norm_mlp.forward(&x, ctx)?, ctx)?);
        ew::add(&x, &self.mlp_out.forward(&hidden, ctx)?)
    }
}

#[derive(Module)]
pub struct Vit {
    #[module(skip)]
    pub config: VitConfig,
    #[module(name = "embeddings.patch_embeddings.projection")]
    pub patch_embedding: Conv2d,
    /// (1, 1, D)
    #[module(name = "embeddings.cls_token")]
    pub cls_token: Var,
    /// (1, 1 + patches, D)
    #[module(name = "embeddings.position_embeddings")]
    pub position_embeddings: Var,
    #[module(name = "encoder.layer")]
    pub blocks: Vec<VitBlock>,
    #[module(name = "layernorm")]
    pub final_norm: LayerNorm,
}

impl Vit {
    pub fn new(config: VitConfig, rng: &mut Rng) -> Result<Vit> {
        if config.resolution < config.patch || !config.resolution.is_multiple_of(config.patch) {
            return Err(TensorError::Shape {
                op: "vit",
                msg: format!("resolution {} is not a multiple of the {}-pixel patch", config.resolution, config.patch),
            });
        }
        let (d, p) = (config.width, config.patch);
        let patch_embedding = Conv2d::new(3, d, p, p, Padding::Valid, true, rng);
        let cls_token = Var::parameter(nn::init::normal(&[1, 1, d], 0.0, 0.02, rng));
        let position_embeddings = Var::parameter(nn::init::normal(&[1, 1 + config.patches(), d], 0.0, 0.02, rng));
        let blocks = (0..config.depth)
            .map(|_| {
                Ok(VitBlock {
                    norm_attention: LayerNorm::new(d, 1e-6),
                    attention: MultiHeadSelfAttention::new(d, config.heads, 0.0, rng)?,
                    norm_mlp: LayerNorm::new(d, 1e-6),
                    mlp_in: Linear::new_normal(d, 4 * d, 0.02, rng),
                    mlp_out: Linear::new_normal(4 * d, d, 0.02, rng),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Vit { patch_embedding, cls_token, position_embeddings, blocks, final_norm: LayerNorm::new(d, 1e-6), config })
    }
}

impl ImageTower for Vit {
    /// (N, H, W, 3) -> the final layer norm of [CLS], (N, D)
    fn features(&self, images: &Var, ctx: &mut Ctx) -> Result<Var> {
        let s = images.shape();
        let r = self.config.resolution;
        if s.len() != 4 || s[1] != r || s[2] != r || s[3] != 3 {
            return Err(TensorError::Shape { op: "vit", msg: format!("images must be (N, {r}, {r}, 3), got {s:?}") });
        }
        let (n, d) = (s[0], self.config.width);
        let patches = shape::reshape(&self.patch_embedding.forward(images, ctx)?, &[n, self.config.patches(), d])?;
        let cls = shape::broadcast_to(&self.cls_token, &[n, 1, d])?;
        let mut x = ew::add(&shape::concat(&[&cls, &patches], 1)?, &self.position_embeddings)?; // (N, 1 + P, D)
        for block in &self.blocks {
            x = block.forward(&x, ctx)?;
        }
        let x = self.final_norm.forward(&x, ctx)?;
        shape::reshape(&shape::narrow(&x, 1, 0, 1)?, &[n, d])
    }

    fn feature_dim(&self) -> usize {
        self.config.width
    }
}

/// The registry's builder: `vit-tiny`, `vit-micro`.
pub fn build(opts: &TowerOptions, rng: &mut Rng) -> Option<Result<Box<dyn ImageTower>>> {
    let config = VitConfig::by_name(opts.arch, opts.resolution)?;
    Some(Vit::new(config, rng).map(|v| Box::new(v) as Box<dyn ImageTower>))
}

#[cfg(test)]
mod tests {
    use super::*;
    use autograd::gradcheck::{check_gradients, GradcheckOptions};
    use tensor::Tensor;

    #[test]
    fn features_have_the_width_and_every_parameter_is_listed_and_trained() {
        let vit = Vit::new(VitConfig::by_name("vit-micro", 16).unwrap(), &mut Rng::new(0)).unwrap();
        let images = Var::constant(Tensor::randn(&[2, 16, 16, 3], 0.0, 1.0, 1));
        let f = vit.features(&images, &mut Ctx::eval()).unwrap();
        assert_eq!(f.shape(), vec![2, 32]);
        // every listed parameter gets a gradient from the features
        autograd::ops::reduce::sum_all(&f).unwrap().backward().unwrap();
        for (name, p) in vit.named_parameters() {
            let g = p.grad().unwrap_or_else(|| panic!("{name} got no gradient"));
            assert!(g.to_vec().iter().any(|&v| v != 0.0), "{name} has an all-zero gradient");
        }
        nn::module::check_state_lists(|| {
            Vit::new(VitConfig::by_name("vit-micro", 16).unwrap(), &mut Rng::new(0)).unwrap()
        })
        .unwrap();
        // a resolution the patches do not tile is refused
        assert!(Vit::new(VitConfig::by_name("vit-micro", 20).unwrap(), &mut Rng::new(0)).is_err());
    }

    #[test]
    fn the_cls_feature_passes_a_gradient_check() {
        let vit =
            Vit::new(VitConfig { patch: 4, width: 8, depth: 1, heads: 2, resolution: 8 }, &mut Rng::new(2)).unwrap();
        let images = Tensor::randn(&[2, 8, 8, 3], 0.0, 1.0, 3);
        let opts = GradcheckOptions::default();
        check_gradients(&[images], |x| vit.features(&x[0], &mut Ctx::eval()), &opts).unwrap();
    }
}
