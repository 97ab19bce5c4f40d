// y = softmax(scale * x + mask) (or log-softmax) over rows of `cols`, one workgroup per row.
// The additive mask is shared by groups of rows: row r adds mask[(r / rows_per_mask) * cols ..]
// (attention scores (B, H, Tq, Tk) with a (B, Tk) padding mask: rows_per_mask = H * Tq).
// P: [rows, cols, scale, flags, rows_per_mask]       flags: 1 mask, 2 log-softmax
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> MASK: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;

var<workgroup> red: array<f32, 256>;

fn logit(row: u32, c: u32) -> f32 {
    let cols = P[1];
    var v = pf(2) * X[row * cols + c];
    if ((P[3] & 1u) != 0u) { v = v + MASK[(row / P[4]) * cols + c]; }
    return v;
}

@compute @workgroup_size(256)
fn softmax_rows(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = linear_group(wid, nwg);
    let rows = P[0];
    let cols = P[1];
    if (row >= rows) { return; }
    var m = -3.4028235e38;
    for (var c = lid.x; c < cols; c = c + 256u) { m = max(m, logit(row, c)); }
    red[lid.x] = m;
    for (var s = 128u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (lid.x < s) { red[lid.x] = max(red[lid.x], red[lid.x + s]); }
    }
    workgroupBarrier();
    m = red[0];
    workgroupBarrier();
    var total = 0.0;
    for (var c = lid.x; c < cols; c = c + 256u) { total = total + exp(logit(row, c) - m); }
    red[lid.x] = total;
    for (var s = 128u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (lid.x < s) { red[lid.x] = red[lid.x] + red[lid.x + s]; }
    }
    workgroupBarrier();
    total = red[0];
    let log_sum = log(total);
    let inv = 1.0 / total;
    let is_log = (P[3] & 2u) != 0u;
    for (var c = lid.x; c < cols; c = c + 256u) {
        let v = logit(row, c) - m;
        Y[row * cols + c] = select(exp(v) * inv, v - log_sum, is_log);
    }
}
