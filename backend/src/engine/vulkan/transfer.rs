// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! COPY and FILL on the device's queue, over host memory imported
//! with `VK_EXT_external_memory_host`, or objects' dma-bufs imported with
//! `VK_EXT_external_memory_dma_buf`.
//!
//! [`Import::host`] imports a run of host memory: it rounds the run out to
//! `minImportedHostPointerAlignment` (a page on every driver known), imports
//! those pages, and binds a buffer to them, in which the run is a
//! [`Region`] at the offset of its first byte within its first page.
//! [`Import::dma_buf`] imports the pages of an object's dma-buf up to the
//! end of a job's range of it, for the whole job: the range, however
//! scattered the object's segments are in guest memory, is one region.
//!
//! COPY is `vkCmdCopyBuffer`, which takes any offset and size. FILL is
//! `vkCmdFillBuffer` for the 4-byte words of a region, which is all it can
//! write (offsets and sizes multiple of 4); the up to 3 bytes before the
//! first whole word and after the last are copied, on the device too, from
//! a table of the 256 patterns, each repeated 4 times, that the engine
//! imported once. So every byte is written by the device and each exactly
//! once, as the software engine writes them.
//!
//! Jobs run a chunk of at most [`GPU_CHUNK`] bytes per submission, one
//! command buffer each, which signals the engine's timeline semaphore; the
//! engine's thread waits for it, checks for cancellation, and submits the
//! next. A cancelled job thus completes within one chunk's time.
//!
//! # Zero copy
//!
//! A chunk is read and written where it lies, the shared-virtual-addressing
//! model of [`crate::engine`]: the pages its segments touch
//! ([`crate::sg::SgList::segments`]), in the source and the destination
//! together, are imported for that chunk only
//! ([`ChunkImports`]), the commands go between the regions of those
//! imports, and the imports are released once the device is done with the
//! submission, before the job completes (the job, and so the mapping of
//! its lists, lives until then). No byte of the job goes through the CPU.
//!
//! - Pages are imported once per chunk: segments whose page ranges share a
//!   page or adjoin are merged into one import. Importing the same pages
//!   twice is allowed by `VK_EXT_external_memory_host`, but the spec lets
//!   an implementation refuse it for platform reasons, and adjacent
//!   segments of a guest's list share pages all the time.
//! - Imports are never cached by address: the memory behind an address
//!   changes when the guest's memory table does, and only the lists'
//!   keepalive, which is not exposed, says when.
//! - A destination whose segments alias (a guest may give the same bytes
//!   twice) is recorded in [`Order::Serial`], a barrier between commands,
//!   so that the last write of a byte wins, as with the software engine.
//!   A COPY whose input and output overlap never comes here (the queue
//!   sends it to the software engine).
//! - If an import fails (memory a driver cannot pin), the chunk goes
//!   through the staging path below, and the engine says so once.
//! - A job's buffer that is a range of an object's dma-buf, on a device
//!   that imports them, is imported from the dma-buf (udmabuf pinned its
//!   pages already) at the job's first chunk that runs in place, for the
//!   rest of the job, and counts as one piece below; not an output whose
//!   segments share bytes (see [`Order`]). Each submission takes the
//!   import from its other users' queue family and gives it back. If such
//!   an import fails, the engine says so once and imports the pages of
//!   objects like any others' from then on (a chunk already counted as
//!   one piece then imports that side's pages as well).
//!
//! A chunk whose segments average fewer than [`STAGE_SEGMENTS_UNDER`]
//! bytes goes through two staging buffers of the engine instead, imported
//! once: the input is copied into the source staging buffer on the CPU,
//! the device copies or fills, and the output is copied from the
//! destination staging buffer on the CPU (see that constant for why).

use std::ffi::c_void;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd};
use std::ptr::NonNull;
use std::sync::Arc;

use ash::vk;
use log::warn;
use virtio_accel_spec::Status;

use super::gpu::{vk_error, Gpu, IMPORTED_USAGE};
use super::{JobStop, VulkanError};
use crate::command::Operation;
use crate::engine::{BufferIndex, DmaBufRange, Job};
use crate::ops::{Outcome, CANCELLED};
use crate::sg::{HostSeg, SgList};

/// Most bytes one submission copies or fills: with a few GB/s of copy
/// bandwidth, a millisecond or two, which bounds how long a cancelled job
/// runs on.
pub const GPU_CHUNK: usize = 4 << 20;

/// Chunks whose segments average fewer bytes than this (the chunk's length
/// over the number of segments of all its lists, input and output) go
/// through the staging buffers rather than being imported in place.
///
/// Not the import: on lavapipe (Mesa 22.3) an import and its release cost
/// about 0.2 µs whatever the size (4 KiB or 1 MiB, `import_cost` in the
/// tests), against 20 to 90 µs for the submission and wait that every
/// chunk makes anyway, so even a job of one byte loses nothing by it. The
/// cost is per piece: the device runs one region of a copy or one fill per
/// piece of a scatter list, about 0.5 µs each on lavapipe, while staging
/// costs about 0.25 ns a byte (the two CPU copies). For 4 MiB, output one
/// byte off the input, in place against staged: segments of 4 KiB, COPY
/// 1.3 against 1.5 ms and FILL 0.35 against 0.74 ms; of 2 KiB, COPY 2.1
/// against 1.3 ms, FILL 0.8 against 0.9; of 1 KiB, FILL 1.3 against 0.7;
/// of 333 bytes, 15 against 2.8 and 1.3 ms; in one segment, 0.33 against
/// 1.3 ms and 0.43 against 0.9. So a guest's page-sized segments, and
/// anything larger, are imported; lists of small pieces are staged. A
/// device with a cheaper command and a dearer import (pinning pages) would
/// want another balance.
pub const STAGE_SEGMENTS_UNDER: usize = 1536;

