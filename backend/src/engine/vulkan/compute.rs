// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! COMPARE, CRC32C and SHA-256 as compute shaders.
//!
//! The shaders are GLSL in `shaders/` (`compare.comp`, `crc32c.comp`,
//! `sha256.comp`), each compiled to the SPIR-V next to it (`*.spv`, checked
//! in and embedded here) by `shaders/build.sh` with Debian bookworm's
//! glslang-tools 12.0.0: `glslangValidator -V --target-env vulkan1.1`,
//! without `-g`, writes no path or date, so the bytes are the same on every
//! machine; `build.sh --check` rebuilds them in a temporary directory and
//! fails if any differs from the one checked in.
//!
//! Each job runs a chunk per submission, asking whether it was cancelled
//! before each, as COPY and FILL do (module `transfer`): a chunk's input is
//! copied on the CPU from the job's [`SgList`] into a host-visible buffer of
//! the engine (the same snapshot the software engine hashes from its bounce
//! buffers, so a guest writing meanwhile cannot make the device read two
//! versions of a byte), one dispatch runs, and its result comes back through
//! a small host-visible buffer.
//!
//! - COMPARE ([`COMPUTE_CHUNK`] bytes of each input per chunk): each
//!   invocation compares 1 KiB, a word at a time, and lowers the chunk's
//!   result to the first difference it finds with `atomicMin`, so the
//!   lowest offset wins in any order; the job stops at the first chunk with
//!   a difference. What the spec says of inputs of different lengths (the
//!   shorter's length, or `COMPARE_EQUAL`) is decided here, as
//!   [`crate::ops`] does.
//! - CRC32C ([`COMPUTE_CHUNK`] per chunk), in parallel rather than one
//!   invocation per job: a CRC is linear over GF(2), so each invocation
//!   takes the CRC of its 4 KiB from a zero register (a byte table in
//!   shared memory), shifts it past the bytes that follow it in the chunk
//!   (a multiplication by x^(8n) mod P) and XORs it into the result with
//!   `atomicXor`, whose sum does not depend on the order; invocation 0 adds
//!   the incoming register's term. One invocation per job would leave all
//!   but one lane of the device idle and make a chunk's time that of a
//!   serial loop, which is what bounds cancellation. The register is
//!   carried from chunk to chunk; the seed and the final inversion are the
//!   spec's (§8.4), which `crc32c_append` also follows.
//! - SHA-256 ([`SHA_CHUNK`] per chunk), serial by nature: one invocation
//!   compresses the chunk's 64-byte blocks into a chaining value kept in
//!   device-visible memory between chunks. The host appends the padding
//!   (0x80, zeros, the length in bits, big-endian: FIPS 180-4 §5.1.1) after
//!   the last bytes, so the shader only ever sees whole blocks. Its rounds
//!   are unrolled: lavapipe (Mesa 22.3) ends an invocation after 65535 loop
//!   iterations in all, which a loop per round would reach within 52 KB;
//!   the only loop left is over the blocks, fewer than that per chunk.
//!
//! On lavapipe (2 cores), 64 MiB jobs ran at some 700 MB/s for COMPARE,
//! 490 MB/s for CRC32C and 180 MB/s for SHA-256, where the software engine
//! (SSE4.2's CRC instruction, SHA-NI) did 4.2, 5.8 and 1.2 GB/s: the path
//! is here for devices that compute, and lavapipe proves it right.
//!
//! [`Compute::warm_up`] builds the pipelines' first dispatches and checks
//! each against the CPU (the `crc32c` and `sha2` crates) on a few KiB, so
//! that a driver that compiles on first use (lavapipe's LLVM, which maps
//! code executable) has done so before the process is sandboxed, and a
//! device that computes wrongly is not used.
//!
//! Not yet: the guest's pages bound in place instead of copied (which needs
//! a storage-buffer offset alignment per segment, 16 bytes on lavapipe, or
//! a byte offset per binding), and several small jobs per dispatch.

