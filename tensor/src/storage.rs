//! Reference-counted element storage behind every tensor.
//!
//! A buffer is either an owned `Vec<f32>` or a window into bytes we do not own (a memory-mapped
//! safetensors file), which is how checkpoint loading avoids a copy when the data is aligned.
//! Every live buffer is counted in two global atomics so tests can assert that a training loop
//! does not leak (see [`live_buffers`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

static LIVE_BUFFERS: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Number of tensor storage buffers alive in this process right now.
pub fn live_buffers() -> usize {
    LIVE_BUFFERS.load(Ordering::Relaxed)
}

/// Bytes held by live tensor storage buffers (mapped buffers count their window).
pub fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Bytes that a mapped buffer borrows from (an mmap or an owned byte vector). Kept alive by `Arc`.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

enum Buffer {
    Owned(Vec<f32>),
    /// Device memory on a GPU: the elements never pass through host memory unless a caller
    /// reads them back (`Tensor::to_cpu`).
    #[cfg(feature = "wgpu")]
    Gpu(kernels::gpu::GpuBuffer),
    /// `len` f32 values starting at byte `start` of `bytes`; `start` is 4-byte aligned in memory.
    Mapped {
        bytes: SharedBytes,
        start: usize,
        len: usize,
    },
}

pub struct Storage {
    buf: Buffer,
}

impl Storage {
    pub fn from_vec(v: Vec<f32>) -> Self {
        Self::count(v.len());
        Storage { buf: Buffer::Owned(v) }
    }

    /// A zero-copy window of `len` f32s at byte offset `start` in `bytes`. Returns `None` when
    /// the window is out of range or misaligned (callers then copy instead), or on big-endian
    /// hosts where the little-endian file bytes are not native f32s.
    pub fn mapped(bytes: SharedBytes, start: usize, len: usize) -> Option<Self> {
        if cfg!(target_endian = "big") {
            return None;
        }
        let all: &[u8] = (*bytes).as_ref();
        let end = start.checked_add(len.checked_mul(4)?)?;
        let window = all.get(start..end)?;
        if !(window.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>()) {
            return None;
        }
        Self::count(len);
        Some(Storage { buf: Buffer::Mapped { bytes, start, len } })
    }

    /// Storage in GPU memory. Not counted in [`live_buffers`] (host memory); the device's own
    /// pool counts it (`kernels::gpu::Gpu::pool_stats`).
    #[cfg(feature = "wgpu")]
    pub fn gpu(buffer: kernels::gpu::GpuBuffer) -> Self {
        Storage { buf: Buffer::Gpu(buffer) }
    }

    /// Where the elements live.
    pub fn device(&self) -> crate::Device {
        match &self.buf {
            #[cfg(feature = "wgpu")]
            Buffer::Gpu(b) => crate::Device::Gpu(b.gpu().index),
            _ => crate::Device::Cpu,
        }
    }

    /// The device buffer of a GPU storage.
    #[cfg(feature = "wgpu")]
    pub fn gpu_buffer(&self) -> Option<&kernels::gpu::GpuBuffer> {
        match &self.buf {
            Buffer::Gpu(b) => Some(b),
            _ => None,
        }
    }

