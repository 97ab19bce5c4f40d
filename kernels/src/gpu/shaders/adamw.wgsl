// AdamW in place, as torch.optim.AdamW (nn::optim::AdamW is the CPU reference):
//   w *= 1 - lr wd;  m += (g - m)(1 - b1);  v = b2 v + (1 - b2) g^2;
//   w -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)
// P: [n, lr, wd, b1, b2, bc1, sqrt_bc2, eps]
@group(0) @binding(1) var<storage, read> G: array<f32>;
@group(0) @binding(2) var<storage, read_write> W: array<f32>;
@group(0) @binding(3) var<storage, read_write> M: array<f32>;
@group(0) @binding(4) var<storage, read_write> V: array<f32>;

@compute @workgroup_size(256)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i >= P[0]) { return; }
    let lr = pf(1);
    let b1 = pf(3);
    let b2 = pf(4);
    let g = G[i];
    var w = W[i] * (1.0 - lr * pf(2));
    let m = M[i] + (g - M[i]) * (1.0 - b1);
    let v = V[i] * b2 + (1.0 - b2) * g * g;
    w = w - (lr / pf(5)) * m / (sqrt(v) / pf(6) + pf(7));
    W[i] = w;
    M[i] = m;
    V[i] = v;
}

