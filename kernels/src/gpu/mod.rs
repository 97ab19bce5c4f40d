//! GPU kernels: WGSL compute shaders run through wgpu (Vulkan, Metal or DX12), behind the
//! `wgpu` cargo feature.
//!
//! The CPU kernels in this crate take slices; these take [`GpuBuffer`]s, which live in device
//! memory and stay there between kernels: nothing is read back unless a caller asks
//! ([`GpuBuffer::to_vec`]). Each kernel in `ops` has the CPU kernel of the same name as its
//! reference, and the tests compare the two on odd shapes.
//!
//! How work reaches the GPU:
//! - **One context per adapter** ([`Gpu`]), opened with the adapter's real limits (WebGPU's
//!   defaults would cap a storage binding at 128 MiB even on a card that allows more).
//! - **Pipelines are compiled once** (on first use) and cached by shader and entry point.
//! - **Buffers come from a pool** keyed by byte size: a training step allocates the same sizes
//!   every step, so after the first step no device allocation happens ([`PoolStats`]).
//! - **Dispatches are recorded, not submitted one by one**: each kernel appends a compute pass to
//!   the open command encoder, which is submitted when a read-back or upload needs the queue, or
//!   every [`MAX_PENDING_DISPATCHES`]. Queue order is program order, so a pooled buffer can be
//!   handed to the next kernel as soon as its tensor is dropped, even before the GPU ran the
//!   kernels that used it.
//! - **Deterministic**: no float atomics; every reduction is a fixed tree per workgroup, so a
//!   kernel gives the same bits on the same adapter every run.
//!
//! Parameters (sizes, strides, scalars) go to each shader as a small storage buffer of u32 words
//! at binding 0 (f32 values bit-cast), which avoids uniform-layout padding rules.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

pub mod ops;
#[cfg(test)]
mod tests;

/// Submit the open command encoder after this many recorded dispatches (bounds the memory the
/// driver holds for unsubmitted work while keeping submissions few per training step).
pub const MAX_PENDING_DISPATCHES: usize = 512;

/// Threads per workgroup of the 1-D kernels (elementwise, optimiser updates).
pub(crate) const WORKGROUP: u32 = 256;

/// What went wrong on the GPU path.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuError {
    /// No adapter at this index (the message lists what there is).
    NoAdapter(String),
    /// The adapter refused to open a device.
    Device(String),
    /// A buffer or binding larger than the adapter allows.
    Limit(String),
    /// Bad arguments to a kernel (lengths, shapes).
    Shape(String),
    /// A read-back failed (device lost, mapping error).
    ReadBack(String),
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::NoAdapter(m) => write!(f, "no GPU adapter: {m}"),
            GpuError::Device(m) => write!(f, "GPU device: {m}"),
            GpuError::Limit(m) => write!(f, "GPU limit: {m}"),
            GpuError::Shape(m) => write!(f, "GPU kernel: {m}"),
            GpuError::ReadBack(m) => write!(f, "GPU read-back: {m}"),
        }
    }
}

impl std::error::Error for GpuError {}

pub type Result<T> = std::result::Result<T, GpuError>;

// ---------------------------------------------------------------------------------------------
// Adapters
// ---------------------------------------------------------------------------------------------

/// One adapter as the system reports it, with the limits that matter for compute.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub max_storage_binding_bytes: u64,
    pub max_buffer_bytes: u64,
    pub max_workgroup_storage_bytes: u32,
    pub max_invocations_per_workgroup: u32,
}

fn instance() -> &'static wgpu::Instance {
    static INSTANCE: OnceLock<wgpu::Instance> = OnceLock::new();
    INSTANCE.get_or_init(|| {
        wgpu::Instance::new(&wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12,
            ..Default::default()
        })
    })
}

fn raw_adapters() -> Vec<wgpu::Adapter> {
    // The GL backend is left out: its compute support is partial and it duplicates the Vulkan
    // adapter where both exist.
    instance().enumerate_adapters(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12)
}

/// The adapters wgpu finds, in the order `--adapter N` counts them.
pub fn adapters() -> Vec<AdapterSummary> {
    raw_adapters()
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let (info, limits) = (a.get_info(), a.limits());
            AdapterSummary {
                index,
                name: info.name,
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
                max_storage_binding_bytes: limits.max_storage_buffer_binding_size as u64,
                max_buffer_bytes: limits.max_buffer_size,
                max_workgroup_storage_bytes: limits.max_compute_workgroup_storage_size,
                max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The context
// ---------------------------------------------------------------------------------------------

/// An open GPU device: queue, pipeline cache, buffer pool and the command encoder being recorded.
pub struct Gpu {
    pub index: usize,
    pub name: String,
    pub limits: wgpu::Limits,
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<wgpu::ComputePipeline>>>,
    pool: Mutex<Pool>,
    recorder: Mutex<Recorder>,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gpu:{} ({})", self.index, self.name)
    }
}

struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: usize,
    submissions: u64,
}

