//! Multi-head self-attention on a fused Q|K|V buffer, forward and backward, one (batch, head)
//! pair per task.
//!
//! Follows "Attention Is All You Need" (scaled dot-product attention) and BERT's use of it: for
//! each sequence b and head h,
//!
//! ```text
//! S  = Q K^T                        (T, T)  the raw scores
//! P  = softmax(scale * S + mask_b)  row-wise; mask_b is 0 for real keys, -1e9 for padding
//! P' = P * D                        optional attention dropout (D holds 0 or 1 / (1 - p))
//! O  = P' V                         (T, dh) written straight into the (B*T, heads*dh) output
//! ```
//!
//! Q, K and V are column blocks of one (B*T, 3*H) buffer, the output of a single fused
//! projection GEMM, and every operand is read through GEMM strides: no head split, no permute,
//! no copy. Only P is saved for the backward (with D when dropout is on):
//!
//! ```text
//! dP' = dO V^T,  dV = P'^T dO,  dP = dP' * D,
//! dS  = scale * P * (dP - rowsum(dP * P)),
//! dQ  = dS K,    dK = dS^T Q.
//! ```
//!
//! Each task writes a disjoint set of output columns, so tasks run in parallel without locks;
//! inside a task the small GEMMs and the row softmax run on one thread. The plain-loop
//! reference ([`attention_forward_reference`], [`attention_backward_reference`]) sits beside the
//! fast path and the tests compare the two.

use rayon::prelude::*;

use crate::gemm::{sgemm_raw, GemmStrides};
use crate::parallel;
use crate::parallel::SharedPtr;
use crate::simd::Isa;
use crate::softmax;

/// Sizes of one attention call. `hidden = heads * head_dim`; the fused input has `3 * hidden`
/// columns laid out [Q | K | V], each head's slice `h * head_dim ..` within its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Elements of the fused input (B*T, 3H).
    pub fn qkv_len(&self) -> usize {
        self.batch * self.seq * 3 * self.hidden()
    }
    /// Elements of the output (B*T, H).
    pub fn out_len(&self) -> usize {
        self.batch * self.seq * self.hidden()
    }
    /// Elements of the saved probabilities (B, heads, T, T).
    pub fn probs_len(&self) -> usize {
        self.batch * self.heads * self.seq * self.seq
    }
    fn check(&self, qkv: usize, mask: Option<&[f32]>, drop: Option<&[f32]>, probs: usize) {
        assert_eq!(qkv, self.qkv_len(), "attention: qkv must be (B*T, 3*H)");
        assert_eq!(probs, self.probs_len(), "attention: probs must be (B, heads, T, T)");
        assert!(mask.is_none_or(|m| m.len() == self.batch * self.seq), "attention: mask must be (B, T)");
        assert!(drop.is_none_or(|d| d.len() == self.probs_len()), "attention: dropout must be (B, heads, T, T)");
    }
}

/// Runs `task(b, h, scratch)` for every (batch, head) pair, in parallel when there is more than
/// one thread; `scratch` holds `scratch_len` floats private to the running task.
fn for_each_head(shape: AttentionShape, scratch_len: usize, task: impl Fn(usize, usize, &mut [f32]) + Sync) {
    let tasks = shape.batch * shape.heads;
    let threads = parallel::num_threads();
    let run = |range: std::ops::Range<usize>| {
        let mut scratch = vec![0.0f32; scratch_len];
        for i in range {
            task(i / shape.heads, i % shape.heads, &mut scratch);
        }
    };
    if threads <= 1 || tasks < 2 {
        run(0..tasks);
        return;
    }
    // a few blocks per thread so one slow core does not hold up the rest
    let blocks = (threads * 4).min(tasks);
    parallel::install(|| {
        (0..blocks).into_par_iter().for_each(|j| run(tasks * j / blocks..tasks * (j + 1) / blocks));
    });
}

