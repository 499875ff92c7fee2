// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests of the Vulkan engine's import of objects' dma-bufs
//! (`Import::dma_buf`), on a CPU device that imports them: lavapipe of Mesa
//! 24.1 or later (bookworm-backports' 25.0; bookworm's 22.3 has no
//! `VK_EXT_external_memory_dma_buf`). The hosts that run them have no
//! udmabuf, so a memfd stands in for the dma-buf: lavapipe's import maps
//! the descriptor it is given, whatever it is, which a GPU's would refuse.
//! The guest-as-host VM test (`tests/tests/vm_dmabuf.rs`) runs the same
//! path on real udmabufs.
//!
//! Without such a device they say so on stderr and pass, unless
//! `ACCEL_VULKAN_DMABUF_REQUIRED=1`, which makes them fail; `.ci/run` sets
//! it and points the loader at bookworm-backports' lavapipe.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use virtio_accel_spec::Status;

use super::gpu::Gpu;
use super::tests::noise;
use super::transfer::Transfer;
use super::GPU_CHUNK;
use crate::command::Operation;
use crate::dmabuf::DmaBuf;
use crate::engine::{DmaBufRange, Job};
use crate::sg::{HostSeg, OwnedBuffers, SgList};

/// A shared mapping of a memfd: an object's memory, and (a duplicate of
/// the memfd) its stand-in dma-buf.
struct MemfdObject {
    fd: OwnedFd,
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: a shared mapping owned by the value; the tests write it only
// through the engine's jobs and read it after they complete.
unsafe impl Send for MemfdObject {}
// SAFETY: as above.
unsafe impl Sync for MemfdObject {}

impl MemfdObject {
    /// `bytes.len()` bytes (a whole number of pages) holding `bytes`.
    fn new(bytes: &[u8]) -> Arc<Self> {
        // SAFETY: a plain call with a valid name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"object".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = bytes.len();
        // SAFETY: resizes the new memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }, 0);
        // SAFETY: a new shared mapping of the memfd's `len` bytes.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let object = MemfdObject {
            fd,
            addr: NonNull::new(addr.cast()).unwrap(),
            len,
        };
        // SAFETY: the mapping is `len` bytes, writable, and not in use yet.
        unsafe { std::slice::from_raw_parts_mut(object.addr.as_ptr(), len) }.copy_from_slice(bytes);
        Arc::new(object)
    }

    /// Its bytes now.
    fn bytes(&self) -> Vec<u8> {
        // SAFETY: the mapping is `len` bytes; no job runs on it meanwhile.
        unsafe { std::slice::from_raw_parts(self.addr.as_ptr(), self.len) }.to_vec()
    }

    /// Bytes `at..at + len` as a list of `seg`-byte segments, as a guest's
    /// object of that many segments would be.
    fn list(self: &Arc<Self>, at: usize, len: usize, seg: usize) -> SgList {
        assert!(at + len <= self.len);
        let mut list = SgList::new();
        let mut offset = at;
        while offset < at + len {
            let n = seg.min(at + len - offset);
            // SAFETY: `offset < self.len`: inside the mapping.
            let addr = unsafe { NonNull::new_unchecked(self.addr.as_ptr().add(offset)) };
            // SAFETY: the segment lies in the mapping, unmapped only when
            // the last clone of `self` (which the list holds) drops.
            unsafe { list.push(HostSeg::new(addr, n), self) }.unwrap();
            offset += n;
        }
        list
    }

    /// Bytes `at..at + len` as a range of its stand-in dma-buf.
    fn range(&self, at: usize, len: usize) -> DmaBufRange {
        DmaBufRange {
            buffer: Arc::new(DmaBuf::stand_in(self.fd.try_clone().unwrap())),
            offset: at as u64,
            len: len as u64,
        }
    }
}

impl Drop for MemfdObject {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once, when no list
        // over it is left (they hold clones of the `Arc`).
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// A transfer on a CPU device that imports dma-bufs, or `None`, said
/// loudly (a failure with `ACCEL_VULKAN_DMABUF_REQUIRED=1`).
fn transfer() -> Option<Transfer> {
    let skip = |why: String| {
        if std::env::var("ACCEL_VULKAN_DMABUF_REQUIRED").is_ok_and(|v| v == "1") {
            panic!("{why}, and ACCEL_VULKAN_DMABUF_REQUIRED=1");
        }
        // Straight to the file, past libtest's capture of `eprintln!`.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!! SKIPPED: {why} (Mesa 24.1's lavapipe or later, for example \
             bookworm-backports' mesa-vulkan-drivers through VK_DRIVER_FILES; \
             ACCEL_VULKAN_DMABUF_REQUIRED=1 makes this a failure)\n"
        );
        None
    };
    let gpu = match Gpu::open(None) {
        Ok(gpu) => Arc::new(gpu),
        Err(error) => return skip(format!("no Vulkan device: {}", crate::error_chain(&error))),
    };
    if !gpu.cpu || gpu.memory_fd.is_none() {
        return skip(format!(
            "the Vulkan device {:?} is not a CPU device that imports dma-bufs",
            gpu.name
        ));
    }
    Some(Transfer::new(&gpu).unwrap())
}

