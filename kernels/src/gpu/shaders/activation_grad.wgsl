// dx = dy * f'(x) for the activations (x, dy, dx contiguous, one length).
// P: [n, op]  op: 6 gelu-erf, 7 gelu-tanh, 8 silu, 9 sigmoid, 10 tanh, 5 relu, 1 exp
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> DY: array<f32>;
@group(0) @binding(3) var<storage, read_write> DX: array<f32>;

fn derivative(op: u32, x: f32) -> f32 {
    switch op {
        case 6u: {
            let cdf = 0.5 * (1.0 + erf_rational(x * 0.70710678));
            return cdf + x * 0.3989423 * exp(-0.5 * x * x);
        }
        case 7u: {
            let z = 0.7978846 * (x + 0.044715 * x * x * x);
            let s = 1.0 / (1.0 + exp(-2.0 * z));
            let dz = 0.7978846 * (1.0 + 3.0 * 0.044715 * x * x);
            return s + 2.0 * x * s * (1.0 - s) * dz;
        }
        case 8u: { let s = sigmoid(x); return s * (1.0 + x * (1.0 - s)); }
        case 9u: { let s = sigmoid(x); return s * (1.0 - s); }
        case 10u: { let t = tanh(x); return 1.0 - t * t; }
        case 5u: { return select(0.0, 1.0, x > 0.0); }
        case 1u: { return exp(x); }
        default: { return 1.0; }
    }
}

@compute @workgroup_size(256)
fn activation_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i >= P[0]) { return; }
    DX[i] = DY[i] * derivative(P[1], X[i]);
}
