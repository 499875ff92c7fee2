// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Fences of the kernel transport (accel-uapi §6): a job's out-fence as a
//! sync_file, waited for with `poll()`, and DRM syncobjs, which hold a fence
//! that jobs install and wait for.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::uapi::{
    self, DrmSyncobjCreate, DrmSyncobjDestroy, DrmSyncobjHandle, DrmSyncobjWait,
    DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE, DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL,
};
use super::{Error, KernelDevice, Result};
use crate::transport::poll_readable;

/// A sync_file: a file descriptor of one fence, readable (`POLLIN`) once it
/// has signalled.
#[derive(Debug)]
pub struct SyncFile {
    fd: OwnedFd,
}

impl SyncFile {
    /// Takes ownership of `fd`, which must be a sync_file.
    pub fn from_fd(fd: OwnedFd) -> Self {
        SyncFile { fd }
    }

    /// Takes ownership of a sync_file descriptor the kernel just returned.
    pub(crate) fn from_raw(fd: RawFd, ioctl: &'static str) -> Result<Self> {
        if fd < 0 {
            return Err(Error::NoDescriptor(ioctl));
        }
        // SAFETY: the kernel has just created `fd` for this process, so it is
        // open and nothing else owns it.
        Ok(SyncFile::from_fd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Another descriptor of the same sync_file (`dup`).
    pub fn try_clone(&self) -> Result<Self> {
        Ok(SyncFile::from_fd(self.fd.try_clone().map_err(Error::Dup)?))
    }

    /// Waits with `poll()` up to `timeout` (forever if `None`); `true` once
    /// the fence has signalled, `false` on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        poll_readable(self.fd.as_raw_fd(), deadline).map_err(Error::Wait)
    }

    /// Whether the fence has signalled (a `poll()` that does not wait).
    pub fn is_signalled(&self) -> Result<bool> {
        self.wait(Some(Duration::ZERO))
    }
}

impl AsFd for SyncFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A binary DRM syncobj of a device node, destroyed when dropped.
#[derive(Debug)]
pub struct Syncobj<'d> {
    device: &'d KernelDevice,
    handle: u32,
}

impl KernelDevice {
    /// A new syncobj without a fence (`DRM_IOCTL_SYNCOBJ_CREATE`).
    pub fn create_syncobj(&self) -> Result<Syncobj<'_>> {
        let mut arg = DrmSyncobjCreate::default();
        // SAFETY: the argument carries no address.
        unsafe { self.ioctl(&uapi::DRM_IOCTL_SYNCOBJ_CREATE, &mut arg) }?;
        Ok(Syncobj {
            device: self,
            handle: arg.handle,
        })
    }
}

impl Syncobj<'_> {
    /// The handle, as SUBMIT takes it.
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// Waits up to `timeout` until the syncobj's fence has signalled
    /// (`DRM_IOCTL_SYNCOBJ_WAIT`); `false` on timeout. A syncobj that holds
    /// no fence yet is an error (EINVAL).
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        let handles = [self.handle];
        let mut arg = DrmSyncobjWait {
            handles: handles.as_ptr() as u64,
            timeout_nsec: monotonic_deadline(timeout)?,
            count_handles: 1,
            flags: DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL,
            ..DrmSyncobjWait::default()
        };
        // SAFETY: `handles` points to `count_handles` live `u32`s, which the
        // kernel only reads.
        match unsafe { self.device.ioctl(&uapi::DRM_IOCTL_SYNCOBJ_WAIT, &mut arg) } {
            Ok(()) => Ok(true),
            Err(Error::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::ETIME) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The syncobj's current fence as a new sync_file.
    pub fn export_sync_file(&self) -> Result<SyncFile> {
        let mut arg = DrmSyncobjHandle {
            handle: self.handle,
            flags: DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE,
            fd: -1,
            pad: 0,
        };
        // SAFETY: the argument carries no address.
        unsafe {
            self.device
                .ioctl(&uapi::DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, &mut arg)
        }?;
        SyncFile::from_raw(arg.fd, uapi::DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD.name)
    }
}

impl Drop for Syncobj<'_> {
    fn drop(&mut self) {
        let mut arg = DrmSyncobjDestroy {
            handle: self.handle,
            pad: 0,
        };
        // SAFETY: the argument carries no address.
        if let Err(e) = unsafe {
            self.device
                .ioctl(&uapi::DRM_IOCTL_SYNCOBJ_DESTROY, &mut arg)
        } {
            log::warn!("syncobj {}: {e}", self.handle);
        }
    }
}

/// CLOCK_MONOTONIC now plus `timeout`, in nanoseconds, as SYNCOBJ_WAIT takes it.
fn monotonic_deadline(timeout: Duration) -> Result<i64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec the call writes; the result is checked.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return Err(Error::Wait(io::Error::last_os_error()));
    }
    let now = i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec);
    let deadline = now.saturating_add(i128::try_from(timeout.as_nanos()).unwrap_or(i128::MAX));
    Ok(i64::try_from(deadline).unwrap_or(i64::MAX))
}
