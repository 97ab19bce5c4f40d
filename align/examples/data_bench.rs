//! Throughput of the built-in corpus's image pipeline: scenes drawn at the trainer's resized
//! size, randomly cropped and flipped, as `align train` prepares each batch (64 pairs, 64x64).
//!
//!     cargo run --release -p align --example data_bench -- [--threads 1] [--batches 20]
//!
//! Prints `images/s`: the rate one background thread can feed the trainer. The pipeline runs
//! beside the kernels on the same cores, so every millisecond here is taken from training.

use align::data::{builtin_corpus, image_batch};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let threads: usize = get("--threads").and_then(|s| s.parse().ok()).unwrap_or(1);
    let batches: usize = get("--batches").and_then(|s| s.parse().ok()).unwrap_or(20);
    let (pairs, _, _) = builtin_corpus(0, 4000, 100);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    let batch = 64;
    let start = std::time::Instant::now();
    let mut checksum = 0.0f64;
    pool.install(|| {
        for b in 0..batches {
            let refs: Vec<&_> = (0..batch).map(|i| &pairs[(b * batch + i) % pairs.len()]).collect();
            let images = image_batch(0, &refs, 64, true, b as u64).expect("built-in scenes always render");
            checksum += images.to_vec().iter().map(|&v| v as f64).sum::<f64>();
        }
    });
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{} images in {:.1} ms on {threads} thread(s): {:.0} images/s (checksum {checksum:.3})",
        batches * batch,
        seconds * 1e3,
        (batches * batch) as f64 / seconds
    );
}