/// The FILL patterns: byte `4 * p + i` holds `p`.
const PATTERN_TABLE: usize = 256 * 4;

/// Page-aligned host memory of the engine (an anonymous mapping).
#[derive(Debug)]
pub(super) struct HostAlloc {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: plain private memory, which the owner of the value accesses.
unsafe impl Send for HostAlloc {}

impl HostAlloc {
    /// `len` bytes (at least one page), zeroed.
    pub(super) fn new(len: usize) -> Result<Self, VulkanError> {
        let len = len.max(1);
        // SAFETY: a new private anonymous mapping; no existing memory is
        // touched.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(VulkanError::Memory(std::io::Error::last_os_error()));
        }
        let addr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| VulkanError::Memory(std::io::ErrorKind::OutOfMemory.into()))?;
        Ok(HostAlloc { addr, len })
    }

    /// The memory as a slice. The caller makes sure no device work on it is
    /// pending (the engine's thread submits and waits in turn).
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, owned
        // by `self` (borrowed mutably here), and no device work on it runs
        // meanwhile (the callers wait for each submission).
        unsafe { std::slice::from_raw_parts_mut(self.addr.as_ptr(), self.len) }
    }
}

impl Drop for HostAlloc {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; imports of it
        // are dropped before (`Staging` declares its import first).
        unsafe { libc::munmap(self.addr.as_ptr().cast::<c_void>(), self.len) };
    }
}

/// Memory imported into the device, with a buffer bound to it: a run of
/// host memory ([`Import::host`]) or a range of a dma-buf
/// ([`Import::dma_buf`]).
#[derive(Debug)]
pub(super) struct Import {
    gpu: Arc<Gpu>,
    memory: vk::DeviceMemory,
    buffer: vk::Buffer,
    /// Where the run or range imported starts within `buffer`.
    offset: u64,
    /// Its length.
    len: u64,
}

/// A part of an imported buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Region {
    pub(super) buffer: vk::Buffer,
    pub(super) offset: u64,
    pub(super) len: u64,
}

impl Import {
    /// Imports the `len` bytes (not 0) at `addr`, rounded out to the
    /// device's import alignment.
    ///
    /// # Safety
    ///
    /// The pages the run touches must stay mapped, readable and writable,
    /// and hold the same memory (not be unmapped and mapped again) for as
    /// long as the import lives: a device may keep them pinned, and writes
    /// through it go to them.
    pub(super) unsafe fn host(
        gpu: &Arc<Gpu>,
        addr: usize,
        len: usize,
    ) -> Result<Self, VulkanError> {
        let align = usize::try_from(gpu.import_alignment)
            .map_err(|_| VulkanError::Import("import alignment beyond the address space"))?;
        let base = addr & !(align - 1);
        let end = addr
            .checked_add(len.max(1))
            .and_then(|end| end.checked_add(align - 1))
            .ok_or(VulkanError::Import("run past the end of the address space"))?
            & !(align - 1);
        let types = gpu.host_pointer_types(base as *const c_void)?;
        let mut import = vk::ImportMemoryHostPointerInfoEXT::default()
            .handle_type(vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT)
            .host_pointer(base as *mut c_void);
        // SAFETY: the pages from `base` to `end` are host memory that stays
        // mapped while the import lives (caller), aligned as the device
        // asks.
        unsafe {
            Import::bound(
                gpu,
                (
                    vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT,
                    &mut import,
                ),
                (end - base) as u64,
                types,
                ((addr - base) as u64, len as u64),
                || {},
            )
        }
    }

    /// Imports `range` of an object's dma-buf (§7.1.3), on a device that
    /// imports dma-bufs: its pages from the dma-buf's first, so that the
    /// range lies at its offset in the buffer, whatever the device's
    /// alignment of buffers. The device gets a duplicate of the buffer's
    /// descriptor, and keeps the pages (udmabuf pins them) for as long as
    /// the import lives.
    ///
    /// If the allocation fails, the duplicate is left open: Vulkan leaves
    /// it to the application then, but lavapipe 25.0 closes it, and
    /// closing a number that another thread may have been given since
    /// would close that thread's file. The engine imports no more dma-bufs
    /// after a failure ([`Transfer`]), so at most one is left. On an
    /// error before the allocation, the duplicate is closed.
    pub(super) fn dma_buf(gpu: &Arc<Gpu>, range: &DmaBufRange) -> Result<Self, VulkanError> {
        if range.len == 0 {
            return Err(VulkanError::Import("an empty dma-buf range"));
        }
        let page = crate::memory::page_size();
        // The dma-buf is made of whole pages (`crate::dmabuf`), the range
        // within it: the pages up to the range's end are the dma-buf's.
        let size = range
            .offset
            .checked_add(range.len)
            .and_then(|end| end.checked_next_multiple_of(page))
            .ok_or(VulkanError::Import("a dma-buf range past 2^64 bytes"))?;
        let fd = range
            .buffer
            .as_fd()
            .try_clone_to_owned()
            .map_err(VulkanError::Memory)?;
        let types = gpu.dma_buf_types(fd.as_fd())?;
        let mut import = vk::ImportMemoryFdInfoKHR::default()
            .handle_type(vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT)
            .fd(fd.as_raw_fd());
        // SAFETY: a dma-buf is memory the kernel keeps for as long as a
        // descriptor of it (the device's, once imported) is open, and this
        // one has the range's pages up to `size` (the range lies within
        // the dma-buf, made of whole pages by `crate::dmabuf`).
        unsafe {
            Import::bound(
                gpu,
                (vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT, &mut import),
                size,
                types,
                (range.offset, range.len),
                // The driver's from the allocation on (see above).
                move || {
                    let _ = fd.into_raw_fd();
                },
            )
        }
    }

