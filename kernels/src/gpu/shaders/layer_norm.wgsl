// Layer norm over rows of `cols`, one workgroup per row:
//   y = (x - mean) * rstd * gamma + beta,  rstd = 1 / sqrt(var + eps)  (biased variance)
// and the row statistics for the backward: stats[r] = mean, stats[rows + r] = rstd.
// P: [rows, cols, eps]
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> GAMMA: array<f32>;
@group(0) @binding(3) var<storage, read> BETA: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
@group(0) @binding(5) var<storage, read_write> STATS: array<f32>;

var<workgroup> red: array<f32, 256>;

fn row_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    for (var s = 128u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    }
    workgroupBarrier();
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn layer_norm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let rows = P[0];
    let cols = P[1];
    let row = linear_group(wid, nwg);
    if (row >= rows) { return; }
    let base = row * cols;
    var s = 0.0;
    for (var c = lid.x; c < cols; c = c + 256u) { s = s + X[base + c]; }
    let mean = row_sum(lid.x, s) / f32(cols);
    var q = 0.0;
    for (var c = lid.x; c < cols; c = c + 256u) { let d = X[base + c] - mean; q = q + d * d; }
    let rstd = inverseSqrt(row_sum(lid.x, q) / f32(cols) + pf(2));
    for (var c = lid.x; c < cols; c = c + 256u) {
        Y[base + c] = (X[base + c] - mean) * rstd * GAMMA[c] + BETA[c];
    }
    if (lid.x == 0u) {
        STATS[row] = mean;
        STATS[rows + row] = rstd;
    }
}
