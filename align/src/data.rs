//! Training data: the built-in synthetic image / alt-text corpus, ALIGN's frequency filters
//! (docs/paper.md "Data filtering"), and the image pipeline (resize, random crop, flip).
//!
//! The built-in corpus is generated deterministically from (seed, index): scenes of one or two
//! objects (8 shapes x 8 colours, several sizes and positions) on textured backgrounds, rendered
//! at varied sizes and aspect ratios, with alt-texts from varied templates plus the noise of
//! real alt-text: boilerplate shared by many images, captions too short or too long, stray
//! words and misspellings. The paper's filters then clean it exactly as they would clean web
//! data, and report what each removed.

use std::collections::HashMap;

use rayon::prelude::*;
use tensor::{Result, Rng, Tensor};

pub const SHAPES: [&str; 8] = ["circle", "square", "triangle", "diamond", "cross", "ring", "star", "bar"];
pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 30, 30]),
    ("green", [30, 170, 40]),
    ("blue", [30, 60, 220]),
    ("yellow", [235, 215, 30]),
    ("purple", [140, 40, 170]),
    ("orange", [245, 130, 20]),
    ("white", [245, 245, 245]),
    ("black", [15, 15, 15]),
];
const SIZES: [&str; 3] = ["small", "medium", "large"];
const BACKGROUNDS: [&str; 4] = ["grey", "striped", "dotted", "speckled"];
const BOILERPLATE: [&str; 4] = ["IMG_0412.JPG", "1920x1080", "alt img", "photo by john smith"];

/// One object of a scene.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Object {
    pub shape: usize,
    pub colour: usize,
    pub size: usize,
    /// 0 = left, 1 = right half (used by two-object scenes and their captions)
    pub side: usize,
}

/// A scene description: everything needed to render the image and write captions.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub objects: Vec<Object>,
    pub background: usize,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
}

