// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Scheduling jobs onto the engine: a job whose dependencies have not all
//! signalled waits for them (§6.2), then for the fences other drivers hold
//! on its objects' dma-bufs (§7.1.3); the others are ready, and ready jobs
//! go to their hardware queue, each recorded as started (§11.3). A request
//! that runs alone after a failure of the tenant's process (§11.3) waits
//! for the engine to empty, and holds back every other job while it runs.
//!
//! Jobs come from `accept.rs`, and from `complete.rs` when the last fence
//! they waited for signals; the engine's completions of them go on to
//! `complete.rs`. A flush, after each pass over a ring or the completions,
//! submits what is ready and publishes used entries (`publish.rs`).

use log::Level;
use vhost_user_backend::VringRwLock;
use virtio_accel_spec::Status;

use crate::command::Deps;
use crate::dmabuf::{Access, SyncError, SyncWaits};
use crate::engine::Job;
use crate::ops::Outcome;
use crate::ring_record::NO_RERUN;

use super::{DeviceModel, InFlight, Waiter, Waiting};

impl DeviceModel {
    /// Parks `job`, of hardware queue `queue`, until those of `deps` that
    /// have not signalled do (§6.2).
    pub(super) fn park(&mut self, queue: u16, deps: &Deps, job: Job) {
        let id = self.next_wait_id();
        let mut remaining = 0;
        for dep in deps {
            if self.fences.is_signalled(*dep) == Ok(false) {
                self.fences.wait(*dep, id);
                remaining += 1;
            }
        }
        if remaining == 0 {
            // Nothing to wait for after all.
            return self.wait_for_host_fences(queue, job);
        }
        self.waiting.insert(
            id,
            Waiting {
                remaining,
                waiter: Waiter::Request {
                    queue,
                    job: Box::new(job),
                },
            },
        );
    }

    /// `job`, whose dependencies have signalled, waits for the fences of
    /// other drivers on the dma-bufs of the objects its request uses (§7.1.3):
    /// those of writers for an object it reads, all for one it writes. It
    /// is ready at once if none is pending now; otherwise it waits, in
    /// [`SyncWaits`](crate::dmabuf::SyncWaits), until each buffer has none
    /// pending. A wait that cannot be armed (which the kernel does not
    /// refuse) is logged and not waited for.
    pub(super) fn wait_for_host_fences(&mut self, queue: u16, job: Job) {
        let id = self.next_wait_id();
        let armed = match self.inflight.get(job.cookie) {
            Some(inflight) => arm_host_fence_waits(inflight, &mut self.sync_waits, id),
            None => Ok(0),
        };
        let armed = armed.unwrap_or_else(|e| {
            self.log.vmm(
                Level::Warn,
                format_args!("a request runs without waiting for a dma-buf's fences: {e}"),
            );
            0
        });
        if armed == 0 {
            return self.make_ready(queue, job);
        }
        self.stats.implicit_sync_waited();
        self.waiting.insert(
            id,
            Waiting {
                remaining: armed,
                waiter: Waiter::HostFences {
                    queue,
                    job: Box::new(job),
                },
            },
        );
    }

    /// Releases the requests whose waits for other drivers' fences have
    /// ended (§7.1.3).
    pub(super) fn release_synced(&mut self) {
        for id in self.sync_waits.ended() {
            self.release(id);
        }
    }

    /// Queues a job whose dependencies have signalled for its hardware queue.
    /// (`queue` always names one; a job that somehow does not is failed.)
    /// Inlined, so that the job is moved into the list once, not through a
    /// call.
    #[inline(always)]
    pub(super) fn make_ready(&mut self, queue: u16, job: Job) {
        match self.ready.get_mut(usize::from(queue)) {
            Some(ready) => ready.push(job),
            None => {
                if let Some(inflight) = self.inflight.remove(job.cookie) {
                    self.finish(inflight, Outcome::failed(Status::DeviceError));
                }
            }
        }
    }

    /// Submits ready jobs and publishes used entries, notifying the guest once
    /// per touched queue, then tells the engine how many completions each
    /// driver waits for.
    pub(super) fn flush(&mut self, vrings: &[VringRwLock]) {
        self.submit_ready();
        self.publish_used(vrings);
        self.coalesce_completions(vrings);
        self.stats.set_inflight(self.inflight.len());
    }

