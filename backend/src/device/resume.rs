// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Resuming after a restart of the tenant's process (§11.3): the device's
//! record, as the front-end's inflight region too (§11.3.3), and the resume
//! from it once the front-end has started again the rings it names. The
//! rings go on at the record's positions and fence numbering continues;
//! completed entries are published again (`complete.rs`, `publish.rs`);
//! the requests taken and not completed are taken again (`take.rs`, then
//! `accept.rs`), or answered Interrupted where they cannot run again
//! (`complete.rs`); then every ring is polled (`take.rs`).

use std::fs::File;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, Level};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_accel_spec::Status;
use virtio_queue::QueueT;

use crate::chain::{walk, ChainStart, Walk};
use crate::command::FenceId;
use crate::device_record::{DeviceRecord, DeviceRecordError};
use crate::ops::Outcome;
use crate::ring_record::{Recovered, MAX_LOST_RUNS};

use super::{
    binding_of, request_queue, DeviceError, DeviceModel, InFlight, Snapshot, CAPABILITIES,
    RESP_SIZE, RESUME_WAIT,
};

/// How the device takes a request (§11.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    /// For the first time.
    No,
    /// Again, after a restart of the tenant's process.
    Again,
    /// Again, after a failure of the process while it ran: alone on the
    /// engine, so that if it fails the process again, the failure counts
    /// against no other request.
    Alone,
}

/// Whether a device starts by waiting to resume from `record` (§11.3): only
/// if it took anything; a record with nothing taken is cleared, whatever a
/// process killed while it cleared it or took its first entry left there.
pub(super) fn resuming(record: &DeviceRecord) -> Option<Instant> {
    if record.in_use() {
        Some(Instant::now())
    } else {
        record.clear();
        None
    }
}

impl DeviceModel {
    /// Whether the device waits to resume from the record of an earlier
    /// process of the tenant: the backend then calls [`DeviceModel::resume`]
    /// now and then until it does not.
    pub fn is_resuming(&self) -> bool {
        self.resuming.is_some()
    }

