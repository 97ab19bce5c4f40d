//! Reference-counted element storage behind every tensor.
//!
//! A buffer is either an owned `Vec<f32>` or a window into bytes we do not own (a memory-mapped
//! safetensors file), which is how checkpoint loading avoids a copy when the data is aligned.
//! Every live buffer is counted in two global atomics so tests can assert that a training loop
//! does not leak (see [`live_buffers`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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

    fn count(len: usize) {
        LIVE_BUFFERS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(len * 4, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        match &self.buf {
            Buffer::Owned(v) => v.len(),
            Buffer::Mapped { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice(&self) -> &[f32] {
        match &self.buf {
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
            Buffer::Mapped { .. } => None,
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.buf, Buffer::Mapped { .. })
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        LIVE_BUFFERS.fetch_sub(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(self.len() * 4, Ordering::Relaxed);
    }
}