use std::io::Cursor;
use std::ptr::NonNull;
use std::sync::Arc;

use ash::vk;
use sha2::Digest;
use virtio_accel_spec::op::COMPARE_EQUAL;
use virtio_accel_spec::Status;

use super::gpu::{vk_error, Gpu};
use super::{JobStop, VulkanError};
use crate::command::Operation;
use crate::engine::Job;
use crate::ops::{Outcome, CANCELLED};
use crate::sg::SgList;

/// Most bytes of each input COMPARE and CRC32C take per submission: with
/// the CPU copy into staging, some milliseconds on lavapipe.
pub const COMPUTE_CHUNK: usize = 4 << 20;

/// Most bytes SHA-256 takes per submission (a multiple of 64): one
/// invocation hashes them in turn (some 180 MB/s on lavapipe, on a GPU's
/// single thread perhaps less), so a cancelled job stops within some
/// milliseconds.
pub const SHA_CHUNK: usize = 1 << 20;

// lavapipe (Mesa 22.3) ends an invocation after 65535 loop iterations in
// all: the SHA-256 shader loops once per block, so a chunk must hold fewer.
// (A chunk's blocks, and the padding block after the last chunk.)
const _: () = assert!(SHA_CHUNK % 64 == 0 && SHA_CHUNK / 64 + 1 < 65_535);

/// Room for the padding after the last bytes of a SHA-256 input.
const SHA_PAD: usize = 128;

/// Invocations per workgroup of COMPARE and CRC32C (`local_size_x`).
const LOCAL_SIZE: usize = 64;

/// Bytes each COMPARE invocation compares (a multiple of 4).
const COMPARE_BLOCK: usize = 1024;

/// Bytes each CRC32C invocation hashes (a multiple of 4): its combining
/// step costs some 20 multiplications in GF(2)[x], little beside 4 KiB.
const CRC_BLOCK: usize = 4096;

/// The first SHA-256 chaining value (FIPS 180-4 §5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// The shaders' SPIR-V (`ash::util::read_spv` copies it into 32-bit words:
/// `include_bytes!` gives no alignment).
static COMPARE_SPV: &[u8] = include_bytes!("shaders/compare.spv");
static CRC32C_SPV: &[u8] = include_bytes!("shaders/crc32c.spv");
static SHA256_SPV: &[u8] = include_bytes!("shaders/sha256.spv");

/// The engine's compute pipelines, in the order of [`Compute::pipelines`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Compare = 0,
    Crc32c = 1,
    Sha256 = 2,
}

impl Kernel {
    const ALL: [Kernel; 3] = [Kernel::Compare, Kernel::Crc32c, Kernel::Sha256];

    fn name(self) -> &'static str {
        match self {
            Kernel::Compare => "compare.spv",
            Kernel::Crc32c => "crc32c.spv",
            Kernel::Sha256 => "sha256.spv",
        }
    }

    fn spirv(self) -> &'static [u8] {
        match self {
            Kernel::Compare => COMPARE_SPV,
            Kernel::Crc32c => CRC32C_SPV,
            Kernel::Sha256 => SHA256_SPV,
        }
    }
}

/// Whether `job` is one the compute path runs: COMPARE, CRC32C and SHA-256
/// with the arity of §8 (any other goes where the software engine says it
/// is malformed).
pub(super) fn runs_on_compute(job: &Job) -> bool {
    matches!(
        (&job.operation, job.inputs(), job.outputs()),
        (Operation::Compare, [_, _], [])
            | (Operation::Crc32c { .. }, [_], [])
            | (Operation::Sha256, [_], [])
    )
}

/// A buffer in host-visible, host-coherent device memory, mapped for the
/// engine's life.
struct Mapped {
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    addr: NonNull<u8>,
    len: usize,
    gpu: Arc<Gpu>,
}

