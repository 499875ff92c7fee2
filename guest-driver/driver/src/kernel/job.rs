// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Jobs (accel-uapi §3, §5, §7): a [`Submission`] names an operation, its
//! buffers and its in-fences; [`KernelDevice::submit`] queues it and returns
//! a [`KernelJob`], whose out-fence is a sync_file and whose result record lives in
//! a results object the device keeps mapped. A record decodes into the same
//! [`Completion`] the virtqueue driver gives.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use virtio_accel_spec::op::{OpParams, PARAMS_SIZE};
use virtio_accel_spec::request::RESULT_SIZE;
use virtio_accel_spec::status::UnknownStatus;
use virtio_accel_spec::{Fence, Op, Resp, Status};
use vm_memory::endian::{Le32, Le64};

use super::fence::{SyncFile, Syncobj};
use super::map::Mapping;
use super::uapi::{
    self, DrmVaccelBuffer, DrmVaccelGemCreate, DrmVaccelGemInfo, DrmVaccelResult, DrmVaccelSubmit,
    DRM_VACCEL_NO_QUEUE, DRM_VACCEL_STATUS_PENDING, DRM_VACCEL_SUBMIT_IN_SYNC_FILE,
    DRM_VACCEL_SUBMIT_OUT_SYNC_FILE, DRM_VACCEL_SUBMIT_QUEUE, RESULT_RECORD_SIZE,
    RESULT_STATUS_OFFSET,
};
use super::{Error, KernelDevice, Result};
use crate::device::{Completion, RESP_SIZE};

/// One buffer of a job: a range of a GEM object, or memory of this process
/// that the kernel pins while the job runs.
#[derive(Debug)]
pub struct JobBuffer<'a> {
    raw: DrmVaccelBuffer,
    /// Memory borrowed shared: the device may read it, never write it.
    read_only: bool,
    memory: PhantomData<&'a mut [u8]>,
}

impl JobBuffer<'static> {
    /// Bytes `offset..offset + len` of the GEM object `handle` (see
    /// [`GemObject::range`](super::GemObject::range), which checks the range).
    pub fn object(handle: u32, offset: u64, len: u64) -> Self {
        JobBuffer {
            raw: DrmVaccelBuffer {
                handle,
                offset,
                length: len,
                ..DrmVaccelBuffer::default()
            },
            read_only: false,
            memory: PhantomData,
        }
    }
}

impl<'a> JobBuffer<'a> {
    /// `data`, an input the device reads in place (as an output it is
    /// refused: [`Error::ReadOnlyOutput`]).
    pub fn memory(data: &'a [u8]) -> Self {
        Self::user(data.as_ptr() as u64, data.len(), true)
    }

    /// `data`, an output the device writes in place: borrowed until the job
    /// has finished.
    pub fn memory_mut(data: &'a mut [u8]) -> Self {
        Self::user(data.as_mut_ptr() as u64, data.len(), false)
    }

    fn user(address: u64, len: usize, read_only: bool) -> Self {
        JobBuffer {
            raw: DrmVaccelBuffer {
                length: len as u64,
                user_ptr: address,
                ..DrmVaccelBuffer::default()
            },
            read_only,
            memory: PhantomData,
        }
    }

    /// The buffer as SUBMIT takes it.
    pub fn raw(&self) -> DrmVaccelBuffer {
        self.raw
    }

    /// Whether it is memory of this process (pinned while the job runs).
    pub fn is_memory(&self) -> bool {
        self.raw.handle == 0
    }
}

/// A job to submit, built step by step.
#[derive(Debug)]
pub struct Submission<'a> {
    op: u32,
    params: [u8; PARAMS_SIZE],
    inputs: Vec<JobBuffer<'a>>,
    outputs: Vec<JobBuffer<'a>>,
    in_syncobjs: Vec<u32>,
    in_sync_file: Option<SyncFile>,
    out_syncobj: u32,
    queue: Option<u32>,
}

impl<'a> Submission<'a> {
    /// A job of `op` with zero parameters, no buffers and no fences.
    pub fn new(op: Op) -> Self {
        Self::raw_op(u32::from(op))
    }

    /// A job with any operation code, even one the device lacks.
    pub fn raw_op(op: u32) -> Self {
        Submission {
            op,
            params: [0; PARAMS_SIZE],
            inputs: Vec::new(),
            outputs: Vec::new(),
            in_syncobjs: Vec::new(),
            in_sync_file: None,
            out_syncobj: 0,
            queue: None,
        }
    }

