//! # align: the ALIGN dual encoder and everything around it
//!
//! EfficientNet image tower, BERT text tower, the contrastive loss, data pipeline, training,
//! evaluation and search (Jia et al., ICML 2021). The `align` binary is the
//! command-line front end.

pub mod bert;
pub mod cli;
pub mod data;
pub mod demo;
pub mod dist;
pub mod efficientnet;
pub mod error;
pub mod eval;
pub mod fuzz;
pub mod hf_align;
pub mod images;
pub mod index;
pub mod mnist;
pub mod model;
pub mod report;
pub mod resample;
pub mod retrieval;
pub mod serve;
pub mod towers;
pub mod train;
pub mod vit;
