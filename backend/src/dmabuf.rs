// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Objects as host dma-bufs (§7.1.3): the pages of an object, in the memfds
//! of the VMM's guest memory, made into a dma-buf by the kernel's `udmabuf`
//! driver, and the wait for the fences other drivers attach to it (implicit
//! synchronisation).
//!
//! - [`DmaBufMaker`]: `/dev/udmabuf`, opened once per process before the
//!   sandbox; it makes a [`DmaBuf`] of a list of [`FileRange`]s, or says why
//!   it cannot ([`Fallback`]): the object then works as before, on the
//!   mapped guest memory alone.
//! - [`DmaBuf`]: the buffer, held by its object until the object is
//!   released (after the last request using it completes); whether another
//!   driver's fences still keep a read or a write of it waiting.
//! - [`SyncWaits`]: the requests waiting for such fences, as an epoll set
//!   that the connection's worker waits on with its other events.
//!
//! The daemon attaches no fence of a request to the buffer (it has no way
//! to make a kernel fence of one; a GPU's kernel driver fences the work of
//! an engine that imports the buffer, which has ended by the time the
//! request completes); a driver that writes into a guest object while a
//! request reads it is the host's own race, as between any two users of a
//! dma-buf without fences.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use thiserror::Error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::memory::{page_size, seals};

/// The udmabuf device.
const UDMABUF_DEVICE: &str = "/dev/udmabuf";
/// Where udmabuf's module parameters are.
const PARAMETERS: &str = "/sys/module/udmabuf/parameters";
/// udmabuf's default `size_limit_mb` (a buffer's largest size, in MiB),
/// when the parameter cannot be read.
const DEFAULT_SIZE_LIMIT_MB: u64 = 64;
/// udmabuf's default `list_limit` (most ranges in one
/// `UDMABUF_CREATE_LIST`), when the parameter cannot be read.
pub const DEFAULT_MAX_RANGES: usize = 1024;

/// `UDMABUF_CREATE_LIST`: `_IOW('u', 0x43, struct udmabuf_create_list)`,
/// whose fixed part is 8 bytes.
pub const UDMABUF_CREATE_LIST: u64 = 0x4008_7543;
/// `UDMABUF_FLAGS_CLOEXEC`.
const UDMABUF_FLAGS_CLOEXEC: u32 = 1;
/// Bytes of a `struct udmabuf_create_item`: memfd, padding, offset, size.
const ITEM_SIZE: usize = 24;

/// Seals that make a memfd unfit for udmabuf: it maps the pages writable.
const WRITE_SEALS: libc::c_int = libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE;

/// Why an object is not a dma-buf (§7.1.3); each is counted in the tenant's
/// metrics under its [`Fallback::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Fallback {
    /// The host has no `/dev/udmabuf`, or this process may not open it.
    #[error("the host has no usable {UDMABUF_DEVICE}")]
    NoDevice,
    /// A memfd of the object's memory can shrink (no `F_SEAL_SHRINK`), is
    /// sealed against writes, or is not a memfd.
    #[error("the guest memory is not a memfd sealed with F_SEAL_SHRINK (and not F_SEAL_WRITE)")]
    Unsealed,
    /// A segment does not start and end on page boundaries of its file.
    #[error("a segment is not page-aligned in its memory file")]
    Unaligned,
    /// The object is larger than udmabuf's `size_limit_mb`.
    #[error("the object is over udmabuf's size limit")]
    TooBig,
    /// The object spans more runs of its files than udmabuf's `list_limit`.
    #[error("the object has more runs of memory than udmabuf's list limit")]
    TooManyRanges,
    /// The kernel refused the buffer (out of memory, or a limit it has).
    #[error("udmabuf refused the buffer")]
    Refused,
}

impl Fallback {
    /// Every reason, in the order of [`Fallback::index`].
    pub const ALL: [Fallback; 6] = [
        Fallback::NoDevice,
        Fallback::Unsealed,
        Fallback::Unaligned,
        Fallback::TooBig,
        Fallback::TooManyRanges,
        Fallback::Refused,
    ];