impl Scene {
    /// The scene of example `index` in the stream `seed`.
    pub fn generate(seed: u64, index: u64) -> Scene {
        let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9).wrapping_add(index));
        let two = rng.below(4) == 0;
        let mut objects = vec![Object { shape: rng.below(8), colour: rng.below(8), size: rng.below(3), side: 0 }];
        if two {
            let mut second = Object { shape: rng.below(8), colour: rng.below(8), size: rng.below(3), side: 1 };
            if second.colour == objects[0].colour && second.shape == objects[0].shape {
                second.colour = (second.colour + 1) % 8;
            }
            objects.push(second);
        }
        // sizes: mostly fine, some too small or too elongated (the filters remove those)
        let short = 150 + rng.below(300) as u32;
        let aspect = if rng.below(20) == 0 { 3.2 } else { 1.0 + rng.next_f32() * 0.8 };
        let long = (short as f32 * aspect) as u32;
        let (width, height) = if rng.below(2) == 0 { (long, short) } else { (short, long) };
        Scene { objects, background: rng.below(4), width, height, seed: rng.next_u64() }
    }

    fn describe(&self, o: &Object, with_size: bool) -> String {
        let c = COLOURS[o.colour].0;
        let s = SHAPES[o.shape];
        if with_size {
            format!("{} {c} {s}", SIZES[o.size])
        } else {
            format!("{c} {s}")
        }
    }

    /// A clean descriptive caption (held-out evaluation uses these).
    pub fn clean_caption(&self, variant: usize) -> String {
        let a = self.describe(&self.objects[0], variant.is_multiple_of(2));
        match self.objects.get(1) {
            None => match variant % 4 {
                0 => format!("a {a} on a {} background", BACKGROUNDS[self.background]),
                1 => format!("a photo of a {a}"),
                2 => format!("{a} drawn on {} paper", BACKGROUNDS[self.background]),
                _ => format!("picture of one {a}"),
            },
            Some(b) => {
                let b = self.describe(b, variant.is_multiple_of(2));
                match variant % 3 {
                    0 => format!("a {a} on the left and a {b} on the right"),
                    1 => format!("a {a} next to a {b}"),
                    _ => format!("two shapes: a {a} and a {b}"),
                }
            }
        }
    }

    /// A web-like alt-text: a clean caption most of the time, otherwise the noise of real data.
    pub fn alt_text(&self, rng: &mut Rng) -> String {
        let clean = self.clean_caption(rng.below(12));
        match rng.below(20) {
            0 => BOILERPLATE[rng.below(BOILERPLATE.len())].to_string(),
            1 => SHAPES[self.objects[0].shape].to_string(), // too short
            2 => std::iter::repeat_n(clean.as_str(), 4).collect::<Vec<_>>().join(" and "), // too long
            3 => format!("{clean} {}", ["wow", "nice", "cool", "lol"][rng.below(4)]),
            4 => clean.replacen('e', "ee", 1),                  // misspelling
            5 => format!("{clean} qzxv{}", rng.below(100_000)), // a rare token
            _ => clean,
        }
    }

    /// Renders the scene (RGB, row-major, width x height).
    pub fn render(&self) -> image::RgbImage {
        self.render_at(self.width, self.height)
    }

    /// Renders the scene scaled to `out_w` x `out_h`, each output pixel the mean of k x k
    /// samples of the full-size scene (k = the downscale factor rounded up, at most 4): what
    /// rendering at full size and shrinking with an area filter gives, at a fraction of the cost.
    /// The trainer renders straight at the size it resizes to (several times faster than drawing
    /// a 450 x 800 scene and shrinking it to 77 pixels). At the scene's own size this is exactly
    /// [`Scene::render`].
    pub fn render_at(&self, out_w: u32, out_h: u32) -> image::RgbImage {
        let (w, h) = (self.width, self.height);
        let mut rng = Rng::new(self.seed);
        let base = 90 + rng.below(80) as u8;
        // object placement: (centre x, centre y, radius, colour, shape), drawn in order
        let short = w.min(h) as f32;
        let n = self.objects.len();
        let objects: Vec<(f32, f32, f32, [u8; 3], usize)> = self
            .objects
            .iter()
            .map(|o| {
                let radius = short * [0.12, 0.18, 0.26][o.size] / if n > 1 { 1.3 } else { 1.0 };
                let (cx, cy) = if n == 1 {
                    (w as f32 * (0.35 + 0.3 * rng.next_f32()), h as f32 * (0.35 + 0.3 * rng.next_f32()))
                } else {
                    (w as f32 * if o.side == 0 { 0.27 } else { 0.73 }, h as f32 * (0.4 + 0.2 * rng.next_f32()))
                };
                (cx, cy, radius, COLOURS[o.colour].1, o.shape)
            })
            .collect();
        // the full-size scene at (x, y) in its own pixel coordinates
        let sample = |x: f32, y: f32| -> [u8; 3] {
            for &(cx, cy, radius, colour, shape) in objects.iter().rev() {
                let (ax, ay) = (x - cx, y - cy);
                // Two radii away or more, `inside` would say no: skip the divisions, whose
                // latency the loop otherwise waits on for every object of every sample.
                if ax.abs() > 2.0 * radius || ay.abs() > 2.0 * radius {
                    continue;
                }
                if inside(shape, ax / radius, ay / radius) {
                    return colour;
                }
            }
            let (xi, yi) = (x.max(0.0) as u32, y.max(0.0) as u32);
            let v = match self.background {
                0 => base,
                1 => base.saturating_add(if (xi / 12) % 2 == 0 { 25 } else { 0 }),
                2 => base.saturating_add(if xi % 16 < 3 && yi % 16 < 3 { 40 } else { 0 }),
                _ => base.wrapping_add(((xi.wrapping_mul(7919) ^ yi.wrapping_mul(104729)) % 23) as u8),
            };
            [v, v, v]
        };
        if (out_w, out_h) == (w, h) {
            return image::RgbImage::from_fn(w, h, |x, y| image::Rgb(sample(x as f32, y as f32)));
        }
        let (ow, oh) = (out_w.max(1), out_h.max(1));
        let k = (w.div_ceil(ow).max(h.div_ceil(oh))).clamp(1, 4);
        let (sx, sy) = (w as f32 / ow as f32, h as f32 / oh as f32);
        // where the k samples sit inside an output pixel, along each axis
        let offsets: Vec<f32> = (0..k).map(|i| (i as f32 + 0.5) / k as f32).collect();
        image::RgbImage::from_fn(ow, oh, |x, y| {
            let mut acc = [0u32; 3];
            for &offset_y in &offsets {
                let py = (y as f32 + offset_y) * sy - 0.5;
                for &offset_x in &offsets {
                    let px = (x as f32 + offset_x) * sx - 0.5;
                    let c = sample(px, py);
                    (0..3).for_each(|t| acc[t] += c[t] as u32);
                }
            }
            let kk = k * k;
            image::Rgb([((acc[0] + kk / 2) / kk) as u8, ((acc[1] + kk / 2) / kk) as u8, ((acc[2] + kk / 2) / kk) as u8])
        })
    }
}