    /// Allocates `size` bytes of memory imported as `import` (of
    /// `handle_type`), of a host-coherent type among `types`, and binds a
    /// transfer buffer of that size to it, in which `len` bytes at
    /// `offset` are the import's. `handing_over` runs just before the
    /// allocation takes what `import` names.
    ///
    /// # Safety
    ///
    /// `import` must describe memory of at least `size` bytes that stays
    /// valid for as long as the import lives.
    unsafe fn bound<T: vk::ExtendsMemoryAllocateInfo>(
        gpu: &Arc<Gpu>,
        (handle_type, import): (vk::ExternalMemoryHandleTypeFlags, &mut T),
        size: u64,
        types: u32,
        (offset, len): (u64, u64),
        handing_over: impl FnOnce(),
    ) -> Result<Self, VulkanError> {
        let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle_type);
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(IMPORTED_USAGE)
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .push_next(&mut external);
        // SAFETY: `info` and its chain outlive the call.
        let buffer =
            unsafe { gpu.device.create_buffer(&info, None) }.map_err(vk_error("vkCreateBuffer"))?;
        // SAFETY: `buffer` was just made on this device.
        let needs = unsafe { gpu.device.get_buffer_memory_requirements(buffer) };
        let memory_type = gpu
            .coherent_type(types & needs.memory_type_bits)
            .filter(|_| needs.size <= size);
        let Some(memory_type) = memory_type else {
            // SAFETY: `buffer` is unused and destroyed once.
            unsafe { gpu.device.destroy_buffer(buffer, None) };
            return Err(VulkanError::Import(
                "no host-coherent memory type of the import fits a transfer buffer",
            ));
        };
        let allocate = vk::MemoryAllocateInfo::default()
            .allocation_size(size)
            .memory_type_index(memory_type)
            .push_next(import);
        handing_over();
        // SAFETY: `import` is memory of `size` bytes that stays valid while
        // the import lives (caller); `allocate` and its chain outlive the
        // call.
        let memory = match unsafe { gpu.device.allocate_memory(&allocate, None) } {
            Ok(memory) => memory,
            Err(error) => {
                // SAFETY: `buffer` is unused and destroyed once.
                unsafe { gpu.device.destroy_buffer(buffer, None) };
                return Err(VulkanError::Vulkan {
                    what: "vkAllocateMemory (import)",
                    source: error,
                });
            }
        };
        let import = Import {
            gpu: Arc::clone(gpu),
            memory,
            buffer,
            offset,
            len,
        };
        // SAFETY: the memory is as large as the buffer needs, of a type it
        // takes, and neither is bound yet; `import`'s drop frees both.
        unsafe { gpu.device.bind_buffer_memory(buffer, memory, 0) }
            .map_err(vk_error("vkBindBufferMemory"))?;
        Ok(import)
    }

    /// `len` bytes at byte `at` of the run or range imported.
    pub(super) fn region(&self, at: u64, len: u64) -> Region {
        debug_assert!(at + len <= self.len);
        Region {
            buffer: self.buffer,
            offset: self.offset + at,
            len,
        }
    }

    /// The `len` bytes at `at` of a job's buffer that is this import of
    /// its dma-buf range, as its only region.
    fn whole(&self, at: usize, len: usize) -> Result<Vec<Region>, VulkanError> {
        let (at, len) = (at as u64, len as u64);
        if at.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(VulkanError::Import("a chunk past its dma-buf range"));
        }
        Ok(vec![self.region(at, len)])
    }
}

impl Drop for Import {
    fn drop(&mut self) {
        // SAFETY: no submission using the buffer is pending (every one is
        // waited for before its job completes), and both are freed once.
        unsafe {
            self.gpu.device.destroy_buffer(self.buffer, None);
            self.gpu.device.free_memory(self.memory, None);
        }
    }
}

/// Engine memory imported once.
#[derive(Debug)]
struct Staging {
    /// Dropped before `alloc`, whose pages it imports.
    import: Import,
    alloc: HostAlloc,
}

impl Staging {
    fn new(gpu: &Arc<Gpu>, len: usize) -> Result<Self, VulkanError> {
        let alloc = HostAlloc::new(len)?;
        // SAFETY: the mapping is page-aligned, lives as long as `alloc`,
        // which outlives the import (field order), and is never remapped.
        let import = unsafe { Import::host(gpu, alloc.addr.as_ptr() as usize, alloc.len) }?;
        Ok(Staging { import, alloc })
    }
}

/// In what order the commands of a recording must take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// The regions written share no byte (with each other, nor with those
    /// read): the commands may run in any order, or at once.
    Any,
    /// Regions written may share bytes (a guest's list whose descriptors
    /// alias): each command waits for the writes of those before it, so
    /// that the last write of a byte wins, as in the software engine's
    /// in-order writes.
    Serial,
}

