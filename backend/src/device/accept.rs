// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Accepting a request (§6): the walked chain of a request queue, from
//! `take.rs` (or from the record, `resume.rs`), is decoded (§6.1), checked
//! against the device's operations and the fences it issued (§6.2), its
//! buffer references resolved to host buffers, direct data or objects
//! (§6.3), and admitted by the tenant's quotas (§10.3). It enters the
//! in-flight table as a job, which goes on to `schedule.rs`: ready, or
//! waiting for its dependencies. A request that fails a step is answered
//! at once, with the failure's status (`complete.rs`).

use std::sync::Arc;

use virtio_accel_spec::{Status, VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS};

use crate::chain::Walk;
use crate::command::{decode_request, BufSpec, DecodedRequest, Deps, FenceId};
use crate::engine::{DmaBufRange, Job};
use crate::objects::HostObject;
use crate::ops::Outcome;
use crate::quota::QuotaKind;
use crate::sg::{SgList, Spans};

use super::{lock, DeviceModel, InFlight, Replay, Snapshot, RESP_SIZE};

impl DeviceModel {
    /// Takes one request (§6), under its fence `fence`: every request gets
    /// one, even a failing one.
    pub(super) fn accept_request(
        &mut self,
        vq: u16,
        head: u16,
        walked: &mut Walk,
        mem: &Snapshot,
        fence: FenceId,
    ) {
        let queue = fence.queue;
        let Some(resp) = walked.writable.take_front(RESP_SIZE) else {
            self.guest_error(format_args!(
                "request queue {queue}: no room for a response"
            ));
            self.finish_unanswered(vq, head, fence);
            return;
        };
        // A second run reads the readable part of the chain again (its
        // header and direct input): a response over it forbids one.
        let no_rerun = walked.readable.overlaps(&resp);
        let alone = self.replaying == Replay::Alone;
        self.alone += usize::from(alone);
        let mut inflight = InFlight {
            vq,
            head,
            fence,
            resp,
            direct_output: false,
            no_rerun,
            alone,
            accepted: self.clock,
            bytes: 0,
            _objects: Box::default(),
            objects_read: 0,
        };
        // Kept before decoding takes the header off the list.
        let read_again = walked.readable.spans();
        // Borrowed where it lies: moving the request out would copy it.
        let decoded = self.decode(walked);
        let request = match &decoded {
            Ok(request) => request,
            Err(status) => return self.finish(inflight, Outcome::failed(*status)),
        };
        if let Err(status) = self.check(request, fence) {
            return self.finish(inflight, Outcome::failed(status));
        }
        // The job is made here and filled in place: a job is hundreds of
        // bytes, and each move through a return value would copy it again.
        // Its cookie is set when the request enters the in-flight table.
        let mut job = Job::new(request.operation.clone(), 0);
        if let Err(status) = self.prepare(request, read_again, walked, &mut inflight, &mut job, mem)
        {
            return self.finish(inflight, Outcome::failed(status));
        }
        let shared = inflight._objects.iter().any(|o| o.dma_buf().is_some());
        job.cookie = self.inflight.insert(inflight);
        if !self.dependencies_signalled(&request.deps) {
            self.park(queue, &request.deps, job);
        } else if shared {
            self.wait_for_host_fences(queue, job);
        } else {
            self.make_ready(queue, job);
        }
    }

    /// Applies the tenant's request quotas to a valid request of `bytes`
    /// buffer bytes: over one, it completes with Busy, not run (§10.3).
    /// Requests taken again after a restart were admitted when first taken,
    /// and are not counted twice.
    fn admit(&mut self, bytes: u64) -> Result<(), Status> {
        if self.replaying != Replay::No {
            return Ok(());
        }
        let inflight = self.inflight.len();
        let admitted = lock(&self.admission).admit_request(inflight, bytes, self.clock);
        admitted.map_err(|kind| self.over_quota(kind))
    }

    /// Counts and logs a refusal by quota `kind`.
    pub(super) fn over_quota(&mut self, kind: QuotaKind) -> Status {
        self.stats.quota_refused(kind);
        self.guest_error(format_args!("over the {} quota: Busy", kind.name()));
        Status::Busy
    }

    /// Decodes the request of a walked chain (§6.1).
    fn decode(&mut self, walked: &mut Walk) -> Result<DecodedRequest, Status> {
        if let Some(error) = walked.error {
            self.guest_error(format_args!("request chain: {error}"));
            return Err(error.status());
        }
        decode_request(&mut walked.readable, &self.config.limits).map_err(|e| {
            let status = e.status();
            self.guest_error(format_args!("request: {e}"));
            status
        })
    }

    /// Checks that the device may run `request`, and that its dependencies
    /// are fences it issued before `fence`, its own (§6.2).
    fn check(&mut self, request: &DecodedRequest, fence: FenceId) -> Result<(), Status> {
        let op = request.operation.op();
        if self.ops & op.capability() == 0 {
            return Err(Status::Unsupported);
        }
        if !request.deps.is_empty() && !self.has_capability(VIRTIO_ACCEL_F_FENCES) {
            return Err(Status::Unsupported);
        }
        for dep in &request.deps {
            // A request cannot wait for itself: its own fence counts as not issued (§6.2).
            if *dep == fence || self.fences.is_signalled(*dep).is_err() {
                self.guest_error(format_args!("request depends on unknown fence {dep:?}"));
                return Err(Status::NoFence);
            }
        }
        Ok(())
    }

