//! The run directory's guards against crashes and against two trainers at once.
//!
//! - [`RunLock`]: `train.lock` in the run directory, held with an advisory file lock (`flock`)
//!   for the whole run. A second trainer on the same `--out` is refused while the first lives;
//!   the operating system drops the lock when its holder exits, however it exits (`kill -9`
//!   included), so a crashed run never leaves a stale lock behind. The file holds the holder's
//!   process id, for the refusal's message.
//! - [`remove_stale_temporaries`]: checkpoints are written to a temporary file and renamed into
//!   place (`tensor::io::write_atomically`), so a crash mid-write leaves the previous checkpoint
//!   intact and a `.checkpoint.safetensors.tmp-*` file behind; the next run removes it.
//! - [`PhaseTrace`]: with `ALIGN_TRACE_PHASES=FILE`, the trainer appends the name of every phase
//!   it enters to FILE, unbuffered, so a test that kills the trainer at a random moment knows
//!   where the kill landed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{io_error, AlignError, Result};

/// Holds `train.lock` in a run directory until dropped.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    pub const FILE: &'static str = "train.lock";

    /// Takes the run directory's lock, or refuses when another trainer holds it.
    pub fn acquire(out_dir: &Path) -> Result<RunLock> {
        let path = out_dir.join(Self::FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(AlignError::config(
                    "--out",
                    format!(
                        "{} is in use by another `align train`{} (lock {}); wait for it to finish or choose another --out",
                        out_dir.display(),
                        if holder.is_empty() { String::new() } else { format!(" (process {holder})") },
                        path.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error(&path)(e)),
        }
        // our process id, for a second trainer's message (the lock, not the content, decides)
        file.set_len(0).and_then(|_| file.rewind()).map_err(io_error(&path))?;
        write!(file, "{}", std::process::id()).map_err(io_error(&path))?;
        Ok(RunLock { _file: file })
    }
}

/// Removes temporary checkpoint files a crashed run left in `out_dir`.
pub fn remove_stale_temporaries(out_dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(out_dir).map_err(io_error(out_dir))?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".safetensors.tmp-") {
            std::fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Phase names appended to `ALIGN_TRACE_PHASES` (nothing when it is unset).
pub struct PhaseTrace(Option<File>);

impl PhaseTrace {
    pub fn from_env() -> PhaseTrace {
        let file = std::env::var_os("ALIGN_TRACE_PHASES")
            .and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok());
        PhaseTrace(file)
    }

    pub fn enter(&mut self, phase: &str) {
        if let Some(f) = &mut self.0 {
            // one write per line: a kill leaves whole lines
            let _ = f.write_all(format!("{phase}\n").as_bytes());
        }
    }
}
