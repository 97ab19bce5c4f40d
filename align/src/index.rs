//! The search index: unit image embeddings of a collection, what `align embed` writes and
//! `align search` / `align serve` read.
//!
//! On disk it is one safetensors file: tensor `embeddings` (n, dim) in F32 or BF16 (half the
//! bytes; a unit vector's cosine scores move by about 1e-3 at most), metadata `paths` (JSON list
//! of each row's image file), optional `captions` (JSON list) and `checkpoint` (the model that
//! made it, so queries are embedded with the same one). Loading memory-maps the file: a 512 MB
//! index costs no copy and no start-up time, and pages stay shared between processes.
//!
//! Building is resumable: [`IndexBuilder`] appends each finished batch of embeddings to
//! `OUT.partial` and records its progress in `OUT.partial.json` (written atomically after the
//! rows are on disk), so a killed `align embed` continues from its last batch; the final file is
//! written atomically and the partial files removed.
//!
//! Search is exact: [`kernels::topk`] streams the whole index once per batch of queries.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use kernels::bf16::bf16;
use kernels::topk::{top_k_dot, Hit, IndexRows};
use tensor::io::safetensors::{Dtype, SafeTensors, SaveData};

use crate::error::{io_error, AlignError, Result};

/// How index rows are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IndexDtype {
    #[default]
    F32,
    Bf16,
}

impl std::str::FromStr for IndexDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(IndexDtype::F32),
            "bf16" | "bfloat16" => Ok(IndexDtype::Bf16),
            other => Err(format!("unknown index dtype `{other}` (expected f32 or bf16)")),
        }
    }
}

impl std::fmt::Display for IndexDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexDtype::F32 => "f32",
            IndexDtype::Bf16 => "bf16",
        })
    }
}

/// Where the rows live: in memory, or in the mapped file (aligned, so read in place).
enum Rows {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    Mapped { file: SafeTensors, dtype: IndexDtype },
}

/// An embedding index: n unit rows of `dim` values, and the image each row came from.
pub struct EmbeddingIndex {
    rows: Rows,
    pub dim: usize,
    pub paths: Vec<PathBuf>,
    /// One caption per row when the index was built from a manifest with captions.
    pub captions: Option<Vec<String>>,
    /// The model that made it (run directory, checkpoint or AlignModel directory).
    pub checkpoint: PathBuf,
}

impl EmbeddingIndex {
    /// An in-memory index of f32 rows (`embeddings`: (paths.len(), dim)).
    pub fn from_embeddings(embeddings: Vec<f32>, dim: usize, paths: Vec<PathBuf>, checkpoint: PathBuf) -> Result<Self> {
        if dim == 0 || embeddings.len() != paths.len() * dim {
            return Err(AlignError::config(
                "index",
                format!("{} values are not {} rows of {dim}", embeddings.len(), paths.len()),
            ));
        }
        Ok(EmbeddingIndex { rows: Rows::F32(embeddings), dim, paths, captions: None, checkpoint })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn dtype(&self) -> IndexDtype {
        match &self.rows {
            Rows::F32(_) => IndexDtype::F32,
            Rows::Bf16(_) => IndexDtype::Bf16,
            Rows::Mapped { dtype, .. } => *dtype,
        }
    }

    /// The rows as the top-k kernel reads them.
    pub fn rows(&self) -> IndexRows<'_> {
        match &self.rows {
            Rows::F32(v) => IndexRows::F32(v),
            Rows::Bf16(v) => IndexRows::Bf16(v),
            Rows::Mapped { file, dtype } => {
                let raw = file.raw_bytes("embeddings").expect("checked when the index was opened");
                match dtype {
                    IndexDtype::F32 => IndexRows::F32(bytemuck::cast_slice(raw)),
                    IndexDtype::Bf16 => IndexRows::Bf16(bytemuck::cast_slice(raw)),
                }
            }
        }
    }