// SAFETY: the mapping is memory of the engine that only the owner of the
// value reads or writes (the engine's one GPU thread, or the thread that
// warms it up before handing it over).
unsafe impl Send for Mapped {}

impl Mapped {
    /// A storage buffer of `len` bytes.
    fn new(gpu: &Arc<Gpu>, len: usize) -> Result<Self, VulkanError> {
        let info = vk::BufferCreateInfo::default()
            .size(len as u64)
            .usage(vk::BufferUsageFlags::STORAGE_BUFFER)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: `info` outlives the call.
        let buffer =
            unsafe { gpu.device.create_buffer(&info, None) }.map_err(vk_error("vkCreateBuffer"))?;
        // From here on, `mapped`'s drop frees what was made (null handles
        // are ignored).
        let mut mapped = Mapped {
            buffer,
            memory: vk::DeviceMemory::null(),
            addr: NonNull::dangling(),
            len,
            gpu: Arc::clone(gpu),
        };
        // SAFETY: `buffer` was just made on this device.
        let needs = unsafe { gpu.device.get_buffer_memory_requirements(buffer) };
        let memory_type =
            gpu.coherent_type(needs.memory_type_bits)
                .ok_or(VulkanError::Unsupported {
                    device: gpu.name.clone(),
                    missing: "host-visible coherent memory for storage buffers",
                })?;
        let allocate = vk::MemoryAllocateInfo::default()
            .allocation_size(needs.size)
            .memory_type_index(memory_type);
        // SAFETY: `allocate` outlives the call.
        mapped.memory = unsafe { gpu.device.allocate_memory(&allocate, None) }
            .map_err(vk_error("vkAllocateMemory"))?;
        // SAFETY: the memory is as large as the buffer needs, of a type it
        // takes, and neither is bound yet.
        unsafe { gpu.device.bind_buffer_memory(buffer, mapped.memory, 0) }
            .map_err(vk_error("vkBindBufferMemory"))?;
        // SAFETY: host-visible memory, not mapped yet, mapped whole.
        let addr = unsafe {
            gpu.device.map_memory(
                mapped.memory,
                0,
                vk::WHOLE_SIZE,
                vk::MemoryMapFlags::empty(),
            )
        }
        .map_err(vk_error("vkMapMemory"))?;
        mapped.addr = NonNull::new(addr.cast::<u8>()).ok_or(VulkanError::Vulkan {
            what: "vkMapMemory (a null pointer)",
            source: vk::Result::ERROR_MEMORY_MAP_FAILED,
        })?;
        Ok(mapped)
    }

    /// The memory as a slice. The caller makes sure no device work on it is
    /// pending (the engine's thread submits and waits in turn).
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping covers at least `len` bytes (the buffer's
        // size, within the allocation), is owned by `self` (borrowed
        // mutably here), and no device work on it runs meanwhile (every
        // submission is waited for); host-coherent, so the device's writes
        // are seen once the submission's barrier and wait are done.
        unsafe { std::slice::from_raw_parts_mut(self.addr.as_ptr(), self.len) }
    }

    /// 32-bit word `index`, in the device's (the host's) byte order.
    fn word(&mut self, index: usize) -> u32 {
        let at = index * 4;
        let mut word = [0; 4];
        if let Some(bytes) = self.bytes().get(at..at + 4) {
            word.copy_from_slice(bytes);
        }
        u32::from_ne_bytes(word)
    }

    fn set_word(&mut self, index: usize, value: u32) {
        let at = index * 4;
        if let Some(bytes) = self.bytes().get_mut(at..at + 4) {
            bytes.copy_from_slice(&value.to_ne_bytes());
        }
    }

