//! BERT against PyTorch / transformers (fixtures from `scripts/make_fixtures.py bert`):
//! real all-MiniLM-L6-v2 weights on a padded batch of 9 sentences (last hidden states within
//! 1e-4 absolute at every real token), and the loss and every gradient of a random 2-layer BERT
//! with a classifier on [CLS] within 1e-4 relative.

mod common;

use std::collections::BTreeMap;

use align::bert::{cls_state, Bert, BertConfig};
use autograd::ops::softmax;
use autograd::Var;
use nn::layers::Linear;
use nn::{Ctx, Module};
use tensor::io::safetensors::SafeTensors;
use tensor::{Rng, Tensor, Tolerance};

#[test]
fn minilm_last_hidden_states_match_transformers() {
    let dir = common::minilm_dir();
    let cfg = BertConfig::from_json_file(dir.join("config.json")).unwrap();
    assert_eq!((cfg.num_layers, cfg.hidden_size, cfg.num_heads), (6, 384, 12));
    let bert = Bert::new(cfg, &mut Rng::new(0));
    let report = bert.load_hf_safetensors(dir.join("model.safetensors")).unwrap();
    assert!(report.unexpected.iter().all(|n| n.starts_with("pooler.")), "{report}");
    let fx = SafeTensors::open(common::fixture("bert_minilm.safetensors")).unwrap();
    let tokens = common::batch_from(&fx);
    assert!(tokens.batch >= 8);
    // our tokenizer produces the same ids
    let tok = tokenizer::WordPiece::from_dir(&dir).unwrap();
    let first = tok.encode("A photo of a cat.", &Default::default()).ids;
    assert_eq!(first.iter().map(|&i| i as usize).collect::<Vec<_>>(), tokens.ids[..first.len()].to_vec());

    let hidden = bert.forward(&tokens, &mut Ctx::eval()).unwrap().value();
    let want = fx.tensor("last_hidden").unwrap();
    assert_eq!(hidden.shape(), want.shape());
    let mask = tokens.mask.to_vec();
    let (got, want) = (hidden.to_vec(), want.to_vec());
    let h = 384;
    let mut worst = 0.0f32;
    for (pos, &m) in mask.iter().enumerate() {
        if m == 0.0 {
            continue; // padded positions are not defined outputs
        }
        for j in 0..h {
            worst = worst.max((got[pos * h + j] - want[pos * h + j]).abs());
        }
    }
    assert!(worst <= 1e-4, "max |diff| {worst:e} over real tokens");
    println!("MiniLM max abs diff: {worst:e}");
}

/// MiniLM with bf16 matmul precision (inference: weights pre-packed in bf16): every real
/// token's hidden state within cosine 0.999 of the f32 forward.
#[test]
fn minilm_in_bf16_keeps_every_token_within_cosine_0_999_of_f32() {
    use kernels::bf16::{with_matmul_precision, MatmulPrecision};
    let (bert, tokens, _) = common::minilm_and_fixture();
    let run = || autograd::no_grad(|| bert.forward(&tokens, &mut Ctx::eval()).unwrap().value().to_vec());
    let full = run();
    let half = with_matmul_precision(MatmulPrecision::Bf16, run);
    let h = 384;
    let mut worst = 1.0f64;
    for (pos, &m) in tokens.mask.to_vec().iter().enumerate() {
        if m == 0.0 {
            continue;
        }
        let (a, b) = (&full[pos * h..(pos + 1) * h], &half[pos * h..(pos + 1) * h]);
        let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
        let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        worst = worst.min(dot / (na * nb));
    }
    assert_ne!(full, half, "the bf16 forward must round");
    assert!(worst >= 0.999, "worst per-token cosine {worst}");
    println!("MiniLM bf16 vs f32: worst per-token cosine {worst:.6}");
}

#[test]
fn two_layer_bert_loss_and_gradients_match_pytorch() {
    let fx = SafeTensors::open(common::fixture("bert_train.safetensors")).unwrap();
    let cfg = common::two_layer_bert_config();
    let bert = Bert::new(cfg, &mut Rng::new(0));
    let head = Linear::new(32, 3, true, &mut Rng::new(1));
    let mut sd = BTreeMap::new();
    let mut head_sd = BTreeMap::new();
    for name in fx.names() {
        if let Some(p) = name.strip_prefix("param.") {
            match p.strip_prefix("classifier.") {
                Some(h) => head_sd.insert(h.to_string(), fx.tensor(name).unwrap()),
                None => sd.insert(p.to_string(), fx.tensor(name).unwrap()),
            };
        }
    }
    assert!(bert.load_state_dict(&sd, true).unwrap().is_clean());
    head.load_state_dict(&head_sd, true).unwrap();
    let tokens = common::batch_from(&fx);
    let (_, targets) = fx.tensor_i64("targets").unwrap();
    let targets: Vec<usize> = targets.iter().map(|&t| t as usize).collect();
    let hidden = bert.forward(&tokens, &mut Ctx::train(0)).unwrap();
    let logits = head.forward(&cls_state(&hidden).unwrap(), &mut Ctx::train(0)).unwrap();
    let loss = softmax::cross_entropy(&logits, &targets, 0.1).unwrap();
    Tolerance::new(1e-5, 0.0).assert("loss", &[loss.value().item().unwrap()], &fx.tensor("loss").unwrap().to_vec());
    loss.backward().unwrap();
    let tol = Tolerance::scaled(1e-4, 1e-8);
    let mut params: Vec<(String, Var)> = bert.named_parameters();
    params.extend(head.named_parameters().into_iter().map(|(n, p)| (format!("classifier.{n}"), p)));
    for (name, p) in params {
        let want = fx.tensor(&format!("grad.{name}")).unwrap();
        let got = p.grad().unwrap_or_else(|| Tensor::zeros(&p.shape()));
        tol.assert(&format!("grad.{name}"), &got.to_vec(), &want.to_vec());
    }
}
