// Shared by every shader (prepended at compile time): the parameter words at binding 0 and
// the helpers that read them.
@group(0) @binding(0) var<storage, read> P: array<u32>;

fn pf(i: u32) -> f32 { return bitcast<f32>(P[i]); }

// Linear workgroup id of a 2-D dispatch grid (1-D work split to stay under the per-axis limit).
fn linear_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.y * nwg.x + wid.x; }

// Element offset of row-major index `i` in a strided view: `rank` sizes at P[shape_at..],
// strides at P[strides_at..], starting from `base`.
fn strided_offset(i: u32, rank: u32, shape_at: u32, strides_at: u32, base: u32) -> u32 {
    var rem = i;
    var off = base;
    for (var d = i32(rank) - 1; d >= 0; d = d - 1) {
        let size = P[shape_at + u32(d)];
        off = off + (rem % size) * P[strides_at + u32(d)];
        rem = rem / size;
    }
    return off;
}

// erf(x) as the CPU kernels compute it (kernels::vmath::erf): x P(x^2) / Q(x^2) on [-4, 4].
fn erf_rational(x0: f32) -> f32 {
    let x = clamp(x0, -4.0, 4.0);
    let x2 = x * x;
    var p = -2.7261423e-10;
    p = p * x2 + 2.7706814e-8;
    p = p * x2 + -2.101024e-6;
    p = p * x2 + -5.6925064e-5;
    p = p * x2 + -7.3499063e-4;
    p = p * x2 + -2.9545998e-3;
    p = p * x2 + -1.6096033e-2;
    var q = -1.4566072e-5;
    q = q * x2 + -2.1337406e-4;
    q = q * x2 + -1.682827e-3;
    q = q * x2 + -7.373329e-3;
    q = q * x2 + -1.4264739e-2;
    return x * p / q;
}

fn sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }
