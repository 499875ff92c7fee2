//! 2 MiB hugepages at known physical addresses, for DMA by a real device.
//!
//! A device driven through `uio_pci_generic` (no IOMMU) is given physical
//! addresses; in a guest those are guest-physical, which is what the device
//! wants. The memory is a hugetlbfs memfd (`MFD_HUGETLB | MFD_HUGE_2MB`), so
//! the pages cannot be swapped out or split and each 2 MiB page is physically
//! contiguous. Every page is faulted in and locked, and its physical address
//! read from `/proc/self/pagemap` (Documentation/admin-guide/mm/pagemap.rst),
//! which shows page frame numbers only to `CAP_SYS_ADMIN`.
//!
//! The kernel may still migrate hugetlb pages (memory hot-unplug, contiguous
//! allocations); as for DPDK's legacy memory mode, this is accepted.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use thiserror::Error;

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
    /// The pages could not be locked in memory.
    #[error("cannot lock {len:#x} bytes of hugepages in memory (RLIMIT_MEMLOCK? run as root)")]
    Mlock {
        /// Bytes.
        len: usize,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `/proc/self/pagemap` could not be read.
    #[error("cannot read {PAGEMAP}")]
    Pagemap(#[source] io::Error),
    /// A page is not present although it was just touched and locked.
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
pub struct Placement {
    /// (Guest-)physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Offset in the file.
    pub file_offset: u64,
}

/// Regions for hugepages `i` at file offset `i * page` and physical `phys[i]`:
/// a page that follows its predecessor both in the file and physically
/// extends the predecessor's region.
pub fn merge_contiguous(phys: &[u64], page: u64) -> Vec<Placement> {
    let mut out: Vec<Placement> = Vec::new();
    for (i, &gpa) in phys.iter().enumerate() {
        let file_offset = i as u64 * page;
        match out.last_mut() {
            Some(last)
                if last.gpa + last.size == gpa && last.file_offset + last.size == file_offset =>
            {
                last.size += page;
            }
            _ => out.push(Placement {
                gpa,
                size: page,
                file_offset,
            }),
        }
    }
    out
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

/// Allocates `size` bytes, rounded up to whole 2 MiB hugepages, in a memfd;
/// returns the file and its physically contiguous runs, in file order.
pub(crate) fn allocate(size: usize) -> Result<(File, Vec<Placement>)> {
    if size == 0 {
        return Err(Error::Size(size));
    }
    let pages = (size as u64).div_ceil(HUGEPAGE_SIZE);
    let size = pages
        .checked_mul(HUGEPAGE_SIZE)
        .and_then(|s| usize::try_from(s).ok())
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
    let map = Mapping { addr, len: size };
    // SAFETY: the range is the mapping just made; mlock only pins it.
    if unsafe { libc::mlock(map.addr, map.len) } != 0 {
        return Err(Error::Mlock {
            len: size,
            source: io::Error::last_os_error(),
        });
    }
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
    let mut phys = Vec::with_capacity(count);
    for i in 0..pages {
        let pa = physical_address(&pagemap, base as u64 + i * HUGEPAGE_SIZE)?;
        if pa % HUGEPAGE_SIZE != 0 {
            return Err(Error::Misaligned(pa));
        }
        phys.push(pa);
    }
    drop(map);
    let placements = merge_contiguous(&phys, HUGEPAGE_SIZE);
    log::debug!(
        "{pages} hugepages in {} physically contiguous runs",
        placements.len()
    );
    Ok((file, placements))
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

    #[test]
    fn contiguous_pages_merge() {
        const P: u64 = HUGEPAGE_SIZE;
        let phys = [10 * P, 11 * P, 12 * P, 4 * P, 3 * P, 20 * P, 21 * P];
        assert_eq!(
            merge_contiguous(&phys, P),
            vec![
                Placement {
                    gpa: 10 * P,
                    size: 3 * P,
                    file_offset: 0
                },
                Placement {
                    gpa: 4 * P,
                    size: P,
                    file_offset: 3 * P
                },
                Placement {
                    gpa: 3 * P,
                    size: P,
                    file_offset: 4 * P
                },
                Placement {
                    gpa: 20 * P,
                    size: 2 * P,
                    file_offset: 5 * P
                },
            ]
        );
        assert!(merge_contiguous(&[], P).is_empty());
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
