//! Memory: a thousand forward/backward/update steps must not grow the number of live tensor
//! buffers. Alone in its own test binary so no other test allocates concurrently.

use autograd::ops::{elementwise as ew, matmul::matmul, norm, softmax};
use autograd::{no_grad, Var};
use tensor::{live_buffers, live_bytes, Tensor};

#[test]
fn a_thousand_training_steps_do_not_grow_memory() {
    // Two-layer MLP with layer norm and softmax cross-entropy, trained by plain SGD.
    let w1 = Var::parameter(Tensor::randn(&[8, 16], 0.0, 0.3, 1));
    let w2 = Var::parameter(Tensor::randn(&[16, 4], 0.0, 0.3, 2));
    let gamma = Var::parameter(Tensor::ones(&[16]));
    let beta = Var::parameter(Tensor::zeros(&[16]));
    let x = Var::constant(Tensor::randn(&[32, 8], 0.0, 1.0, 3));
    let targets: Vec<usize> = (0..32).map(|i| i % 4).collect();
    let params = [&w1, &w2, &gamma, &beta];
    let step = |i: usize| -> f32 {
        let h = matmul(&x, &w1).unwrap();
        let h = norm::layer_norm(&h, &gamma, &beta, 1e-5).unwrap();
        let h = ew::gelu(&h);
        let logits = matmul(&h, &w2).unwrap();
        let loss = softmax::cross_entropy(&logits, &targets, 0.1).unwrap();
        loss.backward().unwrap();
        no_grad(|| {
            for p in params {
                let g = p.grad().unwrap();
                p.set_value(p.value().sub(&g.mul_scalar(0.05)).unwrap()).unwrap();
                p.zero_grad();
            }
        });
        let _ = i;
        loss.value().item().unwrap()
    };
    let first = step(0);
    for i in 1..10 {
        step(i);
    }
    let (buffers, bytes) = (live_buffers(), live_bytes());
    let mut last = 0.0;
    for i in 10..1000 {
        last = step(i);
    }
    let (buffers_after, bytes_after) = (live_buffers(), live_bytes());
    assert!(buffers_after <= buffers, "live buffers grew: {buffers} -> {buffers_after}");
    assert!(bytes_after <= bytes, "live bytes grew: {bytes} -> {bytes_after}");
    assert!(last < first, "training should reduce the loss: {first} -> {last}");
}