    /// Its position in [`Fallback::ALL`].
    pub fn index(self) -> usize {
        match self {
            Fallback::NoDevice => 0,
            Fallback::Unsealed => 1,
            Fallback::Unaligned => 2,
            Fallback::TooBig => 3,
            Fallback::TooManyRanges => 4,
            Fallback::Refused => 5,
        }
    }

    /// The `reason` label of the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Fallback::NoDevice => "no_device",
            Fallback::Unsealed => "unsealed",
            Fallback::Unaligned => "unaligned",
            Fallback::TooBig => "too_big",
            Fallback::TooManyRanges => "too_many_ranges",
            Fallback::Refused => "refused",
        }
    }
}

/// A run of bytes of a memory file.
#[derive(Debug, Clone, Copy)]
pub struct FileRange<'a> {
    /// The file (a memfd of the VMM's).
    pub file: &'a File,
    /// Offset of the run in the file.
    pub offset: u64,
    /// Its length.
    pub len: u64,
}

/// What makes dma-bufs of guest memory: `/dev/udmabuf`, if this process
/// could open it.
#[derive(Debug)]
pub struct DmaBufMaker {
    device: Option<File>,
    /// udmabuf's `size_limit_mb`, in bytes.
    size_limit: u64,
    /// udmabuf's `list_limit`.
    max_ranges: usize,
}

impl DmaBufMaker {
    /// Opens `/dev/udmabuf` and reads its size limit; without it, every
    /// object falls back ([`Fallback::NoDevice`]).
    pub fn open() -> Self {
        Self::open_at(Path::new(UDMABUF_DEVICE), Path::new(PARAMETERS))
    }

    /// A maker that makes none (tests, and hosts that do not want them).
    pub fn none() -> Self {
        DmaBufMaker {
            device: None,
            size_limit: 0,
            max_ranges: 0,
        }
    }

    fn open_at(device: &Path, parameters: &Path) -> Self {
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(device);
        let parameter = |name: &str| {
            std::fs::read_to_string(parameters.join(name))
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
        };
        let size_limit_mb = parameter("size_limit_mb").unwrap_or(DEFAULT_SIZE_LIMIT_MB);
        let max_ranges = parameter("list_limit")
            .and_then(|limit| usize::try_from(limit).ok())
            .unwrap_or(DEFAULT_MAX_RANGES);
        match device {
            Ok(device) => DmaBufMaker {
                device: Some(device),
                size_limit: size_limit_mb.saturating_mul(1 << 20),
                max_ranges,
            },
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!(
                        "cannot open {UDMABUF_DEVICE} ({e}): objects stay plain guest memory"
                    );
                }
                Self::none()
            }
        }
    }

    /// Most runs of memory in one buffer (udmabuf's `list_limit`).
    pub fn max_ranges(&self) -> usize {
        self.max_ranges
    }

    /// Whether this process can make dma-bufs at all.
    pub fn available(&self) -> bool {
        self.device.is_some()
    }

    /// A dma-buf of `ranges`, in order, or why there is none.
    pub fn make(&self, ranges: &[FileRange<'_>]) -> Result<DmaBuf, Fallback> {
        let device = self.device.as_ref().ok_or(Fallback::NoDevice)?;
        check_ranges(ranges, self.size_limit, self.max_ranges)?;
        let list = create_list(ranges)?;
        // SAFETY: UDMABUF_CREATE_LIST reads a `struct udmabuf_create_list`
        // of `list.len()` bytes (its header and `count` items, as
        // `create_list` wrote them) from the live buffer, and writes
        // nothing; the result is checked.
        let fd =
            unsafe { libc::ioctl(device.as_raw_fd(), UDMABUF_CREATE_LIST as _, list.as_ptr()) };
        if fd < 0 {
            return Err(Fallback::Refused);
        }
        // SAFETY: the ioctl returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(DmaBuf { fd })
    }
}

