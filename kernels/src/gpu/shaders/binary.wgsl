// y = a (op) b with NumPy broadcasting: both operands read through strides (0 on broadcast
// axes), y contiguous.
// P: [n, op, rank, a_offset, b_offset, shape[6], a_strides[6], b_strides[6]]
// op: 0 add, 1 sub, 2 mul, 3 div, 4 max, 5 min, 6 pow
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;

@compute @workgroup_size(256)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i >= P[0]) { return; }
    let rank = P[2];
    let a = A[strided_offset(i, rank, 5u, 11u, P[3])];
    let b = B[strided_offset(i, rank, 5u, 17u, P[4])];
    var y: f32;
    switch P[1] {
        case 0u: { y = a + b; }
        case 1u: { y = a - b; }
        case 2u: { y = a * b; }
        case 3u: { y = a / b; }
        case 4u: { y = max(a, b); }
        case 5u: { y = min(a, b); }
        default: { y = pow(a, b); }
    }
    Y[i] = y;
}
