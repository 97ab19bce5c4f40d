//! Exact top-k retrieval over an embedding index: for each query q, the k index rows with the
//! largest dot product q · row, best first. This is what `align serve` and `align search` run
//! for every query batch.
//!
//! It is the product S = Q Iᵀ (queries x rows) with a top-k epilogue, computed without ever
//! materialising S. The index is the big operand (1,000,000 x 256 bf16 is 512 MB) and each of
//! its elements is used once per batch of queries, so the work is bound by memory bandwidth,
//! not arithmetic. The general GEMM would first pack the index into panels (reading it and
//! writing a copy) and then write the B x N scores for a separate top-k pass: two to three
//! times the bytes. Here the index streams through once: each tile of [`TILE_ROWS`] rows is
//! loaded into registers (bf16 widened on the way: it is the top half of an f32, so widening
//! is a 16-bit shift) and multiplied against all queries there; a score enters a
//! query's top-k only when it beats the k-th best so far, so after the first few thousand rows
//! the epilogue is one comparison per score.
//!
//! Determinism: every (row, query) score is computed by the same instruction sequence whatever
//! the batch size, the tile a row falls in and the thread that runs it, and hits are ordered by
//! score, then by row. So a query gives the same bits alone or in a batch, on any thread count
//! (for a given instruction set); NaN scores are never hits.
//!
//! [`reference::top_k_dot`] is the scalar definition the fast path is tested against.

