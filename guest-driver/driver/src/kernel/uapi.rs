// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The Linux uAPI the kernel transport speaks, mirrored in Rust: the accel
//! node's own ioctls (spec/accel-uapi.md, header
//! `guest-driver/linux/include/uapi/drm/virtio_accel_drm.h`), the generic DRM
//! ones it serves (`<drm/drm.h>`: VERSION, GEM_CLOSE, PRIME, SYNCOBJ) and
//! udmabuf's (`<linux/udmabuf.h>`), which makes dma-bufs of memfd pages.
//!
//! Every structure is `#[repr(C)]` with its size and field offsets asserted
//! at compile time against the header. Every ioctl is an [`Ioctl<T>`]: its
//! number encodes `size_of::<T>()` the way `_IOWR` does, so an argument of
//! the wrong type cannot be passed with it.

use std::io;
use std::marker::PhantomData;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, BorrowedFd};

use vm_memory::ByteValued;

// ---- ioctl numbers (include/uapi/asm-generic/ioctl.h) ---------------------------

const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = 8;
const IOC_SIZESHIFT: u32 = 16;
const IOC_DIRSHIFT: u32 = 30;
/// Largest argument an ioctl number can encode (14 size bits).
const IOC_SIZEMAX: usize = (1 << 14) - 1;

/// `_IOC_WRITE`: userspace writes the argument, the kernel reads it.
pub const IOC_WRITE: u32 = 1;
/// `_IOC_READ`: the kernel writes the argument.
pub const IOC_READ: u32 = 2;

/// `_IOC(dir, ty, nr, size)`.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(
        size <= IOC_SIZEMAX,
        "an ioctl argument has at most 14 bits of size"
    );
    // `size` fits 14 bits (asserted): the cast keeps it whole.
    #[allow(clippy::cast_possible_truncation)]
    let size = size as u32;
    (dir << IOC_DIRSHIFT)
        | (size << IOC_SIZESHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
}

/// An ioctl whose argument is a `T`: its number and its name for errors.
#[derive(Debug)]
pub struct Ioctl<T> {
    /// The request number.
    pub number: u32,
    /// `DRM_IOCTL_...`, for messages.
    pub name: &'static str,
    arg: PhantomData<fn(&mut T)>,
}

impl<T> Ioctl<T> {
    /// The ioctl `nr` of type `ty` in direction `dir`, with a `T` argument.
    pub const fn new(dir: u32, ty: u8, nr: u8, name: &'static str) -> Self {
        Ioctl {
            number: ioc(dir, ty, nr, size_of::<T>()),
            name,
            arg: PhantomData,
        }
    }
}

/// Calls `ioctl` on `fd` with `arg`, again when a signal interrupts it;
/// returns what the call returns (a new file descriptor for some).
///
/// # Safety
///
/// Every address `arg` carries (user pointers in `__u64` fields) must be
/// valid for what the ioctl does through it: readable for what it reads,
/// writable and not otherwise borrowed for what it (or a job it starts)
/// writes.
pub unsafe fn call<T>(fd: BorrowedFd<'_>, ioctl: &Ioctl<T>, arg: &mut T) -> io::Result<i32> {
    loop {
        // SAFETY: `arg` is a live, exclusively borrowed `T`, and the request
        // number encodes `size_of::<T>()`, so the kernel reads and writes
        // only its bytes; the caller vouches for the addresses inside it.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                ioctl.number as libc::Ioctl,
                std::ptr::from_mut(arg),
            )
        };
        if rc >= 0 {
            return Ok(rc);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

// ---- DRM core (<drm/drm.h>) ------------------------------------------------------

/// `DRM_IOCTL_BASE`.
pub const DRM_IOCTL_BASE: u8 = b'd';
/// `DRM_COMMAND_BASE`: the first driver-specific ioctl.
pub const DRM_COMMAND_BASE: u8 = 0x40;

/// `DRM_IOR(nr, T)`.
pub const fn drm_ior<T>(nr: u8, name: &'static str) -> Ioctl<T> {
    Ioctl::new(IOC_READ, DRM_IOCTL_BASE, nr, name)
}

/// `DRM_IOW(nr, T)`.
pub const fn drm_iow<T>(nr: u8, name: &'static str) -> Ioctl<T> {
    Ioctl::new(IOC_WRITE, DRM_IOCTL_BASE, nr, name)
}

/// `DRM_IOWR(nr, T)`.
pub const fn drm_iowr<T>(nr: u8, name: &'static str) -> Ioctl<T> {
    Ioctl::new(IOC_READ | IOC_WRITE, DRM_IOCTL_BASE, nr, name)
}

/// `struct drm_version`: the driver's name and version.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DrmVersion {
    /// Major version.
    pub version_major: i32,
    /// Minor version.
    pub version_minor: i32,
    /// Patch level.
    pub version_patchlevel: i32,
    /// In: room at `name`; out: the name's length.
    pub name_len: usize,
    /// Address of the name buffer.
    pub name: usize,
    /// In: room at `date`; out: the date's length.
    pub date_len: usize,
    /// Address of the date buffer.
    pub date: usize,
    /// In: room at `desc`; out: the description's length.
    pub desc_len: usize,
    /// Address of the description buffer.
    pub desc: usize,
}
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<DrmVersion>() == 64 && offset_of!(DrmVersion, name_len) == 16);

