// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The kernel transport: the device through its Linux driver, the
//! `virtio_accel` module (`guest-driver/linux/`), which owns the virtqueues
//! and gives this process the accel device node `/dev/accel/accelN`
//! (spec/accel-uapi.md, cited as accel-uapi §n).
//!
//! Where the other transports drive the virtqueues themselves, this one
//! speaks the node's uAPI: memory is GEM objects ([`GemObject`]: shmem the
//! driver registers as device objects, or dma-bufs of other drivers
//! imported, such as a [`Udmabuf`]) or memory of this process pinned for a
//! job; completion is a `dma_fence`, seen as a sync_file ([`SyncFile`],
//! waited for with `poll()`) or held in a DRM syncobj ([`Syncobj`]); each
//! job's outcome is a result record ([`JobRecord`]) that decodes into the
//! [`Completion`](crate::Completion) the virtqueue driver gives.
//!
//! Modules:
//! - [`uapi`]: the ioctl structures and numbers, mirrored from the headers;
//! - [`discover`]: finding the nodes of the `virtio_accel` driver in sysfs;
//! - [`gem`], [`fence`], [`job`]: objects, fences and jobs of a node;
//! - [`udmabuf`]: dma-bufs of memfd pages (`/dev/udmabuf`), to import;
//! - [`map`]: the mappings of objects and dma-bufs.
//!
//! ```no_run
//! use accel_driver::kernel::{self, KernelDevice, Submission};
//! use std::path::Path;
//! use virtio_accel_spec::Op;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let nodes = kernel::list_nodes(Path::new("/sys"), Path::new(kernel::DEV_ROOT))?;
//! let node = nodes.first().ok_or("the virtio_accel module drives no device")?;
//! let device = KernelDevice::open(&node.node)?;
//! let data = device.create_object(9)?;
//! data.mapping()?.write(0, b"123456789")?;
//! let record = device.run(&Submission::new(Op::Crc32c).input(data.range(0, 9)?))?;
//! assert_eq!(record.completion(0).check()?.result_u32(), 0xe306_9283);
//! # Ok(())
//! # }
//! ```

pub mod discover;
pub mod fence;
pub mod gem;
pub mod job;
pub mod map;
pub mod uapi;
pub mod udmabuf;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use virtio_accel_spec::{Op, VirtioAccelConfig};
use vm_memory::endian::{Le32, Le64};

pub use discover::{list_nodes, KernelNode, DEV_ROOT};
pub use fence::{SyncFile, Syncobj};
pub use gem::GemObject;
pub use job::{JobBuffer, JobRecord, KernelJob, Submission};
pub use map::Mapping;
pub use uapi::{DrmVaccelInfo, DRIVER_NAME};
pub use udmabuf::{Udmabuf, UDMABUF_PATH};

use job::Results;
use uapi::{DrmVersion, Ioctl};

