// Gradient of y = softmax(scale * x + mask) given y and dy, one workgroup per row:
//   softmax:      dx = scale * y * (dy - sum(dy * y))
//   log-softmax:  dx = scale * (dy - exp(y) * sum(dy))
// P: [rows, cols, scale, flags]        flags: 2 log-softmax
@group(0) @binding(1) var<storage, read> Yv: array<f32>;
@group(0) @binding(2) var<storage, read> DY: array<f32>;
@group(0) @binding(3) var<storage, read_write> DX: array<f32>;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn softmax_backward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = linear_group(wid, nwg);
    let rows = P[0];
    let cols = P[1];
    if (row >= rows) { return; }
    let is_log = (P[3] & 2u) != 0u;
    var acc = 0.0;
    for (var c = lid.x; c < cols; c = c + 256u) {
        let i = row * cols + c;
        acc = acc + select(DY[i] * Yv[i], DY[i], is_log);
    }
    red[lid.x] = acc;
    for (var s = 128u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (lid.x < s) { red[lid.x] = red[lid.x] + red[lid.x + s]; }
    }
    workgroupBarrier();
    let dot = red[0];
    let scale = pf(2);
    for (var c = lid.x; c < cols; c = c + 256u) {
        let i = row * cols + c;
        DX[i] = scale * select(Yv[i] * (DY[i] - dot), DY[i] - exp(Yv[i]) * dot, is_log);
    }
}