    /// The device's record as the front-end's inflight region
    /// (`GET_INFLIGHT_FD`, §11.3.3): its size in bytes and its memfd.
    pub fn record_region(&self) -> io::Result<(u64, File)> {
        let fd = self.record.shared_file().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "the device's record is private to this process",
            )
        })?;
        Ok((
            self.record.size_bytes(),
            File::from(fd.try_clone_to_owned()?),
        ))
    }

    /// `SET_INFLIGHT_FD` (§11.3.3): the front-end hands back the region it
    /// keeps, `size` bytes at `offset` of `file`; `started` if a ring of
    /// this connection has ever started. The region the device gave it is
    /// its record already. Another one that is a record of this device's
    /// geometry (sealed at its size, from offset 0, its header this
    /// device's format and geometry: one the front-end kept
    /// from an earlier instance of the daemon) becomes the device's record,
    /// provided nothing ran on this connection yet: the record the device
    /// had is cleared (the front-end's is the later one: it was the record
    /// of the instance the front-end last talked to), and the device waits
    /// to resume from the new one if it took anything. Anything else is
    /// logged and changes nothing.
    pub fn offer_record(&mut self, file: File, size: u64, offset: u64, started: bool) {
        match self.record_offered(file, size, offset, started) {
            Ok(None) => {}
            Ok(Some(record)) => {
                let old = std::mem::replace(&mut self.record, Arc::new(record));
                old.clear();
                self.objects.set_record(Arc::clone(&self.record));
                self.resuming = resuming(&self.record);
                self.vmm_log(
                    Level::Info,
                    format_args!(
                        "the front-end's inflight region is the device's record from now on{}                          (§11.3.3)",
                        if self.resuming.is_some() {
                            ", and the device resumes from it once its rings start"
                        } else {
                            ""
                        }
                    ),
                );
            }
            Err(why) => self.vmm_log(
                Level::Warn,
                format_args!("inflight region ignored: {why} (§11.3.3)"),
            ),
        }
    }

    /// The record in the region of [`DeviceModel::offer_record`]: `None` if it
    /// is the device's record already, an error saying why it cannot be.
    fn record_offered(
        &self,
        file: File,
        size: u64,
        offset: u64,
        started: bool,
    ) -> Result<Option<DeviceRecord>, String> {
        if self.record.is_file(&file).map_err(|e| e.to_string())? {
            return Ok(None);
        }
        if offset != 0 || size != self.record.size_bytes() {
            return Err(format!(
                "{size} bytes at offset {offset}, where the device's record is {} bytes at 0",
                self.record.size_bytes()
            ));
        }
        if started || !self.inflight.is_empty() || !self.objects.is_empty() {
            return Err(String::from(
                "it came after the device started work on this connection",
            ));
        }
        let record = DeviceRecord::attach(&self.config, file.into())
            .map_err(|e| format!("not a record of this device: {e}"))?;
        if !record.is_of_this_device() {
            return Err(String::from(
                "not a record of this device: its header names another format or geometry",
            ));
        }
        Ok(Some(record))
    }

    /// Resumes the device where the tenant's previous process left it
    /// (§11.3), once the front-end has started again every ring the record
    /// names: the rings go on at the record's positions (not those the
    /// front-end sent, which no VMM knows after a crash), fence numbering
    /// continues, completed entries not yet published are published, the
    /// requests taken and not completed run again (or, those that cannot,
    /// are answered Interrupted), and every ring is polled and its driver
    /// notified. A record that cannot be trusted, or a ring that does not
    /// start again within [`RESUME_WAIT`], is logged and the device starts
    /// afresh instead, refusing the rings of the earlier instance until the
    /// driver resets it (§11.2).
    pub fn resume(&mut self, vrings: &[VringRwLock]) {
        let Some(since) = self.resuming else {
            return;
        };
        let Some(mem) = self.mem.clone() else {
            return;
        };
        self.clock = Instant::now();
        self.attach_vrings(vrings);
        let started = |vq: u16| {
            vrings
                .get(usize::from(vq))
                .is_some_and(|vring| vring.get_ref().get_queue().ready())
        };
        let queues = self.config.request_queues + 1;
        // The driver may reset the device while it waits (rings stopped and
        // started again at index 0, §11.2): then it starts afresh.
        if (0..queues).any(|vq| self.history.restarting(vq) && started(vq)) {
            self.judge_restart();
            if self.resuming.is_none() {
                self.poll_all(vrings);
                return;
            }
        }
        let used = |vq: u16| self.record.ring(vq).is_some_and(|ring| ring.taken() != 0);
        if !(0..queues).all(|vq| started(vq) || !used(vq)) && since.elapsed() < RESUME_WAIT {
            return;
        }
        self.resuming = None;
        let recovered = self.recover_rings(vrings, &mem).and_then(|recovered| {
            self.objects.restore(&mem)?;
            Ok(recovered)
        });
        match recovered {
            Ok(recovered) => self.replay(vrings, &mem, recovered),
            Err(e) => {
                self.vmm_log(
                    Level::Error,
                    format_args!(
                        "cannot resume the device after a restart of the tenant's process, \
                         it starts afresh (as after a reset; a reset the last process did not \
                         see yet looks the same): {}",
                        crate::error_chain(&e)
                    ),
                );
                self.objects.clear();
                self.record.clear();
            }
        }
        self.poll_all(vrings);
    }

    /// Takes what every ring holds: kicks that came while the device waited
    /// to resume found nothing taken.
    fn poll_all(&mut self, vrings: &[VringRwLock]) {
        for vq in 0..self.config.request_queues + 1 {
            self.handle_queue(vq, vrings);
        }
    }

    /// Reads the record of every virtqueue with the used index of its ring;
    /// a ring not started must be one the record shows unused.
    fn recover_rings(
        &self,
        vrings: &[VringRwLock],
        mem: &Snapshot,
    ) -> Result<Vec<Option<Recovered>>, DeviceError> {
        self.record.check()?;
        let failed = self.after_failure || self.record.failed();
        let queues = self.config.request_queues + 1;
        let mut recovered = Vec::with_capacity(usize::from(queues));
        for (vq, vring) in (0..queues).zip(vrings) {
            let Some(ring) = self.record.ring(vq) else {
                recovered.push(None);
                continue;
            };
            let state = vring.get_ref();
            let queue = state.get_queue();
            if !queue.ready() {
                if ring.taken() != 0 {
                    return Err(DeviceError::NotStarted(vq));
                }
                recovered.push(None);
                continue;
            }
            let ring_error = |source| DeviceRecordError::Ring { vq, source };
            if ring.taken() != 0 {
                ring.check_binding(binding_of(queue)).map_err(ring_error)?;
            }
            let vring_error = |source| DeviceError::Vring { index: vq, source };
            let used = queue
                .used_idx(&**mem, Ordering::Acquire)
                .map_err(vring_error)?
                .0;
            let avail = queue
                .avail_idx(&**mem, Ordering::Acquire)
                .map_err(vring_error)?
                .0;
            let ring = ring.recover(used, failed).map_err(ring_error)?;
            if request_queue(vq).is_none() && !ring.interrupted.is_empty() {
                // Commands are never started: a record that says so lies.
                return Err(DeviceError::InterruptedCommand);
            }
            // The driver made available at least what the device took: a
            // ring set up anew (a new driver, a new VM) has not.
            let taken = u16::try_from(ring.taken % (1 << 16)).unwrap_or(0);
            if taken.wrapping_sub(used) > avail.wrapping_sub(used) {
                return Err(DeviceError::NotTaken { vq, taken, avail });
            }
            recovered.push(Some(ring));
        }
        Ok(recovered)
    }

    /// Puts the device back where the record says (see [`DeviceModel::resume`]).
    fn replay(
        &mut self,
        vrings: &[VringRwLock],
        mem: &Snapshot,
        recovered: Vec<Option<Recovered>>,
    ) {
        self.capabilities = self.record.capabilities() & CAPABILITIES;
        let mut rings: Vec<(u16, &VringRwLock, Recovered)> = (0u16..)
            .zip(vrings)
            .zip(recovered)
            .filter_map(|((vq, vring), recovered)| Some((vq, vring, recovered?)))
            .collect();
        // Requests first: a command taken again may destroy an object that
        // they use.
        rings.sort_by_key(|&(vq, ..)| request_queue(vq).is_none());
        for (vq, vring, recovered) in &rings {
            debug!(
                "virtqueue {vq}: resumes with {} taken, used index {}; run again {:?}, \
                 interrupted {:?}, published again {:?}",
                recovered.taken,
                recovered.used,
                recovered.rerun,
                recovered.interrupted,
                recovered.republish
            );
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            queue.set_next_avail(u16::try_from(recovered.taken % (1 << 16)).unwrap_or(0));
            queue.set_next_used(recovered.used);
            self.history.resumed(*vq);
            if let Some(queue) = request_queue(*vq) {
                let pending: Vec<u64> = recovered
                    .rerun
                    .iter()
                    .chain(&recovered.interrupted)
                    .map(|&(_, seqno)| seqno)
                    .collect();
                self.fences.restore(queue, recovered.taken, &pending);
            }
        }
        let (mut republished, mut rerun, mut interrupted) = (0, 0, 0);
        for (vq, vring, recovered) in &rings {
            let (table, size) = {
                let state = vring.get_ref();
                (state.get_queue().desc_table(), state.get_queue().size())
            };
            for &(head, len) in &recovered.republish {
                self.push_used(*vq, head, len);
            }
            for &(head, seqno) in &recovered.interrupted {
                self.answer_interrupted(*vq, ChainStart { table, size, head }, mem, seqno);
            }
            for &(head, seqno) in &recovered.rerun {
                let failures = self.record.ring(*vq).map_or(0, |ring| ring.failures(head));
                self.replaying = if failures == 0 {
                    Replay::Again
                } else {
                    Replay::Alone
                };
                self.accept_chain(*vq, ChainStart { table, size, head }, mem, seqno);
            }
            self.replaying = Replay::No;
            republished += recovered.republish.len();
            rerun += recovered.rerun.len();
            interrupted += recovered.interrupted.len();
            // The driver may have missed the notification of entries the
            // last process published.
            self.notify(*vq, vring);
        }
        self.objects.end_resume();
        self.after_failure = false;
        self.record.clear_failed();
        self.vmm_log(
            Level::Info,
            format_args!(
                "resumed the device after a restart of the tenant's process: {} objects, \
                 {republished} completions published again, {rerun} requests run again, \
                 {interrupted} interrupted (§11.3)",
                self.objects.len()
            ),
        );
    }

    /// Answers request `seqno`, at `start`, which stopped part-way in an
    /// earlier process and cannot run again: Interrupted (§11.3).
    fn answer_interrupted(&mut self, vq: u16, start: ChainStart, mem: &Snapshot, seqno: u64) {
        let Some(queue) = request_queue(vq) else {
            return;
        };
        let fence = FenceId { queue, seqno };
        let failures = self
            .record
            .ring(vq)
            .map_or(0, |ring| ring.failures(start.head));
        let why = if failures >= MAX_LOST_RUNS {
            format!("it was running at {failures} failures of the tenant's process")
        } else {
            "it had begun, and its output overlaps what it reads".to_owned()
        };
        self.vmm_log(
            Level::Warn,
            format_args!(
                "request queue {queue}: the request of fence {seqno} cannot run again, \
                 answered Interrupted: {why} (§11.3)"
            ),
        );
        let mut walked = Walk::default();
        walk(start, mem, self.config.limits.max_segments, &mut walked);
        let Some(resp) = walked.writable.take_front(RESP_SIZE) else {
            self.finish_unanswered(vq, start.head, fence);
            return;
        };
        let inflight = InFlight {
            vq,
            head: start.head,
            fence,
            resp,
            direct_output: false,
            no_rerun: true,
            alone: false,
            accepted: self.clock,
            bytes: 0,
            _objects: Box::default(),
            objects_read: 0,
        };
        self.finish(inflight, Outcome::failed(Status::Interrupted));
    }
}
