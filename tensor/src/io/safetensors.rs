//! The safetensors format (Hugging Face), read and written without the `safetensors` crate.
//!
//! Layout of a file:
//! ```text
//! [u64 little-endian N][N bytes of JSON header][data bytes]
//! header = {"__metadata__": {"k": "v"}, "name": {"dtype": "F32", "shape": [2, 3],
//!           "data_offsets": [begin, end]}, ...}   offsets relative to the data section
//! ```
//! Reading memory-maps the file and validates the whole header before any tensor is touched:
//! every malformed input (truncated file, header length past the end, invalid UTF-8 or JSON,
//! unknown dtype, byte count that disagrees with the shape, offsets out of range or
//! overlapping) is an `Err` naming the file and the tensor, never a panic or an out-of-bounds
//! read. F32 tensors whose bytes are 4-byte aligned are returned without copying (the tensor
//! keeps the map alive); other dtypes are converted to f32 on load, or kept as i64 on request.
//!
//! Writing packs tensors by descending element size (so every tensor stays naturally aligned,
//! as the reference implementation does), pads the header to 8 bytes, and goes through
//! [`write_atomically`](super::write_atomically).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Result, TensorError};
use crate::layout::Layout;
use crate::storage::{SharedBytes, Storage};
use crate::tensor::Tensor;

/// Largest header we accept (the reference implementation's limit): guards against a corrupt
/// length asking us to parse gigabytes of JSON.
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Element types we read. F32 / F16 / BF16 / I64 are the ones we write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    U8,
    Bool,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U8 | Dtype::Bool => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F64 => "F64",
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
        }
    }

    fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F64" => Dtype::F64,
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "U8" => Dtype::U8,
            "BOOL" => Dtype::Bool,
            _ => return None,
        })
    }
}

/// One header entry, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub data_offsets: (usize, usize),
}

/// An opened safetensors file (or byte buffer): validated header plus the mapped bytes.
pub struct SafeTensors {
    source: String,
    bytes: SharedBytes,
    data_start: usize,
    entries: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensors").field("source", &self.source).field("tensors", &self.entries.len()).finish()
    }
}

impl SafeTensors {
    /// Memory-maps and validates a file.
    pub fn open(path: impl AsRef<Path>) -> Result<SafeTensors> {
        let path = path.as_ref();
        let io = |source| TensorError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let source = path.display().to_string();
        if len < 8 {
            return Err(format_err(
                &source,
                None,
                format!("file is {len} bytes, too short for the 8-byte header length"),
            ));
        }
        // SAFETY: the map is read-only; like every mmap reader we assume the file is not
        // truncated by another process while it is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        SafeTensors::parse(source, Arc::new(map))
    }

    /// Validates an in-memory buffer (used by tests and for data received over the network).
    pub fn from_bytes(bytes: Vec<u8>, source: &str) -> Result<SafeTensors> {
        SafeTensors::parse(source.to_string(), Arc::new(bytes))
    }

    fn parse(source: String, bytes: SharedBytes) -> Result<SafeTensors> {
        let all: &[u8] = (*bytes).as_ref();
        let err = |msg: String| format_err(&source, None, msg);
        if all.len() < 8 {
            return Err(err(format!("file is {} bytes, too short for the 8-byte header length", all.len())));
        }
        let header_len = u64::from_le_bytes(all[..8].try_into().expect("8 bytes"));
        let available = (all.len() - 8) as u64;
        if header_len > available {
            return Err(err(format!(
                "header length {header_len} runs past the end of the file ({available} bytes follow it)"
            )));
        }
        if header_len > MAX_HEADER_BYTES {
            return Err(err(format!("header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit")));
        }
        let data_start = 8 + header_len as usize;
        let data_len = all.len() - data_start;
        let header_text =
            std::str::from_utf8(&all[8..data_start]).map_err(|e| err(format!("header is not valid UTF-8: {e}")))?;
        let header: serde_json::Value =
            serde_json::from_str(header_text).map_err(|e| err(format!("header is not valid JSON: {e}")))?;
        let object = header.as_object().ok_or_else(|| err("header is not a JSON object".into()))?;

        let mut entries = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, value) in object {
            if name == "__metadata__" {
                let m = value.as_object().ok_or_else(|| err("__metadata__ is not an object".into()))?;
                for (k, v) in m {
                    let v = v.as_str().ok_or_else(|| err(format!("__metadata__ value for '{k}' is not a string")))?;
                    metadata.insert(k.clone(), v.to_string());
                }
                continue;
            }
            let info = parse_entry(value, data_len).map_err(|msg| format_err(&source, Some(name), msg))?;
            entries.insert(name.clone(), info);
        }