/// The context of adapter `index`, opened on first use and shared afterwards.
pub fn gpu(index: usize) -> Result<Arc<Gpu>> {
    static OPEN: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();
    let mut open = OPEN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = open.get(&index) {
        return Ok(g.clone());
    }
    let g = Arc::new(Gpu::open(index)?);
    open.insert(index, g.clone());
    Ok(g)
}

impl Gpu {
    fn open(index: usize) -> Result<Gpu> {
        let mut all = raw_adapters();
        if index >= all.len() {
            let names: Vec<String> =
                adapters().iter().map(|a| format!("{}: {} ({})", a.index, a.name, a.backend)).collect();
            return Err(GpuError::NoAdapter(if names.is_empty() {
                "wgpu found no Vulkan, Metal or DX12 adapter (on Linux without a GPU driver, install \
                 Mesa's software Vulkan: apt-get install mesa-vulkan-drivers libvulkan1)"
                    .to_string()
            } else {
                format!("adapter {index} asked for, but there are only [{}]", names.join(", "))
            }));
        }
        let adapter = all.swap_remove(index);
        let info = adapter.get_info();
        // The adapter's own limits, not WebGPU's portable defaults.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("align"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| GpuError::Device(format!("{} ({:?}): {e}", info.name, info.backend)))?;
        Ok(Gpu {
            index,
            name: info.name,
            limits,
            device,
            queue,
            pipelines: Mutex::new(HashMap::new()),
            pool: Mutex::new(Pool::default()),
            recorder: Mutex::new(Recorder { encoder: None, dispatches: 0, submissions: 0 }),
        })
    }

    /// The largest storage binding in f32 elements.
    pub fn max_binding_elems(&self) -> usize {
        self.limits.max_storage_buffer_binding_size as usize / 4
    }

