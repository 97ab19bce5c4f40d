// Deterministic reductions: a fixed tree in shared memory, no atomics.
//   reduce_rows: y[r] = scale * op(x[r, 0..cols]), one workgroup per row
//                (op 0 sum, 1 max, 2 sum of squares)
//   reduce_cols: y[c] = scale * sum_r x[r, c] (+ y[c] when accumulating), 16 columns per
//                workgroup, 16 lanes down the rows of each
//   partial_sums: y[g] = op-sum of x[g * 4096 .. (g + 1) * 4096] (ragged tail), the first pass
//                of a whole-buffer sum (reduce_rows with rows = 1 finishes it)
// P: [rows, cols, op, scale, flags]          flags: 1 accumulate (reduce_cols)
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

var<workgroup> red: array<f32, 256>;

fn combine(op: u32, a: f32, b: f32) -> f32 {
    if (op == 1u) { return max(a, b); }
    return a + b;
}

fn lift(op: u32, x: f32) -> f32 {
    if (op == 2u) { return x * x; }
    return x;
}

fn identity(op: u32) -> f32 {
    if (op == 1u) { return -3.4028235e38; }
    return 0.0;
}

// Tree-reduces red[0..256] into red[0]; every thread of the workgroup must call it.
fn tree(op: u32, lid: u32) {
    for (var s = 128u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (lid < s) { red[lid] = combine(op, red[lid], red[lid + s]); }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn reduce_rows(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = linear_group(wid, nwg);
    let rows = P[0];
    let cols = P[1];
    let op = P[2];
    if (row >= rows) { return; }
    var acc = identity(op);
    for (var c = lid.x; c < cols; c = c + 256u) { acc = combine(op, acc, lift(op, X[row * cols + c])); }
    red[lid.x] = acc;
    tree(op, lid.x);
    if (lid.x == 0u) { Y[row] = pf(3) * red[0]; }
}

@compute @workgroup_size(16, 16)
fn reduce_cols(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let rows = P[0];
    let cols = P[1];
    let col = wid.x * 16u + lid.x;
    var acc = 0.0;
    if (col < cols) {
        for (var r = lid.y; r < rows; r = r + 16u) { acc = acc + X[r * cols + col]; }
    }
    red[lid.y * 16u + lid.x] = acc;
    for (var s = 8u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (lid.y < s) { red[lid.y * 16u + lid.x] = red[lid.y * 16u + lid.x] + red[(lid.y + s) * 16u + lid.x]; }
    }
    workgroupBarrier();
    if (lid.y == 0u && col < cols) {
        var v = pf(3) * red[lid.x];
        if ((P[4] & 1u) != 0u) { v = v + Y[col]; }
        Y[col] = v;
    }
}

@compute @workgroup_size(256)
fn partial_sums(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = linear_group(wid, nwg);
    let n = P[1];
    let op = P[2];
    if (g * 4096u >= n) { return; }
    var acc = 0.0;
    for (var k = 0u; k < 16u; k = k + 1u) {
        let i = g * 4096u + k * 256u + lid.x;
        if (i < n) { acc = acc + lift(op, X[i]); }
    }
    red[lid.x] = acc;
    tree(0u, lid.x);
    if (lid.x == 0u) { Y[g] = red[0]; }
}
