// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `accel-dmabuf-check`: guest objects as host dma-bufs, checked where the
//! host has udmabuf, vgem and vivid (issue 17): inside the QEMU TCG guest
//! that plays the host (`tests/tests/vm_dmabuf.rs`), as root, next to the
//! daemon it talks to.
//!
//! It plays the VMM of the daemon's tenant `0`: its guest RAM is a memfd
//! sealed as QEMU seals `memory-backend-memfd` ([`DmaMemory::sealed`]),
//! handed to the daemon over vhost-user (`--socket`); and for a moment that
//! of tenant `1` (`--unsealed-socket`), with an unsealed memfd. Then, one line each (`PASS NAME`, or `FAIL NAME: WHY`; the
//! names are [`DMABUF_CHECKS`], in order; a check that cannot run fails):
//!
//! - `sealed-memory`: the memfd carries `F_SEAL_SHRINK` (not
//!   `F_SEAL_WRITE`), the device opens over it, and the daemon's process of
//!   tenant `0` is found;
//! - `dmabuf-object`: an object over page-aligned memory (OBJECT_CREATE,
//!   spec §7.1) raises `vhost_user_accel_dmabuf_objects` by one, the
//!   tenant's process holds a udmabuf of the object's size
//!   (`/proc/PID/fdinfo`: `exp_name: udmabuf`), and a COPY out of it gives
//!   its bytes;
//! - `unaligned-fallback`: an object whose segment starts inside a page
//!   raises the `unaligned` fallback counter, makes no dma-buf, and works
//!   (a COPY out of it);
//! - `too-big-fallback`: so does an object one page over udmabuf's
//!   `size_limit_mb`, counted as `too_big`;
//! - `unsealed-fallback`: and an object of tenant `1`, whose guest RAM is
//!   an unsealed memfd (as cloud-hypervisor's is), counted as `unsealed`
//!   (this VMM connects to the daemon's second socket for it);
//! - `vgem-write-fence`: the object's dma-buf, taken from the tenant's
//!   process (`pidfd_getfd`), imported into vgem (a second, independent
//!   driver: PRIME import), gets a write fence of vgem's; a CRC-32C of the
//!   object has not completed a second later, completes Ok with the right
//!   CRC once the fence signals, and `implicit_sync_waits_total` rose;
//! - `vgem-read-fence`: with a read fence of vgem's on it, a CRC-32C of the
//!   object completes at once, and a COPY into it waits for the fence, then
//!   writes the bytes;
//! - `vivid-capture`: vivid (`allocators=0`) captures a frame straight into
//!   an object's dma-buf (V4L2 `MEMORY_DMABUF`); the frame's bytes, read by
//!   `mmap` of the dma-buf, are what the guest's memory holds and what the
//!   daemon reads from the object (its CRC-32C and a COPY out);
//! - `dmabuf-released`: once the object of `dmabuf-object` is destroyed,
//!   the gauge falls by one and the tenant's process no longer holds its
//!   dma-buf.
//!
//! With `--vulkan`, against a daemon running the Vulkan engine on a device
//! that imports dma-bufs (bookworm-backports' lavapipe in that guest), the
//! checks are [`VULKAN_DMABUF_CHECKS`] instead, each over objects that are
//! dma-bufs, and each request must complete Ok with the bytes of the
//! software engine's semantics and raise `dmabuf_imports_total` by the
//! number of its buffers that are objects:
//!
//! - `vulkan-sealed-memory`: as `sealed-memory`;
//! - `vulkan-copy-between-objects`: a COPY from one object to another, at
//!   offsets inside pages and words (two imports);
//! - `vulkan-fill-object`: a FILL of a range that starts and ends inside a
//!   word (one import); the bytes around it stay zero;
//! - `vulkan-copy-into-object`: a COPY from plain guest memory into an
//!   object (one import: the source's pages are imported as host memory);
//! - `vulkan-crc32c-of-object`: the CRC-32C of an object, which the compute
//!   shader reads from staging memory: the reference's, and no import.
//!
//! The kernel's interfaces (vgem's, V4L2's, dma-buf's) are declared here
//! from the Linux uAPI headers, sizes and ioctl numbers asserted; the DRM
//! core's come from `accel_driver::kernel::uapi`. Exits 1 when a check
//! failed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use accel_driver::kernel::uapi::{
    self, DrmGemClose, DrmPrimeHandle, DrmVersion, Ioctl, DRM_COMMAND_BASE, DRM_IOCTL_BASE,
    DRM_IOCTL_GEM_CLOSE, DRM_IOCTL_PRIME_FD_TO_HANDLE, DRM_IOCTL_VERSION, IOC_READ, IOC_WRITE,
};
use accel_driver::memory::PAGE_SIZE;
use accel_driver::transport::vhost_user::VhostUserOptions;
use accel_driver::{
    Buffer, Completion, Device, DmaBuf, DmaMemory, Object, OpenOptions as DeviceOptions, Request,
    VhostUserTransport, DEFAULT_FEATURES,
};
use accel_tests::reference;
use accel_tests::vm::{DMABUF_CHECKS, VULKAN_DMABUF_CHECKS};
use clap::Parser;
use vhost_user_accel::{SocketSource, TenantConfig};
use virtio_accel_spec::{FillParams, Op, Status};

#[derive(Debug, Parser)]
#[command(about = "Guest objects as host dma-bufs, with vgem and vivid (run as root)")]
struct Args {
    /// The daemon's vhost-user socket of tenant `0`, which gets sealed
    /// guest RAM.
    #[arg(long)]
    socket: PathBuf,
    /// The daemon's vhost-user socket of tenant `1`, which gets guest RAM
    /// in an unsealed memfd.
    #[arg(long, required_unless_present = "vulkan")]
    unsealed_socket: Option<PathBuf>,
    /// Run the checks of the Vulkan engine's dma-buf imports
    /// (`VULKAN_DMABUF_CHECKS`) instead, against a daemon running
    /// `--engine vulkan` on a device that imports dma-bufs.
    #[arg(long)]
    vulkan: bool,
    /// The daemon's metrics endpoint (`--metrics=unix:PATH`).
    #[arg(long)]
    metrics: PathBuf,
    /// Sealed guest RAM, in MiB: room for an object over udmabuf's
    /// `size_limit_mb` (64 MiB by default), and the others.
    #[arg(long, default_value_t = 96)]
    memory_mib: usize,
}

/// The tenant of the daemon's first `--socket-path`, with sealed guest RAM.
const TENANT: &str = "0";
/// The tenant of its second, with unsealed guest RAM.
const UNSEALED_TENANT: &str = "1";

/// Guest RAM of [`UNSEALED_TENANT`], in bytes.
const UNSEALED_MEMORY: usize = 8 << 20;

/// The request queue every request goes to.
const QUEUE: u16 = 0;

/// How long a request held by a fence is watched for not completing.
const HELD: Duration = Duration::from_secs(1);

/// How long a request that may run is given to complete (TCG is slow).
const DONE_WITHIN: Duration = Duration::from_secs(5);

/// The page size ([`PAGE_SIZE`]), as a length.
const PAGE: usize = 4096;
const _: () = assert!(PAGE as u64 == PAGE_SIZE);

/// Sizes of the objects, each its own, so that the tenant's dma-bufs tell
/// them apart by size.
const OBJECT_SIZE: usize = 16 * PAGE;
/// The object of the unaligned check (no dma-buf expected).
const UNALIGNED_SIZE: usize = 3 * PAGE;
/// The object that vgem imports.
const VGEM_SIZE: usize = 20 * PAGE;