/// Is (dx, dy), in units of the object radius, inside the shape?
fn inside(shape: usize, dx: f32, dy: f32) -> bool {
    // Every shape lies inside the unit square (the triangle reaches |dx| 0.935, the star radius
    // 0.95). Most samples of a scene are background or another object's: this test turns them
    // away before the star's atan2 and cos, and leaves every answer as it was.
    (dx.abs() <= 1.0 && dy.abs() <= 1.0) && shape_contains(shape, dx, dy)
}

/// The shapes themselves, without [`inside`]'s bounding-box test.
fn shape_contains(shape: usize, dx: f32, dy: f32) -> bool {
    let r2 = dx * dx + dy * dy;
    match shape {
        0 => r2 <= 1.0,                                                                      // circle
        1 => dx.abs() <= 0.8 && dy.abs() <= 0.8,                                             // square
        2 => (-0.9..=0.8).contains(&dy) && dx.abs() <= (dy + 0.9) * 0.55,                    // triangle
        3 => dx.abs() + dy.abs() <= 1.0,                                                     // diamond
        4 => (dx.abs() <= 0.25 && dy.abs() <= 0.9) || (dy.abs() <= 0.25 && dx.abs() <= 0.9), // cross
        5 => (0.45..=1.0).contains(&r2),                                                     // ring
        6 => {
            // star: radius modulated by angle
            let a = dy.atan2(dx);
            r2.sqrt() <= 0.55 + 0.4 * (5.0 * a).cos().max(0.0)
        }
        _ => dx.abs() <= 1.0 && dy.abs() <= 0.3, // bar
    }
}

/// One training pair after filtering: where its image comes from, and its alt-text.
#[derive(Clone, Debug)]
pub struct Pair {
    /// Built-in scene index (when `file` is None).
    pub index: u64,
    /// Image file of a manifest record.
    pub file: Option<std::path::PathBuf>,
    /// Where a WebDataset shard member's encoded image lies (read when its batch is prepared).
    pub member: Option<ShardSlice>,
    pub text: String,
}

/// Records skipped while reading a manifest or decoding its images, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SkipReport {
    pub malformed_line: usize,
    pub non_utf8_caption: usize,
    pub empty_caption: usize,
    pub missing_image: usize,
    pub empty_file: usize,
    pub corrupt_image: usize,
    /// Shard members cut off by a truncated tar file (the rest of that shard is unreadable).
    pub truncated_member: usize,
    /// Manifest lines longer than [`MAX_MANIFEST_LINE`], shard members larger than
    /// [`MAX_TAR_MEMBER`].
    pub over_size_limit: usize,
}

/// The longest manifest line read (1 MiB): a record is a path and a caption.
pub const MAX_MANIFEST_LINE: usize = 1 << 20;
/// The largest shard member read (64 MiB): an image or a caption.
pub const MAX_TAR_MEMBER: u64 = 64 << 20;

impl std::fmt::Display for SkipReport {
    /// Every count, zeros included: "malformed line 0, non-UTF-8 caption 0, ...".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "malformed line {}, non-UTF-8 caption {}, empty caption {}, missing image {}, empty file {}, \
             corrupt image {}, truncated shard member {}, over a size limit {}",
            self.malformed_line,
            self.non_utf8_caption,
            self.empty_caption,
            self.missing_image,
            self.empty_file,
            self.corrupt_image,
            self.truncated_member,
            self.over_size_limit
        )
    }
}

