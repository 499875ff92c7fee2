// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The kernel transport's own checks (spec/accel-uapi.md, cited as
//! accel-uapi §n): GEM objects, dma-bufs imported and exported, sync_files
//! and syncobjs as in- and out-fences, memory of this process, and the
//! errors of bad submissions. The virtqueue checks that name device fences
//! have no counterpart: the kernel driver keeps those to itself, and the
//! self-test says so.

use std::io::ErrorKind;
use std::os::fd::AsFd;

use accel_driver::kernel::{self, GemObject, JobBuffer, JobRecord, KernelJob, Mapping, Submission};
use accel_driver::kernel::{Udmabuf, UDMABUF_PATH};
use accel_driver::KernelDevice;
use virtio_accel_spec::{Crc32cParams, FillParams, Op, Status, VIRTIO_ACCEL_F_OBJECTS};

use super::{Check, CheckOutcome, Error, SelfTest, TransportChecks, Verdict};
use crate::accelerator::{Accelerator, JobPlacement};
use crate::reference;

/// Why the virtqueue check of a dependency on an unissued fence has no
/// counterpart here.
const NO_DEVICE_FENCES: &str = "the kernel driver turns in-fences into device dependencies \
     itself: a program names sync_files and syncobjs, never a device fence (accel-uapi §6)";

/// Largest buffer of these checks: 64 pages always form few enough runs.
const CHECK_LEN: usize = 256 << 10;

/// Ends the check with a failure unless `$ok`.
macro_rules! verify {
    ($ok:expr, $($why:tt)+) => {
        if !$ok {
            return Ok(Err(format!($($why)+)));
        }
    };
}

impl TransportChecks for KernelDevice {
    fn transport_checks(
        test: &mut SelfTest<'_, Self>,
        on_check: &mut dyn FnMut(&Check),
    ) -> Result<(), Error> {
        let always = Ok(());
        let name = "objects: GEM objects created, mapped, used by range, closed";
        test.gated(name, &always, SelfTest::check_gem_objects, on_check)?;
        let dmabufs = match test.device.unavailable(JobPlacement::DmaBufs) {
            Some(why) => Err(CheckOutcome::Skipped(why)),
            None => Ok(()),
        };
        let name = "dma-bufs: a udmabuf imported as a device object, read and written";
        test.gated(name, &dmabufs, SelfTest::check_udmabuf, on_check)?;
        let name = "dma-bufs: a GEM object exported, mapped, imported back as itself";
        test.gated(name, &always, SelfTest::check_prime_export, on_check)?;
        let name = "fences: FILL, COPY, CRC-32C chained by sync_files before any has run";
        test.gated(name, &always, SelfTest::check_sync_file_chain, on_check)?;
        let name = "fences: a syncobj across request queues, waited for, exported";
        test.gated(name, &always, SelfTest::check_syncobj, on_check)?;
        let name = "memory: process memory pinned as input and output";
        test.gated(name, &always, SelfTest::check_user_memory, on_check)?;
        let name = "errors: refused submissions, and statuses in the record";
        test.gated(name, &always, SelfTest::check_errors, on_check)?;
        let name = "fences: a dependency on a fence the device never issued (NoFence)";
        test.record(
            name.into(),
            CheckOutcome::NotApplicable(NO_DEVICE_FENCES.into()),
            on_check,
        );
        Ok(())
    }
}

/// What a record says, for failure messages.
fn describe(record: &JobRecord) -> String {
    match record.errno() {
        Some(errno) => format!("status {:?} ({errno})", record.status()),
        None => format!("status {:?}", record.status()),
    }
}

/// The error kind a refused submission got, or `None` if it was accepted.
fn refusal(submitted: Result<KernelJob<'_>, kernel::Error>) -> Option<ErrorKind> {
    match submitted {
        Ok(_) => None,
        Err(kernel::Error::Ioctl { source, .. }) => Some(source.kind()),
        Err(_) => Some(ErrorKind::Other),
    }
}