    fn descriptor(&self) -> vk::DescriptorBufferInfo {
        vk::DescriptorBufferInfo {
            buffer: self.buffer,
            offset: 0,
            range: vk::WHOLE_SIZE,
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: no submission using the buffer is pending (`Compute`'s
        // drop waits for the device first); freeing mapped memory unmaps
        // it, and nothing reads the mapping afterwards.
        unsafe {
            self.gpu.device.destroy_buffer(self.buffer, None);
            self.gpu.device.free_memory(self.memory, None);
        }
    }
}

/// The push constants every shader takes: four words, whose meaning each
/// shader's source gives.
type Params = [u32; 4];

/// The size of [`Params`] in bytes.
const PARAMS_SIZE: u32 = 16;

const _: () = assert!(std::mem::size_of::<Params>() == PARAMS_SIZE as usize);

/// A length within a chunk as a shader word.
fn word(n: usize) -> Result<u32, JobStop> {
    u32::try_from(n).map_err(|_| JobStop::Status(Status::DeviceError))
}

/// Workgroups for `len` bytes at `block` bytes per invocation.
fn groups(len: usize, block: usize) -> Result<u32, JobStop> {
    word(len.div_ceil(block).div_ceil(LOCAL_SIZE))
}

/// Writes the SHA-256 padding of a message of `total` bytes after its last
/// `tail` bytes, which start `bytes`; returns the length of the padded
/// tail (a multiple of 64). `bytes` holds at least `tail + SHA_PAD`.
fn sha_pad(bytes: &mut [u8], tail: usize, total: usize) -> usize {
    let padded = (tail + 9).next_multiple_of(64);
    if let Some(pad) = bytes.get_mut(tail..padded) {
        pad.fill(0);
        pad[0] = 0x80;
        let bits = (total as u64).wrapping_mul(8);
        let end = pad.len();
        pad[end - 8..].copy_from_slice(&bits.to_be_bytes());
    }
    padded
}

/// The engine thread's means to run the compute shaders: their pipelines,
/// one descriptor set naming the staging and result buffers, a command
/// buffer and the timeline semaphore its submissions signal.
pub(super) struct Compute {
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    timeline: vk::Semaphore,
    /// The value the last submission signals.
    value: u64,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    descriptors: vk::DescriptorPool,
    set: vk::DescriptorSet,
    /// Indexed by [`Kernel`].
    pipelines: [vk::Pipeline; 3],
    /// Binding 0: the data, the first input of COMPARE.
    a: Mapped,
    /// Binding 1: the second input of COMPARE.
    b: Mapped,
    /// Binding 2: the result word, or SHA-256's chaining value.
    result: Mapped,
    /// Dropped last: the objects above are of its device.
    gpu: Arc<Gpu>,
}

impl std::fmt::Debug for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compute").finish_non_exhaustive()
    }
}

impl Compute {
    /// Makes the buffers, the pipelines and what submits them.
    pub(super) fn new(gpu: &Arc<Gpu>) -> Result<Self, VulkanError> {
        let a = Mapped::new(gpu, COMPUTE_CHUNK.max(SHA_CHUNK) + SHA_PAD)?;
        let b = Mapped::new(gpu, COMPUTE_CHUNK)?;
        let result = Mapped::new(gpu, 64)?;
        // From here on, `compute`'s drop frees what was made.
        let mut compute = Compute {
            pool: vk::CommandPool::null(),
            cmd: vk::CommandBuffer::null(),
            timeline: vk::Semaphore::null(),
            value: 0,
            set_layout: vk::DescriptorSetLayout::null(),
            layout: vk::PipelineLayout::null(),
            descriptors: vk::DescriptorPool::null(),
            set: vk::DescriptorSet::null(),
            pipelines: [vk::Pipeline::null(); 3],
            a,
            b,
            result,
            gpu: Arc::clone(gpu),
        };
        compute.make_submission()?;
        compute.make_layouts()?;
        compute.make_descriptors()?;
        for kernel in Kernel::ALL {
            compute.pipelines[kernel as usize] = compute.make_pipeline(kernel)?;
        }
        Ok(compute)
    }