/// The total size of `ranges`, if udmabuf can make a buffer of them.
fn check_ranges(
    ranges: &[FileRange<'_>],
    size_limit: u64,
    max_ranges: usize,
) -> Result<u64, Fallback> {
    if ranges.len() > max_ranges {
        return Err(Fallback::TooManyRanges);
    }
    let page = page_size();
    let mut size = 0u64;
    for range in ranges {
        if range.offset % page != 0 || range.len % page != 0 || range.len == 0 {
            return Err(Fallback::Unaligned);
        }
        size = size
            .checked_add(range.len)
            .filter(|&size| size <= size_limit)
            .ok_or(Fallback::TooBig)?;
    }
    for range in ranges {
        match seals(range.file) {
            Ok(Some(seals)) if seals & libc::F_SEAL_SHRINK != 0 && seals & WRITE_SEALS == 0 => {}
            _ => return Err(Fallback::Unsealed),
        }
    }
    Ok(size)
}

/// The bytes of a `struct udmabuf_create_list` of `ranges`.
fn create_list(ranges: &[FileRange<'_>]) -> Result<Vec<u8>, Fallback> {
    let count = u32::try_from(ranges.len()).map_err(|_| Fallback::TooManyRanges)?;
    let mut list = Vec::with_capacity(8 + ranges.len() * ITEM_SIZE);
    list.extend_from_slice(&UDMABUF_FLAGS_CLOEXEC.to_ne_bytes());
    list.extend_from_slice(&count.to_ne_bytes());
    for range in ranges {
        let memfd = u32::try_from(range.file.as_raw_fd()).map_err(|_| Fallback::Unsealed)?;
        list.extend_from_slice(&memfd.to_ne_bytes());
        list.extend_from_slice(&0u32.to_ne_bytes());
        list.extend_from_slice(&range.offset.to_ne_bytes());
        list.extend_from_slice(&range.len.to_ne_bytes());
    }
    Ok(list)
}

/// How a request uses an object's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// It reads them: it waits for other drivers' writes.
    Read,
    /// It writes them: it waits for other drivers' reads and writes.
    Write,
}

impl Access {
    /// The poll event of a dma-buf that says the access may go ahead: a
    /// dma-buf is readable when its write fences have signalled, writable
    /// when all of them have.
    fn events(self) -> libc::c_short {
        match self {
            Access::Read => libc::POLLIN,
            Access::Write => libc::POLLOUT,
        }
    }
}

/// A dma-buf of an object's memory; its pages stay pinned until it is dropped.
#[derive(Debug)]
pub struct DmaBuf {
    fd: OwnedFd,
}

impl DmaBuf {
    /// Whether no fence of another driver keeps `access` waiting now. A
    /// buffer that cannot be polled (which the kernel does not do) counts as
    /// idle: the request then runs as on plain memory.
    pub fn is_idle(&self, access: Access) -> bool {
        let mut pollfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: access.events(),
            revents: 0,
        };
        let now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ppoll reads and writes the one `pollfd` given, which
        // lives on this stack, and reads `now`; no signal mask is passed.
        let ready = unsafe { libc::ppoll(&mut pollfd, 1, &now, std::ptr::null()) };
        ready != 0
    }
}