// ---- dma-buf (<linux/dma-buf.h>) --------------------------------------------------

/// `struct dma_buf_sync`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct DmaBufSync {
    flags: u64,
}
const _: () = assert!(size_of::<DmaBufSync>() == 8);
const DMA_BUF_SYNC_READ: u64 = 1;
const DMA_BUF_SYNC_START: u64 = 0;
const DMA_BUF_SYNC_END: u64 = 4;
const DMA_BUF_IOCTL_SYNC: Ioctl<DmaBufSync> = Ioctl::new(IOC_WRITE, b'b', 0, "DMA_BUF_IOCTL_SYNC");
const _: () = assert!(DMA_BUF_IOCTL_SYNC.number == 0x4008_6200);

// ---- vgem (<drm/vgem_drm.h>) ------------------------------------------------------

/// `struct drm_vgem_fence_attach`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct VgemFenceAttach {
    handle: u32,
    flags: u32,
    out_fence: u32,
    pad: u32,
}
const _: () = assert!(size_of::<VgemFenceAttach>() == 16);
/// `VGEM_FENCE_WRITE`: an exclusive (write) fence; without it, a read fence.
const VGEM_FENCE_WRITE: u32 = 1;

/// `struct drm_vgem_fence_signal`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct VgemFenceSignal {
    fence: u32,
    flags: u32,
}
const _: () = assert!(size_of::<VgemFenceSignal>() == 8);

const VGEM_FENCE_ATTACH: Ioctl<VgemFenceAttach> = Ioctl::new(
    IOC_READ | IOC_WRITE,
    DRM_IOCTL_BASE,
    DRM_COMMAND_BASE + 1,
    "DRM_IOCTL_VGEM_FENCE_ATTACH",
);
const VGEM_FENCE_SIGNAL: Ioctl<VgemFenceSignal> = Ioctl::new(
    IOC_WRITE,
    DRM_IOCTL_BASE,
    DRM_COMMAND_BASE + 2,
    "DRM_IOCTL_VGEM_FENCE_SIGNAL",
);
const _: () = assert!(VGEM_FENCE_ATTACH.number == 0xc010_6441);
const _: () = assert!(VGEM_FENCE_SIGNAL.number == 0x4008_6442);

// ---- V4L2 (<linux/videodev2.h>) ---------------------------------------------------

/// `struct v4l2_capability`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct V4l2Capability {
    driver: [u8; 16],
    card: [u8; 32],
    bus_info: [u8; 32],
    version: u32,
    capabilities: u32,
    device_caps: u32,
    reserved: [u32; 3],
}
const _: () = assert!(size_of::<V4l2Capability>() == 104);
const _: () = assert!(offset_of!(V4l2Capability, device_caps) == 88);

/// `struct v4l2_pix_format`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct V4l2PixFormat {
    width: u32,
    height: u32,
    pixelformat: u32,
    field: u32,
    bytesperline: u32,
    sizeimage: u32,
    colorspace: u32,
    private: u32,
    flags: u32,
    ycbcr_enc: u32,
    quantization: u32,
    xfer_func: u32,
}
const _: () = assert!(size_of::<V4l2PixFormat>() == 48);

/// `struct v4l2_format`, its union as the single-planar `pix` (the union
/// is 200 bytes, 8-aligned: it starts at offset 8).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct V4l2Format {
    kind: u32,
    pad: u32,
    pix: V4l2PixFormat,
    rest: [u8; 152],
}
const _: () = assert!(size_of::<V4l2Format>() == 208 && offset_of!(V4l2Format, pix) == 8);

/// `struct v4l2_requestbuffers`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct V4l2RequestBuffers {
    count: u32,
    kind: u32,
    memory: u32,
    capabilities: u32,
    flags: u8,
    reserved: [u8; 3],
}
const _: () = assert!(size_of::<V4l2RequestBuffers>() == 20);

/// `struct v4l2_buffer` (64-bit), its union `m` as the dma-buf's `fd`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct V4l2Buffer {
    index: u32,
    kind: u32,
    bytesused: u32,
    flags: u32,
    field: u32,
    pad0: u32,
    timestamp: [i64; 2],
    timecode: [u32; 4],
    sequence: u32,
    memory: u32,
    m_fd: i32,
    m_pad: u32,
    length: u32,
    reserved2: u32,
    request_fd: i32,
    pad1: u32,
}
const _: () = assert!(size_of::<V4l2Buffer>() == 88);
const _: () = assert!(offset_of!(V4l2Buffer, timestamp) == 24);
const _: () = assert!(offset_of!(V4l2Buffer, sequence) == 56);
const _: () = assert!(offset_of!(V4l2Buffer, m_fd) == 64);
const _: () = assert!(offset_of!(V4l2Buffer, length) == 72);

const V4L2_BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
const V4L2_MEMORY_DMABUF: u32 = 4;
const V4L2_FIELD_NONE: u32 = 1;
/// `v4l2_fourcc('Y', 'U', 'Y', 'V')`.
const V4L2_PIX_FMT_YUYV: u32 = u32::from_le_bytes(*b"YUYV");
const V4L2_CAP_VIDEO_CAPTURE: u32 = 0x1;
const V4L2_CAP_STREAMING: u32 = 0x0400_0000;
const V4L2_CAP_TOUCH: u32 = 0x1000_0000;
const V4L2_CAP_DEVICE_CAPS: u32 = 0x8000_0000;
const V4L2_BUF_FLAG_ERROR: u32 = 0x40;

/// `_IOR('V', nr, T)` and friends.
const fn vidioc<T>(dir: u32, nr: u8, name: &'static str) -> Ioctl<T> {
    Ioctl::new(dir, b'V', nr, name)
}
const VIDIOC_QUERYCAP: Ioctl<V4l2Capability> = vidioc(IOC_READ, 0, "VIDIOC_QUERYCAP");
const VIDIOC_S_FMT: Ioctl<V4l2Format> = vidioc(IOC_READ | IOC_WRITE, 5, "VIDIOC_S_FMT");
const VIDIOC_REQBUFS: Ioctl<V4l2RequestBuffers> = vidioc(IOC_READ | IOC_WRITE, 8, "VIDIOC_REQBUFS");
const VIDIOC_QBUF: Ioctl<V4l2Buffer> = vidioc(IOC_READ | IOC_WRITE, 15, "VIDIOC_QBUF");
const VIDIOC_DQBUF: Ioctl<V4l2Buffer> = vidioc(IOC_READ | IOC_WRITE, 17, "VIDIOC_DQBUF");
const VIDIOC_STREAMON: Ioctl<i32> = vidioc(IOC_WRITE, 18, "VIDIOC_STREAMON");
const VIDIOC_STREAMOFF: Ioctl<i32> = vidioc(IOC_WRITE, 19, "VIDIOC_STREAMOFF");
const _: () = assert!(VIDIOC_QUERYCAP.number == 0x8068_5600);
const _: () = assert!(VIDIOC_S_FMT.number == 0xc0d0_5605);
const _: () = assert!(VIDIOC_REQBUFS.number == 0xc014_5608);
const _: () = assert!(VIDIOC_QBUF.number == 0xc058_560f);
const _: () = assert!(VIDIOC_DQBUF.number == 0xc058_5611);
const _: () = assert!(VIDIOC_STREAMON.number == 0x4004_5612);
const _: () = assert!(VIDIOC_STREAMOFF.number == 0x4004_5613);