    /// Row `i` widened to f32.
    pub fn row(&self, i: usize) -> Vec<f32> {
        let d = self.dim;
        match self.rows() {
            IndexRows::F32(v) => v[i * d..(i + 1) * d].to_vec(),
            IndexRows::Bf16(v) => kernels::bf16::to_f32_vec(&v[i * d..(i + 1) * d]),
        }
    }

    /// The same rows stored as `dtype` (bf16 rounds to nearest even).
    pub fn into_dtype(self, dtype: IndexDtype) -> EmbeddingIndex {
        if self.dtype() == dtype {
            return self;
        }
        let rows = match (self.rows(), dtype) {
            (IndexRows::F32(v), IndexDtype::Bf16) => Rows::Bf16(kernels::bf16::to_bf16_vec(v)),
            (IndexRows::Bf16(v), IndexDtype::F32) => Rows::F32(kernels::bf16::to_f32_vec(v)),
            _ => unreachable!("dtype differs"),
        };
        EmbeddingIndex { rows, ..self }
    }

    /// The index's metadata entries (paths, captions, checkpoint).
    fn metadata(&self) -> BTreeMap<String, String> {
        let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let paths: Vec<String> = self.paths.iter().map(|p| abs(p).display().to_string()).collect();
        let mut meta = BTreeMap::from([
            ("paths".to_string(), serde_json::to_string(&paths).expect("strings serialise")),
            ("checkpoint".to_string(), abs(&self.checkpoint).display().to_string()),
        ]);
        if let Some(c) = &self.captions {
            meta.insert("captions".into(), serde_json::to_string(c).expect("strings serialise"));
        }
        meta
    }

    /// The rows' bytes as stored on disk (little-endian f32 or bf16).
    fn row_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        #[cfg(target_endian = "little")]
        match self.rows() {
            IndexRows::F32(v) => std::borrow::Cow::Borrowed(bytemuck::cast_slice(v)),
            IndexRows::Bf16(v) => std::borrow::Cow::Borrowed(bytemuck::cast_slice(v)),
        }
        #[cfg(not(target_endian = "little"))]
        match self.rows() {
            IndexRows::F32(v) => std::borrow::Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            IndexRows::Bf16(v) => std::borrow::Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        }
    }

    /// Writes the index as safetensors in its dtype, atomically. The rows are written as they
    /// are held (no widening and re-rounding of bf16, no copy).
    pub fn save(&self, path: &Path) -> Result<()> {
        let dtype = match self.dtype() {
            IndexDtype::F32 => Dtype::F32,
            IndexDtype::Bf16 => Dtype::BF16,
        };
        let bytes = self.row_bytes();
        let shape = [self.len(), self.dim];
        let entry = SaveData::Raw { dtype, shape: &shape, bytes: &bytes };
        Ok(tensor::io::safetensors::save(path, &[("embeddings", entry)], &self.metadata())?)
    }

    /// Opens an index file, memory-mapped. F32 and BF16 rows are read in place (copied only if
    /// the file places them at an address unaligned for their type); F16 is widened to f32.
    pub fn load(path: &Path) -> Result<EmbeddingIndex> {
        let file = SafeTensors::open(path)?;
        let bad = |msg: String| AlignError::data(path, msg);
        let info = file.info("embeddings").ok_or_else(|| bad("no 'embeddings' tensor: not a search index".into()))?;
        let (dtype, shape) = (info.dtype, info.shape.clone());
        let meta = file.metadata().clone();
        let paths: Vec<String> = meta
            .get("paths")
            .and_then(|p| serde_json::from_str(p).ok())
            .ok_or_else(|| bad("no 'paths' metadata (a JSON list of image files)".into()))?;
        if shape.len() != 2 || shape[0] != paths.len() || shape[1] == 0 {
            return Err(bad(format!("embeddings of shape {shape:?} do not match {} paths", paths.len())));
        }
        let captions: Option<Vec<String>> = match meta.get("captions") {
            None => None,
            Some(c) => match serde_json::from_str::<Vec<String>>(c) {
                Ok(c) if c.len() == paths.len() => Some(c),
                _ => return Err(bad("'captions' metadata is not one string per row".into())),
            },
        };
        let raw = file.raw_bytes("embeddings")?;
        let rows = match dtype {
            Dtype::F32 if raw.as_ptr().align_offset(4) == 0 && cfg!(target_endian = "little") => {
                Rows::Mapped { file, dtype: IndexDtype::F32 }
            }
            Dtype::BF16 if raw.as_ptr().align_offset(2) == 0 && cfg!(target_endian = "little") => {
                Rows::Mapped { file, dtype: IndexDtype::Bf16 }
            }
            Dtype::BF16 => Rows::Bf16(raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]])).collect()),
            _ => Rows::F32(file.tensor("embeddings")?.to_vec()),
        };
        Ok(EmbeddingIndex {
            rows,
            dim: shape[1],
            paths: paths.into_iter().map(PathBuf::from).collect(),
            captions,
            checkpoint: meta.get("checkpoint").map(PathBuf::from).unwrap_or_default(),
        })
    }

    /// The `k` best rows for one query vector: (row, score), best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(usize, f32)>> {
        Ok(self.search_batch(query, k)?.remove(0).into_iter().map(|h| (h.row, h.score)).collect())
    }

    /// The `k` best rows for each query ((b, dim) row-major), in one pass over the index.
    pub fn search_batch(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        if queries.is_empty() || !queries.len().is_multiple_of(self.dim) {
            return Err(AlignError::config(
                "query",
                format!("{} values are not whole {}-d query vectors", queries.len(), self.dim),
            ));
        }
        Ok(top_k_dot(self.rows(), self.dim, queries, k))
    }

    /// Writes the rows as a NumPy `.npy` file, float32 (n, dim), C order: `np.load` reads it,
    /// and `faiss.IndexFlatIP(dim).add(...)` takes it as it is.
    pub fn export_npy(&self, path: &Path) -> Result<()> {
        let header = npy_header(self.len(), self.dim);
        tensor::io::write_atomically(path, |w| {
            w.write_all(&header)?;
            match self.rows() {
                IndexRows::F32(_) => w.write_all(&self.row_bytes()),
                IndexRows::Bf16(v) => {
                    // widened a block at a time into one reused buffer
                    let mut buf = Vec::with_capacity(4 << 16);
                    for block in v.chunks(1 << 16) {
                        buf.clear();
                        block.iter().for_each(|x| buf.extend_from_slice(&x.to_f32().to_le_bytes()));
                        w.write_all(&buf)?;
                    }
                    Ok(())
                }
            }
        })
        .map_err(|e| AlignError::data(path, format!("writing the .npy file: {e}")))
    }
}

