//! `align demo`: a short tour of what the engine's crates already do, with no download.
//! Prints tensor views, broadcasting, reductions and a matrix product, then writes a
//! safetensors checkpoint atomically and reads it back through a memory map.

use std::collections::BTreeMap;
use std::path::Path;

use tensor::io::safetensors::{save, Dtype, SafeTensors, SaveData};
use tensor::{Result, Tensor};

pub fn run(out_dir: &Path) -> Result<()> {
    println!("== tensors: shared storage + strided layout ==");
    let x = Tensor::arange(0.0, 12.0, 1.0)?.reshape(&[3, 4])?; // (3, 4)
    println!("x            = {x}");
    let xt = x.t()?; // (4, 3) view: strides swapped, no copy
    println!("x.t()        = {xt:?}");
    println!("shares data  = {}", xt.shares_storage_with(&x));
    let bias = Tensor::from_vec(vec![100.0, 200.0, 300.0, 400.0], &[4])?; // (4,) broadcasts over rows
    println!("x + bias     = {}", x.add(&bias)?);
    println!("x.sum(axis1) = {}", x.sum(&[1], false)?);
    println!("x.max(axis0) = {}", x.max(&[0], false)?);
    let (top, idx) = x.topk(2, 1, true)?;
    println!("top-2/row    = {top}  at {idx}");
    let w = Tensor::randn(&[4, 2], 0.0, 1.0, 0); // (4, 2), seeded
    println!("x @ w        = {}", x.matmul(&w)?);

    println!("\n== checkpoint I/O: safetensors, atomic write, memory-mapped read ==");
    std::fs::create_dir_all(out_dir).map_err(|source| tensor::TensorError::Io { path: out_dir.into(), source })?;
    let path = out_dir.join("demo.safetensors");
    let mut meta = BTreeMap::new();
    meta.insert("created_by".to_string(), "align demo".to_string());
    save(&path, &[("x", SaveData::Float(&x, Dtype::F32)), ("w.bf16", SaveData::Float(&w, Dtype::BF16))], &meta)?;
    let st = SafeTensors::open(&path)?;
    println!("wrote {} ({} tensors, metadata {:?})", path.display(), st.len(), st.metadata());
    for name in st.names() {
        let t = st.tensor(name)?;
        let info = st.info(name).expect("listed");
        println!("  {name:8} {:5} {:?} zero-copy={} -> {t}", info.dtype.name(), info.shape, t.storage().is_mapped());
    }
    Ok(())
}
