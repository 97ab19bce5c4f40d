//! PyTorch checkpoint files (`torch.save` of a state dict) read without Python.
//!
//! Two containers exist:
//! - zip (PyTorch >= 1.6): `<root>/data.pkl` holds the pickled object; tensor storages are the
//!   entries `<root>/data/<key>`, raw little-endian values;
//! - legacy: a stream of pickles (magic number, protocol version, system info, the object, the
//!   list of storage keys) followed by each storage as an i64 element count and raw values.
//!
//! The pickled object is interpreted by a minimal unpickler that knows the opcodes `torch.save`
//! emits (protocols 2 to 4) and only the globals of [`ALLOWED_GLOBALS`] (the tensor rebuilders,
//! `collections.OrderedDict` and the storage types). Any other global is refused the moment the
//! pickle names it, and nothing is ever imported or called: this reads state dicts of tensors,
//! nothing more, and it never executes code from the file.
//!
//! Hostile files are bounded before anything is allocated for them: the unpickler's stack, memo
//! and nesting depth, the values a pickle may copy out of its memo (a pickle can double a list
//! with a few bytes, a "billion laughs"), zip entries that inflate far past the file's size, and
//! tensors whose views hold more elements than their storage. Each limit is named in its error.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::error::{Result, TensorError};
use crate::tensor::Tensor;

/// A tensor read from a checkpoint: its values (as f32) and shape. Integer tensors (such as
/// `num_batches_tracked`) are converted too.
pub type NamedTensors = Vec<(String, Tensor)>;

#[derive(Clone, Debug)]
#[allow(dead_code)] // payloads kept for debugging output; only some are interpreted
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// A storage reference from a persistent id: (dtype name, key, element count).
    Storage(String, String, usize),
    Tensor {
        storage: Box<Value>,
        offset: usize,
        size: Vec<usize>,
        stride: Vec<usize>,
    },
    Mark,
}

fn err(file: &str, msg: impl Into<String>) -> TensorError {
    TensorError::Format { file: file.to_string(), tensor: None, msg: msg.into() }
}

/// The globals a state dict may name, and nothing else: the tensor rebuilders, the ordered
/// dict that holds them and the storage types.
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("collections", "OrderedDict"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
];

/// Limits on what a pickle may make the unpickler hold (named in the errors).
pub const MAX_PICKLE_STACK: usize = 1 << 20;
pub const MAX_PICKLE_MEMO: usize = 1 << 20;
pub const MAX_PICKLE_DEPTH: usize = 256;
/// Values the unpickler may create in all, copies out of the memo included.
pub const MAX_PICKLE_VALUES: usize = 1 << 22;
/// A zip entry may inflate to at most this many times the file's size (plus 1 MiB); torch
/// stores its entries uncompressed, so real files are far below it.
pub const MAX_ZIP_EXPANSION: u64 = 16;

/// Reads a `.pt` / `.pth` state dict (either container) into named f32 tensors, in file order.
pub fn load_state_dict(path: impl AsRef<Path>) -> Result<NamedTensors> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| TensorError::Io { path: path.to_path_buf(), source })?;
    parse_state_dict(&bytes, &path.display().to_string())
}

/// [`load_state_dict`] of bytes in memory; `file` names them in errors.
pub fn parse_state_dict(bytes: &[u8], file: &str) -> Result<NamedTensors> {
    if bytes.starts_with(b"PK") {
        load_zip(bytes, file)
    } else {
        load_legacy(bytes, file)
    }
}