        // No two tensors may share bytes.
        let mut spans: Vec<(&String, &TensorInfo)> =
            entries.iter().filter(|(_, i)| i.data_offsets.0 < i.data_offsets.1).collect();
        spans.sort_by_key(|(_, i)| i.data_offsets);
        for pair in spans.windows(2) {
            let ((a, ia), (b, ib)) = (pair[0], pair[1]);
            if ia.data_offsets.1 > ib.data_offsets.0 {
                return Err(format_err(
                    &source,
                    Some(b),
                    format!("data_offsets {:?} overlap those of '{a}' {:?}", ib.data_offsets, ia.data_offsets),
                ));
            }
        }
        Ok(SafeTensors { source, bytes, data_start, entries, metadata })
    }

    /// Where the bytes came from (the path, for files).
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.entries.get(name)
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    fn entry(&self, name: &str) -> Result<&TensorInfo> {
        self.entries.get(name).ok_or_else(|| format_err(&self.source, Some(name), "no such tensor in the file".into()))
    }

    /// The raw little-endian bytes of one tensor.
    pub fn raw_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.entry(name)?;
        let all: &[u8] = (*self.bytes).as_ref();
        Ok(&all[self.data_start + info.data_offsets.0..self.data_start + info.data_offsets.1])
    }

    /// A tensor as f32 (converted from its stored dtype). F32 data that is 4-byte aligned in
    /// memory is not copied: the tensor shares the mapped file.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let info = self.entry(name)?;
        let raw = self.raw_bytes(name)?;
        if info.dtype == Dtype::F32 {
            let numel = raw.len() / 4;
            if let Some(storage) = Storage::mapped(self.bytes.clone(), self.data_start + info.data_offsets.0, numel) {
                return Tensor::from_storage(Arc::new(storage), Layout::contiguous(&info.shape));
            }
        }
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::F64 => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::I64 => raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            Dtype::I32 => raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            Dtype::U8 | Dtype::Bool => raw.iter().map(|&b| b as f32).collect(),
        };
        Tensor::from_vec(values, &info.shape)
    }

    /// An integer tensor kept exact as i64 (I64, I32, U8 and BOOL entries), with its shape.
    pub fn tensor_i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let info = self.entry(name)?;
        let raw = self.raw_bytes(name)?;
        let values = match info.dtype {
            Dtype::I64 => raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::I32 => raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
            Dtype::U8 | Dtype::Bool => raw.iter().map(|&b| b as i64).collect(),
            other => {
                return Err(format_err(
                    &self.source,
                    Some(name),
                    format!("dtype {} is not an integer type", other.name()),
                ))
            }
        };
        Ok((info.shape.clone(), values))
    }
}

fn format_err(source: &str, tensor: Option<&str>, msg: String) -> TensorError {
    TensorError::Format { file: source.to_string(), tensor: tensor.map(str::to_string), msg }
}

fn parse_entry(value: &serde_json::Value, data_len: usize) -> std::result::Result<TensorInfo, String> {
    let obj = value.as_object().ok_or("entry is not a JSON object")?;
    let dtype_name = obj.get("dtype").and_then(|v| v.as_str()).ok_or("missing or non-string 'dtype'")?;
    let dtype = Dtype::parse(dtype_name).ok_or_else(|| format!("unknown dtype '{dtype_name}'"))?;
    let shape_json = obj.get("shape").and_then(|v| v.as_array()).ok_or("missing or non-array 'shape'")?;
    let shape = shape_json
        .iter()
        .map(|d| {
            d.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| format!("shape entry {d} is not a non-negative integer"))
        })
        .collect::<std::result::Result<Vec<usize>, String>>()?;
    let offsets = obj.get("data_offsets").and_then(|v| v.as_array()).ok_or("missing or non-array 'data_offsets'")?;
    if offsets.len() != 2 {
        return Err(format!("data_offsets has {} entries, expected 2", offsets.len()));
    }
    let as_usize = |v: &serde_json::Value| {
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| format!("data offset {v} is not a non-negative integer"))
    };
    let (begin, end) = (as_usize(&offsets[0])?, as_usize(&offsets[1])?);
    if begin > end {
        return Err(format!("data_offsets [{begin}, {end}] run backwards"));
    }
    if end > data_len {
        return Err(format!("data_offsets [{begin}, {end}] run past the {data_len}-byte data section"));
    }
    let numel =
        shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let nbytes = numel.checked_mul(dtype.size()).ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if nbytes != end - begin {
        return Err(format!(
            "shape {shape:?} of dtype {dtype_name} needs {nbytes} bytes but data_offsets span {}",
            end - begin
        ));
    }
    Ok(TensorInfo { dtype, shape, data_offsets: (begin, end) })
}

// --------------------------------------------------------------------------------------------
// Writing
// --------------------------------------------------------------------------------------------

/// What to store under one name.
#[derive(Clone, Copy, Debug)]
pub enum SaveData<'a> {
    /// A float tensor stored as F32, F16 or BF16 (rounded to nearest even).
    Float(&'a Tensor, Dtype),
    /// Integers stored exactly as I64.
    I64 { shape: &'a [usize], values: &'a [i64] },
    /// Values already in their stored little-endian layout, written as they are (no copy):
    /// e.g. a bf16 embedding table that must not be widened and rounded again.
    Raw { dtype: Dtype, shape: &'a [usize], bytes: &'a [u8] },
}

