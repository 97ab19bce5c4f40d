//! Gradient summation over ranks in buckets, overlapped with backward (PyTorch DDP's scheme).
//!
//! The trainable parameters are grouped, in reverse order of registration (roughly the order in
//! which backward finishes their gradients: the loss end of the model first), into buckets of
//! about [`DEFAULT_BUCKET_BYTES`]. Backward reports each parameter as soon as its gradient is
//! final ([`autograd::Var::backward_with_hook`]); a bucket whose parameters are all final is
//! flattened and its all-reduce starts on the communication thread while backward goes on.
//! Buckets start strictly in bucket order, so every rank issues the same collectives in the same
//! order whatever its timing; a parameter that gets no gradient this step holds its bucket back
//! until [`StepReducer::finish`], which starts the rest, waits, and writes the sums back.

use std::collections::HashMap;
use std::ops::Range;

use autograd::Var;
use nn::Buffer;
use tensor::Tensor;

use super::{purpose, Comm, Pending};
use crate::error::Result;

/// Bucket size: large enough that a bucket's fixed cost (one collective) is amortised, small
/// enough that the first buckets start early in backward.
pub const DEFAULT_BUCKET_BYTES: usize = 4 << 20;

/// The trainable parameters in bucket order and the buckets over them.
pub struct GradientBuckets {
    params: Vec<Var>,
    buckets: Vec<Range<usize>>,
    /// Var id -> position in `params`.
    position: HashMap<u64, usize>,
    /// Position in `params` -> bucket.
    bucket_of: Vec<usize>,
}

impl GradientBuckets {
    pub fn new(named: &[(String, Var)], bucket_bytes: usize) -> GradientBuckets {
        let params: Vec<Var> = named.iter().rev().filter(|(_, p)| p.requires_grad()).map(|(_, p)| p.clone()).collect();
        let mut buckets = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, p) in params.iter().enumerate() {
            bytes += 4 * p.value().numel();
            if bytes >= bucket_bytes || i + 1 == params.len() {
                buckets.push(start..i + 1);
                (start, bytes) = (i + 1, 0);
            }
        }
        let mut bucket_of = vec![0; params.len()];
        for (b, r) in buckets.iter().enumerate() {
            bucket_of[r.clone()].iter_mut().for_each(|x| *x = b);
        }
        let position = params.iter().enumerate().map(|(i, p)| (p.id(), i)).collect();
        GradientBuckets { params, buckets, position, bucket_of }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Starts one step's reduction.
    pub fn reducer<'a>(&'a self, comm: &'a Comm) -> StepReducer<'a> {
        StepReducer {
            missing: self.buckets.iter().map(|r| r.len()).collect(),
            ready: vec![false; self.params.len()],
            next: 0,
            in_flight: Vec::new(),
            buckets: self,
            comm,
        }
    }
}

/// One step's gradient reduction, fed by backward's hook.
pub struct StepReducer<'a> {
    buckets: &'a GradientBuckets,
    comm: &'a Comm,
    ready: Vec<bool>,
    /// Parameters of each bucket not yet final.
    missing: Vec<usize>,
    /// The next bucket to start.
    next: usize,
    in_flight: Vec<(usize, Pending<Vec<f32>>)>,
}

impl StepReducer<'_> {
    /// Backward's hook: these variables' gradients are final. Ids of other variables (inputs,
    /// constants) are ignored.
    pub fn mark_ready(&mut self, ids: &[u64]) -> Result<()> {
        for id in ids {
            if let Some(&i) = self.buckets.position.get(id) {
                if !std::mem::replace(&mut self.ready[i], true) {
                    self.missing[self.buckets.bucket_of[i]] -= 1;
                }
            }
        }
        while self.next < self.missing.len() && self.missing[self.next] == 0 {
            self.start(self.next)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Marks every parameter that already holds a gradient (e.g. the temperature, whose
    /// gradient the loss gave before the towers' backward starts).
    pub fn mark_those_with_gradients(&mut self) -> Result<()> {
        let ids: Vec<u64> = self.buckets.params.iter().filter(|p| p.grad().is_some()).map(|p| p.id()).collect();
        self.mark_ready(&ids)
    }

    fn start(&mut self, b: usize) -> Result<()> {
        let range = self.buckets.buckets[b].clone();
        let mut flat = Vec::new();
        for p in &self.buckets.params[range] {
            match p.grad() {
                Some(g) => flat.extend_from_slice(&g.to_vec()),
                None => flat.resize(flat.len() + p.value().numel(), 0.0),
            }
        }
        let pending = self.comm.start_all_reduce(purpose::GRADIENTS, flat)?;
        self.in_flight.push((b, pending));
        Ok(())
    }

    /// Starts the buckets still held back, waits for all, and sets every parameter's gradient
    /// to its sum over ranks.
    pub fn finish(mut self) -> Result<()> {
        for b in self.next..self.missing.len() {
            self.start(b)?;
        }
        for (b, pending) in std::mem::take(&mut self.in_flight) {
            let summed = pending.wait()?;
            let mut at = 0;
            for p in &self.buckets.params[self.buckets.buckets[b].clone()] {
                let n = p.value().numel();
                p.set_grad(Some(Tensor::from_vec(summed[at..at + n].to_vec(), &p.shape())?));
                at += n;
            }
        }
        Ok(())
    }
}

/// Averages batch norm's running statistics over ranks (each rank's differ when batch norm is
/// not synchronised), after every step: the running mean of the ranks' statistics equals the
/// mean of their running means, and every rank holds the same model at all times.
pub fn average_buffers(buffers: &[(String, Buffer)], comm: &Comm) -> Result<()> {
    if comm.size() <= 1 {
        return Ok(());
    }
    let stats: Vec<&Buffer> = buffers
        .iter()
        .filter(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var"))
        .map(|(_, b)| b)
        .collect();
    let mut flat: Vec<f64> = stats.iter().flat_map(|b| b.get().to_vec()).map(|v| v as f64).collect();
    comm.all_reduce_f64(purpose::BATCH_NORM, &mut flat)?;
    let mut at = 0;
    for b in stats {
        let t = b.get();
        let n = t.numel();
        let mean: Vec<f32> = flat[at..at + n].iter().map(|&s| (s / comm.size() as f64) as f32).collect();
        b.set(Tensor::from_vec(mean, t.shape())?);
        at += n;
    }
    Ok(())
}

/// FNV-1a over the bits of every parameter, in order: equal on every rank exactly when the
/// replicas are identical.
pub fn parameter_fingerprint(named: &[(String, Var)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (_, p) in named {
        for v in p.value().to_vec() {
            for byte in v.to_bits().to_le_bytes() {
                h = (h ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    h
}
