//! Errors of the application layer: data files and records, run configuration, the training
//! loop, files on disk. Problems inside the engine (a shape that does not fit, a malformed
//! checkpoint entry) stay [`TensorError`]s and pass through unchanged.
//!
//! Every variant names what it concerns (the file and record, the setting, the step), so a user
//! can act on the message without a debugger.

use std::path::PathBuf;

use tensor::TensorError;

#[derive(Debug, thiserror::Error)]
pub enum AlignError {
    /// A data file, or one record in it (a manifest line, a shard member, a labelled row).
    #[error("{}{}: {msg}", file.display(), record.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Data { file: PathBuf, record: Option<String>, msg: String },

    /// A setting that names something unknown or asks for something impossible.
    #[error("{setting}: {msg}")]
    Config { setting: &'static str, msg: String },

    /// The training loop cannot go on (a non-finite loss, too little data, a worker that died).
    #[error("training{}: {msg}", step.map(|s| format!(" at step {s}")).unwrap_or_default())]
    Training { step: Option<u64>, msg: String },

    /// The operating system refused a file operation.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// An engine error: tensor shapes, autograd, checkpoint contents.
    #[error(transparent)]
    Tensor(#[from] TensorError),

    /// A vocabulary that cannot be read or used (the message names the file).
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
}

pub type Result<T, E = AlignError> = std::result::Result<T, E>;

impl AlignError {
    pub fn data(file: impl Into<PathBuf>, msg: impl Into<String>) -> AlignError {
        AlignError::Data { file: file.into(), record: None, msg: msg.into() }
    }

    pub fn config(setting: &'static str, msg: impl Into<String>) -> AlignError {
        AlignError::Config { setting, msg: msg.into() }
    }

    pub fn training(step: Option<u64>, msg: impl Into<String>) -> AlignError {
        AlignError::Training { step, msg: msg.into() }
    }
}

/// `map_err(io_error(path))`: an I/O error that names its file.
pub fn io_error(path: &std::path::Path) -> impl Fn(std::io::Error) -> AlignError + '_ {
    move |source| AlignError::Io { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_they_concern() {
        let e = AlignError::Data { file: "pairs.tsv".into(), record: Some("line 7".into()), msg: "no tab".into() };
        assert_eq!(e.to_string(), "pairs.tsv (line 7): no tab");
        assert_eq!(AlignError::config("--image-tower", "unknown 'b9'").to_string(), "--image-tower: unknown 'b9'");
        assert_eq!(AlignError::training(Some(12), "loss is NaN").to_string(), "training at step 12: loss is NaN");
        let io = io_error(std::path::Path::new("x/y"))(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(io.to_string().starts_with("x/y: "), "{io}");
    }
}
