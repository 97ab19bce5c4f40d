//! # autograd: reverse-mode differentiation over tensor ops
//!
//! [`Var`] wraps a `Tensor` and records, for every op applied to it while some input requires
//! a gradient, a node with the inputs and a backward rule. [`Var::backward`] fills `.grad()` of
//! every leaf that requires one. Ops live in [`ops`], one family per file, each forward next to
//! its backward and its gradient-checker tests; [`gradcheck`] is the checker.
//!
//! ```
//! use autograd::{ops::{elementwise as ew, matmul::matmul, reduce}, Var};
//! use tensor::Tensor;
//! let w = Var::parameter(Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2])?);
//! let x = Var::constant(Tensor::from_vec(vec![1.0, -1.0], &[1, 2])?);
//! let loss = reduce::sum_all(&ew::relu(&matmul(&x, &w)?))?;   // relu(x W) summed
//! loss.backward()?;
//! assert_eq!(w.grad().unwrap().to_vec(), vec![0.0, 0.0, 0.0, 0.0]); // both units are off
//! # Ok::<(), tensor::TensorError>(())
//! ```
//!
//! Design notes: see `var.rs` (graph ownership, freeing, backward-twice) and
//! `docs/architecture.md`.

#![cfg_attr(test, allow(clippy::cloned_ref_to_slice_refs))]

pub mod gradcheck;
pub mod numeric;
pub mod ops;
mod var;

pub use var::{is_grad_enabled, no_grad, profile, track_parameters, Backward, FnBackward, Var};
