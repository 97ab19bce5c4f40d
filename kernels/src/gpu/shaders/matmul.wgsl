// C[z] = alpha * A[z] B[z] (+ bias[col]) (+ C[z] when accumulating), for z over up to two
// batch axes (nb0 x nb1), every operand read through strides: a transposed operand is a
// stride swap, a broadcast batch a zero batch stride.
//
// Tiling: a workgroup of 16 x 16 threads computes a 64 x 64 tile of C, 4 x 4 outputs per thread
// (rows ly + 16 i, cols lx + 16 j: neighbouring threads read neighbouring shared-memory words).
// K advances 16 at a time through shared memory: each thread loads 4 elements of the A tile and
// 4 of the B tile per step, walking the operand's unit-stride axis so global loads coalesce.
//
// P: [M, N, K, nb1, flags, alpha,
//     a_off, a_rs, a_cs, a_bs0, a_bs1,
//     b_off, b_rs, b_cs, b_bs0, b_bs1,
//     c_off, c_rs, c_bs0, c_bs1]          flags: 1 bias, 2 accumulate into C
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read> BIAS: array<f32>;
@group(0) @binding(4) var<storage, read_write> C: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> As: array<f32, 1024>; // [TK][TM]
var<workgroup> Bs: array<f32, 1024>; // [TK][TN]

@compute @workgroup_size(16, 16, 1)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let M = P[0];
    let N = P[1];
    let K = P[2];
    let nb1 = P[3];
    let flags = P[4];
    let alpha = pf(5);
    let b0 = wid.z / nb1;
    let b1 = wid.z % nb1;
    let a_rs = P[7];
    let a_cs = P[8];
    let b_rs = P[12];
    let b_cs = P[13];
    let a_base = P[6] + b0 * P[9] + b1 * P[10];
    let b_base = P[11] + b0 * P[14] + b1 * P[15];
    let c_base = P[16] + b0 * P[18] + b1 * P[19];
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    let tid = lid.y * 16u + lid.x;
    // Which axis consecutive threads walk when loading (uniform over the workgroup).
    let a_k_fast = a_cs == 1u;
    let b_n_fast = b_cs == 1u;

    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i = i + 1u) { acc[i] = 0.0; }

    for (var k0 = 0u; k0 < K; k0 = k0 + TK) {
        for (var r = 0u; r < 4u; r = r + 1u) {
            let e = tid + 256u * r;
            var am: u32; var ak: u32;
            if (a_k_fast) { am = e / TK; ak = e % TK; } else { ak = e / TM; am = e % TM; }
            var av = 0.0;
            if (row0 + am < M && k0 + ak < K) { av = A[a_base + (row0 + am) * a_rs + (k0 + ak) * a_cs]; }
            As[ak * TM + am] = av;
            var bk: u32; var bn: u32;
            if (b_n_fast) { bk = e / TN; bn = e % TN; } else { bn = e / TK; bk = e % TK; }
            var bv = 0.0;
            if (k0 + bk < K && col0 + bn < N) { bv = B[b_base + (k0 + bk) * b_rs + (col0 + bn) * b_cs]; }
            Bs[bk * TN + bn] = bv;
        }
        workgroupBarrier();
        for (var k = 0u; k < TK; k = k + 1u) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i = i + 1u) {
                a[i] = As[k * TM + lid.y + 16u * i];
                b[i] = Bs[k * TN + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i = i + 1u) {
                for (var j = 0u; j < 4u; j = j + 1u) {
                    acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }

    let c_rs = P[17];
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + lid.x + 16u * j;
            if (row < M && col < N) {
                var v = alpha * acc[i * 4u + j];
                if ((flags & 1u) != 0u) { v = v + BIAS[col]; }
                let at = c_base + row * c_rs + col;
                if ((flags & 2u) != 0u) { v = v + C[at]; }
                C[at] = v;
            }
        }
    }
}