/// Forward. `qkv` (B*T, 3H); `additive_mask` (B, T) added to every query row's scores (0 keeps a
/// key, -1e9 drops it); `dropout` (B, heads, T, T) multipliers applied after the softmax;
/// writes `probs` (B, heads, T, T), the softmax output before dropout, and `out` (B*T, H).
pub fn attention_forward(
    shape: AttentionShape,
    qkv: &[f32],
    additive_mask: Option<&[f32]>,
    dropout: Option<&[f32]>,
    scale: f32,
    probs: &mut [f32],
    out: &mut [f32],
) {
    shape.check(qkv.len(), additive_mask, dropout, probs.len());
    assert_eq!(out.len(), shape.out_len(), "attention: out must be (B*T, H)");
    let AttentionShape { seq: t, heads, head_dim: dh, .. } = shape;
    let h3 = 3 * shape.hidden();
    let hidden = shape.hidden();
    let isa = Isa::best().supported();
    let (probs_ptr, out_ptr) = (SharedPtr(probs.as_mut_ptr()), SharedPtr(out.as_mut_ptr()));
    // scratch: S (T, T), then P' (T, T) when dropout is on
    for_each_head(shape, 2 * t * t, |b, h, scratch| {
        let (probs_ptr, out_ptr) = (probs_ptr, out_ptr);
        let (scores, dropped) = scratch.split_at_mut(t * t);
        let q = qkv[b * t * h3 + h * dh..].as_ptr();
        let task = b * heads + h;
        // SAFETY: probs block `task` and the output columns h*dh.. of rows b*T.. belong to this
        // task alone; every GEMM stays inside the extents asserted by `check` (a (T, dh) block
        // with row stride 3H starting inside row b*T of qkv ends inside row b*T + T - 1).
        unsafe {
            let p = std::slice::from_raw_parts_mut(probs_ptr.0.add(task * t * t), t * t);
            // S = Q K^T: (T, dh) x (dh, T), K^T read through transposed strides
            let s_qk = GemmStrides { a_row: h3, a_col: 1, b_row: 1, b_col: h3, c_row: t, c_col: 1 };
            sgemm_raw(isa, 1, t, dh, t, 1.0, q, q.add(hidden), 0.0, scores.as_mut_ptr(), s_qk);
            let mask = additive_mask.map(|m| &m[b * t..(b + 1) * t]);
            softmax::softmax_rows_serial(isa, scores, p, t, scale, mask);
            let p_used: &[f32] = match dropout {
                Some(d) => {
                    let d = &d[task * t * t..(task + 1) * t * t];
                    dropped.iter_mut().zip(p.iter().zip(d)).for_each(|(o, (&pv, &dv))| *o = pv * dv);
                    dropped
                }
                None => p,
            };
            // O = P' V: (T, T) x (T, dh), into columns h*dh.. of the (B*T, H) output
            let s_pv = GemmStrides { a_row: t, a_col: 1, b_row: h3, b_col: 1, c_row: hidden, c_col: 1 };
            let o = out_ptr.0.add(b * t * hidden + h * dh);
            sgemm_raw(isa, 1, t, t, dh, 1.0, p_used.as_ptr(), q.add(2 * hidden), 0.0, o, s_pv);
        }
    });
}