    /// Resolves the buffers of `request` into `job` (§6.3) and admits it
    /// (§10.3). `walked` holds the chain's buffers past the header, and
    /// `read_again` the runs of memory a second run reads. The objects it
    /// uses go to `inflight`, those it reads first.
    fn prepare(
        &mut self,
        request: &DecodedRequest,
        mut read_again: Spans,
        walked: &mut Walk,
        inflight: &mut InFlight,
        job: &mut Job,
        mem: &Snapshot,
    ) -> Result<(), Status> {
        let mut objects = Vec::new();
        for spec in &request.inputs {
            let input = self.resolve(*spec, &mut walked.readable, mem, &mut objects)?;
            if let BufSpec::Object { offset, len, .. } = *spec {
                read_again.add(&input);
                job.push_input(input);
                attach_dma_buf(job, false, &objects, offset, len);
            } else {
                job.push_input(input);
            }
        }
        // At most three buffers (§8).
        inflight.objects_read = u8::try_from(objects.len()).unwrap_or(u8::MAX);
        for spec in &request.outputs {
            let output = self.resolve(*spec, &mut walked.writable, mem, &mut objects)?;
            job.push_output(output);
            if let BufSpec::Object { offset, len, .. } = *spec {
                attach_dma_buf(job, true, &objects, offset, len);
            }
        }
        inflight.no_rerun |= read_again.overlaps(&inflight.resp)
            || job
                .outputs()
                .iter()
                .any(|output| read_again.overlaps(output));
        let mut bytes = 0u64;
        for spec in request.inputs.iter().chain(&request.outputs) {
            bytes = bytes.saturating_add(spec.len());
        }
        inflight.bytes = bytes;
        inflight.direct_output = request
            .outputs
            .iter()
            .any(|spec| matches!(spec, BufSpec::Direct { .. }));
        // With object buffers this may reallocate (a vector's first growth
        // holds four). Counting them first, to size the vector exactly, cost
        // every request about 40 instructions (accel-budget), more than the
        // reallocation costs the requests that have them.
        inflight._objects = objects.into_boxed_slice();
        self.admit(bytes)
    }

    /// Host buffers of one buffer reference (§6.3); direct data is taken off `direct`.
    // A stage of the instruction budget (`accel-budget`): kept out of line
    // so that callgrind counts it.
    #[inline(never)]
    fn resolve(
        &mut self,
        spec: BufSpec,
        direct: &mut SgList,
        mem: &Snapshot,
        objects: &mut Vec<Arc<HostObject>>,
    ) -> Result<SgList, Status> {
        if spec.len() > self.config.limits.max_buffer_size {
            self.guest_error(format_args!(
                "buffer of {} bytes is over the limit",
                spec.len()
            ));
            return Err(Status::Limit);
        }
        let len = usize::try_from(spec.len()).map_err(|_| Status::Limit)?;
        match spec {
            BufSpec::Direct { .. } => direct.take_front(len).ok_or_else(|| {
                self.guest_error(format_args!(
                    "direct buffer of {len} bytes is not in the chain"
                ));
                Status::Range
            }),
            BufSpec::Object {
                handle,
                offset,
                len,
            } => {
                if !self.has_capability(VIRTIO_ACCEL_F_OBJECTS) {
                    return Err(Status::Unsupported);
                }
                let resolved = self
                    .objects
                    .get(handle)
                    .and_then(|object| Ok((object.resolve(mem, offset, len)?, object)));
                match resolved {
                    Ok((list, object)) => {
                        objects.push(object);
                        Ok(list)
                    }
                    Err(e) => {
                        self.guest_error(format_args!("object buffer: {e}"));
                        Err(e.status())
                    }
                }
            }
        }
    }

    /// Whether every fence of `deps` has signalled (§6.2).
    // A stage of the instruction budget (`accel-budget`): kept out of line
    // so that callgrind counts it.
    #[inline(never)]
    fn dependencies_signalled(&self, deps: &Deps) -> bool {
        deps.iter()
            .all(|dep| self.fences.is_signalled(*dep) != Ok(false))
    }
}

/// Tells the engine that the buffer `job` got last, bytes `offset..offset +
/// len` of the object resolved last (the last of `objects`), is a range of
/// that object's dma-buf, if it has one (§7.1.3).
fn attach_dma_buf(job: &mut Job, output: bool, objects: &[Arc<HostObject>], offset: u64, len: u64) {
    if let Some(buffer) = objects.last().and_then(|object| object.dma_buf()) {
        let range = DmaBufRange {
            buffer: Arc::clone(buffer),
            offset,
            len,
        };
        job.set_dma_buf(output, range);
    }
}