    /// Sends every ready job to its hardware queue, but a request that runs
    /// alone (§11.3) waits until the engine has nothing else, goes by
    /// itself, and holds back every other job until it completes. A refused
    /// batch fails its requests, which may release more jobs: repeat until
    /// none is left.
    // A stage of the instruction budget (`accel-budget`): kept out of line
    // so that callgrind counts it.
    #[inline(never)]
    pub(super) fn submit_ready(&mut self) {
        while !self.alone_on_engine {
            let (queue, jobs, alone) = match self.next_alone() {
                Some(_) if self.on_engine > 0 => return,
                Some((queue, index)) => (queue, vec![self.ready[queue].remove(index)], true),
                None => match self.ready.iter().position(|jobs| !jobs.is_empty()) {
                    Some(queue) => (queue, std::mem::take(&mut self.ready[queue]), false),
                    None => return,
                },
            };
            self.submit(queue, jobs, alone);
        }
    }

    /// Where the first ready job of a request that runs alone is: hardware
    /// queue and place in its ready jobs.
    fn next_alone(&self) -> Option<(usize, usize)> {
        if self.alone == 0 {
            return None;
        }
        let runs_alone = |job: &Job| self.inflight.get(job.cookie).is_some_and(|f| f.alone);
        self.ready
            .iter()
            .enumerate()
            .find_map(|(queue, jobs)| Some((queue, jobs.iter().position(runs_alone)?)))
    }

    /// Hands `jobs` to hardware queue `queue`, `alone` if they are the one
    /// request that runs alone; fails them if it refuses them.
    fn submit(&mut self, queue: usize, mut jobs: Vec<Job>, alone: bool) {
        for job in &jobs {
            self.record_start(job.cookie);
        }
        let count = jobs.len();
        let submitted = match self.hw_queues.get(queue) {
            Some(hw_queue) => hw_queue.submit(&mut jobs).map_err(|e| {
                self.log
                    .guest(Level::Warn, format_args!("hardware queue {queue}: {e}"));
            }),
            None => Err(()),
        };
        // A refused batch stays in `jobs`, but for what the engine took.
        self.on_engine += count.saturating_sub(jobs.len());
        if submitted.is_ok() {
            self.alone_on_engine = alone;
        } else {
            for job in jobs.drain(..) {
                if let Some(inflight) = self.inflight.remove(job.cookie) {
                    self.finish(inflight, Outcome::failed(Status::DeviceError));
                }
            }
        }
        self.reuse_ready_list(queue, jobs);
    }

    /// Gives the emptied list of ready jobs back to hardware queue `queue`,
    /// unless jobs became ready meanwhile: its capacity then serves the
    /// next pass, which pushes jobs without growing a new list.
    fn reuse_ready_list(&mut self, queue: usize, jobs: Vec<Job>) {
        if let Some(ready) = self.ready.get_mut(queue) {
            if ready.is_empty() && jobs.is_empty() && jobs.capacity() > ready.capacity() {
                *ready = jobs;
            }
        }
    }

    /// Records that the request of `cookie` is handed to the engine, which
    /// may write its output from now on.
    fn record_start(&self, cookie: u64) {
        let Some(inflight) = self.inflight.get(cookie) else {
            return;
        };
        if let Some(ring) = self.record.ring(inflight.vq) {
            ring.start(inflight.head, if inflight.no_rerun { NO_RERUN } else { 0 });
        }
        crate::tenant_process::poison_point(inflight.bytes);
    }
}

/// Arms a wait, under wait id `id`, for each dma-buf of the objects of
/// `inflight` that another driver's fences keep from it now (the first
/// `objects_read` objects it reads, the others it writes); returns how many.
fn arm_host_fence_waits(
    inflight: &InFlight,
    waits: &mut SyncWaits,
    id: u64,
) -> Result<usize, SyncError> {
    let mut armed = 0;
    for (index, object) in inflight._objects.iter().enumerate() {
        let Some(buffer) = object.dma_buf() else {
            continue;
        };
        let access = if index < usize::from(inflight.objects_read) {
            Access::Read
        } else {
            Access::Write
        };
        if !buffer.is_idle(access) {
            waits.arm(buffer, access, id)?;
            armed += 1;
        }
    }
    Ok(armed)
}