/// The header of a version 1.0 `.npy` file of little-endian float32 (rows, cols), padded so
/// the data starts at a multiple of 64 bytes.
fn npy_header(rows: usize, cols: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let unpadded = 10 + dict.len() + 1; // magic + version + length field, the dict, '\n'
    let pad = unpadded.div_ceil(64) * 64 - unpadded;
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend_from_slice(&((dict.len() + pad + 1) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.extend(std::iter::repeat_n(b' ', pad));
    h.push(b'\n');
    h
}

// ---------------------------------------------------------------------------------------------
// Resumable building
// ---------------------------------------------------------------------------------------------

/// What a partial build has done, saved beside its rows.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct Progress {
    /// Fingerprint of the inputs (model, file list, dim): a partial build of other inputs is
    /// discarded, never mixed in.
    inputs: u64,
    /// Images looked at so far (a prefix of the file list).
    processed: usize,
    /// The indices of those that decoded, one embedding row each in `OUT.partial`.
    kept: Vec<usize>,
}

/// Builds an index batch by batch, resuming an interrupted build of the same inputs.
pub struct IndexBuilder {
    out: PathBuf,
    dim: usize,
    progress: Progress,
    rows: std::fs::File,
}

fn sidecar(out: &Path, suffix: &str) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// FNV-1a over the model path, the file list and the width: stable across runs and builds.
fn fingerprint(model: &Path, files: &[PathBuf], dim: usize) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    };
    eat(model.as_os_str().as_encoded_bytes());
    for f in files {
        eat(&[0]);
        eat(f.as_os_str().as_encoded_bytes());
    }
    eat(&(dim as u64).to_le_bytes());
    h
}

