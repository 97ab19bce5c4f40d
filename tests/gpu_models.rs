//! Whole models on the GPU device (feature `wgpu`) against the same models on the CPU:
//! all-MiniLM-L6-v2's hidden states with its real weights, and the training step of a random
//! BERT classifier (loss and every gradient). In CI these run on Mesa's lavapipe.
#![cfg(feature = "wgpu")]

mod common;

use align::bert::{cls_state, Bert, BertConfig, TokenBatch};
use autograd::ops::softmax;

use nn::layers::Linear;
use nn::{Ctx, Module};
use tensor::io::safetensors::SafeTensors;
use tensor::{Device, Rng, Tensor};

const GPU: Device = Device::Gpu(0);

fn batch_from(fx: &SafeTensors) -> TokenBatch {
    let (shape, ids) = fx.tensor_i64("ids").unwrap();
    let (_, mask) = fx.tensor_i64("mask").unwrap();
    TokenBatch {
        ids: ids.iter().map(|&i| i as usize).collect(),
        mask: Tensor::from_vec(mask.iter().map(|&m| m as f32).collect(), &shape).unwrap(),
        batch: shape[0],
        seq: shape[1],
    }
}

/// max |a - b| over the positions where `keep` is true, and max |b| there.
fn worst_diff(a: &[f32], b: &[f32], keep: impl Fn(usize) -> bool) -> (f32, f32) {
    let mut worst = (0.0f32, 0.0f32);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if keep(i) {
            worst = (worst.0.max((x - y).abs()), worst.1.max(y.abs()));
        }
    }
    worst
}

#[test]
fn minilm_hidden_states_on_the_gpu_match_the_cpu_and_transformers() {
    let dir = common::minilm_dir();
    let cfg = BertConfig::from_json_file(dir.join("config.json")).unwrap();
    let bert = Bert::new(cfg, &mut Rng::new(0));
    bert.load_hf_safetensors(dir.join("model.safetensors")).unwrap();
    let fx = SafeTensors::open(common::fixture("bert_minilm.safetensors")).unwrap();
    let tokens = batch_from(&fx);
    let cpu = bert.forward(&tokens, &mut Ctx::eval()).unwrap().value().to_vec();
    bert.to_device(GPU).unwrap();
    let hidden = bert.forward(&tokens, &mut Ctx::eval()).unwrap().value();
    assert_eq!(hidden.device(), GPU);
    let gpu = hidden.to_cpu().unwrap().to_vec();
    let mask = tokens.mask.to_vec();
    let real = |i: usize| mask[i / 384] != 0.0;
    let (vs_cpu, scale) = worst_diff(&gpu, &cpu, real);
    assert!(vs_cpu <= 1e-4 * scale.max(1.0), "GPU vs CPU: max |diff| {vs_cpu:e}");
    let (vs_torch, _) = worst_diff(&gpu, &fx.tensor("last_hidden").unwrap().to_vec(), real);
    assert!(vs_torch <= 1e-4, "GPU vs transformers: max |diff| {vs_torch:e}");
    println!("MiniLM on the GPU: {vs_cpu:e} from the CPU, {vs_torch:e} from transformers");
}

#[test]
fn a_bert_training_step_on_the_gpu_matches_the_cpu() {
    let cfg = BertConfig {
        vocab_size: 100,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 16,
        hidden_dropout: 0.0,
        attention_dropout: 0.0,
        ..BertConfig::tiny()
    };
    let tokens = TokenBatch {
        ids: (0..3 * 7).map(|i| (i * 13 + 5) % 100).collect(),
        mask: Tensor::from_vec((0..21).map(|i| if i % 7 < 5 + i / 7 % 2 { 1.0 } else { 0.0 }).collect(), &[3, 7])
            .unwrap(),
        batch: 3,
        seq: 7,
    };
    let step = |device: Device| {
        let bert = Bert::new(cfg.clone(), &mut Rng::new(0));
        let head = Linear::new(32, 3, true, &mut Rng::new(1));
        bert.to_device(device).unwrap();
        head.to_device(device).unwrap();
        let hidden = bert.forward(&tokens, &mut Ctx::train(2)).unwrap();
        let logits = head.forward(&cls_state(&hidden).unwrap(), &mut Ctx::eval()).unwrap();
        let loss = softmax::cross_entropy(&logits, &[2, 0, 1], 0.1).unwrap();
        loss.backward().unwrap();
        let mut grads: Vec<(String, Tensor)> = bert
            .named_parameters()
            .into_iter()
            .chain(head.named_parameters())
            .map(|(n, p)| (n, p.grad().expect("every parameter gets a gradient")))
            .collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        (loss.value().item().unwrap(), grads)
    };
    let (cpu_loss, cpu_grads) = step(Device::Cpu);
    let (gpu_loss, gpu_grads) = step(GPU);
    assert!((gpu_loss - cpu_loss).abs() <= 1e-5 * cpu_loss.abs(), "loss {gpu_loss} vs {cpu_loss}");
    // The key bias's gradient is zero in exact arithmetic (softmax ignores a shift shared by a
    // row's scores), so both devices give rounding noise there: scales are floored at 1e-6 of
    // the largest gradient in the model.
    let largest = cpu_grads.iter().map(|(_, c)| worst_diff(&c.to_vec(), &c.to_vec(), |_| true).1).fold(0.0, f32::max);
    for ((name, g), (_, c)) in gpu_grads.iter().zip(&cpu_grads) {
        assert_eq!(g.device(), GPU, "{name}");
        let (diff, scale) = worst_diff(&g.to_vec(), &c.to_vec(), |_| true);
        assert!(diff <= 1e-4 * scale.max(1e-6 * largest), "{name}: max |diff| {diff:e}, scale {scale:e}");
    }
}
