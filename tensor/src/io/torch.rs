//! PyTorch checkpoint files (`torch.save` of a state dict) read without Python.
//!
//! Two containers exist:
//! - zip (PyTorch >= 1.6): `<root>/data.pkl` holds the pickled object; tensor storages are the
//!   entries `<root>/data/<key>`, raw little-endian values;
//! - legacy: a stream of pickles (magic number, protocol version, system info, the object, the
//!   list of storage keys) followed by each storage as an i64 element count and raw values.
//!
//! The pickled object is interpreted by a minimal unpickler that knows the opcodes `torch.save`
//! emits (protocols 2 to 4) and three callables: `torch._utils._rebuild_tensor_v2`,
//! `collections.OrderedDict` and the storage types (`torch.FloatStorage`, ...). Anything else
//! is an error naming the opcode or the global: this reads state dicts of tensors, nothing more,
//! and it never executes code from the file.

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

/// Reads a `.pt` / `.pth` state dict (either container) into named f32 tensors, in file order.
pub fn load_state_dict(path: impl AsRef<Path>) -> Result<NamedTensors> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TensorError::Io { path: path.to_path_buf(), source })?;
    if bytes.starts_with(b"PK") {
        load_zip(&bytes, &file)
    } else {
        load_legacy(&bytes, &file)
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
    let mut read_entry = |name: &str| -> Result<Vec<u8>> {
        let mut e = archive.by_name(name).map_err(|e| err(file, format!("zip entry {name}: {e}")))?;
        let mut v = Vec::new();
        e.read_to_end(&mut v).map_err(|e| err(file, format!("zip entry {name}: {e}")))?;
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
        let data = bytes
            .get(pos..pos + len)
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
        let numel: usize = size.iter().product();
        let reach =
            if numel == 0 { 0 } else { offset + size.iter().zip(&stride).map(|(n, s)| (n - 1) * s).sum::<usize>() + 1 };
        if reach > numel_storage {
            return Err(tensor_err(format!("view reaches element {reach} of a storage of {numel_storage}")));
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

/// The minimal unpickler.
struct Unpickler<'a> {
    data: &'a [u8],
    file: &'a str,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], file: &'a str) -> Self {
        Unpickler { data, file, stack: Vec::new(), memo: HashMap::new() }
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

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| self.e("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| self.e("no mark"))?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }

    fn str(&self, b: &[u8]) -> Result<Value> {
        Ok(Value::Str(std::str::from_utf8(b).map_err(|_| self.e("string is not UTF-8"))?.to_string()))
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
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8(pos)? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'M' => {
                    let v = self.u16(pos)? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'J' => {
                    let v = self.u32(pos)? as i32 as i64;
                    self.stack.push(Value::Int(v))
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
                    self.stack.push(Value::Int(v.clamp(i64::MIN as i128, i64::MAX as i128) as i64))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(pos, 8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v))
                }
                b'X' => {
                    let n = self.u32(pos)? as usize;
                    let s = self.take(pos, n)?;
                    let v = self.str(s)?;
                    self.stack.push(v)
                }
                0x8c => {
                    let n = self.u8(pos)? as usize;
                    let s = self.take(pos, n)?;
                    let v = self.str(s)?;
                    self.stack.push(v)
                }
                b'U' => {
                    let n = self.u8(pos)? as usize;
                    let s = self.take(pos, n)?;
                    self.stack.push(Value::Str(String::from_utf8_lossy(s).into_owned()))
                }
                b'T' => {
                    let n = self.u32(pos)? as usize;
                    let s = self.take(pos, n)?;
                    self.stack.push(Value::Str(String::from_utf8_lossy(s).into_owned()))
                }
                b'C' => {
                    let n = self.u8(pos)? as usize;
                    let s = self.take(pos, n)?.to_vec();
                    self.stack.push(Value::Bytes(s))
                }
                b'B' => {
                    let n = self.u32(pos)? as usize;
                    let s = self.take(pos, n)?.to_vec();
                    self.stack.push(Value::Bytes(s))
                }
                b')' => self.stack.push(Value::Tuple(vec![])),
                b']' => self.stack.push(Value::List(vec![])),
                b'}' => self.stack.push(Value::Dict(vec![])),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let kv = items.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())).collect();
                    self.stack.push(Value::Dict(kv))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.e("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b'q' => {
                    let k = self.u8(pos)? as u32;
                    let top = self.stack.last().cloned().ok_or_else(|| self.e("memo of empty stack"))?;
                    self.memo.insert(k, top);
                }
                b'r' => {
                    let k = self.u32(pos)?;
                    let top = self.stack.last().cloned().ok_or_else(|| self.e("memo of empty stack"))?;
                    self.memo.insert(k, top);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    let top = self.stack.last().cloned().ok_or_else(|| self.e("memo of empty stack"))?;
                    self.memo.insert(k, top);
                }
                b'h' => {
                    let k = self.u8(pos)? as u32;
                    let v = self.memo.get(&k).cloned().ok_or_else(|| self.e(format!("memo {k} missing")))?;
                    self.stack.push(v)
                }
                b'j' => {
                    let k = self.u32(pos)?;
                    let v = self.memo.get(&k).cloned().ok_or_else(|| self.e(format!("memo {k} missing")))?;
                    self.stack.push(v)
                }
                b'c' => {
                    let module = self.line(pos)?;
                    let name = self.line(pos)?;
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err(self.e("STACK_GLOBAL of non-strings")),
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.stack.last_mut() {
                        Some(Value::List(l)) => l.push(v),
                        _ => return Err(self.e("APPEND to a non-list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.stack.last_mut() {
                        Some(Value::List(l)) => l.extend(items),
                        _ => return Err(self.e("APPENDS to a non-list")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.stack.last_mut() {
                        Some(Value::Dict(d)) => d.push((k, v)),
                        _ => return Err(self.e("SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    match self.stack.last_mut() {
                        Some(Value::Dict(d)) => {
                            d.extend(items.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())))
                        }
                        _ => return Err(self.e("SETITEMS on a non-dict")),
                    }
                }
                b'Q' => {
                    // BINPERSID: ('storage', storage_type, key, location, numel[, view_metadata])
                    let pid = self.pop()?;
                    let Value::Tuple(t) = pid else { return Err(self.e("persistent id is not a tuple")) };
                    match t.as_slice() {
                        [Value::Str(kind), Value::Global(_, dtype), Value::Str(key), _, numel, ..]
                            if kind == "storage" =>
                        {
                            let n = if let Value::Int(n) = numel { *n as usize } else { 0 };
                            self.stack.push(Value::Storage(dtype.clone(), key.clone(), n));
                        }
                        _ => return Err(self.e("unsupported persistent id")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.stack.push(v)
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