fn load_zip(bytes: &[u8], file: &str) -> Result<NamedTensors> {
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| err(file, format!("bad zip archive: {e}")))?;
    let names: Vec<String> = archive.file_names().map(String::from).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .ok_or_else(|| err(file, "zip archive has no data.pkl"))?
        .clone();
    let root = pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
    let limit = bytes.len() as u64 * MAX_ZIP_EXPANSION + (1 << 20);
    let mut read_entry = |name: &str| -> Result<Vec<u8>> {
        let e = archive.by_name(name).map_err(|e| err(file, format!("zip entry {name}: {e}")))?;
        let mut v = Vec::new();
        // read one byte past the limit to tell "at the limit" from "over it"
        e.take(limit + 1).read_to_end(&mut v).map_err(|e| err(file, format!("zip entry {name}: {e}")))?;
        if v.len() as u64 > limit {
            return Err(err(
                file,
                format!(
                    "zip entry {name} inflates past {limit} bytes ({MAX_ZIP_EXPANSION}x the file: decompression limit)"
                ),
            ));
        }
        Ok(v)
    };
    let pickle = read_entry(&pkl)?;
    let mut pos = 0;
    let obj = Unpickler::new(&pickle, file).run(&mut pos)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    collect_storage_keys(&obj, &mut |key| {
        if !storages.contains_key(key) {
            if let Ok(data) = read_entry(&format!("{root}data/{key}")) {
                storages.insert(key.to_string(), data);
            }
        }
    });
    build_state_dict(obj, &storages, file)
}

fn load_legacy(bytes: &[u8], file: &str) -> Result<NamedTensors> {
    let mut pos = 0;
    let magic = Unpickler::new(bytes, file).run(&mut pos)?;
    if !matches!(magic, Value::Int(_)) {
        return Err(err(file, "not a PyTorch file (no magic number)"));
    }
    let _protocol = Unpickler::new(bytes, file).run(&mut pos)?;
    let _sys_info = Unpickler::new(bytes, file).run(&mut pos)?;
    let obj = Unpickler::new(bytes, file).run(&mut pos)?;
    let keys = match Unpickler::new(bytes, file).run(&mut pos)? {
        Value::List(v) => v,
        _ => return Err(err(file, "storage key list missing")),
    };
    let mut sizes: HashMap<String, usize> = HashMap::new();
    collect_storages(&obj, &mut |dtype, key, _| {
        sizes.insert(key.to_string(), dtype_size(dtype).unwrap_or(4));
    });
    let mut storages = HashMap::new();
    for k in keys {
        let Value::Str(key) = k else { return Err(err(file, "storage key is not a string")) };
        let elem = *sizes.get(&key).ok_or_else(|| err(file, format!("storage {key} is never used")))?;
        let count_bytes =
            bytes.get(pos..pos + 8).ok_or_else(|| err(file, format!("truncated before storage {key}")))?;
        let count = i64::from_le_bytes(count_bytes.try_into().expect("8 bytes"));
        pos += 8;
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(elem))
            .ok_or_else(|| err(file, format!("storage {key}: bad size {count}")))?;
        let data = pos
            .checked_add(len)
            .and_then(|end| bytes.get(pos..end))
            .ok_or_else(|| err(file, format!("storage {key}: {len} bytes run past the end")))?;
        storages.insert(key, data.to_vec());
        pos += len;
    }
    build_state_dict(obj, &storages, file)
}

fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "FloatStorage" | "IntStorage" => 4,
        "DoubleStorage" | "LongStorage" => 8,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "ByteStorage" | "CharStorage" | "BoolStorage" => 1,
        _ => return None,
    })
}

fn collect_storages(v: &Value, f: &mut dyn FnMut(&str, &str, usize)) {
    match v {
        Value::Storage(d, k, n) => f(d, k, *n),
        Value::Tensor { storage, .. } => collect_storages(storage, f),
        Value::Tuple(xs) | Value::List(xs) => xs.iter().for_each(|x| collect_storages(x, f)),
        Value::Dict(kv) => kv.iter().for_each(|(_, x)| collect_storages(x, f)),
        _ => {}
    }
}

fn collect_storage_keys(v: &Value, f: &mut dyn FnMut(&str)) {
    collect_storages(v, &mut |_, k, _| f(k));
}