impl IndexBuilder {
    /// Starts (or resumes) the build of `out` from `files` with a model of width `dim`.
    /// Returns the builder and how many files are already done.
    pub fn open(out: &Path, model: &Path, files: &[PathBuf], dim: usize) -> Result<(IndexBuilder, usize)> {
        let inputs = fingerprint(model, files, dim);
        let (rows_path, progress_path) = (sidecar(out, ".partial"), sidecar(out, ".partial.json"));
        let saved: Option<Progress> = std::fs::read(&progress_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let progress = match saved {
            Some(p) if p.inputs == inputs && p.processed <= files.len() && p.kept.iter().all(|&i| i < p.processed) => p,
            _ => Progress { inputs, processed: 0, kept: vec![] },
        };
        let rows = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&rows_path)
            .map_err(io_error(&rows_path))?;
        // rows appended after the last progress record (a kill between the two writes) are
        // dropped: the file is cut back to the rows the record counts
        let want = (progress.kept.len() * dim * 4) as u64;
        let have = rows.metadata().map_err(io_error(&rows_path))?.len();
        if have < want {
            // the record promises rows that are not there: start again
            rows.set_len(0).map_err(io_error(&rows_path))?;
            let progress = Progress { inputs, processed: 0, kept: vec![] };
            return Ok((IndexBuilder { out: out.to_path_buf(), dim, progress, rows }, 0));
        }
        rows.set_len(want).map_err(io_error(&rows_path))?;
        let done = progress.processed;
        Ok((IndexBuilder { out: out.to_path_buf(), dim, progress, rows }, done))
    }

    /// Records the next batch: `processed` more files looked at, the embeddings (kept.len(), dim)
    /// of those that decoded, `kept` their indices in the whole file list.
    pub fn append(&mut self, processed: usize, embeddings: &[f32], kept: &[usize]) -> Result<()> {
        use std::io::Seek;
        assert_eq!(embeddings.len(), kept.len() * self.dim, "one row per kept file");
        let rows_path = sidecar(&self.out, ".partial");
        let mut bytes = Vec::with_capacity(embeddings.len() * 4);
        embeddings.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        self.rows.seek(std::io::SeekFrom::End(0)).map_err(io_error(&rows_path))?;
        self.rows.write_all(&bytes).map_err(io_error(&rows_path))?;
        self.rows.sync_data().map_err(io_error(&rows_path))?;
        self.progress.processed += processed;
        self.progress.kept.extend_from_slice(kept);
        let progress_path = sidecar(&self.out, ".partial.json");
        let json = serde_json::to_vec(&self.progress).expect("progress serialises");
        tensor::io::write_atomically(&progress_path, |w| w.write_all(&json))
            .map_err(|e| AlignError::data(&progress_path, format!("recording progress: {e}")))
    }

    /// Everything appended so far: (rows (kept.len(), dim), kept indices).
    pub fn rows(&self) -> Result<(Vec<f32>, Vec<usize>)> {
        let rows_path = sidecar(&self.out, ".partial");
        let bytes = std::fs::read(&rows_path).map_err(io_error(&rows_path))?;
        let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if values.len() != self.progress.kept.len() * self.dim {
            return Err(AlignError::data(&rows_path, "partial rows disagree with the progress record"));
        }
        Ok((values, self.progress.kept.clone()))
    }

