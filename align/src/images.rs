//! Image input: decode (JPEG / PNG; grayscale and alpha become RGB), resize the shorter side,
//! centre crop, normalise, as NHWC f32 tensors.
//!
//! Resizing is torchvision's `Resize(size)` + `CenterCrop(crop)` on a PIL image, to the pixel:
//! the output size and crop offset follow torchvision's arithmetic, and the pixels are Pillow's
//! antialiased bilinear (`crate::resample`), so real weights see the inputs they were measured
//! with.

use std::path::Path;

pub use image::RgbImage;

use tensor::{Result, Tensor, TensorError};

/// How pixel values in [0, 255] become model inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalisation {
    /// (x - 127) / 128: EfficientNet-Lite's TF preprocessing.
    Lite,
    /// (x / 255 - mean) / std with ImageNet's mean and std.
    ImageNet,
    /// x / 127.5 - 1: [-1, 1].
    Symmetric,
}

impl Normalisation {
    fn apply(self, channel: usize, x: f32) -> f32 {
        const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
        const STD: [f32; 3] = [0.229, 0.224, 0.225];
        match self {
            Normalisation::Lite => (x - 127.0) / 128.0,
            Normalisation::ImageNet => (x / 255.0 - MEAN[channel]) / STD[channel],
            Normalisation::Symmetric => x / 127.5 - 1.0,
        }
    }
}

/// Images with more pixels than this are refused before they are decoded (a decompression
/// bomb claims a huge size in a few bytes). `ALIGN_MAX_IMAGE_PIXELS` changes it.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 100_000_000;

/// The pixel limit in force: `ALIGN_MAX_IMAGE_PIXELS`, or [`DEFAULT_MAX_IMAGE_PIXELS`].
pub fn max_image_pixels() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("ALIGN_MAX_IMAGE_PIXELS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MAX_IMAGE_PIXELS)
    })
}

/// Decodes an image file; errors name the file.
pub fn load_rgb(path: &Path) -> Result<image::RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| TensorError::Io { path: path.to_path_buf(), source })?;
    decode_rgb(&bytes, &path.display().to_string())
}

/// Decodes a JPEG / PNG (/ WebP, GIF, BMP as the `image` crate is built) held in memory, checking
/// the header's size against the pixel limit before anything is decoded; `source` names it.
pub fn decode_rgb(bytes: &[u8], source: &str) -> Result<image::RgbImage> {
    use image::ImageDecoder;
    let err = |msg: String| TensorError::Format { file: source.to_string(), tensor: None, msg };
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(format!("cannot read: {e}")))?;
    let decoder = reader.into_decoder().map_err(|e| err(format!("cannot decode: {e}")))?;
    let (w, h) = decoder.dimensions();
    let limit = max_image_pixels();
    if w as u64 * h as u64 > limit {
        return Err(err(format!(
            "{w} x {h} = {} pixels is over the image pixel limit of {limit} (ALIGN_MAX_IMAGE_PIXELS)",
            w as u64 * h as u64
        )));
    }
    let img = image::DynamicImage::from_decoder(decoder).map_err(|e| err(format!("cannot decode: {e}")))?;
    Ok(img.to_rgb8())
}

/// Resizes the shorter side to `resize`, centre-crops `crop` x `crop`, normalises: (crop, crop, 3).
pub fn preprocess(img: &image::RgbImage, resize: u32, crop: u32, norm: Normalisation) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(TensorError::Shape { op: "preprocess", msg: "empty image".into() });
    }
    let (nw, nh) = crate::resample::shorter_side_to(w, h, resize);
    let (nw, nh) = (nw.max(1), nh.max(1));
    let resized = crate::resample::resize(img, nw, nh, crate::resample::Filter::Bilinear);
    let crop = crop.min(nw).min(nh);
    let (x0, y0) = (crate::resample::center_crop_offset(nw, crop), crate::resample::center_crop_offset(nh, crop));
    let mut data = Vec::with_capacity((crop * crop * 3) as usize);
    for y in 0..crop {
        for x in 0..crop {
            let p = resized.get_pixel(x0 + x, y0 + y);
            for c in 0..3 {
                data.push(norm.apply(c, p[c] as f32));
            }
        }
    }
    Tensor::from_vec(data, &[crop as usize, crop as usize, 3])
}

/// Loads and preprocesses one file: (1, crop, crop, 3).
pub fn load_image_tensor(path: &Path, resize: u32, crop: u32, norm: Normalisation) -> Result<Tensor> {
    let img = load_rgb(path)?;
    preprocess(&img, resize, crop, norm)?.unsqueeze(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_crop_and_normalise() {
        let img = image::RgbImage::from_fn(40, 20, |x, _| image::Rgb([x as u8 * 6, 127, 255]));
        let t = preprocess(&img, 10, 8, Normalisation::Lite).unwrap();
        assert_eq!(t.shape(), &[8, 8, 3]);
        assert_eq!(t.get(&[0, 0, 1]).unwrap(), 0.0);
        assert!((t.get(&[3, 3, 2]).unwrap() - 1.0).abs() < 1e-6);
        let s = preprocess(&img, 10, 8, Normalisation::Symmetric).unwrap();
        assert!((s.get(&[0, 0, 2]).unwrap() - 1.0).abs() < 1e-6);
        assert!(load_rgb(Path::new("/nonexistent.png")).is_err());
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("align-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("broken.jpg");
        std::fs::write(&p, b"\xff\xd8\xff\xe0 truncated jpeg").unwrap();
        let e = load_rgb(&p).unwrap_err().to_string();
        assert!(e.contains("broken.jpg"), "{e}");
        let z = dir.join("empty.png");
        std::fs::write(&z, b"").unwrap();
        assert!(load_rgb(&z).is_err());
    }
}
