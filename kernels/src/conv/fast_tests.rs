//! Every fast convolution path against its scalar reference on odd sizes, strides and
//! paddings (also the test data helper other kernels' tests share).

use super::dense::*;
use super::depthwise::*;
use super::*;
use crate::simd::Isa;

/// Deterministic test values in [-0.5, 0.5) (a multiplicative hash of the index).
pub(crate) fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32) - 0.5)
        .collect()
}

fn close(what: &str, a: &[f32], b: &[f32]) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn fast_convs_match_references_on_odd_sizes_strides_and_paddings() {
    let pads = [Padding::Same, Padding::Valid, Padding::Explicit { top: 1, bottom: 2, left: 0, right: 1 }];
    // (40 channels and 13 columns give the depthwise forward runs of 4 pixels with two-vector,
    // one-vector and scalar channel blocks at both strides; 20 x 17 pixels span two of the
    // dense conv's 256-pixel blocks; 17 and 40 channels at k = 5 split taps across K blocks;
    // 400 channels at k = 1 split one tap; 21 columns give the depthwise forward
    // sliding-window runs of 8 pixels at k = 3, and 13 columns at k = 5; 29 and 30 columns
    // give dense-conv tiles of 12 pixels inside one output row at stride 2 and at k = 5;
    // 24 and 32 channels take the weight gradient's column-gather path, 32 with a panel
    // of 8 rows that reads past the last pixel of x)
    for &(n, h, w, ci, co, k) in &[
        (2, 7, 5, 3, 4, 3),
        (1, 9, 8, 17, 33, 5),
        (3, 6, 6, 8, 5, 1),
        (2, 5, 7, 1, 2, 3),
        (1, 6, 13, 40, 7, 5),
        (2, 20, 17, 6, 9, 3),
        (1, 4, 5, 400, 40, 1),
        (1, 5, 21, 40, 3, 3),
        (1, 6, 29, 5, 6, 3),
        (1, 7, 30, 3, 33, 5),
        (2, 6, 14, 24, 7, 3),
        (1, 5, 13, 32, 40, 3),
        // 1x1 to 17..24 channels from an even count: the K-pair kernel (8-pixel tiles,
        // 2 x 5 x 7 = 70 pixels end in a partial tile; 17 columns mask the store)
        (2, 5, 7, 24, 24, 1),
        (1, 3, 11, 96, 17, 1),
    ] {
        for stride in [1, 2] {
            for pad in pads {
                let Ok(g) = ConvGeometry::new(n, h, w, ci, co, (k, k), (stride, stride), pad) else { continue };
                let x = data(g.input_len(), 1);
                let wt = data(k * k * ci * co, 2);
                let dy = data(g.output_len(), 3);
                let what = format!("n{n} h{h} w{w} ci{ci} co{co} k{k} s{stride} {pad:?}");
                let (mut y1, mut y2) = (vec![0.0; g.output_len()], vec![0.0; g.output_len()]);
                conv2d_forward_reference(&x, &wt, &mut y1, &g);
                for isa in Isa::available() {
                    y2.fill(f32::NAN);
                    conv2d_forward_with(isa, &x, &wt, &mut y2, &g);
                    close(&format!("fwd {isa:?} {what}"), &y2, &y1);
                    y2.fill(f32::NAN);
                    conv2d_forward_direct_with(isa, &x, &wt, &mut y2, &g);
                    close(&format!("direct fwd {isa:?} {what}"), &y2, &y1);
                }
                let (mut d1, mut d2) = (vec![0.0; g.input_len()], vec![1.0; g.input_len()]);
                conv2d_backward_input_reference(&dy, &wt, &mut d1, &g);
                conv2d_backward_input(&dy, &wt, &mut d2, &g);
                close(&format!("dx {what}"), &d2, &d1);
                let (mut w1, mut w2) = (vec![0.0; wt.len()], vec![1.0; wt.len()]);
                conv2d_backward_weight_reference(&x, &dy, &mut w1, &g);
                conv2d_backward_weight(&x, &dy, &mut w2, &g);
                close(&format!("dw {what}"), &w2, &w1);
                // depthwise on the same geometry with C = ci
                let gd = ConvGeometry::new(n, h, w, ci, ci, (k, k), (stride, stride), pad).unwrap();
                let wd = data(k * k * ci, 4);
                let dyd = data(gd.output_len(), 5);
                for isa in Isa::available() {
                    // (b starts as NaN: the forward overwrites y, which lets callers hand it
                    // recycled buffers)
                    let (mut a, mut b) = (vec![0.0; gd.output_len()], vec![f32::NAN; gd.output_len()]);
                    depthwise_forward_reference(&x, &wd, &mut a, &gd);
                    dw_over_images(
                        isa,
                        DwOp::Forward,
                        &x,
                        gd.in_h * gd.in_w * ci,
                        &wd,
                        0,
                        &mut b,
                        gd.out_h * gd.out_w * ci,
                        &gd,
                    );
                    close(&format!("dw fwd {isa:?} {what}"), &b, &a);
                }
                let (mut a, mut b) = (vec![0.0; gd.input_len()], vec![7.0; gd.input_len()]);
                depthwise_backward_input_reference(&dyd, &wd, &mut a, &gd);
                depthwise_backward_input(&dyd, &wd, &mut b, &gd);
                close(&format!("dw dx {what}"), &b, &a);
                let (mut a, mut b) = (vec![0.0; wd.len()], vec![7.0; wd.len()]);
                depthwise_backward_weight_reference(&x, &dyd, &mut a, &gd);
                depthwise_backward_weight(&x, &dyd, &mut b, &gd);
                close(&format!("dw dw {what}"), &b, &a);
            }
        }
    }
}
