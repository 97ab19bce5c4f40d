//! Five LAMB steps of a micro ALIGN dual encoder against PyTorch (fixture from
//! `scripts/make_fixtures.py dual_encoder_lamb`): image tower (stem + 2 SE MBConv blocks, pooled),
//! text tower (1-layer BERT, [CLS] -> Linear), learnable ln-temperature, contrastive loss with
//! label smoothing 0.1, LAMB with the exclusion rules and weight decay 0.1. Each step's loss
//! within 1e-4, and every parameter after the five steps within 1e-4 absolute plus 1e-4 of its
//! tensor's largest value. Leaving out the weight decay moves the stem's weights by 5.6e-4,
//! past that bound.

mod common;

use std::collections::BTreeMap;

use align::bert::{Bert, BertConfig, TextTower, TokenBatch};
use align::efficientnet::{EfficientNet, EfficientNetConfig, StageArgs};
use align::model::DualEncoder;
use autograd::ops::contrastive::contrastive_loss;
use autograd::Var;
use nn::layers::Linear;
use nn::optim::{decay_groups, Lamb, Optimizer};
use nn::{Ctx, Module};
use tensor::io::safetensors::SafeTensors;
use tensor::{Rng, Tensor, Tolerance};

#[test]
fn five_lamb_steps_of_a_micro_dual_encoder_match_pytorch() {
    let fx = SafeTensors::open(common::fixture("dual_encoder_lamb.safetensors")).unwrap();
    let mut icfg = EfficientNetConfig::by_name("b0").unwrap();
    icfg.stages = vec![
        StageArgs { repeats: 1, kernel: 3, stride: 1, expand: 1, in_ch: 32, out_ch: 16 },
        StageArgs { repeats: 1, kernel: 5, stride: 2, expand: 6, in_ch: 16, out_ch: 24 },
    ];
    icfg.drop_connect = 0.0;
    icfg.num_classes = 0; // pooled features only, as ALIGN's image tower
    let tcfg = BertConfig {
        vocab_size: 50,
        hidden_size: 16,
        num_layers: 1,
        num_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 16,
        hidden_dropout: 0.0,
        attention_dropout: 0.0,
        ..BertConfig::tiny()
    };
    let mut rng = Rng::new(0);
    let model = DualEncoder {
        image: Box::new(EfficientNet::new(icfg, &mut rng)),
        text: Box::new(TextTower { bert: Bert::new(tcfg, &mut rng), projection: Linear::new(16, 24, true, &mut rng) }),
        log_temperature: Var::parameter(Tensor::scalar(0.0)),
    };
    let sd: BTreeMap<String, Tensor> =
        fx.names().filter_map(|n| n.strip_prefix("param.").map(|k| (k.to_string(), fx.tensor(n).unwrap()))).collect();
    let report = model.load_state_dict(&sd, false).unwrap();
    assert!(report.unexpected.is_empty(), "{report}");
    let trained: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert!(trained.iter().all(|n| sd.contains_key(n)), "every trained parameter comes from the fixture");
    let images = fx.tensor("images").unwrap();
    let (shape, ids) = fx.tensor_i64("ids").unwrap();
    let (_, mask) = fx.tensor_i64("mask").unwrap();
    let tokens = TokenBatch {
        ids: ids.iter().map(|&i| i as usize).collect(),
        mask: Tensor::from_vec(mask.iter().map(|&m| m as f32).collect(), &shape).unwrap(),
        batch: shape[0],
        seq: shape[1],
    };
    let mut opt = Lamb::new(decay_groups(model.named_parameters(), 1e-2, 0.1));
    for step in 0..5 {
        opt.zero_grad();
        let mut ctx = Ctx::train(0);
        let x = model.embed_images(&images, &mut ctx).unwrap();
        let y = model.embed_texts(&tokens, &mut ctx).unwrap();
        let loss = contrastive_loss(&x, &y, &model.log_temperature, 0.1).unwrap();
        Tolerance::new(1e-4, 0.0).assert(
            &format!("loss {step}"),
            &[loss.value().item().unwrap()],
            &fx.tensor(&format!("loss{step}")).unwrap().to_vec(),
        );
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    for (name, p) in model.named_parameters() {
        let want = fx.tensor(&format!("after.{name}")).unwrap_or_else(|_| panic!("fixture lacks {name}"));
        // The absolute part covers parameters whose gradient is zero in exact arithmetic (a
        // batch-norm bias whose shift the next batch norm removes): LAMB normalises their
        // rounding noise into steps of about 2e-5 here, on either side.
        Tolerance::scaled(1e-4, 1e-4).assert(&format!("{name} after 5 steps"), &p.value().to_vec(), &want.to_vec());
    }
}
