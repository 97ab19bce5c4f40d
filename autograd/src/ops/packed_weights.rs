//! Packed copies of weights for inference: [`super::matmul::linear`] without the per-call
//! packing.
//!
//! Every GEMM packs its B operand into the micro-kernel's panel layout; for a linear layer B
//! is the weight, read transposed. In training the weight changes every step, so packing it
//! on every call is the price of the product. At inference (no gradients wanted for it) the
//! same weight meets a new batch on every call, and packing it again each time cost about 5%
//! of a BERT-base forward. Here each weight is packed once (`kernels::gemm::PackedB`) and
//! the packed copy is reused while the weight's buffer is unchanged.
//!
//! Why a reused copy can never be stale: entries hold a `Weak` reference to the weight's
//! buffer. A tensor's buffer is written in place only through `Tensor::data_mut`, and only
//! when nothing else references it (`Arc::get_mut`, which a live `Weak` defeats); otherwise
//! `data_mut` copies into a new buffer. So while an entry exists its buffer's contents are
//! frozen, and a weight that an optimiser has since updated lives in another buffer, which
//! the lookup (by identity, offset and shape) does not match. The `Weak` also keeps the
//! buffer's address from being reused by a new one while the entry lives.
//!
//! The cache holds at most [`budget_bytes`] of packed copies (1 GiB, or
//! `ALIGN_PACKED_WEIGHTS_MB`; 0 turns it off), dropping the oldest first; entries whose
//! weight was freed are dropped on the next lookup.

use std::sync::{Arc, Mutex, Weak};

use kernels::bf16::{matmul_precision, Bf16Kernel, MatmulPrecision, PackedBf16B};
use kernels::gemm::PackedB;
use kernels::Isa;
use tensor::storage::Storage;
use tensor::Tensor;

/// One weight of an entry: its buffer (watched, not owned), offset and shape.
struct Part {
    storage: Weak<Storage>,
    offset: usize,
    shape: [usize; 2],
}

impl Part {
    fn of(w: &Tensor) -> Part {
        let &[out, inp] = w.shape() else { unreachable!("checked by the caller") };
        Part { storage: Arc::downgrade(w.storage()), offset: w.layout().offset, shape: [out, inp] }
    }

    fn is(&self, w: &Tensor) -> bool {
        self.offset == w.layout().offset
            && self.shape == w.shape()
            && self.storage.upgrade().is_some_and(|s| Arc::ptr_eq(&s, w.storage()))
    }
}

/// A weight's packed transpose, for the f32 GEMM or (matmul precision bf16) held in bf16 for
/// the bf16 GEMM.
pub enum PackedWeight {
    F32(PackedB),
    Bf16(PackedBf16B),
}

impl PackedWeight {
    /// (K, N) = (in, out) of the packed W^T.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            PackedWeight::F32(p) => p.shape(),
            PackedWeight::Bf16(p) => p.shape(),
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            PackedWeight::F32(p) => p.bytes(),
            PackedWeight::Bf16(p) => p.bytes(),
        }
    }

    fn precision(&self) -> MatmulPrecision {
        match self {
            PackedWeight::F32(_) => MatmulPrecision::F32,
            PackedWeight::Bf16(_) => MatmulPrecision::Bf16,
        }
    }
}

/// The packed transpose of one weight, or of several stacked along their rows.
struct Entry {
    parts: Vec<Part>,
    packed: Arc<PackedWeight>,
}

impl Entry {
    fn alive(&self) -> bool {
        self.parts.iter().all(|p| p.storage.strong_count() > 0)
    }

    fn is(&self, ws: &[&Tensor], precision: MatmulPrecision) -> bool {
        self.packed.precision() == precision
            && self.parts.len() == ws.len()
            && self.parts.iter().zip(ws).all(|(p, w)| p.is(w))
    }
}

fn cache() -> &'static Mutex<Vec<Entry>> {
    static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
    &CACHE
}

/// Bytes of packed weights the cache may hold: `ALIGN_PACKED_WEIGHTS_MB` (read once), else
/// 1 GiB.
pub fn budget_bytes() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::env::var("ALIGN_PACKED_WEIGHTS_MB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(1 << 30, |mb| mb << 20)
    })
}

/// B = W^T packed for `kernels::gemm::sgemm_packed_b` (or, with the matmul precision bf16,
/// `kernels::bf16::gemm_bf16_packed_b`), for a contiguous weight W (out, in): from the cache when this buffer was packed before, else packed now and kept. `None` when
/// the cache is off or W is not a contiguous matrix.
pub fn packed_transpose(w: &Tensor) -> Option<Arc<PackedWeight>> {
    packed_transpose_stacked(&[w])
}