impl Order {
    /// The order writing the segments `dst` needs: [`Order::Serial`] if two
    /// of them share a byte.
    pub(super) fn of(dst: &[HostSeg]) -> Order {
        let mut spans: Vec<(usize, usize)> = dst
            .iter()
            .filter(|seg| !seg.is_empty())
            .map(|seg| {
                let start = seg.addr().as_ptr() as usize;
                (start, start.saturating_add(seg.len()))
            })
            .collect();
        spans.sort_unstable();
        // Sorted by start, a span shares a byte with an earlier one if and
        // only if it starts before the furthest end so far.
        let mut end = 0;
        for (start, stop) in spans {
            if start < end {
                return Order::Serial;
            }
            end = end.max(stop);
        }
        Order::Any
    }

    /// Records, in `Serial` order, a barrier between a command and the
    /// next.
    fn between(self, device: &ash::Device, cmd: vk::CommandBuffer) {
        if self == Order::Any {
            return;
        }
        let barrier = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE)];
        // SAFETY: `cmd` is recording (caller); a global memory barrier
        // between transfer commands refers to no object.
        unsafe {
            device.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::TRANSFER,
                vk::DependencyFlags::empty(),
                &barrier,
                &[],
                &[],
            );
        }
    }
}

/// The pages the segments of a chunk's lists touch, imported for the
/// chunk: runs of pages that segments share, or that adjoin, are one
/// import, so that no page is imported twice.
#[derive(Debug)]
pub(super) struct ChunkImports<'a> {
    /// The imports, by the address of their first page, ascending and
    /// disjoint.
    runs: Vec<(usize, Import)>,
    /// The lists imported, which keep the memory mapped, outlive the
    /// imports.
    _lists: PhantomData<&'a SgList>,
}

impl<'a> ChunkImports<'a> {
    /// Imports the pages the segments of `lists` touch.
    ///
    /// # Safety
    ///
    /// Those pages must stay mapped, and hold the same memory, for as long
    /// as the value lives, as [`Import::host`] requires: the lists (or
    /// lists sharing their keepalive) must outlive it.
    pub(super) unsafe fn new(gpu: &Arc<Gpu>, lists: &[&'a SgList]) -> Result<Self, VulkanError> {
        let align = usize::try_from(gpu.import_alignment)
            .map_err(|_| VulkanError::Import("import alignment beyond the address space"))?;
        let mut spans = Vec::new();
        for seg in lists
            .iter()
            .flat_map(|list| list.segments())
            .filter(|seg| !seg.is_empty())
        {
            let start = seg.addr().as_ptr() as usize;
            let end = start
                .checked_add(seg.len())
                .and_then(|end| end.checked_add(align - 1))
                .ok_or(VulkanError::Import("run past the end of the address space"))?
                & !(align - 1);
            spans.push((start & !(align - 1), end));
        }
        spans.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let mut runs = Vec::with_capacity(merged.len());
        for (start, end) in merged {
            // SAFETY: every page from `start` to `end` holds a byte of a
            // segment (the runs are unions of the segments' pages), so it
            // is mapped while the lists live, which the caller vouches
            // outlive `self`.
            runs.push((start, unsafe { Import::host(gpu, start, end - start) }?));
        }
        Ok(ChunkImports {
            runs,
            _lists: PhantomData,
        })
    }

    /// How many imports were made.
    pub(super) fn count(&self) -> usize {
        self.runs.len()
    }

    /// The regions of the segments of `list`, one of the lists imported.
    pub(super) fn regions(&self, list: &SgList) -> Result<Vec<Region>, VulkanError> {
        list.segments()
            .iter()
            .filter(|seg| !seg.is_empty())
            .map(|seg| {
                let start = seg.addr().as_ptr() as usize;
                let index = self.runs.partition_point(|(first, _)| *first <= start);
                let (first, import) = index
                    .checked_sub(1)
                    .and_then(|index| self.runs.get(index))
                    .ok_or(VulkanError::Import("a segment outside the chunk's imports"))?;
                let at = (start - first) as u64;
                let len = seg.len() as u64;
                if at + len > import.len {
                    return Err(VulkanError::Import("a segment outside the chunk's imports"));
                }
                Ok(import.region(at, len))
            })
            .collect()
    }
}

/// Records a copy from `src` to `dst`, walked side by side like
/// [`SgList::copy_to`], of as many bytes as the shorter holds, in `order`.
///
/// In [`Order::Any`], consecutive pieces between the same two buffers are
/// one `vkCmdCopyBuffer` of many regions (a chunk's segments mostly lie in
/// one import each side): legal as the regions written share no byte, nor
/// any with those read. In [`Order::Serial`], one command per piece, with a
/// barrier between each.
pub(super) fn record_copy(
    device: &ash::Device,
    cmd: vk::CommandBuffer,
    src: &[Region],
    dst: &[Region],
    order: Order,
) {
    let mut src = src.iter().copied().filter(|r| r.len > 0);
    let mut dst = dst.iter().copied().filter(|r| r.len > 0);
    let (mut s, mut d) = (src.next(), dst.next());
    // The buffers of the pieces batched, and the pieces.
    let mut pair: Option<(vk::Buffer, vk::Buffer)> = None;
    let mut batch: Vec<vk::BufferCopy> = Vec::new();
    let flush = |pair: Option<(vk::Buffer, vk::Buffer)>, batch: &mut Vec<vk::BufferCopy>| {
        if let Some((from, to)) = pair.filter(|_| !batch.is_empty()) {
            // SAFETY: `cmd` is recording (caller); both buffers are live
            // imports of the regions given, each piece within both, and
            // the pieces written share no byte with each other or with
            // those read (`Order::Any`), or there is one (`Serial`).
            unsafe { device.cmd_copy_buffer(cmd, from, to, batch) };
            batch.clear();
        }
    };
    while let (Some(from), Some(to)) = (s, d) {
        let n = from.len.min(to.len);
        let this = Some((from.buffer, to.buffer));
        if pair != this || order == Order::Serial {
            let recorded = pair.is_some();
            flush(pair, &mut batch);
            if recorded {
                order.between(device, cmd);
            }
            pair = this;
        }
        batch.push(vk::BufferCopy {
            src_offset: from.offset,
            dst_offset: to.offset,
            size: n,
        });
        s = advance(from, n).or_else(|| src.next());
        d = advance(to, n).or_else(|| dst.next());
    }
    flush(pair, &mut batch);
}

/// What is left of `region` after its first `n` bytes, if anything.
fn advance(region: Region, n: u64) -> Option<Region> {
    (region.len > n).then_some(Region {
        buffer: region.buffer,
        offset: region.offset + n,
        len: region.len - n,
    })
}

/// Records a fill of every byte of `dst` with `pattern`: whole words with
/// `vkCmdFillBuffer`, the bytes around them copied from `table`, the
/// pattern table. In [`Order::Any`] the edges of all regions are one
/// batched copy after the fills; in [`Order::Serial`] each region is done
/// (fill and edges, which write different bytes) before the next begins.
pub(super) fn record_fill(
    device: &ash::Device,
    cmd: vk::CommandBuffer,
    dst: &[Region],
    pattern: u8,
    table: Region,
    order: Order,
) {
    let source = |len: u64| Region {
        buffer: table.buffer,
        offset: table.offset + 4 * u64::from(pattern),
        len,
    };
    let word = u32::from_ne_bytes([pattern; 4]);
    let (mut from, mut to) = (Vec::new(), Vec::new());
    for (index, region) in dst.iter().filter(|r| r.len > 0).enumerate() {
        if index > 0 {
            order.between(device, cmd);
        }
        let head = ((4 - region.offset % 4) % 4).min(region.len);
        let words = (region.len - head) & !3;
        let tail = region.len - head - words;
        if words > 0 {
            // SAFETY: `cmd` is recording (caller); offset and size are
            // multiples of 4 within the live buffer of `region`.
            unsafe {
                device.cmd_fill_buffer(cmd, region.buffer, region.offset + head, words, word);
            }
        }
        for (offset, len) in [(region.offset, head), (region.offset + head + words, tail)] {
            if len > 0 {
                from.push(source(len));
                to.push(Region {
                    buffer: region.buffer,
                    offset,
                    len,
                });
            }
        }
        if order == Order::Serial {
            record_copy(device, cmd, &from, &to, Order::Any);
            from.clear();
            to.clear();
        }
    }
    record_copy(device, cmd, &from, &to, Order::Any);
}

/// What the engine did with the bytes of the jobs it ran: how zero-copy
/// they were.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counters {
    /// Chunks run on their own memory, imported in place.
    pub(super) in_place: u64,
    /// Imports those chunks made.
    pub(super) imports: u64,
    /// Chunks run through the staging buffers.
    pub(super) staged: u64,
    /// Bytes the CPU copied between jobs' buffers and the staging buffers.
    pub(super) staged_bytes: u64,
    /// Chunks staged because their memory could not be imported.
    pub(super) import_failures: u64,
    /// Buffers imported whole from their objects' dma-bufs.
    pub(super) dma_buf_imports: u64,
}

