// NHWC convolutions, direct form, one thread per output element of each pass (no atomics:
// every sum runs in a fixed order, so results are deterministic).
//   conv_forward          y[n, oy, ox, co] = sum_{ky, kx, ci} x[n, iy, ix, ci] w[ky, kx, ci, co]
//   conv_backward_input   dx[n, iy, ix, ci] = sum over the (ky, kx, co) whose window covers it
//   conv_backward_weight  dw[ky, kx, ci, co] = sum_{n, oy, ox} x[n, iy, ix, ci] dy[n, oy, ox, co]
// with iy = oy * stride_h + ky - pad_top (and likewise for x); out-of-range taps are padding.
// Depthwise (one filter per channel, w[ky, kx, c]) has the same three passes with ci = co = c.
// Dense 1x1 convolutions never come here: they are matrix products (ops::conv2d).
//
// P: [batch, in_h, in_w, c_in, c_out, k_h, k_w, stride_h, stride_w, pad_top, pad_left, out_h, out_w, n]
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> OUT: array<f32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 { return gid.y * nwg.x * 64u + gid.x; }

// X = A, W = B
@compute @workgroup_size(64)
fn conv_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= P[13]) { return; }
    let in_h = P[1]; let in_w = P[2]; let c_in = P[3]; let c_out = P[4];
    let k_h = P[5]; let k_w = P[6]; let out_h = P[11]; let out_w = P[12];
    let co = i % c_out;
    let ox = (i / c_out) % out_w;
    let oy = (i / (c_out * out_w)) % out_h;
    let n = i / (c_out * out_w * out_h);
    var acc = 0.0;
    for (var ky = 0u; ky < k_h; ky = ky + 1u) {
        let iy = i32(oy * P[7] + ky) - i32(P[9]);
        if (iy < 0 || iy >= i32(in_h)) { continue; }
        for (var kx = 0u; kx < k_w; kx = kx + 1u) {
            let ix = i32(ox * P[8] + kx) - i32(P[10]);
            if (ix < 0 || ix >= i32(in_w)) { continue; }
            let xb = ((n * in_h + u32(iy)) * in_w + u32(ix)) * c_in;
            let wb = (ky * k_w + kx) * c_in * c_out + co;
            for (var ci = 0u; ci < c_in; ci = ci + 1u) {
                acc = fma(A[xb + ci], B[wb + ci * c_out], acc);
            }
        }
    }
    OUT[i] = acc;
}

// DY = A, W = B
@compute @workgroup_size(64)
fn conv_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= P[13]) { return; }
    let in_h = P[1]; let in_w = P[2]; let c_in = P[3]; let c_out = P[4];
    let k_h = P[5]; let k_w = P[6]; let sh = P[7]; let sw = P[8]; let out_h = P[11]; let out_w = P[12];
    let ci = i % c_in;
    let ix = (i / c_in) % in_w;
    let iy = (i / (c_in * in_w)) % in_h;
    let n = i / (c_in * in_w * in_h);
    var acc = 0.0;
    for (var ky = 0u; ky < k_h; ky = ky + 1u) {
        let ty = i32(iy + P[9]) - i32(ky); // = oy * sh
        if (ty < 0 || u32(ty) % sh != 0u || u32(ty) / sh >= out_h) { continue; }
        let oy = u32(ty) / sh;
        for (var kx = 0u; kx < k_w; kx = kx + 1u) {
            let tx = i32(ix + P[10]) - i32(kx);
            if (tx < 0 || u32(tx) % sw != 0u || u32(tx) / sw >= out_w) { continue; }
            let ox = u32(tx) / sw;
            let db = ((n * out_h + oy) * out_w + ox) * c_out;
            let wb = ((ky * k_w + kx) * c_in + ci) * c_out;
            for (var co = 0u; co < c_out; co = co + 1u) {
                acc = fma(A[db + co], B[wb + co], acc);
            }
        }
    }
    OUT[i] = acc;
}