/// `ioctl` on `fd`, its error named after the ioctl.
///
/// # Safety
///
/// As [`uapi::call`]: the addresses `arg` carries must be valid for what
/// the ioctl does through them.
unsafe fn ioctl<T>(fd: BorrowedFd<'_>, request: &Ioctl<T>, arg: &mut T) -> Result<i32, String> {
    // SAFETY: the caller vouches for the addresses inside `arg`.
    unsafe { uapi::call(fd, request, arg) }.map_err(|e| format!("{}: {e}", request.name))
}

// ---- the report ---------------------------------------------------------------------

/// The checks' outcomes, printed as they come.
#[derive(Debug)]
struct Report {
    /// The checks to run, in order.
    names: &'static [&'static str],
    /// How many checks ran (their names are `names[..ran]`).
    ran: usize,
    failed: usize,
}

impl Report {
    /// A report of the checks `names`.
    fn new(names: &'static [&'static str]) -> Self {
        Report {
            names,
            ran: 0,
            failed: 0,
        }
    }

    /// Prints `PASS name` or `FAIL name: why` for `outcome`; returns its value.
    /// Checks must come in the order of `names`.
    fn check<T>(&mut self, name: &str, outcome: Result<T, String>) -> Option<T> {
        assert_eq!(
            self.names.get(self.ran).copied(),
            Some(name),
            "checks out of order"
        );
        self.ran += 1;
        match outcome {
            Ok(value) => {
                println!("PASS {name}");
                Some(value)
            }
            Err(why) => {
                self.failed += 1;
                println!("FAIL {name}: {why}");
                None
            }
        }
    }

    /// Fails the checks not run yet, for `why`.
    fn fail_the_rest(mut self, why: &str) -> ExitCode {
        for name in &self.names[self.ran..] {
            self.check(name, Err::<(), _>(why.to_owned()));
        }
        ExitCode::FAILURE
    }

    /// Prints the daemon's dma-buf metrics and the count of checks; the
    /// exit status.
    fn end(self, host: &Host) -> ExitCode {
        assert_eq!(self.ran, self.names.len(), "a check did not run");
        if let Ok(text) = metrics(&host.metrics) {
            for line in text.lines().filter(|l| {
                [
                    DMABUF_OBJECTS,
                    DMABUF_FALLBACKS,
                    IMPLICIT_SYNC_WAITS,
                    DMABUF_IMPORTS,
                ]
                .iter()
                .any(|name| l.starts_with(name))
            }) {
                say(&format!("metrics: {line}"));
            }
        }
        say(&format!("{} checks, {} failed", self.ran, self.failed));
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// An informational line.
fn say(line: &str) {
    println!("accel-dmabuf-check: {line}");
}

// ---- the daemon: its metrics, its tenant's process ----------------------------------

/// The daemon's metrics (the body of its endpoint's answer to GET /metrics).
fn metrics(endpoint: &Path) -> Result<String, String> {
    let mut stream =
        UnixStream::connect(endpoint).map_err(|e| format!("{}: {e}", endpoint.display()))?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .map_err(|e| format!("metrics request: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("metrics answer: {e}"))?;
    Ok(answer
        .split_once("\r\n\r\n")
        .map_or(answer.as_str(), |(_, body)| body)
        .to_string())
}

/// The sum of the series `name` (Prometheus text) whose labels include
/// each of `labels`; `None` when there is none.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    let mut sum = None;
    for line in text.lines().map(str::trim) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(rest) = series.strip_prefix(name) else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with('{')) {
            continue;
        }
        if !labels
            .iter()
            .all(|(key, wanted)| rest.contains(&format!("{key}=\"{wanted}\"")))
        {
            continue;
        }
        // Integers, maybe written as floats ("3" or "3.0").
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        // Non-negative integers well below 2^53: exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let value = value as u64;
        sum = Some(sum.unwrap_or(0) + value);
    }
    sum
}

const DMABUF_OBJECTS: &str = "vhost_user_accel_dmabuf_objects";
const DMABUF_FALLBACKS: &str = "vhost_user_accel_dmabuf_fallbacks_total";
const IMPLICIT_SYNC_WAITS: &str = "vhost_user_accel_implicit_sync_waits_total";
const DMABUF_IMPORTS: &str = "vhost_user_accel_dmabuf_imports_total";

/// The pid of the process that serves tenant `name` (command line
/// `vhost-user-accel --tenant-process NAME`), if exactly one does.
fn tenant_pid(name: &str) -> Result<u32, String> {
    let entries = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    let pids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let serves = args.len() >= 3
                && args[0].ends_with(b"vhost-user-accel")
                && args[1] == b"--tenant-process"
                && args[2] == name.as_bytes();
            serves.then_some(pid)
        })
        .collect();
    match pids[..] {
        [pid] => Ok(pid),
        [] => Err(format!("no process serves tenant {name}")),
        _ => Err(format!("several processes serve tenant {name}: {pids:?}")),
    }
}

/// A dma-buf that a process holds: its descriptor there, and what its
/// fdinfo says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeldDmabuf {
    fd: i32,
    exporter: String,
    size: u64,
}

/// The dma-bufs that process `pid` holds (`/proc/PID/fd`, read through
/// `/proc/PID/fdinfo`).
fn held_dmabufs(pid: u32) -> Result<Vec<HeldDmabuf>, String> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let mut held = Vec::new();
    for entry in entries.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // Gone since the listing: not held.
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let (Some(exporter), Some(size)) = (field("exp_name"), field("size")) else {
            continue;
        };
        held.push(HeldDmabuf {
            fd,
            exporter: exporter.to_string(),
            size: size.parse().unwrap_or(0),
        });
    }
    Ok(held)
}

/// The one udmabuf of `size` bytes that process `pid` holds, waiting up to
/// 2 s for it.
fn held_udmabuf(pid: u32, size: usize) -> Result<HeldDmabuf, String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let held = held_dmabufs(pid)?;
        let matching: Vec<&HeldDmabuf> = held
            .iter()
            .filter(|d| d.exporter == "udmabuf" && d.size == size as u64)
            .collect();
        match matching[..] {
            [one] => return Ok(one.clone()),
            [] if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            [] => {
                return Err(format!(
                    "the tenant's process {pid} holds no udmabuf of {size} bytes (its dma-bufs: \
                     {held:?})"
                ))
            }
            _ => return Err(format!("the tenant's process holds several: {matching:?}")),
        }
    }
}

