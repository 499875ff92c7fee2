// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Validation of the guest memory a VMM hands over (SET_MEM_TABLE).
//!
//! A region is a window of a file the VMM shares (a memfd, a hugetlbfs or
//! tmpfs file) mapped into this process. A page of the window that the file
//! does not cover faults with SIGBUS when touched, so a table with a region
//! past the end of its file is refused before any request can reach it
//! ([`check_table`]). A file that shrinks later does the same; a memfd sealed
//! with `F_SEAL_SHRINK` cannot. Regions whose file has a seal set without
//! that seal (memfds, and tmpfs and hugetlbfs files, which `F_GET_SEALS`
//! answers for) are reported ([`TableCheck::unsealed`]) so that the tenant
//! can be warned; files of other file systems, which have no seals at all,
//! are not.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Where a region of a memory table lies, as log lines name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionDesc {
    /// Index of the region in the table, in guest address order.
    pub index: usize,
    /// Guest-physical start address.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region in its file.
    pub file_offset: u64,
}

impl fmt::Display for RegionDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "region {} (guest address {:#x}, {:#x} bytes at file offset {:#x})",
            self.index, self.guest_addr, self.size, self.file_offset
        )
    }
}

/// Why a memory table is refused.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The region is not backed by a file (vhost-user always passes one).
    #[error("{0} has no file")]
    NoFile(RegionDesc),
    /// The region's file could not be examined.
    #[error("cannot examine the file of {region}")]
    File {
        /// The region.
        region: RegionDesc,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The region reaches past the end of its file (or its end overflows).
    #[error("{region} reaches past the end of its file of {file_size:#x} bytes")]
    PastEnd {
        /// The region.
        region: RegionDesc,
        /// Size of the file.
        file_size: u64,
    },
}

/// Whether a file can still shrink under its mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    /// Sealed with `F_SEAL_SHRINK`: it cannot shrink.
    ShrinkSealed,
    /// A file with seals (a memfd, a tmpfs or hugetlbfs file), but not
    /// `F_SEAL_SHRINK`: it can shrink.
    Unsealed,
    /// A file of a file system without seals (`F_GET_SEALS` says `EINVAL`).
    Unsealable,
}

/// The seals of `file` (`F_GET_SEALS`), or `None` for a file of a file
/// system without seals.
pub fn seals(file: &File) -> io::Result<Option<libc::c_int>> {
    // SAFETY: F_GET_SEALS only reads the seals of the open descriptor that
    // `file` owns for the duration of the call; the result is checked.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals >= 0 {
        return Ok(Some(seals));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINVAL) => Ok(None),
        _ => Err(error),
    }
}

/// The seals of `file` that matter to its mappings.
pub fn sealing(file: &File) -> io::Result<Sealing> {
    Ok(match seals(file)? {
        None => Sealing::Unsealable,
        Some(seals) if seals & libc::F_SEAL_SHRINK != 0 => Sealing::ShrinkSealed,
        Some(_) => Sealing::Unsealed,
    })
}

/// The size of the host's pages, the unit of udmabuf's ranges.
pub fn page_size() -> u64 {
    // SAFETY: sysconf reads a value the kernel gave the process at exec.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Checks that `file` covers `region` entirely (from its file offset, for
/// its size) and returns how the file is sealed.
pub fn check_region(file: &File, region: RegionDesc) -> Result<Sealing, MemoryError> {
    let file_error = |source| MemoryError::File { region, source };
    let file_size = file.metadata().map_err(file_error)?.len();
    let end = region.file_offset.checked_add(region.size);
    if end.is_none_or(|end| end > file_size) {
        return Err(MemoryError::PastEnd { region, file_size });
    }
    sealing(file).map_err(file_error)
}

/// What a valid memory table is like.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TableCheck {
    /// Regions whose file could shrink under the mapping (sealable but not
    /// sealed with `F_SEAL_SHRINK`).
    pub unsealed: Vec<RegionDesc>,
}

