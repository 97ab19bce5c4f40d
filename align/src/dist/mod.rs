//! Data-parallel training: N workers ("ranks") train one model on one global batch.
//!
//! ALIGN trained on 1,024 TPU cores with a global batch of 16,384 pairs, and its loss is taken
//! over the global batch: every positive competes with all 16,383 negatives, not only the 15 on
//! its own core. Each rank here holds a full copy of the model and 1/N of every batch; a step is
//!
//! 1. forward both towers on the local pairs: unit embeddings x_r, y_r (n_r, D);
//! 2. all-gather the embeddings: x_all, y_all (M, D), M = sum of n_r, in rank order;
//! 3. the local shard of the loss, `contrastive_rows(x_r, y_all) + contrastive_rows(y_r, x_all)`
//!    (its rows against all columns: an (n_r, M) block, never the whole M x M matrix); the
//!    shards of all ranks sum to the single-process loss of the global batch;
//! 4. its backward gives each rank gradients for its own rows and for all M columns; the column
//!    gradients are summed over ranks (all-reduce) and each rank keeps its own rows' part, so
//!    every embedding gets its full gradient, dL/dx_r;
//! 5. backward through the towers, and the parameter gradients summed over ranks in buckets that
//!    start as soon as backward has filled them, while it goes on (as PyTorch's DDP does);
//!    summed, not averaged: each rank's gradient is its share of the one global loss;
//! 6. the same clipping and LAMB update on every rank: the parameters stay identical.
//!
//! Batch norm takes per-rank statistics (as each TPU core did) unless `--sync-bn` sums them
//! over ranks; running statistics are averaged over ranks after every step.
//!
//! [`Comm`] is the communicator. Its collectives run on a worker thread of their own, in the
//! order they were issued, so a gradient bucket can be reduced while the caller carries on;
//! the backend behind it is MPI (`--features mpi`, started by `mpirun`), an in-process group of
//! threads ([`Comm::thread_group`], for tests and for learning), or nothing at all (one rank).

mod ddp;
#[cfg(feature = "mpi")]
mod mpi_backend;
pub mod plan;

mod threads;

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use ddp::{average_buffers, parameter_fingerprint, GradientBuckets, DEFAULT_BUCKET_BYTES};

use crate::error::{AlignError, Result};

/// The collectives a backend provides. Called only from the communicator's own thread; every
/// rank calls the same collectives in the same order with buffers of the same length.
pub trait Backend {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Element-wise sum over ranks, in place; every rank gets bit-identical results.
    fn all_reduce_sum_f32(&mut self, buf: &mut [f32]);
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]);
    /// Every rank's `local` concatenated in rank order; `counts[r]` is rank r's length.
    fn all_gather_f32(&mut self, local: &[f32], counts: &[usize]) -> Vec<f32>;
    fn all_gather_u64(&mut self, value: u64) -> Vec<u64>;
}

/// What the communicator has moved, by purpose: bytes handed to the backend and bytes it
/// returned (what the paper-scale plan predicts), and the number of calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    pub calls: u64,
    pub sent: u64,
    pub received: u64,
}

/// Why a collective was called, for the traffic counters.
pub mod purpose {
    /// Step 2: image and text embeddings of the global batch.
    pub const EMBEDDINGS: &str = "embedding gather";
    /// Step 4: the column gradients of the embeddings.
    pub const EMBEDDING_GRADIENTS: &str = "embedding gradient all-reduce";
    /// Step 5: the parameter gradients.
    pub const GRADIENTS: &str = "gradient all-reduce";
    /// Batch-norm statistics: synchronised batch statistics, or the running statistics'
    /// per-step average.
    pub const BATCH_NORM: &str = "batch-norm sync";
    /// Per-step agreement (loss, stop request, counts), replica checks.
    pub const CONTROL: &str = "control";
    /// Once per run: a locked image tower's cached features, each rank's chunks summed.
    pub const FEATURE_CACHE: &str = "feature cache";
}

enum Job {
    ReduceF32(Vec<f32>, Sender<Vec<f32>>),
    ReduceF64(Vec<f64>, Sender<Vec<f64>>),
    GatherF32(Vec<f32>, Vec<usize>, Sender<Vec<f32>>),
    GatherU64(u64, Sender<Vec<u64>>),
}

/// A collective in flight; [`Pending::wait`] blocks until its result is back.
pub struct Pending<T>(Receiver<T>);

impl<T> Pending<T> {
    pub fn wait(self) -> Result<T> {
        self.0.recv().map_err(|_| stopped())
    }
}

fn stopped() -> AlignError {
    AlignError::training(None, "the communication thread stopped (a rank failed)")
}

/// A handle on the ranks of one job. Cloning shares the same communicator.
#[derive(Clone)]
pub struct Comm {
    rank: usize,
    size: usize,
    /// None for a single rank: every collective is the identity and nothing is counted.
    jobs: Option<Arc<Mutex<Sender<Job>>>>,
    traffic: Arc<Mutex<BTreeMap<&'static str, Traffic>>>,
    _worker: Option<Arc<WorkerHandle>>,
}

