//! View ops checked against plain index arithmetic.
//!
//! A `Dense` reference array (shape + row-major Vec) implements every view by computing, for
//! each output multi-index, which input multi-index it reads. Random chains of views are applied
//! to both a `Tensor` and a `Dense`, on random shapes that include size-0 and size-1 axes, and the
//! results must agree element for element. Views must also share storage (no copy), except a
//! reshape whose memory order forces one.

use tensor::{Rng, Tensor};

#[derive(Clone, Debug)]
struct Dense {
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = flat % shape[d];
        flat /= shape[d];
    }
    idx
}

fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

impl Dense {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Builds a new array of `shape` where each element reads `self` at `source(out_index)`.
    fn build(&self, shape: Vec<usize>, source: impl Fn(&[usize]) -> Vec<usize>) -> Dense {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|f| self.data[ravel(&source(&unravel(f, &shape)), &self.shape)]).collect();
        Dense { shape, data }
    }
    fn permute(&self, perm: &[usize]) -> Dense {
        let shape = perm.iter().map(|&p| self.shape[p]).collect();
        self.build(shape, |o| {
            let mut i = vec![0; perm.len()];
            for (k, &p) in perm.iter().enumerate() {
                i[p] = o[k];
            }
            i
        })
    }
    fn slice(&self, axis: usize, start: usize, end: usize, step: usize) -> Dense {
        let mut shape = self.shape.clone();
        shape[axis] = (end - start).div_ceil(step);
        self.build(shape, |o| {
            let mut i = o.to_vec();
            i[axis] = start + o[axis] * step;
            i
        })
    }
    fn broadcast_to(&self, shape: &[usize]) -> Dense {
        let lead = shape.len() - self.shape.len();
        self.build(shape.to_vec(), |o| {
            (0..self.shape.len()).map(|d| if self.shape[d] == 1 { 0 } else { o[lead + d] }).collect()
        })
    }
    fn squeeze(&self, axis: usize) -> Dense {
        let mut shape = self.shape.clone();
        shape.remove(axis);
        self.build(shape, |o| {
            let mut i = o.to_vec();
            i.insert(axis, 0);
            i
        })
    }
    fn unsqueeze(&self, axis: usize) -> Dense {
        let mut shape = self.shape.clone();
        shape.insert(axis, 1);
        self.build(shape, |o| {
            let mut i = o.to_vec();
            i.remove(axis);
            i
        })
    }
    fn reshape(&self, shape: &[usize]) -> Dense {
        Dense { shape: shape.to_vec(), data: self.data.clone() }
    }
}

fn random_shape(rng: &mut Rng, max_rank: usize) -> Vec<usize> {
    const DIMS: [usize; 6] = [0, 1, 1, 2, 3, 5];
    let rank = rng.below(max_rank + 1);
    (0..rank).map(|_| DIMS[rng.below(DIMS.len())]).collect()
}

fn assert_same(t: &Tensor, d: &Dense, what: &str) {
    assert_eq!(t.shape(), &d.shape[..], "{what}: shape");
    assert_eq!(t.to_vec(), d.data, "{what}: values");
    // random access through the layout must agree too
    for f in (0..d.numel()).step_by(7) {
        let idx = unravel(f, &d.shape);
        assert_eq!(t.get(&idx).unwrap(), d.data[f], "{what}: get {idx:?}");
    }
}

/// A random factorisation of `shape`'s element count into a new shape (keeps zeros as zeros).
fn random_reshape_target(rng: &mut Rng, shape: &[usize]) -> Vec<usize> {
    let n: usize = shape.iter().product();
    if n == 0 {
        let mut s = random_shape(rng, 3);
        s.push(0);
        rng.shuffle(&mut s);
        return s;
    }
    let mut factors = vec![];
    let mut rest = n;
    for p in [2, 3, 5] {
        while rest.is_multiple_of(p) {
            factors.push(p);
            rest /= p;
        }
    }
    if rest > 1 {
        factors.push(rest);
    }
    rng.shuffle(&mut factors);
    let mut out = vec![];
    let mut i = 0;
    while i < factors.len() {
        let take = 1 + rng.below(2);
        out.push(factors[i..(i + take).min(factors.len())].iter().product());
        i += take;
        if rng.below(4) == 0 {
            out.push(1);
        }
    }
    out
}

