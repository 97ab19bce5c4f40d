//! Modules: named parameters and buffers in a tree whose dotted names follow PyTorch's
//! state_dict convention (`encoder.layer.0.attention.self.query.weight`).
//!
//! A module lists its parameters (trainable `Var` leaves) and buffers (non-trained state such as
//! batch-norm running statistics) under a prefix; containers pass `prefix.child` down. Training
//! versus evaluation behaviour is chosen per forward call through [`Ctx`] (which also carries the
//! RNG for dropout), so a module cannot be left in the wrong mode by accident.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

pub use autograd::Var;
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

/// The forward convention every layer follows: the input, then the context, then a `Result`.
///
/// `ctx` says training or evaluation and carries the random stream for dropout and
/// drop-connect. A layer whose output depends on neither still takes it, so that any layer can
/// stand where another stood (a block of one tower where a block of another was) and a caller
/// never has to know which layers are stochastic. Inputs that are not one tensor (token ids,
/// a padding mask as well as the tensor) get their own clearly named method beside it.
pub trait Forward {
    fn forward(&self, x: &Var, ctx: &mut Ctx) -> Result<Var>;
}

/// Non-trained state shared between a module and whoever saves it.
#[derive(Clone)]
pub struct Buffer(Arc<RwLock<Tensor>>);

thread_local! {
    /// While [`track_created`] runs: every buffer created on this thread.
    static CREATED_BUFFERS: std::cell::RefCell<Option<Vec<Buffer>>> = const { std::cell::RefCell::new(None) };
}

impl Buffer {
    pub fn new(t: Tensor) -> Buffer {
        let b = Buffer(Arc::new(RwLock::new(t)));
        CREATED_BUFFERS.with(|c| {
            if let Some(list) = c.borrow_mut().as_mut() {
                list.push(b.clone());
            }
        });
        b
    }
    /// Is this the same buffer (not merely equal contents)?
    pub fn same_as(&self, other: &Buffer) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
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

/// What `#[derive(Module)]` asks of every field it lists: a parameter, a buffer, a sub-module,
/// or an `Option` / `Vec` of those, each listing itself under `name`.
pub trait StateField {
    fn field_parameters(&self, name: &str, out: &mut Vec<(String, Var)>);
    fn field_buffers(&self, _name: &str, _out: &mut Vec<(String, Buffer)>) {}
}

impl StateField for Var {
    fn field_parameters(&self, name: &str, out: &mut Vec<(String, Var)>) {
        out.push((name.to_string(), self.clone()));
    }
}

impl StateField for Buffer {
    fn field_parameters(&self, _name: &str, _out: &mut Vec<(String, Var)>) {}
    fn field_buffers(&self, name: &str, out: &mut Vec<(String, Buffer)>) {
        out.push((name.to_string(), self.clone()));
    }
}

impl<T: StateField> StateField for Option<T> {
    fn field_parameters(&self, name: &str, out: &mut Vec<(String, Var)>) {
        if let Some(t) = self {
            t.field_parameters(name, out);
        }
    }
    fn field_buffers(&self, name: &str, out: &mut Vec<(String, Buffer)>) {
        if let Some(t) = self {
            t.field_buffers(name, out);
        }
    }
}

/// Items are named `name.0`, `name.1`, ... (PyTorch's `ModuleList`).
impl<T: StateField> StateField for Vec<T> {
    fn field_parameters(&self, name: &str, out: &mut Vec<(String, Var)>) {
        for (i, t) in self.iter().enumerate() {
            t.field_parameters(&join(name, &i.to_string()), out);
        }
    }
    fn field_buffers(&self, name: &str, out: &mut Vec<(String, Buffer)>) {
        for (i, t) in self.iter().enumerate() {
            t.field_buffers(&join(name, &i.to_string()), out);
        }
    }
}

/// Lists parameters and buffers under PyTorch's dotted names. Derive it
/// (`#[derive(nn::Module)]`) rather than writing it: the derive lists every field, and a field
/// that is neither state nor marked `#[module(skip)]` does not compile.
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