/// Joins the communication thread when the last handle goes (closing its queue first).
struct WorkerHandle(Mutex<Option<JoinHandle<()>>>);

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if let Some(h) = self.0.lock().ok().and_then(|mut h| h.take()) {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Comm(rank {} of {})", self.rank, self.size)
    }
}

impl Default for Comm {
    fn default() -> Self {
        Comm::solo()
    }
}

impl Comm {
    /// One rank, no communication.
    pub fn solo() -> Comm {
        Comm { rank: 0, size: 1, jobs: None, traffic: Default::default(), _worker: None }
    }

    /// Starts the communication thread; `make` builds the backend on it (MPI must be
    /// initialised on the thread that makes its calls).
    pub fn start(make: impl FnOnce() -> Result<Box<dyn Backend>> + Send + 'static) -> Result<Comm> {
        let (job_tx, job_rx) = channel::<Job>();
        let (ready_tx, ready_rx) = channel::<Result<(usize, usize)>>();
        let worker = std::thread::Builder::new()
            .name("align-comm".into())
            .spawn(move || {
                let mut backend = match make() {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok((backend.rank(), backend.size())));
                // the queue closes when the last Comm handle is dropped; the backend (and with
                // it MPI) is finalised on this thread
                for job in job_rx {
                    match job {
                        Job::ReduceF32(mut v, reply) => {
                            backend.all_reduce_sum_f32(&mut v);
                            let _ = reply.send(v);
                        }
                        Job::ReduceF64(mut v, reply) => {
                            backend.all_reduce_sum_f64(&mut v);
                            let _ = reply.send(v);
                        }
                        Job::GatherF32(v, counts, reply) => {
                            let _ = reply.send(backend.all_gather_f32(&v, &counts));
                        }
                        Job::GatherU64(v, reply) => {
                            let _ = reply.send(backend.all_gather_u64(v));
                        }
                    }
                }
            })
            .map_err(|e| AlignError::training(None, format!("cannot start the communication thread: {e}")))?;
        let (rank, size) = ready_rx.recv().map_err(|_| stopped())??;
        Ok(Comm {
            rank,
            size,
            jobs: Some(Arc::new(Mutex::new(job_tx))),
            traffic: Default::default(),
            _worker: Some(Arc::new(WorkerHandle(Mutex::new(Some(worker))))),
        })
    }

    /// `n` ranks as threads of this process (collectives through shared memory, summed in rank
    /// order): the same training as `n` MPI ranks, for tests. Hand one to each thread.
    pub fn thread_group(n: usize) -> Result<Vec<Comm>> {
        if n == 0 {
            return Err(AlignError::config("ranks", "a group needs at least one rank"));
        }
        let members = threads::group(n);
        // start every member's thread first: none answers until all exist
        members.into_iter().map(|m| Comm::start(move || Ok(Box::new(m) as Box<dyn Backend>))).collect()
    }