/// A duplicate of descriptor `fd` of process `pid` (`pidfd_getfd`, which
/// takes root here).
fn take_fd(pid: u32, fd: i32) -> Result<OwnedFd, String> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| format!("pid {pid}"))?;
    // SAFETY: pidfd_open takes two integers and touches no memory of this
    // process; the result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = i32::try_from(pidfd).unwrap_or(-1);
    if pidfd < 0 {
        return Err(format!(
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: pidfd_getfd takes three integers and touches no memory of
    // this process; the result is checked.
    let taken = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    let taken = i32::try_from(taken).unwrap_or(-1);
    if taken < 0 {
        return Err(format!(
            "pidfd_getfd({pid}, {fd}): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: pidfd_getfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(taken) })
}

/// `len` bytes of the dma-buf `dmabuf`, read through a mapping of it
/// between `DMA_BUF_IOCTL_SYNC` start and end.
fn read_dmabuf(dmabuf: BorrowedFd<'_>, len: usize) -> Result<Vec<u8>, String> {
    // SAFETY: a new shared read-only mapping of `len` bytes of the dma-buf;
    // the kernel picks the address; the result is checked.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            dmabuf.as_raw_fd(),
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(format!(
            "mmap of the dma-buf: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut sync = DmaBufSync {
        flags: DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ,
    };
    // SAFETY: DmaBufSync carries no address.
    let started = unsafe { ioctl(dmabuf, &DMA_BUF_IOCTL_SYNC, &mut sync) };
    // SAFETY: `at` is a readable mapping of `len` bytes, alive until the
    // munmap below; the bytes are copied out before it.
    let bytes = unsafe { std::slice::from_raw_parts(at.cast::<u8>(), len) }.to_vec();
    sync.flags = DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ;
    // SAFETY: as above.
    let ended = unsafe { ioctl(dmabuf, &DMA_BUF_IOCTL_SYNC, &mut sync) };
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(at, len) };
    started.and(ended)?;
    Ok(bytes)
}

// ---- the device -------------------------------------------------------------------

/// The device of a tenant of the daemon, over its socket, with its guest
/// RAM, and the daemon's process of the tenant.
struct Host {
    device: Device<VhostUserTransport>,
    memory: DmaMemory,
    metrics: PathBuf,
    /// The tenant's name.
    name: &'static str,
    /// The pid of the tenant's process.
    tenant: u32,
}

impl Host {
    /// Creates the sealed RAM and opens the device of [`TENANT`] over it
    /// (`sealed-memory`).
    fn connect_sealed(args: &Args) -> Result<Self, String> {
        let memory = DmaMemory::sealed(args.memory_mib << 20)
            .map_err(|e| format!("sealed guest RAM: {e}"))?;
        let seals = memory.seals().map_err(|e| format!("F_GET_SEALS: {e}"))?;
        if seals & libc::F_SEAL_SHRINK == 0 || seals & libc::F_SEAL_WRITE != 0 {
            return Err(format!("the memfd's seals are {seals:#x}"));
        }
        let host = Host::connect(&args.socket, &args.metrics, memory, TENANT)?;
        say(&format!(
            "guest RAM sealed {seals:#x}; tenant {TENANT} served by process {}",
            host.tenant
        ));
        Ok(host)
    }

    /// Opens the device of tenant `name` over `socket`, with `memory` as
    /// guest RAM.
    fn connect(
        socket: &Path,
        metrics: &Path,
        memory: DmaMemory,
        name: &'static str,
    ) -> Result<Self, String> {
        let options = VhostUserOptions {
            queue_size: TenantConfig::new(name, SocketSource::Fd(-1)).queue_size,
            ..VhostUserOptions::default()
        };
        let transport = VhostUserTransport::connect_with(socket, &memory, &options)
            .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
        let open = DeviceOptions {
            features: DEFAULT_FEATURES,
            timeout: Duration::from_secs(20),
            ..DeviceOptions::default()
        };
        let device = Device::open_with(transport, &open)
            .map_err(|e| format!("cannot open the device: {e}"))?;
        let tenant = tenant_pid(name)?;
        Ok(Host {
            device,
            memory,
            metrics: metrics.to_path_buf(),
            name,
            tenant,
        })
    }

    /// The daemon's metric `name` for the tenant, with `labels` besides.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<u64, String> {
        let text = metrics(&self.metrics)?;
        let mut all = vec![("tenant", self.name)];
        all.extend_from_slice(labels);
        metric(&text, name, &all)
            .ok_or_else(|| format!("the daemon's metrics have no {name} {labels:?}"))
    }

    /// Waits up to 2 s for the metric to read `wanted`; what it read last
    /// otherwise.
    fn metric_becomes(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        wanted: u64,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let value = self.metric(name, labels)?;
            if value == wanted {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{name} {labels:?} is {value}, not {wanted}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Page-aligned guest memory of `len` bytes holding `pattern(seed)`.
    fn buffer(&self, len: usize, seed: u8) -> Result<(DmaBuf, Vec<u8>), String> {
        let buf = self
            .memory
            .alloc_pages(len)
            .map_err(|e| format!("guest memory: {e}"))?;
        let bytes = pattern(len, seed);
        self.memory
            .write(&buf, 0, &bytes)
            .map_err(|e| format!("guest memory: {e}"))?;
        Ok((buf, bytes))
    }

    /// Submits `request` and flushes the queue.
    fn submit(&self, request: &Request) -> Result<(), String> {
        self.device
            .submit(QUEUE, request, 0)
            .map_err(|e| format!("submit: {e}"))?;
        self.device
            .flush(QUEUE)
            .map_err(|e| format!("flush: {e}"))?;
        Ok(())
    }

    /// The completion of the one request in flight, if it comes within
    /// `timeout`.
    fn completion(&self, timeout: Duration) -> Result<Option<Completion>, String> {
        let done = self
            .device
            .wait(QUEUE, timeout)
            .map_err(|e| format!("wait: {e}"))?;
        Ok(done.into_iter().next())
    }

    /// Runs `request`, which must complete Ok within [`DONE_WITHIN`].
    fn run_ok(&self, request: &Request) -> Result<Completion, String> {
        self.submit(request)?;
        let done = self
            .completion(DONE_WITHIN)?
            .ok_or_else(|| format!("no completion within {DONE_WITHIN:?}"))?;
        completed_ok(done)
    }

    /// COPYs `source` into new guest memory and returns the bytes.
    fn copy_out(&self, source: Buffer) -> Result<Vec<u8>, String> {
        let len = usize::try_from(source.len()).map_err(|e| e.to_string())?;
        let out = self
            .memory
            .alloc_pages(len)
            .map_err(|e| format!("guest memory: {e}"))?;
        self.memory
            .fill(&out, 0)
            .map_err(|e| format!("guest memory: {e}"))?;
        self.run_ok(
            &Request::new(Op::Copy)
                .input(source)
                .output(Buffer::direct(&out)),
        )?;
        self.memory
            .read_vec(&out, 0, len)
            .map_err(|e| format!("guest memory: {e}"))
    }

    /// The CRC-32C of `source`, computed by the daemon.
    fn crc32c(&self, source: Buffer) -> Result<u32, String> {
        Ok(self
            .run_ok(&Request::new(Op::Crc32c).input(source))?
            .result_u32())
    }
}

/// `done`, if it completed Ok.
fn completed_ok(done: Completion) -> Result<Completion, String> {
    match done.status() {
        Ok(Status::Ok) => Ok(done),
        status => Err(format!("the request completed with {status:?}")),
    }
}

/// `len` bytes that differ from one `seed` to the next.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            #[allow(clippy::cast_possible_truncation)]
            let low = (i ^ (i >> 8) ^ (i >> 16)) as u8;
            low.wrapping_mul(31).wrapping_add(seed)
        })
        .collect()
}

// ---- the checks ---------------------------------------------------------------------

/// `dmabuf-object`: an object over page-aligned memory is held as a
/// dma-buf. Returns the object (for `dmabuf-released`) and its memory.
fn dmabuf_object(host: &Host) -> Result<(Object<'_, VhostUserTransport>, DmaBuf), String> {
    let before = host.metric(DMABUF_OBJECTS, &[])?;
    let (buf, bytes) = host.buffer(OBJECT_SIZE, 1)?;
    let object = host
        .device
        .register(&[&buf])
        .map_err(|e| format!("OBJECT_CREATE: {e}"))?;
    host.metric_becomes(DMABUF_OBJECTS, &[], before + 1)?;
    let held = held_udmabuf(host.tenant, OBJECT_SIZE)?;
    if host.copy_out(object.all())? != bytes {
        return Err(String::from("a COPY out of the object gave other bytes"));
    }
    say(&format!(
        "object {} ({OBJECT_SIZE} bytes): the tenant's descriptor {} is its udmabuf",
        object.handle(),
        held.fd
    ));
    Ok((object, buf))
}

/// `unaligned-fallback`: an object over memory that does not start on a
/// page is no dma-buf, is counted, and works.
fn unaligned_fallback(host: &Host) -> Result<(), String> {
    let reason = [("reason", "unaligned")];
    let before = host.metric(DMABUF_FALLBACKS, &reason)?;
    let objects = host.metric(DMABUF_OBJECTS, &[])?;
    let (buf, bytes) = host.buffer(UNALIGNED_SIZE + 2 * PAGE, 2)?;
    // Starts 512 bytes into a page: no page-aligned range of the memfd.
    let skip = 512;
    let handle = host
        .device
        .create_object(&[(buf.gpa() + skip as u64, UNALIGNED_SIZE as u64)])
        .map_err(|e| format!("OBJECT_CREATE: {e}"))?;
    let outcome = (|| {
        host.metric_becomes(DMABUF_FALLBACKS, &reason, before + 1)?;
        host.metric_becomes(DMABUF_OBJECTS, &[], objects)?;
        let held = held_dmabufs(host.tenant)?;
        if let Some(dmabuf) = held.iter().find(|d| d.size == UNALIGNED_SIZE as u64) {
            return Err(format!(
                "yet the tenant holds a dma-buf of its size: {dmabuf:?}"
            ));
        }
        let copied = host.copy_out(Buffer::object(handle, 0, UNALIGNED_SIZE as u64))?;
        if copied != bytes[skip..skip + UNALIGNED_SIZE] {
            return Err(String::from("a COPY out of the object gave other bytes"));
        }
        Ok(())
    })();
    let destroyed = host
        .device
        .destroy_object(handle)
        .map_err(|e| format!("OBJECT_DESTROY: {e}"));
    outcome.and(destroyed)
}

/// `too-big-fallback`: an object over udmabuf's `size_limit_mb` is no
/// dma-buf, is counted, and works.
fn too_big_fallback(host: &Host) -> Result<(), String> {
    let parameter = "/sys/module/udmabuf/parameters/size_limit_mb";
    let limit_mb: usize = std::fs::read_to_string(parameter)
        .map_err(|e| format!("{parameter}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{parameter}: {e}"))?;
    let size = (limit_mb << 20) + PAGE;
    let reason = [("reason", "too_big")];
    let before = host.metric(DMABUF_FALLBACKS, &reason)?;
    let objects = host.metric(DMABUF_OBJECTS, &[])?;
    let buf = host
        .memory
        .alloc_pages(size)
        .map_err(|e| format!("{size} bytes of guest memory (--memory-mib): {e}"))?;
    // Its last page only: the rest is never touched.
    let tail = pattern(PAGE, 6);
    host.memory
        .write(&buf, size - PAGE, &tail)
        .map_err(|e| format!("guest memory: {e}"))?;
    let object = host
        .device
        .register(&[&buf])
        .map_err(|e| format!("OBJECT_CREATE of {size} bytes: {e}"))?;
    host.metric_becomes(DMABUF_FALLBACKS, &reason, before + 1)?;
    host.metric_becomes(DMABUF_OBJECTS, &[], objects)?;
    let held = held_dmabufs(host.tenant)?;
    if let Some(dmabuf) = held.iter().find(|d| d.size == size as u64) {
        return Err(format!(
            "yet the tenant holds a dma-buf of its size: {dmabuf:?}"
        ));
    }
    let last = object
        .range((size - PAGE) as u64, PAGE as u64)
        .map_err(|e| e.to_string())?;
    if host.copy_out(last)? != tail {
        return Err(String::from(
            "a COPY out of the object's last page gave other bytes",
        ));
    }
    object.destroy().map_err(|e| format!("OBJECT_DESTROY: {e}"))
}

/// `unsealed-fallback`: tenant [`UNSEALED_TENANT`], whose guest RAM is an
/// unsealed memfd (cloud-hypervisor's, QEMU's with `seal=off`), gets no
/// dma-buf for an object over page-aligned memory: counted, and it works.
fn unsealed_fallback(args: &Args) -> Result<(), String> {
    let memory = DmaMemory::new(UNSEALED_MEMORY).map_err(|e| format!("unsealed guest RAM: {e}"))?;
    let socket = args
        .unsealed_socket
        .as_ref()
        .ok_or("no --unsealed-socket")?;
    let host = Host::connect(socket, &args.metrics, memory, UNSEALED_TENANT)?;
    let reason = [("reason", "unsealed")];
    let before = host.metric(DMABUF_FALLBACKS, &reason)?;
    let (buf, bytes) = host.buffer(OBJECT_SIZE, 7)?;
    let object = host
        .device
        .register(&[&buf])
        .map_err(|e| format!("OBJECT_CREATE: {e}"))?;
    host.metric_becomes(DMABUF_FALLBACKS, &reason, before + 1)?;
    host.metric_becomes(DMABUF_OBJECTS, &[], 0)?;
    let held = held_dmabufs(host.tenant)?;
    if !held.is_empty() {
        return Err(format!(
            "yet tenant {UNSEALED_TENANT}'s process holds {held:?}"
        ));
    }
    if host.copy_out(object.all())? != bytes {
        return Err(String::from("a COPY out of the object gave other bytes"));
    }
    object.destroy().map_err(|e| format!("OBJECT_DESTROY: {e}"))
}

/// The DRM device whose driver is `name` (`/dev/dri/card*`).
fn drm_device(name: &str) -> Result<File, String> {
    let entries = std::fs::read_dir("/dev/dri").map_err(|e| format!("/dev/dri: {e}"))?;
    let mut seen = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("card") {
            continue;
        }
        let path = entry.path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut driver = [0u8; 64];
        let mut version = DrmVersion {
            name_len: driver.len(),
            name: driver.as_mut_ptr() as usize,
            ..DrmVersion::default()
        };
        // SAFETY: `name` points to `name_len` writable bytes that outlive
        // the call; date and description have no room (null, 0).
        unsafe { ioctl(file.as_fd(), &DRM_IOCTL_VERSION, &mut version) }?;
        let len = version.name_len.min(driver.len());
        let driver = String::from_utf8_lossy(&driver[..len]).into_owned();
        if driver == name {
            return Ok(file);
        }
        seen.push(format!("{} ({driver})", path.display()));
    }
    Err(format!("no DRM device of {name}: {seen:?}"))
}

/// The object that vgem imported, and what the checks need of it.
struct VgemImport<'d> {
    object: Object<'d, VhostUserTransport>,
    buf: DmaBuf,
    vgem: File,
    handle: u32,
    /// The object's dma-buf, taken from the tenant's process.
    _dmabuf: OwnedFd,
}

impl VgemImport<'_> {
    /// Attaches a fence of vgem's to the object (a write fence when
    /// `write`); returns its id.
    fn attach(&self, write: bool) -> Result<u32, String> {
        let mut attach = VgemFenceAttach {
            handle: self.handle,
            flags: if write { VGEM_FENCE_WRITE } else { 0 },
            ..VgemFenceAttach::default()
        };
        // SAFETY: VgemFenceAttach carries no address.
        unsafe { ioctl(self.vgem.as_fd(), &VGEM_FENCE_ATTACH, &mut attach) }?;
        Ok(attach.out_fence)
    }

    /// Signals vgem's fence `fence` (an error once it expired by itself,
    /// 10 s after it was attached).
    fn signal(&self, fence: u32) -> Result<(), String> {
        let mut signal = VgemFenceSignal { fence, flags: 0 };
        // SAFETY: VgemFenceSignal carries no address.
        unsafe { ioctl(self.vgem.as_fd(), &VGEM_FENCE_SIGNAL, &mut signal) }?;
        Ok(())
    }
}

