//! The image features of a locked image tower, computed once (LiT).
//!
//! A locked tower (`lock_image`) never changes, and without augmentation its features for a
//! training image never change either: each image is decoded, centre-cropped and run through the
//! tower once, and every later step reads its row. Steps then cost only the text tower. The rows
//! live in `image_features.safetensors` in the run directory, memory-mapped when read (the file
//! is written atomically and reused by `--resume` when it describes the same tower, images and
//! resolution); images that cannot be decoded are marked and their pairs skipped.
//!
//! In a data-parallel run every rank computes every N-th chunk, one all-reduce sums the
//! disjoint parts into the whole table on every rank, and rank 0 writes the file. A resumed
//! run reuses the file only when every rank finds it valid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nn::Ctx;
use tensor::io::safetensors::{save_f32, SafeTensors};
use tensor::Tensor;

use crate::data::{image_batch_at, Pair};
use crate::dist::Comm;
use crate::error::{AlignError, Result};
use crate::model::DualEncoder;
use crate::train::TrainConfig;

/// Images per forward pass while the cache is built.
const CHUNK: usize = 64;

/// Unnormalised image-tower features of every training pair, and which images decoded.
pub struct FeatureCache {
    /// (pairs, D), memory-mapped.
    features: Tensor,
    /// 1 where the pair's image decoded.
    usable: Vec<bool>,
    dim: usize,
    pub path: PathBuf,
}

/// What the cache was computed from: a cache with other metadata is rebuilt.
fn identity(cfg: &TrainConfig, pairs: &[Pair]) -> BTreeMap<String, String> {
    // FNV-1a over the pairs' identities (scene index, file, shard member)
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in pairs {
        let key = format!(
            "{}|{:?}|{:?}",
            p.index,
            p.file,
            p.member.as_ref().map(|m| (m.shard.as_ref().clone(), m.offset, m.len))
        );
        for b in key.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    BTreeMap::from([
        ("image_arch".to_string(), cfg.image_arch.clone()),
        ("image_init".to_string(), cfg.image_init.clone()),
        ("resolution".to_string(), cfg.resolution.to_string()),
        ("seed".to_string(), cfg.seed.to_string()),
        ("pairs".to_string(), format!("{} {h:016x}", pairs.len())),
    ])
}

impl FeatureCache {
    /// Opens the run's cache if it matches, else computes it with `model`'s image tower,
    /// reporting progress through `progress` (a line rewritten in place). Every rank of `comm`
    /// calls it together.
    pub fn build_or_open(
        cfg: &TrainConfig,
        out_dir: &Path,
        pairs: &[Pair],
        model: &DualEncoder,
        comm: &Comm,
        progress: &dyn Fn(String),
    ) -> Result<FeatureCache> {
        let path = out_dir.join("image_features.safetensors");
        let meta = identity(cfg, pairs);
        let existing = SafeTensors::open(&path).ok().filter(|st| st.metadata() == &meta);
        // every rank must be able to reuse the file, or all of them rebuild it
        let mut missing = [existing.is_none() as u8 as f64];
        if comm.size() > 1 {
            comm.all_reduce_f64(crate::dist::purpose::CONTROL, &mut missing)?;
        }
        if let (Some(st), 0.0) = (existing, missing[0]) {
            return Self::from_file(st, path);
        }
        let (rank, ranks) = (comm.rank(), comm.size());
        let dim = model.image.feature_dim();
        // rows this rank does not compute stay 0, so the sum over ranks is the whole table
        let mut features = vec![0.0f32; pairs.len() * dim];
        let mut usable = vec![0.0f32; pairs.len()];
        let started = Instant::now();
        for (c, chunk) in pairs.chunks(CHUNK).enumerate().filter(|(c, _)| c % ranks == rank) {
            let first = c * CHUNK;
            let refs: Vec<&Pair> = chunk.iter().collect();
            // evaluation preprocessing: the centre crop, no flip
            let (images, ok, _corrupt) = image_batch_at(cfg.seed, &refs, cfg.resolution, false, 0, first)?;
            if !ok.is_empty() {
                let rows =
                    autograd::no_grad(|| model.image.features(&autograd::Var::constant(images), &mut Ctx::eval()))?
                        .value()
                        .to_vec();
                for (r, &k) in ok.iter().enumerate() {
                    let i = first + k;
                    features[i * dim..(i + 1) * dim].copy_from_slice(&rows[r * dim..(r + 1) * dim]);
                    usable[i] = 1.0;
                }
            }
            // this rank's chunks done, as a share of all images (every rank moves at one pace)
            let done = ((c / ranks + 1) * CHUNK * ranks).min(pairs.len());
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            progress(format!(
                "caching image features: {done}/{} ({rate:.0} images/s, ETA {:.0}s)",
                pairs.len(),
                (pairs.len() - done) as f64 / rate.max(1e-9)
            ));
        }
        if ranks > 1 {
            features = comm.all_reduce(crate::dist::purpose::FEATURE_CACHE, features)?;
            usable = comm.all_reduce(crate::dist::purpose::FEATURE_CACHE, usable)?;
        }
        // rows of images that did not decode are never read; NaN makes a stray read loud
        for (i, &u) in usable.iter().enumerate() {
            if u < 0.5 {
                features[i * dim..(i + 1) * dim].fill(f32::NAN);
            }
        }
        let features = Tensor::from_vec(features, &[pairs.len(), dim])?;
        let usable = Tensor::from_vec(usable, &[pairs.len()])?;
        if comm.is_root() {
            save_f32(&path, &[("features", &features), ("usable", &usable)], &meta)?;
            return Self::from_file(SafeTensors::open(&path)?, path);
        }
        // the other ranks keep the same table in memory (the run directory may be rank 0's only)
        let usable = usable.to_vec().iter().map(|&u| u > 0.5).collect();
        Ok(FeatureCache { features, usable, dim, path })
    }

    fn from_file(st: SafeTensors, path: PathBuf) -> Result<FeatureCache> {
        let features = st.tensor("features")?;
        let usable: Vec<bool> = st.tensor("usable")?.to_vec().iter().map(|&u| u > 0.5).collect();
        if features.rank() != 2 || features.shape()[0] != usable.len() {
            return Err(AlignError::data(&path, "features and usable flags disagree"));
        }
        let dim = features.shape()[1];
        Ok(FeatureCache { features, usable, dim, path })
    }

    /// Whether pair `i`'s image decoded.
    pub fn usable(&self, i: usize) -> bool {
        self.usable.get(i).copied().unwrap_or(false)
    }

    /// The cached rows of `pairs`: (pairs.len(), D).
    pub fn rows(&self, pairs: &[usize]) -> Result<Tensor> {
        let all = self.features.as_contiguous_slice().ok_or_else(|| AlignError::data(&self.path, "not contiguous"))?;
        let d = self.dim;
        let mut out = Vec::with_capacity(pairs.len() * d);
        for &i in pairs {
            out.extend_from_slice(&all[i * d..(i + 1) * d]);
        }
        Ok(Tensor::from_vec(out, &[pairs.len(), d])?)
    }
}