/// Backward. Given the forward's `qkv`, `probs`, `dropout` and `scale`, and the output gradient
/// `d_out` (B*T, H), writes every element of `d_qkv` (B*T, 3H).
pub fn attention_backward(
    shape: AttentionShape,
    qkv: &[f32],
    probs: &[f32],
    dropout: Option<&[f32]>,
    scale: f32,
    d_out: &[f32],
    d_qkv: &mut [f32],
) {
    shape.check(qkv.len(), None, dropout, probs.len());
    assert_eq!(d_out.len(), shape.out_len(), "attention: d_out must be (B*T, H)");
    assert_eq!(d_qkv.len(), shape.qkv_len(), "attention: d_qkv must be (B*T, 3H)");
    let AttentionShape { seq: t, heads, head_dim: dh, .. } = shape;
    let (hidden, h3) = (shape.hidden(), 3 * shape.hidden());
    let isa = Isa::best().supported();
    let dqkv_ptr = SharedPtr(d_qkv.as_mut_ptr());
    // scratch: dP (T, T) and a second (T, T) for P' and then dS
    for_each_head(shape, 2 * t * t, |b, h, scratch| {
        let d_qkv_base = dqkv_ptr; // the whole SharedPtr, not its raw field
        let (d_probs, second) = scratch.split_at_mut(t * t);
        let task = b * heads + h;
        let p = &probs[task * t * t..(task + 1) * t * t];
        let drop = dropout.map(|d| &d[task * t * t..(task + 1) * t * t]);
        let q = qkv[b * t * h3 + h * dh..].as_ptr();
        let (k, v) = (q.wrapping_add(hidden), q.wrapping_add(2 * hidden));
        let d_o = d_out[b * t * hidden + h * dh..].as_ptr();
        // SAFETY: columns h*dh.. of the Q, K and V blocks in rows b*T.. of d_qkv belong to this
        // task alone; extents as in the forward.
        unsafe {
            let dq = d_qkv_base.0.add(b * t * h3 + h * dh);
            let (dk, dv) = (dq.add(hidden), dq.add(2 * hidden));
            // dP' = dO V^T: (T, dh) x (dh, T)
            let s_dov = GemmStrides { a_row: hidden, a_col: 1, b_row: 1, b_col: h3, c_row: t, c_col: 1 };
            sgemm_raw(isa, 1, t, dh, t, 1.0, d_o, v, 0.0, d_probs.as_mut_ptr(), s_dov);
            // dV = P'^T dO: (T, T) x (T, dh), P' read transposed
            let p_used: &[f32] = match drop {
                Some(d) => {
                    second.iter_mut().zip(p.iter().zip(d)).for_each(|(o, (&pv, &dv))| *o = pv * dv);
                    d_probs.iter_mut().zip(d).for_each(|(g, &dv)| *g *= dv); // dP = dP' * D
                    second
                }
                None => p,
            };
            let s_pdo = GemmStrides { a_row: 1, a_col: t, b_row: hidden, b_col: 1, c_row: h3, c_col: 1 };
            sgemm_raw(isa, 1, t, t, dh, 1.0, p_used.as_ptr(), d_o, 0.0, dv, s_pdo);
            // dS = scale * P * (dP - rowsum(dP * P)), into the second scratch (P' is done)
            let d_scores = &mut *second;
            softmax::softmax_backward_rows_serial(isa, p, d_probs, d_scores, t, scale);
            // dQ = dS K: (T, T) x (T, dh)
            let s_dsk = GemmStrides { a_row: t, a_col: 1, b_row: h3, b_col: 1, c_row: h3, c_col: 1 };
            sgemm_raw(isa, 1, t, t, dh, 1.0, d_scores.as_ptr(), k, 0.0, dq, s_dsk);
            // dK = dS^T Q: (T, T) x (T, dh), dS read transposed
            let s_dsq = GemmStrides { a_row: 1, a_col: t, b_row: h3, b_col: 1, c_row: h3, c_col: 1 };
            sgemm_raw(isa, 1, t, t, dh, 1.0, d_scores.as_ptr(), q, 0.0, dk, s_dsq);
        }
    });
}