impl SelfTest<'_, KernelDevice> {
    /// `len` bytes for one buffer of these checks, within the device's limits.
    fn check_len(&self, wanted: usize) -> usize {
        wanted
            .min(CHECK_LEN)
            .min(self.device.largest_piece())
            .max(1)
    }

    /// A new GEM object holding `bytes`.
    fn object_with(&self, bytes: &[u8]) -> Result<GemObject<'_>, Error> {
        let object = self.device.create_object(bytes.len().max(1) as u64)?;
        object.mapping()?.write(0, bytes)?;
        Ok(object)
    }

    /// Waits for `job` within the device's timeout.
    fn finish(&self, job: KernelJob<'_>) -> Result<JobRecord, Error> {
        Ok(job.finish(Some(self.device.timeout()))?)
    }

    /// An object is registered while it lives (with OBJECTS), a range of it
    /// crossing a page is read, a COPY writes a range at an offset, closing
    /// the source right after SUBMIT does not disturb the job (it holds the
    /// object, accel-uapi §4.3), and the closed handle is then refused.
    fn check_gem_objects(&mut self) -> Result<Verdict, Error> {
        let data = self.data.text(8192 + 5000);
        let src = self.object_with(&data)?;
        let wanted = self.device.has_capability(VIRTIO_ACCEL_F_OBJECTS);
        let registered = src.is_registered()?;
        verify!(
            registered == wanted,
            "GEM_INFO says registered {registered}, OBJECTS is {wanted}"
        );
        let (offset, len) = (5000usize, 7000usize);
        let range = src.range(offset as u64, len as u64)?;
        let crc = Submission::new(Op::Crc32c)
            .params(&Crc32cParams::default())
            .input(range);
        let record = self.device.run(&crc)?;
        let want = reference::crc32c(0, &data[offset..offset + len]);
        verify!(
            record.status() == Ok(Status::Ok),
            "CRC-32C: {}",
            describe(&record)
        );
        let got = record.completion(0).result_u32();
        verify!(
            got == want,
            "CRC-32C of a range: {got:#010x}, expected {want:#010x}"
        );

        let dst = self.device.create_object(len as u64 + 100)?;
        let copy = Submission::new(Op::Copy)
            .input(src.range(offset as u64, len as u64)?)
            .output(dst.range(100, len as u64)?);
        let job = self.device.submit(&copy)?;
        let closed = src.handle();
        drop(src);
        let record = self.finish(job)?;
        verify!(
            record.status() == Ok(Status::Ok),
            "COPY: {}",
            describe(&record)
        );
        verify!(
            record.bytes_written == len as u64,
            "COPY wrote {} bytes, expected {len}",
            record.bytes_written
        );
        let out = dst.mapping()?.read(0, 100 + len)?;
        verify!(
            out[..100].iter().all(|&b| b == 0) && out[100..] == data[offset..offset + len],
            "the COPY's output range differs, or bytes before it changed"
        );
        let stale = Submission::new(Op::Crc32c).input(JobBuffer::object(closed, 0, 16));
        let refused = refusal(self.device.submit(&stale));
        verify!(
            refused == Some(ErrorKind::NotFound),
            "a closed handle: {refused:?}, expected ENOENT"
        );
        Ok(Ok(()))
    }

    /// A udmabuf (memfd pages) imported as a device object (accel-uapi
    /// §4.4): read by a CRC-32C, written by a COPY (seen through the memfd),
    /// and mapped through the node by its exporter.
    fn check_udmabuf(&mut self) -> Result<Verdict, Error> {
        let size = 4 * 4096;
        let udmabuf = Udmabuf::new(UDMABUF_PATH.as_ref(), size as u64)?;
        let data = self.data.random(size);
        udmabuf.mapping().write(0, &data)?;
        let mut imported = self.device.import(udmabuf.as_fd())?;
        let registered = imported.is_registered()?;
        verify!(
            imported.is_imported() && registered && imported.size() == size as u64,
            "GEM_INFO of the import: imported {}, registered {registered}, size {}",
            imported.is_imported(),
            imported.size()
        );
        let crc = Submission::new(Op::Crc32c)
            .params(&Crc32cParams::default())
            .input(imported.range(100, size as u64 - 200)?);
        let record = self.device.run(&crc)?;
        verify!(
            record.status() == Ok(Status::Ok),
            "CRC-32C: {}",
            describe(&record)
        );
        let (got, want) = (
            record.completion(0).result_u32(),
            reference::crc32c(0, &data[100..size - 100]),
        );
        verify!(
            got == want,
            "CRC-32C of the dma-buf: {got:#010x}, expected {want:#010x}"
        );

        let patch = self.data.random(1000);
        let src = self.object_with(&patch)?;
        let copy = Submission::new(Op::Copy)
            .input(src.range(0, 1000)?)
            .output(imported.range(300, 1000)?);
        let record = self.device.run(&copy)?;
        verify!(
            record.status() == Ok(Status::Ok),
            "COPY into it: {}",
            describe(&record)
        );
        let seen = udmabuf.mapping().read(299, 1002)?;
        verify!(
            seen[1..1001] == patch[..] && seen[0] == data[299] && seen[1001] == data[1300],
            "the memfd does not show the COPY's bytes where they belong"
        );
        if let Err(e) = imported.map() {
            return Ok(Err(format!("mmap of the import through the node: {e}")));
        }
        let mapped = imported.mapping()?.read(300, 1000)?;
        verify!(
            mapped == patch,
            "the node's mapping of the import shows other bytes"
        );
        Ok(Ok(()))
    }

    /// PRIME export (accel-uapi §4.4): the dma-buf maps to the object's
    /// bytes, and importing it back gives the same handle.
    fn check_prime_export(&mut self) -> Result<Verdict, Error> {
        let data = self.data.random(3 * 4096 + 5);
        let object = self.object_with(&data)?;
        let dmabuf = object.export()?;
        let len = usize::try_from(object.size()).unwrap_or(usize::MAX);
        let map = Mapping::new(dmabuf.as_fd(), len, 0, false).map_err(kernel::Error::Map)?;
        verify!(
            map.read(0, data.len())? == data,
            "the exported dma-buf maps to other bytes"
        );
        let handle = self.device.import_handle(dmabuf.as_fd())?;
        verify!(
            handle == object.handle(),
            "the dma-buf imported back as handle {handle}, not {}",
            object.handle()
        );
        Ok(Ok(()))
    }

    /// FILL, COPY and CRC-32C submitted together, each after the previous
    /// one's sync_file: the CRC must see the filled bytes, which only the
    /// fences guarantee; each fence reads as signalled once waited for.
    fn check_sync_file_chain(&mut self) -> Result<Verdict, Error> {
        let len = self.check_len(CHECK_LEN);
        let a = self.device.create_object(len as u64)?;
        let b = self.device.create_object(len as u64)?;
        let pattern = 0xc3;
        let fill = Submission::new(Op::Fill)
            .params(&FillParams {
                pattern,
                ..Default::default()
            })
            .output(a.range(0, len as u64)?);
        let filled = self.device.submit(&fill)?;
        let copy = Submission::new(Op::Copy)
            .after_sync_file(filled.fence().try_clone()?)
            .input(a.range(0, len as u64)?)
            .output(b.range(0, len as u64)?);
        let copied = self.device.submit(&copy)?;
        let crc = Submission::new(Op::Crc32c)
            .params(&Crc32cParams::default())
            .after_sync_file(copied.fence().try_clone()?)
            .input(b.range(0, len as u64)?);
        let summed = self.device.submit(&crc)?;
        let last = self.finish(summed)?;
        let signalled = filled.fence().is_signalled()? && copied.fence().is_signalled()?;
        verify!(
            signalled,
            "the CRC-32C finished before the fences it waited for"
        );
        for (what, record) in [
            ("FILL", self.finish(filled)?),
            ("COPY", self.finish(copied)?),
            ("CRC-32C", last),
        ] {
            verify!(
                record.status() == Ok(Status::Ok),
                "{what}: {}",
                describe(&record)
            );
        }
        let want = reference::crc32c(0, &vec![pattern; len]);
        let got = last.completion(0).result_u32();
        verify!(
            got == want,
            "the last job of the chain did not see the first one's bytes: {got:#010x}"
        );
        Ok(Ok(()))
    }

    /// A COPY on the first request queue signals a syncobj, a CRC-32C on the
    /// last waits for it; the syncobj then passes SYNCOBJ_WAIT and exports a
    /// signalled sync_file.
    fn check_syncobj(&mut self) -> Result<Verdict, Error> {
        let last = self.device.num_request_queues().saturating_sub(1);
        let data = self.data.random(self.check_len(65536));
        let src = self.object_with(&data)?;
        let dst = self.device.create_object(data.len() as u64)?;
        let syncobj = self.device.create_syncobj()?;
        let copy = Submission::new(Op::Copy)
            .on_queue(0)
            .signal(&syncobj)
            .input(src.range(0, data.len() as u64)?)
            .output(dst.range(0, data.len() as u64)?);
        let copied = self.device.submit(&copy)?;
        let crc = Submission::new(Op::Crc32c)
            .params(&Crc32cParams::default())
            .on_queue(last)
            .after_syncobj(&syncobj)
            .input(dst.range(0, data.len() as u64)?);
        let summed = self.finish(self.device.submit(&crc)?)?;
        let copied = self.finish(copied)?;
        verify!(
            copied.status() == Ok(Status::Ok),
            "COPY: {}",
            describe(&copied)
        );
        verify!(
            summed.status() == Ok(Status::Ok),
            "CRC-32C: {}",
            describe(&summed)
        );
        verify!(
            copied.queue == Some(0) && summed.queue == Some(u32::from(last)),
            "queues {:?} and {:?}, asked for 0 and {last}",
            copied.queue,
            summed.queue
        );
        let (got, want) = (
            summed.completion(0).result_u32(),
            reference::crc32c(0, &data),
        );
        verify!(got == want, "the CRC-32C after the syncobj saw other data");
        verify!(
            syncobj.wait(self.device.timeout())?,
            "SYNCOBJ_WAIT timed out on a signalled syncobj"
        );
        verify!(
            syncobj.export_sync_file()?.is_signalled()?,
            "the syncobj's fence exported as a sync_file is not signalled"
        );
        Ok(Ok(()))
    }

    /// Memory of this process as buffers (accel-uapi §5): a seeded CRC-32C
    /// of an unaligned range, and a COPY into memory, bytes after it kept.
    fn check_user_memory(&mut self) -> Result<Verdict, Error> {
        let backing = self.data.text(3 * 4096 + 22);
        let data = &backing[5..];
        let seed = 0x1234_5678;
        let crc = Submission::new(Op::Crc32c)
            .params(&Crc32cParams {
                seed: seed.into(),
                ..Default::default()
            })
            .input(JobBuffer::memory(data));
        let record = self.device.run(&crc)?;
        verify!(
            record.status() == Ok(Status::Ok),
            "CRC-32C: {}",
            describe(&record)
        );
        let (got, want) = (
            record.completion(0).result_u32(),
            reference::crc32c(seed, data),
        );
        verify!(
            got == want,
            "CRC-32C of memory: {got:#010x}, expected {want:#010x}"
        );
        let mut out = vec![0xee; data.len() + 3];
        let copy = Submission::new(Op::Copy)
            .input(JobBuffer::memory(data))
            .output(JobBuffer::memory_mut(&mut out[..data.len()]));
        let record = self.device.run(&copy)?;
        drop(copy);
        verify!(
            record.status() == Ok(Status::Ok),
            "COPY: {}",
            describe(&record)
        );
        verify!(
            out[..data.len()] == *data && out[data.len()..] == [0xee; 3],
            "the COPY into memory differs, or wrote past its buffer"
        );
        Ok(Ok(()))
    }

    /// A range past its object and an operation the device lacks are
    /// refused by SUBMIT (EINVAL, EOPNOTSUPP); a reserved parameter byte and
    /// too small an output complete with Invalid and NoSpace, the errno in
    /// the record (accel-uapi §5, §7).
    fn check_errors(&mut self) -> Result<Verdict, Error> {
        let bytes = self.data.random(4096);
        let object = self.object_with(&bytes)?;
        let end = object.size();
        let past =
            Submission::new(Op::Crc32c).input(JobBuffer::object(object.handle(), end - 10, 11));
        let refused = refusal(self.device.submit(&past));
        verify!(
            refused == Some(ErrorKind::InvalidInput),
            "a range past its object: {refused:?}, expected EINVAL"
        );
        let unknown = Submission::raw_op(0).input(object.range(0, 16)?);
        let refused = refusal(self.device.submit(&unknown));
        verify!(
            refused == Some(ErrorKind::Unsupported),
            "operation 0: {refused:?}, expected EOPNOTSUPP"
        );
        let mut params = [0; 64];
        params[63] = 1;
        let reserved = Submission::new(Op::Crc32c)
            .raw_params(params)
            .input(object.range(0, 16)?);
        let record = self.device.run(&reserved)?;
        let errno = record.errno().map(|e| e.kind());
        verify!(
            record.status() == Ok(Status::Invalid) && errno == Some(ErrorKind::InvalidInput),
            "a reserved parameter byte: {}, expected Invalid (EINVAL)",
            describe(&record)
        );
        let small = self.device.create_object(4095)?;
        let copy = Submission::new(Op::Copy)
            .input(object.range(0, 4096)?)
            .output(small.range(0, 4095)?);
        let record = self.device.run(&copy)?;
        let errno = record.errno().map(|e| e.kind());
        verify!(
            record.status() == Ok(Status::NoSpace) && errno == Some(ErrorKind::StorageFull),
            "COPY into too small an output: {}, expected NoSpace (ENOSPC)",
            describe(&record)
        );
        Ok(Ok(()))
    }
}
