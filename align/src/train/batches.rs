//! The order in which training pairs are seen, and the images of the next batch prepared while
//! the current one trains.
//!
//! [`EpochSampler`] shuffles the pairs at the start of each epoch and walks through them; each
//! batch also draws two seeds, one for its crops and flips and one for its dropout and
//! drop-connect. Everything the data order depends on (the random stream, this epoch's order,
//! the cursor in it) is in [`EpochSampler::state`], which the checkpoint stores: a resumed run
//! draws exactly the batches the uninterrupted run would have drawn.
//!
//! [`Batches`] keeps one batch in flight: its images are decoded and augmented on a worker
//! thread while the current step computes. That prefetched batch has already been drawn, so
//! the checkpoint stores it as well ([`Batches::state`]) and a resumed run starts with it.
//!
//! Data-parallel runs: every rank draws the same global batch (the sampler's stream is a
//! function of the seed alone) and decodes only its share, positions
//! [rank * G / N, (rank + 1) * G / N) of the G drawn pairs; each image's augmentation depends
//! on its position in the global batch. So the global batch of step s is the same whatever N,
//! and N ranks with batch n train on exactly the batches of one process with batch N * n.

use std::collections::BTreeMap;
use std::thread::JoinHandle;

use tensor::{Rng, Tensor};

use crate::data::{image_batch_at, Pair};
use crate::error::{AlignError, Result};

/// One batch as drawn: which pairs, and its two seeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draw {
    pub indices: Vec<usize>,
    /// Random crops and flips of the images.
    pub crop_seed: u64,
    /// Dropout and drop-connect of the forward pass.
    pub ctx_seed: u64,
}

/// Epochs of a shuffled order over `n` pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochSampler {
    rng: Rng,
    order: Vec<usize>,
    /// Next position in `order`; `order.len()` means the epoch is used up.
    cursor: usize,
    batch_size: usize,
}

impl EpochSampler {
    pub fn new(n: usize, batch_size: usize, seed: u64) -> EpochSampler {
        // the cursor starts at the end, so the first draw shuffles
        EpochSampler { rng: Rng::new(seed ^ 0xDA7A), order: (0..n).collect(), cursor: n, batch_size: batch_size.min(n) }
    }

    /// The next batch; an epoch boundary inside a batch reshuffles and carries on.
    pub fn draw(&mut self) -> Draw {
        let mut indices = Vec::with_capacity(self.batch_size);
        while indices.len() < self.batch_size {
            if self.cursor == self.order.len() {
                // shuffles the previous epoch's order in place: the stream of orders is a
                // function of the seed alone
                self.rng.shuffle(&mut self.order);
                self.cursor = 0;
            }
            indices.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        let crop_seed = self.rng.next_u64();
        let ctx_seed = self.rng.next_u64();
        Draw { indices, crop_seed, ctx_seed }
    }

    /// (random stream, {"order": epoch order, "cursor": [position]}) for a checkpoint.
    pub fn state(&self) -> (Rng, BTreeMap<String, Vec<i64>>) {
        let order = self.order.iter().map(|&i| i as i64).collect();
        (self.rng.clone(), BTreeMap::from([("order".into(), order), ("cursor".into(), vec![self.cursor as i64])]))
    }

    /// Restores [`EpochSampler::state`]. The order must be a permutation of this data's pairs:
    /// a checkpoint of other data is refused rather than silently reinterpreted.
    pub fn restore(&mut self, rng: Rng, state: &BTreeMap<String, Vec<i64>>) -> Result<()> {
        let bad = |msg: String| AlignError::training(None, format!("checkpoint data order: {msg}"));
        let order = state.get("order").ok_or_else(|| {
            bad("missing (the checkpoint was written by an older align and cannot resume exactly)".into())
        })?;
        let cursor = state.get("cursor").and_then(|c| c.first().copied()).ok_or_else(|| bad("no cursor".into()))?;
        let n = self.order.len();
        if order.len() != n {
            return Err(bad(format!(
                "covers {} pairs, this data has {n}: resume with the data the run trained on",
                order.len()
            )));
        }
        let mut seen = vec![false; n];
        for &i in order {
            if i < 0 || i as usize >= n || std::mem::replace(&mut seen[i as usize], true) {
                return Err(bad(format!("not a permutation of 0..{n}")));
            }
        }
        if cursor < 0 || cursor as usize > n {
            return Err(bad(format!("cursor {cursor} outside 0..={n}")));
        }
        self.order = order.iter().map(|&i| i as usize).collect();
        self.cursor = cursor as usize;
        self.rng = rng;
        Ok(())
    }
}

/// A batch ready to train on: decoded images and the captions of the pairs that decoded.
pub struct Batch {
    /// (N', res, res, 3) in [-1, 1] (empty when the run reads cached image features)
    pub images: Tensor,
    pub texts: Vec<String>,
    /// The training-pair index of each row.
    pub pairs: Vec<usize>,
    /// Cached features of a locked image tower, (N', D), used instead of `images`.
    pub features: Option<Tensor>,
    pub ctx_seed: u64,
    /// Images that failed to decode (counted, not fatal).
    pub corrupt: usize,
}

type Decoded = Result<(Tensor, Vec<usize>, usize), tensor::TensorError>;
/// A drawn batch and the worker decoding its images (it hands the pairs back with them).
type InFlight = (Draw, JoinHandle<(Vec<Pair>, Decoded)>);

/// The sampler plus one batch decoding on a worker thread.
pub struct Batches<'a> {
    pairs: &'a [Pair],
    sampler: EpochSampler,
    /// The prefetched batch: its draw (saved in checkpoints) and the worker decoding it.
    pending: Option<InFlight>,
    seed: u64,
    resolution: usize,
    /// (rank, ranks): which share of each drawn batch this process decodes.
    shard: (usize, usize),
    /// False when the run reads cached image features: the worker decodes nothing.
    decode: bool,
}

