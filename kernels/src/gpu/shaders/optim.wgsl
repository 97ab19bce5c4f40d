// LAMB's first pass, elementwise (kernels::optim::lamb_direction_reference is the CPU
// reference): the Adam moments in place and the update direction
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  u = m inv_bias1 / (sqrt(v inv_bias2) + eps) + wd w
// P: [n, b1, b2, inv_bias1, inv_bias2, eps, wd]
@group(0) @binding(1) var<storage, read> G: array<f32>;
@group(0) @binding(2) var<storage, read_write> W: array<f32>;
@group(0) @binding(3) var<storage, read_write> M: array<f32>;
@group(0) @binding(4) var<storage, read_write> V: array<f32>;
@group(0) @binding(5) var<storage, read_write> U: array<f32>;

@compute @workgroup_size(256)
fn lamb_direction(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i >= P[0]) { return; }
    let b1 = pf(1);
    let b2 = pf(2);
    let g = G[i];
    let m = b1 * M[i] + (1.0 - b1) * g;
    let v = b2 * V[i] + (1.0 - b2) * g * g;
    M[i] = m;
    V[i] = v;
    U[i] = (m * pf(3)) / (sqrt(v * pf(4)) + pf(5)) + pf(6) * W[i];
}
