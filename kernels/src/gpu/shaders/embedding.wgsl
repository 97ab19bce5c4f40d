// Embedding lookup: out[i, :] = table[ids[i], :] (ids checked on the host).
// P: [n_ids, dim]
@group(0) @binding(1) var<storage, read> TABLE: array<f32>;
@group(0) @binding(2) var<storage, read> IDS: array<u32>;
@group(0) @binding(3) var<storage, read_write> OUT: array<f32>;

@compute @workgroup_size(256)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    let dim = P[1];
    if (i >= P[0] * dim) { return; }
    OUT[i] = TABLE[IDS[i / dim] * dim + i % dim];
}
