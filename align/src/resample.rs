//! Antialiased image resizing that reproduces Pillow's `Image.resize` for 8-bit images
//! (libImaging/Resample.c), which torchvision's `Resize` on PIL images, timm and the Hugging Face
//! image processors all call. Published accuracies of real weights were measured with those
//! pixels; another filter (the `image` crate's triangle filter, say) gives other pixels and can
//! flip a close top-1.
//!
//! The algorithm, per axis: scale = in / out; the filter is stretched by max(scale, 1) when
//! shrinking (that is the antialiasing); output pixel i is centred at (i + 0.5) * scale and takes
//! the input pixels within the filter's support, weighted by the filter and normalised to sum 1.
//! Pillow turns the weights into 22-bit fixed point, accumulates in integers from a rounding
//! offset of one half, clamps to 0..255, and resizes horizontally first, into an 8-bit image
//! holding only the rows the vertical pass reads, then vertically. Every one of those steps is
//! reproduced here, so the output is Pillow's to the bit.

use image::RgbImage;

/// The resampling filters of Pillow that image models use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Triangle, support 1 (PIL.Image.BILINEAR, torchvision's default).
    Bilinear,
    /// Keys' cubic with a = -0.5, support 2 (PIL.Image.BICUBIC: timm, Hugging Face processors).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }

    /// PIL's resample code: 2 bilinear, 3 bicubic (as in Hugging Face `preprocessor_config.json`).
    pub fn from_pil_code(code: i64) -> Option<Filter> {
        match code {
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }
}

/// Fractional bits of the fixed-point weights: 32 - 8 (pixel) - 2 (headroom for negative lobes).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output pixel along one axis: its first input pixel and fixed-point weights.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
fn taps(in_size: usize, out_size: usize, filter: Filter) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    // Pillow multiplies by the reciprocal (a division could differ in the last bit)
    let inverse = 1.0 / filter_scale;
    let (mut first, mut weights) = (Vec::with_capacity(out_size), Vec::with_capacity(out_size));
    for i in 0..out_size {
        let center = (i as f64 + 0.5) * scale;
        // C's (int) casts truncate toward zero
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let raw: Vec<f64> = (lo..hi).map(|x| filter.weight((x as f64 - center + 0.5) * inverse)).collect();
        let total: f64 = raw.iter().sum();
        let fixed = raw
            .iter()
            .map(|&w| {
                let w = if total != 0.0 { w / total } else { w };
                let scaled = w * (1u32 << PRECISION_BITS) as f64;
                (if scaled < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
            })
            .collect();
        first.push(lo);
        weights.push(fixed);
    }
    Taps { first, weights }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One weighted sum per channel of the pixels at `src[start + k * step]`, from Pillow's rounding
/// offset of one half.
fn accumulate(src: &[u8], start: usize, step: usize, weights: &[i32]) -> [u8; 3] {
    let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
    for (k, &w) in weights.iter().enumerate() {
        let p = &src[start + k * step..start + k * step + 3];
        for c in 0..3 {
            acc[c] += p[c] as i64 * w as i64;
        }
    }
    acc.map(clip8)
}

/// Resizes `img` to `width` x `height` exactly as Pillow's `Image.resize(size, filter)` does.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    let vertical = taps(in_h, out_h, filter);
    // the rows the vertical pass reads: only those are resized horizontally
    let (rows_from, rows_to) = if out_h != in_h {
        let last = out_h - 1;
        (vertical.first[0], vertical.first[last] + vertical.weights[last].len())
    } else {
        (0, in_h)
    };
    let src = img.as_raw();
    // horizontal pass: (rows_to - rows_from, out_w, 3)
    let temp: Vec<u8> = if out_w != in_w {
        let horizontal = taps(in_w, out_w, filter);
        let mut t = Vec::with_capacity((rows_to - rows_from) * out_w * 3);
        for y in rows_from..rows_to {
            for x in 0..out_w {
                let start = (y * in_w + horizontal.first[x]) * 3;
                t.extend_from_slice(&accumulate(src, start, 3, &horizontal.weights[x]));
            }
        }
        t
    } else {
        src[rows_from * in_w * 3..rows_to * in_w * 3].to_vec()
    };
    if out_h == in_h {
        return RgbImage::from_raw(width, height, temp).expect("sized buffer");
    }
    // vertical pass, over the rows kept: (out_h, out_w, 3)
    let row = out_w * 3;
    let mut out = Vec::with_capacity(out_h * row);
    for y in 0..out_h {
        let y0 = vertical.first[y] - rows_from;
        for x in 0..out_w {
            out.extend_from_slice(&accumulate(&temp, y0 * row + x * 3, row, &vertical.weights[y]));
        }
    }
    RgbImage::from_raw(width, height, out).expect("sized buffer")
}

