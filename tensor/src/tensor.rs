//! The `Tensor` type: shared storage plus a strided layout, its constructors and its views.
//!
//! Cloning a tensor is cheap (it bumps a reference count). Views share storage; ops that compute
//! new values allocate a new contiguous buffer. Mutation goes through [`Tensor::data_mut`], which
//! copies first when the storage is shared or not a plain contiguous buffer (copy-on-write), so a
//! view can never be changed behind another tensor's back.

use std::fmt;
use std::sync::Arc;

use crate::error::{Result, TensorError};
use crate::layout::{contiguous_strides, for_each_offset, Layout};
use crate::random::Rng;
use crate::storage::Storage;

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
}

impl Tensor {
    // ----------------------------------------------------------------------------------------
    // Construction
    // ----------------------------------------------------------------------------------------

    /// A tensor over `data` (row-major). Errors when `data.len()` is not the product of `shape`.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        let numel = checked_numel(shape)?;
        if numel != data.len() {
            return Err(TensorError::shape(
                "from_vec",
                format!("shape {shape:?} needs {numel} values but {} were given", data.len()),
            ));
        }
        Ok(Tensor { storage: Arc::new(Storage::from_vec(data)), layout: Layout::contiguous(shape) })
    }

    /// A tensor from a slice (copied).
    pub fn from_slice(data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)
    }

    /// A tensor over an existing storage with an explicit layout (checked to stay in bounds).
    pub fn from_storage(storage: Arc<Storage>, layout: Layout) -> Result<Tensor> {
        if layout.shape.len() != layout.strides.len() {
            return Err(TensorError::shape("from_storage", "shape and strides differ in rank"));
        }
        if layout.storage_extent() > storage.len() {
            return Err(TensorError::shape(
                "from_storage",
                format!("layout reaches element {} of a storage of {}", layout.storage_extent(), storage.len()),
            ));
        }
        Ok(Tensor { storage, layout })
    }

    pub(crate) fn from_contiguous(data: Vec<f32>, shape: &[usize]) -> Tensor {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        Tensor { storage: Arc::new(Storage::from_vec(data)), layout: Layout::contiguous(shape) }
    }

    pub fn scalar(value: f32) -> Tensor {
        Tensor::from_contiguous(vec![value], &[])
    }

    pub fn full(shape: &[usize], value: f32) -> Tensor {
        let n = shape.iter().product();
        let mut data = crate::storage::recycled_vec(n);
        kernels::parallel::for_each_chunk(&mut data, 64 * 1024, |_, o| o.fill(value));
        Tensor::from_contiguous(data, shape)
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    pub fn ones(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 1.0)
    }

    pub fn zeros_like(&self) -> Tensor {
        Tensor::zeros(self.shape())
    }

    /// `[start, start + step, ...)` up to but excluding `end`, as a 1-D tensor.
    pub fn arange(start: f32, end: f32, step: f32) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(TensorError::shape("arange", format!("bad range {start}..{end} step {step}")));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        let data: Vec<f32> = (0..n).map(|i| start + i as f32 * step).collect();
        Ok(Tensor::from_contiguous(data, &[n]))
    }

    /// Uniform samples in [low, high), reproducible for a seed.
    pub fn rand_uniform(shape: &[usize], low: f32, high: f32, seed: u64) -> Tensor {
        let mut rng = Rng::new(seed);
        Tensor::rand_uniform_with(shape, low, high, &mut rng)
    }

    pub fn rand_uniform_with(shape: &[usize], low: f32, high: f32, rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        let data = (0..n).map(|_| low + (high - low) * rng.next_f32()).collect();
        Tensor::from_contiguous(data, shape)
    }

    /// Normal samples with the given mean and standard deviation, reproducible for a seed.
    pub fn randn(shape: &[usize], mean: f32, std: f32, seed: u64) -> Tensor {
        let mut rng = Rng::new(seed);
        Tensor::randn_with(shape, mean, std, &mut rng)
    }

    pub fn randn_with(shape: &[usize], mean: f32, std: f32, rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        let data = (0..n).map(|_| (mean as f64 + std as f64 * rng.normal()) as f32).collect();
        Tensor::from_contiguous(data, shape)
    }

    // ----------------------------------------------------------------------------------------
    // Accessors
    // ----------------------------------------------------------------------------------------

    pub fn shape(&self) -> &[usize] {
        &self.layout.shape
    }

    pub fn strides(&self) -> &[usize] {
        &self.layout.strides
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn rank(&self) -> usize {
        self.layout.rank()
    }

    pub fn numel(&self) -> usize {
        self.layout.numel()
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The whole underlying buffer (the layout says which elements belong to this view).
    pub fn storage_slice(&self) -> &[f32] {
        self.storage.as_slice()
    }

    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// Size of `axis`, with a clear error when the axis does not exist.
    pub fn dim(&self, axis: usize) -> Result<usize> {
        self.check_axis("dim", axis)?;
        Ok(self.layout.shape[axis])
    }

    pub(crate) fn check_axis(&self, op: &'static str, axis: usize) -> Result<()> {
        if axis >= self.rank() {
            return Err(TensorError::shape(op, format!("axis {axis} out of range for shape {:?}", self.shape())));
        }
        Ok(())
    }

    /// The elements as a contiguous slice when the layout allows it without copying.
    /// `None` for a GPU tensor, whose elements are not in host memory.
    pub fn as_contiguous_slice(&self) -> Option<&[f32]> {
        if self.is_contiguous() && !self.device().is_gpu() {
            let start = self.layout.offset;
            Some(&self.storage.as_slice()[start..start + self.numel()])
        } else {
            None
        }
    }

    /// All elements in row-major order (copied; a GPU tensor is read back, waiting for the GPU).
    ///
    /// # Panics
    /// When a GPU read-back fails (a lost device); `to_cpu` reports that as an error instead.
    pub fn to_vec(&self) -> Vec<f32> {
        if self.device().is_gpu() {
            let host = self.to_cpu().unwrap_or_else(|e| panic!("{e}"));
            return host.as_contiguous_slice().expect("to_cpu gives a contiguous tensor").to_vec();
        }
        if let Some(s) = self.as_contiguous_slice() {
            let mut out = crate::storage::recycled_vec(s.len());
            kernels::parallel::for_each_chunk(&mut out, 64 * 1024, |start, o| {
                o.copy_from_slice(&s[start..start + o.len()])
            });
            return out;
        }
        let src = self.storage.as_slice();
        let (rank, numel) = (self.rank(), self.numel());
        if numel == 0 {
            return Vec::new();
        }
        if rank == 0 {
            return vec![src[self.layout.offset]];
        }
        // Rows along the innermost axis, gathered in parallel blocks of rows; a head split /
        // merge permute has a contiguous innermost axis (whole runs copied), a transpose a
        // strided one.
        let (run, inner_stride) = (self.layout.shape[rank - 1], self.layout.strides[rank - 1]);
        let (outer_shape, outer_strides) = (&self.layout.shape[..rank - 1], &self.layout.strides[..rank - 1]);
        let mut out = crate::storage::recycled_vec(numel);
        kernels::parallel::for_each_row_block(&mut out, run, 32 * 1024, |start, block| {
            let mut index = vec![0usize; rank - 1]; // odometer over the outer axes
            let mut rest = start / run;
            for d in (0..rank - 1).rev() {
                index[d] = rest % outer_shape[d];
                rest /= outer_shape[d];
            }
            for row in block.chunks_exact_mut(run) {
                let base = self.layout.offset + index.iter().zip(outer_strides).map(|(i, s)| i * s).sum::<usize>();
                if inner_stride == 1 {
                    row.copy_from_slice(&src[base..base + run]);
                } else {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = src[base + j * inner_stride];
                    }
                }
                for d in (0..rank - 1).rev() {
                    index[d] += 1;
                    if index[d] < outer_shape[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
        });
        out
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(TensorError::shape(
                "item",
                format!("tensor of shape {:?} is not a single value", self.shape()),
            ));
        }
        if self.device().is_gpu() {
            return self.to_cpu()?.item();
        }
        Ok(self.storage.as_slice()[self.layout.offset])
    }

    /// Element at a multi-index.
    pub fn get(&self, index: &[usize]) -> Result<f32> {
        if index.len() != self.rank() {
            return Err(TensorError::shape("get", format!("index {index:?} for shape {:?}", self.shape())));
        }
        for (d, (&i, &n)) in index.iter().zip(self.shape()).enumerate() {
            if i >= n {
                return Err(TensorError::shape("get", format!("index {i} out of range for axis {d} of size {n}")));
            }
        }
        if self.device().is_gpu() {
            return self.to_cpu()?.get(index);
        }
        Ok(self.storage.as_slice()[self.layout.offset_of(index)])
    }

    /// A contiguous tensor with the same values: `self` (cheap clone) when already contiguous.
    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() {
            return self.clone();
        }
        #[cfg(feature = "wgpu")]
        if self.device().is_gpu() {
            return crate::gpu::contiguous(self).unwrap_or_else(|e| panic!("{e}"));
        }
        Tensor::from_contiguous(self.to_vec(), self.shape())
    }

    /// Mutable row-major access to this tensor's elements. Copies into a fresh private buffer
    /// first if the storage is shared with another tensor, memory-mapped, or this view does not
    /// cover the whole buffer contiguously.
    ///
    /// # Panics
    /// On a GPU tensor (its elements are not in host memory).
    pub fn data_mut(&mut self) -> &mut [f32] {
        assert!(
            !self.device().is_gpu(),
            "data_mut on a tensor on {}: GPU tensors are changed by GPU ops",
            self.device()
        );
        let whole = self.is_contiguous() && self.layout.offset == 0 && self.numel() == self.storage.len();
        let private = whole && !self.storage.is_mapped() && Arc::get_mut(&mut self.storage).is_some();
        if !private {
            *self = Tensor::from_contiguous(self.to_vec(), self.shape());
        }
        Arc::get_mut(&mut self.storage).and_then(|s| s.as_mut_slice()).expect("fresh storage is private and owned")
    }

    /// Does this tensor share storage with `other`?
    pub fn shares_storage_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor { storage: self.storage.clone(), layout }
    }

    // ----------------------------------------------------------------------------------------
    // Views: only the layout changes
    // ----------------------------------------------------------------------------------------

    /// Same elements under a new shape. A view when the memory order allows it, else a copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let numel = checked_numel(shape)?;
        if numel != self.numel() {
            return Err(TensorError::shape(
                "reshape",
                format!(
                    "cannot reshape {:?} ({} elements) to {shape:?} ({numel} elements)",
                    self.shape(),
                    self.numel()
                ),
            ));
        }
        match self.layout.reshape_strides(shape) {
            Some(strides) => {
                Ok(self.with_layout(Layout { shape: shape.to_vec(), strides, offset: self.layout.offset }))
            }
            None => self.contiguous().reshape(shape),
        }
    }

    /// Reorders axes: output axis `i` is input axis `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
            return Err(TensorError::shape(
                "permute",
                format!("{perm:?} is not a permutation of the {rank} axes of {:?}", self.shape()),
            ));
        }
        let shape = perm.iter().map(|&p| self.layout.shape[p]).collect();
        let strides = perm.iter().map(|&p| self.layout.strides[p]).collect();
        Ok(self.with_layout(Layout { shape, strides, offset: self.layout.offset }))
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        self.check_axis("transpose", a)?;
        self.check_axis("transpose", b)?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Transpose of the last two axes (the matrix transpose of a batch of matrices).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(TensorError::shape("t", format!("needs rank >= 2, got shape {:?}", self.shape())));
        }
        self.transpose(self.rank() - 2, self.rank() - 1)
    }

    /// `len` elements of `axis` starting at `start`.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        self.slice(axis, start, start.saturating_add(len), 1)
    }

    /// Elements `start, start+step, ..` below `end` along `axis` (Python's `t[start:end:step]`).
    pub fn slice(&self, axis: usize, start: usize, end: usize, step: usize) -> Result<Tensor> {
        self.check_axis("slice", axis)?;
        let n = self.layout.shape[axis];
        if step == 0 || start > end || end > n {
            return Err(TensorError::shape(
                "slice",
                format!(
                    "range {start}..{end} step {step} invalid for axis {axis} of size {n} (shape {:?})",
                    self.shape()
                ),
            ));
        }
        let mut layout = self.layout.clone();
        let len = (end - start).div_ceil(step);
        if len > 0 {
            layout.offset += start * layout.strides[axis];
        }
        layout.shape[axis] = len;
        layout.strides[axis] *= step;
        Ok(self.with_layout(layout))
    }

    /// A view with stride 0 along broadcast axes (NumPy rules); no data is copied.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.broadcast_to(shape)?))
    }

    /// Removes `axis`, which must have size 1.
    pub fn squeeze(&self, axis: usize) -> Result<Tensor> {
        self.check_axis("squeeze", axis)?;
        if self.layout.shape[axis] != 1 {
            return Err(TensorError::shape("squeeze", format!("axis {axis} of shape {:?} is not 1", self.shape())));
        }
        let mut layout = self.layout.clone();
        layout.shape.remove(axis);
        layout.strides.remove(axis);
        Ok(self.with_layout(layout))
    }

    /// Removes every axis of size 1.
    pub fn squeeze_all(&self) -> Tensor {
        let mut layout = Layout { shape: vec![], strides: vec![], offset: self.layout.offset };
        for (&n, &s) in self.layout.shape.iter().zip(&self.layout.strides) {
            if n != 1 {
                layout.shape.push(n);
                layout.strides.push(s);
            }
        }
        self.with_layout(layout)
    }

    /// Inserts an axis of size 1 at position `axis` (0..=rank).
    pub fn unsqueeze(&self, axis: usize) -> Result<Tensor> {
        if axis > self.rank() {
            return Err(TensorError::shape(
                "unsqueeze",
                format!("axis {axis} out of range for shape {:?}", self.shape()),
            ));
        }
        let mut layout = self.layout.clone();
        let stride = if axis < self.rank() { layout.strides[axis] * layout.shape[axis] } else { 1 };
        layout.shape.insert(axis, 1);
        layout.strides.insert(axis, stride);
        Ok(self.with_layout(layout))
    }

    // ----------------------------------------------------------------------------------------
    // Half-precision conversion (storage formats; all compute stays f32)
    // ----------------------------------------------------------------------------------------

    pub fn to_f16_vec(&self) -> Vec<half::f16> {
        self.to_vec().into_iter().map(half::f16::from_f32).collect()
    }

    pub fn to_bf16_vec(&self) -> Vec<half::bf16> {
        self.to_vec().into_iter().map(half::bf16::from_f32).collect()
    }

    pub fn from_f16(data: &[half::f16], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.iter().map(|x| x.to_f32()).collect(), shape)
    }

    pub fn from_bf16(data: &[half::bf16], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.iter().map(|x| x.to_f32()).collect(), shape)
    }

    /// Rounds every value to the nearest bf16 (round-to-nearest-even) and back to f32.
    pub fn round_to_bf16(&self) -> Tensor {
        self.map(|x| half::bf16::from_f32(x).to_f32())
    }

    /// Rounds every value to the nearest f16 and back to f32.
    pub fn round_to_f16(&self) -> Tensor {
        self.map(|x| half::f16::from_f32(x).to_f32())
    }
}

