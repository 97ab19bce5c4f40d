//! Resumable training checkpoints in one safetensors file, written atomically:
//! `model.<name>` (parameters and buffers), `optim.<param>.<slot>` (optimiser moments),
//! `optim.step`, `train.step` (schedule position), `train.rng` (the 256-bit RNG state, as four
//! i64 bit patterns), any further integer state as `train.<name>` (a data order, a cursor), and a
//! user metadata map in the header.
//!
//! Loading validates the whole file against the model and optimiser before changing anything:
//! a truncated file, a missing or mis-shaped tensor, or optimiser state for other parameters is an
//! error naming the entry, and the model and optimiser are left as they were.

use std::collections::BTreeMap;
use std::path::Path;

use tensor::io::safetensors::{save, Dtype, SafeTensors, SaveData};
use tensor::{Result, Rng, Tensor, TensorError};

use crate::module::Module;
use crate::optim::Optimizer;

pub const FORMAT: &str = "align-rs checkpoint v1";

/// Where a run stands, besides its model and optimiser: what a checkpoint must hold for a
/// resumed run to continue exactly as an uninterrupted one would.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState {
    /// Steps completed.
    pub step: u64,
    /// The run's random stream (data order, augmentation and dropout seeds are drawn from it).
    pub rng: Rng,
    /// Further integer state by name (for example an epoch's sample order and its cursor),
    /// saved as `train.<name>`.
    pub data: BTreeMap<String, Vec<i64>>,
}

/// What [`load_checkpoint`] restores besides the model and optimiser.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    pub state: TrainState,
    pub metadata: BTreeMap<String, String>,
}

pub fn save_checkpoint(
    path: impl AsRef<Path>,
    model: &dyn Module,
    optimizer: &dyn Optimizer,
    state: &TrainState,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let model_state: Vec<(String, Tensor)> =
        model.state_dict().into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
    let (optim_step, optim_state) = optimizer.state();
    let optim_state: Vec<(String, Tensor)> = optim_state.into_iter().map(|(n, t)| (format!("optim.{n}"), t)).collect();
    let scalars: [i64; 2] = [optim_step as i64, state.step as i64];
    let rng_bits: Vec<i64> = state.rng.state().iter().map(|&x| x as i64).collect();
    let data_names: Vec<(String, [usize; 1])> =
        state.data.iter().map(|(n, v)| (format!("train.{n}"), [v.len()])).collect();
    for (name, _) in &data_names {
        if matches!(name.as_str(), "train.step" | "train.rng") {
            return Err(TensorError::Format {
                file: path.as_ref().display().to_string(),
                tensor: Some(name.clone()),
                msg: "reserved name for training state".into(),
            });
        }
    }
    let mut entries: Vec<(&str, SaveData)> = vec![];
    for (n, t) in model_state.iter().chain(&optim_state) {
        entries.push((n.as_str(), SaveData::Float(t, Dtype::F32)));
    }
    entries.push(("optim.step", SaveData::I64 { shape: &[], values: &scalars[..1] }));
    entries.push(("train.step", SaveData::I64 { shape: &[], values: &scalars[1..] }));
    entries.push(("train.rng", SaveData::I64 { shape: &[4], values: &rng_bits }));
    for ((name, shape), values) in data_names.iter().zip(state.data.values()) {
        entries.push((name.as_str(), SaveData::I64 { shape, values }));
    }
    let mut meta = metadata.clone();
    meta.insert("format".into(), FORMAT.into());
    save(path, &entries, &meta)
}

pub fn load_checkpoint(path: impl AsRef<Path>, model: &dyn Module, optimizer: &mut dyn Optimizer) -> Result<Resume> {
    load_checkpoint_from(&SafeTensors::open(path.as_ref())?, model, optimizer)
}

/// [`load_checkpoint`] of an opened (or in-memory) safetensors file.
pub fn load_checkpoint_from(st: &SafeTensors, model: &dyn Module, optimizer: &mut dyn Optimizer) -> Result<Resume> {
    let file = st.source().to_string();
    let err = |tensor: &str, msg: &str| TensorError::Format {
        file: file.clone(),
        tensor: Some(tensor.into()),
        msg: msg.into(),
    };
    let scalar = |name: &str| -> Result<i64> {
        let (shape, v) = st.tensor_i64(name).map_err(|_| err(name, "missing or not an integer"))?;
        if !shape.is_empty() || v.len() != 1 {
            return Err(err(name, "expected a scalar"));
        }
        Ok(v[0])
    };
    let optim_step = scalar("optim.step")?;
    let step = scalar("train.step")?;
    let (_, rng_bits) = st.tensor_i64("train.rng").map_err(|_| err("train.rng", "missing"))?;
    if rng_bits.len() != 4 {
        return Err(err("train.rng", "expected 4 values"));
    }
    let mut model_sd = BTreeMap::new();
    let mut optim_sd = BTreeMap::new();
    let mut data = BTreeMap::new();
    for name in st.names() {
        if let Some(n) = name.strip_prefix("model.") {
            model_sd.insert(n.to_string(), st.tensor(name)?);
        } else if let Some(n) = name.strip_prefix("optim.") {
            if n != "step" {
                optim_sd.insert(n.to_string(), st.tensor(name)?);
            }
        } else if let Some(n) = name.strip_prefix("train.") {
            if n != "step" && n != "rng" {
                let (_, values) = st.tensor_i64(name).map_err(|_| err(name, "expected integers"))?;
                data.insert(n.to_string(), values);
            }
        }
    }
    // Validate everything, then apply: a bad checkpoint changes nothing.
    optimizer.check_state(&optim_sd)?;
    model.load_state_dict(&model_sd, true).map_err(|e| match e {
        TensorError::Format { msg, .. } => TensorError::Format { file: file.clone(), tensor: None, msg },
        other => other,
    })?;
    optimizer.set_state(optim_step as u64, &optim_sd)?;
    let mut metadata = st.metadata().clone();
    metadata.remove("format");
    let rng = Rng::from_state([rng_bits[0] as u64, rng_bits[1] as u64, rng_bits[2] as u64, rng_bits[3] as u64]);
    Ok(Resume { state: TrainState { step: step as u64, rng, data }, metadata })
}

/// Loads only the model weights of a training checkpoint (for evaluation and search: no
/// optimiser needed). Returns the checkpoint's metadata (e.g. the run's configuration).
/// The model is validated as a whole first, so a mismatched checkpoint changes nothing.
pub fn load_model(path: impl AsRef<Path>, model: &dyn Module) -> Result<BTreeMap<String, String>> {
    let path = path.as_ref();
    let st = SafeTensors::open(path)?;
    let file = path.display().to_string();
    let mut model_sd = BTreeMap::new();
    for name in st.names() {
        if let Some(n) = name.strip_prefix("model.") {
            model_sd.insert(n.to_string(), st.tensor(name)?);
        }
    }
    model.load_state_dict(&model_sd, true).map_err(|e| match e {
        TensorError::Format { msg, .. } => TensorError::Format { file, tensor: None, msg },
        other => other,
    })?;
    let mut metadata = st.metadata().clone();
    metadata.remove("format");
    Ok(metadata)
}
