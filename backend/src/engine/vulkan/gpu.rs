// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The Vulkan device of the engine: the loader, an instance, the physical
//! device picked by the operator's selector, and a logical device with one
//! queue able to transfer and the extensions the engine needs
//! (`VK_EXT_external_memory_host`, timeline semaphores), with those that
//! import dma-bufs (`VK_EXT_external_memory_dma_buf` and
//! `VK_KHR_external_memory_fd`) where the device has them.

use std::ffi::{c_void, CStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ash::vk;

use super::VulkanError;

/// The device extension that imports host memory.
const HOST_MEMORY: &CStr = ash::ext::external_memory_host::NAME;
/// The device extensions that import dma-bufs: the handle type, and the
/// import of a descriptor.
const DMA_BUF: &CStr = ash::ext::external_memory_dma_buf::NAME;
const MEMORY_FD: &CStr = ash::khr::external_memory_fd::NAME;
/// The device extension that names the queue family of other drivers and
/// the host's CPU, which share a dma-buf's memory.
const FOREIGN: &CStr = ash::ext::queue_family_foreign::NAME;
/// What the engine makes of the memory it imports: buffers that transfer
/// commands read and write.
pub(super) const IMPORTED_USAGE: vk::BufferUsageFlags = vk::BufferUsageFlags::from_raw(
    vk::BufferUsageFlags::TRANSFER_SRC.as_raw() | vk::BufferUsageFlags::TRANSFER_DST.as_raw(),
);
/// The device extension of timeline semaphores before Vulkan 1.2.
const TIMELINE_KHR: &CStr = ash::khr::timeline_semaphore::NAME;
/// What the engine asks of a device for timeline semaphores.
const TIMELINE_NEEDS: &str = "timeline semaphores (Vulkan 1.2 or VK_KHR_timeline_semaphore)";

/// How a device offers timeline semaphores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timeline {
    /// Vulkan 1.2 core.
    Core,
    /// `VK_KHR_timeline_semaphore` on a Vulkan 1.1 device.
    Extension,
}

/// A physical device as the selection sees it.
#[derive(Debug)]
struct Candidate {
    physical: vk::PhysicalDevice,
    name: String,
    kind: vk::PhysicalDeviceType,
    /// The first thing the engine needs that the device lacks.
    missing: Option<&'static str>,
    timeline: Option<Timeline>,
    /// The queue family to use.
    family: Option<u32>,
    /// `minImportedHostPointerAlignment`.
    import_alignment: u64,
    /// Whether the device imports dma-bufs as transfer buffers.
    dma_buf: bool,
    /// Whether it has `VK_EXT_queue_family_foreign`.
    foreign: bool,
}

/// The device the engine runs on. Only the engine's one GPU thread submits
/// to [`Gpu::queue`] (after [`super::VulkanEngine::new`] has warmed it up
/// from the calling thread), so the queue needs no lock.
pub(super) struct Gpu {
    pub(super) device: ash::Device,
    pub(super) queue: vk::Queue,
    pub(super) family: u32,
    /// The device's name, for logs and errors.
    pub(super) name: String,
    /// Whether `family` runs compute shaders (else only COPY and FILL run
    /// on the device).
    pub(super) computes: bool,
    /// Whether the device is the host's CPU (lavapipe): its driver makes no
    /// `ioctl` once started.
    pub(super) cpu: bool,
    /// `minImportedHostPointerAlignment`, a power of two.
    pub(super) import_alignment: u64,
    pub(super) memory_types: vk::PhysicalDeviceMemoryProperties,
    pub(super) host_memory: ash::ext::external_memory_host::Device,
    /// The import of descriptors, on a device that imports dma-bufs (else
    /// objects' buffers are imported as host memory, like the others).
    pub(super) memory_fd: Option<ash::khr::external_memory_fd::Device>,
    /// The queue family that the users of a dma-buf other than this device
    /// are (`VK_QUEUE_FAMILY_FOREIGN_EXT` where the device has the
    /// extension, else `VK_QUEUE_FAMILY_EXTERNAL`), between which and the
    /// engine's queue its imports change hands.
    pub(super) other_users: u32,
    /// Timeline semaphore functions when they come from the extension.
    timeline_khr: Option<ash::khr::timeline_semaphore::Device>,
    instance: ash::Instance,
    /// Keeps the loader, and so every function pointer above, loaded.
    _entry: ash::Entry,
    /// A submission failed or did not end in [`WAIT_LIMIT`]: the device is
    /// taken as lost, and nothing is submitted to it any more.
    lost: AtomicBool,
}