pub(crate) fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .ok_or_else(|| TensorError::shape("shape", format!("{shape:?} has more elements than fit in memory")))
}

const DISPLAY_VALUES: usize = 8;

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor(shape={:?}, strides={:?}, offset={}, values=",
            self.shape(),
            self.strides(),
            self.layout.offset
        )?;
        write_values(f, self)?;
        write!(f, ")")
    }
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor{:?} ", self.shape())?;
        write_values(f, self)
    }
}

fn write_values(f: &mut fmt::Formatter<'_>, t: &Tensor) -> fmt::Result {
    let src = t.storage.as_slice();
    let mut shown = Vec::with_capacity(DISPLAY_VALUES);
    let mut count = 0usize;
    for_each_offset(&t.layout, |o| {
        if count < DISPLAY_VALUES {
            shown.push(src[o]);
        }
        count += 1;
    });
    write!(f, "[")?;
    for (i, v) in shown.iter().enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        write!(f, "{v:.4}")?;
    }
    if count > DISPLAY_VALUES {
        write!(f, ", ... ({} values)", count)?;
    }
    write!(f, "]")
}

/// Row-major strides of a shape (re-exported helper for other crates).
pub fn strides_for(shape: &[usize]) -> Vec<usize> {
    contiguous_strides(shape)
}
