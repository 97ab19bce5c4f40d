//! Checkpoint and weight-file I/O.
//!
//! - [`safetensors`]: the Hugging Face safetensors format, read through a memory map (zero-copy
//!   when aligned) and written atomically.
//! - [`torch`]: PyTorch's `torch.save` state dicts (zip or legacy pickle), read without Python.
//! - [`WeightFormat::sniff`] tells them apart by their first bytes, never by the file's name, and
//!   [`load_named_tensors`] reads whichever it finds.

pub mod safetensors;
pub mod torch;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, TensorError};

/// The weight-file containers this crate reads, recognised by content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// 8-byte little-endian header length, then a JSON header starting with `{`.
    SafeTensors,
    /// PyTorch >= 1.6 `torch.save`: a zip archive (`PK\x03\x04`).
    TorchZip,
    /// Older `torch.save`: a stream of pickles, the first starting with PROTO (0x80) 2..=5.
    TorchLegacy,
}

impl WeightFormat {
    /// Recognises a container from the first bytes of a file (16 are enough), or says what the
    /// bytes look like instead.
    pub fn sniff(head: &[u8]) -> std::result::Result<WeightFormat, String> {
        if head.starts_with(b"PK\x03\x04") {
            return Ok(WeightFormat::TorchZip);
        }
        if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
            return Ok(WeightFormat::TorchLegacy);
        }
        if head.len() >= 9 && head[8] == b'{' {
            return Ok(WeightFormat::SafeTensors);
        }
        let looks_like = if head.starts_with(b"\x89PNG") {
            "a PNG image"
        } else if head.starts_with(&[0xff, 0xd8, 0xff]) {
            "a JPEG image"
        } else if head.starts_with(&[0x1f, 0x8b]) {
            "a gzip file"
        } else if head.starts_with(b"version https://git-lfs") {
            "a Git LFS pointer (the weights were not downloaded)"
        } else if head.first() == Some(&b'{') {
            "JSON"
        } else if head.is_empty() {
            "an empty file"
        } else if head.iter().all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) {
            "text"
        } else {
            "none of them"
        };
        Err(format!("not safetensors, a zip .pth or a pickled .pth: the content looks like {looks_like}"))
    }

    /// Reads the first bytes of `path` and recognises its container.
    pub fn of_file(path: &Path) -> Result<WeightFormat> {
        use std::io::Read;
        let mut head = Vec::with_capacity(16);
        std::fs::File::open(path)
            .and_then(|f| f.take(16).read_to_end(&mut head))
            .map_err(|source| TensorError::Io { path: path.to_path_buf(), source })?;
        WeightFormat::sniff(&head).map_err(|msg| TensorError::Format {
            file: path.display().to_string(),
            tensor: None,
            msg,
        })
    }
}

/// Every tensor of a weight file as f32, in file order, whatever its container (recognised by
/// content: safetensors, zip `.pth` or legacy pickled `.pth`).
pub fn load_named_tensors(path: &Path) -> Result<torch::NamedTensors> {
    match WeightFormat::of_file(path)? {
        WeightFormat::SafeTensors => {
            let st = safetensors::SafeTensors::open(path)?;
            st.names().map(|n| Ok((n.to_string(), st.tensor(n)?))).collect()
        }
        WeightFormat::TorchZip | WeightFormat::TorchLegacy => torch::load_state_dict(path),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// flushed to disk, then renamed over the target, so a crash leaves either the old file or the
/// new one, never half of one.
pub fn write_atomically(path: &Path, bytes_writer: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let io_err = |p: &Path| {
        let p: PathBuf = p.to_path_buf();
        move |source| TensorError::Io { path: p, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| TensorError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("not a file path"),
    })?;
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let unique = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.tmp-{}-{unique}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut writer = std::io::BufWriter::new(file);
        bytes_writer(&mut writer).map_err(io_err(&tmp))?;
        let file = writer.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        // Persist the rename itself (best effort: not every platform can open a directory).
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_recognised_by_their_first_bytes() {
        let mut st = 60u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{\"a\":");
        assert_eq!(WeightFormat::sniff(&st), Ok(WeightFormat::SafeTensors));
        assert_eq!(WeightFormat::sniff(b"PK\x03\x04rest"), Ok(WeightFormat::TorchZip));
        assert_eq!(WeightFormat::sniff(&[0x80, 2, 0x8a, 0x0a]), Ok(WeightFormat::TorchLegacy));
        for (head, found) in [
            (&b"\x89PNG\r\n\x1a\n"[..], "a PNG image"),
            (&[0xff, 0xd8, 0xff, 0xe0][..], "a JPEG image"),
            (b"version https://git-lfs.github.com/spec/v1", "Git LFS pointer"),
            (b"", "an empty file"),
            (b"hello weights", "text"),
            (&[0x80, 9, 0, 0][..], "none of them"),
        ] {
            let e = WeightFormat::sniff(head).unwrap_err();
            assert!(e.contains(found), "{e}");
        }
    }
}
