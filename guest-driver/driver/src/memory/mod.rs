// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! "Guest RAM" for the driver: memfd-backed regions at fixed guest-physical
//! addresses, and an allocator of DMA buffers inside them.
//!
//! [`DmaMemory`] is a cheap, clonable handle. All of its regions live in one
//! memfd (region `i` at a page-aligned file offset after region `i - 1`;
//! hugepage memory places its pages in physical order instead), so a
//! transport can hand the whole memory to a device process (vhost-user
//! `SET_MEM_TABLE`) or map it for DMA. Regions may leave holes in the
//! guest-physical space, which fault tests use to build addresses that are not
//! backed by memory.
//!
//! The memfd of [`DmaMemory::sealed`] and [`DmaMemory::with_regions_sealed`]
//! is sealed against shrinking and growing, as QEMU's `memory-backend-memfd`
//! seals guest RAM: a device process can then make host dma-bufs of its pages
//! (udmabuf requires `F_SEAL_SHRINK`). The other constructors leave it
//! unsealed, as cloud-hypervisor's guest memory is.
//!
//! [`DmaBuf`] is an allocated range; it returns itself to the allocator when
//! dropped. The driver never keeps a reference from the device to a buffer: the
//! owner of a buffer must keep it alive while a request that names it is in
//! flight.

mod alloc;
pub mod hugepage;
mod memfd;

use std::ffi::CStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use thiserror::Error;
use vm_memory::mmap::FromRangesError;
use vm_memory::{
    ByteValued, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryError,
    GuestMemoryMmap, GuestRegionMmap,
};

pub use alloc::Error as AllocError;
use alloc::RangeAllocator;
use hugepage::RegionPlacement;
pub use hugepage::{Error as HugepageError, HUGEPAGE_SIZE};

/// Page size assumed for region placement and page-aligned allocations.
pub const PAGE_SIZE: u64 = 4096;

/// Default alignment of [`DmaMemory::alloc`].
pub const DEFAULT_ALIGN: u64 = 64;

/// Errors of guest memory set-up, allocation and access.
#[derive(Debug, Error)]
pub enum Error {
    /// No region was given.
    #[error("guest memory needs at least one region")]
    NoRegions,
    /// A region is empty or not page aligned.
    #[error("region {gpa:#x}+{size:#x} is empty or not page aligned")]
    BadRegion {
        /// Guest-physical start of the region.
        gpa: u64,
        /// Size of the region.
        size: u64,
    },
    /// Two regions overlap, or a region wraps around the address space.
    #[error("region {gpa:#x}+{size:#x} overlaps another region or wraps around")]
    Overlap {
        /// Guest-physical start of the region.
        gpa: u64,
        /// Size of the region.
        size: u64,
    },
    /// The memfd could not be created or sized.
    #[error("cannot create the guest memory file")]
    Memfd(#[source] io::Error),
    /// The memfd could not be mapped.
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// Hugepage memory could not be set up.
    #[error("cannot set up hugepage guest memory")]
    Hugepages(#[from] HugepageError),
    /// The allocator could not satisfy a request.
    #[error("cannot allocate a DMA buffer")]
    Alloc(#[from] AllocError),
    /// An access falls outside its buffer.
    #[error("access {offset:#x}+{len:#x} is outside a buffer of {buf_len:#x} bytes")]
    OutOfBounds {
        /// Offset of the access in the buffer.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Length of the buffer.
        buf_len: usize,
    },
    /// Guest memory could not be read or written (address not backed by a region).
    #[error("guest memory access at {gpa:#x} failed")]
    Access {
        /// Guest-physical address of the access.
        gpa: u64,
        /// Cause.
        #[source]
        source: GuestMemoryError,
    },
}

/// Result of this module's operations.
pub type Result<T> = std::result::Result<T, Error>;

/// One region of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Guest-physical start address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region in the memfd ([`DmaMemory::file`]). The region
    /// is `size` bytes from there, except for [`DmaMemory::hugepages`], where
    /// it is the offset of the region's first hugepage and the next pages may
    /// be anywhere in the file.
    pub file_offset: u64,
    /// Address of the region's mapping in this process.
    pub host_addr: u64,
}

impl MemoryRegion {
    /// Whether `gpa..gpa + len` lies entirely in this region.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.gpa
            && gpa
                .checked_add(len)
                .is_some_and(|end| end <= self.gpa + self.size)
    }
}

struct Inner {
    guest: GuestMemoryMmap,
    file: Arc<File>,
    regions: Vec<MemoryRegion>,
    alloc: Arc<Mutex<RangeAllocator>>,
}

/// Driver-visible guest memory: memfd-backed regions plus a buffer allocator.
///
/// Clones share the same memory and allocator.
#[derive(Clone)]
pub struct DmaMemory {
    inner: Arc<Inner>,
}

impl fmt::Debug for DmaMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaMemory")
            .field("regions", &self.inner.regions)
            .finish_non_exhaustive()
    }
}