/// Runs `job` on `transfer`: it must complete Ok, with `imports` of its
/// buffers imported from their dma-bufs.
fn run(transfer: &mut Transfer, job: &Job, imports: u8) {
    let (outcome, imported) = transfer.run_job(job, &|| false);
    assert_eq!(outcome.status, Status::Ok);
    assert_eq!(imported, imports, "buffers imported from dma-bufs");
}

/// `written` at `at` in `before`, the rest as it was.
fn with_written(before: &[u8], at: usize, written: &[u8]) -> Vec<u8> {
    let mut after = before.to_vec();
    after[at..at + written.len()].copy_from_slice(written);
    after
}

/// A COPY from one object to another, over more than one chunk, at offsets
/// inside pages and words, in guest-page segments: both sides imported
/// from their dma-bufs, the bytes right, every chunk in place, and the
/// staging memory untouched.
#[test]
fn copy_between_objects_through_their_dma_bufs() {
    let Some(mut transfer) = transfer() else {
        return;
    };
    let size = GPU_CHUNK + (1 << 20) + 4096;
    let (source, target) = (
        MemfdObject::new(&noise(size, 1)),
        MemfdObject::new(&vec![0; size]),
    );
    let (from, to, len) = (100, 4099, GPU_CHUNK + 5000);
    let mut job = Job::new(Operation::Copy, 1);
    job.push_input(source.list(from, len, 4096));
    job.set_dma_buf(false, source.range(from, len));
    job.push_output(target.list(to, len, 4096));
    job.set_dma_buf(true, target.range(to, len));
    let before = target.bytes();
    run(&mut transfer, &job, 2);
    drop(job);
    let wanted = with_written(&before, to, &source.bytes()[from..from + len]);
    assert!(target.bytes() == wanted, "the target's bytes");
    let counters = transfer.counters();
    assert_eq!((counters.in_place, counters.staged), (2, 0));
    assert_eq!((counters.imports, counters.dma_buf_imports), (0, 2));
    assert!(transfer.staging_untouched());
}

/// A FILL of a range of an object that starts and ends inside a word.
#[test]
fn fill_of_an_object_through_its_dma_buf() {
    let Some(mut transfer) = transfer() else {
        return;
    };
    let target = MemfdObject::new(&noise(5 * 4096, 2));
    let (at, len) = (5, 3 * 4096 + 7);
    let mut job = Job::new(Operation::Fill { pattern: 0xa5 }, 1);
    job.push_output(target.list(at, len, 4096));
    job.set_dma_buf(true, target.range(at, len));
    let before = target.bytes();
    run(&mut transfer, &job, 1);
    drop(job);
    assert!(target.bytes() == with_written(&before, at, &vec![0xa5; len]));
}

/// A COPY between plain memory and an object, both ways: the object's side
/// imported from its dma-buf, the other's pages imported in place; or, when
/// the plain memory's segments are small, the whole job staged, its bytes
/// through the CPU, and the dma-buf not imported at all.
#[test]
fn copies_between_plain_memory_and_objects() {
    let Some(mut transfer) = transfer() else {
        return;
    };
    let len = 64 << 10;
    for (plain_segments, staged) in [(4096, 0), (512, 1)] {
        let imports = u8::from(staged == 0);
        let plain = OwnedBuffers::new(vec![noise(len, 3), vec![0; len]]);
        let object = MemfdObject::new(&vec![0; len + 8192]);
        let into = 4093;
        let mut job = Job::new(Operation::Copy, 1);
        job.push_input(plain.sg(0, plain_segments).unwrap());
        job.push_output(object.list(into, len, 4096));
        job.set_dma_buf(true, object.range(into, len));
        let before = object.bytes();
        run(&mut transfer, &job, imports);
        drop(job);
        let wanted = with_written(&before, into, &plain.to_vec(0).unwrap());
        assert!(
            object.bytes() == wanted,
            "into the object, {plain_segments}-byte pieces"
        );

        let mut job = Job::new(Operation::Copy, 2);
        job.push_input(object.list(into, len, 4096));
        job.set_dma_buf(false, object.range(into, len));
        job.push_output(plain.sg(1, plain_segments).unwrap());
        let staged_before = transfer.counters().staged;
        run(&mut transfer, &job, imports);
        drop(job);
        assert!(
            plain.to_vec(1).unwrap() == plain.to_vec(0).unwrap(),
            "out of the object"
        );
        assert_eq!(transfer.counters().staged - staged_before, staged);
    }
}

