//! Exact top-k over a large embedding index, against the time the machine needs just to read
//! the index once.
//!
//!     cargo run --release -p kernels --example topk_bench -- [--rows 1000000] [--dim 256] [--k 10] [--threads N]
//!
//! Builds a random index of unit-norm rows in bf16 (1,000,000 x 256 = 512 MB by default), then,
//! alternating in one sitting: a read-only pass that sums the index's 16-bit values on every
//! thread (the bandwidth floor: no kernel that looks at every byte can beat it), and
//! `kernels::topk::top_k_dot` for 1 and for 16 queries. Prints the median of each, the
//! bandwidths, and the ratio of top-k time to read time (1.0 = as fast as memory allows).

use kernels::bf16::bf16;
use kernels::timing::alternating_median_ms;
use kernels::topk::{top_k_dot, IndexRows};
use rayon::prelude::*;

fn unit_rows(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    let mut v: Vec<f32> = (0..rows * dim)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    for r in v.chunks_exact_mut(dim) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|x| *x /= n);
    }
    v
}

/// Sums every 16-bit value of the index on all kernel threads, wrapping (the result is printed,
/// so the pass cannot be optimised away; the compiler vectorises the sum to full-width adds).
fn read_once(index: &[bf16]) -> u16 {
    kernels::parallel::install(|| {
        index
            .par_chunks(1 << 17)
            .map(|c| c.iter().fold(0u16, |a, w| a.wrapping_add(w.to_bits())))
            .reduce(|| 0, u16::wrapping_add)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|s| s.parse::<usize>().ok())
    };
    let rows = get("--rows").unwrap_or(1_000_000);
    let dim = get("--dim").unwrap_or(256);
    let k = get("--k").unwrap_or(10);
    let runs = get("--runs").unwrap_or(11);
    if let Some(t) = get("--threads") {
        kernels::parallel::set_num_threads(t);
    }
    eprintln!("building a {rows} x {dim} bf16 index ...");
    let mut index: Vec<bf16> = Vec::with_capacity(rows * dim);
    for chunk in (0..rows).step_by(65_536) {
        let n = (rows - chunk).min(65_536);
        index.extend(kernels::bf16::to_bf16_vec(&unit_rows(n, dim, chunk as u64 + 1)));
    }
    let bytes = std::mem::size_of_val(index.as_slice()) as f64;
    let queries = unit_rows(16, dim, 0xC0FFEE);
    println!(
        "index {rows} x {dim} bf16 = {:.0} MB, {} threads, {}",
        bytes / 1e6,
        kernels::parallel::num_threads(),
        kernels::Isa::best().name()
    );
    let mut sink = 0u16;
    for batch in [1usize, 16] {
        let q = &queries[..batch * dim];
        let mut found = 0usize;
        let (t_read, t_topk) = alternating_median_ms(
            runs,
            || sink = sink.wrapping_add(read_once(&index)),
            || found += top_k_dot(IndexRows::Bf16(&index), dim, q, k).iter().map(Vec::len).sum::<usize>(),
        );
        assert_eq!(found % (batch * k.min(rows)), 0);
        println!(
            "top-{k} x {batch:>2} queries: {t_topk:8.2} ms ({:5.1} GB/s, {:6.0} queries/s) | read once: {t_read:8.2} ms ({:5.1} GB/s) | ratio {:.2}",
            bytes / t_topk / 1e6,
            batch as f64 * 1e3 / t_topk,
            bytes / t_read / 1e6,
            t_topk / t_read
        );
    }
    eprintln!("(checksum {sink:x})");
}