/// The engine thread's means to run COPY and FILL: a command buffer, the
/// timeline semaphore its submissions signal, and the engine's imported
/// memory.
pub(super) struct Transfer {
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    timeline: vk::Semaphore,
    /// The value the last submission signals.
    value: u64,
    patterns: Staging,
    src: Staging,
    dst: Staging,
    /// Chunks whose segments are shorter than this on average are staged:
    /// [`STAGE_SEGMENTS_UNDER`], but for tests.
    stage_under: usize,
    /// Whether buffers that are ranges of objects' dma-bufs are imported
    /// as such: the device can, and no such import has failed.
    dma_bufs: bool,
    counters: Counters,
    /// Dropped last: the objects above are of its device.
    gpu: Arc<Gpu>,
}

impl Transfer {
    /// Makes the command buffer, the semaphore and the staging memory.
    pub(super) fn new(gpu: &Arc<Gpu>) -> Result<Self, VulkanError> {
        let patterns = Staging::new(gpu, PATTERN_TABLE)?;
        let src = Staging::new(gpu, GPU_CHUNK)?;
        let dst = Staging::new(gpu, GPU_CHUNK)?;
        let pool_info = vk::CommandPoolCreateInfo::default()
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER)
            .queue_family_index(gpu.family);
        // SAFETY: `pool_info` outlives the call.
        let pool = unsafe { gpu.device.create_command_pool(&pool_info, None) }
            .map_err(vk_error("vkCreateCommandPool"))?;
        // From here on, `transfer`'s drop frees what was made.
        let mut transfer = Transfer {
            pool,
            cmd: vk::CommandBuffer::null(),
            timeline: vk::Semaphore::null(),
            value: 0,
            patterns,
            src,
            dst,
            stage_under: STAGE_SEGMENTS_UNDER,
            dma_bufs: gpu.memory_fd.is_some(),
            counters: Counters::default(),
            gpu: Arc::clone(gpu),
        };
        transfer.cmd = gpu.command_buffer(pool)?;
        transfer.timeline = gpu.timeline_semaphore()?;
        for (word, pattern) in transfer
            .patterns
            .alloc
            .bytes()
            .chunks_exact_mut(4)
            .zip(0..=u8::MAX)
        {
            word.fill(pattern);
        }
        Ok(transfer)
    }

    /// Runs one tiny copy and fill, unaligned, so that the driver has made
    /// all it makes on a first submission (lavapipe's code generation)
    /// before the process is sandboxed.
    pub(super) fn warm_up(&mut self) -> Result<(), VulkanError> {
        let src = self.src.import.region(1, 11);
        let dst = self.dst.import.region(3, 11);
        let table = self.table();
        self.run(|device, cmd| {
            record_copy(device, cmd, &[src], &[dst], Order::Any);
            // The fill writes what the copy wrote.
            Order::Serial.between(device, cmd);
            record_fill(device, cmd, &[dst], 0x5a, table, Order::Any);
        })
    }

    pub(super) fn table(&self) -> Region {
        self.patterns.import.region(0, PATTERN_TABLE as u64)
    }

    /// What the jobs run so far did.
    #[cfg(test)]
    pub(super) fn counters(&self) -> Counters {
        self.counters
    }

    /// Stages chunks whose segments average fewer than `len` bytes instead
    /// of [`STAGE_SEGMENTS_UNDER`]: 0 imports every chunk, `usize::MAX`
    /// none.
    #[cfg(test)]
    pub(super) fn stage_segments_under(&mut self, len: usize) {
        self.stage_under = len;
    }

    /// Whether every byte of the staging buffers is 0, as they are made:
    /// no job went through them.
    #[cfg(test)]
    pub(super) fn staging_untouched(&mut self) -> bool {
        let zero = |staging: &mut Staging| staging.alloc.bytes().iter().all(|&b| b == 0);
        zero(&mut self.src) && zero(&mut self.dst)
    }

    /// Records what `record` records in the command buffer, submits it,
    /// and waits until the device has run it and its writes are visible to
    /// the host ([`Gpu::run_recorded`]).
    pub(super) fn run(
        &mut self,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<(), VulkanError> {
        self.gpu.run_recorded(
            self.cmd,
            (self.timeline, &mut self.value),
            (
                vk::PipelineStageFlags::TRANSFER,
                vk::AccessFlags::TRANSFER_WRITE,
            ),
            record,
        )
    }

    /// Runs a COPY or FILL job, a chunk per submission, asking `cancelled`
    /// before each; also says how many of its buffers went through their
    /// objects' dma-bufs. Other operations fail: the queue does not send
    /// them.
    pub(super) fn run_job(&mut self, job: &Job, cancelled: &dyn Fn() -> bool) -> (Outcome, u8) {
        let dma_bufs = self.dma_bufs;
        let (result, imported) = match (&job.operation, job.inputs(), job.outputs()) {
            (Operation::Copy, [src], [dst]) => {
                let mut sides = [
                    Side::new(job, src, BufferIndex::Input(0), dma_bufs),
                    Side::new(job, dst, BufferIndex::Output(0), dma_bufs),
                ];
                let result = self.copy(&mut sides, cancelled);
                (result, Side::imported(&sides))
            }
            (Operation::Fill { pattern }, [], [dst]) => {
                let mut sides = [Side::new(job, dst, BufferIndex::Output(0), dma_bufs)];
                let result = self.fill(&mut sides, *pattern, cancelled);
                (result, Side::imported(&sides))
            }
            _ => (Err(JobStop::Status(Status::DeviceError)), 0),
        };
        let outcome = match result {
            Ok(written) => Outcome {
                bytes_written: written as u64,
                ..Outcome::failed(Status::Ok)
            },
            Err(stop) => stop.outcome(),
        };
        (outcome, imported)
    }

    /// Copies `src` to `dst` (the two share no byte: the queue sends a
    /// COPY whose input and output overlap to the software engine).
    fn copy(
        &mut self,
        [src, dst]: &mut [Side<'_>; 2],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<usize, JobStop> {
        let (src_len, dst_len) = (src.list.len(), dst.list.len());
        if dst_len < src_len {
            return Err(JobStop::Status(Status::NoSpace));
        }
        in_chunks(src_len, cancelled, |at, n| {
            let (from, to) = src
                .list
                .slice(at, n)
                .zip(dst.list.slice(at, n))
                .ok_or(JobStop::Status(Status::DeviceError))?;
            if let Some(imports) = self.import(&mut [&mut *src, &mut *dst], &[&from, &to], n) {
                let regions_from = src.regions(&imports, &from, at)?;
                let regions_to = dst.regions(&imports, &to, at)?;
                let order = dst.order(&to);
                let shared = Side::shared(&self.gpu, &[&*src, &*dst]);
                self.run(|device, cmd| {
                    shared.record(device, cmd, Ownership::Acquire);
                    record_copy(device, cmd, &regions_from, &regions_to, order);
                    shared.record(device, cmd, Ownership::Release);
                })?;
                // Released only now that the device is done, while the
                // lists (and the job's) keep the memory mapped.
                drop(imports);
                return Ok(());
            }
            from.read_into(self.src.alloc.bytes().get_mut(..n).unwrap_or_default());
            let (staged_from, staged_to) = (
                self.src.import.region(0, n as u64),
                self.dst.import.region(0, n as u64),
            );
            self.run(|device, cmd| {
                record_copy(device, cmd, &[staged_from], &[staged_to], Order::Any);
            })?;
            to.write_from(self.dst.alloc.bytes().get(..n).unwrap_or_default());
            self.counters.staged_bytes += 2 * n as u64;
            Ok(())
        })?;
        Ok(src_len)
    }

    /// Fills `dst` with `pattern`.
    fn fill(
        &mut self,
        [dst]: &mut [Side<'_>; 1],
        pattern: u8,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<usize, JobStop> {
        let table = self.table();
        let len = dst.list.len();
        in_chunks(len, cancelled, |at, n| {
            let to = dst
                .list
                .slice(at, n)
                .ok_or(JobStop::Status(Status::DeviceError))?;
            if let Some(imports) = self.import(&mut [&mut *dst], &[&to], n) {
                let regions = dst.regions(&imports, &to, at)?;
                let order = dst.order(&to);
                let shared = Side::shared(&self.gpu, &[&*dst]);
                self.run(|device, cmd| {
                    shared.record(device, cmd, Ownership::Acquire);
                    record_fill(device, cmd, &regions, pattern, table, order);
                    shared.record(device, cmd, Ownership::Release);
                })?;
                // As in `copy`.
                drop(imports);
                return Ok(());
            }
            let staged = self.dst.import.region(0, n as u64);
            self.run(|device, cmd| {
                record_fill(device, cmd, &[staged], pattern, table, Order::Any);
            })?;
            to.write_from(self.dst.alloc.bytes().get(..n).unwrap_or_default());
            self.counters.staged_bytes += n as u64;
            Ok(())
        })?;
        Ok(len)
    }

    /// The imports of a chunk of `len` bytes, `chunks[i]` of `sides[i]`,
    /// or `None` if it is to be staged: its pieces (one for a side that
    /// goes through its dma-buf, else its segments) average fewer than
    /// `stage_under` bytes, or its memory could not be imported (said
    /// once in the log). A side that goes through its dma-buf is imported
    /// from it at its first chunk run in place, for the rest of the job;
    /// the pages of the others are imported for the chunk. The imports
    /// borrow the lists.
    fn import<'a>(
        &mut self,
        sides: &mut [&mut Side<'_>],
        chunks: &[&'a SgList],
        len: usize,
    ) -> Option<ChunkImports<'a>> {
        debug_assert_eq!(sides.len(), chunks.len());
        let pieces: usize = sides
            .iter()
            .zip(chunks)
            .map(|(side, chunk)| side.pieces(chunk))
            .sum();
        if len < self.stage_under.saturating_mul(pieces) {
            self.counters.staged += 1;
            return None;
        }
        for side in sides.iter_mut() {
            self.import_dma_buf(side);
        }
        let lists: Vec<&SgList> = sides
            .iter()
            .zip(chunks)
            .filter(|(side, _)| side.import.is_none())
            .map(|(_, chunk)| *chunk)
            .collect();
        // SAFETY: the lists are the chunk's, sliced from the job's, which
        // the engine holds until it posts the completion; the imports
        // borrow them, so are dropped first, and the callers drop them once
        // the device is done with them (`run` waits, or idles the device).
        match unsafe { ChunkImports::new(&self.gpu, &lists) } {
            Ok(imports) => {
                self.counters.in_place += 1;
                self.counters.imports += imports.count() as u64;
                Some(imports)
            }
            Err(error) => {
                if self.counters.import_failures == 0 {
                    log::warn!(
                        "vulkan engine: {error}; jobs whose memory cannot be imported go \
                         through the engine's staging memory"
                    );
                }
                self.counters.import_failures += 1;
                self.counters.staged += 1;
                None
            }
        }
    }

    /// Imports `side` from its object's dma-buf if it goes through it and
    /// is not imported yet. After a failed import, none is tried again
    /// (see [`Import::dma_buf`]): the side, and every later one, has its
    /// pages imported like any others'.
    fn import_dma_buf(&mut self, side: &mut Side<'_>) {
        if !self.dma_bufs {
            side.range = None;
        }
        let Some(range) = side.range.filter(|_| side.import.is_none()) else {
            return;
        };
        match Import::dma_buf(&self.gpu, range) {
            Ok(import) => {
                self.counters.dma_buf_imports += 1;
                side.import = Some(import);
            }
            Err(error) => {
                warn!(
                    "vulkan engine: cannot import an object's dma-buf ({}); objects' pages are \
                     imported as host memory from now on",
                    crate::error_chain(&error)
                );
                self.dma_bufs = false;
                side.range = None;
            }
        }
    }
}

/// A buffer of a job as its chunks take it: its list, and the range of an
/// object's dma-buf it goes through, if it does, with that range's import
/// once made ([`Transfer::import`]).
struct Side<'j> {
    list: &'j SgList,
    range: Option<&'j DmaBufRange>,
    import: Option<Import>,
}

impl<'j> Side<'j> {
    /// Buffer `index` of `job`, whose list is `list`. It goes through its
    /// object's dma-buf if it has one, `dma_bufs` (the device imports
    /// them), and, for an output, if no two of its segments share a byte:
    /// the last write of such a byte must win, as in the software engine,
    /// which one region of the dma-buf (where the byte is twice) cannot
    /// order ([`Order`]).
    fn new(job: &'j Job, list: &'j SgList, index: BufferIndex, dma_bufs: bool) -> Self {
        let written = matches!(index, BufferIndex::Output(_));
        let range = job
            .dma_buf(index)
            .filter(|_| dma_bufs)
            .filter(|_| !written || Order::of(list.segments()) == Order::Any);
        Side {
            list,
            range,
            import: None,
        }
    }

    /// How many pieces `chunk` of it is to the device: one through the
    /// dma-buf, else its segments.
    fn pieces(&self, chunk: &SgList) -> usize {
        if self.range.is_some() {
            1
        } else {
            chunk.segments().len()
        }
    }

    /// The regions of `chunk` of it, at byte `at`: the chunk's part of its
    /// dma-buf's import if it has one, else those of its segments in
    /// `imports`.
    fn regions(
        &self,
        imports: &ChunkImports<'_>,
        chunk: &SgList,
        at: usize,
    ) -> Result<Vec<Region>, VulkanError> {
        match &self.import {
            Some(import) => import.whole(at, chunk.len()),
            None => imports.regions(chunk),
        }
    }

    /// The order writing `chunk` of it needs: [`Order::Any`] through its
    /// dma-buf (one region; its segments share no byte, [`Side::new`]),
    /// else [`Order::of`] its segments.
    fn order(&self, chunk: &SgList) -> Order {
        match self.import {
            Some(_) => Order::Any,
            None => Order::of(chunk.segments()),
        }
    }

    /// The dma-buf imports among `sides`, which change hands between
    /// `gpu`'s queue and the buffers' other users.
    fn shared(gpu: &Gpu, sides: &[&Side<'_>]) -> SharedBuffers {
        SharedBuffers {
            buffers: sides
                .iter()
                .filter_map(|side| side.import.as_ref().map(|import| import.buffer))
                .collect(),
            family: gpu.family,
            other_users: gpu.other_users,
        }
    }

    /// How many of `sides` went through their dma-bufs.
    fn imported(sides: &[Side<'_>]) -> u8 {
        sides
            .iter()
            .map(|side| u8::from(side.import.is_some()))
            .sum()
    }
}

/// Which way [`SharedBuffers::record`] moves buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ownership {
    /// From the other drivers sharing the memory to the engine's queue.
    Acquire,
    /// Back.
    Release,
}

/// Imports of dma-bufs that a submission uses: buffers whose memory other
/// users share (the guest, through the CPU, and other drivers), whose
/// contents Vulkan keeps only across transfers of ownership between their
/// queue family and the engine's.
struct SharedBuffers {
    buffers: Vec<vk::Buffer>,
    /// The engine's queue family.
    family: u32,
    /// The other users' ([`Gpu::other_users`]).
    other_users: u32,
}

impl SharedBuffers {
    /// Records the transfer of the buffers `way`; nothing for no buffer.
    fn record(&self, device: &ash::Device, cmd: vk::CommandBuffer, way: Ownership) {
        if !self.buffers.is_empty() {
            record_ownership(
                device,
                cmd,
                (self.family, self.other_users),
                &self.buffers,
                way,
            );
        }
    }
}

/// Records the transfer of `buffers` between the engine's queue family and
/// the other users' (`families`), `way`.
fn record_ownership(
    device: &ash::Device,
    cmd: vk::CommandBuffer,
    (family, other_users): (u32, u32),
    buffers: &[vk::Buffer],
    way: Ownership,
) {
    let transfer = vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE;
    let (from, to, access, stages) = match way {
        Ownership::Acquire => (
            other_users,
            family,
            (vk::AccessFlags::empty(), transfer),
            (
                vk::PipelineStageFlags::TOP_OF_PIPE,
                vk::PipelineStageFlags::TRANSFER,
            ),
        ),
        Ownership::Release => (
            family,
            other_users,
            (vk::AccessFlags::TRANSFER_WRITE, vk::AccessFlags::empty()),
            (
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::BOTTOM_OF_PIPE,
            ),
        ),
    };
    let barriers: Vec<vk::BufferMemoryBarrier> = buffers
        .iter()
        .map(|&buffer| {
            vk::BufferMemoryBarrier::default()
                .src_access_mask(access.0)
                .dst_access_mask(access.1)
                .src_queue_family_index(from)
                .dst_queue_family_index(to)
                .buffer(buffer)
                .offset(0)
                .size(vk::WHOLE_SIZE)
        })
        .collect();
    // SAFETY: `cmd` is recording (caller); the buffers are live imports
    // of external memory, whole, and `other_users` is a family the device
    // takes (FOREIGN only with its extension enabled).
    unsafe {
        device.cmd_pipeline_barrier(
            cmd,
            stages.0,
            stages.1,
            vk::DependencyFlags::empty(),
            &[],
            &barriers,
            &[],
        );
    }
}

/// Calls `f(offset, len)` on `total` bytes a chunk of at most
/// [`GPU_CHUNK`] at a time, asking `cancelled` before each (once for an
/// empty job, as the software engine does).
fn in_chunks(
    total: usize,
    cancelled: &dyn Fn() -> bool,
    mut f: impl FnMut(usize, usize) -> Result<(), JobStop>,
) -> Result<(), JobStop> {
    let mut at = 0;
    loop {
        if cancelled() {
            return Err(JobStop::Status(CANCELLED));
        }
        let n = (total - at).min(GPU_CHUNK);
        if n > 0 {
            f(at, n)?;
        }
        at += n;
        if at >= total {
            return Ok(());
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let c = self.counters;
        log::debug!(
            "vulkan engine: {} chunks run in place ({} imports), {} staged ({} bytes \
             copied by the CPU; {} for want of an import); {} buffers imported from \
             objects' dma-bufs",
            c.in_place,
            c.imports,
            c.staged,
            c.staged_bytes,
            c.import_failures,
            c.dma_buf_imports
        );
        // SAFETY: every submission was waited for (or failed; waiting for
        // the device's idle covers those), so neither object is in use;
        // null handles are ignored by the destroy calls.
        unsafe {
            let _ = self.gpu.device.device_wait_idle();
            self.gpu.device.destroy_semaphore(self.timeline, None);
            self.gpu.device.destroy_command_pool(self.pool, None);
        }
    }
}
