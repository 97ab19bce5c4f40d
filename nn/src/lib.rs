//! # nn: what a model definition and a training loop need, except the models
//!
//! Modules with named parameters, layers, initialisers, optimisers, schedules and checkpoints.
//! Parameter names follow PyTorch's state_dict convention so checkpoints interoperate.

pub mod init;
