// Layer-norm input gradient, one workgroup per row (xhat = (x - mean) * rstd, h = dy * gamma):
//   dx = rstd * (h - mean(h) - xhat * mean(h * xhat))
// P: [rows, cols]
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> GAMMA: array<f32>;
@group(0) @binding(3) var<storage, read> STATS: array<f32>;
@group(0) @binding(4) var<storage, read> DY: array<f32>;
@group(0) @binding(5) var<storage, read_write> DX: array<f32>;

var<workgroup> red: array<f32, 512>;

@compute @workgroup_size(256)
fn layer_norm_backward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>) {
    let rows = P[0];
    let cols = P[1];
    let row = linear_group(wid, nwg);
    if (row >= rows) { return; }
    let base = row * cols;
    let mean = STATS[row];
    let rstd = STATS[rows + row];
    var sh = 0.0;
    var shx = 0.0;
    for (var c = lid.x; c < cols; c = c + 256u) {
        let h = DY[base + c] * GAMMA[c];
        sh = sh + h;
        shx = shx + h * (X[base + c] - mean) * rstd;
    }
    red[lid.x] = sh;
    red[256u + lid.x] = shx;
    for (var s = 128u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (lid.x < s) {
            red[lid.x] = red[lid.x] + red[lid.x + s];
            red[256u + lid.x] = red[256u + lid.x] + red[256u + lid.x + s];
        }
    }
    workgroupBarrier();
    let mh = red[0] / f32(cols);
    let mhx = red[256] / f32(cols);
    for (var c = lid.x; c < cols; c = c + 256u) {
        let h = DY[base + c] * GAMMA[c];
        let xhat = (X[base + c] - mean) * rstd;
        DX[base + c] = rstd * (h - mh - xhat * mhx);
    }
}
