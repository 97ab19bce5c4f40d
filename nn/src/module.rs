//! Modules: named parameters and buffers in a tree whose dotted names follow PyTorch's
//! state_dict convention (`encoder.layer.0.attention.self.query.weight`).
//!
//! A module lists its parameters (trainable `Var` leaves) and buffers (non-trained state such as
//! batch-norm running statistics) under a prefix; containers pass `prefix.child` down. Training
//! versus evaluation behaviour is chosen per forward call through [`Ctx`] (which also carries the
//! RNG for dropout), so a module cannot be left in the wrong mode by accident.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use autograd::Var;
use tensor::{Result, Rng, Tensor, TensorError};

/// Forward-pass context: mode and randomness.
pub struct Ctx {
    pub training: bool,
    pub rng: Rng,
}

impl Ctx {
    pub fn train(seed: u64) -> Ctx {
        Ctx { training: true, rng: Rng::new(seed) }
    }
    pub fn eval() -> Ctx {
        Ctx { training: false, rng: Rng::new(0) }
    }
}

/// Non-trained state shared between a module and whoever saves it.
#[derive(Clone)]
pub struct Buffer(Arc<RwLock<Tensor>>);

impl Buffer {
    pub fn new(t: Tensor) -> Buffer {
        Buffer(Arc::new(RwLock::new(t)))
    }
    pub fn get(&self) -> Tensor {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set(&self, t: Tensor) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = t;
    }
}

/// `prefix.name`, or `name` at the root.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// What [`Module::load_state_dict`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (name, expected shape, found shape)
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = vec![];
        if !self.missing.is_empty() {
            parts.push(format!("missing: {}", self.missing.join(", ")));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected: {}", self.unexpected.join(", ")));
        }
        for (n, want, got) in &self.mismatched {
            parts.push(format!("'{n}' has shape {got:?}, model expects {want:?}"));
        }
        write!(f, "{}", parts.join("; "))
    }
}

pub trait Module {
    /// Appends `(full name, parameter)` for every parameter under `prefix`.
    fn parameters(&self, prefix: &str, out: &mut Vec<(String, Var)>);

    /// Appends `(full name, buffer)` for every buffer under `prefix`.
    fn buffers(&self, _prefix: &str, _out: &mut Vec<(String, Buffer)>) {}

    fn named_parameters(&self) -> Vec<(String, Var)> {
        let mut v = vec![];
        self.parameters("", &mut v);
        v
    }

    fn named_buffers(&self) -> Vec<(String, Buffer)> {
        let mut v = vec![];
        self.buffers("", &mut v);
        v
    }

    /// Number of parameter elements (trainable or frozen).
    fn num_parameters(&self) -> usize {
        self.named_parameters().iter().map(|(_, p)| p.value().numel()).sum()
    }

    /// Freezes (or unfreezes) every parameter whose name starts with `prefix`.
    fn set_frozen(&self, prefix: &str, frozen: bool) -> usize {
        let mut count = 0;
        for (name, p) in self.named_parameters() {
            if name.starts_with(prefix) {
                p.set_requires_grad(!frozen);
                count += 1;
            }
        }
        count
    }

    /// Parameters and buffers by name.
    fn state_dict(&self) -> BTreeMap<String, Tensor> {
        let mut sd = BTreeMap::new();
        for (n, p) in self.named_parameters() {
            sd.insert(n, p.value());
        }
        for (n, b) in self.named_buffers() {
            sd.insert(n, b.get());
        }
        sd
    }

    /// Loads parameters and buffers by name. Checks everything first: with `strict`, any
    /// missing, unexpected or mis-shaped entry is an error naming them all and the model is left
    /// unchanged; without `strict`, matching entries load and the report lists the rest
    /// (mis-shaped entries are still an error: loading them would corrupt the model).
    fn load_state_dict(&self, sd: &BTreeMap<String, Tensor>, strict: bool) -> Result<LoadReport> {
        let params = self.named_parameters();
        let buffers = self.named_buffers();
        let mut report = LoadReport::default();
        let mut known = std::collections::HashSet::new();
        let expected: Vec<(String, Vec<usize>)> = params
            .iter()
            .map(|(n, p)| (n.clone(), p.shape()))
            .chain(buffers.iter().map(|(n, b)| (n.clone(), b.get().shape().to_vec())))
            .collect();
        for (name, shape) in &expected {
            known.insert(name.clone());
            match sd.get(name) {
                None => report.missing.push(name.clone()),
                Some(t) if t.shape() != shape.as_slice() => {
                    report.mismatched.push((name.clone(), shape.clone(), t.shape().to_vec()))
                }
                Some(_) => {}
            }
        }
        report.unexpected = sd.keys().filter(|k| !known.contains(*k)).cloned().collect();
        if !report.mismatched.is_empty() || (strict && !report.is_clean()) {
            return Err(TensorError::Format { file: "state_dict".into(), tensor: None, msg: report.to_string() });
        }
        for (n, p) in &params {
            if let Some(t) = sd.get(n) {
                p.set_value(t.contiguous())?;
            }
        }
        for (n, b) in &buffers {
            if let Some(t) = sd.get(n) {
                b.set(t.contiguous());
            }
        }
        Ok(report)
    }
}
