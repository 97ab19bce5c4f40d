//! Parity with PyTorch on a composite graph (fixture written by `scripts/make_fixtures.py
//! autograd_composite`, computed in float64): two post-LN attention layers with a padding mask
//! and GELU, a conv -> batch norm -> SiLU -> depthwise -> squeeze-excite -> pooling stack, and a
//! label-smoothed cross-entropy on the sum of both heads. The loss and every parameter gradient
//! must match within 1e-4 relative (gradients: relative to each tensor's largest entry).

use std::collections::BTreeMap;

use autograd::ops::{conv, elementwise as ew, matmul::matmul, norm, shape, softmax};
use autograd::Var;
use kernels::Padding;
use tensor::io::safetensors::SafeTensors;
use tensor::{Result, Tensor, Tolerance};

fn fixture() -> SafeTensors {
    SafeTensors::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/autograd_composite.safetensors")).unwrap()
}

struct Params(BTreeMap<String, Var>);

impl Params {
    fn get(&self, name: &str) -> &Var {
        &self.0[name]
    }
    fn linear(&self, x: &Var, name: &str) -> Result<Var> {
        ew::add(&matmul(x, self.get(&format!("{name}.weight")))?, self.get(&format!("{name}.bias")))
    }
}

fn forward(p: &Params, text: &Tensor, mask: &Tensor, image: &Tensor, targets: &[usize]) -> Result<Var> {
    let (b, t, d, h) = (2, 5, 8, 2);
    let dh = d / h;
    // additive padding mask (B, 1, 1, T): 0 where attended, -1e9 where padded
    let mask_add = Var::constant(mask.map(|m| (1.0 - m) * -1e9).reshape(&[b, 1, 1, t])?);
    let mut x = Var::constant(text.clone());
    for l in 0..2 {
        let name = |n: &str| format!("layer{l}.{n}");
        let heads = |v: Var| -> Result<Var> { shape::permute(&shape::reshape(&v, &[b, t, h, dh])?, &[0, 2, 1, 3]) };
        let q = heads(p.linear(&x, &name("q"))?)?;
        let k = heads(p.linear(&x, &name("k"))?)?;
        let v = heads(p.linear(&x, &name("v"))?)?;
        let scores = ew::mul_scalar(&matmul(&q, &shape::transpose(&k, 2, 3)?)?, 1.0 / (dh as f32).sqrt());
        let att = softmax::softmax(&ew::add(&scores, &mask_add)?)?;
        let ctx = shape::reshape(&shape::permute(&matmul(&att, &v)?, &[0, 2, 1, 3])?, &[b, t, d])?;
        let attn_out = p.linear(&ctx, &name("o"))?;
        x = norm::layer_norm(&ew::add(&x, &attn_out)?, p.get(&name("ln1.weight")), p.get(&name("ln1.bias")), 1e-5)?;
        let ff = p.linear(&ew::gelu(&p.linear(&x, &name("ff1"))?), &name("ff2"))?;
        x = norm::layer_norm(&ew::add(&x, &ff)?, p.get(&name("ln2.weight")), p.get(&name("ln2.bias")), 1e-5)?;
    }
    let cls = shape::reshape(&shape::narrow(&x, 1, 0, 1)?, &[b, d])?;
    let text_logits = p.linear(&cls, "text_head")?;

    let img = Var::constant(image.clone());
    let y = conv::conv2d(&img, p.get("conv.weight"), 2, Padding::Same)?;
    let y = norm::batch_norm(&y, p.get("bn.weight"), p.get("bn.bias"), &norm::BatchNormMode::Train { eps: 1e-3 })?.y;
    let y = ew::silu(&y);
    let y = conv::depthwise_conv2d(&y, p.get("dw.weight"), 1, Padding::Same)?;
    let s = conv::global_avg_pool(&y)?;
    let s = ew::sigmoid(&p.linear(&ew::silu(&p.linear(&s, "se.reduce")?), "se.expand")?);
    let y = conv::channel_scale(&y, &s)?;
    let pooled = conv::global_avg_pool(&y)?;
    let image_logits = p.linear(&pooled, "image_head")?;

    let logits = ew::add(&text_logits, &image_logits)?;
    softmax::cross_entropy(&logits, targets, 0.1)
}

#[test]
fn composite_graph_matches_pytorch_loss_and_gradients() {
    let fx = fixture();
    let names: Vec<String> = fx.names().map(String::from).collect();
    let params = Params(
        names
            .iter()
            .filter_map(|n| n.strip_prefix("param.").map(|p| (p.to_string(), Var::parameter(fx.tensor(n).unwrap()))))
            .collect(),
    );
    assert!(params.0.len() > 30);
    let (_, targets) = fx.tensor_i64("input.targets").unwrap();
    let targets: Vec<usize> = targets.iter().map(|&t| t as usize).collect();
    let loss = forward(
        &params,
        &fx.tensor("input.text").unwrap(),
        &fx.tensor("input.mask").unwrap(),
        &fx.tensor("input.image").unwrap(),
        &targets,
    )
    .unwrap();
    let want_loss = fx.tensor("loss").unwrap().to_vec();
    Tolerance::new(1e-5, 0.0).assert("loss", &[loss.value().item().unwrap()], &want_loss);
    loss.backward().unwrap();
    let tol = Tolerance::scaled(1e-4, 1e-7);
    let mut worst = 0.0f64;
    for (name, var) in &params.0 {
        let want = fx.tensor(&format!("grad.{name}")).unwrap();
        let got = var.grad().unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(got.shape(), want.shape(), "{name}");
        worst = worst
            .max(tol.check(&format!("grad.{name}"), &got.to_vec(), &want.to_vec()).unwrap_or_else(|e| panic!("{e}")));
    }
    println!("max |grad error| = {worst:.3e}");
}
