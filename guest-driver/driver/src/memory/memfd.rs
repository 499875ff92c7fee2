// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Anonymous shareable memory files (`memfd_create(2)`), plain or sealed
//! against changes of size (`fcntl(2)` file seals).

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The seals of a file made by [`create_sealed`]: it can neither shrink nor
/// grow, and takes no further seal (in particular no `F_SEAL_WRITE`, which
/// would make its shared mappings read-only). These are the seals of QEMU's
/// `memory-backend-memfd` (its default `seal=on`), and `F_SEAL_SHRINK` is
/// what udmabuf requires of a memfd whose pages it makes into a dma-buf.
pub(crate) const SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Creates an anonymous memory file of `size` bytes, closed on exec. The
/// kernel seals it against further seals (`F_SEAL_SEAL`): it is never
/// sealed against shrinking.
pub(crate) fn create(name: &CStr, size: u64) -> io::Result<File> {
    let file = memfd(name, libc::MFD_CLOEXEC)?;
    file.set_len(size)?;
    Ok(file)
}

/// Creates an anonymous memory file of `size` bytes, closed on exec, with
/// the seals [`SEALS`]: its size is fixed from now on.
pub(crate) fn create_sealed(name: &CStr, size: u64) -> io::Result<File> {
    let file = memfd(name, libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)?;
    file.set_len(size)?;
    // SAFETY: F_ADD_SEALS takes an integer argument and touches no memory of
    // this process; the result is checked.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// The seals of `file` (`F_GET_SEALS`): `F_SEAL_*` bits.
pub(crate) fn seals(file: &File) -> io::Result<i32> {
    // SAFETY: F_GET_SEALS takes no argument and touches no memory of this
    // process; the result is checked.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(seals)
}

/// `memfd_create(name, flags)`, empty.
fn memfd(name: &CStr, flags: libc::c_uint) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call and
    // the flags are a valid combination; the result is checked below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create, is open, and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
