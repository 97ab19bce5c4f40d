//! Optimisers over parameter groups: SGD with momentum (and Nesterov), AdamW, and LAMB (You et
//! al. 2019, exactly as docs/paper.md writes it); global gradient-norm clipping.
//!
//! Each group has its own learning rate and weight decay. [`decay_groups`] builds the usual
//! split: matrices and conv kernels decay; biases and normalisation parameters (every
//! parameter of rank <= 1) neither decay nor, for LAMB, use the trust ratio.
//!
//! Updates follow PyTorch's single-tensor implementations operation for operation (so that
//! parity tests agree to rounding), run in f32 on the calling thread, and are bitwise
//! reproducible. Optimiser state is exported as named tensors (`<param>.<slot>`) for
//! checkpoints.

use std::collections::BTreeMap;

use rayon::prelude::*;

use autograd::Var;
use kernels::optim::{self as optim_kernels, AdamStep, LambSlices};
use tensor::{Result, Tensor, TensorError};

/// Parameters sharing hyper-parameters.
#[derive(Clone)]
pub struct ParamGroup {
    /// What the group is (`decay`, `no_decay`, or a caller's own name such as `temperature`).
    pub name: String,
    pub params: Vec<(String, Var)>,
    /// The learning rate the next step uses (a schedule sets it to its rate times `lr_scale`).
    pub lr: f32,
    /// This group's multiple of the schedule's learning rate.
    pub lr_scale: f32,
    pub weight_decay: f32,
    /// LAMB only: use r = 1 instead of the trust ratio for this group.
    pub no_trust_ratio: bool,
}

/// Splits parameters into a decayed group (rank >= 2) and an excluded group (biases and
/// normalisation parameters: rank <= 1), both at learning rate `lr`.
pub fn decay_groups(params: Vec<(String, Var)>, lr: f32, weight_decay: f32) -> Vec<ParamGroup> {
    let (decay, no_decay): (Vec<_>, Vec<_>) = params.into_iter().partition(|(_, p)| p.shape().len() >= 2);
    vec![
        ParamGroup { name: "decay".into(), params: decay, lr, lr_scale: 1.0, weight_decay, no_trust_ratio: false },
        ParamGroup {
            name: "no_decay".into(),
            params: no_decay,
            lr,
            lr_scale: 1.0,
            weight_decay: 0.0,
            no_trust_ratio: true,
        },
    ]
}

/// One group with every parameter.
pub fn single_group(params: Vec<(String, Var)>, lr: f32, weight_decay: f32) -> Vec<ParamGroup> {
    vec![ParamGroup { name: "all".into(), params, lr, lr_scale: 1.0, weight_decay, no_trust_ratio: false }]
}

pub trait Optimizer {
    fn groups(&self) -> &[ParamGroup];
    fn groups_mut(&mut self) -> &mut [ParamGroup];
    /// Applies one update from the parameters' current gradients (parameters without a
    /// gradient are skipped, as in PyTorch).
    fn step(&mut self) -> Result<()>;
    /// Number of steps taken.
    fn step_count(&self) -> u64;
    /// Named state tensors (`<param>.<slot>`) plus the step count, for checkpoints.
    fn state(&self) -> (u64, Vec<(String, Tensor)>);
    /// Checks that `state` fits this optimiser's parameters, without changing anything.
    fn check_state(&self, state: &BTreeMap<String, Tensor>) -> Result<()>;
    /// Replaces the state (call [`Optimizer::check_state`] first).
    fn set_state(&mut self, step: u64, state: &BTreeMap<String, Tensor>) -> Result<()>;

    /// Sets every group's learning rate (what a schedule does each step).
    fn set_lr(&mut self, lr: f32) {
        for g in self.groups_mut() {
            g.lr = lr;
        }
    }

    fn zero_grad(&self) {
        for g in self.groups() {
            for (_, p) in &g.params {
                p.zero_grad();
            }
        }
    }
}

