//! Differentiable ops. Each file holds a family of ops: forward, backward (as the closure or
//! struct handed to [`Var::from_op`](crate::Var::from_op)) and tests, side by side.

pub mod attention;
pub mod contrastive;
pub mod conv;
pub mod dropout;
pub mod elementwise;
#[cfg(feature = "wgpu")]
mod gpu;
pub mod matmul;
pub mod norm;
pub mod packed_weights;
pub mod reduce;
pub mod shape;
pub mod softmax;

use tensor::{Result, Tensor};

/// `Some(f())` when the gradient is wanted, else `None` (and `f` is not run).
pub(crate) fn maybe(need: bool, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    if need {
        f().map(Some)
    } else {
        Ok(None)
    }
}
