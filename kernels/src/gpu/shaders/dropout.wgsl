// Inverted dropout with a counter-based generator: element i is kept when
// hash(seed, i) >= p * 2^24, and kept values are scaled by 1 / (1 - p). The mask is a pure
// function of (seed, i), so backward recomputes it instead of storing it.
// P: [n, seed_lo, seed_hi, threshold (p * 2^24 as u32), scale]
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

// PCG-style integer hash (O'Neill's RXS-M-XS output of one LCG step).
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

@compute @workgroup_size(256)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i >= P[0]) { return; }
    let r = pcg(i ^ pcg(P[1] ^ pcg(P[2]))) >> 8u;
    Y[i] = select(0.0, X[i] * pf(4), r >= P[3]);
}