impl SkipReport {
    pub fn total(&self) -> usize {
        self.malformed_line
            + self.non_utf8_caption
            + self.empty_caption
            + self.missing_image
            + self.empty_file
            + self.corrupt_image
            + self.truncated_member
            + self.over_size_limit
    }
}

/// The bytes of one tar member inside its shard: images are read from here when their batch
/// is prepared, so a dataset of shards never has to fit in memory (only its captions and these
/// positions do), and any record can be read in any order, which the trainer's shuffled epochs
/// and exact resume rely on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSlice {
    pub shard: std::sync::Arc<std::path::PathBuf>,
    /// Byte offset of the member's data in the shard file.
    pub offset: u64,
    pub len: u64,
}

impl ShardSlice {
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(&*self.shard)?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut data = vec![0u8; self.len as usize];
        file.read_exact(&mut data)?;
        Ok(data)
    }
}

/// The image (where it lies, and its header's width and height, or None when the header does
/// not decode) and the caption bytes found for one key of a shard.
type ShardMember = (Option<(ShardSlice, Option<(u32, u32)>)>, Option<Vec<u8>>);

/// One readable WebDataset record: image width, height, alt-text, where the image lies.
pub type ShardRecord = (u32, u32, String, ShardSlice);

/// Indexes WebDataset tar shards as img2dataset writes them (`key.jpg` / `key.png` + `key.txt`
/// [+ `key.json`]): one sequential pass, without unpacking to disk, that keeps each record's
/// caption, image size and the image's position in its shard, never the images themselves.
/// `path` is a `.tar` file or a folder of them (read in name order). Records with no image, no
/// caption, a non-UTF-8 or empty caption, an undecodable image header, or cut off by a
/// truncated shard are counted, never fatal.
pub fn read_shards(path: &std::path::Path) -> crate::error::Result<(Vec<ShardRecord>, SkipReport)> {
    let io = crate::error::io_error(path);
    let shards: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "tar"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut skips = SkipReport::default();
    let mut records = vec![];
    for shard in shards {
        let file = std::fs::File::open(&shard).map_err(crate::error::io_error(&shard))?;
        index_shard(file, std::sync::Arc::new(shard), &mut records, &mut skips);
    }
    Ok((records, skips))
}

/// Indexes one WebDataset shard read from `reader` (the file `shard`): its (image, caption)
/// records are appended to `records`, what cannot be used is counted in `skips`. Never fails:
/// a damaged shard yields the records before the damage.
pub fn index_shard(
    reader: impl std::io::Read,
    shard: std::sync::Arc<std::path::PathBuf>,
    records: &mut Vec<ShardRecord>,
    skips: &mut SkipReport,
) {
    use std::io::Read;
    {
        let mut archive = tar::Archive::new(reader);
        // key -> (image bytes, caption bytes)
        let mut members: std::collections::BTreeMap<String, ShardMember> = Default::default();
        let Ok(entries) = archive.entries() else {
            skips.truncated_member += 1;
            return;
        };
        for entry in entries {
            let Ok(mut entry) = entry else {
                skips.truncated_member += 1;
                break;
            };
            let Ok(name) = entry.path().map(|p| p.to_string_lossy().into_owned()) else { continue };
            let Some((key, ext)) = name.rsplit_once('.') else { continue };
            let (offset, len) = (entry.raw_file_position(), entry.size());
            if len > MAX_TAR_MEMBER {
                skips.over_size_limit += 1;
                continue; // the archive skips the member's bytes on the next entry
            }
            let mut data = Vec::new();
            if entry.read_to_end(&mut data).is_err() {
                skips.truncated_member += 1;
                break;
            }
            let slot = members.entry(key.to_string()).or_default();
            match ext.to_lowercase().as_str() {
                "jpg" | "jpeg" | "png" | "webp" => {
                    // the header gives the size filter its numbers; the bytes are dropped here
                    let dims = image::ImageReader::new(std::io::Cursor::new(&data))
                        .with_guessed_format()
                        .ok()
                        .and_then(|r| r.into_dimensions().ok());
                    let slice = ShardSlice { shard: shard.clone(), offset, len };
                    slot.0 = Some((slice, if data.is_empty() { Some((0, 0)) } else { dims }));
                }
                "txt" => slot.1 = Some(data),
                _ => {}
            }
        }
        for (_, (img, cap)) in members {
            let Some(img) = img else {
                skips.missing_image += 1;
                continue;
            };
            let Some(cap) = cap else {
                skips.empty_caption += 1;
                continue;
            };
            let Ok(cap) = String::from_utf8(cap) else {
                skips.non_utf8_caption += 1;
                continue;
            };
            let cap = cap.trim().to_string();
            if cap.is_empty() {
                skips.empty_caption += 1;
                continue;
            }
            let (slice, dims) = img;
            if slice.len == 0 {
                skips.empty_file += 1;
                continue;
            }
            match dims {
                Some((w, h)) => records.push((w, h, cap, slice)),
                None => skips.corrupt_image += 1,
            }
        }
    }
}