    /// The command pool and buffer, and the timeline semaphore.
    fn make_submission(&mut self) -> Result<(), VulkanError> {
        let device = &self.gpu.device;
        let pool_info = vk::CommandPoolCreateInfo::default()
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER)
            .queue_family_index(self.gpu.family);
        // SAFETY: `pool_info` outlives the call.
        self.pool = unsafe { device.create_command_pool(&pool_info, None) }
            .map_err(vk_error("vkCreateCommandPool"))?;
        self.cmd = self.gpu.command_buffer(self.pool)?;
        self.timeline = self.gpu.timeline_semaphore()?;
        Ok(())
    }

    /// One set of three storage buffers and 16 bytes of push constants,
    /// for every shader.
    fn make_layouts(&mut self) -> Result<(), VulkanError> {
        let device = &self.gpu.device;
        let bindings: Vec<vk::DescriptorSetLayoutBinding<'_>> = (0..3)
            .map(|binding| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(binding)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let info = vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings);
        // SAFETY: `info` and what it points to outlive the call.
        self.set_layout = unsafe { device.create_descriptor_set_layout(&info, None) }
            .map_err(vk_error("vkCreateDescriptorSetLayout"))?;
        let sets = [self.set_layout];
        let ranges = [vk::PushConstantRange {
            stage_flags: vk::ShaderStageFlags::COMPUTE,
            offset: 0,
            size: PARAMS_SIZE,
        }];
        let info = vk::PipelineLayoutCreateInfo::default()
            .set_layouts(&sets)
            .push_constant_ranges(&ranges);
        // SAFETY: as above; the set layout is live.
        self.layout = unsafe { device.create_pipeline_layout(&info, None) }
            .map_err(vk_error("vkCreatePipelineLayout"))?;
        Ok(())
    }

    /// The one descriptor set, naming the three buffers for good.
    fn make_descriptors(&mut self) -> Result<(), VulkanError> {
        let device = &self.gpu.device;
        let sizes = [vk::DescriptorPoolSize {
            ty: vk::DescriptorType::STORAGE_BUFFER,
            descriptor_count: 3,
        }];
        let info = vk::DescriptorPoolCreateInfo::default()
            .max_sets(1)
            .pool_sizes(&sizes);
        // SAFETY: `info` and what it points to outlive the call.
        self.descriptors = unsafe { device.create_descriptor_pool(&info, None) }
            .map_err(vk_error("vkCreateDescriptorPool"))?;
        let layouts = [self.set_layout];
        let alloc = vk::DescriptorSetAllocateInfo::default()
            .descriptor_pool(self.descriptors)
            .set_layouts(&layouts);
        // SAFETY: the pool has room for the one set of the live layout.
        let sets = unsafe { device.allocate_descriptor_sets(&alloc) }
            .map_err(vk_error("vkAllocateDescriptorSets"))?;
        self.set = sets.first().copied().unwrap_or_default();
        let infos = [
            [self.a.descriptor()],
            [self.b.descriptor()],
            [self.result.descriptor()],
        ];
        let writes: Vec<vk::WriteDescriptorSet<'_>> = (0u32..)
            .zip(&infos)
            .map(|(binding, info)| {
                vk::WriteDescriptorSet::default()
                    .dst_set(self.set)
                    .dst_binding(binding)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(info)
            })
            .collect();
        // SAFETY: the set is not in use by any command buffer; the buffers
        // are live storage buffers; `writes` and `infos` outlive the call.
        unsafe { device.update_descriptor_sets(&writes, &[]) };
        Ok(())
    }

    fn make_pipeline(&self, kernel: Kernel) -> Result<vk::Pipeline, VulkanError> {
        let device = &self.gpu.device;
        let code = ash::util::read_spv(&mut Cursor::new(kernel.spirv()))
            .map_err(|source| VulkanError::Shader(kernel.name(), source))?;
        let info = vk::ShaderModuleCreateInfo::default().code(&code);
        // SAFETY: `code` is the SPIR-V glslangValidator made of this
        // engine's shaders (shaders/build.sh, compared byte for byte in
        // CI; spirv-val accepts it), in words, and outlives the call.
        let module = unsafe { device.create_shader_module(&info, None) }
            .map_err(vk_error("vkCreateShaderModule"))?;
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(c"main");
        let infos = [vk::ComputePipelineCreateInfo::default()
            .stage(stage)
            .layout(self.layout)];
        // SAFETY: the module and the layout are live, and the shader's
        // bindings and push constants are within the layout's.
        let made =
            unsafe { device.create_compute_pipelines(vk::PipelineCache::null(), &infos, None) };
        // SAFETY: a pipeline keeps what it needs of its module.
        unsafe { device.destroy_shader_module(module, None) };
        match made {
            Ok(pipelines) => pipelines.first().copied().ok_or(VulkanError::Vulkan {
                what: "vkCreateComputePipelines",
                source: vk::Result::ERROR_UNKNOWN,
            }),
            Err((pipelines, source)) => {
                for pipeline in pipelines {
                    // SAFETY: unused; null handles are ignored.
                    unsafe { device.destroy_pipeline(pipeline, None) };
                }
                Err(VulkanError::Vulkan {
                    what: "vkCreateComputePipelines",
                    source,
                })
            }
        }
    }

    /// Runs `groups` workgroups of `kernel` with `params`, and waits until
    /// the device has run them and their writes are visible to the host.
    /// The host's writes before the call are visible to the device (a
    /// queue submission makes them so).
    fn dispatch(&mut self, kernel: Kernel, params: Params, groups: u32) -> Result<(), VulkanError> {
        let mut constants = [0u8; PARAMS_SIZE as usize];
        for (bytes, value) in constants.chunks_exact_mut(4).zip(params) {
            bytes.copy_from_slice(&value.to_ne_bytes());
        }
        let (pipeline, layout, set) = (self.pipelines[kernel as usize], self.layout, self.set);
        self.gpu.run_recorded(
            self.cmd,
            (self.timeline, &mut self.value),
            (
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::AccessFlags::SHADER_WRITE,
            ),
            |device, cmd| {
                // SAFETY: the command buffer is recording; the pipeline,
                // its layout and the set are live and compatible; the
                // push constants are the layout's range.
                unsafe {
                    device.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, pipeline);
                    device.cmd_bind_descriptor_sets(
                        cmd,
                        vk::PipelineBindPoint::COMPUTE,
                        layout,
                        0,
                        &[set],
                        &[],
                    );
                    device.cmd_push_constants(
                        cmd,
                        layout,
                        vk::ShaderStageFlags::COMPUTE,
                        0,
                        &constants,
                    );
                    device.cmd_dispatch(cmd, groups, 1, 1);
                }
            },
        )
    }

    /// The first difference of the first `n` bytes of the two staging
    /// buffers, if any.
    fn compare_chunk(&mut self, n: usize) -> Result<Option<usize>, JobStop> {
        self.result.set_word(0, u32::MAX);
        let params = [word(n)?, word(COMPARE_BLOCK)?, 0, 0];
        self.dispatch(Kernel::Compare, params, groups(n, COMPARE_BLOCK)?)?;
        let first = self.result.word(0);
        if first == u32::MAX {
            return Ok(None);
        }
        let first = first as usize;
        if first >= n {
            return Err(JobStop::Device(VulkanError::Compute(
                "COMPARE result out of range",
            )));
        }
        Ok(Some(first))
    }

    /// The CRC register after the first `n` (not 0) bytes of the data
    /// staging buffer, from `register`.
    fn crc_chunk(&mut self, n: usize, register: u32) -> Result<u32, JobStop> {
        self.result.set_word(0, 0);
        let params = [word(n)?, word(CRC_BLOCK)?, register, 0];
        self.dispatch(Kernel::Crc32c, params, groups(n, CRC_BLOCK)?)?;
        Ok(self.result.word(0))
    }

    /// Compresses the first `blocks` 64-byte blocks of the data staging
    /// buffer into the chaining value in the result buffer.
    fn sha_blocks(&mut self, blocks: usize) -> Result<(), JobStop> {
        self.dispatch(Kernel::Sha256, [word(blocks)?, 0, 0, 0], 1)?;
        Ok(())
    }

    /// Runs a COMPARE, CRC32C or SHA-256 job, a chunk per submission,
    /// asking `cancelled` before each. Other jobs fail: the queue does not
    /// send them.
    pub(super) fn run_job(&mut self, job: &Job, cancelled: &dyn Fn() -> bool) -> Outcome {
        let result = match (&job.operation, job.inputs(), job.outputs()) {
            (Operation::Compare, [a, b], []) => self
                .compare(a, b, cancelled)
                .map(|first| first.to_le_bytes().to_vec()),
            (Operation::Crc32c { seed }, [data], []) => self
                .crc32c(data, *seed, cancelled)
                .map(|crc| crc.to_le_bytes().to_vec()),
            (Operation::Sha256, [data], []) => {
                self.sha256(data, cancelled).map(|digest| digest.to_vec())
            }
            _ => Err(JobStop::Status(Status::DeviceError)),
        };
        match result {
            Ok(bytes) => {
                let mut outcome = Outcome::failed(Status::Ok);
                let n = bytes.len().min(outcome.result.len());
                outcome.result[..n].copy_from_slice(&bytes[..n]);
                outcome
            }
            Err(stop) => stop.outcome(),
        }
    }

    /// COMPARE (§8.3), as [`crate::ops`] runs it: chunk by chunk while both
    /// inputs have bytes left, asking `cancelled` before each.
    fn compare(
        &mut self,
        a: &SgList,
        b: &SgList,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<u64, JobStop> {
        let (mut rest_a, mut rest_b) = (a.reader(), b.reader());
        let mut offset: usize = 0;
        while !rest_a.is_empty() && !rest_b.is_empty() {
            if cancelled() {
                return Err(JobStop::Status(CANCELLED));
            }
            let n = rest_a.len().min(rest_b.len()).min(COMPUTE_CHUNK);
            let read_a = self
                .a
                .bytes()
                .get_mut(..n)
                .and_then(|c| rest_a.read_front(c));
            let read_b = self
                .b
                .bytes()
                .get_mut(..n)
                .and_then(|c| rest_b.read_front(c));
            if read_a.is_none() || read_b.is_none() {
                return Err(JobStop::Status(Status::DeviceError));
            }
            if let Some(first) = self.compare_chunk(n)? {
                return Ok((offset + first) as u64);
            }
            offset += n;
        }
        Ok(if a.len() == b.len() {
            COMPARE_EQUAL
        } else {
            a.len().min(b.len()) as u64
        })
    }

    /// CRC32C (§8.4) from `seed`, chunk by chunk, asking `cancelled` before
    /// each.
    fn crc32c(
        &mut self,
        data: &SgList,
        seed: u32,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<u32, JobStop> {
        let mut register = !seed;
        let mut rest = data.reader();
        while !rest.is_empty() {
            if cancelled() {
                return Err(JobStop::Status(CANCELLED));
            }
            let n = rest.len().min(COMPUTE_CHUNK);
            self.a
                .bytes()
                .get_mut(..n)
                .and_then(|chunk| rest.read_front(chunk))
                .ok_or(JobStop::Status(Status::DeviceError))?;
            register = self.crc_chunk(n, register)?;
        }
        Ok(!register)
    }

    /// SHA-256 (§8.5), chunk by chunk (at least one: the padding), asking
    /// `cancelled` before each.
    fn sha256(&mut self, data: &SgList, cancelled: &dyn Fn() -> bool) -> Result<[u8; 32], JobStop> {
        for (index, value) in SHA256_IV.into_iter().enumerate() {
            self.result.set_word(index, value);
        }
        let total = data.len();
        let mut rest = data.reader();
        loop {
            if cancelled() {
                return Err(JobStop::Status(CANCELLED));
            }
            let n = rest.len().min(SHA_CHUNK);
            let last = n == rest.len();
            let bytes = self.a.bytes();
            bytes
                .get_mut(..n)
                .and_then(|chunk| rest.read_front(chunk))
                .ok_or(JobStop::Status(Status::DeviceError))?;
            let len = if last { sha_pad(bytes, n, total) } else { n };
            self.sha_blocks(len / 64)?;
            if last {
                break;
            }
        }
        let mut digest = [0; 32];
        for (index, bytes) in digest.chunks_exact_mut(4).enumerate() {
            bytes.copy_from_slice(&self.result.word(index).to_be_bytes());
        }
        Ok(digest)
    }

    /// Runs each shader once, on a few KiB that take several invocations
    /// and workgroups, and checks the results against the CPU's: the
    /// driver's first-use work (lavapipe compiles the shaders to machine
    /// code) is done before the process is sandboxed, and a device that
    /// computes wrongly is refused.
    pub(super) fn warm_up(&mut self) -> Result<(), VulkanError> {
        const LEN: usize = 300_007;
        const DIFFER: usize = 200_003;
        let data: Vec<u8> = (0u32..)
            .take(LEN)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        let device = |stop: JobStop| match stop {
            JobStop::Device(error) => error,
            JobStop::Status(_) => VulkanError::Compute("a warm-up dispatch failed"),
        };
        let stage = |buffer: &mut Mapped| {
            if let Some(chunk) = buffer.bytes().get_mut(..LEN) {
                chunk.copy_from_slice(&data);
            }
        };
        stage(&mut self.a);
        stage(&mut self.b);
        if let Some(byte) = self.b.bytes().get_mut(DIFFER) {
            *byte ^= 0x10;
        }
        if self.compare_chunk(LEN).map_err(device)? != Some(DIFFER) {
            return Err(VulkanError::Compute("COMPARE differs from the CPU's"));
        }
        let seed = 0x1234_5678;
        let crc = !self.crc_chunk(LEN, !seed).map_err(device)?;
        if crc != crc32c::crc32c_append(seed, &data) {
            return Err(VulkanError::Compute("CRC32C differs from the CPU's"));
        }
        for (index, value) in SHA256_IV.into_iter().enumerate() {
            self.result.set_word(index, value);
        }
        let tail = LEN % 64;
        let whole = LEN - tail;
        let padded = sha_pad(&mut self.a.bytes()[whole..], tail, LEN);
        self.sha_blocks((whole + padded) / 64).map_err(device)?;
        let mut digest = [0; 32];
        for (index, bytes) in digest.chunks_exact_mut(4).enumerate() {
            bytes.copy_from_slice(&self.result.word(index).to_be_bytes());
        }
        if digest[..] != sha2::Sha256::digest(&data)[..] {
            return Err(VulkanError::Compute("SHA-256 differs from the CPU's"));
        }
        Ok(())
    }
}

impl Drop for Compute {
    fn drop(&mut self) {
        let device = &self.gpu.device;
        // SAFETY: every submission was waited for (or failed; waiting for
        // the device's idle covers those), so nothing made here is in use;
        // null handles are ignored by the destroy calls. The buffers are
        // freed after this (field drops).
        unsafe {
            let _ = device.device_wait_idle();
            for pipeline in self.pipelines {
                device.destroy_pipeline(pipeline, None);
            }
            device.destroy_descriptor_pool(self.descriptors, None);
            device.destroy_pipeline_layout(self.layout, None);
            device.destroy_descriptor_set_layout(self.set_layout, None);
            device.destroy_semaphore(self.timeline, None);
            device.destroy_command_pool(self.pool, None);
        }
    }
}