/// [`packed_transpose`] of the weights stacked along their rows, [W_1; W_2; ...] (sum of
/// outs, in), without a stacked copy per call: BERT's query, key and value projections run
/// as one GEMM of their stacked weights, and stacking them anew on every call gave the
/// cache a new buffer each time (a repack per layer per forward, about 4% of BERT-base's).
/// `None` when the cache is off, a weight is not a contiguous matrix, or their widths differ.
pub fn packed_transpose_stacked(ws: &[&Tensor]) -> Option<Arc<PackedWeight>> {
    let budget = budget_bytes();
    let precision = matmul_precision();
    let inp = match ws.first()?.shape() {
        &[_, inp] => inp,
        _ => return None,
    };
    if budget == 0 || ws.iter().any(|w| !w.is_contiguous() || w.shape().len() != 2 || w.shape()[1] != inp) {
        return None;
    }
    {
        let mut entries = cache().lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(Entry::alive);
        if let Some(e) = entries.iter().find(|e| e.is(ws, precision)) {
            return Some(e.packed.clone());
        }
    }
    // Packed outside the lock: packing runs on the kernel threads, which may themselves be
    // waiting for this lock in another layer's call.
    let out: usize = ws.iter().map(|w| w.shape()[0]).sum();
    let pack = |w: &[f32]| match precision {
        MatmulPrecision::F32 => PackedWeight::F32(PackedB::new(Isa::best(), inp, out, w, 1, inp)),
        MatmulPrecision::Bf16 => PackedWeight::Bf16(PackedBf16B::new(Bf16Kernel::best(), inp, out, w, 1, inp)),
    };
    let packed = Arc::new(match ws {
        [w] => pack(w.as_contiguous_slice()?),
        _ => {
            let stacked: Vec<f32> =
                ws.iter().flat_map(|w| w.as_contiguous_slice().expect("contiguous").iter().copied()).collect();
            pack(&stacked)
        }
    });
    if packed.bytes() > budget {
        return Some(packed); // used once, not kept
    }
    let mut entries = cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = entries.iter().find(|e| e.is(ws, precision)) {
        return Some(e.packed.clone()); // another thread packed it meanwhile
    }
    let mut held: usize = entries.iter().map(|e| e.packed.bytes()).sum();
    while held + packed.bytes() > budget && !entries.is_empty() {
        held -= entries.remove(0).packed.bytes();
    }
    entries.push(Entry { parts: ws.iter().map(|w| Part::of(w)).collect(), packed: packed.clone() });
    Some(packed)
}

/// Bytes held by the cache now (packed copies of live weights).
pub fn cached_bytes() -> usize {
    let mut entries = cache().lock().unwrap_or_else(|e| e.into_inner());
    entries.retain(Entry::alive);
    entries.iter().map(|e| e.packed.bytes()).sum()
}

