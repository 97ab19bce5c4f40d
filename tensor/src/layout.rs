//! `Layout`: how an n-dimensional index maps into a flat storage buffer.
//!
//! Element `(i0, i1, ..)` lives at `offset + i0 * strides[0] + i1 * strides[1] + ..`. Views
//! (permute, narrow, broadcast, ...) only rewrite this mapping; no data moves. A stride of 0
//! repeats one element along an axis, which is how broadcasting avoids materialising copies
//! (the same trick as candle's `layout.rs` and NumPy). Strides are in elements, never negative.

use crate::error::{Result, TensorError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
}

/// Row-major ("C order") strides of a shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1usize;
    for d in (0..shape.len()).rev() {
        strides[d] = acc;
        acc *= shape[d];
    }
    strides
}

/// NumPy broadcasting: align trailing axes; each pair must be equal or contain a 1.
pub fn broadcast_shapes(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Result<Vec<usize>> {
    let rank = lhs.len().max(rhs.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let l = if i < rank - lhs.len() { 1 } else { lhs[i - (rank - lhs.len())] };
        let r = if i < rank - rhs.len() { 1 } else { rhs[i - (rank - rhs.len())] };
        out[i] = if l == r {
            l
        } else if l == 1 {
            r
        } else if r == 1 {
            l
        } else {
            return Err(TensorError::Broadcast { op, lhs: lhs.to_vec(), rhs: rhs.to_vec() });
        };
    }
    Ok(out)
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when elements are laid out row-major without gaps (from `offset`).
    /// Axes of size 1 may carry any stride.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for d in (0..self.rank()).rev() {
            if self.shape[d] != 1 && self.strides[d] != expected {
                return false;
            }
            expected *= self.shape[d];
        }
        true
    }

    /// Storage index of a multi-index (no bounds check beyond debug assertions).
    pub fn offset_of(&self, index: &[usize]) -> usize {
        debug_assert_eq!(index.len(), self.rank());
        self.offset + index.iter().zip(&self.strides).map(|(i, s)| i * s).sum::<usize>()
    }

    /// One past the largest storage index this layout can touch (0 for an empty tensor).
    pub fn storage_extent(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        self.offset + self.shape.iter().zip(&self.strides).map(|(n, s)| (n - 1) * s).sum::<usize>() + 1
    }

    /// The layout seen through `broadcast_to(shape)`: new leading axes and size-1 axes get stride 0.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Layout> {
        let fail =
            || TensorError::shape("broadcast_to", format!("cannot broadcast shape {:?} to {:?}", self.shape, shape));
        if shape.len() < self.rank() {
            return Err(fail());
        }
        let lead = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for d in 0..self.rank() {
            let (have, want) = (self.shape[d], shape[lead + d]);
            strides[lead + d] = if have == want {
                self.strides[d]
            } else if have == 1 {
                0
            } else {
                return Err(fail());
            };
        }
        Ok(Layout { shape: shape.to_vec(), strides, offset: self.offset })
    }

    /// Strides that present this layout's elements (in row-major order) under `new_shape`
    /// without copying, or `None` when the memory order makes that impossible.
    /// Follows the chunk-merging rule PyTorch uses for `view`.
    pub fn reshape_strides(&self, new_shape: &[usize]) -> Option<Vec<usize>> {
        if self.numel() == 0 || self.rank() == 0 {
            return Some(contiguous_strides(new_shape));
        }
        let mut new_strides = vec![0usize; new_shape.len()];
        let mut view_d = new_shape.len() as isize - 1;
        let mut chunk_base_stride = *self.strides.last().unwrap();
        let mut tensor_numel = 1usize;
        let mut view_numel = 1usize;
        for tensor_d in (0..self.rank()).rev() {
            tensor_numel *= self.shape[tensor_d];
            let chunk_ends = tensor_d == 0
                || (self.shape[tensor_d - 1] != 1 && self.strides[tensor_d - 1] != tensor_numel * chunk_base_stride);
            if chunk_ends {
                while view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d as usize] == 1) {
                    new_strides[view_d as usize] = view_numel * chunk_base_stride;
                    view_numel *= new_shape[view_d as usize];
                    view_d -= 1;
                }
                if view_numel != tensor_numel {
                    return None;
                }
                if tensor_d > 0 {
                    chunk_base_stride = self.strides[tensor_d - 1];
                    tensor_numel = 1;
                    view_numel = 1;
                }
            }
        }
        if view_d != -1 {
            return None;
        }
        Some(new_strides)
    }
}

