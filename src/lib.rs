//! Root package of the workspace: holds cross-crate integration tests (`tests/`) and criterion
//! benchmarks (`benches/`). It re-exports the member crates for convenience.
pub use {align, autograd, kernels, nn, tensor, tokenizer};
