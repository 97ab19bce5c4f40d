//! # nn: what a model definition and a training loop need, except the models
//!
//! [`Module`] (named parameters and buffers with PyTorch state_dict names), [`Forward`] (the
//! one forward convention: `forward(x, ctx)`), [`layers`],
//! [`init`]ialisers, [`optim`]isers (SGD, AdamW, LAMB) on parameter groups with gradient
//! clipping, [`schedule`]s, and resumable [`checkpoint`]s.
//!
//! ```
//! use autograd::ops::{reduce, softmax};
//! use nn::{layers::Linear, optim::{decay_groups, Lamb, Optimizer}, Ctx, Module};
//! use tensor::{Rng, Tensor};
//! let mut rng = Rng::new(0);
//! let layer = Linear::new(4, 3, true, &mut rng);
//! let mut opt = Lamb::new(decay_groups(layer.named_parameters(), 1e-2, 1e-5));
//! let x = autograd::Var::constant(Tensor::randn(&[8, 4], 0.0, 1.0, 1));
//! let logits = layer.forward(&x, &mut Ctx::train(0))?; // (8, 3)
//! let loss = softmax::cross_entropy(&logits, &[0, 1, 2, 0, 1, 2, 0, 1], 0.1)?;
//! loss.backward()?;
//! opt.step()?;
//! opt.zero_grad();
//! assert_eq!(layer.num_parameters(), 15);
//! # Ok::<(), tensor::TensorError>(())
//! ```

pub mod checkpoint;
pub mod init;
pub mod layers;
pub mod module;
pub mod optim;
pub mod schedule;

pub use module::{Buffer, Ctx, Forward, LoadReport, Module};
/// `#[derive(Module)]`: see `nn_derive`.
pub use nn_derive::Module;

// lets the derive's `::nn::...` paths resolve inside this crate too
extern crate self as nn;