/// torchvision's `Resize(size)` output size for an int size: the shorter side becomes `size`,
/// the longer `int(size * long / short)` (truncated, as Python's int()).
pub fn shorter_side_to(width: u32, height: u32, size: u32) -> (u32, u32) {
    if width <= height {
        (size, ((size as u64 * height as u64) / width.max(1) as u64) as u32)
    } else {
        (((size as u64 * width as u64) / height.max(1) as u64) as u32, size)
    }
}

/// torchvision's `CenterCrop` offset: int(round((in - out) / 2)), Python rounding halves to even.
pub fn center_crop_offset(size_in: u32, size_out: u32) -> u32 {
    let twice = size_in.saturating_sub(size_out);
    let (half, odd) = (twice / 2, twice % 2 == 1);
    // (2k + 1) / 2 = k + 0.5 rounds to the even one of k and k + 1
    if odd && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// (H, W, 3) uint8 from a safetensors fixture entry.
pub fn fixture_image(st: &tensor::io::safetensors::SafeTensors, name: &str) -> tensor::Result<RgbImage> {
    let (shape, values) = st.tensor_i64(name)?;
    let bytes: Vec<u8> = values.iter().map(|&v| v as u8).collect();
    RgbImage::from_raw(shape[1] as u32, shape[0] as u32, bytes).ok_or_else(|| tensor::TensorError::Shape {
        op: "fixture_image",
        msg: format!("{name}: shape {shape:?} is not (H, W, 3)"),
    })
}

/// The largest difference between two images of one size, in grey levels.
pub fn max_difference(a: &RgbImage, b: &RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions(), "image sizes differ");
    a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every synthetic case of the fixture (Pillow 13): random pixels, a checkerboard, 1-pixel
    /// images, rows and columns, shrunk and enlarged, with both filters: equal to the bit.
    #[test]
    fn resizes_equal_pillows_on_synthetic_images() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/resize.safetensors");
        let st = tensor::io::safetensors::SafeTensors::open(path).unwrap();
        let mut checked = 0;
        for name in st.names().filter(|n| !n.starts_with("photo.") && !n.ends_with(".input")) {
            let mut parts = name.split('.');
            let (case, filter, size) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            let (w, h) = size.split_once('x').unwrap();
            let filter = if filter == "bilinear" { Filter::Bilinear } else { Filter::Bicubic };
            let input = fixture_image(&st, &format!("{case}.input")).unwrap();
            let ours = resize(&input, w.parse().unwrap(), h.parse().unwrap(), filter);
            let pillow = fixture_image(&st, name).unwrap();
            assert_eq!(max_difference(&ours, &pillow), 0, "{name}");
            checked += 1;
        }
        assert_eq!(checked, 26);
    }

    #[test]
    fn torchvision_sizes_truncate_and_crops_round_halves_to_even() {
        // Resize(256) of a 451 x 300 photo: int(256 * 451 / 300) = 384
        assert_eq!(shorter_side_to(451, 300, 256), (384, 256));
        assert_eq!(shorter_side_to(300, 451, 256), (256, 384));
        // (385 - 224) / 2 = 80.5 -> 80; (387 - 224) / 2 = 81.5 -> 82; (384 - 224) / 2 = 80
        assert_eq!(center_crop_offset(385, 224), 80);
        assert_eq!(center_crop_offset(387, 224), 82);
        assert_eq!(center_crop_offset(384, 224), 80);
        assert_eq!(center_crop_offset(200, 224), 0);
    }
}