    fn pipeline(&self, shader: &Shader, entry: &'static str) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry((shader.name, entry))
            .or_insert_with(|| {
                let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.name),
                    source: wgpu::ShaderSource::Wgsl(shader.source.into()),
                });
                Arc::new(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                }))
            })
            .clone()
    }

    /// Records one dispatch of `entry` in `shader` over `groups` workgroups, with `params` at
    /// binding 0 and `buffers` at bindings 1.. (each the whole buffer or an element range).
    pub(crate) fn dispatch(
        &self,
        shader: &Shader,
        entry: &'static str,
        params: &[u32],
        buffers: &[Binding],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        for b in buffers {
            if b.len * 4 > self.limits.max_storage_buffer_binding_size as usize {
                return Err(GpuError::Limit(format!(
                    "{}::{entry} binds {} bytes; this adapter's storage bindings hold at most {}",
                    shader.name,
                    b.len * 4,
                    self.limits.max_storage_buffer_binding_size
                )));
            }
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.0 > max || groups.1 > max || groups.2 > max {
            return Err(GpuError::Limit(format!(
                "{}::{entry}: {groups:?} workgroups, at most {max} per axis",
                shader.name
            )));
        }
        if groups.0 == 0 || groups.1 == 0 || groups.2 == 0 {
            return Ok(());
        }
        let pipeline = self.pipeline(shader, entry);
        let words: Vec<u32> = if params.is_empty() { vec![0] } else { params.to_vec() };
        let param_buffer = wgpu::util::DeviceExt::create_buffer_init(
            &self.device,
            &wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: as_bytes(&words),
                usage: wgpu::BufferUsages::STORAGE,
            },
        );
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: param_buffer.as_entire_binding() }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: (b.offset * 4) as u64,
                    size: wgpu::BufferSize::new((b.len.max(1) * 4) as u64),
                }),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.record(|encoder| {
            let mut pass =
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(entry), timestamp_writes: None });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        });
        Ok(())
    }

    /// Runs `f` on the open encoder (opening one if needed); submits when enough work piled up.
    fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut r = self.recorder.lock().unwrap_or_else(|e| e.into_inner());
        let encoder = r
            .encoder
            .get_or_insert_with(|| self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None }));
        f(encoder);
        r.dispatches += 1;
        if r.dispatches >= MAX_PENDING_DISPATCHES {
            self.submit_locked(&mut r);
        }
    }

    fn submit_locked(&self, r: &mut Recorder) {
        if let Some(encoder) = r.encoder.take() {
            self.queue.submit(Some(encoder.finish()));
            r.dispatches = 0;
            r.submissions += 1;
        }
    }

    /// Submits everything recorded so far (the GPU runs it asynchronously).
    pub fn flush(&self) {
        let mut r = self.recorder.lock().unwrap_or_else(|e| e.into_inner());
        self.submit_locked(&mut r);
    }

    /// Submits and waits until the GPU has finished all of it.
    pub fn synchronize(&self) -> Result<()> {
        self.flush();
        self.device.poll(wgpu::PollType::Wait).map_err(|e| GpuError::ReadBack(e.to_string()))?;
        Ok(())
    }

    /// Command buffers submitted so far (tests check that a step is a few submissions, not one
    /// per kernel).
    pub fn submissions(&self) -> u64 {
        self.recorder.lock().unwrap_or_else(|e| e.into_inner()).submissions
    }

    // -----------------------------------------------------------------------------------------
    // Buffers
    // -----------------------------------------------------------------------------------------

    /// A buffer of `len` f32s with unspecified contents (a pooled buffer of the same size, or a
    /// fresh zeroed one), for kernels that write every element.
    pub fn uninit(self: &Arc<Self>, len: usize) -> Result<GpuBuffer> {
        let bytes = pooled_size(len);
        if bytes > self.limits.max_buffer_size {
            return Err(GpuError::Limit(format!(
                "a buffer of {len} f32s ({bytes} bytes) exceeds this adapter's largest buffer ({} bytes)",
                self.limits.max_buffer_size
            )));
        }
        let reused = self.pool.lock().unwrap_or_else(|e| e.into_inner()).take(bytes);
        let raw = match reused {
            Some(b) => b,
            None => {
                let b = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: bytes,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.pool.lock().unwrap_or_else(|e| e.into_inner()).created(bytes);
                b
            }
        };
        Ok(GpuBuffer { raw: Some(raw), len, gpu: self.clone() })
    }

    /// A buffer of `len` zeros (cleared on the GPU, in queue order).
    pub fn zeros(self: &Arc<Self>, len: usize) -> Result<GpuBuffer> {
        let b = self.uninit(len)?;
        self.record(|encoder| encoder.clear_buffer(b.raw(), 0, None));
        Ok(b)
    }

    /// Copies `data` into a new device buffer.
    pub fn upload(self: &Arc<Self>, data: &[f32]) -> Result<GpuBuffer> {
        let b = self.uninit(data.len())?;
        self.write(&b, 0, data);
        Ok(b)
    }

    /// Copies 32-bit words (indices) into a new device buffer.
    pub fn upload_u32(self: &Arc<Self>, data: &[u32]) -> Result<GpuBuffer> {
        let b = self.uninit(data.len())?;
        self.write_words(&b, 0, data);
        Ok(b)
    }

    /// Overwrites elements `offset..offset + data.len()` of `b`.
    pub fn write(&self, b: &GpuBuffer, offset: usize, data: &[f32]) {
        self.write_words(b, offset, bytemuck_f32(data));
    }

    fn write_words(&self, b: &GpuBuffer, offset: usize, words: &[u32]) {
        if words.is_empty() {
            return;
        }
        // `queue.write_buffer` lands at the start of the *next* submission: submit what is
        // recorded first, so kernels recorded earlier still see the buffer's old contents.
        self.flush();
        self.queue.write_buffer(b.raw(), (offset * 4) as u64, as_bytes(words));
    }

    /// Copies `len` elements from `src[src_offset..]` to `dst[dst_offset..]`, in queue order.
    pub fn copy(&self, src: &GpuBuffer, src_offset: usize, dst: &GpuBuffer, dst_offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        self.record(|encoder| {
            encoder.copy_buffer_to_buffer(
                src.raw(),
                (src_offset * 4) as u64,
                dst.raw(),
                (dst_offset * 4) as u64,
                (len * 4) as u64,
            )
        });
    }

    /// Reads elements `offset..offset + len` of `b` back to the host (submits and waits).
    pub fn read(&self, b: &GpuBuffer, offset: usize, len: usize) -> Result<Vec<f32>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size: (len * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut r = self.recorder.lock().unwrap_or_else(|e| e.into_inner());
            let encoder = r.encoder.get_or_insert_with(|| {
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
            });
            encoder.copy_buffer_to_buffer(b.raw(), (offset * 4) as u64, &staging, 0, (len * 4) as u64);
            self.submit_locked(&mut r);
        }
        let slice = staging.slice(..);
        let (sender, receiver) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
        self.device.poll(wgpu::PollType::Wait).map_err(|e| GpuError::ReadBack(e.to_string()))?;
        receiver
            .recv()
            .map_err(|e| GpuError::ReadBack(e.to_string()))?
            .map_err(|e| GpuError::ReadBack(e.to_string()))?;
        let out = {
            let view = slice.get_mapped_range();
            view.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        staging.unmap();
        Ok(out)
    }

    /// The buffer pool's counters.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).stats
    }

    /// Frees every pooled (unused) buffer.
    pub fn clear_pool(&self) {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

fn as_bytes(words: &[u32]) -> &[u8] {
    // SAFETY: u32 has no padding and any byte pattern is a valid u8; the length is exact.
    unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, std::mem::size_of_val(words)) }
}

