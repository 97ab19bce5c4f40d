// Embedding gradient as a deterministic scatter-add: the host groups the positions of each
// distinct id (CSR: ids[u], starts[u + 1], positions[n]), and one thread per (distinct id,
// column) adds that id's rows of dy in position order. No atomics, same bits every run.
//   dtable[ids[u], c] += sum_{p in starts[u]..starts[u+1]} dy[positions[p], c]
// P: [n_unique, dim, starts_at, positions_at]   (offsets of the CSR arrays inside CSR)
@group(0) @binding(1) var<storage, read> DY: array<f32>;
@group(0) @binding(2) var<storage, read> CSR: array<u32>;
@group(0) @binding(3) var<storage, read_write> DTABLE: array<f32>;

@compute @workgroup_size(256)
fn scatter_add_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    let dim = P[1];
    if (i >= P[0] * dim) { return; }
    let u = i / dim;
    let c = i % dim;
    var acc = 0.0;
    for (var p = CSR[P[2] + u]; p < CSR[P[2] + u + 1u]; p = p + 1u) {
        acc = acc + DY[CSR[P[3] + p] * dim + c];
    }
    let at = CSR[u] * dim + c;
    DTABLE[at] = DTABLE[at] + acc;
}