/// `struct drm_gem_close`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrmGemClose {
    /// The handle to close.
    pub handle: u32,
    /// Zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<DrmGemClose>() == 8);

/// `struct drm_prime_handle`: PRIME export and import.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrmPrimeHandle {
    /// The GEM handle (in for export, out for import).
    pub handle: u32,
    /// Export: `DRM_CLOEXEC`, `DRM_RDWR`.
    pub flags: u32,
    /// The dma-buf file descriptor (out for export, in for import).
    pub fd: i32,
}
const _: () = assert!(size_of::<DrmPrimeHandle>() == 12);

/// `DRM_CLOEXEC`: the exported dma-buf is closed on exec.
pub const DRM_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
/// `DRM_RDWR`: the exported dma-buf may be mapped writable.
pub const DRM_RDWR: u32 = libc::O_RDWR as u32;

/// `struct drm_syncobj_create`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrmSyncobjCreate {
    /// Out: the handle.
    pub handle: u32,
    /// `DRM_SYNCOBJ_CREATE_SIGNALED` or 0.
    pub flags: u32,
}
const _: () = assert!(size_of::<DrmSyncobjCreate>() == 8);

/// `struct drm_syncobj_destroy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrmSyncobjDestroy {
    /// The handle.
    pub handle: u32,
    /// Zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<DrmSyncobjDestroy>() == 8);

/// `struct drm_syncobj_handle`: a syncobj to or from a file descriptor.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrmSyncobjHandle {
    /// The syncobj.
    pub handle: u32,
    /// `DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE`, ...
    pub flags: u32,
    /// The file descriptor.
    pub fd: i32,
    /// Zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<DrmSyncobjHandle>() == 16);

/// Export the syncobj's current fence as a sync_file.
pub const DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE: u32 = 1;

/// `struct drm_syncobj_wait`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrmSyncobjWait {
    /// Address of `count_handles` `u32` handles.
    pub handles: u64,
    /// Absolute CLOCK_MONOTONIC deadline, nanoseconds.
    pub timeout_nsec: i64,
    /// Number of handles.
    pub count_handles: u32,
    /// `DRM_SYNCOBJ_WAIT_FLAGS_*`.
    pub flags: u32,
    /// Out, without WAIT_ALL: the first one signalled.
    pub first_signaled: u32,
    /// Zero.
    pub pad: u32,
    /// With `DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE`: a deadline hint.
    pub deadline_nsec: u64,
}
const _: () = assert!(size_of::<DrmSyncobjWait>() == 40);

/// Wait for every handle, not the first.
pub const DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL: u32 = 1;