/// Per-parameter state slots, kept by parameter name.
#[derive(Default, Clone)]
struct Slots {
    by_param: BTreeMap<String, Vec<Vec<f32>>>,
    /// The slots of parameters on a GPU, as tensors on that GPU.
    on_device: BTreeMap<String, Vec<Tensor>>,
}

impl Slots {
    fn get(&mut self, name: &str, count: usize, len: usize) -> &mut Vec<Vec<f32>> {
        self.by_param.entry(name.to_string()).or_insert_with(|| vec![vec![0.0; len]; count])
    }

    fn export(&self, groups: &[ParamGroup], names: &[&str]) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        for g in groups {
            for (n, p) in &g.params {
                if let Some(slots) = self.on_device.get(n) {
                    for (slot, t) in names.iter().zip(slots) {
                        // checkpoints hold host tensors
                        let host = t.to_cpu().unwrap_or_else(|e| panic!("optimizer state of {n}: {e}"));
                        out.push((format!("{n}.{slot}"), host));
                    }
                    continue;
                }
                if let Some(slots) = self.by_param.get(n) {
                    for (slot, data) in names.iter().zip(slots) {
                        out.push((
                            format!("{n}.{slot}"),
                            Tensor::from_vec(data.clone(), &p.shape()).expect("slot shape"),
                        ));
                    }
                }
            }
        }
        out
    }

    fn check(groups: &[ParamGroup], names: &[&str], state: &BTreeMap<String, Tensor>) -> Result<()> {
        for g in groups {
            for (n, p) in &g.params {
                let present: Vec<bool> = names.iter().map(|s| state.contains_key(&format!("{n}.{s}"))).collect();
                if present.iter().any(|&x| x) && !present.iter().all(|&x| x) {
                    return Err(state_err(n, "optimizer state is partially missing"));
                }
                for s in names {
                    if let Some(t) = state.get(&format!("{n}.{s}")) {
                        if t.shape() != p.shape().as_slice() {
                            return Err(state_err(
                                &format!("{n}.{s}"),
                                &format!("shape {:?}, parameter has {:?}", t.shape(), p.shape()),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn import(groups: &[ParamGroup], names: &[&str], state: &BTreeMap<String, Tensor>) -> Slots {
        let mut slots = Slots::default();
        for g in groups {
            for (n, _) in &g.params {
                let vals: Option<Vec<Vec<f32>>> =
                    names.iter().map(|s| state.get(&format!("{n}.{s}")).map(|t| t.to_vec())).collect();
                if let Some(v) = vals {
                    slots.by_param.insert(n.clone(), v);
                }
            }
        }
        slots
    }
}

fn state_err(name: &str, msg: &str) -> TensorError {
    TensorError::Format { file: "optimizer state".into(), tensor: Some(name.to_string()), msg: msg.to_string() }
}

#[cfg(feature = "wgpu")]
/// The device slots of parameter `name` (zeros on `device` at its first step, or the
/// host state a checkpoint restored, moved there).
fn device_slots<'a>(slots: &'a mut Slots, name: &str, count: usize, like: &Tensor) -> Result<&'a mut Vec<Tensor>> {
    if !slots.on_device.contains_key(name) {
        let restored = slots.by_param.remove(name);
        let tensors = match restored {
            Some(host) => host
                .into_iter()
                .map(|v| Tensor::from_vec(v, like.shape())?.to_device(like.device()))
                .collect::<Result<Vec<_>>>()?,
            None => (0..count).map(|_| Tensor::zeros_on(like.shape(), like.device())).collect::<Result<Vec<_>>>()?,
        };
        slots.on_device.insert(name.to_string(), tensors);
    }
    Ok(slots.on_device.get_mut(name).expect("inserted above"))
}

/// The parameters of the groups that have a gradient and live on a GPU, with their group.
fn gpu_params(groups: &[ParamGroup]) -> Vec<(&ParamGroup, &String, &Var, Tensor)> {
    let mut out = vec![];
    for g in groups {
        for (name, p) in &g.params {
            if let Some(grad) = p.grad().filter(|_| p.requires_grad()) {
                if grad.device().is_gpu() {
                    out.push((g, name, p, grad));
                }
            }
        }
    }
    out
}

/// A parameter's value, ready to be updated in place on its GPU: when anything else still holds
/// its buffer, the parameter gets a private copy first (as `Var::update_in_place` does on the host).
#[cfg(feature = "wgpu")]
fn private_device_value(p: &Var) -> Result<Tensor> {
    let w = p.value();
    // this handle and the parameter's own
    if std::sync::Arc::strong_count(w.storage()) > 2 || !w.is_contiguous() {
        let copy = tensor::gpu::unary(&w, kernels::gpu::ops::Unary::Affine { alpha: 1.0, beta: 0.0 })?;
        p.set_value(copy.clone())?;
        return Ok(copy);
    }
    Ok(w)
}

#[cfg(feature = "wgpu")]
fn device_err(e: kernels::gpu::GpuError) -> TensorError {
    TensorError::Device { op: "optimizer", msg: e.to_string() }
}

/// Applies `update(param, grad, slots)` to every parameter that has a gradient.
fn for_each_param(
    groups: &[ParamGroup],
    slots: &mut Slots,
    count: usize,
    mut update: impl FnMut(&ParamGroup, &mut [f32], &[f32], &mut Vec<Vec<f32>>, bool),
) -> Result<()> {
    for g in groups {
        for (name, p) in &g.params {
            if !p.requires_grad() {
                continue;
            }
            let Some(grad) = p.grad() else { continue };
            if grad.device().is_gpu() {
                continue; // updated on its GPU by the optimiser's device path
            }
            let grad = grad.contiguous();
            let is_new = !slots.by_param.contains_key(name);
            let s = slots.get(name, count, grad.numel());
            // in place: the parameter's buffer is written directly (no per-step copy of it)
            p.update_in_place(|value| update(g, value, grad.as_contiguous_slice().expect("contiguous"), s, is_new))?;
        }
    }
    Ok(())
}

/// The bookkeeping every optimiser shares: group access, step count and named state slots.
macro_rules! optimizer_common {
    ($slots:expr) => {
        fn groups(&self) -> &[ParamGroup] {
            &self.groups
        }
        fn groups_mut(&mut self) -> &mut [ParamGroup] {
            &mut self.groups
        }
        fn step_count(&self) -> u64 {
            self.steps
        }
        fn state(&self) -> (u64, Vec<(String, Tensor)>) {
            (self.steps, self.slots.export(&self.groups, &$slots))
        }
        fn check_state(&self, state: &BTreeMap<String, Tensor>) -> Result<()> {
            Slots::check(&self.groups, &$slots, state)
        }
        fn set_state(&mut self, step: u64, state: &BTreeMap<String, Tensor>) -> Result<()> {
            self.check_state(state)?;
            self.slots = Slots::import(&self.groups, &$slots, state);
            self.steps = step;
            Ok(())
        }
    };
}

// ---------------------------------------------------------------------------------------------

/// SGD with momentum, dampening 0, optional Nesterov (PyTorch's `torch.optim.SGD`).
pub struct Sgd {
    pub groups: Vec<ParamGroup>,
    pub momentum: f32,
    pub nesterov: bool,
    slots: Slots,
    steps: u64,
}

impl Sgd {
    pub fn new(groups: Vec<ParamGroup>, momentum: f32, nesterov: bool) -> Sgd {
        Sgd { groups, momentum, nesterov, slots: Slots::default(), steps: 0 }
    }
}

impl Optimizer for Sgd {
    optimizer_common!(["momentum_buffer"]);
    fn step(&mut self) -> Result<()> {
        if let Some((_, name, _, grad)) = gpu_params(&self.groups).first() {
            return Err(TensorError::Device {
                op: "sgd",
                msg: format!("{name} is on {}: SGD runs on the CPU only", grad.device()),
            });
        }
        let (momentum, nesterov) = (self.momentum, self.nesterov);
        for_each_param(&self.groups, &mut self.slots, 1, |g, w, grad, s, is_new| {
            // PyTorch starts the momentum buffer at the first gradient, not at zero.
            let buf = &mut s[0];
            for i in 0..w.len() {
                let d = grad[i] + g.weight_decay * w[i];
                let step = if momentum != 0.0 {
                    buf[i] = if is_new { d } else { momentum * buf[i] + d };
                    if nesterov {
                        d + momentum * buf[i]
                    } else {
                        buf[i]
                    }
                } else {
                    d
                };
                w[i] -= g.lr * step;
            }
        })?;
        self.steps += 1;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// AdamW (Loshchilov & Hutter), as `torch.optim.AdamW`: decoupled decay p *= 1 - lr * wd.
pub struct AdamW {
    pub groups: Vec<ParamGroup>,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    slots: Slots,
    steps: u64,
}

impl AdamW {
    pub fn new(groups: Vec<ParamGroup>, beta1: f32, beta2: f32, eps: f32) -> AdamW {
        AdamW { groups, beta1, beta2, eps, slots: Slots::default(), steps: 0 }
    }
}

const ADAM_SLOTS: [&str; 2] = ["exp_avg", "exp_avg_sq"];

impl Optimizer for AdamW {
    optimizer_common!(ADAM_SLOTS);
    fn step(&mut self) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        #[cfg(feature = "wgpu")]
        for (g, name, p, grad) in gpu_params(&self.groups) {
            let w = private_device_value(p)?;
            let s = device_slots(&mut self.slots, name, 2, &w)?;
            let grad = tensor::gpu::contiguous(&grad)?;
            let (gb, wb) = (tensor::gpu::buffer("adamw", &grad)?, tensor::gpu::buffer("adamw", &w)?);
            let (mb, vb) = (tensor::gpu::buffer("adamw", &s[0])?, tensor::gpu::buffer("adamw", &s[1])?);
            kernels::gpu::ops::adamw(gb, wb, mb, vb, g.lr, g.weight_decay, (b1, b2, eps), self.steps)
                .map_err(device_err)?;
        }
        for_each_param(&self.groups, &mut self.slots, 2, |g, w, grad, s, _| {
            let step_size = g.lr / bc1;
            let (m, v) = s.split_at_mut(1);
            let (m, v) = (&mut m[0], &mut v[0]);
            for i in 0..w.len() {
                w[i] *= 1.0 - g.lr * g.weight_decay;
                m[i] += (grad[i] - m[i]) * (1.0 - b1);
                v[i] = v[i] * b2 + (1.0 - b2) * grad[i] * grad[i];
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                w[i] -= step_size * m[i] / denom;
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------

/// LAMB (You et al. 2019), per docs/paper.md:
///   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  m^ = m / (1 - b1^t);  v^ = v / (1 - b2^t)
///   u = m^ / (sqrt(v^) + eps) + wd w;  r = ||w|| / ||u|| (1 if either norm is 0)
///   w = w - lr r u
/// Groups with `no_trust_ratio` use r = 1 (biases and norms, together with wd = 0).
pub struct Lamb {
    pub groups: Vec<ParamGroup>,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    slots: Slots,
    steps: u64,
}

impl Lamb {
    /// Defaults from docs/paper.md: b1 0.9, b2 0.999, eps 1e-6.
    pub fn new(groups: Vec<ParamGroup>) -> Lamb {
        Lamb { groups, beta1: 0.9, beta2: 0.999, eps: 1e-6, slots: Slots::default(), steps: 0 }
    }
}

impl Optimizer for Lamb {
    optimizer_common!(ADAM_SLOTS);
    fn step(&mut self) -> Result<()> {
        self.steps += 1;
        // the step's constants (bias corrections); each group sets its own weight decay
        let step_constants = AdamStep::at(self.beta1, self.beta2, self.eps, 0.0, self.steps);
        // Parameters on a GPU: the same two passes as kernels there, the trust ratio computed on
        // the device (no read-back).
        #[cfg(feature = "wgpu")]
        for (g, name, p, grad) in gpu_params(&self.groups) {
            let w = private_device_value(p)?;
            let s = device_slots(&mut self.slots, name, 2, &w)?;
            let grad = tensor::gpu::contiguous(&grad)?;
            let h = AdamStep { weight_decay: g.weight_decay, ..step_constants };
            let (gb, wb) = (tensor::gpu::buffer("lamb", &grad)?, tensor::gpu::buffer("lamb", &w)?);
            let (mb, vb) = (tensor::gpu::buffer("lamb", &s[0])?, tensor::gpu::buffer("lamb", &s[1])?);
            kernels::gpu::ops::lamb(gb, wb, mb, vb, g.lr, &h, !g.no_trust_ratio).map_err(device_err)?;
        }
        // the update direction u, one buffer for every tensor of the step (the kernel writes
        // all of it, so only growth is zeroed)
        let mut direction: Vec<f32> = Vec::new();
        for_each_param(&self.groups, &mut self.slots, 2, |g, w, grad, s, _| {
            let (m, v) = s.split_at_mut(1);
            let (m, v) = (&mut m[0], &mut v[0]);
            direction.resize(w.len(), 0.0);
            let u = &mut direction[..];
            let h = AdamStep { weight_decay: g.weight_decay, ..step_constants };
            // Pass 1, in chunks (threaded for large tensors): the Adam moments, the update
            // direction u = m_hat / (sqrt(v_hat) + eps) + wd * w, and per-chunk sums of w^2 and
            // u^2 (added in chunk order afterwards, so the result does not depend on threads).
            // One vectorised kernel does all of it per chunk (kernels::optim).
            type Chunk<'a> = (((&'a mut [f32], &'a mut [f32]), &'a mut [f32]), (&'a [f32], &'a [f32]));
            // one chunk of (m, v, u) to write and (grad, w) to read
            let moments =
                |(((m, v), u), (grad, w)): Chunk| optim_kernels::lamb_direction(&h, LambSlices { grad, w, m, v, u });
            let sums: Vec<(f64, f64)> = if w.len() >= PARALLEL_MIN && kernels::parallel::num_threads() > 1 {
                kernels::parallel::install(|| {
                    m.par_chunks_mut(CHUNK)
                        .zip(v.par_chunks_mut(CHUNK))
                        .zip(u.par_chunks_mut(CHUNK))
                        .zip(grad.par_chunks(CHUNK).zip(w.par_chunks(CHUNK)))
                        .map(moments)
                        .collect()
                })
            } else {
                m.chunks_mut(CHUNK)
                    .zip(v.chunks_mut(CHUNK))
                    .zip(u.chunks_mut(CHUNK))
                    .zip(grad.chunks(CHUNK).zip(w.chunks(CHUNK)))
                    .map(moments)
                    .collect()
            };
            let (w_norm, u_norm) = sums.iter().fold((0.0f64, 0.0f64), |a, b| (a.0 + b.0, a.1 + b.1));
            let (w_norm, u_norm) = (w_norm.sqrt(), u_norm.sqrt());
            // Pass 2: the trust ratio ||w|| / ||u|| scales the step of each tensor (1 when either
            // norm is zero, and for groups that opt out: biases, norms, the temperature).
            let ratio = if !g.no_trust_ratio && w_norm > 0.0 && u_norm > 0.0 { (w_norm / u_norm) as f32 } else { 1.0 };
            let step = g.lr * ratio;
            let apply = |(w, u): (&mut [f32], &[f32])| w.iter_mut().zip(u).for_each(|(w, &u)| *w -= step * u);
            if w.len() >= PARALLEL_MIN && kernels::parallel::num_threads() > 1 {
                kernels::parallel::install(|| w.par_chunks_mut(CHUNK).zip(u.par_chunks(CHUNK)).for_each(apply));
            } else {
                w.chunks_mut(CHUNK).zip(u.chunks(CHUNK)).for_each(apply);
            }
        })
    }
}

/// Tensors at least this large are updated by several threads.
const PARALLEL_MIN: usize = 1 << 15;
/// Elements per chunk of a threaded update (fixed, so sums are grouped the same way always).
const CHUNK: usize = 1 << 13;

/// Scales all gradients so their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: coefficient max_norm / (norm + 1e-6) when below 1). Returns the norm
/// before clipping.
pub fn clip_grad_norm(params: &[(String, Var)], max_norm: f32) -> f32 {
    let grads: Vec<(&Var, Tensor)> = params.iter().filter_map(|(_, p)| p.grad().map(|g| (p, g))).collect();
    let sum_sq = |g: &Tensor| -> f64 {
        let g = g.contiguous();
        let g = g.as_contiguous_slice().expect("contiguous");
        // fixed chunks summed in order: the norm does not depend on the number of threads
        let chunks: Vec<f64> = if g.len() >= PARALLEL_MIN && kernels::parallel::num_threads() > 1 {
            kernels::parallel::install(|| g.par_chunks(CHUNK).map(optim_kernels::sum_squares_f64).collect())
        } else {
            g.chunks(CHUNK).map(optim_kernels::sum_squares_f64).collect()
        };
        chunks.iter().sum::<f64>()
    };
    let total = if grads.iter().any(|(_, g)| g.device().is_gpu()) {
        // one device scalar summed over the tensors, read back once
        let mut acc: Option<Tensor> = None;
        for (_, g) in &grads {
            let axes: Vec<usize> = (0..g.rank()).collect();
            let part = g.square().sum(&axes, false).expect("axes in range");
            acc = Some(match acc {
                Some(a) => a.add(&part).expect("same device"),
                None => part,
            });
        }
        acc.map_or(0.0, |a| a.item().expect("one value").sqrt())
    } else {
        grads.iter().map(|(_, g)| sum_sq(g)).sum::<f64>().sqrt() as f32
    };
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for (p, g) in grads {
            p.set_grad(Some(g.mul_scalar(coef)));
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_grad(values: &[f32], grad: &[f32]) -> Var {
        let p = Var::parameter(Tensor::from_vec(values.to_vec(), &[values.len()]).unwrap());
        p.set_grad(Some(Tensor::from_vec(grad.to_vec(), &[grad.len()]).unwrap()));
        p
    }

    #[test]
    fn clip_grad_norm_scales_every_gradient_by_the_global_norm() {
        // gradients (3, 4) and (12): global norm 13
        let a = with_grad(&[1.0, 1.0], &[3.0, 4.0]);
        let b = with_grad(&[1.0], &[12.0]);
        let no_grad = Var::parameter(Tensor::from_vec(vec![5.0], &[1]).unwrap());
        let params =
            vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone()), ("c".to_string(), no_grad.clone())];
        let norm = clip_grad_norm(&params, 6.5);
        assert!((norm - 13.0).abs() < 1e-6, "returns the norm before clipping: {norm}");
        let scale = 6.5 / (13.0 + 1e-6);
        let got: Vec<f32> = a.grad().unwrap().to_vec().into_iter().chain(b.grad().unwrap().to_vec()).collect();
        let want = [3.0 * scale, 4.0 * scale, 12.0 * scale];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert!(no_grad.grad().is_none(), "a parameter without a gradient stays without one");
        // under the bound nothing changes, and the norm is still reported
        let norm = clip_grad_norm(&params, 100.0);
        assert!((norm - 6.5).abs() < 1e-5);
        assert_eq!(a.grad().unwrap().to_vec(), vec![3.0 * scale, 4.0 * scale]);
    }

    #[test]
    fn clip_grad_norm_is_exact_for_long_gradients_across_chunks() {
        // 300,000 elements of 0.5: norm sqrt(75,000), over the threaded chunked path
        let n = 300_000;
        let p = with_grad(&vec![0.0; n], &vec![0.5; n]);
        let norm = clip_grad_norm(&[("p".to_string(), p.clone())], 1.0);
        assert!((norm as f64 - (n as f64 * 0.25).sqrt()).abs() < 1e-3, "{norm}");
        let g = p.grad().unwrap().to_vec();
        let after: f64 = g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        assert!((after - 1.0).abs() < 1e-5, "clipped to the bound: {after}");
    }
}
