//! The run's one checkpoint file, `checkpoint.safetensors`: model, optimiser, step and the
//! data order (see `batches.rs`), with the run's configuration in the metadata so evaluation
//! rebuilds the same model. Written atomically (a temporary file renamed into place), so a
//! crash never leaves a half-written checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nn::checkpoint::{load_checkpoint, save_checkpoint, TrainState};
use nn::optim::Optimizer;

use crate::error::Result;
use crate::model::DualEncoder;
use crate::train::batches::Batches;
use crate::train::TrainConfig;

pub struct RunCheckpoint {
    pub path: PathBuf,
    metadata: BTreeMap<String, String>,
}

impl RunCheckpoint {
    pub fn new(out_dir: &Path, cfg: &TrainConfig) -> RunCheckpoint {
        let metadata = BTreeMap::from([("config".to_string(), serde_json::to_string(cfg).expect("json"))]);
        RunCheckpoint { path: out_dir.join("checkpoint.safetensors"), metadata }
    }

    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Saves the state after `step` completed steps. A failed write (a full disk, a file-size
    /// limit) leaves the previous checkpoint as it was, and the error says so.
    pub fn save(&self, model: &DualEncoder, opt: &dyn Optimizer, step: u64, batches: &Batches) -> Result<()> {
        let (rng, data) = batches.state();
        save_checkpoint(&self.path, model, opt, &TrainState { step, rng, data }, &self.metadata).map_err(|e| {
            let kept =
                if self.path.exists() { "the previous checkpoint is intact" } else { "no checkpoint was written" };
            crate::error::AlignError::training(
                Some(step),
                format!("writing the checkpoint {} failed ({kept}): {e}", self.path.display()),
            )
        })
    }

    /// Loads model, optimiser and data order; returns the number of completed steps.
    pub fn restore(&self, model: &DualEncoder, opt: &mut dyn Optimizer, batches: &mut Batches) -> Result<u64> {
        let resume = load_checkpoint(&self.path, model, opt)?;
        batches.restore(resume.state.rng, &resume.state.data)?;
        Ok(resume.state.step)
    }
}