/// The longest a submission (one chunk, at most a few MiB) may take
/// before the device is taken as hung.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("name", &self.name).finish()
    }
}

/// Turns a Vulkan error of step `what` into the engine's error.
pub(super) fn vk_error(what: &'static str) -> impl FnOnce(vk::Result) -> VulkanError {
    move |source| VulkanError::Vulkan { what, source }
}

impl Gpu {
    /// Loads `libvulkan.so.1`, and opens the device that `selector` names:
    /// its index among the devices the loader lists, or a part of its name
    /// (case ignored; the first that matches). Without a selector, the
    /// first device that has what the engine needs.
    pub(super) fn open(selector: Option<&str>) -> Result<Gpu, VulkanError> {
        // SAFETY: loading the system's Vulkan loader runs its initialisers,
        // which is what every Vulkan application does; nothing else of ours
        // is touched.
        let entry = unsafe { ash::Entry::load() }.map_err(VulkanError::Loader)?;
        let instance = create_instance(&entry)?;
        match open_on(&instance, selector) {
            Ok((chosen, device)) => Ok(Gpu::assemble(entry, instance, chosen, device)),
            Err(error) => {
                // SAFETY: nothing was made from the instance that outlives
                // this call (open_on destroys what it made on failure).
                unsafe { instance.destroy_instance(None) };
                Err(error)
            }
        }
    }