/// `DRM_IOCTL_VERSION`.
pub const DRM_IOCTL_VERSION: Ioctl<DrmVersion> = drm_iowr(0x00, "DRM_IOCTL_VERSION");
/// `DRM_IOCTL_GEM_CLOSE`.
pub const DRM_IOCTL_GEM_CLOSE: Ioctl<DrmGemClose> = drm_iow(0x09, "DRM_IOCTL_GEM_CLOSE");
/// `DRM_IOCTL_PRIME_HANDLE_TO_FD`.
pub const DRM_IOCTL_PRIME_HANDLE_TO_FD: Ioctl<DrmPrimeHandle> =
    drm_iowr(0x2d, "DRM_IOCTL_PRIME_HANDLE_TO_FD");
/// `DRM_IOCTL_PRIME_FD_TO_HANDLE`.
pub const DRM_IOCTL_PRIME_FD_TO_HANDLE: Ioctl<DrmPrimeHandle> =
    drm_iowr(0x2e, "DRM_IOCTL_PRIME_FD_TO_HANDLE");
/// `DRM_IOCTL_SYNCOBJ_CREATE`.
pub const DRM_IOCTL_SYNCOBJ_CREATE: Ioctl<DrmSyncobjCreate> =
    drm_iowr(0xbf, "DRM_IOCTL_SYNCOBJ_CREATE");
/// `DRM_IOCTL_SYNCOBJ_DESTROY`.
pub const DRM_IOCTL_SYNCOBJ_DESTROY: Ioctl<DrmSyncobjDestroy> =
    drm_iowr(0xc0, "DRM_IOCTL_SYNCOBJ_DESTROY");
/// `DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD`.
pub const DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD: Ioctl<DrmSyncobjHandle> =
    drm_iowr(0xc1, "DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD");
/// `DRM_IOCTL_SYNCOBJ_WAIT`.
pub const DRM_IOCTL_SYNCOBJ_WAIT: Ioctl<DrmSyncobjWait> = drm_iowr(0xc3, "DRM_IOCTL_SYNCOBJ_WAIT");

// ---- the accel node (<drm/virtio_accel_drm.h>, spec/accel-uapi.md) ---------------

/// The DRM driver name of the node (accel-uapi §1).
pub const DRIVER_NAME: &str = "virtio_accel";

/// `struct drm_vaccel_info` (accel-uapi §2). Its first 40 bytes are the
/// device configuration of spec §5, field for field.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrmVaccelInfo {
    /// Request queues the driver uses.
    pub num_request_queues: u32,
    /// Bit n: operation n is supported.
    pub ops: u32,
    /// Most descriptors of one request; most contiguous runs of one object.
    pub max_segments: u32,
    /// Most device dependencies of one request.
    pub max_deps: u32,
    /// Most device objects at a time.
    pub max_objects: u32,
    /// Most requests in flight per request queue.
    pub max_inflight: u32,
    /// Largest device object, bytes.
    pub max_object_size: u64,
    /// Largest buffer of a request, bytes.
    pub max_buffer_size: u64,
    /// Enabled capabilities, as feature bits (OBJECTS, FENCES).
    pub capabilities: u64,
}
const _: () = assert!(size_of::<DrmVaccelInfo>() == 48);
const _: () = assert!(offset_of!(DrmVaccelInfo, max_object_size) == 24);
const _: () = assert!(offset_of!(DrmVaccelInfo, capabilities) == 40);

/// `struct drm_vaccel_gem_create` (accel-uapi §4.1).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrmVaccelGemCreate {
    /// In: bytes; out: rounded up to pages.
    pub size: u64,
    /// Zero.
    pub flags: u32,
    /// Out: the GEM handle.
    pub handle: u32,
}
const _: () = assert!(size_of::<DrmVaccelGemCreate>() == 16);

/// `struct drm_vaccel_gem_info` (accel-uapi §4.2).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrmVaccelGemInfo {
    /// In: the handle.
    pub handle: u32,
    /// Out: `DRM_VACCEL_GEM_*`.
    pub flags: u32,
    /// Out: the bytes jobs may use.
    pub size: u64,
    /// Out: where to `mmap()` the object on the node.
    pub mmap_offset: u64,
}
const _: () = assert!(size_of::<DrmVaccelGemInfo>() == 24);