fn build_state_dict(obj: Value, storages: &HashMap<String, Vec<u8>>, file: &str) -> Result<NamedTensors> {
    let entries = match obj {
        Value::Dict(kv) => kv,
        _ => return Err(err(file, "the file does not hold a dict (a state dict of tensors is expected)")),
    };
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let Value::Str(name) = k else { return Err(err(file, "a state dict key is not a string")) };
        let tensor_err = |msg: String| TensorError::Format { file: file.to_string(), tensor: Some(name.clone()), msg };
        let Value::Tensor { storage, offset, size, stride } = v else {
            return Err(tensor_err("value is not a tensor".into()));
        };
        let Value::Storage(dtype, key, _) = *storage else { return Err(tensor_err("tensor without storage".into())) };
        let raw = storages.get(&key).ok_or_else(|| tensor_err(format!("storage {key} missing")))?;
        let elem = dtype_size(&dtype).ok_or_else(|| tensor_err(format!("unsupported storage type {dtype}")))?;
        let numel_storage = raw.len() / elem;
        let value_at = |i: usize| -> f32 {
            let b = &raw[i * elem..(i + 1) * elem];
            match dtype.as_str() {
                "FloatStorage" => f32::from_le_bytes(b.try_into().unwrap()),
                "DoubleStorage" => f64::from_le_bytes(b.try_into().unwrap()) as f32,
                "HalfStorage" => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                "BFloat16Storage" => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                "LongStorage" => i64::from_le_bytes(b.try_into().unwrap()) as f32,
                "IntStorage" => i32::from_le_bytes(b.try_into().unwrap()) as f32,
                "ShortStorage" => i16::from_le_bytes([b[0], b[1]]) as f32,
                "CharStorage" => b[0] as i8 as f32,
                _ => b[0] as f32,
            }
        };
        if size.len() != stride.len() {
            return Err(tensor_err("size and stride differ in length".into()));
        }
        // element count limit: a view holds at most its storage's elements (overflow included)
        let numel =
            size.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|&n| n <= numel_storage.max(1)).ok_or_else(
                || tensor_err(format!("shape {size:?} holds more elements than its storage's {numel_storage}")),
            )?;
        let reach = if numel == 0 {
            Some(0)
        } else {
            size.iter()
                .zip(&stride)
                .try_fold(offset, |r, (n, s)| (n - 1).checked_mul(*s).and_then(|x| r.checked_add(x)))
                .and_then(|r| r.checked_add(1))
        };
        match reach {
            Some(r) if r <= numel_storage => {}
            _ => {
                return Err(tensor_err(format!(
                    "view {size:?} / {stride:?} + {offset} reaches past a storage of {numel_storage}"
                )))
            }
        }
        // gather through the (size, stride) view in row-major order
        let mut data = Vec::with_capacity(numel);
        let mut idx = vec![0usize; size.len()];
        for _ in 0..numel {
            let off = offset + idx.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
            data.push(value_at(off));
            for d in (0..size.len()).rev() {
                idx[d] += 1;
                if idx[d] < size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out.push((name.clone(), Tensor::from_vec(data, &size).map_err(|e| tensor_err(e.to_string()))?));
    }
    Ok(out)
}

/// A value on the unpickler's stack or in its memo, with what it costs: its nesting depth and
/// how many values it holds (itself included).
#[derive(Clone)]
struct Slot {
    value: Value,
    depth: usize,
    values: usize,
}

impl Slot {
    fn leaf(value: Value) -> Slot {
        Slot { value, depth: 0, values: 1 }
    }
}