fn lock(alloc: &Mutex<RangeAllocator>) -> MutexGuard<'_, RangeAllocator> {
    alloc.lock().unwrap_or_else(PoisonError::into_inner)
}

const MEMFD_NAME: &CStr = c"accel-driver-guest-ram";

/// How the memfd of [`DmaMemory::with_regions_in`] is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sealing {
    /// Not at all (the kernel seals a memfd made without
    /// `MFD_ALLOW_SEALING` against seals).
    None,
    /// Against changes of size, and further seals ([`memfd::SEALS`]).
    Size,
}

impl DmaMemory {
    /// One region of `size` bytes at guest-physical address 0.
    pub fn new(size: usize) -> Result<Self> {
        Self::with_regions(&[(0, size)])
    }

    /// One region of `size` bytes at guest-physical address `base`.
    pub fn with_base(base: u64, size: usize) -> Result<Self> {
        Self::with_regions(&[(base, size)])
    }

    /// Regions `(gpa, size)`, each page aligned and non-empty, in any order,
    /// not overlapping. Addresses between regions are holes.
    pub fn with_regions(regions: &[(u64, usize)]) -> Result<Self> {
        Self::with_regions_in(regions, Sealing::None)
    }

    /// One region of `size` bytes at guest-physical address 0, in a memfd
    /// sealed against shrinking and growing (see
    /// [`with_regions_sealed`](Self::with_regions_sealed)).
    pub fn sealed(size: usize) -> Result<Self> {
        Self::with_regions_sealed(&[(0, size)])
    }

    /// Regions as [`with_regions`](Self::with_regions) lays them out, in a
    /// memfd created with `MFD_ALLOW_SEALING` and sealed with
    /// `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` once sized, the seals of
    /// QEMU's `memory-backend-memfd`: its size never changes, and no one
    /// holding it (a device process) can seal it further, against writes
    /// for one. A device process may then make host dma-bufs of its pages
    /// (udmabuf requires `F_SEAL_SHRINK`, and refuses `F_SEAL_WRITE`).
    /// [`seals`](Self::seals) reads them back.
    pub fn with_regions_sealed(regions: &[(u64, usize)]) -> Result<Self> {
        Self::with_regions_in(regions, Sealing::Size)
    }

    /// The seals of the memfd ([`file`](Self::file)), `F_SEAL_*` bits as
    /// `fcntl(F_GET_SEALS)` reads them: `F_SEAL_SHRINK | F_SEAL_GROW |
    /// F_SEAL_SEAL` for [`sealed`](Self::sealed) memory; `F_SEAL_SEAL` alone
    /// for the memfd of the other constructors, which the kernel seals
    /// against seals.
    pub fn seals(&self) -> io::Result<i32> {
        memfd::seals(&self.inner.file)
    }

    /// Regions as [`with_regions`](Self::with_regions) lays them out, in a
    /// memfd sealed as `sealing` says.
    fn with_regions_in(regions: &[(u64, usize)], sealing: Sealing) -> Result<Self> {
        if regions.is_empty() {
            return Err(Error::NoRegions);
        }
        let mut sorted: Vec<(u64, u64)> = regions.iter().map(|&(g, s)| (g, s as u64)).collect();
        sorted.sort_unstable();
        let mut prev_end = 0u64;
        for (i, &(gpa, size)) in sorted.iter().enumerate() {
            if size == 0 || gpa % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 {
                return Err(Error::BadRegion { gpa, size });
            }
            let end = gpa.checked_add(size).ok_or(Error::Overlap { gpa, size })?;
            if i > 0 && gpa < prev_end {
                return Err(Error::Overlap { gpa, size });
            }
            prev_end = end;
        }
        let total: u64 = sorted.iter().map(|&(_, s)| s).sum();
        let file = match sealing {
            Sealing::None => memfd::create(MEMFD_NAME, total),
            Sealing::Size => memfd::create_sealed(MEMFD_NAME, total),
        }
        .map_err(Error::Memfd)?;
        let mut placements = Vec::with_capacity(sorted.len());
        let mut offset = 0u64;
        for &(gpa, size) in &sorted {
            placements.push(RegionPlacement {
                gpa,
                size,
                file_offset: offset,
            });
            offset += size;
        }
        Self::from_file(file, &placements)
    }

