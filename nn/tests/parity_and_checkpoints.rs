//! nn against PyTorch (fixture from `scripts/make_fixtures.py nn_optim`): five optimiser steps
//! of SGD-momentum, SGD-Nesterov, AdamW and LAMB on a small model; BatchNorm2d in training
//! mode. Then checkpoints: bitwise resume, and corrupted / mismatched files that must fail by
//! name and leave the model alone.

use std::collections::BTreeMap;

use autograd::ops::{elementwise as ew, softmax};
use autograd::Var;
use nn::checkpoint::{load_checkpoint, save_checkpoint, TrainState};
use nn::layers::{BatchNorm2d, LayerNorm, Linear};
use nn::optim::{decay_groups, AdamW, Lamb, Optimizer, Sgd};
use nn::{Ctx, Module};
use tensor::io::safetensors::SafeTensors;
use tensor::{Result, Rng, Tensor, Tolerance};

fn fixture() -> SafeTensors {
    SafeTensors::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/nn_optim.safetensors")).unwrap()
}

/// fc1 Linear(6, 8) -> ln LayerNorm(8) -> GELU -> fc2 Linear(8, 3, no bias)
struct Small {
    fc1: Linear,
    ln: LayerNorm,
    fc2: Linear,
}

impl Small {
    fn new(seed: u64) -> Small {
        let mut rng = Rng::new(seed);
        Small {
            fc1: Linear::new(6, 8, true, &mut rng),
            ln: LayerNorm::new(8, 1e-5),
            fc2: Linear::new(8, 3, false, &mut rng),
        }
    }
    fn loss(&self, x: &Tensor, targets: &[usize]) -> Result<Var> {
        let ctx = &mut Ctx::eval(); // no layer here is stochastic or mode-dependent
        let h = self.ln.forward(&self.fc1.forward(&Var::constant(x.clone()), ctx)?, ctx)?;
        let logits = self.fc2.forward(&ew::gelu(&h), ctx)?;
        softmax::cross_entropy(&logits, targets, 0.0)
    }
}

impl Module for Small {
    fn parameters(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        self.fc1.parameters(&nn::module::join(prefix, "fc1"), out);
        self.ln.parameters(&nn::module::join(prefix, "ln"), out);
        self.fc2.parameters(&nn::module::join(prefix, "fc2"), out);
    }
}

fn load_init(model: &Small, fx: &SafeTensors) {
    let sd: BTreeMap<String, Tensor> =
        fx.names().filter_map(|n| n.strip_prefix("init.").map(|k| (k.to_string(), fx.tensor(n).unwrap()))).collect();
    let report = model.load_state_dict(&sd, true).unwrap();
    assert!(report.is_clean());
}

fn inputs(fx: &SafeTensors) -> (Tensor, Vec<usize>) {
    let (_, t) = fx.tensor_i64("targets").unwrap();
    (fx.tensor("x").unwrap(), t.iter().map(|&v| v as usize).collect())
}

fn check_optimizer(name: &str, make: impl Fn(Vec<(String, Var)>) -> Box<dyn Optimizer>) {
    let fx = fixture();
    let model = Small::new(0);
    load_init(&model, &fx);
    let (x, targets) = inputs(&fx);
    let mut opt = make(model.named_parameters());
    // relative to each tensor's largest entry: tiny entries are not judged on rounding noise
    let tol = Tolerance::scaled(1e-5, 1e-7);
    for step in 0..5 {
        opt.zero_grad();
        let loss = model.loss(&x, &targets).unwrap();
        loss.backward().unwrap();
        opt.step().unwrap();
        let want_loss = fx.tensor(&format!("{name}.loss{step}")).unwrap().to_vec();
        Tolerance::new(1e-5, 0.0).assert(&format!("{name} loss {step}"), &[loss.value().item().unwrap()], &want_loss);
        for (pname, p) in model.named_parameters() {
            let want = fx.tensor(&format!("{name}.step{step}.{pname}")).unwrap();
            tol.assert(&format!("{name} step {step} {pname}"), &p.value().to_vec(), &want.to_vec());
        }
    }
}