#[test]
fn random_chains_of_views_match_index_arithmetic() {
    let mut rng = Rng::new(2024);
    for case in 0..400 {
        let shape = random_shape(&mut rng, 4);
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut t = Tensor::from_vec(data.clone(), &shape).unwrap();
        let mut d = Dense { shape: shape.clone(), data };
        let mut trail = format!("case {case} start {shape:?}");
        for _step in 0..6 {
            let rank = d.shape.len();
            let op = rng.below(7);
            let before = t.clone();
            let mut must_share = true;
            match op {
                0 if rank > 0 => {
                    let mut perm: Vec<usize> = (0..rank).collect();
                    rng.shuffle(&mut perm);
                    t = t.permute(&perm).unwrap();
                    d = d.permute(&perm);
                    trail += &format!(" permute{perm:?}");
                }
                1 if rank > 0 => {
                    let axis = rng.below(rank);
                    let size = d.shape[axis];
                    let start = rng.below(size + 1);
                    let end = start + rng.below(size - start + 1);
                    let step = 1 + rng.below(3);
                    t = t.slice(axis, start, end, step).unwrap();
                    d = d.slice(axis, start, end, step);
                    trail += &format!(" slice({axis},{start},{end},{step})");
                }
                2 => {
                    // broadcast: add up to one leading axis and expand size-1 axes
                    let mut target: Vec<usize> =
                        d.shape.iter().map(|&s| if s == 1 { 1 + rng.below(3) } else { s }).collect();
                    if rng.below(2) == 0 {
                        target.insert(0, rng.below(3));
                    }
                    t = t.broadcast_to(&target).unwrap();
                    d = d.broadcast_to(&target);
                    trail += &format!(" broadcast{target:?}");
                }
                3 if d.shape.contains(&1) => {
                    let axis = d.shape.iter().position(|&s| s == 1).unwrap();
                    t = t.squeeze(axis).unwrap();
                    d = d.squeeze(axis);
                    trail += &format!(" squeeze({axis})");
                }
                4 if rank < 6 => {
                    let axis = rng.below(rank + 1);
                    t = t.unsqueeze(axis).unwrap();
                    d = d.unsqueeze(axis);
                    trail += &format!(" unsqueeze({axis})");
                }
                5 if rank >= 2 => {
                    let (a, b) = (rng.below(rank), rng.below(rank));
                    t = t.transpose(a, b).unwrap();
                    d = d.permute(&{
                        let mut p: Vec<usize> = (0..rank).collect();
                        p.swap(a, b);
                        p
                    });
                    trail += &format!(" transpose({a},{b})");
                }
                _ => {
                    let target = random_reshape_target(&mut rng, &d.shape);
                    let view_possible = before.layout().reshape_strides(&target).is_some();
                    t = t.reshape(&target).unwrap();
                    d = d.reshape(&target);
                    must_share = view_possible;
                    if before.is_contiguous() {
                        assert!(view_possible, "{trail}: contiguous reshape must be a view");
                    }
                    trail += &format!(" reshape{target:?}");
                }
            }
            assert_same(&t, &d, &trail);
            if must_share {
                assert!(t.shares_storage_with(&before), "{trail}: view copied data");
            }
        }
        let c = t.contiguous();
        assert!(c.is_contiguous());
        assert_same(&c, &d, &format!("{trail} contiguous"));
    }
}

#[test]
fn view_errors_are_errors_not_panics() {
    let t = Tensor::zeros(&[2, 3, 4]);
    assert!(t.reshape(&[5, 5]).is_err());
    assert!(t.permute(&[0, 0, 1]).is_err());
    assert!(t.permute(&[0, 1]).is_err());
    assert!(t.transpose(0, 3).is_err());
    assert!(t.narrow(1, 2, 2).is_err());
    assert!(t.slice(1, 0, 3, 0).is_err());
    assert!(t.slice(3, 0, 1, 1).is_err());
    assert!(t.broadcast_to(&[3, 3, 4]).is_err());
    assert!(t.broadcast_to(&[3, 4]).is_err());
    assert!(t.squeeze(0).is_err());
    assert!(t.unsqueeze(4).is_err());
    assert!(t.get(&[2, 0, 0]).is_err());
    assert!(Tensor::from_vec(vec![1.0; 5], &[2, 3]).is_err());
    assert!(Tensor::from_vec(vec![], &[usize::MAX, 2]).is_err());
    let msg = t.reshape(&[5, 5]).unwrap_err().to_string();
    assert!(msg.contains("[2, 3, 4]") && msg.contains("[5, 5]"), "{msg}");
}