    /// Moves every parameter and buffer to `device` (a copy per tensor not already there).
    /// Gradients are dropped: they belong to the old values.
    fn to_device(&self, device: tensor::Device) -> Result<()> {
        device.check_available()?;
        for (_, p) in self.named_parameters() {
            p.set_value(p.value().to_device(device)?)?;
            p.zero_grad();
        }
        for (_, b) in self.named_buffers() {
            b.set(b.get().to_device(device)?);
        }
        Ok(())
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

/// Runs `build` and returns what it built with every parameter and buffer it created on this
/// thread.
pub fn track_created<M>(build: impl FnOnce() -> M) -> (M, Vec<Var>, Vec<Buffer>) {
    let outer = CREATED_BUFFERS.with(|c| c.borrow_mut().replace(Vec::new()));
    let (module, params) = autograd::track_parameters(build);
    let buffers = CREATED_BUFFERS.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer)).unwrap_or_default();
    CREATED_BUFFERS.with(|c| {
        if let Some(list) = c.borrow_mut().as_mut() {
            list.extend(buffers.iter().cloned());
        }
    });
    (module, params, buffers)
}

/// Checks a module's lists against what it owns: every parameter and buffer that `build`
/// creates must be listed exactly once, under a unique name, and the whole state must survive
/// a safetensors file written from one instance and loaded (strictly) into a second one whose
/// values were overwritten. Returns the first problem found. Every model's tests call this, so
/// a layer that forgets a line in `parameters` or `buffers` (a weight never trained, never
/// saved) fails them.
pub fn check_state_lists<M: Module>(build: impl Fn() -> M) -> std::result::Result<(), String> {
    let (module, params, buffers) = track_created(&build);
    let listed = module.named_parameters();
    let listed_buffers = module.named_buffers();
    for p in &params {
        let n = listed.iter().filter(|(_, q)| q.same_as(p)).count();
        if n != 1 {
            return Err(format!("a parameter of shape {:?} is listed {n} times (want once)", p.shape()));
        }
    }
    for b in &buffers {
        let n = listed_buffers.iter().filter(|(_, c)| c.same_as(b)).count();
        if n != 1 {
            return Err(format!("a buffer of shape {:?} is listed {n} times (want once)", b.get().shape()));
        }
    }
    let mut names: Vec<&String> = listed.iter().map(|(n, _)| n).chain(listed_buffers.iter().map(|(n, _)| n)).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("two tensors share the name '{}'", w[0]));
    }
    // save from `module`, load into a second instance whose values all differ
    let state = module.state_dict();
    let other = build();
    for (i, (_, p)) in other.named_parameters().iter().enumerate() {
        p.set_value(Tensor::full(&p.shape(), i as f32 + 0.5)).map_err(|e| e.to_string())?;
    }
    for (i, (_, b)) in other.named_buffers().iter().enumerate() {
        b.set(Tensor::full(b.get().shape(), -(i as f32) - 0.5));
    }
    let path = std::env::temp_dir().join(format!(
        "align-state-lists-{}-{:?}.safetensors",
        std::process::id(),
        std::thread::current().id()
    ));
    let entries: Vec<(&str, &Tensor)> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tensor::io::safetensors::save_f32(&path, &entries, &BTreeMap::new()).map_err(|e| e.to_string())?;
    let file = tensor::io::safetensors::SafeTensors::open(&path).map_err(|e| e.to_string())?;
    let loaded: BTreeMap<String, Tensor> = file
        .names()
        .map(|n| file.tensor(n).map(|t| (n.to_string(), t)))
        .collect::<Result<_>>()
        .map_err(|e| e.to_string())?;
    drop(file);
    let _ = std::fs::remove_file(&path);
    other.load_state_dict(&loaded, true).map_err(|e| e.to_string())?;
    let reloaded = other.state_dict();
    for (name, want) in &state {
        let got = reloaded.get(name).ok_or_else(|| format!("'{name}' missing after loading"))?;
        if got.to_vec().iter().map(|x| x.to_bits()).ne(want.to_vec().iter().map(|x| x.to_bits())) {
            return Err(format!("'{name}' differs after a save and a load"));
        }
    }
    Ok(())
}