/// Calls `f(offset_a, offset_b)` for every index of `shape` in row-major order, where the
/// offsets are computed from two stride sets over that same shape (broadcast strides allowed).
/// The innermost axis runs as a tight strided loop; the outer axes advance like an odometer.
pub fn for_each_offset_pair(
    shape: &[usize],
    a: (&[usize], usize),
    b: (&[usize], usize),
    mut f: impl FnMut(usize, usize),
) {
    let rank = shape.len();
    if shape.contains(&0) {
        return;
    }
    if rank == 0 {
        f(a.1, b.1);
        return;
    }
    let inner = shape[rank - 1];
    let (sa, sb) = (a.0[rank - 1], b.0[rank - 1]);
    let mut index = vec![0usize; rank - 1];
    let (mut base_a, mut base_b) = (a.1, b.1);
    loop {
        let (mut oa, mut ob) = (base_a, base_b);
        for _ in 0..inner {
            f(oa, ob);
            oa += sa;
            ob += sb;
        }
        // advance the odometer over the outer axes
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            index[d] += 1;
            base_a += a.0[d];
            base_b += b.0[d];
            if index[d] < shape[d] {
                break;
            }
            base_a -= a.0[d] * shape[d];
            base_b -= b.0[d] * shape[d];
            index[d] = 0;
        }
    }
}

/// Single-layout version of [`for_each_offset_pair`].
pub fn for_each_offset(layout: &Layout, mut f: impl FnMut(usize)) {
    for_each_offset_pair(&layout.shape, (&layout.strides, layout.offset), (&layout.strides, 0), |o, _| f(o));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_shape_table() {
        let ok: &[(&[usize], &[usize], &[usize])] = &[
            (&[], &[], &[]),
            (&[3], &[], &[3]),
            (&[2, 3], &[3], &[2, 3]),
            (&[2, 1], &[1, 3], &[2, 3]),
            (&[4, 1, 5], &[3, 1], &[4, 3, 5]),
            (&[0, 3], &[1, 3], &[0, 3]),
            (&[0], &[1], &[0]),
            (&[1, 1, 1], &[7], &[1, 1, 7]),
        ];
        for (l, r, want) in ok {
            assert_eq!(broadcast_shapes("t", l, r).unwrap(), want.to_vec(), "{l:?} {r:?}");
            assert_eq!(broadcast_shapes("t", r, l).unwrap(), want.to_vec(), "{r:?} {l:?}");
        }
        let bad: &[(&[usize], &[usize])] = &[(&[2], &[3]), (&[2, 3], &[3, 2]), (&[0], &[2]), (&[4, 2, 3], &[5, 1, 3])];
        for (l, r) in bad {
            let err = broadcast_shapes("add", l, r).unwrap_err().to_string();
            assert!(err.contains(&format!("{l:?}")) && err.contains(&format!("{r:?}")), "{err}");
        }
    }

    #[test]
    fn contiguity_ignores_size_one_axes() {
        let l = Layout { shape: vec![2, 1, 3], strides: vec![3, 99, 1], offset: 5 };
        assert!(l.is_contiguous());
        let l = Layout { shape: vec![2, 3], strides: vec![1, 2], offset: 0 };
        assert!(!l.is_contiguous());
    }
}
