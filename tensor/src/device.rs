//! Where a tensor's elements live: host memory (`Cpu`) or a GPU's memory (`Gpu(adapter)`).
//!
//! Every tensor has one device, fixed for its lifetime. Ops run on the device of their operands
//! and return tensors on it; operands on different devices are an error that names both.
//! Moving data is always explicit ([`Tensor::to_device`], [`Tensor::to_cpu`]): no op reads a
//! GPU tensor back behind the caller's back.
//!
//! The GPU device exists when the crate is built with the `wgpu` feature; without it,
//! `Device::Gpu` still parses (so a command line can name it) and asking for it is an error
//! that says how to build with it.
//!
//! ```
//! use tensor::{Device, Tensor};
//! let x = Tensor::from_vec(vec![1.0, 2.0, 3.0], &[3])?;
//! assert_eq!(x.device(), Device::Cpu);
//! assert_eq!("gpu:1".parse::<Device>().unwrap(), Device::Gpu(1));
//! // On a machine with a GPU and the `wgpu` feature:
//! // let y = x.to_device(Device::Gpu(0))?.exp().to_cpu()?;
//! # Ok::<(), tensor::TensorError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use crate::error::{Result, TensorError};
use crate::tensor::Tensor;

/// A tensor's device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory, the CPU kernels.
    #[default]
    Cpu,
    /// The GPU adapter with this index (as `align devices` lists them), WGSL kernels via wgpu.
    Gpu(usize),
}

impl Device {
    pub fn is_gpu(self) -> bool {
        matches!(self, Device::Gpu(_))
    }

    /// Opens the device (a GPU's context on first use) or says why it cannot be used.
    pub fn check_available(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            #[cfg(feature = "wgpu")]
            Device::Gpu(i) => {
                kernels::gpu::gpu(i).map(|_| ()).map_err(|e| TensorError::device("device", e.to_string()))
            }
            #[cfg(not(feature = "wgpu"))]
            Device::Gpu(_) => Err(not_built()),
        }
    }
}

/// The error for a GPU request in a build without the `wgpu` feature.
#[cfg(not(feature = "wgpu"))]
pub(crate) fn not_built() -> TensorError {
    TensorError::device(
        "device",
        "this build has no GPU support: rebuild with `--features wgpu` (e.g. cargo run --release -p align --features wgpu -- ...)",
    )
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Gpu(i) => write!(f, "gpu:{i}"),
        }
    }
}

impl FromStr for Device {
    type Err = String;

    /// `cpu`, `gpu` (adapter 0) or `gpu:N`.
    fn from_str(s: &str) -> std::result::Result<Device, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu(0)),
            other => other
                .strip_prefix("gpu:")
                .and_then(|n| n.parse().ok())
                .map(Device::Gpu)
                .ok_or_else(|| format!("unknown device '{s}': expected cpu, gpu or gpu:N")),
        }
    }
}

/// The one device of a group of operands, or an error naming the two that differ.
pub fn same_device(op: &'static str, tensors: &[&Tensor]) -> Result<Device> {
    let first = tensors.first().map_or(Device::Cpu, |t| t.device());
    for t in tensors {
        if t.device() != first {
            return Err(TensorError::device(
                op,
                format!("operands on {first} and {}: move one with to_device", t.device()),
            ));
        }
    }
    Ok(first)
}

impl Tensor {
    /// Where this tensor's elements live.
    pub fn device(&self) -> Device {
        self.storage().device()
    }

    /// This tensor on `device`: itself (a cheap clone) when already there, otherwise a copy
    /// (host to GPU, GPU to host). The result is contiguous.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if self.device() == device {
            return Ok(self.clone());
        }
        match device {
            Device::Cpu => self.to_cpu(),
            #[cfg(feature = "wgpu")]
            Device::Gpu(i) => {
                let host = self.to_cpu()?.contiguous();
                let gpu = kernels::gpu::gpu(i).map_err(|e| TensorError::device("to_device", e.to_string()))?;
                let data = host.as_contiguous_slice().expect("to_cpu gives a contiguous tensor");
                let buffer = gpu.upload(data).map_err(|e| TensorError::device("to_device", e.to_string()))?;
                Ok(crate::gpu::from_buffer(buffer, self.shape()))
            }
            #[cfg(not(feature = "wgpu"))]
            Device::Gpu(_) => Err(not_built()),
        }
    }

    /// This tensor in host memory (reads a GPU tensor back; waits for the GPU).
    pub fn to_cpu(&self) -> Result<Tensor> {
        match self.device() {
            Device::Cpu => Ok(self.clone()),
            #[cfg(feature = "wgpu")]
            Device::Gpu(_) => {
                let c = crate::gpu::contiguous(self)?;
                let buffer = c.storage().gpu_buffer().expect("a GPU tensor has a GPU buffer");
                let data = buffer
                    .gpu()
                    .read(buffer, c.layout().offset, c.numel())
                    .map_err(|e| TensorError::device("to_cpu", e.to_string()))?;
                Tensor::from_vec(data, self.shape())
            }
            #[cfg(not(feature = "wgpu"))]
            Device::Gpu(_) => unreachable!("no GPU tensors exist without the wgpu feature"),
        }
    }

    /// Fails with an error naming `op` when this tensor is not in host memory: for ops that
    /// exist only on the CPU.
    pub fn require_cpu(&self, op: &'static str) -> Result<()> {
        match self.device() {
            Device::Cpu => Ok(()),
            d => Err(TensorError::device(
                op,
                format!("runs on the CPU only, and this tensor is on {d}: move it with to_cpu"),
            )),
        }
    }

    /// A tensor of `value`s on `device`.
    pub fn full_on(shape: &[usize], value: f32, device: Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Ok(Tensor::full(shape, value)),
            #[cfg(feature = "wgpu")]
            Device::Gpu(i) => crate::gpu::full(shape, value, i),
            #[cfg(not(feature = "wgpu"))]
            Device::Gpu(_) => Err(not_built()),
        }
    }

    pub fn zeros_on(shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::full_on(shape, 0.0, device)
    }
}