impl<'a> Batches<'a> {
    /// Batches of `batch_size` pairs (the global batch: all ranks' shares together).
    pub fn new(pairs: &'a [Pair], batch_size: usize, resolution: usize, seed: u64) -> Batches<'a> {
        Batches {
            pairs,
            sampler: EpochSampler::new(pairs.len(), batch_size, seed),
            pending: None,
            seed,
            resolution,
            shard: (0, 1),
            decode: true,
        }
    }

    /// Draws batches without decoding their images (a locked image tower's cached features
    /// stand in for them).
    pub fn without_images(mut self) -> Batches<'a> {
        self.decode = false;
        self
    }

    /// This process decodes only share `rank` of `ranks` of every batch.
    pub fn sharded(mut self, rank: usize, ranks: usize) -> Batches<'a> {
        self.shard = (rank, ranks.max(1));
        self
    }

    /// Positions of this rank's share in a drawn batch of `n` pairs.
    fn share(&self, n: usize) -> std::ops::Range<usize> {
        let (rank, ranks) = self.shard;
        rank * n / ranks..(rank + 1) * n / ranks
    }

    fn start(&self, draw: Draw) -> InFlight {
        let share = self.share(draw.indices.len());
        let first = share.start;
        let batch: Vec<Pair> = draw.indices[share].iter().map(|&i| self.pairs[i].clone()).collect();
        let (seed, resolution, crop_seed, decode) = (self.seed, self.resolution, draw.crop_seed, self.decode);
        // the worker hands the pairs back with their images (no second copy of the pairs)
        let worker = std::thread::spawn(move || {
            if !decode {
                let all = (0..batch.len()).collect();
                return (batch, Ok((Tensor::zeros(&[0]), all, 0)));
            }
            let refs: Vec<&Pair> = batch.iter().collect();
            let decoded = image_batch_at(seed, &refs, resolution, true, crop_seed, first);
            (batch, decoded)
        });
        (draw, worker)
    }

    /// The next batch. With `prefetch_next`, the batch after it starts decoding before this
    /// returns (the caller passes false on the last step, so no batch is drawn for nothing).
    pub fn next(&mut self, prefetch_next: bool) -> Result<Batch> {
        let (draw, worker) = match self.pending.take() {
            Some(p) => p,
            None => {
                let d = self.sampler.draw();
                self.start(d)
            }
        };
        if prefetch_next {
            let d = self.sampler.draw();
            self.pending = Some(self.start(d));
        }
        let (pairs, decoded) = worker.join().map_err(|_| AlignError::training(None, "the data worker panicked"))?;
        let (images, ok, corrupt) = decoded?;
        let texts = ok.iter().map(|&i| pairs[i].text.clone()).collect();
        let first = self.share(draw.indices.len()).start;
        let indices = ok.iter().map(|&i| draw.indices[first + i]).collect();
        Ok(Batch { images, texts, pairs: indices, features: None, ctx_seed: draw.ctx_seed, corrupt })
    }

    /// Everything the batches still to come depend on: the sampler's state and, when a batch
    /// is in flight, its draw as `pending` = [crop seed, dropout seed, indices...].
    pub fn state(&self) -> (Rng, BTreeMap<String, Vec<i64>>) {
        let (rng, mut state) = self.sampler.state();
        if let Some((d, _)) = &self.pending {
            let mut v = vec![d.crop_seed as i64, d.ctx_seed as i64];
            v.extend(d.indices.iter().map(|&i| i as i64));
            state.insert("pending".into(), v);
        }
        (rng, state)
    }

    /// Restores [`Batches::state`]; a saved in-flight batch starts decoding again.
    pub fn restore(&mut self, rng: Rng, state: &BTreeMap<String, Vec<i64>>) -> Result<()> {
        self.sampler.restore(rng, state)?;
        self.pending = None;
        if let Some(v) = state.get("pending") {
            let n = self.pairs.len();
            if v.len() < 2 || v[2..].iter().any(|&i| i < 0 || i as usize >= n) {
                return Err(AlignError::training(None, "checkpoint's pending batch does not fit this data"));
            }
            let draw = Draw {
                crop_seed: v[0] as u64,
                ctx_seed: v[1] as u64,
                indices: v[2..].iter().map(|&i| i as usize).collect(),
            };
            self.pending = Some(self.start(draw));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_sampler_continues_the_same_stream_across_epochs() {
        let mut straight = EpochSampler::new(10, 4, 3);
        let first: Vec<Draw> = (0..4).map(|_| straight.draw()).collect();
        let (rng, state) = straight.state();
        let rest: Vec<Draw> = (0..6).map(|_| straight.draw()).collect();
        let mut resumed = EpochSampler::new(10, 4, 99);
        resumed.restore(rng, &state).unwrap();
        let again: Vec<Draw> = (0..6).map(|_| resumed.draw()).collect();
        assert_eq!(rest, again);
        // every epoch covers every pair once: the first 10 indices drawn are a permutation
        let mut seen: Vec<usize> = first.iter().flat_map(|d| d.indices.clone()).take(10).collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_restore_refuses_an_order_of_other_data() {
        let (rng, state) = EpochSampler::new(10, 4, 3).state();
        let e = EpochSampler::new(11, 4, 3).restore(rng.clone(), &state).unwrap_err().to_string();
        assert!(e.contains("covers 10 pairs, this data has 11"), "{e}");
        let mut dup = state.clone();
        dup.get_mut("order").unwrap()[0] = 1;
        assert!(EpochSampler::new(10, 4, 3).restore(rng, &dup).unwrap_err().to_string().contains("permutation"));
    }
}