/// The (image path, caption) records of a manifest's bytes, in the layout `ext` names (`tsv`,
/// `csv`, `jsonl`), before any file is looked at; unusable lines are counted in the skips.
pub fn parse_manifest(bytes: &[u8], ext: &str) -> (Vec<(String, String)>, SkipReport) {
    let mut skips = SkipReport::default();
    let mut records = vec![];
    for raw in bytes.split(|&b| b == b'\n') {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        if raw.len() > MAX_MANIFEST_LINE {
            skips.over_size_limit += 1;
            continue;
        }
        let Ok(line) = std::str::from_utf8(raw) else {
            skips.non_utf8_caption += 1;
            continue;
        };
        let parsed: Option<(String, String)> = match ext {
            "jsonl" | "json" => serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| {
                let img = v.get("image").or_else(|| v.get("url")).and_then(|x| x.as_str())?.to_string();
                let cap = v.get("caption").or_else(|| v.get("text")).and_then(|x| x.as_str()).unwrap_or("").to_string();
                Some((img, cap))
            }),
            "csv" => line.split_once(',').map(|(a, b)| (a.trim().to_string(), b.trim().trim_matches('"').to_string())),
            _ => line.split_once('\t').map(|(a, b)| (a.trim().to_string(), b.trim().to_string())),
        };
        let Some((img, caption)) = parsed else {
            skips.malformed_line += 1;
            continue;
        };
        if caption.trim().is_empty() {
            skips.empty_caption += 1;
            continue;
        }
        records.push((img, caption));
    }
    (records, skips)
}

/// One readable manifest record: image width, height, alt-text, image file.
pub type ManifestRecord = (u32, u32, String, std::path::PathBuf);

/// Reads a manifest of (image path, alt-text) records, the layout of Conceptual Captions:
/// `.tsv` (path TAB caption), `.csv` (path,caption; the caption may be double-quoted) or
/// `.jsonl` ({"image": path, "caption": text}; "url"/"text" are accepted too). Relative paths
/// are resolved against the manifest's folder. Bad records are counted, never fatal; image
/// headers are read for the size filter (a file whose header cannot be read is corrupt).
/// Returns (records as (width, height, caption, path), skips).
pub fn read_manifest(path: &std::path::Path) -> crate::error::Result<(Vec<ManifestRecord>, SkipReport)> {
    let bytes = std::fs::read(path).map_err(crate::error::io_error(path))?;
    let base = path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_lowercase();
    let (lines, mut skips) = parse_manifest(&bytes, &ext);
    let mut records = vec![];
    for (img, caption) in lines {
        let file =
            if std::path::Path::new(&img).is_absolute() { std::path::PathBuf::from(&img) } else { base.join(&img) };
        match std::fs::metadata(&file) {
            Err(_) => {
                skips.missing_image += 1;
                continue;
            }
            Ok(m) if m.len() == 0 => {
                skips.empty_file += 1;
                continue;
            }
            Ok(_) => {}
        }
        match image::image_dimensions(&file) {
            Ok((w, h)) => records.push((w, h, caption, file)),
            Err(_) => skips.corrupt_image += 1,
        }
    }
    Ok((records, skips))
}

/// What each filter removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FilterReport {
    pub input: usize,
    pub image_too_small: usize,
    pub image_aspect: usize,
    pub text_shared_by_many: usize,
    pub text_unigrams_out_of_range: usize,
    pub text_rare_token: usize,
    pub kept: usize,
}