/// An object whose segments share bytes does not go through its dma-buf
/// as an output: there the byte is twice, so one region could not keep the
/// last write of it last. A COPY into two segments over the same page of
/// the object (whose stand-in dma-buf has two distinct pages there) writes
/// that page with the source's second half, as the software engine does,
/// and leaves the second page alone.
#[test]
fn an_output_whose_segments_alias_is_not_imported_whole() {
    let Some(mut transfer) = transfer() else {
        return;
    };
    let plain = OwnedBuffers::new(vec![noise(8192, 5)]);
    let target = MemfdObject::new(&vec![0; 8192]);
    let mut aliased = target.list(0, 4096, 4096);
    for seg in target.list(0, 4096, 4096).segments() {
        // SAFETY: a segment of the object's mapping, which `target` keeps.
        unsafe { aliased.push(*seg, &target) }.unwrap();
    }
    let mut job = Job::new(Operation::Copy, 1);
    job.push_input(plain.sg(0, 4096).unwrap());
    job.push_output(aliased);
    job.set_dma_buf(true, target.range(0, 8192));
    run(&mut transfer, &job, 0);
    drop(job);
    let source = plain.to_vec(0).unwrap();
    let mut wanted = source[4096..].to_vec();
    wanted.extend_from_slice(&[0; 4096]);
    assert!(target.bytes() == wanted);
    assert_eq!(transfer.counters().dma_buf_imports, 0);
}

/// A descriptor that no driver can import (a pipe's) fails its job's
/// import: the job runs on the object's pages, imported as host memory,
/// and the engine tries no dma-buf again.
#[test]
fn a_failed_import_falls_back_to_the_pages_for_good() {
    let Some(mut transfer) = transfer() else {
        return;
    };
    let mut ends = [0; 2];
    // SAFETY: `pipe2` writes two descriptors into `ends`.
    let made = unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(made, 0);
    // SAFETY: new descriptors that nothing else owns.
    let (read, _write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let not_a_dma_buf = Arc::new(DmaBuf::stand_in(read));
    let target = MemfdObject::new(&vec![0; 8192]);
    for pattern in [0x11, 0x22] {
        let mut job = Job::new(Operation::Fill { pattern }, 1);
        job.push_output(target.list(0, 8192, 4096));
        job.set_dma_buf(
            true,
            DmaBufRange {
                buffer: Arc::clone(&not_a_dma_buf),
                offset: 0,
                len: 8192,
            },
        );
        run(&mut transfer, &job, 0);
        drop(job);
        assert!(target.bytes() == vec![pattern; 8192]);
    }
    let counters = transfer.counters();
    assert_eq!((counters.dma_buf_imports, counters.in_place), (0, 2));
}

/// What a job's dma-buf import costs on this device next to importing its
/// pages: a COPY between two objects, at 4 KiB, 64 KiB and 1 MiB, in page
/// segments, each way. `VK_DRIVER_FILES=... cargo test --release -p
/// vhost-user-accel --lib dma_buf_import_cost -- --ignored --nocapture`
/// (the module's documentation says which device).
#[test]
#[ignore = "a timing, not a check"]
fn dma_buf_import_cost() {
    const ROUNDS: u32 = 500;
    let Some(mut transfer) = transfer() else {
        return;
    };
    let mut report = String::new();
    for len in [4096, 64 << 10, 1 << 20] {
        let (source, target) = (
            MemfdObject::new(&noise(len, 4)),
            MemfdObject::new(&vec![0; len]),
        );
        let mut per_job = Vec::new();
        for through_dma_bufs in [false, true] {
            let mut job = Job::new(Operation::Copy, 1);
            job.push_input(source.list(0, len, 4096));
            job.push_output(target.list(0, len, 4096));
            if through_dma_bufs {
                job.set_dma_buf(false, source.range(0, len));
                job.set_dma_buf(true, target.range(0, len));
            }
            let imports = if through_dma_bufs { 2 } else { 0 };
            let started = std::time::Instant::now();
            for _ in 0..ROUNDS {
                run(&mut transfer, &job, imports);
            }
            per_job.push(started.elapsed() / ROUNDS);
        }
        report += &format!(
            "{len} bytes: pages imported {:?} a job, dma-bufs imported {:?}\n",
            per_job[0], per_job[1]
        );
    }
    let _ = writeln!(std::io::stderr(), "{report}");
}
