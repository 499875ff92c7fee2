// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Guest memory for the fuzz targets: memfd-backed regions (as a VMM shares
//! them, so the device's memory-table check accepts them), each mapped
//! between two inaccessible guard pages. A device write or read past either
//! end of a region faults at once, and libFuzzer reports the input.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// Size of the guard on each side of a region.
const GUARD: usize = 4096;

/// A guest memory table whose regions are surrounded by guard pages. The
/// [`GuestMemoryMmap`] it hands out borrows its mappings: drop every clone
/// of it (and whatever holds one, such as a device) before this value.
pub struct GuardedMemory {
    reservation: NonNull<libc::c_void>,
    reserved: usize,
    /// The table, over one memfd sealed against shrinking.
    pub mem: GuestMemoryMmap,
}

fn os_error<T>(result: T, failed: bool) -> io::Result<T> {
    if failed {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// A memfd of `size` bytes, sealed against shrinking (like QEMU's guest
/// memory) if `seal_shrink`.
pub fn memfd(size: u64, seal_shrink: bool) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated literal; the result is checked.
    let fd = unsafe { libc::memfd_create(c"fuzz-guest".as_ptr(), libc::MFD_ALLOW_SEALING) };
    let fd = os_error(fd, fd < 0)?;
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    if !seal_shrink {
        return Ok(file);
    }
    // SAFETY: F_ADD_SEALS on a descriptor `file` owns; the result is checked.
    let sealed = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    os_error(file, sealed < 0)
}

impl GuardedMemory {
    /// A table of `regions` (guest address, size in bytes, a multiple of the
    /// page size), in increasing guest address order and not overlapping.
    pub fn new(regions: &[(u64, usize)]) -> io::Result<Self> {
        let total: usize = regions.iter().map(|&(_, size)| size).sum();
        let reserved = total + GUARD * (regions.len() + 1);
        // SAFETY: a fresh anonymous reservation, nothing is overwritten; the
        // result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserved,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        let base = os_error(base, base == libc::MAP_FAILED)?;
        let reservation = NonNull::new(base).ok_or_else(|| io::Error::other("mmap gave null"))?;
        let mut memory = GuardedMemory {
            reservation,
            reserved,
            mem: GuestMemoryMmap::default(),
        };
        let file = memfd(total as u64, true)?;
        let mut mapped = Vec::new();
        let (mut host_offset, mut file_offset) = (GUARD, 0usize);
        for &(guest_addr, size) in regions {
            // SAFETY: `host_offset + size` lies inside the reservation, which
            // this value owns; MAP_FIXED replaces only its PROT_NONE pages.
            let addr = unsafe {
                libc::mmap(
                    base.cast::<u8>().add(host_offset).cast(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    file_offset as libc::off_t,
                )
            };
            let addr = os_error(addr, addr == libc::MAP_FAILED)?;
            let offset = FileOffset::new(file.try_clone()?, file_offset as u64);
            // SAFETY: `addr..addr + size` is the mapping just made, which
            // lives as long as the reservation, that is as long as `self`.
            let region = unsafe {
                MmapRegionBuilder::new(size)
                    .with_file_offset(offset)
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_SHARED)
                    .with_raw_mmap_pointer(addr.cast())
            }
            .build()
            .map_err(io::Error::other)?;
            let region = GuestRegionMmap::new(region, GuestAddress(guest_addr))
                .ok_or_else(|| io::Error::other("region overflows guest addresses"))?;
            mapped.push(region);
            host_offset += size + GUARD;
            file_offset += size;
        }
        memory.mem = GuestMemoryMmap::from_regions(mapped).map_err(io::Error::other)?;
        Ok(memory)
    }
}

impl Drop for GuardedMemory {
    fn drop(&mut self) {
        // SAFETY: the reservation (and the regions mapped into it) belongs to
        // this value; the contract of the type says nothing uses it now.
        unsafe { libc::munmap(self.reservation.as_ptr(), self.reserved) };
    }
}