/// Serialises tensors and metadata into safetensors bytes.
pub fn serialize(entries: &[(&str, SaveData<'_>)], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    validate_entries(entries)?;
    let mut buf = Vec::new();
    write_to(&mut buf, entries, metadata).map_err(|e| TensorError::Io { path: "<memory>".into(), source: e })?;
    Ok(buf)
}

fn validate_entries(entries: &[(&str, SaveData<'_>)]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (name, data) in entries {
        let err = |msg: String| format_err("<save>", Some(name), msg);
        if *name == "__metadata__" || !seen.insert(*name) {
            return Err(err("duplicate or reserved tensor name".into()));
        }
        match data {
            SaveData::Float(_, d) if !matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16) => {
                return Err(err(format!("cannot store a float tensor as {}", d.name())))
            }
            SaveData::I64 { shape, values } if shape.iter().product::<usize>() != values.len() => {
                return Err(err(format!("shape {shape:?} does not hold {} values", values.len())))
            }
            SaveData::Raw { dtype, shape, bytes }
                if shape.iter().try_fold(dtype.size(), |n, &d| n.checked_mul(d)) != Some(bytes.len()) =>
            {
                return Err(err(format!("shape {shape:?} of {} does not hold {} bytes", dtype.name(), bytes.len())))
            }
            _ => {}
        }
    }
    Ok(())
}

fn write_to(
    out: &mut dyn Write,
    entries: &[(&str, SaveData<'_>)],
    metadata: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    // Order by descending element size, then name: keeps each tensor naturally aligned.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    let elem = |d: &SaveData| match d {
        SaveData::Float(_, dt) | SaveData::Raw { dtype: dt, .. } => dt.size(),
        SaveData::I64 { .. } => 8,
    };
    order.sort_by(|&a, &b| elem(&entries[b].1).cmp(&elem(&entries[a].1)).then(entries[a].0.cmp(entries[b].0)));

    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("string map"));
    }
    let mut offset = 0usize;
    for &i in &order {
        let (name, data) = &entries[i];
        let (dtype, shape, numel) = match data {
            SaveData::Float(t, dt) => (*dt, t.shape().to_vec(), t.numel()),
            SaveData::I64 { shape, values } => (Dtype::I64, shape.to_vec(), values.len()),
            SaveData::Raw { dtype, shape, bytes } => (*dtype, shape.to_vec(), bytes.len() / dtype.size()),
        };
        let end = offset + numel * dtype.size();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header_bytes = serde_json::to_vec(&serde_json::Value::Object(header)).expect("json");
    while !(8 + header_bytes.len()).is_multiple_of(8) {
        header_bytes.push(b' ');
    }
    out.write_all(&(header_bytes.len() as u64).to_le_bytes())?;
    out.write_all(&header_bytes)?;
    let mut chunk: Vec<u8> = Vec::new();
    for &i in &order {
        if let SaveData::Raw { bytes, .. } = &entries[i].1 {
            out.write_all(bytes)?;
            continue;
        }
        chunk.clear();
        match &entries[i].1 {
            SaveData::Float(t, Dtype::F32) => t.to_vec().iter().for_each(|v| chunk.extend_from_slice(&v.to_le_bytes())),
            SaveData::Float(t, Dtype::F16) => {
                t.to_f16_vec().iter().for_each(|v| chunk.extend_from_slice(&v.to_le_bytes()))
            }
            SaveData::Float(t, _) => t.to_bf16_vec().iter().for_each(|v| chunk.extend_from_slice(&v.to_le_bytes())),
            SaveData::I64 { values, .. } => values.iter().for_each(|v| chunk.extend_from_slice(&v.to_le_bytes())),
            SaveData::Raw { .. } => unreachable!("written above"),
        }
        out.write_all(&chunk)?;
    }
    Ok(())
}

/// Writes a safetensors file atomically (temporary file, fsync, rename).
pub fn save(
    path: impl AsRef<Path>,
    entries: &[(&str, SaveData<'_>)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    validate_entries(entries).map_err(|e| match e {
        TensorError::Format { tensor, msg, .. } => {
            TensorError::Format { file: path.display().to_string(), tensor, msg }
        }
        other => other,
    })?;
    super::write_atomically(path, |w| write_to(w, entries, metadata))
}

/// Convenience: saves named f32 tensors as F32 with metadata.
pub fn save_f32(
    path: impl AsRef<Path>,
    tensors: &[(&str, &Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let entries: Vec<(&str, SaveData)> = tensors.iter().map(|(n, t)| (*n, SaveData::Float(t, Dtype::F32))).collect();
    save(path, &entries, metadata)
}