/// The object is an imported dma-buf.
pub const DRM_VACCEL_GEM_IMPORTED: u32 = 0x1;
/// The object is a device object now.
pub const DRM_VACCEL_GEM_REGISTERED: u32 = 0x2;

/// `struct drm_vaccel_buffer` (accel-uapi §5).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrmVaccelBuffer {
    /// A GEM handle, or 0 for memory at `user_ptr`.
    pub handle: u32,
    /// Zero.
    pub pad: u32,
    /// GEM: the buffer's first byte in the object; memory: 0.
    pub offset: u64,
    /// Bytes.
    pub length: u64,
    /// Memory: the buffer's address; GEM: 0.
    pub user_ptr: u64,
}
const _: () = assert!(size_of::<DrmVaccelBuffer>() == 32);

/// Wait for `in_sync_file`.
pub const DRM_VACCEL_SUBMIT_IN_SYNC_FILE: u32 = 0x1;
/// Return a sync_file of the job's fence in `out_sync_file`.
pub const DRM_VACCEL_SUBMIT_OUT_SYNC_FILE: u32 = 0x2;
/// Run on request queue `queue`.
pub const DRM_VACCEL_SUBMIT_QUEUE: u32 = 0x4;
/// Most syncobjs in `in_syncobjs`.
pub const DRM_VACCEL_MAX_IN_SYNCOBJS: usize = 64;

/// `struct drm_vaccel_submit` (accel-uapi §5).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrmVaccelSubmit {
    /// `VIRTIO_ACCEL_OP_*`.
    pub op: u32,
    /// `DRM_VACCEL_SUBMIT_*`.
    pub flags: u32,
    /// The operation's parameter block, as the device reads it.
    pub params: [u8; 64],
    /// Input buffers.
    pub num_in: u32,
    /// Output buffers.
    pub num_out: u32,
    /// Address of `num_in + num_out` [`DrmVaccelBuffer`]s.
    pub buffers: u64,
    /// Address of `num_in_syncobjs` `u32` handles.
    pub in_syncobjs: u64,
    /// At most [`DRM_VACCEL_MAX_IN_SYNCOBJS`].
    pub num_in_syncobjs: u32,
    /// With `IN_SYNC_FILE`: a sync_file.
    pub in_sync_file: i32,
    /// A syncobj that receives the job's fence, or 0.
    pub out_syncobj: u32,
    /// Out, with `OUT_SYNC_FILE`: a sync_file of the job's fence.
    pub out_sync_file: i32,
    /// The GEM object that receives the record, or 0.
    pub results_handle: u32,
    /// With `QUEUE`: the request queue.
    pub queue: u32,
    /// Where the record goes in `results_handle`, a multiple of 64.
    pub results_offset: u64,
    /// Out: the job's number.
    pub job_id: u64,
}
const _: () = assert!(size_of::<DrmVaccelSubmit>() == 136);
const _: () = assert!(offset_of!(DrmVaccelSubmit, num_in) == 72);
const _: () = assert!(offset_of!(DrmVaccelSubmit, buffers) == 80);
const _: () = assert!(offset_of!(DrmVaccelSubmit, in_sync_file) == 100);
const _: () = assert!(offset_of!(DrmVaccelSubmit, results_offset) == 120);
const _: () = assert!(offset_of!(DrmVaccelSubmit, job_id) == 128);

impl Default for DrmVaccelSubmit {
    fn default() -> Self {
        DrmVaccelSubmit {
            op: 0,
            flags: 0,
            params: [0; 64],
            num_in: 0,
            num_out: 0,
            buffers: 0,
            in_syncobjs: 0,
            num_in_syncobjs: 0,
            in_sync_file: 0,
            out_syncobj: 0,
            out_sync_file: -1,
            results_handle: 0,
            queue: 0,
            results_offset: 0,
            job_id: 0,
        }
    }
}

