// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! GEM objects of the accel node (accel-uapi §4): shmem memory the driver
//! registers as a device object (spec §7.1), or another driver's dma-buf
//! imported as one; mapped into this process, exported as dma-bufs, and
//! closed when dropped (a job still using one keeps it alive in the kernel,
//! accel-uapi §4.3).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::map::Mapping;
use super::uapi::{
    self, DrmGemClose, DrmPrimeHandle, DrmVaccelGemCreate, DrmVaccelGemInfo, DRM_CLOEXEC, DRM_RDWR,
    DRM_VACCEL_GEM_IMPORTED, DRM_VACCEL_GEM_REGISTERED,
};
use super::{Error, JobBuffer, KernelDevice, Result};

/// A GEM handle of a device node, closed when dropped.
#[derive(Debug)]
pub struct GemObject<'d> {
    device: &'d KernelDevice,
    handle: u32,
    info: DrmVaccelGemInfo,
    map: Option<Mapping>,
}

impl KernelDevice {
    /// A new object of at least `size` bytes (rounded up to pages), zeroed,
    /// registered as a device object when the device has OBJECTS, and mapped
    /// into this process (`GEM_CREATE`, `GEM_INFO`, `mmap`).
    ///
    /// [`Error::Fragmented`] when its pages form more contiguous runs than
    /// the device's `max_segments`: use smaller objects.
    pub fn create_object(&self, size: u64) -> Result<GemObject<'_>> {
        let mut create = DrmVaccelGemCreate {
            size,
            ..DrmVaccelGemCreate::default()
        };
        // SAFETY: the argument carries no address.
        match unsafe { self.ioctl(&uapi::DRM_IOCTL_VACCEL_GEM_CREATE, &mut create) } {
            Err(Error::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::E2BIG) => {
                return Err(self.fragmented(size));
            }
            other => other?,
        }
        let mut object = self.adopt(create.handle)?;
        object.map()?;
        Ok(object)
    }

    /// Imports the dma-buf `dmabuf` of another driver as a device object
    /// (`PRIME_FD_TO_HANDLE`), not mapped (see [`GemObject::map`]). A
    /// dma-buf this node exported comes back as the object it was made of:
    /// with the same handle, which this value then also closes, so import
    /// only foreign dma-bufs this way (see [`KernelDevice::import_handle`]).
    pub fn import(&self, dmabuf: BorrowedFd<'_>) -> Result<GemObject<'_>> {
        let handle = self.import_handle(dmabuf)?;
        self.adopt(handle)
    }

    /// `PRIME_FD_TO_HANDLE` of `dmabuf`: the GEM handle, which the caller
    /// closes (or the node's closing does).
    pub fn import_handle(&self, dmabuf: BorrowedFd<'_>) -> Result<u32> {
        let mut prime = DrmPrimeHandle {
            fd: dmabuf.as_raw_fd(),
            ..DrmPrimeHandle::default()
        };
        // SAFETY: the argument carries no address.
        match unsafe { self.ioctl(&uapi::DRM_IOCTL_PRIME_FD_TO_HANDLE, &mut prime) } {
            Err(Error::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::E2BIG) => {
                Err(self.fragmented(dmabuf_size(dmabuf)))
            }
            other => other.map(|()| prime.handle),
        }
    }

    /// The object behind `handle`, which this value closes when dropped.
    fn adopt(&self, handle: u32) -> Result<GemObject<'_>> {
        let mut object = GemObject {
            device: self,
            handle,
            info: DrmVaccelGemInfo::default(),
            map: None,
        };
        object.info = object.query()?;
        Ok(object)
    }

    fn fragmented(&self, size: u64) -> Error {
        Error::Fragmented {
            size,
            max_segments: self.info().max_segments,
        }
    }
}

impl GemObject<'_> {
    /// The GEM handle.
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// Bytes jobs may use (an imported dma-buf's own size).
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// Whether it is another driver's dma-buf.
    pub fn is_imported(&self) -> bool {
        self.info.flags & DRM_VACCEL_GEM_IMPORTED != 0
    }

    /// Whether it is a device object now (asks the kernel: a reset
    /// unregisters objects until a job uses them again, accel-uapi §9).
    pub fn is_registered(&self) -> Result<bool> {
        Ok(self.query()?.flags & DRM_VACCEL_GEM_REGISTERED != 0)
    }

    fn query(&self) -> Result<DrmVaccelGemInfo> {
        let mut info = DrmVaccelGemInfo {
            handle: self.handle,
            ..DrmVaccelGemInfo::default()
        };
        // SAFETY: the argument carries no address.
        unsafe {
            self.device
                .ioctl(&uapi::DRM_IOCTL_VACCEL_GEM_INFO, &mut info)
        }?;
        Ok(info)
    }

    /// Maps the object into this process if it is not yet (an imported one
    /// is mapped by its exporter, which must allow it).
    pub fn map(&mut self) -> Result<()> {
        if self.map.is_none() {
            let len =
                usize::try_from(self.info.size).map_err(|_| Error::TooLarge(self.info.size))?;
            let mapping = Mapping::new(self.device.as_fd(), len, self.info.mmap_offset, true)
                .map_err(Error::Map)?;
            self.map = Some(mapping);
        }
        Ok(())
    }

    /// The mapping ([`Error::NotMapped`] if there is none).
    pub fn mapping(&self) -> Result<&Mapping> {
        self.map.as_ref().ok_or(Error::NotMapped(self.handle))
    }

    /// A job buffer of bytes `offset..offset + len` of the object.
    pub fn range(&self, offset: u64, len: u64) -> Result<JobBuffer<'static>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(JobBuffer::object(self.handle, offset, len)),
            _ => Err(Error::OutOfRange {
                offset,
                len,
                size: self.size(),
            }),
        }
    }

    /// A job buffer of the whole object.
    pub fn all(&self) -> JobBuffer<'static> {
        JobBuffer::object(self.handle, 0, self.size())
    }

    /// Exports the object as a dma-buf (`PRIME_HANDLE_TO_FD`, read-write,
    /// closed on exec).
    pub fn export(&self) -> Result<OwnedFd> {
        let mut prime = DrmPrimeHandle {
            handle: self.handle,
            flags: DRM_CLOEXEC | DRM_RDWR,
            fd: -1,
        };
        // SAFETY: the argument carries no address.
        unsafe {
            self.device
                .ioctl(&uapi::DRM_IOCTL_PRIME_HANDLE_TO_FD, &mut prime)
        }?;
        if prime.fd < 0 {
            return Err(Error::NoDescriptor(uapi::DRM_IOCTL_PRIME_HANDLE_TO_FD.name));
        }
        // SAFETY: the kernel has just created `prime.fd` for this process, so
        // it is open and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(prime.fd) })
    }
}

impl Drop for GemObject<'_> {
    fn drop(&mut self) {
        // Unmapped first: the mapping holds the object too.
        self.map = None;
        let mut close = DrmGemClose {
            handle: self.handle,
            pad: 0,
        };
        // SAFETY: the argument carries no address.
        if let Err(e) = unsafe { self.device.ioctl(&uapi::DRM_IOCTL_GEM_CLOSE, &mut close) } {
            log::warn!("GEM handle {}: {e}", self.handle);
        }
    }
}

/// The size of a dma-buf (its inode's), 0 if it cannot be read.
fn dmabuf_size(dmabuf: BorrowedFd<'_>) -> u64 {
    dmabuf
        .try_clone_to_owned()
        .map(File::from)
        .and_then(|file| file.metadata())
        .map_or(0, |meta| meta.len())
}
