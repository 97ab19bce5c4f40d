//! # kernels: raw slices in, raw slices out
//!
//! The bottom layer of the engine. Nothing here knows about tensors: every kernel takes plain
//! `&[f32]` / `&mut [f32]` buffers plus sizes and strides (in elements), so it can be read,
//! tested and benchmarked on its own.
//!
//! Conventions (`docs/conventions.md`):
//! - every optimised kernel has a plain scalar reference beside it, and tests compare the two;
//! - threading goes through [`parallel`], one place that decides how many threads a kernel may use,
//!   so a run can be made single-threaded and bitwise deterministic.
//!
//! What this crate deliberately is not: a tensor library. Shapes, broadcasting and views live in
//! `tensor`.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod activation;
pub mod attention;
pub mod batchnorm;
pub mod bf16;
pub mod conv;
pub mod gemm;
#[cfg(feature = "wgpu")]
pub mod gpu;
pub mod memory;
pub mod norm;
pub mod optim;
pub mod parallel;
pub mod pooling;
pub mod reduce;
pub mod simd;
pub mod softmax;
#[cfg(test)]
mod test_data;
pub mod timing;
pub mod topk;
pub mod vec;
pub mod vmath;

pub use conv::{ConvGeometry, Padding};
pub use gemm::{gemm_reference, sgemm, sgemm_batched, sgemm_bias, sgemm_bias_with, sgemm_with, GemmStrides};
pub use simd::Isa;