    /// Sets the parameter block.
    pub fn params<P: OpParams>(self, params: &P) -> Self {
        self.raw_params(params.to_params())
    }

    /// Sets the raw parameter bytes (passed to the device as they are).
    pub fn raw_params(mut self, params: [u8; PARAMS_SIZE]) -> Self {
        self.params = params;
        self
    }

    /// Adds an input buffer.
    pub fn input(mut self, buffer: JobBuffer<'a>) -> Self {
        self.inputs.push(buffer);
        self
    }

    /// Adds an output buffer.
    pub fn output(mut self, buffer: JobBuffer<'a>) -> Self {
        self.outputs.push(buffer);
        self
    }

    /// Runs after the fence `syncobj` holds when the job is submitted.
    pub fn after_syncobj(mut self, syncobj: &Syncobj<'_>) -> Self {
        self.in_syncobjs.push(syncobj.handle());
        self
    }

    /// Runs after the fences of the sync_file `fence` (one sync_file per
    /// job: a later call replaces an earlier one; merge sync_files for
    /// more). Give it a [`SyncFile::try_clone`] of a fence to keep.
    pub fn after_sync_file(mut self, fence: SyncFile) -> Self {
        self.in_sync_file = Some(fence);
        self
    }

    /// Installs the job's fence in `syncobj` (replacing its fence).
    pub fn signal(mut self, syncobj: &Syncobj<'_>) -> Self {
        self.out_syncobj = syncobj.handle();
        self
    }

    /// Runs on request queue `queue` (below `num_request_queues`); by
    /// default the kernel picks the queue (accel-uapi §5).
    pub fn on_queue(mut self, queue: u16) -> Self {
        self.queue = Some(u32::from(queue));
        self
    }

    /// An error if the device would write memory borrowed shared.
    fn check_outputs(&self) -> Result<()> {
        if self.outputs.iter().any(|buffer| buffer.read_only) {
            return Err(Error::ReadOnlyOutput);
        }
        Ok(())
    }

    /// Whether a buffer is memory of this process.
    fn pins_memory(&self) -> bool {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .any(JobBuffer::is_memory)
    }

    /// The buffers as SUBMIT takes them: inputs, then outputs.
    pub fn raw_buffers(&self) -> Vec<DrmVaccelBuffer> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .map(JobBuffer::raw)
            .collect()
    }

    /// The SUBMIT argument, its `buffers` pointing into `buffers` (from
    /// [`raw_buffers`](Self::raw_buffers)) and `in_syncobjs` into this
    /// submission: both must live until the ioctl returns. It asks for an
    /// out sync_file and leaves the results record to the caller.
    pub fn encode(&self, buffers: &[DrmVaccelBuffer]) -> DrmVaccelSubmit {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut flags = DRM_VACCEL_SUBMIT_OUT_SYNC_FILE;
        if self.in_sync_file.is_some() {
            flags |= DRM_VACCEL_SUBMIT_IN_SYNC_FILE;
        }
        if self.queue.is_some() {
            flags |= DRM_VACCEL_SUBMIT_QUEUE;
        }
        DrmVaccelSubmit {
            op: self.op,
            flags,
            params: self.params,
            num_in: count(self.inputs.len()),
            num_out: count(self.outputs.len()),
            buffers: buffers.as_ptr() as u64,
            in_syncobjs: if self.in_syncobjs.is_empty() {
                0
            } else {
                self.in_syncobjs.as_ptr() as u64
            },
            num_in_syncobjs: count(self.in_syncobjs.len()),
            in_sync_file: self
                .in_sync_file
                .as_ref()
                .map_or(0, |fence| fence.as_fd().as_raw_fd()),
            out_syncobj: self.out_syncobj,
            out_sync_file: -1,
            queue: self.queue.unwrap_or(0),
            ..DrmVaccelSubmit::default()
        }
    }
}

/// A job's result record (accel-uapi §7), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRecord {
    /// The job.
    pub job_id: u64,
    /// [`DRM_VACCEL_STATUS_PENDING`], or the device's status (`VIRTIO_ACCEL_S_*`).
    pub status: u32,
    /// 0 when `status` is Ok, else a negative errno.
    pub error: i32,
    /// Bytes the operation wrote to its first output.
    pub bytes_written: u64,
    /// The request queue the job ran on; `None` if it never reached the device.
    pub queue: Option<u32>,
    /// The operation's result (spec §8).
    pub result: [u8; RESULT_SIZE],
}