    /// The job this process belongs to: MPI's world when started by `mpirun` (or `srun`) with
    /// the `mpi` feature, else one rank. Started by a launcher with N > 1 but built without the
    /// feature: an error that says how to build it, instead of N independent runs.
    pub fn from_environment() -> Result<Comm> {
        let launched = launcher_world_size();
        #[cfg(feature = "mpi")]
        if launched.is_some() {
            return Comm::start(|| Ok(Box::new(mpi_backend::MpiBackend::init()?) as Box<dyn Backend>));
        }
        match launched {
            Some(n) if n > 1 => Err(AlignError::config(
                "mpi",
                format!(
                    "started by an MPI launcher with {n} ranks, but this align was built without MPI: \
                     rebuild with `cargo build --release -p align --features mpi` (needs an MPI library, \
                     e.g. Debian's libopenmpi-dev) or run one process"
                ),
            )),
            _ => Ok(Comm::solo()),
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank 0 writes files and prints; the others compute alongside.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    fn submit(&self, job: Job) -> Result<()> {
        let jobs = self.jobs.as_ref().expect("a solo communicator submits nothing");
        jobs.lock().map_err(|_| stopped())?.send(job).map_err(|_| stopped())
    }

    fn count(&self, purpose: &'static str, sent: usize, received: usize) {
        if let Ok(mut t) = self.traffic.lock() {
            let e = t.entry(purpose).or_default();
            e.calls += 1;
            e.sent += sent as u64;
            e.received += received as u64;
        }
    }

    /// Starts an element-wise sum over ranks of `buf`; the caller goes on until it waits.
    pub fn start_all_reduce(&self, purpose: &'static str, buf: Vec<f32>) -> Result<Pending<Vec<f32>>> {
        let (tx, rx) = channel();
        if self.jobs.is_none() {
            let _ = tx.send(buf);
            return Ok(Pending(rx));
        }
        self.count(purpose, 4 * buf.len(), 4 * buf.len());
        self.submit(Job::ReduceF32(buf, tx))?;
        Ok(Pending(rx))
    }

    /// Element-wise sum over ranks.
    pub fn all_reduce(&self, purpose: &'static str, buf: Vec<f32>) -> Result<Vec<f32>> {
        self.start_all_reduce(purpose, buf)?.wait()
    }

    /// Element-wise sum over ranks, in f64 (statistics, losses, counts).
    pub fn all_reduce_f64(&self, purpose: &'static str, buf: &mut [f64]) -> Result<()> {
        if self.jobs.is_none() {
            return Ok(());
        }
        let (tx, rx) = channel();
        self.count(purpose, 8 * buf.len(), 8 * buf.len());
        self.submit(Job::ReduceF64(buf.to_vec(), tx))?;
        buf.copy_from_slice(&Pending(rx).wait()?);
        Ok(())
    }

    /// One value from every rank, in rank order.
    pub fn all_gather_u64(&self, purpose: &'static str, value: u64) -> Result<Vec<u64>> {
        if self.jobs.is_none() {
            return Ok(vec![value]);
        }
        let (tx, rx) = channel();
        self.count(purpose, 8, 8 * self.size);
        self.submit(Job::GatherU64(value, tx))?;
        Pending(rx).wait()
    }

    /// Every rank's `local` rows (`width` values each), concatenated in rank order; also each
    /// rank's row count (ranks may hold different numbers of rows).
    pub fn all_gather_rows(
        &self,
        purpose: &'static str,
        local: &[f32],
        width: usize,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let rows = local.len() / width.max(1);
        let counts: Vec<usize> =
            self.all_gather_u64(purpose::CONTROL, rows as u64)?.into_iter().map(|c| c as usize).collect();
        if self.jobs.is_none() {
            return Ok((local.to_vec(), counts));
        }
        let lengths: Vec<usize> = counts.iter().map(|&c| c * width).collect();
        let (tx, rx) = channel();
        self.count(purpose, 4 * local.len(), 4 * lengths.iter().sum::<usize>());
        self.submit(Job::GatherF32(local.to_vec(), lengths, tx))?;
        Ok((Pending(rx).wait()?, counts))
    }

    /// The traffic so far, by purpose.
    pub fn traffic(&self) -> BTreeMap<&'static str, Traffic> {
        self.traffic.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Synchronised batch norm through this communicator (None for one rank).
    pub fn batch_stats_sync(&self) -> Option<autograd::ops::norm::BatchStatsSync> {
        if self.size <= 1 {
            return None;
        }
        let comm = self.clone();
        Some(Arc::new(move |sums: &mut [f64]| {
            // a failed collective here means a rank died; MPI aborts the job, the thread group
            // panics its members
            comm.all_reduce_f64(purpose::BATCH_NORM, sums).expect("batch-norm statistics across ranks");
        }))
    }
}

/// The number of ranks a launcher started this process with (Open MPI, MPICH / Hydra, PMIx,
/// Slurm), or None when no launcher did.
pub fn launcher_world_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_group_gathers_in_rank_order_and_sums_identically_everywhere() {
        let comms = Comm::thread_group(3).unwrap();
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let r = c.rank();
                        // rank r holds r + 1 rows of width 2
                        let local: Vec<f32> = (0..2 * (r + 1)).map(|i| (10 * r + i) as f32).collect();
                        let (all, counts) = c.all_gather_rows(purpose::EMBEDDINGS, &local, 2).unwrap();
                        let pending = c.start_all_reduce(purpose::GRADIENTS, vec![0.1 * r as f32; 4]).unwrap();
                        let mut f = [r as f64, 1.0];
                        c.all_reduce_f64(purpose::CONTROL, &mut f).unwrap();
                        (all, counts, pending.wait().unwrap(), f, c.traffic())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let expect_rows: Vec<f32> = vec![0., 1., 10., 11., 12., 13., 20., 21., 22., 23., 24., 25.];
        for (all, counts, sum, f, traffic) in &results {
            assert_eq!(all, &expect_rows);
            assert_eq!(counts, &vec![1, 2, 3]);
            assert_eq!(sum, &results[0].2);
            assert!((sum[0] - 0.3).abs() < 1e-6);
            assert_eq!(f, &[3.0, 3.0]);
            assert_eq!(traffic[purpose::GRADIENTS], Traffic { calls: 1, sent: 16, received: 16 });
            assert_eq!(traffic[purpose::EMBEDDINGS].received, 4 * 12);
        }
        // one rank: the identity, nothing counted
        let solo = Comm::solo();
        assert_eq!(solo.all_reduce(purpose::GRADIENTS, vec![1.0, 2.0]).unwrap(), vec![1.0, 2.0]);
        assert!(solo.traffic().is_empty());
    }
}