    /// Removes the partial files (after the index has been written).
    pub fn clean(self) {
        drop(self.rows);
        let _ = std::fs::remove_file(sidecar(&self.out, ".partial"));
        let _ = std::fs::remove_file(sidecar(&self.out, ".partial.json"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_rows(n: usize, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n * dim).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        for r in v.chunks_exact_mut(dim) {
            let s = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter_mut().for_each(|x| *x /= s);
        }
        v
    }

    #[test]
    fn saved_indexes_map_back_in_both_dtypes_and_search_alike() {
        let dir = std::env::temp_dir().join(format!("align-index-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (n, dim) = (300, 24);
        let paths: Vec<PathBuf> = (0..n).map(|i| PathBuf::from(format!("/img/{i}.png"))).collect();
        let mut idx = EmbeddingIndex::from_embeddings(unit_rows(n, dim), dim, paths.clone(), "run".into()).unwrap();
        idx.captions = Some((0..n).map(|i| format!("caption {i}")).collect());
        let q = idx.row(17);
        let exact = idx.search(&q, 5).unwrap();
        assert_eq!(exact[0].0, 17);
        for dtype in [IndexDtype::F32, IndexDtype::Bf16] {
            let file = dir.join(format!("index-{dtype}.safetensors"));
            let converted = EmbeddingIndex::from_embeddings(unit_rows(n, dim), dim, paths.clone(), "run".into())
                .unwrap()
                .into_dtype(dtype);
            let in_memory = converted.search(&q, 5).unwrap();
            EmbeddingIndex { captions: idx.captions.clone(), ..converted }.save(&file).unwrap();
            let back = EmbeddingIndex::load(&file).unwrap();
            assert!(matches!(back.rows, Rows::Mapped { .. }), "{dtype}: read in place");
            assert_eq!(back.dtype(), dtype);
            assert_eq!(back.captions.as_ref().unwrap()[3], "caption 3");
            assert_eq!(
                back.search(&q, 5).unwrap(),
                in_memory,
                "{dtype}: the mapped index searches as the in-memory one"
            );
            assert_eq!(back.search(&q, 1).unwrap()[0].0, 17);
            // the .npy rows are the index's rows as f32
            let npy = dir.join(format!("rows-{dtype}.npy"));
            back.export_npy(&npy).unwrap();
            let bytes = std::fs::read(&npy).unwrap();
            let data = &bytes[npy_header(n, dim).len()..];
            assert_eq!(data.len(), n * dim * 4);
            for i in [0, 17, n - 1] {
                let row: Vec<f32> = data[i * dim * 4..(i + 1) * dim * 4]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                assert_eq!(row, back.row(i), "{dtype} row {i}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn npy_header_is_what_numpy_writes() {
        let h = npy_header(100000, 256);
        assert_eq!(h.len() % 64, 0);
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([h[8], h[9]]) as usize;
        assert_eq!(10 + len, h.len());
        let dict = std::str::from_utf8(&h[10..]).unwrap();
        assert!(dict.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 256), }"));
        assert!(dict.ends_with('\n'));
    }

    #[test]
    fn an_interrupted_build_resumes_and_a_changed_one_restarts() {
        let dir = std::env::temp_dir().join(format!("align-index-build-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("index.safetensors");
        let files: Vec<PathBuf> = (0..10).map(|i| PathBuf::from(format!("{i}.png"))).collect();
        let (mut b, done) = IndexBuilder::open(&out, Path::new("m"), &files, 2).unwrap();
        assert_eq!(done, 0);
        b.append(4, &[1.0, 0.0, 0.0, 1.0, 0.5, 0.5], &[0, 1, 3]).unwrap();
        drop(b);
        // a kill after appending rows but before recording them: the extra rows are dropped
        std::fs::OpenOptions::new().append(true).open(sidecar(&out, ".partial")).unwrap().write_all(&[0u8; 8]).unwrap();
        let (mut b, done) = IndexBuilder::open(&out, Path::new("m"), &files, 2).unwrap();
        assert_eq!(done, 4);
        b.append(6, &[0.0, -1.0], &[9]).unwrap();
        let (rows, kept) = b.rows().unwrap();
        assert_eq!(kept, [0, 1, 3, 9]);
        assert_eq!(rows, [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.0, -1.0]);
        drop(b);
        // another model: the partial build is not reused
        let (b, done) = IndexBuilder::open(&out, Path::new("other"), &files, 2).unwrap();
        assert_eq!(done, 0);
        assert!(b.rows().unwrap().0.is_empty());
        b.clean();
        assert!(!sidecar(&out, ".partial").exists() && !sidecar(&out, ".partial.json").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