/// Errors of the kernel transport.
#[derive(Debug, Error)]
pub enum Error {
    /// The node could not be opened.
    #[error("cannot open {path}")]
    Open {
        /// The node.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The node belongs to another DRM driver.
    #[error("{path} is a device of DRM driver {driver:?}, not {DRIVER_NAME}")]
    NotVirtioAccel {
        /// The node.
        path: PathBuf,
        /// Its driver's name.
        driver: String,
    },
    /// An ioctl failed.
    #[error("{name}")]
    Ioctl {
        /// `DRM_IOCTL_...`.
        name: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// An object's pages form more physically contiguous runs than one
    /// device object may have (E2BIG, accel-uapi §4.1). Objects and memfds
    /// are shmem: with huge pages for shmem (`always` in
    /// `/sys/kernel/mm/transparent_hugepage/shmem_enabled`) their pages come
    /// in 2 MiB runs.
    #[error(
        "an object of {size} bytes: its pages form more contiguous runs than the device's \
         max_segments ({max_segments}) allows (E2BIG); use smaller objects, or give shmem huge \
         pages (echo always > /sys/kernel/mm/transparent_hugepage/shmem_enabled)"
    )]
    Fragmented {
        /// Bytes of the object.
        size: u64,
        /// The device's limit.
        max_segments: u32,
    },
    /// A range outside an object or mapping.
    #[error("range {offset:#x}+{len:#x} is outside an object of {size:#x} bytes")]
    OutOfRange {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Size of the object.
        size: u64,
    },
    /// An object larger than this process can map.
    #[error("an object of {0} bytes does not fit the address space")]
    TooLarge(u64),
    /// `mmap()` failed.
    #[error("mmap")]
    Map(#[source] io::Error),
    /// The object is not mapped into this process.
    #[error("GEM object {0} is not mapped")]
    NotMapped(u32),
    /// An ioctl succeeded without the file descriptor it returns.
    #[error("{0} returned no file descriptor")]
    NoDescriptor(&'static str),
    /// A file descriptor could not be duplicated.
    #[error("cannot duplicate a file descriptor")]
    Dup(#[source] io::Error),
    /// Waiting for a fence failed.
    #[error("waiting for a fence")]
    Wait(#[source] io::Error),
    /// A job did not finish in time.
    #[error("the job did not finish within {0:?}")]
    Timeout(Duration),
    /// A job's fence signalled before its record was final.
    #[error("job {0}: its fence signalled with its record still pending (accel-uapi §6)")]
    RecordPending(u64),
    /// A record of another job than the one written to its slot.
    #[error("the record of job {expected} names job {found}")]
    RecordMismatch {
        /// The job submitted.
        expected: u64,
        /// The job the record names.
        found: u64,
    },
    /// An output buffer of shared memory ([`JobBuffer::memory`]).
    #[error("an output of memory must be borrowed mutably (JobBuffer::memory_mut)")]
    ReadOnlyOutput,
    /// Every result record belongs to an unfinished job.
    #[error("all {0} result records hold unfinished jobs: wait for some")]
    NoResultSlot(usize),
    /// A udmabuf could not be made.
    #[error("udmabuf: {what}")]
    Udmabuf {
        /// The step that failed.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// sysfs could not be read.
    #[error("cannot read {path}")]
    Sysfs {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn ioctl<T>(ioctl: &Ioctl<T>, source: io::Error) -> Self {
        Error::Ioctl {
            name: ioctl.name,
            source,
        }
    }

    /// The errno of a failed ioctl.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Ioctl { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Result of kernel transport operations.
pub type Result<T> = std::result::Result<T, Error>;

/// The system's page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf only reads a system value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// An open accel node of the `virtio_accel` driver.
#[derive(Debug)]
pub struct KernelDevice {
    file: File,
    path: PathBuf,
    version: (i32, i32, i32),
    info: DrmVaccelInfo,
    results: Results,
    timeout: Duration,
}

impl AsFd for KernelDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl KernelDevice {
    /// Opens the node `path`, checks that its driver is `virtio_accel`
    /// (`DRM_IOCTL_VERSION`), reads the device's configuration
    /// (`GET_INFO`) and makes the results object.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let (driver, version) = driver_version(file.as_fd())?;
        if driver != DRIVER_NAME {
            return Err(Error::NotVirtioAccel {
                path: path.to_path_buf(),
                driver,
            });
        }
        let mut info = DrmVaccelInfo::default();
        // SAFETY: the argument carries no address.
        unsafe { uapi::call(file.as_fd(), &uapi::DRM_IOCTL_VACCEL_GET_INFO, &mut info) }
            .map_err(|source| Error::ioctl(&uapi::DRM_IOCTL_VACCEL_GET_INFO, source))?;
        let results = Results::create(file.as_fd())?;
        Ok(KernelDevice {
            file,
            path: path.to_path_buf(),
            version,
            info,
            results,
            timeout: Duration::from_secs(10),
        })
    }

    /// Calls `ioctl` on the node.
    ///
    /// # Safety
    ///
    /// As [`uapi::call`]: the addresses in `arg` must be valid for the ioctl.
    pub(crate) unsafe fn ioctl<T>(&self, ioctl: &Ioctl<T>, arg: &mut T) -> Result<()> {
        // SAFETY: the caller's contract is the callee's.
        unsafe { uapi::call(self.file.as_fd(), ioctl, arg) }
            .map(|_| ())
            .map_err(|source| Error::ioctl(ioctl, source))
    }

    /// The node's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The driver's version (major, minor, patch level).
    pub fn version(&self) -> (i32, i32, i32) {
        self.version
    }

    /// The device as the driver reports it (`GET_INFO`).
    pub fn info(&self) -> &DrmVaccelInfo {
        &self.info
    }

    /// The device's configuration (spec §5) as the driver checked it.
    pub fn config(&self) -> VirtioAccelConfig {
        let info = &self.info;
        VirtioAccelConfig {
            num_request_queues: Le32::from(info.num_request_queues),
            ops: Le32::from(info.ops),
            max_segments: Le32::from(info.max_segments),
            max_deps: Le32::from(info.max_deps),
            max_objects: Le32::from(info.max_objects),
            max_inflight: Le32::from(info.max_inflight),
            max_object_size: Le64::from(info.max_object_size),
            max_buffer_size: Le64::from(info.max_buffer_size),
        }
    }

    /// Capabilities the driver enabled, as feature bits (OBJECTS, FENCES).
    pub fn capabilities(&self) -> u64 {
        self.info.capabilities
    }

    /// Whether capability `bit` is enabled.
    pub fn has_capability(&self, bit: u32) -> bool {
        self.info.capabilities & crate::feature(bit) != 0
    }

    /// Request queues jobs may name.
    pub fn num_request_queues(&self) -> u16 {
        u16::try_from(self.info.num_request_queues).unwrap_or(u16::MAX)
    }

    /// Whether the device offers `op`.
    pub fn supports(&self, op: Op) -> bool {
        self.info.ops & op.capability() != 0
    }

    /// Timeout of [`run`](Self::run).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the timeout of [`run`](Self::run).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

/// The DRM driver name and version of the node `fd` (`DRM_IOCTL_VERSION`).
fn driver_version(fd: BorrowedFd<'_>) -> Result<(String, (i32, i32, i32))> {
    let mut name = [0u8; 64];
    let mut version = DrmVersion {
        name_len: name.len(),
        name: name.as_mut_ptr() as usize,
        ..DrmVersion::default()
    };
    // SAFETY: `name` is writable for `name_len` bytes across the call, and
    // the date and description buffers are absent (length 0).
    unsafe { uapi::call(fd, &uapi::DRM_IOCTL_VERSION, &mut version) }
        .map_err(|source| Error::ioctl(&uapi::DRM_IOCTL_VERSION, source))?;
    let len = version.name_len.min(name.len());
    let driver = String::from_utf8_lossy(&name[..len]).into_owned();
    Ok((
        driver,
        (
            version.version_major,
            version.version_minor,
            version.version_patchlevel,
        ),
    ))
}
