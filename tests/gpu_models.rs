//! Whole models on the GPU device (feature `wgpu`) against the same models on the CPU:
//! all-MiniLM-L6-v2's hidden states with its real weights, and the training step of a random
//! BERT classifier (loss and every gradient). In CI these run on Mesa's lavapipe.
#![cfg(feature = "wgpu")]

mod common;

use align::bert::{cls_state, Bert, TokenBatch};
use autograd::ops::softmax;

use nn::layers::Linear;
use nn::{Ctx, Module};
use tensor::io::safetensors::SafeTensors;
use tensor::{Device, Rng, Tensor};

const GPU: Device = Device::Gpu(0);

/// The tests of this file take turns on the device, so the pool counters one of them reads
/// are its own.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
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
    let _turn = serial();
    let (bert, tokens, fx) = common::minilm_and_fixture();
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
    let _turn = serial();
    let cfg = common::two_layer_bert_config();
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

#[test]
fn lite0_logits_on_the_gpu_match_pytorch_and_the_cpu() {
    let _turn = serial();
    use align::efficientnet::{EfficientNet, EfficientNetConfig};
    use tensor::io::torch::load_state_dict;
    let model = EfficientNet::new(EfficientNetConfig::by_name("lite0").unwrap(), &mut Rng::new(0));
    model.load_pytorch(&load_state_dict(common::lite0_pth()).unwrap()).unwrap();
    let fx = SafeTensors::open(common::fixture("efficientnet_lite0.safetensors")).unwrap();
    let input = fx.tensor("input_nhwc").unwrap();
    let logits =
        |x: Tensor| autograd::no_grad(|| model.logits(&autograd::Var::constant(x), &mut Ctx::eval())).unwrap().value();
    let cpu = logits(input.clone()).to_vec();
    model.to_device(GPU).unwrap();
    let gpu = logits(input.to_device(GPU).unwrap());
    assert_eq!(gpu.device(), GPU);
    let gpu = gpu.to_vec();
    let (vs_cpu, _) = worst_diff(&gpu, &cpu, |_| true);
    let (vs_torch, _) = worst_diff(&gpu, &fx.tensor("logits").unwrap().to_vec(), |_| true);
    assert!(vs_cpu <= 1e-3 && vs_torch <= 1e-3, "lite0 logits: {vs_cpu:e} from the CPU, {vs_torch:e} from PyTorch");
}

#[test]
fn lamb_and_adamw_steps_on_the_gpu_match_the_cpu() {
    let _turn = serial();
    use nn::optim::{AdamW, Lamb, Optimizer, ParamGroup};
    let run = |device: Device, lamb: bool| {
        let w = autograd::Var::parameter(Tensor::randn(&[7, 5], 0.0, 1.0, 3).to_device(device).unwrap());
        let b = autograd::Var::parameter(Tensor::randn(&[5], 0.0, 1.0, 4).to_device(device).unwrap());
        let groups = vec![
            ParamGroup {
                name: "decay".into(),
                params: vec![("w".into(), w.clone())],
                lr: 0.01,
                lr_scale: 1.0,
                weight_decay: 0.1,
                no_trust_ratio: false,
            },
            ParamGroup {
                name: "no_decay".into(),
                params: vec![("b".into(), b.clone())],
                lr: 0.01,
                lr_scale: 1.0,
                weight_decay: 0.0,
                no_trust_ratio: true,
            },
        ];
        let mut opt: Box<dyn Optimizer> =
            if lamb { Box::new(Lamb::new(groups)) } else { Box::new(AdamW::new(groups, 0.9, 0.999, 1e-8)) };
        for step in 0..3 {
            let gw = Tensor::randn(&[7, 5], 0.0, 0.1, 10 + step).to_device(device).unwrap();
            let gb = Tensor::randn(&[5], 0.0, 0.1, 20 + step).to_device(device).unwrap();
            w.set_grad(Some(gw));
            b.set_grad(Some(gb));
            opt.step().unwrap();
        }
        let (_, state) = opt.state();
        (w.value().to_vec(), b.value().to_vec(), state.iter().map(|(n, t)| (n.clone(), t.to_vec())).collect::<Vec<_>>())
    };
    for lamb in [true, false] {
        let (cw, cb, cs) = run(Device::Cpu, lamb);
        let (gw, gb, gs) = run(GPU, lamb);
        for (what, g, c) in [("w", &gw, &cw), ("b", &gb, &cb)] {
            let (diff, scale) = worst_diff(g, c, |_| true);
            assert!(diff <= 1e-5 * scale, "lamb {lamb} {what}: {diff:e}");
        }
        assert_eq!(gs.len(), cs.len(), "state entries");
        for ((n, g), (_, c)) in gs.iter().zip(&cs) {
            let (diff, scale) = worst_diff(g, c, |_| true);
            assert!(diff <= 1e-4 * scale, "lamb {lamb} state {n}: {diff:e}");
        }
    }
}

