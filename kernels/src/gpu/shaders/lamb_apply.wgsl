// LAMB's second pass: w -= lr * r * u, with the trust ratio r = ||w|| / ||u|| read from the
// two sums of squares the reduction kernels left in NORMS (r = 1 when either is zero or the
// group opts out), so the step needs no read-back.
// P: [n, lr, use_trust_ratio]
@group(0) @binding(1) var<storage, read> U: array<f32>;
@group(0) @binding(2) var<storage, read> NORMS: array<f32>;
@group(0) @binding(3) var<storage, read_write> W: array<f32>;

@compute @workgroup_size(256)
fn lamb_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i >= P[0]) { return; }
    let w_norm = sqrt(NORMS[0]);
    let u_norm = sqrt(NORMS[1]);
    var ratio = 1.0;
    if (P[2] != 0u && w_norm > 0.0 && u_norm > 0.0) { ratio = w_norm / u_norm; }
    W[i] = W[i] - pf(1) * ratio * U[i];
}