impl Drop for VgemImport<'_> {
    fn drop(&mut self) {
        let mut close = DrmGemClose {
            handle: self.handle,
            pad: 0,
        };
        // SAFETY: DrmGemClose carries no address.
        let _ = unsafe { ioctl(self.vgem.as_fd(), &DRM_IOCTL_GEM_CLOSE, &mut close) };
    }
}

/// An object held as a dma-buf, that dma-buf taken from the tenant's
/// process and imported into vgem.
fn vgem_import(host: &Host) -> Result<VgemImport<'_>, String> {
    let vgem = drm_device("vgem")?;
    let (buf, _) = host.buffer(VGEM_SIZE, 3)?;
    let object = host
        .device
        .register(&[&buf])
        .map_err(|e| format!("OBJECT_CREATE: {e}"))?;
    let held = held_udmabuf(host.tenant, VGEM_SIZE)?;
    let dmabuf = take_fd(host.tenant, held.fd)?;
    let mut import = DrmPrimeHandle {
        fd: dmabuf.as_raw_fd(),
        ..DrmPrimeHandle::default()
    };
    // SAFETY: DrmPrimeHandle carries no address.
    unsafe { ioctl(vgem.as_fd(), &DRM_IOCTL_PRIME_FD_TO_HANDLE, &mut import) }?;
    say(&format!(
        "object {} ({VGEM_SIZE} bytes): its udmabuf is vgem's GEM object {}",
        object.handle(),
        import.handle
    ));
    Ok(VgemImport {
        object,
        buf,
        vgem,
        handle: import.handle,
        _dmabuf: dmabuf,
    })
}