/// ALIGN's filters over (width, height, alt-text) records; returns the kept indices.
/// Image: shorter side > 200 px and aspect (long / short) < 3. Text: drop alt-texts shared by
/// more than 10 images; keep 3..=20 unigrams; drop texts with a token outside the
/// `vocab_keep` most frequent unigrams (or seen fewer than `min_count` times).
pub fn apply_filters(
    records: &[(u32, u32, String)],
    vocab_keep: usize,
    min_count: usize,
) -> (Vec<usize>, FilterReport) {
    let mut report = FilterReport { input: records.len(), ..Default::default() };
    let mut text_count: HashMap<&str, usize> = HashMap::new();
    let mut unigram: HashMap<String, usize> = HashMap::new();
    for (_, _, t) in records {
        *text_count.entry(t.as_str()).or_insert(0) += 1;
        for w in t.split_whitespace() {
            *unigram.entry(w.to_lowercase()).or_insert(0) += 1;
        }
    }
    let mut by_freq: Vec<(&String, &usize)> = unigram.iter().collect();
    by_freq.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    // "Most frequent" also means frequent at all: a word seen fewer than `min_count` times is
    // rare even when the corpus has fewer than `vocab_keep` distinct words.
    let frequent: std::collections::HashSet<&str> =
        by_freq.iter().take(vocab_keep).filter(|(_, &c)| c >= min_count).map(|(w, _)| w.as_str()).collect();
    let mut kept = vec![];
    for (i, (w, h, t)) in records.iter().enumerate() {
        let (short, long) = ((*w).min(*h), (*w).max(*h));
        if short <= 200 {
            report.image_too_small += 1;
        } else if long as f32 / short as f32 >= 3.0 {
            report.image_aspect += 1;
        } else if text_count[t.as_str()] > 10 {
            report.text_shared_by_many += 1;
        } else if !(3..=20).contains(&t.split_whitespace().count()) {
            report.text_unigrams_out_of_range += 1;
        } else if t.split_whitespace().any(|w| !frequent.contains(w.to_lowercase().as_str())) {
            report.text_rare_token += 1;
        } else {
            kept.push(i);
        }
    }
    report.kept = kept.len();
    (kept, report)
}

/// The built-in corpus: `train` filtered web-like pairs and `held_out` clean, fully descriptive
/// pairs from a disjoint index range.
pub fn builtin_corpus(seed: u64, train: usize, held_out: usize) -> (Vec<Pair>, Vec<Pair>, FilterReport) {
    let records: Vec<(u32, u32, String)> = (0..train as u64)
        .into_par_iter()
        .map(|i| {
            let s = Scene::generate(seed, i);
            let mut rng = Rng::new(seed ^ (i.wrapping_mul(0x5851_F42D_4C95_7F2D)));
            (s.width, s.height, s.alt_text(&mut rng))
        })
        .collect();
    let (kept, report) = apply_filters(&records, 200, 5);
    let train_pairs = kept
        .into_iter()
        .map(|i| Pair { index: i as u64, file: None, member: None, text: records[i].2.clone() })
        .collect();
    let base = 1u64 << 40;
    let held: Vec<Pair> = (0..held_out as u64)
        .map(|i| {
            let s = Scene::generate(seed, base + i);
            // full descriptions (size, colour, shape, and background or layout), as evaluation
            // captions are in COCO / Flickr30K: a caption that names only "a red circle" fits
            // dozens of the 1,000 images equally well, which no model can rank
            Pair { index: base + i, file: None, member: None, text: s.clean_caption(2 * (i as usize % 2)) }
        })
        .collect();
    (train_pairs, held, report)
}

/// A pair's image at its own size: the file, the shard member, or the built-in scene rendered.
/// None when it does not decode.
pub fn decode_pair(seed: u64, p: &Pair) -> Option<image::RgbImage> {
    match (&p.file, &p.member) {
        (Some(path), _) => crate::images::load_rgb(path).ok(),
        (None, Some(member)) => crate::images::decode_rgb(&member.read().ok()?, "shard member").ok(),
        (None, None) => Some(Scene::generate(seed, p.index).render()),
    }
}