/// `status` of a record whose job has not finished.
pub const DRM_VACCEL_STATUS_PENDING: u32 = 0xffff_ffff;
/// `queue` of a record whose job never reached the device.
pub const DRM_VACCEL_NO_QUEUE: u32 = 0xffff_ffff;

/// `struct drm_vaccel_result` (accel-uapi §7): how a job ended.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrmVaccelResult {
    /// The job.
    pub job_id: u64,
    /// PENDING, then `VIRTIO_ACCEL_S_*`, written last.
    pub status: u32,
    /// 0 if `status` is Ok, else a negative errno.
    pub error: i32,
    /// Bytes written to the first output.
    pub bytes_written: u64,
    /// The request queue the job ran on, or NO_QUEUE.
    pub queue: u32,
    /// Zero.
    pub reserved: u32,
    /// The operation's result (spec §8).
    pub result: [u8; 32],
}
/// Size of a record; records sit at multiples of it.
pub const RESULT_RECORD_SIZE: usize = 64;
const _: () = assert!(size_of::<DrmVaccelResult>() == RESULT_RECORD_SIZE);
/// Offset of `status` in a record.
pub const RESULT_STATUS_OFFSET: usize = offset_of!(DrmVaccelResult, status);
const _: () = assert!(RESULT_STATUS_OFFSET == 8 && offset_of!(DrmVaccelResult, result) == 32);

// SAFETY: `DrmVaccelResult` is `repr(C)`, made of integers and a byte array,
// has no padding (its size is the sum of its fields, asserted above), and
// every bit pattern is a valid value.
unsafe impl ByteValued for DrmVaccelResult {}

/// `DRM_VACCEL_GET_INFO`.
pub const DRM_VACCEL_GET_INFO: u8 = 0x00;
/// `DRM_VACCEL_GEM_CREATE`.
pub const DRM_VACCEL_GEM_CREATE: u8 = 0x01;
/// `DRM_VACCEL_GEM_INFO`.
pub const DRM_VACCEL_GEM_INFO: u8 = 0x02;
/// `DRM_VACCEL_SUBMIT`.
pub const DRM_VACCEL_SUBMIT: u8 = 0x03;

/// `DRM_IOCTL_VACCEL_GET_INFO`.
pub const DRM_IOCTL_VACCEL_GET_INFO: Ioctl<DrmVaccelInfo> = drm_ior(
    DRM_COMMAND_BASE + DRM_VACCEL_GET_INFO,
    "DRM_IOCTL_VACCEL_GET_INFO",
);
/// `DRM_IOCTL_VACCEL_GEM_CREATE`.
pub const DRM_IOCTL_VACCEL_GEM_CREATE: Ioctl<DrmVaccelGemCreate> = drm_iowr(
    DRM_COMMAND_BASE + DRM_VACCEL_GEM_CREATE,
    "DRM_IOCTL_VACCEL_GEM_CREATE",
);
/// `DRM_IOCTL_VACCEL_GEM_INFO`.
pub const DRM_IOCTL_VACCEL_GEM_INFO: Ioctl<DrmVaccelGemInfo> = drm_iowr(
    DRM_COMMAND_BASE + DRM_VACCEL_GEM_INFO,
    "DRM_IOCTL_VACCEL_GEM_INFO",
);
/// `DRM_IOCTL_VACCEL_SUBMIT`.
pub const DRM_IOCTL_VACCEL_SUBMIT: Ioctl<DrmVaccelSubmit> = drm_iowr(
    DRM_COMMAND_BASE + DRM_VACCEL_SUBMIT,
    "DRM_IOCTL_VACCEL_SUBMIT",
);

// ---- udmabuf (<linux/udmabuf.h>) -------------------------------------------------

/// `struct udmabuf_create`: a dma-buf of a range of a sealed memfd.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UdmabufCreate {
    /// The memfd (sealed against shrinking).
    pub memfd: u32,
    /// `UDMABUF_FLAGS_CLOEXEC`.
    pub flags: u32,
    /// Offset in the memfd, page-aligned.
    pub offset: u64,
    /// Bytes, page-aligned.
    pub size: u64,
}
const _: () = assert!(size_of::<UdmabufCreate>() == 24);