fn bytemuck_f32(data: &[f32]) -> &[u32] {
    // SAFETY: f32 and u32 have the same size and alignment; every bit pattern is a valid u32.
    unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u32, data.len()) }
}

/// Pool size class of a buffer of `len` f32s: bytes rounded up to 256 (at least 256), so the
/// element offsets used in bindings stay aligned and near sizes share buffers.
fn pooled_size(len: usize) -> u64 {
    ((len.max(1) * 4).div_ceil(256) * 256) as u64
}

// ---------------------------------------------------------------------------------------------
// Buffer pool
// ---------------------------------------------------------------------------------------------

/// Counters of a device's buffer pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of every buffer created on the device and not yet freed (in use + pooled).
    pub device_bytes: u64,
    /// Bytes of buffers waiting in the pool for reuse.
    pub pooled_bytes: u64,
    /// Buffers created on the device since it was opened.
    pub created: u64,
    /// Requests served from the pool.
    pub reused: u64,
}

#[derive(Default)]
struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    stats: PoolStats,
}

impl Pool {
    fn take(&mut self, bytes: u64) -> Option<wgpu::Buffer> {
        let b = self.free.get_mut(&bytes)?.pop()?;
        self.stats.pooled_bytes -= bytes;
        self.stats.reused += 1;
        Some(b)
    }

    fn created(&mut self, bytes: u64) {
        self.stats.device_bytes += bytes;
        self.stats.created += 1;
    }

    fn give_back(&mut self, b: wgpu::Buffer) {
        let bytes = b.size();
        self.stats.pooled_bytes += bytes;
        self.free.entry(bytes).or_default().push(b);
    }

    fn clear(&mut self) {
        for (_, list) in self.free.drain() {
            for b in list {
                self.stats.device_bytes -= b.size();
                b.destroy();
            }
        }
        self.stats.pooled_bytes = 0;
    }
}

/// `len` f32s in device memory; returns to its device's pool when dropped.
pub struct GpuBuffer {
    raw: Option<wgpu::Buffer>,
    len: usize,
    gpu: Arc<Gpu>,
}

impl fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GpuBuffer({} f32 on {:?})", self.len, self.gpu)
    }
}

impl GpuBuffer {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    fn raw(&self) -> &wgpu::Buffer {
        self.raw.as_ref().expect("a live GpuBuffer holds its buffer until dropped")
    }

    /// The whole buffer as a binding.
    pub(crate) fn all(&self) -> Binding<'_> {
        Binding { buffer: self.raw(), offset: 0, len: self.len }
    }

    /// Elements `offset..offset + len` as a binding (`offset` a multiple of the adapter's
    /// storage offset alignment in elements).
    pub(crate) fn range(&self, offset: usize, len: usize) -> Binding<'_> {
        Binding { buffer: self.raw(), offset, len }
    }

    /// All elements, read back to the host.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.gpu.read(self, 0, self.len)
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            self.gpu.pool.lock().unwrap_or_else(|e| e.into_inner()).give_back(raw);
        }
    }
}

/// A buffer (or an element range of one) bound to a shader.
pub(crate) struct Binding<'a> {
    buffer: &'a wgpu::Buffer,
    offset: usize,
    len: usize,
}

/// A WGSL source with a name for the pipeline cache.
pub(crate) struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// Splits `groups` workgroups into an (x, y) grid within the per-axis limit; shaders rebuild
/// the linear id as `wid.y * nwg.x + wid.x` and bound-check it.
pub(crate) fn grid(gpu: &Gpu, groups: usize) -> (u32, u32, u32) {
    let max = gpu.limits.max_compute_workgroups_per_dimension as usize;
    if groups <= max {
        return (groups as u32, 1, 1);
    }
    let y = groups.div_ceil(max);
    (groups.div_ceil(y) as u32, y as u32, 1)
}
