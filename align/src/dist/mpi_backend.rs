//! The MPI backend (`--features mpi`): Open MPI or MPICH through the `mpi` crate (rsmpi).
//!
//! MPI is initialised on the communicator's own thread with `MPI_THREAD_FUNNELED` (only that
//! thread calls MPI), which every MPI library supports. Collectives use MPI's default error
//! handler: a rank that dies makes the launcher end the whole job with a non-zero exit, naming
//! the rank. MPI counts are 32-bit, so long buffers are reduced in chunks.

use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

use super::Backend;
use crate::error::{AlignError, Result};

/// Elements per MPI call (well below 2^31, the largest count MPI takes).
const CHUNK: usize = 1 << 28;

pub struct MpiBackend {
    // the world communicator must go before the universe that finalises MPI
    world: SimpleCommunicator,
    _universe: Universe,
}

impl MpiBackend {
    pub fn init() -> Result<MpiBackend> {
        let (universe, _threading) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| AlignError::training(None, "MPI was initialised twice in this process"))?;
        Ok(MpiBackend { world: universe.world(), _universe: universe })
    }
}

impl Backend for MpiBackend {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum_f32(&mut self, buf: &mut [f32]) {
        for chunk in buf.chunks_mut(CHUNK) {
            let send = chunk.to_vec();
            self.world.all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
    }

    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) {
        for chunk in buf.chunks_mut(CHUNK) {
            let send = chunk.to_vec();
            self.world.all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
    }

    fn all_gather_f32(&mut self, local: &[f32], counts: &[usize]) -> Vec<f32> {
        let total: usize = counts.iter().sum();
        assert!(total < i32::MAX as usize, "all-gather of {total} values: more than one MPI call can move");
        let mut out = vec![0.0f32; total];
        let counts_mpi: Vec<Count> = counts.iter().map(|&c| c as Count).collect();
        let displs: Vec<Count> = counts_mpi
            .iter()
            .scan(0, |acc, &c| {
                let d = *acc;
                *acc += c;
                Some(d)
            })
            .collect();
        let mut partition = PartitionMut::new(&mut out[..], counts_mpi, &displs[..]);
        self.world.all_gather_varcount_into(local, &mut partition);
        out
    }

    fn all_gather_u64(&mut self, value: u64) -> Vec<u64> {
        let mut out = vec![0u64; self.size()];
        self.world.all_gather_into(&value, &mut out[..]);
        out
    }
}