#[test]
fn reshape_of_a_transposed_matrix_copies_only_when_needed() {
    let t = Tensor::arange(0.0, 12.0, 1.0).unwrap().reshape(&[3, 4]).unwrap();
    let tt = t.t().unwrap(); // (4, 3), strides (1, 4)
    let flat = tt.reshape(&[12]).unwrap();
    assert!(!flat.shares_storage_with(&t));
    assert_eq!(flat.to_vec(), vec![0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]);
    // splitting an axis of a transposed view stays a view
    let split = tt.reshape(&[2, 2, 3]).unwrap();
    assert!(split.shares_storage_with(&t));
    assert_eq!(split.get(&[1, 0, 2]).unwrap(), tt.get(&[2, 2]).unwrap());
}

#[test]
fn data_mut_is_copy_on_write() {
    let a = Tensor::arange(0.0, 4.0, 1.0).unwrap();
    let mut b = a.clone();
    b.data_mut()[0] = 100.0;
    assert_eq!(a.to_vec(), vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(b.to_vec(), vec![100.0, 1.0, 2.0, 3.0]);
    let mut v = a.narrow(0, 1, 2).unwrap();
    v.data_mut()[0] = -1.0;
    assert_eq!(v.to_vec(), vec![-1.0, 2.0]);
    assert_eq!(a.to_vec(), vec![0.0, 1.0, 2.0, 3.0]);
}

#[test]
fn creation_is_reproducible_and_display_shows_shape_and_values() {
    assert_eq!(Tensor::randn(&[4, 5], 0.0, 1.0, 9).to_vec(), Tensor::randn(&[4, 5], 0.0, 1.0, 9).to_vec());
    assert_ne!(Tensor::randn(&[4, 5], 0.0, 1.0, 9).to_vec(), Tensor::randn(&[4, 5], 0.0, 1.0, 10).to_vec());
    let u = Tensor::rand_uniform(&[1000], 2.0, 3.0, 1);
    assert!(u.to_vec().iter().all(|&x| (2.0..3.0).contains(&x)));
    assert_eq!(Tensor::arange(1.0, 2.0, 0.25).unwrap().to_vec(), vec![1.0, 1.25, 1.5, 1.75]);
    assert!(Tensor::arange(0.0, 1.0, 0.0).is_err());
    assert_eq!(Tensor::full(&[2], 7.0).to_vec(), vec![7.0, 7.0]);
    let s = format!("{}", Tensor::arange(0.0, 20.0, 1.0).unwrap().reshape(&[4, 5]).unwrap());
    assert!(s.starts_with("Tensor[4, 5] [0.0000, 1.0000"), "{s}");
    assert!(s.contains("(20 values)"), "{s}");
    let d = format!("{:?}", Tensor::zeros(&[2]).broadcast_to(&[3, 2]).unwrap());
    assert!(d.contains("shape=[3, 2]") && d.contains("strides=[0, 1]"), "{d}");
}

#[test]
fn half_precision_round_trips() {
    let t = Tensor::from_vec(vec![1.0, -2.5, 0.1, 65504.0, 1e-8], &[5]).unwrap();
    let h = Tensor::from_f16(&t.to_f16_vec(), &[5]).unwrap();
    assert_eq!(h.get(&[0]).unwrap(), 1.0);
    assert_eq!(h.get(&[3]).unwrap(), 65504.0);
    assert!((h.get(&[2]).unwrap() - 0.1).abs() < 1e-4);
    let b = Tensor::from_bf16(&t.to_bf16_vec(), &[5]).unwrap();
    assert_eq!(b.get(&[1]).unwrap(), -2.5);
    assert!((b.get(&[2]).unwrap() - 0.1).abs() < 1e-3);
    assert_eq!(t.round_to_bf16().to_vec(), b.to_vec());
    assert_eq!(t.round_to_f16().to_vec(), h.to_vec());
}