/// `vgem-write-fence`: a read of the object waits for vgem's write fence.
fn vgem_write_fence(host: &Host, vgem: &VgemImport<'_>) -> Result<(), String> {
    let bytes = host
        .memory
        .read_vec(&vgem.buf, 0, VGEM_SIZE)
        .map_err(|e| format!("guest memory: {e}"))?;
    let waits = host.metric(IMPLICIT_SYNC_WAITS, &[])?;
    let fence = vgem.attach(true)?;
    let attached = Instant::now();
    host.submit(&Request::new(Op::Crc32c).input(vgem.object.all()))?;
    if let Some(done) = host.completion(HELD)? {
        let _ = vgem.signal(fence);
        return Err(format!(
            "the CRC-32C of the object completed ({:?}) while vgem's write fence was pending",
            done.status()
        ));
    }
    vgem.signal(fence)?;
    let held = attached.elapsed();
    let done = host
        .completion(DONE_WITHIN)?
        .ok_or_else(|| format!("no completion within {DONE_WITHIN:?} of the fence's signal"))?;
    let crc = completed_ok(done)?.result_u32();
    let wanted = reference::crc32c(0, &bytes);
    if crc != wanted {
        return Err(format!("CRC-32C {crc:08x}, not {wanted:08x}"));
    }
    let after = host.metric(IMPLICIT_SYNC_WAITS, &[])?;
    if after <= waits {
        return Err(format!("{IMPLICIT_SYNC_WAITS} stayed at {waits}"));
    }
    say(&format!(
        "a CRC-32C of the object waited {held:?} for vgem's write fence; {IMPLICIT_SYNC_WAITS} \
         {waits} -> {after}"
    ));
    Ok(())
}

/// `vgem-read-fence`: with vgem's read fence on the object, a read runs at
/// once and a write waits.
fn vgem_read_fence(host: &Host, vgem: &VgemImport<'_>) -> Result<(), String> {
    let fence = vgem.attach(false)?;
    let outcome = (|| {
        let bytes = host
            .memory
            .read_vec(&vgem.buf, 0, VGEM_SIZE)
            .map_err(|e| format!("guest memory: {e}"))?;
        let crc = host
            .crc32c(vgem.object.all())
            .map_err(|e| format!("a CRC-32C of the object under vgem's read fence: {e}"))?;
        if crc != reference::crc32c(0, &bytes) {
            return Err(String::from(
                "a CRC-32C of the object under a read fence is wrong",
            ));
        }
        let waits = host.metric(IMPLICIT_SYNC_WAITS, &[])?;
        let (source, new) = host.buffer(VGEM_SIZE, 4)?;
        host.submit(
            &Request::new(Op::Copy)
                .input(Buffer::direct(&source))
                .output(vgem.object.all()),
        )?;
        if let Some(done) = host.completion(HELD)? {
            return Err(format!(
                "a COPY into the object completed ({:?}) while vgem's read fence was pending",
                done.status()
            ));
        }
        vgem.signal(fence)?;
        let done = host
            .completion(DONE_WITHIN)?
            .ok_or_else(|| format!("no completion within {DONE_WITHIN:?} of the signal"))?;
        completed_ok(done)?;
        let written = host
            .memory
            .read_vec(&vgem.buf, 0, VGEM_SIZE)
            .map_err(|e| format!("guest memory: {e}"))?;
        if written != new {
            return Err(String::from("the COPY into the object wrote other bytes"));
        }
        let after = host.metric(IMPLICIT_SYNC_WAITS, &[])?;
        if after <= waits {
            return Err(format!("{IMPLICIT_SYNC_WAITS} stayed at {waits}"));
        }
        Ok(())
    })();
    // Signalled already, or not: no fence is left pending.
    let _ = vgem.signal(fence);
    outcome
}

/// vivid's video capture device (`/dev/video*`).
fn vivid_capture() -> Result<File, String> {
    let entries = std::fs::read_dir("/dev").map_err(|e| format!("/dev: {e}"))?;
    let mut seen = Vec::new();
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("video"))
        .map(|e| e.path())
        .collect();
    paths.sort();
    for path in paths {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: plain data; QUERYCAP fills it.
        let mut cap: V4l2Capability = unsafe { std::mem::zeroed() };
        // SAFETY: V4l2Capability carries no address.
        unsafe { ioctl(file.as_fd(), &VIDIOC_QUERYCAP, &mut cap) }?;
        let driver = String::from_utf8_lossy(&cap.driver)
            .trim_end_matches('\0')
            .to_string();
        let caps = if cap.capabilities & V4L2_CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        let capture = caps & V4L2_CAP_VIDEO_CAPTURE != 0
            && caps & V4L2_CAP_STREAMING != 0
            && caps & V4L2_CAP_TOUCH == 0;
        if driver == "vivid" && capture {
            say(&format!("vivid's capture device: {}", path.display()));
            return Ok(file);
        }
        seen.push(format!("{} ({driver}, caps {caps:#x})", path.display()));
    }
    Err(format!("no vivid video capture device: {seen:?}"))
}

/// A page multiple of at least `len`.
fn page_round(len: usize) -> usize {
    len.div_ceil(PAGE) * PAGE
}

