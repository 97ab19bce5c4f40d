//! Timing helper shared by the comparison programs (`examples/*_bench.rs`): one warm-up call,
//! then the median of `runs` timed calls, in milliseconds. Not used by any test: speed lives in
//! benches and comparison programs only.

use std::time::Instant;

pub fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}