/// Plain-loop forward (f64 accumulation), the reference for [`attention_forward`].
pub fn attention_forward_reference(
    shape: AttentionShape,
    qkv: &[f32],
    additive_mask: Option<&[f32]>,
    dropout: Option<&[f32]>,
    scale: f32,
    probs: &mut [f32],
    out: &mut [f32],
) {
    shape.check(qkv.len(), additive_mask, dropout, probs.len());
    let AttentionShape { batch, seq: t, heads, head_dim: dh } = shape;
    let (hidden, h3) = (shape.hidden(), 3 * shape.hidden());
    let at = |b: usize, i: usize, col: usize| qkv[(b * t + i) * h3 + col] as f64;
    for b in 0..batch {
        for h in 0..heads {
            let p = &mut probs[(b * heads + h) * t * t..][..t * t];
            for i in 0..t {
                let logits: Vec<f64> = (0..t)
                    .map(|j| {
                        let dot: f64 = (0..dh).map(|c| at(b, i, h * dh + c) * at(b, j, hidden + h * dh + c)).sum();
                        scale as f64 * dot + additive_mask.map_or(0.0, |m| m[b * t + j] as f64)
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = logits.iter().map(|&l| (l - max).exp()).sum();
                for j in 0..t {
                    p[i * t + j] = ((logits[j] - max).exp() / sum) as f32;
                }
            }
            for i in 0..t {
                for c in 0..dh {
                    let acc: f64 = (0..t)
                        .map(|j| {
                            let d = dropout.map_or(1.0, |d| d[(b * heads + h) * t * t + i * t + j] as f64);
                            p[i * t + j] as f64 * d * at(b, j, 2 * hidden + h * dh + c)
                        })
                        .sum();
                    out[(b * t + i) * hidden + h * dh + c] = acc as f32;
                }
            }
        }
    }
}

/// Plain-loop backward (f64 accumulation), the reference for [`attention_backward`].
pub fn attention_backward_reference(
    shape: AttentionShape,
    qkv: &[f32],
    probs: &[f32],
    dropout: Option<&[f32]>,
    scale: f32,
    d_out: &[f32],
    d_qkv: &mut [f32],
) {
    let AttentionShape { batch, seq: t, heads, head_dim: dh } = shape;
    let (hidden, h3) = (shape.hidden(), 3 * shape.hidden());
    let at = |b: usize, i: usize, col: usize| qkv[(b * t + i) * h3 + col] as f64;
    for b in 0..batch {
        for h in 0..heads {
            let base = (b * heads + h) * t * t;
            let p = |i: usize, j: usize| probs[base + i * t + j] as f64;
            let d = |i: usize, j: usize| dropout.map_or(1.0, |d| d[base + i * t + j] as f64);
            let go = |i: usize, c: usize| d_out[(b * t + i) * hidden + h * dh + c] as f64;
            // dP (after undoing dropout) and dS
            let mut d_scores = vec![0.0f64; t * t];
            for i in 0..t {
                let dp: Vec<f64> = (0..t)
                    .map(|j| d(i, j) * (0..dh).map(|c| go(i, c) * at(b, j, 2 * hidden + h * dh + c)).sum::<f64>())
                    .collect();
                let dot: f64 = (0..t).map(|j| dp[j] * p(i, j)).sum();
                for j in 0..t {
                    d_scores[i * t + j] = scale as f64 * p(i, j) * (dp[j] - dot);
                }
            }
            for j in 0..t {
                for c in 0..dh {
                    let dv: f64 = (0..t).map(|i| p(i, j) * d(i, j) * go(i, c)).sum();
                    let dq: f64 = (0..t).map(|i| d_scores[j * t + i] * at(b, i, hidden + h * dh + c)).sum();
                    let dk: f64 = (0..t).map(|i| d_scores[i * t + j] * at(b, i, h * dh + c)).sum();
                    let row = (b * t + j) * h3 + h * dh + c;
                    d_qkv[row] = dq as f32;
                    d_qkv[row + hidden] = dk as f32;
                    d_qkv[row + 2 * hidden] = dv as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn fast_attention_matches_the_reference_with_padding_and_dropout_on_odd_sizes() {
        // odd sequence lengths and head sizes exercise the GEMM edge tiles
        for (batch, seq, heads, head_dim) in [(1, 1, 1, 1), (2, 7, 3, 5), (3, 17, 2, 16), (2, 33, 4, 8), (1, 65, 2, 32)]
        {
            let shape = AttentionShape { batch, seq, heads, head_dim };
            let qkv = lcg(1, shape.qkv_len(), -1.0, 1.0);
            // the last sequence has its final third padded
            let mask: Vec<f32> = (0..batch * seq)
                .map(|i| if i / seq == batch - 1 && i % seq >= seq - seq / 3 { -1e9 } else { 0.0 })
                .collect();
            let drop: Vec<f32> =
                lcg(2, shape.probs_len(), 0.0, 1.0).iter().map(|&u| if u < 0.2 { 0.0 } else { 1.25 }).collect();
            let d_out = lcg(3, shape.out_len(), -1.0, 1.0);
            let scale = 1.0 / (head_dim as f32).sqrt();
            for with_drop in [false, true] {
                let dropout = with_drop.then_some(drop.as_slice());
                let (mut p_fast, mut o_fast) = (vec![0.0; shape.probs_len()], vec![0.0; shape.out_len()]);
                let (mut p_ref, mut o_ref) = (vec![0.0; shape.probs_len()], vec![0.0; shape.out_len()]);
                attention_forward(shape, &qkv, Some(&mask), dropout, scale, &mut p_fast, &mut o_fast);
                attention_forward_reference(shape, &qkv, Some(&mask), dropout, scale, &mut p_ref, &mut o_ref);
                assert!(max_abs_diff(&p_fast, &p_ref) < 1e-5, "probs {shape:?}");
                assert!(max_abs_diff(&o_fast, &o_ref) < 1e-5, "out {shape:?}");
                // padded keys get exactly zero weight
                let last = batch - 1;
                for h in 0..heads {
                    for i in 0..seq {
                        for j in seq - seq / 3..seq {
                            assert_eq!(p_fast[((last * heads + h) * seq + i) * seq + j], 0.0);
                        }
                    }
                }
                let (mut g_fast, mut g_ref) = (vec![f32::NAN; shape.qkv_len()], vec![0.0; shape.qkv_len()]);
                attention_backward(shape, &qkv, &p_fast, dropout, scale, &d_out, &mut g_fast);
                attention_backward_reference(shape, &qkv, &p_ref, dropout, scale, &d_out, &mut g_ref);
                assert!(max_abs_diff(&g_fast, &g_ref) < 1e-5, "d_qkv {shape:?} dropout {with_drop}");
            }
        }
    }
}
