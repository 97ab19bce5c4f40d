//! The one place that decides how many threads kernels may use.
//!
//! Kernels ask [`num_threads`] how much parallelism they may use and run their parallel loops
//! through [`install`], which runs on a rayon pool of exactly that size. `set_num_threads(1)`
//! makes every kernel single-threaded, which is what bitwise-reproducible tests use.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

static REQUESTED_THREADS: AtomicUsize = AtomicUsize::new(0); // 0 = "all cores"
type SizedPool = (usize, std::sync::Arc<rayon::ThreadPool>);
static POOL: OnceLock<Mutex<Option<SizedPool>>> = OnceLock::new();

/// Number of threads kernels will use: the value set by [`set_num_threads`], else the number
/// of logical CPUs (or `ALIGN_NUM_THREADS` from the environment when set).
pub fn num_threads() -> usize {
    let n = REQUESTED_THREADS.load(Ordering::Relaxed);
    if n > 0 {
        return n;
    }
    // Read once: `available_parallelism` parses cgroup quota files on Linux (tens of
    // microseconds), and kernels ask for every call, many of them on small inputs.
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    *DEFAULT.get_or_init(|| match std::env::var("ALIGN_NUM_THREADS").ok().and_then(|s| s.parse::<usize>().ok()) {
        Some(n) if n > 0 => n,
        _ => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    })
}

/// Sets the number of threads every kernel may use from now on (0 restores the default).
pub fn set_num_threads(n: usize) {
    REQUESTED_THREADS.store(n, Ordering::Relaxed);
}

fn pool(n: usize) -> std::sync::Arc<rayon::ThreadPool> {
    let cell = POOL.get_or_init(|| Mutex::new(None));
    let mut guard = cell.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((size, pool)) = guard.as_ref() {
        if *size == n {
            return pool.clone();
        }
    }
    let pool = std::sync::Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("align-kernel-{i}"))
            .build()
            .expect("failed to build the kernel thread pool"),
    );
    *guard = Some((n, pool.clone()));
    pool
}

/// Runs `f` inside the kernel thread pool (sized by [`num_threads`]). With one thread the
/// closure runs on the caller's thread and no pool is touched.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    install_with(num_threads(), f)
}

/// Runs `f` inside a pool of exactly `threads` threads.
///
/// One thread means one: `f` runs on a pool of a single worker (or directly, when the caller
/// already is such a worker), so the parallel iterators inside it run sequentially. Running
/// `f` on the caller's thread instead would hand those iterators to rayon's global pool, one
/// thread per core, and a "one thread" kernel would quietly use every core.
pub fn install_with<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    if threads <= 1 {
        if rayon::current_num_threads() == 1 {
            return f();
        }
        static SINGLE: OnceLock<rayon::ThreadPool> = OnceLock::new();
        let single = SINGLE.get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(|_| "align-kernel-single".to_string())
                .build()
                .expect("failed to build the single-thread kernel pool")
        });
        return single.install(f);
    }
    pool(threads).install(f)
}

/// Runs `f(start, chunk)` over consecutive chunks of `out` on the kernel threads, `chunk`
/// starting at element `start`. Chunks hold at least `min_chunk` elements (smaller inputs run
/// on the caller's thread in one piece), so elementwise loops only pay for threads when there
/// is enough work.
pub fn for_each_chunk<T: Send>(out: &mut [T], min_chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    for_each_row_block(out, 1, min_chunk, f)
}

/// [`for_each_chunk`] with every chunk a whole number of rows of `row_len` elements (so
/// `start` is a multiple of `row_len`); `out.len()` must be a multiple of `row_len`.
pub fn for_each_row_block<T: Send>(
    out: &mut [T],
    row_len: usize,
    min_chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let threads = num_threads();
    let len = out.len();
    let row_len = row_len.max(1);
    if threads <= 1 || len < 2 * min_chunk.max(1) || len <= row_len {
        f(0, out);
        return;
    }
    // a few chunks per thread so an unlucky core does not hold everyone up
    let chunk = min_chunk.max(len.div_ceil(threads * 4)).next_multiple_of(row_len);
    install(|| {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i * chunk, c));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_runs_on_a_pool_of_the_requested_size() {
        // explicit sizes: other tests in this binary change the global setting concurrently
        assert_eq!(install_with(2, rayon::current_num_threads), 2);
        assert_eq!(install_with(3, rayon::current_num_threads), 3);
        assert_eq!(install_with(1, || 7), 7);
        // one thread is one, for the parallel iterators inside too (not rayon's global pool)
        assert_eq!(install_with(1, rayon::current_num_threads), 1);
        let workers: std::collections::HashSet<_> = install_with(1, || {
            use rayon::prelude::*;
            (0..64).into_par_iter().map(|_| std::thread::current().id()).collect::<Vec<_>>()
        })
        .into_iter()
        .collect();
        assert_eq!(workers.len(), 1);
    }

    #[test]
    fn for_each_chunk_covers_every_element_once_with_its_offset() {
        for len in [0, 1, 100, 65_537, 300_001] {
            let mut v = vec![0usize; len];
            for_each_chunk(&mut v, 1000, |start, c| {
                for (j, x) in c.iter_mut().enumerate() {
                    *x += start + j + 1;
                }
            });
            assert!(v.iter().enumerate().all(|(i, &x)| x == i + 1), "len {len}");
        }
    }
}

/// A raw pointer into one output buffer that parallel workers share, each writing its own
/// disjoint region (rows of a matrix, images of a batch, tiles of a GEMM). Rust's borrow
/// checker cannot see that the regions are disjoint; the kernel that creates a `SharedPtr`
/// is responsible for it, and says how at the place it splits the work.
#[derive(Clone, Copy)]
pub(crate) struct SharedPtr(pub(crate) *mut f32);
// SAFETY: only ever handed to workers that read shared inputs or write disjoint regions.
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    /// The pointer (a method, so that a closure captures the whole `Send` wrapper rather
    /// than its raw-pointer field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// Row and element blocks for the row kernels (softmax, layer norm, activations)
// ---------------------------------------------------------------------------------------------

/// Below this many elements a kernel stays on the calling thread.
pub(crate) const PARALLEL_MIN: usize = 1 << 15;

/// Runs `f(first_row, rows_out)` over row blocks of `out` (rows of `cols`), in parallel when large.
pub(crate) fn for_row_blocks(out: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if cols == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / cols;
    let threads = num_threads();
    if threads <= 1 || out.len() < PARALLEL_MIN || rows < 2 {
        f(0, out);
        return;
    }
    let rows_per_block = rows.div_ceil(threads * 4).max(1);
    use rayon::prelude::*;
    install(|| {
        out.par_chunks_mut(rows_per_block * cols).enumerate().for_each(|(i, chunk)| f(i * rows_per_block, chunk));
    });
}

/// Elementwise map over (x -> out), in parallel when large.
pub(crate) fn for_elem_blocks(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let threads = num_threads();
    if threads <= 1 || out.len() < PARALLEL_MIN {
        f(0, out);
        return;
    }
    let block = out.len().div_ceil(threads * 4).next_multiple_of(64);
    use rayon::prelude::*;
    install(|| {
        out.par_chunks_mut(block).enumerate().for_each(|(i, chunk)| f(i * block, chunk));
    });
}
