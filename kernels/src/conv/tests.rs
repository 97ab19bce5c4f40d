//! Padding and geometry: TF SAME padding, identity kernels.

use super::*;

#[test]
fn same_padding_follows_tf() {
    // in 7, k 3, s 2: out 4, pad total (3*2+3-7)=2 -> 1 before
    let g = ConvGeometry::new(1, 7, 8, 1, 1, (3, 3), (2, 2), Padding::Same).unwrap();
    assert_eq!((g.out_h, g.pad_top, g.out_w, g.pad_left), (4, 1, 4, 0));
    // in 8, k 5, s 1: out 8, total 4 -> 2 before
    let g = ConvGeometry::new(1, 8, 8, 1, 1, (5, 5), (1, 1), Padding::Same).unwrap();
    assert_eq!((g.out_h, g.pad_top), (8, 2));
    let g =
        ConvGeometry::new(1, 5, 5, 1, 1, (3, 3), (1, 1), Padding::Explicit { top: 1, bottom: 1, left: 0, right: 0 })
            .unwrap();
    assert_eq!((g.out_h, g.out_w), (5, 3));
    assert!(ConvGeometry::new(1, 2, 2, 1, 1, (3, 3), (1, 1), Padding::Valid).is_err());
}

#[test]
fn identity_kernel_copies_input() {
    let g = ConvGeometry::new(1, 3, 3, 2, 2, (3, 3), (1, 1), Padding::Same).unwrap();
    let x: Vec<f32> = (0..18).map(|i| i as f32).collect();
    let mut w = vec![0.0; 3 * 3 * 2 * 2];
    // centre tap, identity matrix over channels
    w[((3 + 1) * 2) * 2] = 1.0; // tap (1, 1), channel 0 -> 0
    w[((3 + 1) * 2 + 1) * 2 + 1] = 1.0; // tap (1, 1), channel 1 -> 1
    let mut y = vec![0.0; 18];
    conv2d_forward_reference(&x, &w, &mut y, &g);
    assert_eq!(y, x);
}