impl From<DrmVaccelResult> for JobRecord {
    fn from(raw: DrmVaccelResult) -> Self {
        JobRecord {
            job_id: raw.job_id,
            status: raw.status,
            error: raw.error,
            bytes_written: raw.bytes_written,
            queue: (raw.queue != DRM_VACCEL_NO_QUEUE).then_some(raw.queue),
            result: raw.result,
        }
    }
}

impl JobRecord {
    /// Whether the job has not finished.
    pub fn is_pending(&self) -> bool {
        self.status == DRM_VACCEL_STATUS_PENDING
    }

    /// The device's status.
    pub fn status(&self) -> std::result::Result<Status, UnknownStatus> {
        Status::try_from(self.status)
    }

    /// The errno the kernel gave a failed job (`EILSEQ`, `ETIMEDOUT`, ...).
    pub fn errno(&self) -> Option<io::Error> {
        (self.error != 0).then(|| io::Error::from_raw_os_error(self.error.saturating_neg()))
    }

    /// The record as the virtqueue driver reports a completion, with
    /// `token`: status, bytes written and result as the device gave them. The
    /// kernel keeps device fences to itself, so the fence is sequence number
    /// 0 (never issued, spec §6.2) on the queue the job ran on.
    pub fn completion(&self, token: u64) -> Completion {
        let queue = self.queue.and_then(|q| u16::try_from(q).ok()).unwrap_or(0);
        Completion {
            token,
            resp: Resp {
                status: Le32::from(self.status),
                reserved: Le32::from(0),
                fence: Fence::new(queue, 0),
                bytes_written: Le64::from(self.bytes_written),
                result: self.result,
            },
            used_len: RESP_SIZE,
        }
    }
}

/// Result records: one GEM object, mapped, with a record per slot.
#[derive(Debug)]
pub(crate) struct Results {
    handle: u32,
    map: Mapping,
    /// Slots a live [`KernelJob`] holds.
    held: Mutex<Vec<bool>>,
}

/// Slots of the results object: the unfinished jobs one file may have
/// (accel-uapi §10).
const SLOTS: usize = 1024;

impl Results {
    /// The results object of the node `fd`: [`SLOTS`] records, or the
    /// records of one page if the pages of that many do not form few enough
    /// runs for the device (`max_segments` may be as low as 2).
    pub(crate) fn create(fd: BorrowedFd<'_>) -> Result<Self> {
        let page = super::page_size();
        match Self::create_sized(fd, SLOTS * RESULT_RECORD_SIZE) {
            Err(Error::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::E2BIG) => {
                Self::create_sized(fd, page)
            }
            other => other,
        }
    }

    fn create_sized(fd: BorrowedFd<'_>, bytes: usize) -> Result<Self> {
        let mut create = DrmVaccelGemCreate {
            size: bytes as u64,
            ..DrmVaccelGemCreate::default()
        };
        // SAFETY: the argument carries no address.
        unsafe { uapi::call(fd, &uapi::DRM_IOCTL_VACCEL_GEM_CREATE, &mut create) }
            .map_err(|source| Error::ioctl(&uapi::DRM_IOCTL_VACCEL_GEM_CREATE, source))?;
        let mut info = DrmVaccelGemInfo {
            handle: create.handle,
            ..DrmVaccelGemInfo::default()
        };
        // SAFETY: the argument carries no address.
        unsafe { uapi::call(fd, &uapi::DRM_IOCTL_VACCEL_GEM_INFO, &mut info) }
            .map_err(|source| Error::ioctl(&uapi::DRM_IOCTL_VACCEL_GEM_INFO, source))?;
        let map = Mapping::new(fd, bytes, info.mmap_offset, true).map_err(Error::Map)?;
        Ok(Results {
            handle: create.handle,
            map,
            held: Mutex::new(vec![false; bytes / RESULT_RECORD_SIZE]),
        })
    }

    /// The number of slots.
    pub(crate) fn slots(&self) -> usize {
        self.map.len() / RESULT_RECORD_SIZE
    }

    fn status(&self, slot: usize) -> Result<u32> {
        self.map.load_u32(
            slot * RESULT_RECORD_SIZE + RESULT_STATUS_OFFSET,
            Ordering::Acquire,
        )
    }

