//! # autograd: reverse-mode differentiation over tensor ops
//!
//! Being filled by the autograd issue. For now: the numerical half of the gradient checker.

pub mod numeric;