use crate::bf16::bf16;
use crate::simd::Isa;
use rayon::prelude::*;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// The rows of an index, row-major (rows x dim), in the dtype they are stored in.
#[derive(Clone, Copy, Debug)]
pub enum IndexRows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl IndexRows<'_> {
    /// Number of stored values (rows x dim).
    pub fn len(&self) -> usize {
        match self {
            IndexRows::F32(v) => v.len(),
            IndexRows::Bf16(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes the index occupies (what one pass over it reads).
    pub fn bytes(&self) -> usize {
        match self {
            IndexRows::F32(v) => std::mem::size_of_val(*v),
            IndexRows::Bf16(v) => std::mem::size_of_val(*v),
        }
    }
}

/// One retrieved row and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub row: usize,
    pub score: f32,
}

impl Hit {
    /// The retrieval order: higher score first, then lower row.
    fn better_than(&self, other: &Hit) -> bool {
        self.score > other.score || (self.score == other.score && self.row < other.row)
    }
}

// The heap keeps the worst kept hit on top, so it is the one a better candidate evicts.
impl Eq for Hit {}
impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Hit {
    fn cmp(&self, other: &Self) -> Ordering {
        // "greater" = worse, so BinaryHeap (a max-heap) has the worst hit at its top
        if self.better_than(other) {
            Ordering::Less
        } else if other.better_than(self) {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    }
}

/// The k best hits seen so far for one query.
#[derive(Clone, Debug)]
struct TopK {
    k: usize,
    heap: BinaryHeap<Hit>,
    /// Scores below this cannot enter (the k-th best score once k hits are kept).
    floor: f32,
}

impl TopK {
    fn new(k: usize) -> TopK {
        TopK { k, heap: BinaryHeap::with_capacity(k + 1), floor: f32::NEG_INFINITY }
    }

    #[inline]
    fn offer(&mut self, row: usize, score: f32) {
        // NaN compares as "not greater or equal", so it never enters
        if self.k == 0 || score.partial_cmp(&self.floor).is_none_or(Ordering::is_lt) {
            return;
        }
        let hit = Hit { row, score };
        if self.heap.len() < self.k {
            self.heap.push(hit);
        } else if hit.better_than(self.heap.peek().expect("k > 0 hits kept")) {
            self.heap.pop();
            self.heap.push(hit);
        } else {
            return;
        }
        if self.heap.len() == self.k {
            self.floor = self.heap.peek().expect("k > 0 hits kept").score;
        }
    }

    fn merge(mut self, other: TopK) -> TopK {
        for h in other.heap {
            self.offer(h.row, h.score);
        }
        self
    }

    fn into_sorted(self) -> Vec<Hit> {
        // ascending by Ord = best first
        self.heap.into_sorted_vec()
    }
}

/// Rows scored per tile (each row vector is loaded once and used for 2 queries at a time).
pub const TILE_ROWS: usize = 8;
/// Rows per parallel task (2 MB of a 256-d bf16 index): enough work to amortise the task and
/// its k-best lists, small enough to balance two to a few dozen threads.
const ROWS_PER_TASK: usize = 4096;

/// For each query (row of `queries`, (b, dim)), the `k` rows of `index` ((n, dim)) with the
/// largest dot product, best first (ties: lower row first). Uses every kernel thread.
///
/// ```
/// use kernels::topk::{top_k_dot, IndexRows};
/// let index = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8]; // three 2-d rows
/// let hits = top_k_dot(IndexRows::F32(&index), 2, &[0.0, 1.0], 2);
/// assert_eq!(hits[0].iter().map(|h| h.row).collect::<Vec<_>>(), [1, 2]);
/// ```
///
/// Panics if `dim` is 0 or does not divide the index or the queries.
pub fn top_k_dot(index: IndexRows<'_>, dim: usize, queries: &[f32], k: usize) -> Vec<Vec<Hit>> {
    top_k_dot_with(Isa::best(), index, dim, queries, k)
}

/// [`top_k_dot`] on a given instruction set (capped at what the CPU supports).
pub fn top_k_dot_with(isa: Isa, index: IndexRows<'_>, dim: usize, queries: &[f32], k: usize) -> Vec<Vec<Hit>> {
    let isa = isa.supported();
    assert!(dim > 0, "top_k_dot: dim must be positive");
    assert!(index.len().is_multiple_of(dim), "top_k_dot: index of {} values is not rows of {dim}", index.len());
    assert!(queries.len().is_multiple_of(dim), "top_k_dot: queries of {} values are not rows of {dim}", queries.len());
    let (rows, batch) = (index.len() / dim, queries.len() / dim);
    if batch == 0 {
        return vec![];
    }
    let k = k.min(rows);
    let tasks: Vec<(usize, usize)> =
        (0..rows).step_by(ROWS_PER_TASK).map(|r| (r, (r + ROWS_PER_TASK).min(rows))).collect();
    let run = |&(start, end): &(usize, usize)| -> Vec<TopK> {
        let mut best = vec![TopK::new(k); batch];
        score_rows(isa, index, dim, start, end, queries, &mut best);
        best
    };
    let merge = |a: Vec<TopK>, b: Vec<TopK>| a.into_iter().zip(b).map(|(x, y)| x.merge(y)).collect::<Vec<_>>();
    let best = crate::parallel::install(|| tasks.par_iter().map(run).reduce(|| vec![TopK::new(k); batch], merge));
    best.into_iter().map(TopK::into_sorted).collect()
}

/// Scores rows `start..end` against every query and offers them to `best` (one per query).
fn score_rows(
    isa: Isa,
    index: IndexRows<'_>,
    dim: usize,
    start: usize,
    end: usize,
    queries: &[f32],
    best: &mut [TopK],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` was capped by `Isa::supported`, so the CPU has AVX-512F; the slices
        // bound every access (rows start..end of `index`, all of `queries`).
        Isa::Avx512 => unsafe { x86::score_rows_avx512(index, dim, start, end, queries, best) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, with AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::score_rows_avx2(index, dim, start, end, queries, best) },
        _ => vector::score_rows::<crate::vec::Scalar>(index, dim, start, end, queries, best),
    }
}

mod vector {
    use super::{IndexRows, TopK, TILE_ROWS};
    use crate::vec::F32Vec;
    use half::bf16;

    /// Queries per register tile: TILE_ROWS x QUERY_TILE = 16 accumulators of AVX-512's 32
    /// registers, plus the tile's 8 row vectors and a query vector. Eight rows in flight rather
    /// than four keep more loads and independent FMA chains going: a single query ran at 0.75
    /// of the read-once bandwidth with 4 x 4 tiles and 0.87 with 8 x 2.
    const QUERY_TILE: usize = 2;

    /// An element type of index rows: f32 read as it is, bf16 widened as it is loaded (exact:
    /// a bf16 is the upper half of an f32, so the products are those of the widened values).
    pub trait Stored: Copy {
        /// V::LANES elements from `p`, as f32.
        ///
        /// # Safety
        /// `p` is valid for V::LANES reads, and the CPU has V's features.
        unsafe fn load<V: F32Vec>(p: *const Self) -> V;
        fn widen(self) -> f32;
    }

    impl Stored for f32 {
        #[inline(always)]
        unsafe fn load<V: F32Vec>(p: *const f32) -> V {
            // SAFETY: the caller's contract.
            unsafe { V::load(p) }
        }
        #[inline(always)]
        fn widen(self) -> f32 {
            self
        }
    }

    impl Stored for bf16 {
        #[inline(always)]
        unsafe fn load<V: F32Vec>(p: *const bf16) -> V {
            // SAFETY: the caller's contract; bf16 is a transparent u16.
            unsafe { V::load_bf16(p.cast::<u16>()) }
        }
        #[inline(always)]
        fn widen(self) -> f32 {
            f32::from_bits((self.to_bits() as u32) << 16)
        }
    }

    /// Dot products of R rows with Q queries, each an independent accumulation over the
    /// vector-width blocks of `dim` in order, reduced, then the leftover elements added in
    /// order: the same instruction sequence for a given (row, query) whatever R and Q are.
    // indexed loops over the register tile read as the maths does (acc[r][q] += x[r] * y[q])
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    fn tile<V: F32Vec, T: Stored, const R: usize, const Q: usize>(
        rows: &[T],
        dim: usize,
        queries: &[f32],
        out: &mut [[f32; Q]; R],
    ) {
        let w = V::LANES;
        let full = dim - dim % w;
        assert!(rows.len() >= R * dim && queries.len() >= Q * dim);
        // SAFETY: `rows` holds R rows and `queries` Q rows of `dim` values (asserted above);
        // every load reads w values starting at i <= full - w within one row. The CPU features
        // of V are those the dispatcher checked.
        unsafe {
            let zero = V::splat(0.0);
            let mut acc = [[zero; Q]; R];
            let mut i = 0;
            while i < full {
                let mut x = [zero; R];
                for r in 0..R {
                    x[r] = T::load::<V>(rows.as_ptr().add(r * dim + i));
                }
                for q in 0..Q {
                    let y = V::load(queries.as_ptr().add(q * dim + i));
                    for r in 0..R {
                        acc[r][q] = x[r].mul_add(y, acc[r][q]);
                    }
                }
                i += w;
            }
            for r in 0..R {
                for q in 0..Q {
                    let mut s = acc[r][q].reduce_sum();
                    for j in full..dim {
                        s += rows[r * dim + j].widen() * queries[q * dim + j];
                    }
                    out[r][q] = s;
                }
            }
        }
    }

    /// Scores `rows` (R rows) against all queries and offers the scores, `first_row` being the
    /// index row of the tile's first row.
    #[inline(always)]
    fn score_tile<V: F32Vec, T: Stored, const R: usize>(
        rows: &[T],
        dim: usize,
        first_row: usize,
        queries: &[f32],
        best: &mut [TopK],
    ) {
        let batch = best.len();
        let mut q0 = 0;
        while q0 < batch {
            let qn = (batch - q0).min(QUERY_TILE);
            let qs = &queries[q0 * dim..(q0 + qn) * dim];
            macro_rules! run {
                ($q:literal) => {{
                    let mut out = [[0.0f32; $q]; R];
                    tile::<V, T, R, $q>(rows, dim, qs, &mut out);
                    for (r, scores) in out.iter().enumerate() {
                        for (q, &s) in scores.iter().enumerate() {
                            best[q0 + q].offer(first_row + r, s);
                        }
                    }
                }};
            }
            match qn {
                2 => run!(2),
                _ => run!(1),
            }
            q0 += qn;
        }
    }

    #[inline(always)]
    fn score_typed<V: F32Vec, T: Stored>(
        index: &[T],
        dim: usize,
        start: usize,
        end: usize,
        queries: &[f32],
        best: &mut [TopK],
    ) {
        let mut r = start;
        while r < end {
            let n = (end - r).min(TILE_ROWS);
            let rows = &index[r * dim..(r + n) * dim];
            if n == TILE_ROWS {
                score_tile::<V, T, TILE_ROWS>(rows, dim, r, queries, best);
            } else {
                for j in 0..n {
                    score_tile::<V, T, 1>(&rows[j * dim..(j + 1) * dim], dim, r + j, queries, best);
                }
            }
            r += n;
        }
    }

    #[inline(always)]
    pub fn score_rows<V: F32Vec>(
        index: IndexRows<'_>,
        dim: usize,
        start: usize,
        end: usize,
        queries: &[f32],
        best: &mut [TopK],
    ) {
        match index {
            IndexRows::F32(v) => score_typed::<V, f32>(v, dim, start, end, queries, best),
            IndexRows::Bf16(v) => score_typed::<V, bf16>(v, dim, start, end, queries, best),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{vector, IndexRows, TopK};
    use crate::vec::x86::{Avx2, Avx512};

    #[target_feature(enable = "avx512f")]
    pub unsafe fn score_rows_avx512(
        index: IndexRows<'_>,
        dim: usize,
        start: usize,
        end: usize,
        queries: &[f32],
        best: &mut [TopK],
    ) {
        vector::score_rows::<Avx512>(index, dim, start, end, queries, best)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn score_rows_avx2(
        index: IndexRows<'_>,
        dim: usize,
        start: usize,
        end: usize,
        queries: &[f32],
        best: &mut [TopK],
    ) {
        vector::score_rows::<Avx2>(index, dim, start, end, queries, best)
    }
}

/// The scalar definition: every score in f64, a full sort, NaN scores dropped.
pub mod reference {
    use super::{Hit, IndexRows};

    /// Same contract as [`super::top_k_dot`].
    pub fn top_k_dot(index: IndexRows<'_>, dim: usize, queries: &[f32], k: usize) -> Vec<Vec<Hit>> {
        let row_value = |i: usize| -> f64 {
            match index {
                IndexRows::F32(v) => v[i] as f64,
                IndexRows::Bf16(v) => v[i].to_f64(),
            }
        };
        let rows = index.len() / dim;
        queries
            .chunks_exact(dim)
            .map(|q| {
                let mut hits: Vec<(usize, f64)> = (0..rows)
                    .map(|r| (r, (0..dim).map(|j| row_value(r * dim + j) * q[j] as f64).sum::<f64>()))
                    .filter(|(_, s)| !s.is_nan())
                    .collect();
                hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                hits.truncate(k);
                hits.into_iter().map(|(row, s)| Hit { row, score: s as f32 }).collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16::to_bf16_vec;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// The fast path's hits are the reference's rows, scores within f32 accumulation error.
    /// Rows whose reference scores tie within that error may swap, so the check compares the
    /// score at each rank and requires every returned row's own score to be right.
    fn check(isa: Isa, index: IndexRows<'_>, dim: usize, queries: &[f32], k: usize) {
        let fast = top_k_dot_with(isa, index, dim, queries, k);
        let slow = reference::top_k_dot(index, dim, queries, index.len() / dim);
        for (qi, (f, s)) in fast.iter().zip(&slow).enumerate() {
            assert_eq!(f.len(), k.min(index.len() / dim), "{isa:?} query {qi}");
            let tol = 1e-5 * dim as f32;
            for (rank, hit) in f.iter().enumerate() {
                assert!(
                    (hit.score - s[rank].score).abs() <= tol,
                    "{isa:?} q{qi} rank {rank}: {hit:?} vs {:?}",
                    s[rank]
                );
                let own = s.iter().find(|h| h.row == hit.row).expect("row exists").score;
                assert!(
                    (hit.score - own).abs() <= tol,
                    "{isa:?} q{qi}: row {} scored {} not {own}",
                    hit.row,
                    hit.score
                );
            }
            assert!(f.windows(2).all(|w| w[0].better_than(&w[1])), "{isa:?}: hits not in order");
        }
    }

    #[test]
    fn matches_the_reference_on_every_isa_dtype_and_awkward_shape() {
        for isa in Isa::available() {
            for &(rows, dim, batch, k) in
                &[(1, 1, 1, 1), (7, 3, 2, 3), (4099, 17, 5, 10), (9000, 64, 9, 25), (33, 256, 1, 40)]
            {
                let index = pseudo_random(rows * dim, rows as u64);
                let queries = pseudo_random(batch * dim, dim as u64 + 7);
                check(isa, IndexRows::F32(&index), dim, &queries, k);
                let index16 = to_bf16_vec(&index);
                check(isa, IndexRows::Bf16(&index16), dim, &queries, k);
            }
        }
    }

    #[test]
    fn a_query_gives_the_same_bits_alone_in_a_batch_and_on_any_thread_count() {
        let (rows, dim) = (10_000, 48);
        let index = to_bf16_vec(&pseudo_random(rows * dim, 3));
        let queries = pseudo_random(7 * dim, 4);
        for isa in Isa::available() {
            let batched = top_k_dot_with(isa, IndexRows::Bf16(&index), dim, &queries, 12);
            for (q, hits) in queries.chunks_exact(dim).zip(&batched) {
                let alone = top_k_dot_with(isa, IndexRows::Bf16(&index), dim, q, 12);
                assert_eq!(&alone[0], hits, "{isa:?}");
                let serial =
                    crate::parallel::install_with(1, || top_k_dot_with(isa, IndexRows::Bf16(&index), dim, q, 12));
                assert_eq!(&serial[0], hits, "{isa:?} on one thread");
            }
        }
    }

    #[test]
    fn ties_go_to_the_lower_row_and_nan_never_scores() {
        // rows 0..6 of a 1-d index: equal scores at rows 1, 3 and 4; NaN at row 2
        let index = [0.5, 2.0, f32::NAN, 2.0, 2.0, -1.0];
        let hits = top_k_dot(IndexRows::F32(&index), 1, &[1.0], 4);
        let rows: Vec<usize> = hits[0].iter().map(|h| h.row).collect();
        assert_eq!(rows, [1, 3, 4, 0]);
        // k larger than the index: every non-NaN row, once
        let all = top_k_dot(IndexRows::F32(&index), 1, &[1.0], 100);
        assert_eq!(all[0].len(), 5);
        assert!(top_k_dot(IndexRows::F32(&index), 1, &[], 3).is_empty());
        assert!(top_k_dot(IndexRows::F32(&index), 1, &[1.0], 0)[0].is_empty());
    }
}
