//! Graph semantics: accumulation, backward twice, no_grad, pruning.

use autograd::ops::{elementwise as ew, reduce};
use autograd::{no_grad, Var};
use tensor::Tensor;

#[test]
fn gradients_accumulate_until_zeroed_and_backward_twice_is_an_error() {
    let w = Var::parameter(Tensor::from_vec(vec![2.0, 3.0], &[2]).unwrap());
    let loss = || reduce::sum_all(&ew::mul(&w, &w).unwrap()).unwrap(); // sum(w^2): grad 2w
    let l = loss();
    l.backward().unwrap();
    assert_eq!(w.grad().unwrap().to_vec(), vec![4.0, 6.0]);
    let err = l.backward().unwrap_err().to_string();
    assert!(err.contains("already backpropagated"), "{err}");
    assert_eq!(w.grad().unwrap().to_vec(), vec![4.0, 6.0], "a failed second backward must not add");
    loss().backward().unwrap();
    assert_eq!(w.grad().unwrap().to_vec(), vec![8.0, 12.0]);
    w.zero_grad();
    assert!(w.grad().is_none());
    // non-scalar backward needs an explicit gradient
    let y = ew::mul_scalar(&w, 3.0);
    assert!(y.backward().is_err());
    y.backward_with(Tensor::from_vec(vec![1.0, 10.0], &[2]).unwrap()).unwrap();
    assert_eq!(w.grad().unwrap().to_vec(), vec![3.0, 30.0]);
    assert!(y.backward_with(Tensor::ones(&[3])).is_err());
}

#[test]
fn no_grad_records_nothing_and_frozen_leaves_get_nothing() {
    let w = Var::parameter(Tensor::ones(&[3]));
    let frozen = Var::parameter(Tensor::ones(&[3]));
    frozen.set_requires_grad(false);
    let y = no_grad(|| ew::mul(&w, &w).unwrap());
    assert!(!y.requires_grad());
    assert!(y.backward().is_err());
    let z = reduce::sum_all(&ew::mul(&w, &frozen).unwrap()).unwrap();
    z.backward().unwrap();
    assert!(frozen.grad().is_none());
    assert_eq!(w.grad().unwrap().to_vec(), vec![1.0; 3]);
    // constants never get a node
    let c = Var::constant(Tensor::ones(&[2]));
    assert!(!ew::exp(&c).requires_grad());
}

#[test]
fn shared_subexpressions_sum_their_gradients() {
    // y = a*b + a*a with a used three times: dy/da = b + 2a
    let a = Var::parameter(Tensor::from_vec(vec![1.5], &[1]).unwrap());
    let b = Var::parameter(Tensor::from_vec(vec![-2.0], &[1]).unwrap());
    let y = reduce::sum_all(&ew::add(&ew::mul(&a, &b).unwrap(), &ew::mul(&a, &a).unwrap()).unwrap()).unwrap();
    y.backward().unwrap();
    assert_eq!(a.grad().unwrap().to_vec(), vec![-2.0 + 3.0]);
    assert_eq!(b.grad().unwrap().to_vec(), vec![1.5]);
}