#[test]
fn sgd_momentum_matches_pytorch_for_five_steps() {
    check_optimizer("sgd", |p| Box::new(Sgd::new(decay_groups(p, 0.1, 0.01), 0.9, false)));
    check_optimizer("sgd_nesterov", |p| Box::new(Sgd::new(decay_groups(p, 0.1, 0.01), 0.9, true)));
}

#[test]
fn adamw_matches_pytorch_for_five_steps() {
    check_optimizer("adamw", |p| Box::new(AdamW::new(decay_groups(p, 0.01, 0.1), 0.9, 0.999, 1e-8)));
}

#[test]
fn lamb_matches_reference_for_five_steps() {
    check_optimizer("lamb", |p| Box::new(Lamb::new(decay_groups(p, 0.01, 0.01))));
}

#[test]
fn batch_norm_training_matches_pytorch_outputs_and_running_stats() {
    let fx = fixture();
    let bn = BatchNorm2d::new(5, 0.01, 1e-3);
    bn.weight.set_value(fx.tensor("bn.weight").unwrap()).unwrap();
    bn.bias.set_value(fx.tensor("bn.bias").unwrap()).unwrap();
    let mut ctx = Ctx::train(0);
    let tol = Tolerance::new(1e-5, 1e-5);
    for step in 0..3 {
        let y = bn.forward(&Var::constant(fx.tensor(&format!("bn.x{step}")).unwrap()), &mut ctx).unwrap();
        tol.assert(&format!("bn y{step}"), &y.value().to_vec(), &fx.tensor(&format!("bn.y{step}")).unwrap().to_vec());
    }
    tol.assert("running_mean", &bn.running_mean.get().to_vec(), &fx.tensor("bn.running_mean").unwrap().to_vec());
    tol.assert("running_var", &bn.running_var.get().to_vec(), &fx.tensor("bn.running_var").unwrap().to_vec());
    assert_eq!(bn.num_batches_tracked.get().item().unwrap(), 3.0);
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("align-nn-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// One training step with dropout-like randomness drawn from `rng` (so RNG state matters).
fn train_step(model: &Small, opt: &mut dyn Optimizer, rng: &mut Rng, step: u64) {
    let x = Tensor::randn_with(&[16, 6], 0.0, 1.0, rng);
    let targets: Vec<usize> = (0..16).map(|_| rng.below(3)).collect();
    let schedule = nn::schedule::LrSchedule::WarmupLinear { peak: 0.01, warmup: 5, total: 20, end: 0.0 };
    opt.set_lr(schedule.lr_at(step));
    opt.zero_grad();
    model.loss(&x, &targets).unwrap().backward().unwrap();
    nn::optim::clip_grad_norm(&model.named_parameters(), 1.0);
    opt.step().unwrap();
}

#[test]
fn resume_continues_bit_for_bit() {
    kernels::parallel::set_num_threads(1);
    // 20 steps straight
    let a = Small::new(3);
    let mut opt_a = Lamb::new(decay_groups(a.named_parameters(), 0.01, 0.01));
    let mut rng_a = Rng::new(99);
    for s in 0..20 {
        train_step(&a, &mut opt_a, &mut rng_a, s);
    }
    // 10 steps, checkpoint, fresh model + optimiser, load, 10 more
    let b = Small::new(3);
    let mut opt_b = Lamb::new(decay_groups(b.named_parameters(), 0.01, 0.01));
    let mut rng_b = Rng::new(99);
    for s in 0..10 {
        train_step(&b, &mut opt_b, &mut rng_b, s);
    }
    let path = tmp("resume.safetensors");
    let mut meta = BTreeMap::new();
    meta.insert("run".to_string(), "resume-test".to_string());
    let data = BTreeMap::from([("order".to_string(), vec![2, 0, 1]), ("cursor".to_string(), vec![1])]);
    let state = TrainState { step: 10, rng: rng_b.clone(), data };
    save_checkpoint(&path, &b, &opt_b, &state, &meta).unwrap();
    let c = Small::new(12345); // different init: everything must come from the file
    let mut opt_c = Lamb::new(decay_groups(c.named_parameters(), 0.01, 0.01));
    let resume = load_checkpoint(&path, &c, &mut opt_c).unwrap();
    // step, random stream and the caller's integer state all come back as saved
    assert_eq!(resume.state, state);
    assert_eq!(resume.metadata.get("run").map(String::as_str), Some("resume-test"));
    let mut rng_c = resume.state.rng;
    for s in resume.state.step..20 {
        train_step(&c, &mut opt_c, &mut rng_c, s);
    }
    for ((na, pa), (_, pc)) in a.named_parameters().iter().zip(c.named_parameters()) {
        assert_eq!(pa.value().to_vec(), pc.value().to_vec(), "{na} differs after resume");
    }
    assert_eq!(opt_a.step_count(), opt_c.step_count());
    kernels::parallel::set_num_threads(0);
}

fn state_at(step: u64, rng: &Rng) -> TrainState {
    TrainState { step, rng: rng.clone(), data: BTreeMap::new() }
}

#[test]
fn bad_checkpoints_fail_by_name_and_leave_the_model_unchanged() {
    let model = Small::new(5);
    let mut opt = AdamW::new(decay_groups(model.named_parameters(), 0.01, 0.0), 0.9, 0.999, 1e-8);
    let mut rng = Rng::new(1);
    train_step(&model, &mut opt, &mut rng, 0);
    let good = tmp("good.safetensors");
    save_checkpoint(&good, &model, &opt, &state_at(1, &rng), &BTreeMap::new()).unwrap();

    let target = Small::new(6);
    let mut target_opt = AdamW::new(decay_groups(target.named_parameters(), 0.01, 0.0), 0.9, 0.999, 1e-8);
    let before = target.state_dict();
    let unchanged = |t: &Small| {
        for (n, v) in t.state_dict() {
            assert_eq!(v.to_vec(), before[&n].to_vec(), "{n} was modified by a failed load");
        }
    };

    // truncated file
    let bytes = std::fs::read(&good).unwrap();
    let truncated = tmp("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_checkpoint(&truncated, &target, &mut target_opt).unwrap_err().to_string();
    assert!(e.contains("truncated.safetensors"), "{e}");
    unchanged(&target);

    // a model with a different shape: the mis-shaped entry is named
    struct Wider(Linear);
    impl Module for Wider {
        fn parameters(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
            self.0.parameters(&nn::module::join(prefix, "fc1"), out);
        }
    }
    let wider = Wider(Linear::new(6, 9, true, &mut Rng::new(0)));
    let mut wider_opt = AdamW::new(decay_groups(wider.named_parameters(), 0.01, 0.0), 0.9, 0.999, 1e-8);
    let e = load_checkpoint(&good, &wider, &mut wider_opt).unwrap_err().to_string();
    assert!(e.contains("fc1.weight") && e.contains("[8, 6]"), "{e}");

    // missing tensors: a checkpoint of a smaller model loaded into the full one
    struct OnlyFc1(Linear);
    impl Module for OnlyFc1 {
        fn parameters(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
            self.0.parameters(&nn::module::join(prefix, "fc1"), out);
        }
    }
    let small = OnlyFc1(Linear::new(6, 8, true, &mut Rng::new(0)));
    let small_opt = AdamW::new(decay_groups(small.named_parameters(), 0.01, 0.0), 0.9, 0.999, 1e-8);
    let partial = tmp("partial.safetensors");
    save_checkpoint(&partial, &small, &small_opt, &state_at(0, &rng), &BTreeMap::new()).unwrap();
    let e = load_checkpoint(&partial, &target, &mut target_opt).unwrap_err().to_string();
    assert!(e.contains("missing") && e.contains("ln.weight") && e.contains("fc2.weight"), "{e}");
    unchanged(&target);

    // the good one loads
    load_checkpoint(&good, &target, &mut target_opt).unwrap();
    assert_eq!(target.fc1.weight.value().to_vec(), model.fc1.weight.value().to_vec());
}
