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

/// A/B in one process: one warm-up call of each, then `runs` rounds of `a` then `b`; the
/// medians in milliseconds. Alternating call by call cancels the host's slow drifts, which
/// separate runs of two programs do not.
pub fn alternating_median_ms(runs: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    a();
    b();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        let s = Instant::now();
        a();
        ta.push(s.elapsed().as_secs_f64() * 1e3);
        let s = Instant::now();
        b();
        tb.push(s.elapsed().as_secs_f64() * 1e3);
    }
    ta.sort_by(|x, y| x.total_cmp(y));
    tb.sort_by(|x, y| x.total_cmp(y));
    (ta[ta.len() / 2], tb[tb.len() / 2])
}