    /// A slot no live job holds and no unfinished job writes.
    fn acquire(&self) -> Result<usize> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for (slot, taken) in held.iter_mut().enumerate() {
            if !*taken && self.status(slot)? != DRM_VACCEL_STATUS_PENDING {
                *taken = true;
                return Ok(slot);
            }
        }
        Err(Error::NoResultSlot(held.len()))
    }

    fn release(&self, slot: usize) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(taken) = held.get_mut(slot) {
            *taken = false;
        }
    }

    /// Record `slot`, once its status is final (the acquire load orders
    /// the other fields after it, accel-uapi §7).
    fn record(&self, slot: usize) -> Result<Option<JobRecord>> {
        if self.status(slot)? == DRM_VACCEL_STATUS_PENDING {
            return Ok(None);
        }
        let raw: DrmVaccelResult = self.map.read_obj(slot * RESULT_RECORD_SIZE)?;
        Ok(Some(raw.into()))
    }
}

/// A submitted job: its out-fence and its record. Borrows the memory
/// buffers of its submission until it is dropped; dropping a job that uses
/// memory of this process waits for it to finish (the device may write that
/// memory until then), one that uses only GEM objects does not.
#[derive(Debug)]
pub struct KernelJob<'a> {
    device: &'a KernelDevice,
    slot: usize,
    job_id: u64,
    fence: SyncFile,
    pins_memory: bool,
    finished: bool,
    memory: PhantomData<&'a mut [u8]>,
}

impl KernelDevice {
    /// Queues `submission` (`DRM_IOCTL_VACCEL_SUBMIT`) with an out
    /// sync_file and a result record, and returns at once.
    pub fn submit<'a>(&'a self, submission: &Submission<'a>) -> Result<KernelJob<'a>> {
        submission.check_outputs()?;
        let slot = self.results.acquire()?;
        let buffers = submission.raw_buffers();
        let mut arg = submission.encode(&buffers);
        arg.results_handle = self.results.handle;
        arg.results_offset = (slot * RESULT_RECORD_SIZE) as u64;
        // SAFETY: `buffers` holds `num_in + num_out` entries and
        // `in_syncobjs` points into `submission`, both live across the call,
        // which only reads them. Memory buffers come from slices borrowed for
        // 'a, which the returned job keeps borrowed until the device is done
        // with them (its drop waits for that); the device writes only the
        // outputs, which are exclusive borrows (checked above).
        let submitted = unsafe { self.ioctl(&uapi::DRM_IOCTL_VACCEL_SUBMIT, &mut arg) };
        let fence = submitted.and_then(|()| {
            SyncFile::from_raw(arg.out_sync_file, uapi::DRM_IOCTL_VACCEL_SUBMIT.name)
        });
        match fence {
            Ok(fence) => Ok(KernelJob {
                device: self,
                slot,
                job_id: arg.job_id,
                fence,
                pins_memory: submission.pins_memory(),
                finished: false,
                memory: PhantomData,
            }),
            Err(e) => {
                self.results.release(slot);
                Err(e)
            }
        }
    }

    /// Submits `submission` and waits for it within the device's timeout.
    pub fn run(&self, submission: &Submission<'_>) -> Result<JobRecord> {
        self.submit(submission)?.finish(Some(self.timeout()))
    }

    /// Result records: the most jobs of this process unfinished at once.
    pub fn result_slots(&self) -> usize {
        self.results.slots()
    }
}

impl KernelJob<'_> {
    /// The job's number on the device.
    pub fn id(&self) -> u64 {
        self.job_id
    }

    /// The out-fence: signals when the job has finished, after its record
    /// is written. Other jobs may wait for it ([`Submission::after_sync_file`]).
    pub fn fence(&self) -> &SyncFile {
        &self.fence
    }

    /// Waits up to `timeout` (forever if `None`) for the out-fence; `false`
    /// on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        self.fence.wait(timeout)
    }

    /// The record, once the job has finished.
    pub fn record(&self) -> Result<Option<JobRecord>> {
        self.device.results.record(self.slot)
    }

    /// Waits for the job (up to `timeout`, forever if `None`) and returns
    /// its record, whatever its status.
    pub fn finish(mut self, timeout: Option<Duration>) -> Result<JobRecord> {
        if !self.wait(timeout)? {
            return Err(Error::Timeout(timeout.unwrap_or(Duration::MAX)));
        }
        let record = self.record()?.ok_or(Error::RecordPending(self.job_id))?;
        self.finished = true;
        if record.job_id != self.job_id {
            return Err(Error::RecordMismatch {
                expected: self.job_id,
                found: record.job_id,
            });
        }
        Ok(record)
    }
}