impl AsFd for DmaBuf {
    /// The buffer's descriptor, for an engine that imports it.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
impl DmaBuf {
    /// Any pollable descriptor standing in for a dma-buf: the unit tests'
    /// host kernel has no udmabuf.
    pub(crate) fn stand_in(fd: OwnedFd) -> Self {
        DmaBuf { fd }
    }
}

/// Errors of [`SyncWaits`].
#[derive(Debug, Error)]
pub enum SyncError {
    /// Its epoll set could not be made.
    #[error("cannot create the epoll set of implicit-sync waits")]
    Epoll(#[source] io::Error),
    /// A wait could not be armed.
    #[error("cannot wait for a dma-buf's fences")]
    Arm(#[source] io::Error),
}

/// Requests waiting for other drivers' fences on dma-bufs: each wait is a
/// one-shot registration of a duplicate of the buffer's descriptor in an
/// epoll set, whose own descriptor is readable while a wait has ended.
#[derive(Debug)]
pub struct SyncWaits {
    epoll: Epoll,
    /// The armed waits by token: the duplicate registered, and the waiter.
    armed: HashMap<u64, (OwnedFd, u64)>,
    next_token: u64,
}

impl SyncWaits {
    /// An empty set.
    pub fn new() -> Result<Self, SyncError> {
        Ok(SyncWaits {
            epoll: Epoll::new().map_err(SyncError::Epoll)?,
            armed: HashMap::new(),
            next_token: 0,
        })
    }

    /// The descriptor to wait on: readable when a wait may have ended.
    pub fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Waits until `buffer` lets `access` go ahead, for waiter `waiter`.
    pub fn arm(&mut self, buffer: &DmaBuf, access: Access, waiter: u64) -> Result<(), SyncError> {
        let duplicate = buffer.fd.try_clone().map_err(SyncError::Arm)?;
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        let events = match access {
            Access::Read => EventSet::IN,
            Access::Write => EventSet::OUT,
        } | EventSet::ONE_SHOT;
        self.epoll
            .ctl(
                ControlOperation::Add,
                duplicate.as_raw_fd(),
                EpollEvent::new(events, token),
            )
            .map_err(SyncError::Arm)?;
        self.armed.insert(token, (duplicate, waiter));
        Ok(())
    }

    /// The waiters whose waits have ended since the last call, each once
    /// per ended wait.
    pub fn ended(&mut self) -> Vec<u64> {
        let mut events = [EpollEvent::default(); 16];
        let mut ended = Vec::new();
        loop {
            let count = match self.epoll.wait(0, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Cannot happen (the set exists and the buffer is valid).
                Err(_) => break,
            };
            for event in events.iter().take(count) {
                if let Some((duplicate, waiter)) = self.armed.remove(&event.data()) {
                    self.disarm(&duplicate);
                    ended.push(waiter);
                }
            }
            if count < events.len() {
                break;
            }
        }
        ended
    }

    /// Drops every wait (the device reset).
    pub fn clear(&mut self) {
        for (_, (duplicate, _)) in std::mem::take(&mut self.armed) {
            self.disarm(&duplicate);
        }
    }

    /// Whether no wait is armed.
    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }

    /// Removes a registration before its duplicate is closed: the set
    /// keeps it while the buffer's other descriptors are open.
    fn disarm(&self, duplicate: &OwnedFd) {
        // Fails only for a descriptor not in the set.
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            duplicate.as_raw_fd(),
            EpollEvent::default(),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::memory::tests::{add_seals, memfd};

    fn range(file: &File, offset: u64, len: u64) -> FileRange<'_> {
        FileRange { file, offset, len }
    }

    /// Without the device every object falls back, for that reason first.
    #[test]
    fn a_host_without_udmabuf_makes_no_dma_buf() {
        let page = page_size();
        let dir = std::env::temp_dir();
        let maker = DmaBufMaker::open_at(&dir.join("no-such-udmabuf"), &dir.join("no-parameters"));
        assert!(!maker.available());
        let file = memfd(page, libc::MFD_ALLOW_SEALING);
        add_seals(&file, libc::F_SEAL_SHRINK);
        assert_eq!(
            maker.make(&[range(&file, 0, page)]).unwrap_err(),
            Fallback::NoDevice
        );
    }

    /// Each rule of udmabuf is checked before the kernel is asked.
    #[test]
    fn ranges_are_checked_as_udmabuf_would() {
        let page = page_size();
        let sealed = memfd(4 * page, libc::MFD_ALLOW_SEALING);
        add_seals(&sealed, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
        let unsealed = memfd(4 * page, libc::MFD_ALLOW_SEALING);
        let write_sealed = memfd(4 * page, libc::MFD_ALLOW_SEALING);
        add_seals(&write_sealed, libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE);
        let limit = 2 * page;
        let check = |ranges: &[FileRange<'_>]| check_ranges(ranges, limit, DEFAULT_MAX_RANGES);
        assert_eq!(check(&[range(&sealed, page, 2 * page)]), Ok(2 * page));
        assert_eq!(
            check(&[range(&sealed, 0, page), range(&sealed, 3 * page, page)]),
            Ok(2 * page)
        );
        assert_eq!(check(&[range(&sealed, 1, page)]), Err(Fallback::Unaligned));
        assert_eq!(
            check(&[range(&sealed, 0, page + 1)]),
            Err(Fallback::Unaligned)
        );
        assert_eq!(check(&[range(&sealed, 0, 0)]), Err(Fallback::Unaligned));
        assert_eq!(check(&[range(&sealed, 0, 3 * page)]), Err(Fallback::TooBig));
        assert_eq!(check(&[range(&unsealed, 0, page)]), Err(Fallback::Unsealed));
        assert_eq!(
            check(&[range(&write_sealed, 0, page)]),
            Err(Fallback::Unsealed)
        );
        let many = vec![range(&sealed, 0, page); 4];
        assert_eq!(
            check_ranges(&many, u64::MAX, 3),
            Err(Fallback::TooManyRanges)
        );
        assert_eq!(check_ranges(&many[..3], u64::MAX, 3), Ok(3 * page));
    }

    /// The list is laid out as `struct udmabuf_create_list` with its items.
    #[test]
    fn the_create_list_has_the_kernel_layout() {
        let page = page_size();
        let file = memfd(2 * page, 0);
        let list = create_list(&[range(&file, page, page), range(&file, 0, page)]).unwrap();
        assert_eq!(list.len(), 8 + 2 * ITEM_SIZE);
        let word = |at: usize| u32::from_ne_bytes(list[at..at + 4].try_into().unwrap());
        let long = |at: usize| u64::from_ne_bytes(list[at..at + 8].try_into().unwrap());
        assert_eq!((word(0), word(4)), (UDMABUF_FLAGS_CLOEXEC, 2));
        let fd = u32::try_from(file.as_raw_fd()).unwrap();
        assert_eq!((word(8), word(12), long(16), long(24)), (fd, 0, page, page));
        assert_eq!((word(32), long(40), long(48)), (fd, 0, page));
    }

    /// Every reason has its own index and label.
    #[test]
    fn fallback_reasons_are_numbered_in_order() {
        for (index, reason) in Fallback::ALL.iter().enumerate() {
            assert_eq!(reason.index(), index);
        }
        let mut names: Vec<_> = Fallback::ALL.iter().map(|r| r.name()).collect();
        names.dedup();
        assert_eq!(names.len(), Fallback::ALL.len());
    }

    /// A wait ends when its descriptor is ready, once, and a cleared set
    /// reports nothing. (A pipe stands in for a dma-buf: the host kernel of
    /// the unit tests has no udmabuf; tests/tests/vm_dmabuf.rs waits on real
    /// fences.)
    #[test]
    fn a_wait_ends_once_when_its_buffer_is_ready() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into `fds`.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both were just made and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let buffer = DmaBuf::stand_in(read);
        assert!(!buffer.is_idle(Access::Read));
        let mut waits = SyncWaits::new().unwrap();
        waits.arm(&buffer, Access::Read, 7).unwrap();
        waits.arm(&buffer, Access::Read, 8).unwrap();
        assert!(waits.ended().is_empty());
        std::io::Write::write_all(&mut File::from(write.try_clone().unwrap()), b"x").unwrap();
        let mut ended = waits.ended();
        ended.sort_unstable();
        assert_eq!(ended, [7, 8]);
        assert!(waits.ended().is_empty() && waits.is_empty());
        assert!(buffer.is_idle(Access::Read));
        waits.arm(&buffer, Access::Read, 9).unwrap();
        waits.clear();
        assert!(waits.ended().is_empty());
    }
}
