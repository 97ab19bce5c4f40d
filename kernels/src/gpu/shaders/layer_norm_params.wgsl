// Layer-norm parameter gradients, accumulated (+=) as the CPU kernel does:
//   dgamma[c] += sum_r dy[r, c] * xhat[r, c],  dbeta[c] += sum_r dy[r, c]
// 16 columns per workgroup, 16 lanes down the rows, a fixed tree across lanes.
// P: [rows, cols]
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> STATS: array<f32>;
@group(0) @binding(3) var<storage, read> DY: array<f32>;
@group(0) @binding(4) var<storage, read_write> DGAMMA: array<f32>;
@group(0) @binding(5) var<storage, read_write> DBETA: array<f32>;

var<workgroup> rg: array<f32, 256>;
var<workgroup> rb: array<f32, 256>;

@compute @workgroup_size(16, 16)
fn layer_norm_params(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let rows = P[0];
    let cols = P[1];
    let col = wid.x * 16u + lid.x;
    var g = 0.0;
    var b = 0.0;
    if (col < cols) {
        for (var r = lid.y; r < rows; r = r + 16u) {
            let dy = DY[r * cols + col];
            g = g + dy * (X[r * cols + col] - STATS[r]) * STATS[rows + r];
            b = b + dy;
        }
    }
    let at = lid.y * 16u + lid.x;
    rg[at] = g;
    rb[at] = b;
    for (var s = 8u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (lid.y < s) {
            rg[at] = rg[at] + rg[at + s * 16u];
            rb[at] = rb[at] + rb[at + s * 16u];
        }
    }
    workgroupBarrier();
    if (lid.y == 0u && col < cols) {
        DGAMMA[col] = DGAMMA[col] + rg[lid.x];
        DBETA[col] = DBETA[col] + rb[lid.x];
    }
}