/// Checks every region of `mem`: each must lie within its file. Returns the
/// first region that does not, or what the valid table is like.
pub fn check_table(mem: &GuestMemoryMmap) -> Result<TableCheck, MemoryError> {
    let mut check = TableCheck::default();
    for (index, region) in mem.iter().enumerate() {
        let file_offset = region.file_offset();
        let desc = RegionDesc {
            index,
            guest_addr: region.start_addr().0,
            size: region.len(),
            file_offset: file_offset.map_or(0, |offset| offset.start()),
        };
        let file = file_offset.ok_or(MemoryError::NoFile(desc))?.file();
        if check_region(file, desc)? == Sealing::Unsealed {
            check.unsealed.push(desc);
        }
    }
    Ok(check)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use vm_memory::{FileOffset, GuestAddress};

    const MIB: u64 = 1 << 20;

    pub(crate) fn memfd(size: u64, flags: libc::c_uint) -> File {
        // SAFETY: a valid NUL-terminated name and flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"memory-test".as_ptr(), flags) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(size).unwrap();
        file
    }

    pub(crate) fn add_seals(file: &File, seals: libc::c_int) {
        // SAFETY: F_ADD_SEALS on a descriptor `file` owns; the result is checked.
        let result = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
        assert_eq!(result, 0, "F_ADD_SEALS: {}", io::Error::last_os_error());
    }

    fn region(size: u64, file_offset: u64) -> RegionDesc {
        RegionDesc {
            index: 0,
            guest_addr: 0,
            size,
            file_offset,
        }
    }

    fn past_end(result: Result<Sealing, MemoryError>) -> Option<u64> {
        match result {
            Err(MemoryError::PastEnd { file_size, .. }) => Some(file_size),
            _ => None,
        }
    }

    #[test]
    fn a_memfd_of_exactly_the_region_size_is_accepted() {
        let file = memfd(4 * MIB, 0);
        assert_eq!(
            check_region(&file, region(4 * MIB, 0)).unwrap(),
            Sealing::Unsealed
        );
        assert!(check_region(&file, region(MIB, 3 * MIB)).is_ok());
    }

    #[test]
    fn a_region_past_the_end_of_its_file_is_refused() {
        let file = memfd(4 * MIB, 0);
        assert_eq!(
            past_end(check_region(&file, region(8 * MIB, 0))),
            Some(4 * MIB)
        );
        assert_eq!(
            past_end(check_region(&file, region(4 * MIB, 4096))),
            Some(4 * MIB)
        );
    }

    #[test]
    fn an_offset_past_the_end_of_the_file_is_refused() {
        let file = memfd(4 * MIB, 0);
        assert!(past_end(check_region(&file, region(MIB, 4 * MIB))).is_some());
        assert!(past_end(check_region(&file, region(4096, 64 * MIB))).is_some());
    }

    #[test]
    fn an_overflowing_region_end_is_refused() {
        let file = memfd(4 * MIB, 0);
        assert!(past_end(check_region(&file, region(8192, u64::MAX - 4095))).is_some());
        assert!(past_end(check_region(&file, region(u64::MAX, 1))).is_some());
    }

    #[test]
    fn seals_are_told_apart() {
        // Without MFD_ALLOW_SEALING a memfd can never be sealed.
        assert_eq!(sealing(&memfd(MIB, 0)).unwrap(), Sealing::Unsealed);
        let file = memfd(MIB, libc::MFD_ALLOW_SEALING);
        assert_eq!(sealing(&file).unwrap(), Sealing::Unsealed);
        add_seals(&file, libc::F_SEAL_GROW);
        assert_eq!(sealing(&file).unwrap(), Sealing::Unsealed);
        add_seals(&file, libc::F_SEAL_SHRINK);
        assert_eq!(sealing(&file).unwrap(), Sealing::ShrinkSealed);
        assert_eq!(
            check_region(&file, region(MIB, 0)).unwrap(),
            Sealing::ShrinkSealed
        );
        // A socket is no file that sealing applies to.
        let (socket, _peer) = UnixStream::pair().unwrap();
        assert_eq!(
            sealing(&File::from(OwnedFd::from(socket))).unwrap(),
            Sealing::Unsealable
        );
    }

    pub(crate) fn table(file: &Arc<File>, regions: &[(u64, u64, u64)]) -> GuestMemoryMmap {
        let ranges: Vec<_> = regions
            .iter()
            .map(|&(gpa, size, offset)| {
                let offset = FileOffset::from_arc(Arc::clone(file), offset);
                (
                    GuestAddress(gpa),
                    usize::try_from(size).unwrap(),
                    Some(offset),
                )
            })
            .collect();
        GuestMemoryMmap::from_ranges_with_files(&ranges).unwrap()
    }

    #[test]
    fn a_table_is_checked_region_by_region() {
        let file = Arc::new(memfd(4 * MIB, libc::MFD_ALLOW_SEALING));
        let valid = table(&file, &[(0, 2 * MIB, 0), (1 << 32, 2 * MIB, 2 * MIB)]);
        let check = check_table(&valid).unwrap();
        assert_eq!(check.unsealed.len(), 2);
        assert_eq!(
            check.unsealed[1],
            RegionDesc {
                index: 1,
                guest_addr: 1 << 32,
                size: 2 * MIB,
                file_offset: 2 * MIB,
            }
        );
        let too_big = table(&file, &[(0, 2 * MIB, 0), (1 << 32, 4 * MIB, 2 * MIB)]);
        match check_table(&too_big) {
            Err(MemoryError::PastEnd { region, file_size }) => {
                assert_eq!((region.index, region.file_offset), (1, 2 * MIB));
                assert_eq!(file_size, 4 * MIB);
            }
            other => panic!("{other:?}"),
        }
        add_seals(&file, libc::F_SEAL_SHRINK);
        assert_eq!(check_table(&valid).unwrap(), TableCheck::default());
        let anonymous = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4096)]).unwrap();
        assert!(matches!(
            check_table(&anonymous),
            Err(MemoryError::NoFile(_))
        ));
    }
}