    fn count(len: usize) {
        LIVE_BUFFERS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(len * 4, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        match &self.buf {
            Buffer::Owned(v) => v.len(),
            Buffer::Mapped { len, .. } => *len,
            #[cfg(feature = "wgpu")]
            Buffer::Gpu(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements of a host buffer.
    ///
    /// # Panics
    /// On a GPU storage: its elements are not in host memory. Ops check the device first and
    /// return an error; reading GPU data back is explicit (`Tensor::to_cpu`).
    pub fn as_slice(&self) -> &[f32] {
        match &self.buf {
            #[cfg(feature = "wgpu")]
            Buffer::Gpu(b) => panic!("{b:?}: GPU data is read on the host only through Tensor::to_cpu"),
            Buffer::Owned(v) => v,
            Buffer::Mapped { bytes, start, len } => {
                let all: &[u8] = (**bytes).as_ref();
                bytemuck::cast_slice(&all[*start..*start + *len * 4])
            }
        }
    }

    /// Mutable access; only owned buffers can be written (mapped ones are read-only files).
    pub fn as_mut_slice(&mut self) -> Option<&mut [f32]> {
        match &mut self.buf {
            Buffer::Owned(v) => Some(v),
            _ => None,
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.buf, Buffer::Mapped { .. })
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        #[cfg(feature = "wgpu")]
        if matches!(self.buf, Buffer::Gpu(_)) {
            return; // the GpuBuffer returns itself to its device's pool
        }
        LIVE_BUFFERS.fetch_sub(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(self.len() * 4, Ordering::Relaxed);
        if let Buffer::Owned(v) = &mut self.buf {
            recycle(std::mem::take(v));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recycled buffers.
//
// A training step allocates the same large buffers every step (activations, gradients, GEMM
// outputs) and frees them at the end of the step. A fresh `vec![0.0; n]` of a few megabytes
// costs a zeroing pass, and usually page faults too (glibc serves big blocks with mmap, and the
// kernel clears every page on first touch): together about 9% of a BERT training step here,
// all of it on the main thread while the kernel threads wait. Buffers of dropped tensors are
// therefore kept in a pool keyed by length, up to a total size, and handed out again by
// [`recycled_vec`] to producers that overwrite every element. Their old contents are ordinary
// initialised floats, so this is safe Rust: a producer that forgot an element would read stale
// values (which the kernels' reference tests would catch), never undefined memory.

/// Buffers shorter than this go back to the allocator (its small-size bins are fast already).
/// Debug builds (the test suite) pool nearly everything and poison what they hand out with NaN,
/// so a producer that reads or keeps part of its "fresh" output fails the small-shape tests.
const POOL_MIN_LEN: usize = if cfg!(debug_assertions) { 8 } else { 16 * 1024 };
/// Upper bound on the bytes the pool holds; beyond it dropped buffers are freed.
const POOL_MAX_BYTES: usize = 512 << 20;

struct Pool {
    by_len: HashMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

fn pool() -> &'static Mutex<Pool> {
    static POOL: std::sync::OnceLock<Mutex<Pool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| Mutex::new(Pool { by_len: HashMap::new(), bytes: 0 }))
}

fn recycle(v: Vec<f32>) {
    let len = v.len();
    if len < POOL_MIN_LEN {
        return;
    }
    let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
    if p.bytes + len * 4 > POOL_MAX_BYTES {
        return;
    }
    p.bytes += len * 4;
    p.by_len.entry(len).or_default().push(v);
}

/// A vector of `len` floats whose contents are unspecified: a recycled buffer of a dropped
/// tensor when one of that length is pooled, zeros otherwise. For outputs the caller
/// overwrites completely (GEMM with beta = 0, elementwise maps, row kernels).
pub fn recycled_vec(len: usize) -> Vec<f32> {
    if len >= POOL_MIN_LEN {
        let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut v) = p.by_len.get_mut(&len).and_then(|list| list.pop()) {
            p.bytes -= len * 4;
            drop(p);
            if cfg!(debug_assertions) {
                v.fill(f32::NAN);
            }
            return v;
        }
    }
    // Large buffers go on 2 MB pages (kernels::memory): fewer TLB misses in the GEMMs and
    // row kernels that stream them.
    kernels::memory::huge_page_vec(len)
}

/// Frees every pooled buffer (for memory measurements, or before a phase with other shapes).
pub fn clear_recycled() {
    let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
    p.by_len.clear();
    p.bytes = 0;
}

/// Bytes currently held by the recycling pool.
pub fn recycled_bytes() -> usize {
    pool().lock().unwrap_or_else(|e| e.into_inner()).bytes
}