    /// `size` bytes (rounded up to whole 2 MiB pages) of hugepages, each region at its
    /// physical address (guest-physical, in a guest): memory a real device
    /// can DMA to without an IOMMU. Physically contiguous pages form one
    /// region, mapped contiguously in this process whatever their order in the
    /// file; buffers never straddle regions, so a buffer is at most as large
    /// as the largest run (2 MiB at least). Hugetlb pages are never swapped
    /// out (they are not `mlock`ed, see [`hugepage`]). Needs root and reserved hugepages (`/proc/sys/vm/nr_hugepages`); see
    /// [`hugepage`].
    ///
    /// A region's pages need not follow each other in the memfd (the kernel
    /// often hands them out in descending physical order):
    /// [`MemoryRegion::file_offset`] is that of its first page only.
    pub fn hugepages(size: usize) -> Result<Self> {
        let (file, runs) = hugepage::allocate(size)?;
        Self::from_mapped_runs(file, runs)
    }

    /// Guest memory over runs already mapped by [`hugepage::map_run`].
    fn from_mapped_runs(file: File, mut runs: Vec<hugepage::MappedRun>) -> Result<Self> {
        runs.sort_unstable_by_key(|r| r.gpa);
        let mut mapped = Vec::with_capacity(runs.len());
        for run in runs {
            let region = GuestRegionMmap::new(run.region, GuestAddress(run.gpa))
                .ok_or(Error::Map(FromRangesError::InvalidGuestRegion))?;
            mapped.push((region, run.file_offset));
        }
        Self::assemble(Arc::new(file), mapped)
    }

    /// Maps `placements` (sorted by guest-physical address, not overlapping,
    /// page aligned) of `file`.
    fn from_file(file: File, placements: &[RegionPlacement]) -> Result<Self> {
        let file = Arc::new(file);
        let mut mapped = Vec::with_capacity(placements.len());
        for p in placements {
            let len = usize::try_from(p.size).map_err(|_| Error::BadRegion {
                gpa: p.gpa,
                size: p.size,
            })?;
            let region = GuestRegionMmap::<()>::from_range(
                GuestAddress(p.gpa),
                len,
                Some(FileOffset::from_arc(Arc::clone(&file), p.file_offset)),
            )
            .map_err(Error::Map)?;
            mapped.push((region, p.file_offset));
        }
        Self::assemble(file, mapped)
    }

    /// Guest memory of `mapped` regions (with their file offsets), sorted by
    /// guest-physical address, and an allocator over them.
    fn assemble(file: Arc<File>, mapped: Vec<(GuestRegionMmap, u64)>) -> Result<Self> {
        let infos: Vec<MemoryRegion> = mapped
            .iter()
            .map(|(region, file_offset)| MemoryRegion {
                gpa: vm_memory::GuestMemoryRegion::start_addr(region).0,
                size: vm_memory::GuestMemoryRegion::len(region),
                file_offset: *file_offset,
                host_addr: region.as_ptr() as u64,
            })
            .collect();
        let guest = GuestMemoryMmap::from_regions(mapped.into_iter().map(|(r, _)| r).collect())
            .map_err(|e| Error::Map(e.into()))?;
        let ranges: Vec<(u64, u64)> = infos.iter().map(|r| (r.gpa, r.size)).collect();
        let alloc = RangeAllocator::new(&ranges);
        Ok(DmaMemory {
            inner: Arc::new(Inner {
                guest,
                file,
                regions: infos,
                alloc: Arc::new(Mutex::new(alloc)),
            }),
        })
    }