/// `vivid-capture`: vivid writes a frame into an object's dma-buf, which
/// the guest and the daemon then read.
fn vivid_frame(host: &Host) -> Result<(), String> {
    let video = vivid_capture()?;
    let mut format = V4l2Format {
        kind: V4L2_BUF_TYPE_VIDEO_CAPTURE,
        pad: 0,
        pix: V4l2PixFormat {
            width: 320,
            height: 240,
            pixelformat: V4L2_PIX_FMT_YUYV,
            field: V4L2_FIELD_NONE,
            ..V4l2PixFormat::default()
        },
        rest: [0; 152],
    };
    // SAFETY: the single-planar format carries no address.
    unsafe { ioctl(video.as_fd(), &VIDIOC_S_FMT, &mut format) }?;
    let pix = format.pix;
    let frame = usize::try_from(pix.sizeimage).map_err(|e| e.to_string())?;
    if pix.pixelformat != V4L2_PIX_FMT_YUYV || frame == 0 {
        return Err(format!("vivid took no YUYV format: {pix:?}"));
    }
    let size = page_round(frame);
    if [OBJECT_SIZE, UNALIGNED_SIZE, VGEM_SIZE].contains(&size) {
        return Err(format!("a {size}-byte frame is the size of another object"));
    }
    // What vivid must overwrite.
    let (buf, before) = host.buffer(size, 5)?;
    let object = host
        .device
        .register(&[&buf])
        .map_err(|e| format!("OBJECT_CREATE: {e}"))?;
    let held = held_udmabuf(host.tenant, size)?;
    let dmabuf = take_fd(host.tenant, held.fd)?;
    let captured = capture_into(&video, dmabuf.as_fd(), size)?;
    let used = usize::try_from(captured.bytesused)
        .map_err(|e| e.to_string())?
        .min(size);
    if used == 0 {
        return Err(String::from("vivid captured an empty frame"));
    }
    let mapped = read_dmabuf(dmabuf.as_fd(), size)?;
    let guest = host
        .memory
        .read_vec(&buf, 0, size)
        .map_err(|e| format!("guest memory: {e}"))?;
    if mapped != guest {
        return Err(String::from(
            "the dma-buf's mapping and the guest's memory differ",
        ));
    }
    let changed = mapped[..used]
        .iter()
        .zip(&before)
        .filter(|(a, b)| a != b)
        .count();
    if changed < used / 2 {
        return Err(format!(
            "vivid changed {changed} of the frame's {used} bytes in the guest's memory"
        ));
    }
    let range = object.range(0, used as u64).map_err(|e| format!("{e}"))?;
    let crc = host.crc32c(range.clone())?;
    let wanted = reference::crc32c(0, &mapped[..used]);
    if crc != wanted {
        return Err(format!(
            "the daemon's CRC-32C of the frame is {crc:08x}, the dma-buf's {wanted:08x}"
        ));
    }
    if host.copy_out(range)? != mapped[..used] {
        return Err(String::from(
            "a COPY of the frame out of the object gave other bytes",
        ));
    }
    say(&format!(
        "vivid captured a {}x{} frame of {used} bytes (sequence {}) into object {}: {changed} \
         bytes changed in guest memory, CRC-32C {crc:08x} through the daemon",
        pix.width,
        pix.height,
        captured.sequence,
        object.handle()
    ));
    Ok(())
}

/// Captures one frame of `video` into the dma-buf `dmabuf` of `size`
/// bytes: REQBUFS (one dma-buf buffer), QBUF, STREAMON, DQBUF (20 s at
/// most), STREAMOFF, REQBUFS 0. Returns the dequeued buffer.
fn capture_into(video: &File, dmabuf: BorrowedFd<'_>, size: usize) -> Result<V4l2Buffer, String> {
    let fd = video.as_fd();
    let mut request = V4l2RequestBuffers {
        count: 1,
        kind: V4L2_BUF_TYPE_VIDEO_CAPTURE,
        memory: V4L2_MEMORY_DMABUF,
        ..V4l2RequestBuffers::default()
    };
    // SAFETY: V4l2RequestBuffers carries no address.
    unsafe { ioctl(fd, &VIDIOC_REQBUFS, &mut request) }?;
    if request.count == 0 {
        return Err(String::from("REQBUFS gave no buffer"));
    }
    let mut buffer = V4l2Buffer {
        index: 0,
        kind: V4L2_BUF_TYPE_VIDEO_CAPTURE,
        memory: V4L2_MEMORY_DMABUF,
        field: V4L2_FIELD_NONE,
        m_fd: dmabuf.as_raw_fd(),
        length: u32::try_from(size).map_err(|e| e.to_string())?,
        ..V4l2Buffer::default()
    };
    let mut kind = i32::try_from(V4L2_BUF_TYPE_VIDEO_CAPTURE).unwrap_or(1);
    let captured = (|| {
        // SAFETY: the buffer names a dma-buf by descriptor, no address.
        unsafe { ioctl(fd, &VIDIOC_QBUF, &mut buffer) }?;
        // SAFETY: an integer argument.
        unsafe { ioctl(fd, &VIDIOC_STREAMON, &mut kind) }?;
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, alive for the call.
        let ready = unsafe { libc::poll(&mut poll, 1, 20_000) };
        if ready <= 0 {
            return Err(String::from("vivid gave no frame within 20 s"));
        }
        let mut done = V4l2Buffer {
            kind: V4L2_BUF_TYPE_VIDEO_CAPTURE,
            memory: V4L2_MEMORY_DMABUF,
            ..V4l2Buffer::default()
        };
        // SAFETY: DQBUF fills the buffer, which carries no address in.
        unsafe { ioctl(fd, &VIDIOC_DQBUF, &mut done) }?;
        if done.flags & V4L2_BUF_FLAG_ERROR != 0 {
            return Err(format!("vivid flagged the frame an error: {done:?}"));
        }
        Ok(done)
    })();
    // SAFETY: an integer argument.
    let _ = unsafe { ioctl(fd, &VIDIOC_STREAMOFF, &mut kind) };
    request.count = 0;
    // SAFETY: V4l2RequestBuffers carries no address.
    let _ = unsafe { ioctl(fd, &VIDIOC_REQBUFS, &mut request) };
    captured
}

