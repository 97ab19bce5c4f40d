//! Large buffers on 2 MB pages.
//!
//! A GEMM streams its packed panels, and writes C, through thousands of 4 KB pages: C's rows
//! are 3-12 KB apart in BERT's products, so every 12-row micro-tile touches 12 pages, and the
//! packed A block (3 MB) and B panels stream past the 64-entry first-level TLB. On 2 MB pages
//! the same data needs a handful of entries. numpy does the same for its arrays (it asks for
//! huge pages on every allocation of 4 MB or more), so the OpenBLAS it is compared with
//! already works on them.
//!
//! Linux backs a range with transparent huge pages when the system setting is `always`, or,
//! under the common default `madvise`, when the process asks with `madvise(MADV_HUGEPAGE)`
//! before the pages are first touched. [`huge_page_vec`] allocates, advises the whole 2 MB
//! frames inside the allocation, then zero-fills (the first touch); [`HugeBuffer`] is a
//! scratch buffer aligned to 2 MB so that all of it is covered. Elsewhere, or with
//! `ALIGN_HUGE_PAGES=0` in the environment, they are ordinary allocations.
//!
//! Measured (2048 x 768 x 3072 with B transposed, one thread pinned to one core, quiet
//! rounds of the host): 116 vs 111 GFLOP/s with huge pages everywhere against none.

/// Buffers below this size stay on ordinary pages (numpy's threshold as well): a 2 MB page
/// for a smaller buffer would be mostly empty.
pub const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Whether buffers are advised onto huge pages: on unless `ALIGN_HUGE_PAGES=0` (read once).
pub fn huge_pages_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("ALIGN_HUGE_PAGES").map(|v| v != "0").unwrap_or(true))
}

/// `len` zeros, on 2 MB pages where the OS grants them (see the module header). Small
/// buffers are a plain `vec!`.
pub fn huge_page_vec(len: usize) -> Vec<f32> {
    let bytes = len.saturating_mul(std::mem::size_of::<f32>());
    if bytes < HUGE_PAGE_MIN_BYTES || !huge_pages_enabled() {
        return vec![0.0; len];
    }
    // Zeroed by the allocator: a fresh mapping of this size comes zeroed from the kernel and
    // is not touched (calloc skips its memset), so the advice below still precedes the first
    // touch and the pages are cleared once, at their fault. (An explicit fill after the
    // advice cleared every page twice.)
    let layout = std::alloc::Layout::array::<f32>(len).expect("buffer size overflows isize");
    // SAFETY: the layout has a non-zero size (bytes >= HUGE_PAGE_MIN_BYTES).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut f32;
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    advise_huge_pages(ptr as usize, bytes);
    // SAFETY: allocated by the global allocator with Layout::array::<f32>(len), which is the
    // layout a Vec<f32> of capacity len uses; all len floats are initialised (zero bits).
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

/// A zeroed scratch buffer of floats that starts on a 2 MB boundary and covers whole 2 MB
/// frames when it is 2 MB or larger, all of it advised onto huge pages (a `Vec` can only have
/// the frames inside it advised, see [`huge_page_vec`]). For the GEMM's packing buffers: a
/// 3 MB packed A block on ordinary pages would keep a third of itself on 4 KB pages.
pub struct HugeBuffer {
    ptr: std::ptr::NonNull<f32>,
    len: usize,
    layout: Option<std::alloc::Layout>,
}

// SAFETY: HugeBuffer owns its allocation exclusively, like a Vec<f32>.
unsafe impl Send for HugeBuffer {}
// SAFETY: shared access is read-only through Deref.
unsafe impl Sync for HugeBuffer {}

impl HugeBuffer {
    /// An empty buffer (no allocation).
    pub const fn new() -> Self {
        HugeBuffer { ptr: std::ptr::NonNull::dangling(), len: 0, layout: None }
    }

    /// `len` zeros. Panics only where a `Vec` of that size would (allocation failure).
    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            return Self::new();
        }
        let bytes = len.checked_mul(std::mem::size_of::<f32>()).expect("buffer size overflows usize");
        let huge = bytes >= HUGE_PAGE_BYTES && huge_pages_enabled();
        let (size, align) = if huge { (bytes.next_multiple_of(HUGE_PAGE_BYTES), HUGE_PAGE_BYTES) } else { (bytes, 64) };
        let layout = std::alloc::Layout::from_size_align(size, align).expect("valid buffer layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) } as *mut f32;
        let Some(ptr) = std::ptr::NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        if huge {
            // Advise before the first touch, so that the zero-fill faults in 2 MB pages.
            advise_huge_pages(raw as usize, size);
        }
        // SAFETY: the allocation holds at least `len` floats; zero bytes are 0.0f32.
        unsafe { std::ptr::write_bytes(raw, 0, len) };
        HugeBuffer { ptr, len, layout: Some(layout) }
    }

    /// Grows to at least `len` floats. The old contents are not kept: for scratch space that
    /// is overwritten before it is read.
    pub fn grow(&mut self, len: usize) {
        if self.len < len {
            *self = Self::new(); // free the old buffer first
            *self = Self::zeroed(len);
        }
    }
}

impl Default for HugeBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for HugeBuffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: ptr holds len initialised floats (or is dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for HugeBuffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in deref, and self is borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for HugeBuffer {
    fn drop(&mut self) {
        if let Some(layout) = self.layout {
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr() as *mut u8, layout) };
        }
    }
}

/// Asks the kernel to back the whole 2 MB frames of [start, start + bytes) with huge pages.
/// Advice only: failure (an old kernel, THP set to `never`) leaves ordinary pages.
#[cfg(target_os = "linux")]
fn advise_huge_pages(start: usize, bytes: usize) {
    let first = start.next_multiple_of(HUGE_PAGE_BYTES);
    let end = (start + bytes) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    if end > first {
        // SAFETY: [first, end) lies inside an allocation this process owns; MADV_HUGEPAGE
        // changes how it is backed, never its contents or its mapping.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_start: usize, _bytes: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_vec_is_zeroed_at_any_size() {
        for len in [0, 1, 1000, HUGE_PAGE_MIN_BYTES / 4 - 1, HUGE_PAGE_MIN_BYTES / 4 + 12345] {
            let v = huge_page_vec(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn huge_buffer_is_zeroed_aligned_and_only_grows() {
        let mut b = HugeBuffer::new();
        assert!(b.is_empty());
        b.grow(10);
        b[9] = 1.0;
        b.grow(5);
        assert_eq!((b.len(), b[9]), (10, 1.0));
        b.grow(HUGE_PAGE_BYTES / 4 + 3);
        assert_eq!(b.len(), HUGE_PAGE_BYTES / 4 + 3);
        assert!(b.iter().all(|&x| x == 0.0));
        if huge_pages_enabled() {
            assert_eq!(b.as_ptr() as usize % HUGE_PAGE_BYTES, 0);
        }
    }
}
