// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! 2 MiB hugepages at known physical addresses, for DMA by a real device.
//!
//! A device driven through `uio_pci_generic` (no IOMMU) is given physical
//! addresses; in a guest those are guest-physical, which is what the device
//! wants. The memory is a hugetlbfs memfd (`MFD_HUGETLB | MFD_HUGE_2MB`), so
//! the pages cannot be swapped out or split and each 2 MiB page is physically
//! contiguous. Every page is faulted in through a temporary mapping and its
//! physical address read from `/proc/self/pagemap`
//! (Documentation/admin-guide/mm/pagemap.rst), which shows page frame numbers
//! only to `CAP_SYS_ADMIN`.
//!
//! The kernel hands out hugepages in no particular physical order (often
//! descending: file page `i` at `P - i * 2 MiB`), so mapping the file
//! linearly would split physically contiguous memory into 2 MiB pieces. As
//! DPDK's legacy memory mode does, the pages are sorted by physical address
//! and grouped into physically contiguous runs ([`group_runs`]); each run gets
//! one virtual range (a `PROT_NONE` reservation) into which every page is
//! mapped `MAP_FIXED` from its file offset, in physical order. A run is then
//! contiguous physically and virtually, and becomes one guest memory region.
//! The physical address of every page of the final mappings is checked again.
//!
//! The pages are not `mlock`ed: hugetlb pages are never swapped out or
//! reclaimed while the file holds them, and Linux ignores `mlock` on hugetlb
//! mappings anyway (`mlock_fixup` leaves `VM_LOCKED` unset for them, so the
//! call could only fail on `RLIMIT_MEMLOCK`). Neither prevents migration: the
//! kernel may still migrate hugetlb pages (memory hot-unplug, contiguous
//! allocations); as for DPDK's legacy memory mode, this is accepted.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use thiserror::Error;
use vm_memory::mmap::{MmapRegion, MmapRegionBuilder, MmapRegionError};

/// Size of the hugepages used.
pub const HUGEPAGE_SIZE: u64 = 2 << 20;

/// Base page size, the unit of `/proc/self/pagemap` entries and PFNs.
const BASE_PAGE: u64 = 4096;

/// `/proc/self/pagemap` bit: the page is present in RAM.
pub const PAGEMAP_PRESENT: u64 = 1 << 63;
/// `/proc/self/pagemap` bits 0..=54: the page frame number.
pub const PAGEMAP_PFN_MASK: u64 = (1 << 55) - 1;

const PAGEMAP: &str = "/proc/self/pagemap";
const NAME: &CStr = c"accel-driver-hugepages";

/// Errors of hugepage allocation.
#[derive(Debug, Error)]
pub enum Error {
    /// The size is zero (or too large).
    #[error("hugepage memory size {0:#x} is zero or too large")]
    Size(usize),
    /// The hugetlbfs memfd could not be created.
    #[error(
        "cannot create a 2 MiB hugetlbfs memfd (the kernel needs CONFIG_HUGETLBFS and \
         2 MiB pages; reserve some with `echo N > /proc/sys/vm/nr_hugepages`)"
    )]
    Memfd(#[source] io::Error),
    /// Not enough free hugepages (ENOMEM/EINVAL when mapping or faulting).
    #[error(
        "cannot get {pages} free 2 MiB hugepages: reserve them as root with \
         `echo {pages} > /proc/sys/vm/nr_hugepages` (or more; see HugePages_Free in /proc/meminfo)"
    )]
    NoHugepages {
        /// Hugepages needed.
        pages: u64,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `/proc/self/pagemap` could not be read.
    #[error("cannot read {PAGEMAP}")]
    Pagemap(#[source] io::Error),
    /// A page is not present although it was just touched.
    #[error("page at {vaddr:#x} is not present in {PAGEMAP}")]
    NotPresent {
        /// Virtual address.
        vaddr: u64,
    },
    /// The kernel hides page frame numbers without `CAP_SYS_ADMIN`.
    #[error("{PAGEMAP} shows no physical addresses (PFN 0): run as root (CAP_SYS_ADMIN)")]
    NoPfn,
    /// A hugepage's physical address is not 2 MiB aligned.
    #[error("hugepage at physical address {0:#x} is not 2 MiB aligned")]
    Misaligned(u64),
    /// The virtual range of a run could not be reserved.
    #[error("cannot reserve {len:#x} bytes of address space for a hugepage run")]
    Reserve {
        /// Bytes.
        len: usize,
        /// Cause.
        #[source]
        source: MmapRegionError,
    },
    /// A page could not be mapped at its place in its run.
    #[error("cannot map the hugepage at file offset {file_offset:#x} into its run")]
    Remap {
        /// Offset of the page in the memfd.
        file_offset: u64,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// After mapping, a page is not at the physical address it had before
    /// (the kernel migrated it in between).
    #[error("hugepage expected at physical {expected:#x} is now at {found:#x}")]
    Moved {
        /// Physical address when the pages were sorted.
        expected: u64,
        /// Physical address in the final mapping.
        found: u64,
    },
}

/// Result of this module's operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Decodes a `/proc/self/pagemap` entry into a page frame number.
pub fn decode_pagemap(entry: u64, vaddr: u64) -> Result<u64> {
    if entry & PAGEMAP_PRESENT == 0 {
        return Err(Error::NotPresent { vaddr });
    }
    match entry & PAGEMAP_PFN_MASK {
        0 => Err(Error::NoPfn),
        pfn => Ok(pfn),
    }
}

/// Physical address of the byte at `vaddr` of this process (the page must be present).
pub fn physical_address(pagemap: &File, vaddr: u64) -> Result<u64> {
    let mut entry = [0u8; 8];
    pagemap
        .read_exact_at(&mut entry, vaddr / BASE_PAGE * 8)
        .map_err(Error::Pagemap)?;
    let pfn = decode_pagemap(u64::from_ne_bytes(entry), vaddr)?;
    Ok(pfn * BASE_PAGE + vaddr % BASE_PAGE)
}

/// One region to map: `size` bytes of the file at `file_offset`, at physical `gpa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionPlacement {
    /// (Guest-)physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Offset in the file.
    pub file_offset: u64,
}

/// Physically contiguous pages: the page at physical `gpa + k * page` is
/// the one at file offset `file_offsets[k]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRun {
    /// Physical address of the first page.
    pub gpa: u64,
    /// Size in bytes (`file_offsets.len()` pages).
    pub size: u64,
    /// File offset of each page, in physical order.
    pub file_offsets: Vec<u64>,
}