/// The dma-buf is closed on exec.
pub const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;
/// `UDMABUF_CREATE`: returns the dma-buf's file descriptor.
pub const UDMABUF_CREATE: Ioctl<UdmabufCreate> =
    Ioctl::new(IOC_WRITE, b'u', 0x42, "UDMABUF_CREATE");

#[cfg(test)]
mod tests {
    use super::*;

    /// The ioctl table of spec/accel-uapi.md §1: `| NAME | 0x... | ...`.
    fn spec_numbers() -> Vec<(String, u32)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../spec/accel-uapi.md");
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(|c| c.trim()).collect();
                let name = cells.get(1)?.trim_matches('`');
                let number = cells.get(2)?.trim_matches('`').strip_prefix("0x")?;
                Some((name.to_string(), u32::from_str_radix(number, 16).ok()?))
            })
            .collect()
    }

    #[test]
    fn accel_ioctl_numbers_are_those_of_the_spec() {
        let ours = [
            &DRM_IOCTL_VACCEL_GET_INFO.number,
            &DRM_IOCTL_VACCEL_GEM_CREATE.number,
            &DRM_IOCTL_VACCEL_GEM_INFO.number,
            &DRM_IOCTL_VACCEL_SUBMIT.number,
        ];
        let names = [
            DRM_IOCTL_VACCEL_GET_INFO.name,
            DRM_IOCTL_VACCEL_GEM_CREATE.name,
            DRM_IOCTL_VACCEL_GEM_INFO.name,
            DRM_IOCTL_VACCEL_SUBMIT.name,
        ];
        let spec = spec_numbers();
        assert_eq!(spec.len(), 4, "the spec's table: {spec:?}");
        for (name, number) in names.iter().zip(ours) {
            let listed = spec.iter().find(|(n, _)| n == name);
            assert_eq!(listed.map(|(_, v)| v), Some(number), "{name}");
        }
        assert_eq!(DRM_IOCTL_VACCEL_SUBMIT.number, 0xc088_6443);
    }

    #[test]
    fn generic_ioctl_numbers_match_the_kernel_headers() {
        // As the C macros of <drm/drm.h> and <linux/udmabuf.h> give them on x86_64.
        assert_eq!(DRM_IOCTL_VERSION.number, 0xc040_6400);
        assert_eq!(DRM_IOCTL_GEM_CLOSE.number, 0x4008_6409);
        assert_eq!(DRM_IOCTL_PRIME_HANDLE_TO_FD.number, 0xc00c_642d);
        assert_eq!(DRM_IOCTL_PRIME_FD_TO_HANDLE.number, 0xc00c_642e);
        assert_eq!(DRM_IOCTL_SYNCOBJ_CREATE.number, 0xc008_64bf);
        assert_eq!(DRM_IOCTL_SYNCOBJ_DESTROY.number, 0xc008_64c0);
        assert_eq!(DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD.number, 0xc010_64c1);
        assert_eq!(DRM_IOCTL_SYNCOBJ_WAIT.number, 0xc028_64c3);
        assert_eq!(UDMABUF_CREATE.number, 0x4018_7542);
        assert_eq!(DRM_CLOEXEC, 0o2_000_000);
    }

    #[test]
    fn ioc_places_each_field() {
        assert_eq!(ioc(IOC_READ, b'd', 0x40, 48), 0x8030_6440);
        assert_eq!(ioc(0, 0, 0xff, 0), 0xff);
        assert_eq!(ioc(IOC_WRITE, 0xab, 0, IOC_SIZEMAX), 0x7fff_ab00);
    }

    #[test]
    fn info_starts_with_the_device_configuration() {
        use virtio_accel_spec::VirtioAccelConfig;
        assert_eq!(
            offset_of!(DrmVaccelInfo, max_buffer_size),
            offset_of!(VirtioAccelConfig, max_buffer_size)
        );
        assert_eq!(
            offset_of!(DrmVaccelInfo, capabilities),
            size_of::<VirtioAccelConfig>()
        );
    }
}
