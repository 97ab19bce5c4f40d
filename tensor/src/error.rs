//! The one error type of the tensor crate. Every variant names what was wrong (the op, the
//! shapes, the file, the tensor) so that a user can fix the input without reading our code.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, TensorError>;

#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    /// Two shapes that NumPy's broadcasting rules cannot combine.
    #[error("{op}: shapes {lhs:?} and {rhs:?} do not broadcast")]
    Broadcast { op: &'static str, lhs: Vec<usize>, rhs: Vec<usize> },

    /// A shape, axis or size argument that does not fit the tensor it is applied to.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    /// An index (into an axis, a vocabulary, a class list) outside its range.
    #[error("{op}: index {index} out of range for size {size}")]
    Index { op: &'static str, index: usize, size: usize },

    /// A tensor on the wrong device for an op (operands on different devices, a GPU tensor
    /// where only the CPU path exists), or a device that cannot be opened.
    #[error("{op}: {msg}")]
    Device { op: &'static str, msg: String },

    /// Misuse of an autograd graph (backward twice, backward from a non-scalar without a gradient).
    #[error("autograd: {0}")]
    Graph(String),

    /// Operating-system error on a file.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A file whose contents are not a valid checkpoint. `tensor` names the entry when known.
    #[error("{file}: {}{msg}", tensor.as_ref().map(|t| format!("tensor '{t}': ")).unwrap_or_default())]
    Format { file: String, tensor: Option<String>, msg: String },
}

impl TensorError {
    pub(crate) fn device(op: &'static str, msg: impl Into<String>) -> Self {
        TensorError::Device { op, msg: msg.into() }
    }

    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        TensorError::Shape { op, msg: msg.into() }
    }
}