/// Drops every packed copy.
pub fn clear() {
    cache().lock().unwrap_or_else(|e| e.into_inner()).clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::linear;
    use crate::Var;

    #[test]
    fn inference_linear_reuses_one_packed_copy_and_matches_the_training_path() {
        let x = Tensor::rand_uniform(&[37, 70], -1.0, 1.0, 1);
        let w = Tensor::rand_uniform(&[45, 70], -1.0, 1.0, 2);
        let b = Tensor::rand_uniform(&[45], -1.0, 1.0, 3);
        let (xv, wv, bv) = (Var::constant(x.clone()), Var::parameter(w.clone()), Var::constant(b));
        // grad enabled and W a parameter: the plain GEMM
        let trained = linear(&xv, &wv, Some(&bv)).unwrap().value().to_vec();
        // no grad: the packed copy, bit for bit the same, and the same copy on the next call
        let first = crate::no_grad(|| linear(&xv, &wv, Some(&bv)).unwrap().value().to_vec());
        let again = crate::no_grad(|| linear(&xv, &wv, Some(&bv)).unwrap().value().to_vec());
        assert!(trained.iter().zip(&first).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(first, again);
        let p1 = packed_transpose(&w).expect("cached");
        let p2 = packed_transpose(&w).expect("cached");
        assert!(Arc::ptr_eq(&p1, &p2), "the second lookup must reuse the first copy");
        assert_eq!(p1.shape(), (70, 45));
    }

    #[test]
    fn stacked_weights_are_packed_once_and_match_their_concatenation() {
        use crate::ops::matmul::linear_stacked;
        let x = Var::constant(Tensor::rand_uniform(&[29, 40], -1.0, 1.0, 11));
        let ws: Vec<Var> = (0..3).map(|i| Var::parameter(Tensor::rand_uniform(&[24, 40], -1.0, 1.0, 12 + i))).collect();
        let bs: Vec<Var> = (0..3).map(|i| Var::parameter(Tensor::rand_uniform(&[24], -1.0, 1.0, 20 + i))).collect();
        let (wr, br): (Vec<&Var>, Vec<&Var>) = (ws.iter().collect(), bs.iter().collect());
        // with gradients wanted: the concatenation through `linear`, differentiable
        let trained = linear_stacked(&x, &wr, Some(&br)).unwrap();
        assert!(trained.requires_grad());
        // without: the cached stacked panels, the same bits, one packed copy for every call
        let first = crate::no_grad(|| linear_stacked(&x, &wr, Some(&br)).unwrap().value().to_vec());
        let again = crate::no_grad(|| linear_stacked(&x, &wr, Some(&br)).unwrap().value().to_vec());
        let trained = trained.value().to_vec();
        assert!(trained.iter().zip(&first).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(first, again);
        let values: Vec<Tensor> = ws.iter().map(|w| w.value()).collect();
        let refs: Vec<&Tensor> = values.iter().collect();
        let (p1, p2) = (packed_transpose_stacked(&refs).unwrap(), packed_transpose_stacked(&refs).unwrap());
        assert!(Arc::ptr_eq(&p1, &p2));
        assert_eq!(p1.shape(), (40, 72));
        // another order is another weight
        let swapped = [refs[1], refs[0], refs[2]];
        assert!(!Arc::ptr_eq(&p1, &packed_transpose_stacked(&swapped).unwrap()));
        // widths that differ are refused, not packed
        let narrow = Tensor::rand_uniform(&[24, 39], -1.0, 1.0, 30);
        assert!(packed_transpose_stacked(&[refs[0], &narrow]).is_none());
    }

    #[test]
    fn a_weight_written_after_packing_is_packed_again() {
        let x = Tensor::rand_uniform(&[20, 8], -1.0, 1.0, 4);
        let mut w = Tensor::rand_uniform(&[6, 8], -1.0, 1.0, 5);
        let before = packed_transpose(&w).expect("packed");
        let y0 = crate::no_grad(|| linear(&Var::constant(x.clone()), &Var::constant(w.clone()), None).unwrap().value());
        // the only way to write a buffer: data_mut, which finds it watched and copies
        w.data_mut()[0] += 10.0;
        let after = packed_transpose(&w).expect("packed");
        assert!(!Arc::ptr_eq(&before, &after), "a changed weight must not reuse the old panels");
        let y1 = crate::no_grad(|| linear(&Var::constant(x.clone()), &Var::constant(w.clone()), None).unwrap().value());
        let want = x.matmul(&w.t().unwrap()).unwrap();
        tensor::Tolerance::new(1e-5, 1e-5).assert("linear after a write", &y1.to_vec(), &want.to_vec());
        // column 0 of y moved by 10 * x[:, 0]; the other columns did not
        let (y0, y1) = (y0.to_vec(), y1.to_vec());
        for r in 0..20 {
            let dx = x.to_vec()[r * 8];
            assert!((y1[r * 6] - y0[r * 6] - 10.0 * dx).abs() < 1e-4);
            assert_eq!(y1[r * 6 + 1], y0[r * 6 + 1]);
        }
    }

    #[test]
    fn entries_of_freed_weights_are_dropped_and_views_are_keyed_by_offset() {
        let whole = Tensor::rand_uniform(&[8, 16], -1.0, 1.0, 6);
        let top = whole.narrow(0, 0, 4).unwrap();
        let bottom = whole.narrow(0, 4, 4).unwrap();
        let (a, b) = (packed_transpose(&top).unwrap(), packed_transpose(&bottom).unwrap());
        assert!(!Arc::ptr_eq(&a, &b), "two views of one buffer are two weights");
        let watch = Arc::downgrade(whole.storage());
        drop((whole, top, bottom));
        assert_eq!(watch.strong_count(), 0);
        // the next lookup sweeps the dead entries (their Weak no longer upgrades)
        let _ = cached_bytes();
        let entries = cache().lock().unwrap();
        assert!(entries.iter().all(|e| e.parts.iter().all(|p| !p.storage.ptr_eq(&watch))));
    }
}
