//! Checkpoint and weight-file I/O.
//!
//! - [`safetensors`]: the Hugging Face safetensors format, read through a memory map (zero-copy
//!   when aligned) and written atomically.

pub mod safetensors;
pub mod torch;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, TensorError};

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