impl Drop for KernelJob<'_> {
    fn drop(&mut self) {
        if self.pins_memory && !self.finished {
            if let Err(e) = self.wait(None) {
                log::error!(
                    "job {}: cannot wait for it before its memory is freed: {e}; aborting",
                    self.job_id
                );
                std::process::abort();
            }
        }
        self.device.results.release(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_accel_spec::Crc32cParams;

    #[test]
    fn a_record_decodes_to_the_completion_the_virtqueue_driver_gives() {
        let mut raw = DrmVaccelResult {
            job_id: 7,
            status: 0,
            error: 0,
            bytes_written: 4096,
            queue: 1,
            reserved: 0,
            result: [0; 32],
        };
        raw.result[..4].copy_from_slice(&0xe306_9283u32.to_le_bytes());
        let record = JobRecord::from(raw);
        assert!(!record.is_pending());
        assert_eq!(record.status(), Ok(Status::Ok));
        assert!(record.errno().is_none());
        let done = record.completion(9).check().unwrap();
        assert_eq!(done.token, 9);
        assert_eq!(done.result_u32(), 0xe306_9283);
        assert_eq!(done.bytes_written(), 4096);
        assert_eq!(done.fence(), Fence::new(1, 0));
    }

    #[test]
    fn failures_pending_and_unknown_statuses() {
        let failed = JobRecord::from(DrmVaccelResult {
            status: u32::from(Status::AuthFailed),
            error: -libc::EBADMSG,
            queue: DRM_VACCEL_NO_QUEUE,
            ..DrmVaccelResult::default()
        });
        assert_eq!(failed.queue, None);
        assert_eq!(
            failed.errno().and_then(|e| e.raw_os_error()),
            Some(libc::EBADMSG)
        );
        let status = failed.completion(0).check().unwrap_err().status();
        assert_eq!(status, Some(Status::AuthFailed));

        let pending = JobRecord::from(DrmVaccelResult {
            status: DRM_VACCEL_STATUS_PENDING,
            ..DrmVaccelResult::default()
        });
        assert!(pending.is_pending());
        assert_eq!(
            pending.status(),
            Err(UnknownStatus(DRM_VACCEL_STATUS_PENDING))
        );
        assert!(pending.completion(0).check().is_err());
    }

    #[test]
    fn a_submission_encodes_its_buffers_fences_and_queue() {
        let input = vec![1u8; 100];
        let mut output = vec![0u8; 50];
        let out_ptr = output.as_ptr() as u64;
        let submission = Submission::new(Op::Crc32c)
            .params(&Crc32cParams {
                seed: Le32::from(0x1234_5678),
                ..Default::default()
            })
            .input(JobBuffer::object(3, 4096, 100))
            .input(JobBuffer::memory(&input))
            .output(JobBuffer::memory_mut(&mut output))
            .on_queue(1);
        assert!(submission.pins_memory());
        let buffers = submission.raw_buffers();
        let arg = submission.encode(&buffers);
        assert_eq!(arg.op, u32::from(Op::Crc32c));
        assert_eq!((arg.num_in, arg.num_out), (2, 1));
        assert_eq!(
            arg.flags,
            DRM_VACCEL_SUBMIT_OUT_SYNC_FILE | DRM_VACCEL_SUBMIT_QUEUE
        );
        assert_eq!(arg.queue, 1);
        assert_eq!(&arg.params[..4], &0x1234_5678u32.to_le_bytes());
        assert_eq!(arg.buffers, buffers.as_ptr() as u64);
        assert_eq!((arg.in_syncobjs, arg.num_in_syncobjs), (0, 0));
        assert_eq!(arg.out_sync_file, -1);
        assert_eq!(
            buffers[0],
            DrmVaccelBuffer {
                handle: 3,
                pad: 0,
                offset: 4096,
                length: 100,
                user_ptr: 0
            }
        );
        assert_eq!((buffers[1].handle, buffers[1].length), (0, 100));
        assert_eq!(buffers[1].user_ptr, input.as_ptr() as u64);
        assert_eq!((buffers[2].length, buffers[2].user_ptr), (50, out_ptr));

        assert!(submission.check_outputs().is_ok());
        let shared = Submission::new(Op::Copy).output(JobBuffer::memory(&input));
        assert!(matches!(shared.check_outputs(), Err(Error::ReadOnlyOutput)));

        let plain = Submission::new(Op::Copy).input(JobBuffer::object(1, 0, 8));
        assert!(!plain.pins_memory());
        let arg = plain.encode(&plain.raw_buffers());
        assert_eq!(arg.flags, DRM_VACCEL_SUBMIT_OUT_SYNC_FILE);
    }
}
