//! # tensor: n-dimensional f32 tensors
//!
//! A [`Tensor`] is shared storage plus a [`Layout`] (shape, strides in elements, offset).
//! Views (reshape, permute, transpose, narrow / slice, broadcast_to, squeeze / unsqueeze) only
//! rewrite the layout; ops that compute values call the kernels in `kernels` and return new
//! contiguous tensors. Fallible operations return [`Result`] with an error that names the op and
//! the shapes involved; bad input never panics.
//!
//! ```
//! use tensor::Tensor;
//! let a = Tensor::arange(0.0, 6.0, 1.0)?.reshape(&[2, 3])?;   // (2, 3)
//! let b = Tensor::from_vec(vec![10.0, 20.0, 30.0], &[3])?;     // (3,) broadcasts over rows
//! let c = a.add(&b)?.t()?;                                      // (3, 2) view, no copy
//! assert_eq!(c.to_vec(), vec![10.0, 13.0, 21.0, 24.0, 32.0, 35.0]);
//! assert_eq!(c.sum(&[1], false)?.to_vec(), vec![23.0, 45.0, 67.0]);
//! # Ok::<(), tensor::TensorError>(())
//! ```
//!
//! Checkpoints: [`io::safetensors`] reads (memory-mapped, validated) and writes (atomically)
//! the safetensors format.
//!
//! What this crate is not: an autograd engine (see `autograd`) or a place for fast kernels
//! (see `kernels`).

mod device;
pub mod error;
#[cfg(feature = "wgpu")]
pub mod gpu;
mod index;
pub mod io;
pub mod layout;
mod linalg;
mod ops;
pub mod random;
mod reduce;
pub mod storage;
#[allow(clippy::module_inception)]
mod tensor;
pub mod tolerance;

pub use device::{same_device, Device};
pub use error::{Result, TensorError};
pub use layout::{broadcast_shapes, Layout};
pub use random::Rng;
pub use storage::{live_buffers, live_bytes, recycled_vec};
pub use tensor::{strides_for, Tensor};
pub use tolerance::Tolerance;
