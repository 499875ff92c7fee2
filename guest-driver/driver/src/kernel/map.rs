// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Shared mappings of GEM objects and dma-bufs, accessed only by volatile
//! copies: the device writes the same pages while a job runs, so no Rust
//! reference to their bytes is ever made.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use vm_memory::{ByteValued, Bytes, VolatileSlice};

use super::{Error, Result};

/// A `MAP_SHARED` mapping of `len` bytes, unmapped when dropped.
#[derive(Debug)]
pub struct Mapping {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; every
// access goes through volatile copies or atomics (`slice`), which are sound
// from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: `&Mapping` only allows volatile and atomic accesses.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` at `offset`, readable and writable if `writable`.
    pub fn new(fd: BorrowedFd<'_>, len: usize, offset: u64, writable: bool) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a new mapping at an address the kernel chooses overlaps no
        // Rust object; the arguments are checked by the kernel and the result
        // is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping { addr, len })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slice(&self) -> VolatileSlice<'_> {
        // SAFETY: `addr..addr + len` is mapped for as long as `self` lives,
        // and the slice borrows `self`.
        unsafe { VolatileSlice::new(self.addr.as_ptr(), self.len) }
    }

    fn out_of_range(&self, offset: usize, len: usize) -> Error {
        Error::OutOfRange {
            offset: offset as u64,
            len: len as u64,
            size: self.len as u64,
        }
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.slice()
            .write_slice(data, offset)
            .map_err(|_| self.out_of_range(offset, data.len()))
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0; len];
        self.slice()
            .read_slice(&mut out, offset)
            .map_err(|_| self.out_of_range(offset, len))?;
        Ok(out)
    }

    /// Sets every byte to `byte`.
    pub fn fill(&self, byte: u8) -> Result<()> {
        let chunk = [byte; 4096];
        let mut at = 0;
        while at < self.len {
            let n = (self.len - at).min(chunk.len());
            self.write(at, &chunk[..n])?;
            at += n;
        }
        Ok(())
    }

    /// Loads the `u32` at `offset` with `order` (offset 4-byte aligned).
    pub fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32> {
        self.slice()
            .load(offset, order)
            .map_err(|_| self.out_of_range(offset, 4))
    }

    /// Reads a `T` at `offset`.
    pub fn read_obj<T: ByteValued>(&self, offset: usize) -> Result<T> {
        self.slice()
            .read_obj(offset)
            .map_err(|_| self.out_of_range(offset, std::mem::size_of::<T>()))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr..addr + len` is the mapping this value made and owns;
        // no access outlives `self`.
        let rc = unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
        if rc != 0 {
            log::warn!("munmap: {}", io::Error::last_os_error());
        }
    }
}