/// `dmabuf-released`: destroying the object of `dmabuf-object` releases
/// its dma-buf.
fn dmabuf_released(host: &Host, object: Object<'_, VhostUserTransport>) -> Result<(), String> {
    let before = host.metric(DMABUF_OBJECTS, &[])?;
    object
        .destroy()
        .map_err(|e| format!("OBJECT_DESTROY: {e}"))?;
    host.metric_becomes(DMABUF_OBJECTS, &[], before.saturating_sub(1))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let held = held_dmabufs(host.tenant)?;
        let left: Vec<&HeldDmabuf> = held
            .iter()
            .filter(|d| d.size == OBJECT_SIZE as u64)
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("the tenant still holds {left:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- the Vulkan engine's dma-buf imports ------------------------------------------

/// Two dma-buf objects of [`OBJECT_SIZE`], the first holding
/// `pattern(.., 21)`, the second zeroes, with their memory.
struct ObjectPair<'a> {
    source: Object<'a, VhostUserTransport>,
    source_bytes: Vec<u8>,
    target: Object<'a, VhostUserTransport>,
    target_memory: DmaBuf,
}

impl<'a> ObjectPair<'a> {
    fn new(host: &'a Host) -> Result<Self, String> {
        let before = host.metric(DMABUF_OBJECTS, &[])?;
        let (source_memory, source_bytes) = host.buffer(OBJECT_SIZE, 21)?;
        let (target_memory, _) = host.buffer(OBJECT_SIZE, 0)?;
        host.memory
            .fill(&target_memory, 0)
            .map_err(|e| format!("guest memory: {e}"))?;
        let register = |memory: &DmaBuf| {
            host.device
                .register(&[memory])
                .map_err(|e| format!("OBJECT_CREATE: {e}"))
        };
        let (source, target) = (register(&source_memory)?, register(&target_memory)?);
        host.metric_becomes(DMABUF_OBJECTS, &[], before + 2)?;
        Ok(ObjectPair {
            source,
            source_bytes,
            target,
            target_memory,
        })
    }

    /// The target object's bytes, read from guest memory.
    fn target_bytes(&self, host: &Host) -> Result<Vec<u8>, String> {
        host.memory
            .read_vec(&self.target_memory, 0, OBJECT_SIZE)
            .map_err(|e| format!("guest memory: {e}"))
    }
}

/// Runs `request`, which must complete Ok, with the engine having imported
/// `imports` of its buffers from their objects' dma-bufs
/// (`dmabuf_imports_total`).
fn run_imported(host: &Host, request: &Request, imports: u64) -> Result<(), String> {
    let before = host.metric(DMABUF_IMPORTS, &[])?;
    host.run_ok(request)?;
    host.metric_becomes(DMABUF_IMPORTS, &[], before + imports)
}

/// Bytes `at..at + len` of a buffer of [`OBJECT_SIZE`] zeroes that
/// `written` was written into; an error naming the first byte that
/// differs from `got`.
fn expect_written(got: &[u8], at: usize, written: &[u8]) -> Result<(), String> {
    let mut wanted = vec![0; OBJECT_SIZE];
    wanted[at..at + written.len()].copy_from_slice(written);
    match got.iter().zip(&wanted).position(|(a, b)| a != b) {
        None if got.len() == wanted.len() => Ok(()),
        None => Err(format!("{} bytes, not {}", got.len(), wanted.len())),
        Some(i) => Err(format!(
            "byte {i} is {:#04x}, not {:#04x}",
            got[i], wanted[i]
        )),
    }
}

/// `vulkan-copy-between-objects`: a COPY from one dma-buf object to
/// another, at offsets that are not a page's or a word's, runs with both
/// buffers imported from the dma-bufs and writes the bytes.
fn vulkan_copy_between_objects(host: &Host) -> Result<(), String> {
    let pair = ObjectPair::new(host)?;
    let (from, to, len) = (100, PAGE + 3, 5 * PAGE + 11);
    let request = Request::new(Op::Copy)
        .input(
            pair.source
                .range(from as u64, len as u64)
                .map_err(|e| e.to_string())?,
        )
        .output(
            pair.target
                .range(to as u64, len as u64)
                .map_err(|e| e.to_string())?,
        );
    run_imported(host, &request, 2)?;
    expect_written(
        &pair.target_bytes(host)?,
        to,
        &pair.source_bytes[from..from + len],
    )
}

/// `vulkan-fill-object`: a FILL of a range of a dma-buf object that starts
/// and ends inside a word runs through the dma-buf and writes exactly the
/// range.
fn vulkan_fill_object(host: &Host) -> Result<(), String> {
    let pair = ObjectPair::new(host)?;
    let (at, len) = (5, 3 * PAGE + 7);
    let fill = FillParams {
        pattern: 0xa5,
        ..FillParams::default()
    };
    let request = Request::new(Op::Fill).params(&fill).output(
        pair.target
            .range(at as u64, len as u64)
            .map_err(|e| e.to_string())?,
    );
    run_imported(host, &request, 1)?;
    expect_written(&pair.target_bytes(host)?, at, &vec![0xa5; len])
}

/// `vulkan-copy-into-object`: a COPY from plain guest memory (imported as
/// host memory) into a dma-buf object (imported as a dma-buf).
fn vulkan_copy_into_object(host: &Host) -> Result<(), String> {
    let pair = ObjectPair::new(host)?;
    // Long enough for the chunk to run in place, not staged, whatever the
    // source's segments (`STAGE_SEGMENTS_UNDER`).
    let (source, bytes) = host.buffer(4 * PAGE, 33)?;
    let (skip, to, len) = (7, 2 * PAGE - 1, 3 * PAGE + 9);
    let request = Request::new(Op::Copy)
        .input(Buffer::direct_range(&source, skip, len).map_err(|e| e.to_string())?)
        .output(
            pair.target
                .range(to as u64, len as u64)
                .map_err(|e| e.to_string())?,
        );
    run_imported(host, &request, 1)?;
    expect_written(&pair.target_bytes(host)?, to, &bytes[skip..skip + len])
}

/// `vulkan-crc32c-of-object`: the CRC-32C of a dma-buf object, which the
/// engine's compute shader reads from staging memory (no import), is the
/// reference's.
fn vulkan_crc32c_of_object(host: &Host) -> Result<(), String> {
    let pair = ObjectPair::new(host)?;
    let before = host.metric(DMABUF_IMPORTS, &[])?;
    let crc = host.crc32c(pair.source.all())?;
    let wanted = reference::crc32c(0, &pair.source_bytes);
    if crc != wanted {
        return Err(format!("CRC-32C {crc:#010x}, not {wanted:#010x}"));
    }
    host.metric_becomes(DMABUF_IMPORTS, &[], before)
}

/// `accel-dmabuf-check --vulkan`: [`VULKAN_DMABUF_CHECKS`].
fn vulkan_checks(args: &Args) -> ExitCode {
    let mut report = Report::new(VULKAN_DMABUF_CHECKS);
    let host = report.check("vulkan-sealed-memory", Host::connect_sealed(args));
    let Some(host) = host else {
        return report.fail_the_rest("no device (vulkan-sealed-memory)");
    };
    report.check(
        "vulkan-copy-between-objects",
        vulkan_copy_between_objects(&host),
    );
    report.check("vulkan-fill-object", vulkan_fill_object(&host));
    report.check("vulkan-copy-into-object", vulkan_copy_into_object(&host));
    report.check("vulkan-crc32c-of-object", vulkan_crc32c_of_object(&host));
    report.end(&host)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.vulkan {
        return vulkan_checks(&args);
    }
    let mut report = Report::new(DMABUF_CHECKS);
    let host = report.check("sealed-memory", Host::connect_sealed(&args));
    let Some(host) = host else {
        return report.fail_the_rest("no device (sealed-memory)");
    };
    let kept = report.check("dmabuf-object", dmabuf_object(&host));
    report.check("unaligned-fallback", unaligned_fallback(&host));
    report.check("too-big-fallback", too_big_fallback(&host));
    report.check("unsealed-fallback", unsealed_fallback(&args));
    let vgem = vgem_import(&host);
    let write = vgem
        .as_ref()
        .map_err(|e| format!("vgem: {e}"))
        .and_then(|v| vgem_write_fence(&host, v));
    report.check("vgem-write-fence", write);
    let read = vgem
        .as_ref()
        .map_err(|e| format!("vgem: {e}"))
        .and_then(|v| vgem_read_fence(&host, v));
    report.check("vgem-read-fence", read);
    drop(vgem);
    report.check("vivid-capture", vivid_frame(&host));
    let released = kept
        .ok_or_else(|| String::from("no object held as a dma-buf (dmabuf-object)"))
        .and_then(|(object, _buf)| dmabuf_released(&host, object));
    report.check("dmabuf-released", released);
    report.end(&host)
}