/// Renders or decodes and preprocesses a batch: (N', res, res, 3) in [-1, 1], where N' counts
/// the images that decoded (the kept pair indices are returned; decode failures are counted in
/// `corrupt`). Training crops randomly from an image resized to res * 346 / 289 and flips half
/// the images (never when the caption names left or right); evaluation takes the centre crop.
pub fn image_batch_checked(
    seed: u64,
    pairs: &[&Pair],
    res: usize,
    train: bool,
    rng_seed: u64,
) -> Result<(Tensor, Vec<usize>, usize)> {
    image_batch_at(seed, pairs, res, train, rng_seed, 0)
}

/// [`image_batch_checked`] for the part of a batch that starts at position `first` (one rank's
/// share of a global batch): each image's crop and flip depend on its position in the whole
/// batch, so N ranks augment a global batch exactly as one process does.
pub fn image_batch_at(
    seed: u64,
    pairs: &[&Pair],
    res: usize,
    train: bool,
    rng_seed: u64,
    first: usize,
) -> Result<(Tensor, Vec<usize>, usize)> {
    let resize = (res * 346).div_ceil(289) as u32;
    let per: Vec<Option<Vec<f32>>> = pairs
        .par_iter()
        .enumerate()
        .map(|(k, p)| {
            let img = if p.file.is_none() && p.member.is_none() {
                // built-in scenes are drawn straight at the resized size (resizing is then a no-op)
                let scene = Scene::generate(seed, p.index);
                let (tw, th) = shorter_side_to(scene.width.max(1), scene.height.max(1), resize);
                if tw < scene.width {
                    scene.render_at(tw, th)
                } else {
                    scene.render()
                }
            } else {
                decode_pair(seed, p)?
            };
            let mut rng = Rng::new(rng_seed.wrapping_add((first + k) as u64 * 7919));
            let flip_allowed = !p.text.contains("left") && !p.text.contains("right");
            crop_pixels(&img, resize, res, train.then_some(&mut rng), flip_allowed)
        })
        .collect();
    let kept: Vec<usize> = per.iter().enumerate().filter(|(_, v)| v.is_some()).map(|(i, _)| i).collect();
    let corrupt = pairs.len() - kept.len();
    let data: Vec<f32> = per.into_iter().flatten().flatten().collect();
    Ok((Tensor::from_vec(data, &[kept.len(), res, res, 3])?, kept, corrupt))
}

/// The size (w, h) is resized to so that its shorter side is `resize`, keeping the aspect ratio.
fn shorter_side_to(w: u32, h: u32, resize: u32) -> (u32, u32) {
    if w <= h {
        (resize, ((h as u64 * resize as u64 / w as u64) as u32).max(resize))
    } else {
        (((w as u64 * resize as u64 / h as u64) as u32).max(resize), resize)
    }
}

/// One image as the model's input pixels, (res, res, 3) in [-1, 1]: resized so that its
/// shorter side is `resize` (aspect kept), then cropped to res x res: at random and flipped half
/// the time when `train_rng` is given (never when `flip_allowed` is false), else the centre crop.
/// None for an empty image.
fn crop_pixels(
    img: &image::RgbImage,
    resize: u32,
    res: usize,
    train_rng: Option<&mut Rng>,
    flip_allowed: bool,
) -> Option<Vec<f32>> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return None;
    }
    let (nw, nh) = shorter_side_to(w, h, resize);
    let resized;
    let small = if (w, h) == (nw, nh) {
        img
    } else {
        resized = crate::resample::resize(img, nw, nh, crate::resample::Filter::Bilinear);
        &resized
    };
    let r = res as u32;
    let (x0, y0, flip) = match train_rng {
        Some(rng) => {
            let (x0, y0) = (rng.below((nw - r + 1) as usize) as u32, rng.below((nh - r + 1) as usize) as u32);
            (x0, y0, rng.below(2) == 0 && flip_allowed)
        }
        None => ((nw - r) / 2, (nh - r) / 2, false),
    };
    let mut out = Vec::with_capacity(res * res * 3);
    for y in 0..r {
        for x in 0..r {
            let sx = if flip { x0 + r - 1 - x } else { x0 + x };
            let px = small.get_pixel(sx, y0 + y);
            out.extend(px.0.iter().map(|&v| v as f32 / 127.5 - 1.0));
        }
    }
    Some(out)
}