    /// The regions, sorted by guest-physical address.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.inner.regions
    }

    /// The memfd that backs every region (at [`MemoryRegion::file_offset`]).
    pub fn file(&self) -> &File {
        &self.inner.file
    }

    /// The mapped guest memory, for transports and raw accesses.
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.inner.guest
    }

    /// Total size of all regions.
    pub fn size(&self) -> u64 {
        self.inner.regions.iter().map(|r| r.size).sum()
    }

    /// Whether `gpa..gpa + len` lies entirely inside one region.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        self.inner.regions.iter().any(|r| r.contains(gpa, len))
    }

    /// Address in this process of guest-physical `gpa`, if it is backed.
    pub fn host_address(&self, gpa: u64) -> Option<u64> {
        self.inner
            .guest
            .get_host_address(GuestAddress(gpa))
            .ok()
            .map(|p| p as u64)
    }

    /// Free bytes left in the allocator.
    pub fn free_bytes(&self) -> u64 {
        lock(&self.inner.alloc).free_bytes()
    }

    /// Allocates `len` bytes aligned to [`DEFAULT_ALIGN`] (64).
    pub fn alloc(&self, len: usize) -> Result<DmaBuf> {
        self.alloc_aligned(len, DEFAULT_ALIGN)
    }

    /// Allocates `len` bytes aligned to `align` (a power of two).
    pub fn alloc_aligned(&self, len: usize, align: u64) -> Result<DmaBuf> {
        let gpa = lock(&self.inner.alloc).alloc(len as u64, align)?;
        Ok(self.buf(gpa, len))
    }

    /// Allocates `len` bytes aligned to [`PAGE_SIZE`].
    pub fn alloc_pages(&self, len: usize) -> Result<DmaBuf> {
        self.alloc_aligned(len, PAGE_SIZE)
    }

    /// Allocates exactly `gpa..gpa + len`, which must be free.
    pub fn alloc_at(&self, gpa: u64, len: usize) -> Result<DmaBuf> {
        lock(&self.inner.alloc).alloc_at(gpa, len as u64)?;
        Ok(self.buf(gpa, len))
    }

    fn buf(&self, gpa: u64, len: usize) -> DmaBuf {
        DmaBuf {
            gpa,
            len,
            alloc: Arc::clone(&self.inner.alloc),
        }
    }

    fn check(buf: &DmaBuf, offset: usize, len: usize) -> Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= buf.len => Ok(buf.gpa + offset as u64),
            _ => Err(Error::OutOfBounds {
                offset,
                len,
                buf_len: buf.len,
            }),
        }
    }

    /// Writes `data` at `offset` of `buf`.
    pub fn write(&self, buf: &DmaBuf, offset: usize, data: &[u8]) -> Result<()> {
        let gpa = Self::check(buf, offset, data.len())?;
        self.write_at(gpa, data)
    }

    /// Reads `out.len()` bytes at `offset` of `buf`.
    pub fn read(&self, buf: &DmaBuf, offset: usize, out: &mut [u8]) -> Result<()> {
        let gpa = Self::check(buf, offset, out.len())?;
        self.read_at(gpa, out)
    }

    /// Reads `len` bytes at `offset` of `buf` into a new vector.
    pub fn read_vec(&self, buf: &DmaBuf, offset: usize, len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0; len];
        self.read(buf, offset, &mut out)?;
        Ok(out)
    }

    /// Sets every byte of `buf` to `byte`.
    pub fn fill(&self, buf: &DmaBuf, byte: u8) -> Result<()> {
        self.fill_at(buf.gpa, buf.len, byte)
    }

    /// Writes the object `val` at `offset` of `buf`.
    pub fn write_obj<T: ByteValued>(&self, buf: &DmaBuf, offset: usize, val: T) -> Result<()> {
        self.write(buf, offset, val.as_slice())
    }

    /// Reads an object at `offset` of `buf`.
    pub fn read_obj<T: ByteValued>(&self, buf: &DmaBuf, offset: usize) -> Result<T> {
        let gpa = Self::check(buf, offset, std::mem::size_of::<T>())?;
        self.read_obj_at(gpa)
    }

    /// Writes `data` at any guest-physical address (may cross regions, not holes).
    pub fn write_at(&self, gpa: u64, data: &[u8]) -> Result<()> {
        self.inner
            .guest
            .write_slice(data, GuestAddress(gpa))
            .map_err(|source| Error::Access { gpa, source })
    }

    /// Reads at any guest-physical address (may cross regions, not holes).
    pub fn read_at(&self, gpa: u64, out: &mut [u8]) -> Result<()> {
        self.inner
            .guest
            .read_slice(out, GuestAddress(gpa))
            .map_err(|source| Error::Access { gpa, source })
    }

    /// Sets `len` bytes at guest-physical `gpa` to `byte`.
    pub fn fill_at(&self, gpa: u64, len: usize, byte: u8) -> Result<()> {
        const CHUNK: usize = 64 * 1024;
        let chunk = vec![byte; len.min(CHUNK)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            self.write_at(gpa + done as u64, &chunk[..n])?;
            done += n;
        }
        Ok(())
    }

    /// Writes the object `val` at guest-physical `gpa`.
    pub fn write_obj_at<T: ByteValued>(&self, gpa: u64, val: T) -> Result<()> {
        self.write_at(gpa, val.as_slice())
    }

    /// Reads an object at guest-physical `gpa`.
    pub fn read_obj_at<T: ByteValued>(&self, gpa: u64) -> Result<T> {
        self.inner
            .guest
            .read_obj(GuestAddress(gpa))
            .map_err(|source| Error::Access { gpa, source })
    }
}