/// The minimal unpickler.
struct Unpickler<'a> {
    data: &'a [u8],
    file: &'a str,
    stack: Vec<Slot>,
    memo: HashMap<u32, Slot>,
    /// Values created so far (see [`MAX_PICKLE_VALUES`]).
    created: usize,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], file: &'a str) -> Self {
        Unpickler { data, file, stack: Vec::new(), memo: HashMap::new(), created: 0 }
    }

    fn e(&self, msg: impl Into<String>) -> TensorError {
        err(self.file, format!("pickle: {}", msg.into()))
    }

    fn take<'b>(&self, pos: &mut usize, n: usize) -> Result<&'b [u8]>
    where
        'a: 'b,
    {
        let end = pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| self.e("truncated"))?;
        let s = &self.data[*pos..end];
        *pos = end;
        Ok(s)
    }

    fn u8(&self, pos: &mut usize) -> Result<u8> {
        Ok(self.take(pos, 1)?[0])
    }
    fn u16(&self, pos: &mut usize) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(pos, 2)?.try_into().unwrap()))
    }
    fn u32(&self, pos: &mut usize) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(pos, 4)?.try_into().unwrap()))
    }
    fn line(&self, pos: &mut usize) -> Result<String> {
        let rest = &self.data[*pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.e("unterminated line"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        *pos += n + 1;
        Ok(s)
    }

    /// Counts `n` new values against [`MAX_PICKLE_VALUES`].
    fn create(&mut self, n: usize) -> Result<()> {
        self.created = self.created.saturating_add(n);
        if self.created > MAX_PICKLE_VALUES {
            return Err(self.e(format!("more than {MAX_PICKLE_VALUES} values (value limit)")));
        }
        Ok(())
    }

    fn push_slot(&mut self, slot: Slot) -> Result<()> {
        if self.stack.len() >= MAX_PICKLE_STACK {
            return Err(self.e(format!("stack deeper than {MAX_PICKLE_STACK} (stack limit)")));
        }
        self.stack.push(slot);
        Ok(())
    }

    fn push(&mut self, value: Value) -> Result<()> {
        self.create(1)?;
        self.push_slot(Slot::leaf(value))
    }

    /// A container of `children`, checked against the depth limit.
    fn container(&mut self, children: &[Slot], make: impl FnOnce(Vec<Value>) -> Value) -> Result<Slot> {
        let depth = 1 + children.iter().map(|c| c.depth).max().unwrap_or(0);
        if depth > MAX_PICKLE_DEPTH {
            return Err(self.e(format!("values nested deeper than {MAX_PICKLE_DEPTH} (nesting limit)")));
        }
        let values = 1 + children.iter().map(|c| c.values).sum::<usize>();
        self.create(1)?;
        Ok(Slot { value: make(children.iter().map(|c| c.value.clone()).collect()), depth, values })
    }

    /// Adds `items` to the container on top of the stack (APPEND(S), SETITEM(S)).
    fn extend_top(&mut self, items: Vec<Slot>, what: &str) -> Result<()> {
        let depth = 1 + items.iter().map(|c| c.depth).max().unwrap_or(0);
        if depth > MAX_PICKLE_DEPTH {
            return Err(self.e(format!("values nested deeper than {MAX_PICKLE_DEPTH} (nesting limit)")));
        }
        let Some(top) = self.stack.last_mut() else { return Err(self.e(format!("{what} on an empty stack"))) };
        top.depth = top.depth.max(depth);
        top.values = top.values.saturating_add(items.iter().map(|c| c.values).sum::<usize>());
        let values: Vec<Value> = items.into_iter().map(|c| c.value).collect();
        match (&mut top.value, what) {
            (Value::List(l), "APPEND" | "APPENDS") => l.extend(values),
            (Value::Dict(d), "SETITEM" | "SETITEMS") => {
                let mut it = values.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
            }
            _ => {
                return Err(
                    self.e(format!("{what} on a {}", if what.starts_with("SET") { "non-dict" } else { "non-list" }))
                )
            }
        }
        Ok(())
    }

    fn pop(&mut self) -> Result<Slot> {
        self.stack.pop().ok_or_else(|| self.e("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Slot>> {
        let m = self.stack.iter().rposition(|v| matches!(v.value, Value::Mark)).ok_or_else(|| self.e("no mark"))?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }

    fn str(&self, b: &[u8]) -> Result<Value> {
        Ok(Value::Str(std::str::from_utf8(b).map_err(|_| self.e("string is not UTF-8"))?.to_string()))
    }

    /// Stores the top of the stack in the memo (a copy, counted against the value limit).
    fn memo_put(&mut self, k: u32) -> Result<()> {
        let top = self.stack.last().cloned().ok_or_else(|| self.e("memo of empty stack"))?;
        if self.memo.len() >= MAX_PICKLE_MEMO && !self.memo.contains_key(&k) {
            return Err(self.e(format!("more than {MAX_PICKLE_MEMO} memo entries (memo limit)")));
        }
        self.create(top.values)?;
        self.memo.insert(k, top);
        Ok(())
    }

    fn memo_get(&mut self, k: u32) -> Result<()> {
        let v = self.memo.get(&k).cloned().ok_or_else(|| self.e(format!("memo {k} missing")))?;
        self.create(v.values)?;
        self.push_slot(v)
    }

    /// A global the pickle names: refused unless it is in [`ALLOWED_GLOBALS`].
    fn global(&mut self, module: String, name: String) -> Result<()> {
        if !ALLOWED_GLOBALS.iter().any(|&(m, n)| m == module && n == name) {
            return Err(self.e(format!(
                "refusing global {module}.{name}: a state dict names only tensor rebuilders, OrderedDict and storage types"
            )));
        }
        self.push(Value::Global(module, name))
    }

    /// Runs until STOP and returns the value on top of the stack.
    fn run(mut self, pos: &mut usize) -> Result<Value> {
        loop {
            let op = self.u8(pos)?;
            match op {
                0x80 => {
                    self.u8(pos)?; // PROTO
                }
                0x95 => {
                    self.take(pos, 8)?; // FRAME
                }
                b'.' => return Ok(self.pop()?.value),
                b'(' => self.push(Value::Mark)?,
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'K' => {
                    let v = self.u8(pos)? as i64;
                    self.push(Value::Int(v))?
                }
                b'M' => {
                    let v = self.u16(pos)? as i64;
                    self.push(Value::Int(v))?
                }
                b'J' => {
                    let v = self.u32(pos)? as i32 as i64;
                    self.push(Value::Int(v))?
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes
                    let n = self.u8(pos)? as usize;
                    let b = self.take(pos, n)?;
                    let mut v: i128 = 0;
                    for (i, &x) in b.iter().enumerate().take(16) {
                        v |= (x as i128) << (8 * i);
                    }
                    if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    self.push(Value::Int(v.clamp(i64::MIN as i128, i64::MAX as i128) as i64))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(pos, 8)?.try_into().unwrap());
                    self.push(Value::Float(v))?
                }
                b'X' => {
                    let n = self.u32(pos)? as usize;
                    let s = self.take(pos, n)?;
                    let v = self.str(s)?;
                    self.push(v)?
                }
                0x8c => {
                    let n = self.u8(pos)? as usize;
                    let s = self.take(pos, n)?;
                    let v = self.str(s)?;
                    self.push(v)?
                }
                b'U' => {
                    let n = self.u8(pos)? as usize;
                    let s = self.take(pos, n)?;
                    self.push(Value::Str(String::from_utf8_lossy(s).into_owned()))?
                }
                b'T' => {
                    let n = self.u32(pos)? as usize;
                    let s = self.take(pos, n)?;
                    self.push(Value::Str(String::from_utf8_lossy(s).into_owned()))?
                }
                b'C' => {
                    let n = self.u8(pos)? as usize;
                    let s = self.take(pos, n)?.to_vec();
                    self.push(Value::Bytes(s))?
                }
                b'B' => {
                    let n = self.u32(pos)? as usize;
                    let s = self.take(pos, n)?.to_vec();
                    self.push(Value::Bytes(s))?
                }
                b')' => self.push(Value::Tuple(vec![]))?,
                b']' => self.push(Value::List(vec![]))?,
                b'}' => self.push(Value::Dict(vec![]))?,
                b't' | b'l' | b'd' => {
                    let items = self.pop_mark()?;
                    let slot = self.container(&items, |v| match op {
                        b't' => Value::Tuple(v),
                        b'l' => Value::List(v),
                        _ => Value::Dict(
                            v.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())).collect(),
                        ),
                    })?;
                    self.push_slot(slot)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.e("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    let slot = self.container(&items, Value::Tuple)?;
                    self.push_slot(slot)?
                }
                b'q' => {
                    let k = self.u8(pos)? as u32;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32(pos)?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8(pos)? as u32;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.u32(pos)?;
                    self.memo_get(k)?
                }
                b'c' => {
                    let module = self.line(pos)?;
                    let name = self.line(pos)?;
                    self.global(module, name)?
                }
                0x93 => {
                    let name = self.pop()?.value;
                    let module = self.pop()?.value;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.global(m, n)?,
                        _ => return Err(self.e("STACK_GLOBAL of non-strings")),
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top(vec![v], "APPEND")?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, "APPENDS")?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_top(vec![k, v], "SETITEM")?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, "SETITEMS")?
                }
                b'Q' => {
                    // BINPERSID: ('storage', storage_type, key, location, numel[, view_metadata])
                    let pid = self.pop()?.value;
                    let Value::Tuple(t) = pid else { return Err(self.e("persistent id is not a tuple")) };
                    match t.as_slice() {
                        [Value::Str(kind), Value::Global(_, dtype), Value::Str(key), _, numel, ..]
                            if kind == "storage" =>
                        {
                            let n = if let Value::Int(n) = numel { (*n).max(0) as usize } else { 0 };
                            self.push(Value::Storage(dtype.clone(), key.clone(), n))?;
                        }
                        _ => return Err(self.e("unsupported persistent id")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let depth = args.depth + 1;
                    let values = args.values + 1;
                    let v = self.call(callable.value, args.value)?;
                    self.create(1)?;
                    self.push_slot(Slot { value: v, depth, values })?
                }
                b'b' => {
                    // BUILD: state for the object below; dicts (OrderedDict metadata) are ignored.
                    self.pop()?;
                }
                other => return Err(self.e(format!("unsupported opcode 0x{other:02x}"))),
            }
        }
    }

    fn call(&self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(module, name) = callable else { return Err(self.e("call of a non-global")) };
        let args = match args {
            Value::Tuple(a) => a,
            _ => return Err(self.e("call arguments are not a tuple")),
        };
        let ints = |v: &Value| -> Result<Vec<usize>> {
            match v {
                Value::Tuple(xs) | Value::List(xs) => xs
                    .iter()
                    .map(|x| {
                        if let Value::Int(i) = x {
                            usize::try_from(*i).map_err(|_| self.e("negative size"))
                        } else {
                            Err(self.e("size is not an int"))
                        }
                    })
                    .collect(),
                _ => Err(self.e("size is not a tuple")),
            }
        };
        match (module.as_str(), name.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                if args.len() < 4 {
                    return Err(self.e("_rebuild_tensor_v2 needs 4 arguments"));
                }
                let Value::Int(offset) = args[1] else { return Err(self.e("storage offset is not an int")) };
                Ok(Value::Tensor {
                    storage: Box::new(args[0].clone()),
                    offset: offset.max(0) as usize,
                    size: ints(&args[2])?,
                    stride: ints(&args[3])?,
                })
            }
            ("collections", "OrderedDict") => Ok(Value::Dict(vec![])),
            ("torch._utils", "_rebuild_parameter") => args.into_iter().next().ok_or_else(|| self.e("empty parameter")),
            _ => Err(self.e(format!("refusing to call {module}.{name}: only tensors and dicts are supported"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pickle: &[u8]) -> String {
        Unpickler::new(pickle, "test.pkl").run(&mut 0).map(|v| format!("{v:?}")).unwrap_or_else(|e| e.to_string())
    }

    /// Every global outside the whitelist is refused where the pickle names it, by GLOBAL and by
    /// STACK_GLOBAL, before anything could call it.
    #[test]
    fn each_global_outside_the_whitelist_is_refused_by_name() {
        for (module, name) in [
            ("posix", "system"),
            ("nt", "system"),
            ("os", "system"),
            ("subprocess", "Popen"),
            ("builtins", "eval"),
            ("builtins", "exec"),
            ("builtins", "getattr"),
            ("__builtin__", "eval"),
            ("torch", "load"),
            ("torch._utils", "_rebuild_device_tensor_from_numpy"),
            ("torch.nn.modules.linear", "Linear"),
            ("collections", "defaultdict"),
        ] {
            // GLOBAL module\nname\n, then REDUCE with ('echo pwned',)
            let mut p = vec![0x80, 2];
            p.extend(format!("c{module}\n{name}\n").into_bytes());
            p.extend(b"X\x0a\x00\x00\x00echo pwned\x85R.");
            let e = parse(&p);
            assert!(e.contains(&format!("refusing global {module}.{name}")), "{module}.{name}: {e}");
            // STACK_GLOBAL of two short strings
            let mut p = vec![0x80, 4, 0x8c, module.len() as u8];
            p.extend(module.as_bytes());
            p.extend([0x8c, name.len() as u8]);
            p.extend(name.as_bytes());
            p.extend([0x93, b'.']);
            let e = parse(&p);
            assert!(e.contains(&format!("refusing global {module}.{name}")), "{module}.{name}: {e}");
        }
        // the whitelist itself parses
        for (module, name) in ALLOWED_GLOBALS {
            let mut p = vec![0x80, 2];
            p.extend(format!("c{module}\n{name}\n.").into_bytes());
            let e = parse(&p);
            assert!(e.contains("Global"), "{module}.{name}: {e}");
        }
    }

    #[test]
    fn pickles_that_explode_are_stopped_at_a_named_limit() {
        // "billion laughs": a list put in the memo, then doubled by two memo gets, 64 times
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..64 {
            p.extend([b'(', b'h', 0, b'h', 0, b'l', b'q', 0]);
        }
        p.push(b'.');
        let e = parse(&p);
        assert!(e.contains("value limit"), "{e}");
        // lists nested 100,000 deep (dropping such a value recursively would overflow the stack)
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', 100_000));
        p.extend(std::iter::repeat_n(b'a', 99_999));
        p.push(b'.');
        let e = parse(&p);
        assert!(e.contains("nesting limit"), "{e}");
        // a million marks fill the stack
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b'(', MAX_PICKLE_STACK + 1));
        let e = parse(&p);
        assert!(e.contains("stack limit"), "{e}");
    }

    #[test]
    fn views_larger_than_their_storage_are_refused_before_allocation() {
        let storage = HashMap::from([("0".to_string(), vec![0u8; 16])]);
        let tensor = |size: Vec<usize>, stride: Vec<usize>| Value::Tensor {
            storage: Box::new(Value::Storage("FloatStorage".into(), "0".into(), 4)),
            offset: 0,
            size,
            stride,
        };
        let dict = |t: Value| Value::Dict(vec![(Value::Str("w".into()), t)]);
        // a 10^12-element view of a 4-element storage through stride 0
        let e = build_state_dict(dict(tensor(vec![1_000_000, 1_000_000], vec![0, 0])), &storage, "f").unwrap_err();
        assert!(e.to_string().contains("more elements than its storage"), "{e}");
        // sizes whose product overflows
        let e = build_state_dict(dict(tensor(vec![usize::MAX, 3], vec![1, 1])), &storage, "f").unwrap_err();
        assert!(e.to_string().contains("more elements than its storage"), "{e}");
        // a stride that reaches past the end, and one whose reach overflows
        let e = build_state_dict(dict(tensor(vec![2, 2], vec![3, 1])), &storage, "f").unwrap_err();
        assert!(e.to_string().contains("reaches past"), "{e}");
        let e = build_state_dict(dict(tensor(vec![2], vec![usize::MAX])), &storage, "f").unwrap_err();
        assert!(e.to_string().contains("reaches past"), "{e}");
        // and a legal transposed view reads back
        let ok = build_state_dict(dict(tensor(vec![2, 2], vec![1, 2])), &storage, "f").unwrap();
        assert_eq!(ok[0].1.shape(), &[2, 2]);
    }
}
