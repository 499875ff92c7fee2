// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! dma-bufs of another driver, to import as device objects: `udmabuf`
//! (`CONFIG_UDMABUF`, `/dev/udmabuf`) makes a dma-buf of the pages of a
//! memfd sealed against shrinking, which this process keeps mapped.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::map::Mapping;
use super::uapi::{self, UdmabufCreate, UDMABUF_FLAGS_CLOEXEC};
use super::{page_size, Error, Result};

/// The udmabuf device.
pub const UDMABUF_PATH: &str = "/dev/udmabuf";

/// A dma-buf of memfd pages, mapped into this process through the memfd.
#[derive(Debug)]
pub struct Udmabuf {
    map: Mapping,
    dmabuf: OwnedFd,
    _memfd: File,
}

fn step(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Udmabuf { what, source }
}

impl Udmabuf {
    /// A dma-buf of `size` bytes (rounded up to pages, at least one) from
    /// the udmabuf device at `device` ([`UDMABUF_PATH`]), zeroed.
    pub fn new(device: &Path, size: u64) -> Result<Self> {
        let page = page_size() as u64;
        let size = size.max(1).div_ceil(page).saturating_mul(page);
        let len = usize::try_from(size).map_err(|_| Error::TooLarge(size))?;
        let udmabuf = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(device)
            .map_err(step("cannot open the udmabuf device"))?;
        let memfd = sealed_memfd(size)?;
        let map = Mapping::new(memfd.as_fd(), len, 0, true).map_err(Error::Map)?;
        let mut create = UdmabufCreate {
            memfd: u32::try_from(memfd.as_raw_fd()).unwrap_or(u32::MAX),
            flags: UDMABUF_FLAGS_CLOEXEC,
            offset: 0,
            size,
        };
        // SAFETY: the argument carries no address.
        let fd = unsafe { uapi::call(udmabuf.as_fd(), &uapi::UDMABUF_CREATE, &mut create) }
            .map_err(step("UDMABUF_CREATE"))?;
        // SAFETY: UDMABUF_CREATE returns a new dma-buf descriptor of this
        // process (it failed otherwise), which nothing else owns.
        let dmabuf = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Udmabuf {
            map,
            dmabuf,
            _memfd: memfd,
        })
    }

    /// The memfd's mapping: what the dma-buf holds.
    pub fn mapping(&self) -> &Mapping {
        &self.map
    }

    /// Bytes of the dma-buf.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }
}

impl AsFd for Udmabuf {
    /// The dma-buf.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dmabuf.as_fd()
    }
}

/// A memfd of `size` bytes sealed against shrinking, as udmabuf requires.
fn sealed_memfd(size: u64) -> Result<File> {
    const NAME: &CStr = c"accel-udmabuf";
    // SAFETY: `NAME` is a NUL-terminated string that outlives the call; the
    // flags are valid; the result is checked.
    let fd =
        unsafe { libc::memfd_create(NAME.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(step("memfd_create")(io::Error::last_os_error()));
    }
    // SAFETY: memfd_create just returned `fd`, open and owned by nobody else.
    let memfd = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    memfd.set_len(size).map_err(step("sizing the memfd"))?;
    // SAFETY: F_ADD_SEALS takes an integer argument; the result is checked.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } != 0 {
        return Err(step("sealing the memfd")(io::Error::last_os_error()));
    }
    Ok(memfd)
}