/// An allocated range of guest memory; freed when dropped.
pub struct DmaBuf {
    gpa: u64,
    len: usize,
    alloc: Arc<Mutex<RangeAllocator>>,
}

impl DmaBuf {
    /// Guest-physical address of the first byte.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty (never, for an allocated buffer).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer as an object segment `(gpa, len)`.
    pub fn segment(&self) -> (u64, u64) {
        (self.gpa, self.len as u64)
    }

    /// Guest-physical address of `offset..offset + len` of this buffer, if in bounds.
    pub fn range(&self, offset: usize, len: usize) -> Option<u64> {
        DmaMemory::check(self, offset, len).ok()
    }
}

impl fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaBuf")
            .field("gpa", &format_args!("{:#x}", self.gpa))
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        if !lock(&self.alloc).free(self.gpa, self.len as u64) {
            log::error!("DMA buffer {:#x}+{:#x} freed twice", self.gpa, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_region_alloc_rw_fill() {
        let mem = DmaMemory::new(1 << 20).unwrap();
        assert_eq!(mem.regions().len(), 1);
        assert_eq!(mem.size(), 1 << 20);
        let a = mem.alloc(100).unwrap();
        let b = mem.alloc_pages(10).unwrap();
        assert_eq!(a.gpa() % 64, 0);
        assert_eq!(b.gpa() % PAGE_SIZE, 0);
        mem.write(&a, 10, b"hello").unwrap();
        let mut out = [0u8; 5];
        mem.read(&a, 10, &mut out).unwrap();
        assert_eq!(&out, b"hello");
        assert!(matches!(
            mem.write(&a, 98, b"xyz"),
            Err(Error::OutOfBounds { .. })
        ));
        mem.fill(&b, 0xab).unwrap();
        assert_eq!(mem.read_vec(&b, 0, 10).unwrap(), vec![0xab; 10]);
        let free = mem.free_bytes();
        drop(a);
        drop(b);
        assert!(mem.free_bytes() > free);
        assert_eq!(mem.free_bytes(), 1 << 20);
    }

    #[test]
    fn memfd_is_shared_with_the_mapping() {
        use std::os::unix::fs::FileExt;
        let mem = DmaMemory::with_regions(&[(0x10_0000, 0x1000), (0, 0x2000)]).unwrap();
        // Sorted by address; file offsets follow that order.
        assert_eq!(mem.regions()[0].gpa, 0);
        assert_eq!(mem.regions()[1].gpa, 0x10_0000);
        assert_eq!(mem.regions()[1].file_offset, 0x2000);
        mem.write_at(0x10_0010, b"abc").unwrap();
        let mut out = [0u8; 3];
        mem.file().read_exact_at(&mut out, 0x2010).unwrap();
        assert_eq!(&out, b"abc");
        assert!(mem.host_address(0x10_0000).is_some());
        assert!(mem.host_address(0x8000).is_none());
    }

    #[test]
    fn sealed_memory_keeps_its_size_and_works() {
        use std::os::unix::fs::FileExt;
        let mem = DmaMemory::with_regions_sealed(&[(0x10_0000, 0x1000), (0, 0x2000)]).unwrap();
        let seals = mem.seals().unwrap();
        let wanted = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        assert_eq!(seals, wanted, "seals {seals:#x}");
        assert_eq!(
            seals & libc::F_SEAL_WRITE,
            0,
            "shared mappings stay writable"
        );
        // Laid out as the unsealed memory is.
        assert_eq!(mem.regions()[1].file_offset, 0x2000);
        assert_eq!(mem.file().metadata().unwrap().len(), 0x3000);
        let errno = |e: io::Error| e.raw_os_error();
        assert_eq!(
            mem.file().set_len(0x1000).map_err(errno),
            Err(Some(libc::EPERM))
        );
        assert_eq!(
            mem.file().set_len(0x4000).map_err(errno),
            Err(Some(libc::EPERM))
        );
        // SAFETY: F_ADD_SEALS takes an integer argument; the result is checked.
        let added = unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(mem.file()),
                libc::F_ADD_SEALS,
                libc::F_SEAL_WRITE,
            )
        };
        assert_eq!(added, -1, "no further seal");
        let buf = mem.alloc_pages(0x1000).unwrap();
        mem.write(&buf, 7, b"sealed").unwrap();
        let mut out = [0u8; 6];
        let region = mem.regions().iter().find(|r| r.contains(buf.gpa(), 1));
        let region = region.unwrap();
        let at = region.file_offset + buf.gpa() - region.gpa + 7;
        mem.file().read_exact_at(&mut out, at).unwrap();
        assert_eq!(&out, b"sealed");
        let one = DmaMemory::sealed(1 << 20).unwrap();
        assert_eq!((one.size(), one.seals().unwrap()), (1 << 20, wanted));
    }

    #[test]
    fn unsealed_memory_stays_so() {
        let mem = DmaMemory::new(1 << 20).unwrap();
        assert_eq!(mem.seals().unwrap(), libc::F_SEAL_SEAL);
        mem.file().set_len(2 << 20).unwrap();
    }

    #[test]
    fn holes_are_not_accessible() {
        let mem = DmaMemory::with_regions(&[(0, 0x1000), (0x4000, 0x1000)]).unwrap();
        assert!(mem.contains(0x4000, 0x1000));
        assert!(!mem.contains(0xf00, 0x200));
        assert!(mem.write_at(0x2000, b"x").is_err());
        let held = mem.alloc_at(0x4800, 0x100).unwrap();
        assert_eq!(held.gpa(), 0x4800);
        assert!(mem.alloc_at(0x4880, 1).is_err());
        assert!(mem.alloc_at(0x2000, 1).is_err());
    }

    #[test]
    fn hugepages_when_the_host_has_them() {
        // 9 pages: the kernel usually hands them out in descending physical
        // order, which must still give regions larger than one page.
        const PAGES: u64 = 9;
        let size = (PAGES * HUGEPAGE_SIZE) as usize;
        let free = hugepage::free_hugepages().unwrap_or(0);
        if free < PAGES {
            // Not enough hugepages reserved: the error must say how to reserve them.
            match DmaMemory::hugepages(size) {
                Err(Error::Hugepages(e)) => {
                    let msg = e.to_string();
                    assert!(msg.contains("/proc/sys/vm/nr_hugepages"), "{msg}");
                    eprintln!("skipped: {free} free hugepages ({msg})");
                }
                Ok(_) => eprintln!("hugepages allocated although HugePages_Free was {free}"),
                Err(e) => panic!("unexpected error: {e}"),
            }
            return;
        }
        let mem = match DmaMemory::hugepages(size) {
            Ok(mem) => mem,
            Err(Error::Hugepages(HugepageError::NoPfn)) => {
                eprintln!("skipped: not root, physical addresses hidden");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(mem.size(), PAGES * HUGEPAGE_SIZE);
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let mut largest = 0;
        for r in mem.regions() {
            assert_eq!(r.gpa % HUGEPAGE_SIZE, 0);
            assert_eq!(r.size % HUGEPAGE_SIZE, 0);
            assert_eq!(r.host_addr % HUGEPAGE_SIZE, 0);
            largest = largest.max(r.size);
            // Every page of the region is where the region says, physically.
            for k in 0..r.size / HUGEPAGE_SIZE {
                let off = k * HUGEPAGE_SIZE;
                let pa = hugepage::physical_address(&pagemap, r.host_addr + off + 123).unwrap();
                assert_eq!(pa, r.gpa + off + 123, "page {k} of region {:#x}", r.gpa);
            }
        }
        eprintln!(
            "{} regions, largest {} MiB: {:x?}",
            mem.regions().len(),
            largest >> 20,
            mem.regions()
        );
        // A buffer as large as the largest run fits.
        let buf = mem.alloc(largest as usize).unwrap();
        assert!(mem.regions().iter().any(|r| r.contains(buf.gpa(), largest)));
        mem.write(&buf, largest as usize - 3, b"dma").unwrap();
        assert_eq!(mem.read_vec(&buf, largest as usize - 3, 3).unwrap(), b"dma");
        drop(buf);
        if largest >= 3 * HUGEPAGE_SIZE {
            // The case that failed with one region per page.
            assert!(mem.alloc(5 << 20).is_ok());
        }
    }

    /// Memory laid out as `DmaMemory::hugepages` lays it out, over ordinary
    /// memfd pages of 2 MiB at file page `i` for physical `phys[i]`.
    fn fake_hugepages(phys: &[u64]) -> DmaMemory {
        let page = HUGEPAGE_SIZE;
        let file = memfd::create(MEMFD_NAME, phys.len() as u64 * page).unwrap();
        let pages: Vec<(u64, u64)> = phys
            .iter()
            .enumerate()
            .map(|(i, &pa)| (pa, i as u64 * page))
            .collect();
        let runs = hugepage::group_runs(&pages, page)
            .iter()
            .map(|run| hugepage::MappedRun {
                gpa: run.gpa,
                file_offset: run.file_offsets[0],
                region: hugepage::map_run(&file, run, page, false).unwrap(),
            })
            .collect();
        DmaMemory::from_mapped_runs(file, runs).unwrap()
    }

    #[test]
    fn descending_hugepages_make_one_region() {
        use std::os::unix::fs::FileExt;
        let page = HUGEPAGE_SIZE;
        // 18 MiB handed out in descending physical order.
        let phys: Vec<u64> = (0..9).map(|i| (0x100 - i) * page).collect();
        let mem = fake_hugepages(&phys);
        assert_eq!(mem.regions().len(), 1);
        let r = mem.regions()[0];
        assert_eq!((r.gpa, r.size), (0xf8 * page, 9 * page));
        assert_eq!(r.file_offset, 8 * page, "file page 8 is physically first");
        let buf = mem.alloc(5 << 20).unwrap();
        assert_eq!(buf.gpa(), 0xf8 * page);
        // Byte 2 MiB + 5 of the region is in the second physical page, file page 7.
        mem.write(&buf, page as usize + 5, b"x").unwrap();
        let mut out = [0u8; 1];
        mem.file().read_exact_at(&mut out, 7 * page + 5).unwrap();
        assert_eq!(&out, b"x");
        assert_eq!(
            mem.host_address(r.gpa + page).unwrap(),
            r.host_addr + page,
            "virtually contiguous"
        );
    }

    #[test]
    fn buffers_never_straddle_hugepage_regions() {
        // Two physically distant "hugepages" (file order differs from physical order).
        let page = HUGEPAGE_SIZE;
        let mem = fake_hugepages(&[7 * page, 3 * page]);
        assert_eq!(mem.regions()[0].gpa, 3 * page);
        assert_eq!(mem.regions()[0].file_offset, page);
        assert!(mem.alloc(page as usize + 1).is_err());
        let a = mem.alloc(page as usize - 64).unwrap();
        let b = mem.alloc(128).unwrap();
        assert_eq!(a.gpa(), 3 * page);
        assert_eq!(b.gpa(), 7 * page, "does not fit after `a`: next region");
    }

    #[test]
    fn bad_regions_are_refused() {
        assert!(matches!(
            DmaMemory::with_regions(&[]),
            Err(Error::NoRegions)
        ));
        assert!(matches!(
            DmaMemory::with_regions(&[(0x10, 0x1000)]),
            Err(Error::BadRegion { .. })
        ));
        assert!(matches!(
            DmaMemory::with_regions(&[(0, 0x2000), (0x1000, 0x1000)]),
            Err(Error::Overlap { .. })
        ));
    }
}