#[test]
fn a_thousand_training_steps_on_the_gpu_keep_device_memory_flat() {
    let _turn = serial();
    use autograd::ops::{elementwise as ew, norm};
    use nn::optim::{Lamb, Optimizer, ParamGroup};
    let param = |shape: &[usize], seed: u64| {
        autograd::Var::parameter(Tensor::randn(shape, 0.0, 0.1, seed).to_device(GPU).unwrap())
    };
    let (w1, b1, gamma, beta, w2) =
        (param(&[32, 16], 1), param(&[32], 2), param(&[32], 3), param(&[32], 4), param(&[5, 32], 5));
    let params: Vec<(String, autograd::Var)> =
        [("w1", &w1), ("b1", &b1), ("gamma", &gamma), ("beta", &beta), ("w2", &w2)]
            .iter()
            .map(|(n, p)| (n.to_string(), (*p).clone()))
            .collect();
    let group =
        ParamGroup { name: "all".into(), params, lr: 1e-3, lr_scale: 1.0, weight_decay: 0.01, no_trust_ratio: false };
    let mut opt = Lamb::new(vec![group]);
    let x = Tensor::randn(&[24, 16], 0.0, 1.0, 6).to_device(GPU).unwrap();
    let targets: Vec<usize> = (0..24).map(|i| i % 5).collect();
    let gpu = kernels::gpu::gpu(0).unwrap();
    let mut warm = None;
    let mut first_loss = f32::NAN;
    for step in 0..1000 {
        let h = autograd::ops::matmul::linear(&autograd::Var::constant(x.clone()), &w1, Some(&b1)).unwrap();
        let h = norm::layer_norm(&ew::gelu(&h), &gamma, &beta, 1e-5).unwrap();
        let logits = autograd::ops::matmul::linear(&h, &w2, None).unwrap();
        let loss = softmax::cross_entropy(&logits, &targets, 0.0).unwrap();
        loss.backward().unwrap();
        opt.step().unwrap();
        opt.zero_grad();
        if step == 0 {
            first_loss = loss.value().item().unwrap();
        }
        if step == 10 {
            gpu.synchronize().unwrap();
            warm = Some(gpu.pool_stats());
        }
        if step == 999 {
            gpu.synchronize().unwrap();
            let (warm, now) = (warm.unwrap(), gpu.pool_stats());
            assert_eq!(now.device_bytes, warm.device_bytes, "device memory grew: {warm:?} -> {now:?}");
            assert!(now.reused > warm.reused, "buffers come from the pool");
            let last = loss.value().item().unwrap();
            assert!(last < first_loss, "the loop trains: {first_loss} -> {last}");
        }
    }
}

#[test]
fn a_dual_encoder_training_step_on_the_gpu_matches_the_cpu() {
    let _turn = serial();
    use align::model::DualEncoder;
    use align::train::{TrainConfig, LABEL_SMOOTHING};
    use autograd::ops::contrastive::contrastive_loss;
    // the default recipe's towers (EfficientNet-B0 + BERT-mini) at a small resolution, so
    // lavapipe runs it in seconds; dropout and drop-connect on, with the same seeds
    let cfg = TrainConfig { resolution: 64, max_tokens: 12, ..TrainConfig::tiny() };
    let images = Tensor::rand_uniform(&[8, 64, 64, 3], -1.0, 1.0, 7);
    let tokens = TokenBatch {
        ids: (0..8 * 9).map(|i| (i * 17 + 3) % 60).collect(),
        mask: Tensor::from_vec((0..72).map(|i| if i % 9 < 5 + i / 9 % 4 { 1.0 } else { 0.0 }).collect(), &[8, 9])
            .unwrap(),
        batch: 8,
        seq: 9,
    };
    let step = |device: Device| {
        let model = DualEncoder::new(&cfg, 60, &mut Rng::new(1)).unwrap();
        model.to_device(device).unwrap();
        let mut ctx = Ctx::train(5);
        let x = model.embed_images(&images, &mut ctx).unwrap();
        let y = model.embed_texts(&tokens, &mut ctx).unwrap();
        let loss = contrastive_loss(&x, &y, &model.log_temperature, LABEL_SMOOTHING).unwrap();
        loss.backward().unwrap();
        let grads: Vec<(String, Vec<f32>)> =
            model.named_parameters().into_iter().filter_map(|(n, p)| p.grad().map(|g| (n, g.to_vec()))).collect();
        (loss.value().item().unwrap(), grads)
    };
    let (cpu_loss, cpu_grads) = step(Device::Cpu);
    let (gpu_loss, gpu_grads) = step(GPU);
    assert!((gpu_loss - cpu_loss).abs() <= 1e-5 * cpu_loss.abs(), "loss {gpu_loss} vs {cpu_loss}");
    assert_eq!(gpu_grads.len(), cpu_grads.len());
    // Two kinds of gradient are sums that cancel in exact arithmetic, so both devices give
    // rounding noise there, not values: the key biases (softmax ignores a shift shared by a
    // row) and each MBConv's projection batch-norm bias (its output reaches the loss only
    // through the next block's training-mode batch norm, which removes the batch mean). Their
    // tolerance is 1e-4 of the model's largest gradient instead; every other tensor is held to
    // 1e-4 of its own scale (measured: at most 2e-5).
    let largest = cpu_grads.iter().map(|(_, c)| worst_diff(c, c, |_| true).1).fold(0.0, f32::max);
    for ((name, g), (_, c)) in gpu_grads.iter().zip(&cpu_grads) {
        let (diff, scale) = worst_diff(g, c, |_| true);
        let cancelling = name.ends_with("key.bias") || name.ends_with("_bn2.bias");
        let floor = if cancelling { largest } else { 0.0 };
        assert!(diff <= 1e-4 * scale.max(floor), "{name}: max |diff| {diff:e}, scale {scale:e}");
    }
}