// X = A, DY = B
@compute @workgroup_size(64)
fn conv_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= P[13]) { return; }
    let batch = P[0]; let in_h = P[1]; let in_w = P[2]; let c_in = P[3]; let c_out = P[4];
    let k_w = P[6]; let out_h = P[11]; let out_w = P[12];
    let co = i % c_out;
    let ci = (i / c_out) % c_in;
    let kx = (i / (c_out * c_in)) % k_w;
    let ky = i / (c_out * c_in * k_w);
    var acc = 0.0;
    for (var n = 0u; n < batch; n = n + 1u) {
        for (var oy = 0u; oy < out_h; oy = oy + 1u) {
            let iy = i32(oy * P[7] + ky) - i32(P[9]);
            if (iy < 0 || iy >= i32(in_h)) { continue; }
            for (var ox = 0u; ox < out_w; ox = ox + 1u) {
                let ix = i32(ox * P[8] + kx) - i32(P[10]);
                if (ix < 0 || ix >= i32(in_w)) { continue; }
                acc = fma(A[((n * in_h + u32(iy)) * in_w + u32(ix)) * c_in + ci],
                          B[((n * out_h + oy) * out_w + ox) * c_out + co], acc);
            }
        }
    }
    OUT[i] = acc;
}

// X = A, W = B (w[ky, kx, c])
@compute @workgroup_size(64)
fn depthwise_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= P[13]) { return; }
    let in_h = P[1]; let in_w = P[2]; let c = P[3];
    let k_h = P[5]; let k_w = P[6]; let out_h = P[11]; let out_w = P[12];
    let ch = i % c;
    let ox = (i / c) % out_w;
    let oy = (i / (c * out_w)) % out_h;
    let n = i / (c * out_w * out_h);
    var acc = 0.0;
    for (var ky = 0u; ky < k_h; ky = ky + 1u) {
        let iy = i32(oy * P[7] + ky) - i32(P[9]);
        if (iy < 0 || iy >= i32(in_h)) { continue; }
        for (var kx = 0u; kx < k_w; kx = kx + 1u) {
            let ix = i32(ox * P[8] + kx) - i32(P[10]);
            if (ix < 0 || ix >= i32(in_w)) { continue; }
            acc = fma(A[((n * in_h + u32(iy)) * in_w + u32(ix)) * c + ch], B[(ky * k_w + kx) * c + ch], acc);
        }
    }
    OUT[i] = acc;
}

// DY = A, W = B
@compute @workgroup_size(64)
fn depthwise_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= P[13]) { return; }
    let in_h = P[1]; let in_w = P[2]; let c = P[3];
    let k_h = P[5]; let k_w = P[6]; let sh = P[7]; let sw = P[8]; let out_h = P[11]; let out_w = P[12];
    let ch = i % c;
    let ix = (i / c) % in_w;
    let iy = (i / (c * in_w)) % in_h;
    let n = i / (c * in_w * in_h);
    var acc = 0.0;
    for (var ky = 0u; ky < k_h; ky = ky + 1u) {
        let ty = i32(iy + P[9]) - i32(ky);
        if (ty < 0 || u32(ty) % sh != 0u || u32(ty) / sh >= out_h) { continue; }
        for (var kx = 0u; kx < k_w; kx = kx + 1u) {
            let tx = i32(ix + P[10]) - i32(kx);
            if (tx < 0 || u32(tx) % sw != 0u || u32(tx) / sw >= out_w) { continue; }
            acc = fma(A[((n * out_h + u32(ty) / sh) * out_w + u32(tx) / sw) * c + ch], B[(ky * k_w + kx) * c + ch], acc);
        }
    }
    OUT[i] = acc;
}

// X = A, DY = B
@compute @workgroup_size(64)
fn depthwise_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= P[13]) { return; }
    let batch = P[0]; let in_h = P[1]; let in_w = P[2]; let c = P[3];
    let k_w = P[6]; let out_h = P[11]; let out_w = P[12];
    let ch = i % c;
    let kx = (i / c) % k_w;
    let ky = i / (c * k_w);
    var acc = 0.0;
    for (var n = 0u; n < batch; n = n + 1u) {
        for (var oy = 0u; oy < out_h; oy = oy + 1u) {
            let iy = i32(oy * P[7] + ky) - i32(P[9]);
            if (iy < 0 || iy >= i32(in_h)) { continue; }
            for (var ox = 0u; ox < out_w; ox = ox + 1u) {
                let ix = i32(ox * P[8] + kx) - i32(P[10]);
                if (ix < 0 || ix >= i32(in_w)) { continue; }
                acc = fma(A[((n * in_h + u32(iy)) * in_w + u32(ix)) * c + ch], B[((n * out_h + oy) * out_w + ox) * c + ch], acc);
            }
        }
    }
    OUT[i] = acc;
}