/// Groups pages `(physical address, file offset)` of `page` bytes each into
/// physically contiguous runs, sorted by physical address, whatever the order
/// of the pages in the file (the kernel often hands them out descending).
pub fn group_runs(pages: &[(u64, u64)], page: u64) -> Vec<PageRun> {
    let mut sorted = pages.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<PageRun> = Vec::new();
    for (gpa, file_offset) in sorted {
        match out.last_mut() {
            Some(last) if last.gpa.checked_add(last.size) == Some(gpa) => {
                last.size += page;
                last.file_offsets.push(file_offset);
            }
            _ => out.push(PageRun {
                gpa,
                size: page,
                file_offsets: vec![file_offset],
            }),
        }
    }
    out
}

/// A run mapped into this process, virtually contiguous in physical order.
#[derive(Debug)]
pub(crate) struct MappedRun {
    /// Physical address of the first byte.
    pub gpa: u64,
    /// File offset of the run's first page (the next pages need not follow it
    /// in the file).
    pub file_offset: u64,
    /// The mapping; owns (and unmaps on drop) the whole virtual range.
    pub region: MmapRegion,
}

/// A temporary mapping of the whole file, unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range mapped in `allocate`, used by nothing else.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

fn is_no_hugepages(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::EINVAL))
}

/// Maps `run` of `file` (pages of `page` bytes) into one fresh virtual range:
/// a reservation the kernel places (aligned to hugepages when `hugetlb`),
/// then each page `MAP_FIXED` over its slot, in physical order.
///
/// The returned region owns the range and unmaps all of it on drop; its
/// `prot`/`flags`/`file_offset` describe the reservation, not the file
/// mappings that replaced it (nothing in vm-memory relies on them).
pub(crate) fn map_run(file: &File, run: &PageRun, page: u64, hugetlb: bool) -> Result<MmapRegion> {
    let len = usize::try_from(run.size).map_err(|_| Error::Size(usize::MAX))?;
    let page_len = usize::try_from(page).map_err(|_| Error::Size(usize::MAX))?;
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    if hugetlb {
        // Only so that the kernel picks a hugepage-aligned address: with
        // MAP_NORESERVE and PROT_NONE no hugepage is reserved or faulted.
        flags |= libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
    }
    let region = MmapRegionBuilder::<()>::new(len)
        .with_mmap_prot(libc::PROT_NONE)
        .with_mmap_flags(flags)
        .with_hugetlbfs(hugetlb)
        .build()
        .map_err(|source| Error::Reserve { len, source })?;
    let base = region.as_ptr();
    if (base as u64) % page != 0 {
        return Err(Error::Reserve {
            len,
            source: MmapRegionError::InvalidPointer,
        });
    }
    for (k, &file_offset) in run.file_offsets.iter().enumerate() {
        let remap_err = |source| Error::Remap {
            file_offset,
            source,
        };
        let offset = libc::off_t::try_from(file_offset)
            .map_err(|_| remap_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // `k < file_offsets.len()`, so the slot is inside the reservation.
        let slot = base.wrapping_add(k * page_len).cast::<libc::c_void>();
        // SAFETY: `slot..slot + page_len` lies inside the reservation owned by
        // `region`, which nothing else references yet, so replacing that part
        // of it (MAP_FIXED) cannot invalidate any other mapping or reference.
        // The result is checked.
        let got = unsafe {
            libc::mmap(
                slot,
                page_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                offset,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(remap_err(io::Error::last_os_error()));
        }
        if got != slot {
            return Err(remap_err(io::Error::other("mapped at another address")));
        }
    }
    Ok(region)
}

/// Allocates `size` bytes, rounded up to whole 2 MiB hugepages, in a memfd;
/// returns the file and its physically contiguous runs, sorted by physical
/// address, each mapped virtually contiguous.
pub(crate) fn allocate(size: usize) -> Result<(File, Vec<MappedRun>)> {
    if size == 0 {
        return Err(Error::Size(size));
    }
    let pages = (size as u64).div_ceil(HUGEPAGE_SIZE);
    let size = pages
        .checked_mul(HUGEPAGE_SIZE)
        .and_then(|s| usize::try_from(s).ok())
        .filter(|&s| s <= isize::MAX as usize)
        .ok_or(Error::Size(size))?;
    let flags = libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    // SAFETY: `NAME` is a valid NUL-terminated string that outlives the call;
    // the result is checked below.
    let fd = unsafe { libc::memfd_create(NAME.as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create, is open, and nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size as u64).map_err(|source| {
        if is_no_hugepages(&source) {
            Error::NoHugepages { pages, source }
        } else {
            Error::Memfd(source)
        }
    })?;
    // Without MAP_NORESERVE the kernel reserves every hugepage now, so a
    // shortage fails here (ENOMEM) rather than with SIGBUS on first touch.
    // SAFETY: a fresh shared mapping of our own file at a kernel-chosen
    // address; the result is checked.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        let source = io::Error::last_os_error();
        return Err(if is_no_hugepages(&source) {
            Error::NoHugepages { pages, source }
        } else {
            Error::Memfd(source)
        });
    }
    // Only to fault the pages in and find them; the file keeps the pages
    // after this mapping is gone.
    let map = Mapping { addr, len: size };
    let base = map.addr.cast::<u8>();
    let page_len = usize::try_from(HUGEPAGE_SIZE).map_err(|_| Error::Size(size))?;
    let count = size / page_len;
    for i in 0..count {
        // SAFETY: `i * page_len < size`, so the byte is inside the live
        // mapping, which nothing else accesses; the page is reserved, so the
        // write cannot fault for lack of hugepages.
        unsafe { base.add(i * page_len).write_volatile(0) };
    }
    let pagemap = File::open(PAGEMAP).map_err(Error::Pagemap)?;
    let mut found = Vec::with_capacity(count);
    for i in 0..pages {
        let pa = physical_address(&pagemap, base as u64 + i * HUGEPAGE_SIZE)?;
        if pa % HUGEPAGE_SIZE != 0 {
            return Err(Error::Misaligned(pa));
        }
        found.push((pa, i * HUGEPAGE_SIZE));
    }
    drop(map);
    let runs = group_runs(&found, HUGEPAGE_SIZE);
    log::debug!(
        "{pages} hugepages in {} physically contiguous runs",
        runs.len()
    );
    let mut mapped = Vec::with_capacity(runs.len());
    for run in &runs {
        let region = map_run(&file, run, HUGEPAGE_SIZE, true)?;
        for k in 0..run.file_offsets.len() as u64 {
            let expected = run.gpa + k * HUGEPAGE_SIZE;
            let found = physical_address(&pagemap, region.as_ptr() as u64 + k * HUGEPAGE_SIZE)?;
            if found != expected {
                return Err(Error::Moved { expected, found });
            }
        }
        mapped.push(MappedRun {
            gpa: run.gpa,
            file_offset: run.file_offsets.first().copied().unwrap_or(0),
            region,
        });
    }
    Ok((file, mapped))
}

/// `HugePages_Free` of `/proc/meminfo`, if readable.
pub fn free_hugepages() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_entries() {
        assert_eq!(decode_pagemap(PAGEMAP_PRESENT | 0x1234, 0).unwrap(), 0x1234);
        // Bits 55..=62 (soft-dirty, exclusive, file, swapped) are not the PFN.
        assert_eq!(
            decode_pagemap(PAGEMAP_PRESENT | 1 << 55 | 1 << 61 | 0x42, 0).unwrap(),
            0x42
        );
        assert!(matches!(
            decode_pagemap(0x1234, 0x7000),
            Err(Error::NotPresent { vaddr: 0x7000 })
        ));
        let err = decode_pagemap(PAGEMAP_PRESENT, 0).unwrap_err();
        assert!(matches!(err, Error::NoPfn));
        assert!(err.to_string().contains("run as root"));
    }

    const P: u64 = HUGEPAGE_SIZE;

    /// Pages `(physical, file offset)` for physical pages `phys[i]` at file page `i`.
    fn file_order(phys: &[u64]) -> Vec<(u64, u64)> {
        phys.iter()
            .enumerate()
            .map(|(i, &pa)| (pa, i as u64 * P))
            .collect()
    }

    #[test]
    fn descending_pages_form_one_run() {
        // How the kernel hands hugepages out: file page i at 100P - i*P.
        let phys: Vec<u64> = (0..9).map(|i| (100 - i) * P).collect();
        let runs = group_runs(&file_order(&phys), P);
        assert_eq!(
            runs,
            vec![PageRun {
                gpa: 92 * P,
                size: 9 * P,
                file_offsets: (0..9).rev().map(|i| i * P).collect(),
            }]
        );
    }

    #[test]
    fn ascending_pages_form_one_run() {
        let phys: Vec<u64> = (0..4).map(|i| (7 + i) * P).collect();
        let runs = group_runs(&file_order(&phys), P);
        assert_eq!(
            runs,
            vec![PageRun {
                gpa: 7 * P,
                size: 4 * P,
                file_offsets: vec![0, P, 2 * P, 3 * P],
            }]
        );
    }

    #[test]
    fn scattered_pages_form_sorted_runs() {
        let phys = [10 * P, 11 * P, 12 * P, 4 * P, 3 * P, 21 * P, 20 * P, 40 * P];
        assert_eq!(
            group_runs(&file_order(&phys), P),
            vec![
                PageRun {
                    gpa: 3 * P,
                    size: 2 * P,
                    file_offsets: vec![4 * P, 3 * P],
                },
                PageRun {
                    gpa: 10 * P,
                    size: 3 * P,
                    file_offsets: vec![0, P, 2 * P],
                },
                PageRun {
                    gpa: 20 * P,
                    size: 2 * P,
                    file_offsets: vec![6 * P, 5 * P],
                },
                PageRun {
                    gpa: 40 * P,
                    size: P,
                    file_offsets: vec![7 * P],
                },
            ]
        );
        assert!(group_runs(&[], P).is_empty());
        // A page at the very top of the address space does not overflow.
        let top = u64::MAX - P + 1;
        assert_eq!(group_runs(&[(top, 0), (0, P)], P).len(), 2);
    }

    #[test]
    fn a_run_is_mapped_in_physical_order() {
        // Ordinary 4 KiB pages of an ordinary memfd stand in for hugepages.
        const PAGE: u64 = 4096;
        let file = crate::memory::memfd::create(c"hugepage-test", 4 * PAGE).unwrap();
        for i in 0..4u64 {
            file.write_all_at(&[0xa0 + i as u8], i * PAGE).unwrap();
        }
        // Descending physical order: file page 3 is physically first.
        let pages: Vec<(u64, u64)> = (0..4).map(|i| ((50 - i) * PAGE, i * PAGE)).collect();
        let runs = group_runs(&pages, PAGE);
        assert_eq!(runs.len(), 1);
        let region = map_run(&file, &runs[0], PAGE, false).unwrap();
        assert_eq!(region.size() as u64, 4 * PAGE);
        assert!(region.owned(), "the region unmaps its range on drop");
        let base = region.as_ptr();
        for k in 0..4u64 {
            // SAFETY: `k * PAGE` is inside the live mapping of 4 pages.
            let byte = unsafe { base.add((k * PAGE) as usize).read_volatile() };
            assert_eq!(byte, 0xa3 - k as u8, "virtual page {k}");
        }
        // Writes through the mapping reach the right file page.
        // SAFETY: inside the mapping, which nothing else uses.
        unsafe { base.add(PAGE as usize + 1).write_volatile(0x5a) };
        let mut out = [0u8; 1];
        file.read_exact_at(&mut out, 2 * PAGE + 1).unwrap();
        assert_eq!(out, [0x5a]);
    }

    #[test]
    fn physical_address_of_an_ordinary_page() {
        let page = vec![1u8; 4096];
        std::hint::black_box(&page);
        let pagemap = File::open(PAGEMAP).unwrap();
        let vaddr = page.as_ptr() as u64;
        match physical_address(&pagemap, vaddr) {
            Ok(pa) => assert_eq!(pa % BASE_PAGE, vaddr % BASE_PAGE),
            // Not root: the kernel hides PFNs.
            Err(Error::NoPfn) => eprintln!("no CAP_SYS_ADMIN: PFNs hidden"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(allocate(0), Err(Error::Size(0))));
        assert!(matches!(allocate(usize::MAX), Err(Error::Size(_))));
    }
}