    fn assemble(
        entry: ash::Entry,
        instance: ash::Instance,
        chosen: Candidate,
        device: ash::Device,
    ) -> Gpu {
        let host_memory = ash::ext::external_memory_host::Device::new(&instance, &device);
        let memory_fd = chosen
            .dma_buf
            .then(|| ash::khr::external_memory_fd::Device::new(&instance, &device));
        let timeline_khr = (chosen.timeline == Some(Timeline::Extension))
            .then(|| ash::khr::timeline_semaphore::Device::new(&instance, &device));
        let family = chosen.family.unwrap_or(0);
        // SAFETY: a plain query of a device of `instance`.
        let families =
            unsafe { instance.get_physical_device_queue_family_properties(chosen.physical) };
        let computes = usize::try_from(family)
            .ok()
            .and_then(|family| families.get(family))
            .is_some_and(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE));
        // SAFETY: the device was made with one queue in `family`.
        let queue = unsafe { device.get_device_queue(family, 0) };
        // SAFETY: `physical` is a device of `instance`.
        let memory_types =
            unsafe { instance.get_physical_device_memory_properties(chosen.physical) };
        Gpu {
            device,
            queue,
            family,
            name: chosen.name,
            computes,
            cpu: chosen.kind == vk::PhysicalDeviceType::CPU,
            import_alignment: chosen.import_alignment.max(1),
            memory_types,
            host_memory,
            memory_fd,
            other_users: if chosen.foreign {
                vk::QUEUE_FAMILY_FOREIGN_EXT
            } else {
                vk::QUEUE_FAMILY_EXTERNAL
            },
            timeline_khr,
            instance,
            _entry: entry,
            lost: AtomicBool::new(false),
        }
    }

    /// A primary command buffer of `pool`, a live command pool of this
    /// device.
    pub(super) fn command_buffer(
        &self,
        pool: vk::CommandPool,
    ) -> Result<vk::CommandBuffer, VulkanError> {
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: `alloc` names a live pool of this device (caller) and
        // outlives the call.
        let buffers = unsafe { self.device.allocate_command_buffers(&alloc) }
            .map_err(vk_error("vkAllocateCommandBuffers"))?;
        buffers.first().copied().ok_or(VulkanError::Vulkan {
            what: "vkAllocateCommandBuffers: no command buffer",
            source: vk::Result::ERROR_UNKNOWN,
        })
    }

    /// A timeline semaphore of this device, at 0.
    pub(super) fn timeline_semaphore(&self) -> Result<vk::Semaphore, VulkanError> {
        let mut kind = vk::SemaphoreTypeCreateInfo::default()
            .semaphore_type(vk::SemaphoreType::TIMELINE)
            .initial_value(0);
        let info = vk::SemaphoreCreateInfo::default().push_next(&mut kind);
        // SAFETY: the device enabled timeline semaphores; `info` and its
        // chain outlive the call.
        unsafe { self.device.create_semaphore(&info, None) }.map_err(vk_error("vkCreateSemaphore"))
    }

    /// Takes the device as lost, as a failed submission does.
    #[cfg(test)]
    pub(super) fn mark_lost(&self) {
        self.lost.store(true, Ordering::Relaxed);
    }

    /// Whether the device failed: nothing runs on it any more.
    pub(super) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Records in `cmd` what `record` records, then a barrier that makes
    /// the writes of `stage` (`access`) visible to the host; submits it,
    /// signalling `timeline` with the value after `*value` (which it
    /// counts), and waits until the device has run it. A failure, or a
    /// submission still running after [`WAIT_LIMIT`], marks the device
    /// lost (after waiting for it to go idle, so that no submission uses
    /// memory that is released next): later calls fail at once.
    pub(super) fn run_recorded(
        &self,
        cmd: vk::CommandBuffer,
        (timeline, value): (vk::Semaphore, &mut u64),
        (stage, access): (vk::PipelineStageFlags, vk::AccessFlags),
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<(), VulkanError> {
        if self.is_lost() {
            return Err(VulkanError::Vulkan {
                what: "a submission: the device was lost",
                source: vk::Result::ERROR_DEVICE_LOST,
            });
        }
        self.record(cmd, (stage, access), record)?;
        let next = *value + 1;
        let values = [next];
        let mut signal =
            vk::TimelineSemaphoreSubmitInfo::default().signal_semaphore_values(&values);
        let cmds = [cmd];
        let signals = [timeline];
        let submit = [vk::SubmitInfo::default()
            .command_buffers(&cmds)
            .signal_semaphores(&signals)
            .push_next(&mut signal)];
        // SAFETY: only the engine's one thread submits to the queue (see
        // `Gpu`); the command buffer is recorded, the semaphore is a
        // timeline one of this device below `next`, and everything
        // `submit` points to outlives the call.
        let ran = unsafe {
            self.device
                .queue_submit(self.queue, &submit, vk::Fence::null())
        }
        .map_err(vk_error("vkQueueSubmit"))
        .and_then(|()| {
            *value = next;
            self.wait(timeline, next)
        });
        ran.inspect_err(|_| {
            self.lost.store(true, Ordering::Relaxed);
            // The submission may still run: let it end (or the device be
            // lost) before its memory is released.
            // SAFETY: only this thread uses the queue (see `Gpu`).
            let _ = unsafe { self.device.device_wait_idle() };
        })
    }

    /// Resets `cmd` and records in it what `record` records, then a
    /// barrier that makes the writes of `stage` (`access`) visible to the
    /// host.
    fn record(
        &self,
        cmd: vk::CommandBuffer,
        (stage, access): (vk::PipelineStageFlags, vk::AccessFlags),
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<(), VulkanError> {
        let begin = vk::CommandBufferBeginInfo::default()
            .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: `cmd` is a command buffer of this device that is not
        // pending (every submission is waited for, or the device idled),
        // so it may be reset and recorded.
        unsafe {
            self.device
                .reset_command_buffer(cmd, vk::CommandBufferResetFlags::empty())
                .map_err(vk_error("vkResetCommandBuffer"))?;
            self.device
                .begin_command_buffer(cmd, &begin)
                .map_err(vk_error("vkBeginCommandBuffer"))?;
        }
        record(&self.device, cmd);
        let to_host = [vk::MemoryBarrier::default()
            .src_access_mask(access)
            .dst_access_mask(vk::AccessFlags::HOST_READ)];
        // SAFETY: the command buffer is recording; the barrier makes the
        // recorded commands' writes visible to the host once they end.
        unsafe {
            self.device.cmd_pipeline_barrier(
                cmd,
                stage,
                vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &to_host,
                &[],
                &[],
            );
            self.device
                .end_command_buffer(cmd)
                .map_err(vk_error("vkEndCommandBuffer"))
        }
    }

    /// Waits until `semaphore`, a timeline semaphore of this device,
    /// reaches `value`: an error if it has not within [`WAIT_LIMIT`], or if
    /// the device says it has but its counter is below `value` (a lost
    /// device may answer a wait with success).
    fn wait(&self, semaphore: vk::Semaphore, value: u64) -> Result<(), VulkanError> {
        let semaphores = [semaphore];
        let values = [value];
        let info = vk::SemaphoreWaitInfo::default()
            .semaphores(&semaphores)
            .values(&values);
        let limit = u64::try_from(WAIT_LIMIT.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: `semaphore` is a live timeline semaphore of this device
        // (caller), and `info` points to locals that outlive the calls.
        let reached = unsafe {
            match &self.timeline_khr {
                Some(khr) => khr
                    .wait_semaphores(&info, limit)
                    .and_then(|()| khr.get_semaphore_counter_value(semaphore)),
                None => self
                    .device
                    .wait_semaphores(&info, limit)
                    .and_then(|()| self.device.get_semaphore_counter_value(semaphore)),
            }
        };
        match reached.map_err(vk_error("vkWaitSemaphores"))? {
            counter if counter >= value => Ok(()),
            _ => Err(VulkanError::Vulkan {
                what: "vkWaitSemaphores: the semaphore did not reach its value",
                source: vk::Result::ERROR_DEVICE_LOST,
            }),
        }
    }

    /// A memory type among `bits` that the host sees coherently.
    pub(super) fn coherent_type(&self, bits: u32) -> Option<u32> {
        let wanted = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        let count = usize::try_from(self.memory_types.memory_type_count).unwrap_or(usize::MAX);
        self.memory_types
            .memory_types
            .iter()
            .take(count)
            .zip(0..u32::BITS)
            .find(|(kind, index)| bits & (1 << index) != 0 && kind.property_flags.contains(wanted))
            .map(|(_, index)| index)
    }

    /// The raw `vkGetMemoryHostPointerPropertiesEXT`.
    pub(super) fn host_pointer_types(&self, pointer: *const c_void) -> Result<u32, VulkanError> {
        let mut properties = vk::MemoryHostPointerPropertiesEXT::default();
        // SAFETY: the function was loaded for this device, which enabled
        // the extension; `pointer` is only looked up (the caller vouches it
        // is host memory aligned as the device asks), and `properties` is
        // a valid output structure.
        let result = unsafe {
            (self.host_memory.fp().get_memory_host_pointer_properties_ext)(
                self.device.handle(),
                vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT,
                pointer,
                &mut properties,
            )
        };
        result
            .result()
            .map_err(vk_error("vkGetMemoryHostPointerPropertiesEXT"))?;
        Ok(properties.memory_type_bits)
    }

    /// The memory types a dma-buf may be imported as (`vkGetMemoryFdPropertiesKHR`),
    /// on a device that imports dma-bufs.
    pub(super) fn dma_buf_types(&self, dma_buf: BorrowedFd<'_>) -> Result<u32, VulkanError> {
        let memory_fd = self
            .memory_fd
            .as_ref()
            .ok_or(VulkanError::Import("the device imports no dma-buf"))?;
        let mut properties = vk::MemoryFdPropertiesKHR::default();
        // SAFETY: the function was loaded for this device, which enabled
        // the extension; the descriptor is only looked at, and `properties`
        // is a valid output structure.
        unsafe {
            memory_fd.get_memory_fd_properties(
                vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT,
                dma_buf.as_raw_fd(),
                &mut properties,
            )
        }
        .map_err(vk_error("vkGetMemoryFdPropertiesKHR"))?;
        Ok(properties.memory_type_bits)
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: every object made from the device is gone (each holds an
        // `Arc<Gpu>`), and waiting for idle first lets nothing run on it.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

fn create_instance(entry: &ash::Entry) -> Result<ash::Instance, VulkanError> {
    // SAFETY: a plain query of the loader.
    let version = unsafe { entry.try_enumerate_instance_version() }
        .map_err(vk_error("vkEnumerateInstanceVersion"))?
        .unwrap_or(vk::API_VERSION_1_0);
    if version < vk::API_VERSION_1_1 {
        return Err(VulkanError::OldLoader);
    }
    let app = vk::ApplicationInfo::default()
        .application_name(c"vhost-user-accel")
        .engine_name(c"vhost-user-accel")
        .api_version(vk::API_VERSION_1_2);
    let info = vk::InstanceCreateInfo::default().application_info(&app);
    // SAFETY: `info` and what it points to outlive the call.
    unsafe { entry.create_instance(&info, None) }.map_err(|source| match source {
        // The loader's answer when it finds no driver.
        vk::Result::ERROR_INCOMPATIBLE_DRIVER => VulkanError::NoDevice,
        source => VulkanError::Vulkan {
            what: "vkCreateInstance",
            source,
        },
    })
}

/// Picks the device and makes its logical device.
fn open_on(
    instance: &ash::Instance,
    selector: Option<&str>,
) -> Result<(Candidate, ash::Device), VulkanError> {
    // SAFETY: a plain query of a live instance.
    let physicals = unsafe { instance.enumerate_physical_devices() }
        .map_err(vk_error("vkEnumeratePhysicalDevices"))?;
    let mut candidates = Vec::with_capacity(physicals.len());
    for physical in physicals {
        candidates.push(probe(instance, physical)?);
    }
    let chosen = choose(candidates, selector)?;
    if let Some(missing) = chosen.missing {
        return Err(VulkanError::Unsupported {
            device: chosen.name,
            missing,
        });
    }
    let device = create_device(instance, &chosen)?;
    Ok((chosen, device))
}

/// The device `selector` names (see [`Gpu::open`]).
fn choose(candidates: Vec<Candidate>, selector: Option<&str>) -> Result<Candidate, VulkanError> {
    if candidates.is_empty() {
        return Err(VulkanError::NoDevice);
    }
    let list = describe(&candidates);
    let index = match selector.map(str::trim) {
        None | Some("") => candidates
            .iter()
            .position(|c| c.missing.is_none())
            .unwrap_or(0),
        Some(wanted) => {
            let by_index = wanted.parse::<usize>().ok();
            let lower = wanted.to_lowercase();
            let found = match by_index {
                Some(index) => (index < candidates.len()).then_some(index),
                None => candidates
                    .iter()
                    .position(|c| c.name.to_lowercase().contains(&lower)),
            };
            found.ok_or_else(|| VulkanError::NoMatch {
                selector: wanted.to_owned(),
                devices: list,
            })?
        }
    };
    candidates
        .into_iter()
        .nth(index)
        .ok_or(VulkanError::NoDevice)
}

/// "0: name (type), 1: ..." for errors.
fn describe(candidates: &[Candidate]) -> String {
    let entries: Vec<String> = candidates
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let lacks = c
                .missing
                .map(|m| format!(", lacks {m}"))
                .unwrap_or_default();
            format!("{index}: {} ({:?}{lacks})", c.name, c.kind)
        })
        .collect();
    entries.join("; ")
}

/// What the engine needs to know of a physical device.
fn probe(instance: &ash::Instance, physical: vk::PhysicalDevice) -> Result<Candidate, VulkanError> {
    // SAFETY: `physical` is a device of `instance`; plain queries.
    let properties = unsafe { instance.get_physical_device_properties(physical) };
    // SAFETY: as above.
    let extensions = unsafe { instance.enumerate_device_extension_properties(physical) }
        .map_err(vk_error("vkEnumerateDeviceExtensionProperties"))?;
    let has = |name: &CStr| {
        extensions
            .iter()
            .any(|e| e.extension_name_as_c_str().is_ok_and(|n| n == name))
    };
    let name = properties
        .device_name_as_c_str()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "(unnamed)".to_owned());
    let api = properties.api_version;
    let has_host_memory = has(HOST_MEMORY);
    let timeline = timeline_support(instance, physical, api, has(TIMELINE_KHR));
    let family = queue_family(instance, physical);
    let import_alignment = if has_host_memory {
        import_alignment(instance, physical)
    } else {
        0
    };
    let missing = if api < vk::API_VERSION_1_1 {
        Some("Vulkan 1.1")
    } else if !has_host_memory {
        Some("VK_EXT_external_memory_host")
    } else if import_alignment > crate::memory::page_size() {
        // Imports are rounded out to it: past a page, they would cover
        // memory that is not the job's (or not mapped at all).
        Some("a minImportedHostPointerAlignment of at most a page")
    } else if timeline.is_none() {
        Some(TIMELINE_NEEDS)
    } else if family.is_none() {
        Some("a queue able to transfer")
    } else {
        None
    };
    Ok(Candidate {
        physical,
        name,
        kind: properties.device_type,
        missing,
        timeline,
        family,
        import_alignment,
        dma_buf: api >= vk::API_VERSION_1_1
            && has(DMA_BUF)
            && has(MEMORY_FD)
            && imports_dma_bufs(instance, physical),
        foreign: has(FOREIGN),
    })
}

/// Whether the device says a transfer buffer can be imported from a dma-buf
/// (`vkGetPhysicalDeviceExternalBufferProperties`; the extension alone does
/// not promise it for every use), without the dedicated allocation that
/// the engine does not make.
fn imports_dma_bufs(instance: &ash::Instance, physical: vk::PhysicalDevice) -> bool {
    let info = vk::PhysicalDeviceExternalBufferInfo::default()
        .usage(IMPORTED_USAGE)
        .handle_type(vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT);
    let mut properties = vk::ExternalBufferProperties::default();
    // SAFETY: a plain query of a Vulkan 1.1 device (the caller checks) of
    // `instance`; both structures outlive it.
    unsafe {
        instance.get_physical_device_external_buffer_properties(physical, &info, &mut properties);
    }
    let features = properties
        .external_memory_properties
        .external_memory_features;
    features.contains(vk::ExternalMemoryFeatureFlags::IMPORTABLE)
        && !features.contains(vk::ExternalMemoryFeatureFlags::DEDICATED_ONLY)
}

/// How the device offers timeline semaphores, if it does.
fn timeline_support(
    instance: &ash::Instance,
    physical: vk::PhysicalDevice,
    api: u32,
    has_extension: bool,
) -> Option<Timeline> {
    let how = if api >= vk::API_VERSION_1_2 {
        Timeline::Core
    } else if has_extension && api >= vk::API_VERSION_1_1 {
        Timeline::Extension
    } else {
        return None;
    };
    let mut timeline = vk::PhysicalDeviceTimelineSemaphoreFeatures::default();
    let mut features = vk::PhysicalDeviceFeatures2::default().push_next(&mut timeline);
    // SAFETY: the device knows the chained structure (Vulkan 1.2 or the
    // extension, checked above), and both outlive the call.
    unsafe { instance.get_physical_device_features2(physical, &mut features) };
    (timeline.timeline_semaphore == vk::TRUE).then_some(how)
}

/// The family of the engine's one queue: the first that runs compute
/// shaders (such a queue transfers too), else the first able to transfer
/// (graphics queues can), and then only COPY and FILL run on the device.
fn queue_family(instance: &ash::Instance, physical: vk::PhysicalDevice) -> Option<u32> {
    // SAFETY: a plain query of a device of `instance`.
    let families = unsafe { instance.get_physical_device_queue_family_properties(physical) };
    let with = |flags: vk::QueueFlags| {
        families
            .iter()
            .position(|f| f.queue_count > 0 && f.queue_flags.intersects(flags))
    };
    let index = with(vk::QueueFlags::COMPUTE)
        .or_else(|| with(vk::QueueFlags::TRANSFER | vk::QueueFlags::GRAPHICS))?;
    u32::try_from(index).ok()
}

/// `minImportedHostPointerAlignment` of a device with the extension.
fn import_alignment(instance: &ash::Instance, physical: vk::PhysicalDevice) -> u64 {
    let mut host = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
    let mut properties = vk::PhysicalDeviceProperties2::default().push_next(&mut host);
    // SAFETY: the device has the extension whose structure is chained; both
    // outlive the call.
    unsafe { instance.get_physical_device_properties2(physical, &mut properties) };
    host.min_imported_host_pointer_alignment
}

fn create_device(instance: &ash::Instance, chosen: &Candidate) -> Result<ash::Device, VulkanError> {
    let priorities = [1.0f32];
    let queues = [vk::DeviceQueueCreateInfo::default()
        .queue_family_index(chosen.family.unwrap_or(0))
        .queue_priorities(&priorities)];
    let mut extensions = vec![HOST_MEMORY.as_ptr()];
    if chosen.timeline == Some(Timeline::Extension) {
        extensions.push(TIMELINE_KHR.as_ptr());
    }
    if chosen.dma_buf {
        extensions.extend([DMA_BUF.as_ptr(), MEMORY_FD.as_ptr()]);
        if chosen.foreign {
            extensions.push(FOREIGN.as_ptr());
        }
    }
    let mut timeline =
        vk::PhysicalDeviceTimelineSemaphoreFeatures::default().timeline_semaphore(true);
    let info = vk::DeviceCreateInfo::default()
        .queue_create_infos(&queues)
        .enabled_extension_names(&extensions)
        .push_next(&mut timeline);
    // SAFETY: the device offers the extensions and the feature asked
    // (`probe`), and `info` and what it points to outlive the call.
    unsafe { instance.create_device(chosen.physical, &info, None) }
        .map_err(vk_error("vkCreateDevice"))
}
