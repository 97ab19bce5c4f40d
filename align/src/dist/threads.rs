//! An in-process backend: N ranks as threads that exchange through shared memory.
//!
//! Every collective is one exchange: each rank posts its vector into its slot, waits for the
//! others, and reads all slots. Sums are taken in rank order in f64 and rounded once, so every
//! rank computes the same bits. It has no failure handling (a rank that stops calling
//! collectives blocks the others): it exists for tests and for reading, not for production.

use std::sync::{Arc, Barrier, Mutex};

use super::Backend;

struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f64>>>,
}

pub struct Member {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

/// The `n` members of one group, rank 0 first.
pub fn group(n: usize) -> Vec<Member> {
    let shared = Arc::new(Shared { barrier: Barrier::new(n), slots: Mutex::new(vec![Vec::new(); n]) });
    (0..n).map(|rank| Member { rank, size: n, shared: shared.clone() }).collect()
}

impl Member {
    /// Posts `mine`, returns every rank's vector in rank order.
    fn exchange(&self, mine: Vec<f64>) -> Vec<Vec<f64>> {
        self.shared.slots.lock().expect("slots")[self.rank] = mine;
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().expect("slots").clone();
        // nobody posts the next collective before everyone has read this one
        self.shared.barrier.wait();
        all
    }

    fn sum(&self, buf: &[f64]) -> Vec<f64> {
        let all = self.exchange(buf.to_vec());
        let mut total = vec![0.0f64; buf.len()];
        for v in &all {
            assert_eq!(v.len(), total.len(), "all-reduce: ranks passed different lengths");
            total.iter_mut().zip(v).for_each(|(t, x)| *t += x);
        }
        total
    }
}

impl Backend for Member {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum_f32(&mut self, buf: &mut [f32]) {
        let wide: Vec<f64> = buf.iter().map(|&v| v as f64).collect();
        for (b, s) in buf.iter_mut().zip(self.sum(&wide)) {
            *b = s as f32;
        }
    }

    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) {
        let total = self.sum(buf);
        buf.copy_from_slice(&total);
    }

    fn all_gather_f32(&mut self, local: &[f32], counts: &[usize]) -> Vec<f32> {
        let all = self.exchange(local.iter().map(|&v| v as f64).collect());
        for (r, v) in all.iter().enumerate() {
            assert_eq!(v.len(), counts[r], "all-gather: rank {r} passed a length other than announced");
        }
        all.into_iter().flatten().map(|v| v as f32).collect()
    }

    fn all_gather_u64(&mut self, value: u64) -> Vec<u64> {
        // counts and hashes: split into two exact 32-bit halves
        let all = self.exchange(vec![(value >> 32) as f64, (value & 0xFFFF_FFFF) as f64]);
        all.iter().map(|v| ((v[0] as u64) << 32) | v[1] as u64).collect()
    }
}