/// A decoded image as evaluation input (the centre crop of [`image_batch_checked`]):
/// (res, res, 3) values in [-1, 1], or None for an empty image.
pub fn eval_pixels(img: &image::RgbImage, res: usize) -> Option<Vec<f32>> {
    crop_pixels(img, (res * 346).div_ceil(289) as u32, res, None, false)
}

/// [`image_batch_checked`] for sources that always decode (the built-in corpus).
pub fn image_batch(seed: u64, pairs: &[&Pair], res: usize, train: bool, rng_seed: u64) -> Result<Tensor> {
    Ok(image_batch_checked(seed, pairs, res, train, rng_seed)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_lies_inside_the_unit_square() {
        // `inside` rejects samples outside the unit square before the shape tests: valid only
        // while no shape reaches past it. A grid over [-1.5, 1.5]^2 with points just outside.
        let steps = 301;
        for (shape, name) in SHAPES.iter().enumerate() {
            for j in 0..steps {
                for i in 0..steps {
                    let (dx, dy) =
                        (-1.5 + 3.0 * i as f32 / (steps - 1) as f32, -1.5 + 3.0 * j as f32 / (steps - 1) as f32);
                    for (x, y) in [(dx, dy), (dx.signum() * (1.0 + 1e-6), dy), (dx, dy.signum() * (1.0 + 1e-6))] {
                        if x.abs() > 1.0 || y.abs() > 1.0 {
                            assert!(!shape_contains(shape, x, y), "{name} reaches ({x}, {y})");
                        }
                        assert_eq!(inside(shape, x, y), shape_contains(shape, x, y));
                    }
                }
            }
        }
    }

    #[test]
    fn rendering_small_matches_rendering_large_then_shrinking() {
        for i in 0..6 {
            let scene = Scene::generate(2, i);
            let (w, h) = (scene.width, scene.height);
            let (tw, th) = ((w * 77 / w.min(h)).max(77), (h * 77 / w.min(h)).max(77));
            let direct = scene.render_at(tw, th);
            let shrunk = image::imageops::resize(&scene.render(), tw, th, image::imageops::FilterType::Triangle);
            assert_eq!(direct.dimensions(), shrunk.dimensions());
            let diff: f64 =
                direct.as_raw().iter().zip(shrunk.as_raw()).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>()
                    / direct.as_raw().len() as f64;
            // same picture up to edge antialiasing: a mean difference of a few grey levels
            assert!(diff < 8.0, "scene {i}: mean abs difference {diff:.2}");
        }
    }

    #[test]
    fn corpus_is_deterministic_and_filters_count_each_rule() {
        let (a, held, report) = builtin_corpus(1, 3000, 50);
        let (b, _, _) = builtin_corpus(1, 3000, 50);
        assert_eq!(a.iter().map(|p| &p.text).collect::<Vec<_>>(), b.iter().map(|p| &p.text).collect::<Vec<_>>());
        assert_eq!(held.len(), 50);
        assert!(report.image_too_small > 0 && report.image_aspect > 0, "{report:?}");
        assert!(
            report.text_shared_by_many > 0 && report.text_unigrams_out_of_range > 0 && report.text_rare_token > 0,
            "{report:?}"
        );
        assert_eq!(
            report.kept
                + report.image_too_small
                + report.image_aspect
                + report.text_shared_by_many
                + report.text_unigrams_out_of_range
                + report.text_rare_token,
            report.input
        );
        assert!(a.iter().all(|p| !p.text.contains("IMG_0412") && !p.text.contains("qzxv")));
        let img = Scene::generate(1, 5).render();
        assert_eq!(img.dimensions(), (Scene::generate(1, 5).width, Scene::generate(1, 5).height));
        let batch = image_batch(1, &a.iter().take(3).collect::<Vec<_>>(), 32, true, 9).unwrap();
        assert_eq!(batch.shape(), &[3, 32, 32, 3]);
        assert!(batch.to_vec().iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
