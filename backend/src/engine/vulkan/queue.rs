// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A hardware queue of the Vulkan engine: its COPY and FILL jobs, and its
//! COMPARE, CRC32C and SHA-256 jobs while the engine runs compute shaders,
//! go to the engine's GPU thread, the others to a software queue signalling
//! the same eventfd (see the parent module).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use log::error;
use vmm_sys_util::eventfd::EventFd;

use super::compute::runs_on_compute;
use super::{lock, Shared};
use crate::command::Operation;
use crate::engine::scheduler::FlowId;
use crate::engine::{EngineError, HwCompletion, HwQueue, Job};

/// A job waiting for, or on, the GPU thread.
pub(super) struct Submitted {
    pub(super) job: Job,
    /// Where it completes.
    pub(super) ring: Arc<Ring>,
    /// The ring's epoch when it was submitted.
    pub(super) epoch: u64,
}

#[derive(Default)]
struct Pending {
    done: Vec<HwCompletion>,
    /// The eventfd was written and no reap has followed.
    raised: bool,
}

/// The completion side of the GPU part of a queue.
pub(super) struct Ring {
    pending: Mutex<Pending>,
    /// How many times the queue was cancelled; changed under the run lock.
    epoch: AtomicU64,
    event: EventFd,
}

impl Ring {
    pub(super) fn new(event: EventFd) -> Self {
        Ring {
            pending: Mutex::default(),
            epoch: AtomicU64::new(0),
            event,
        }
    }

    /// Whether the queue was cancelled since epoch `epoch`.
    pub(super) fn cancelled_since(&self, epoch: u64) -> bool {
        self.epoch.load(Ordering::Acquire) != epoch
    }

    /// Adds a completion and raises the eventfd unless a raise waits for
    /// its reap already.
    pub(super) fn post(&self, completion: HwCompletion) {
        let mut pending = lock(&self.pending);
        pending.done.push(completion);
        let raise = !std::mem::replace(&mut pending.raised, true);
        drop(pending);
        if raise {
            if let Err(e) = self.event.write(1) {
                error!("vulkan engine: cannot signal completion: {e}");
            }
        }
    }

    fn reap(&self, out: &mut Vec<HwCompletion>) {
        let mut pending = lock(&self.pending);
        out.append(&mut pending.done);
        pending.raised = false;
    }
}

/// Whether `job` runs on the device: COPY and FILL of the right arity, a
/// COPY only if its input and output share no byte (the software engine's
/// memmove of each piece cannot be matched by a device copy); with
/// `compute`, COMPARE, CRC32C and SHA-256 of the right arity too.
fn runs_on_gpu(job: &Job, compute: bool) -> bool {
    match (&job.operation, job.inputs(), job.outputs()) {
        (Operation::Copy, [src], [dst]) => !src.overlaps(dst),
        (Operation::Fill { .. }, [], [_]) => true,
        _ => compute && runs_on_compute(job),
    }
}

/// A hardware queue of the Vulkan engine.
pub(super) struct VulkanQueue {
    shared: Arc<Shared>,
    ring: Arc<Ring>,
    /// Where the other operations go; signals a clone of `ring.event`.
    software: Box<dyn HwQueue>,
    depth: usize,
    /// Jobs submitted, to either part, and not yet reaped or given back by
    /// a cancel: at most `depth`.
    held: AtomicUsize,
    /// The GPU thread's flow of the queue's tenant.
    flow: FlowId,
    /// COMPARE, CRC32C and SHA-256 go to the GPU thread.
    compute: bool,
}

impl VulkanQueue {
    pub(super) fn new(
        shared: Arc<Shared>,
        ring: Arc<Ring>,
        software: Box<dyn HwQueue>,
        depth: usize,
        flow: FlowId,
        compute: bool,
    ) -> Self {
        VulkanQueue {
            shared,
            ring,
            software,
            depth,
            held: AtomicUsize::new(0),
            flow,
            compute,
        }
    }

    /// Counts `count` more jobs held, unless that makes more than `depth`.
    fn reserve(&self, count: usize) -> Result<(), EngineError> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(count).filter(|&total| total <= self.depth)
            })
            .map(drop)
            .map_err(|_| EngineError::QueueFull)
    }

    fn release(&self, count: usize) {
        self.held.fetch_sub(count, Ordering::AcqRel);
    }

    /// Hands `jobs` to the GPU thread; gives them back if the engine is
    /// shutting down.
    fn submit_to_gpu(&self, jobs: Vec<Job>) -> Result<(), Vec<Job>> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut run = lock(&self.shared.run);
        if run.shutdown {
            return Err(jobs);
        }
        let epoch = self.ring.epoch.load(Ordering::Acquire);
        let ring = &self.ring;
        let submitted = jobs.into_iter().map(|job| Submitted {
            job,
            ring: Arc::clone(ring),
            epoch,
        });
        run.jobs.push_all(self.flow, submitted, Instant::now());
        drop(run);
        self.shared.wake.notify_one();
        Ok(())
    }
}

impl HwQueue for VulkanQueue {
    fn submit(&self, jobs: &mut Vec<Job>) -> Result<(), EngineError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let count = jobs.len();
        self.reserve(count)?;
        let lost = self.shared.gpu.is_lost();
        let on_gpu = |job: &Job| !lost && runs_on_gpu(job, self.compute);
        if !jobs.iter().any(on_gpu) {
            return self
                .software
                .submit(jobs)
                .inspect_err(|_| self.release(count));
        }
        let (gpu, mut forwarded): (Vec<Job>, Vec<Job>) = jobs.drain(..).partition(on_gpu);
        if let Err(error) = self.software.submit(&mut forwarded) {
            // None of them was queued.
            self.release(count);
            jobs.extend(forwarded);
            jobs.extend(gpu);
            return Err(error);
        }
        self.submit_to_gpu(gpu).map_err(|refused| {
            self.release(refused.len());
            jobs.extend(refused);
            EngineError::ShutDown
        })
    }

    fn reap(&self, out: &mut Vec<HwCompletion>) {
        let before = out.len();
        self.ring.reap(out);
        self.software.reap(out);
        self.release(out.len() - before);
    }

    fn coalesce(&self, count: usize) {
        self.software.coalesce(count);
    }

    fn cancel(&self) -> Vec<Job> {
        let mut run = lock(&self.shared.run);
        let mine = run
            .jobs
            .remove_where(|submitted| Arc::ptr_eq(&submitted.ring, &self.ring));
        // Under the run lock: the GPU thread cannot start one of them
        // meanwhile, and no job of this queue is submitted in the old epoch.
        self.ring.epoch.fetch_add(1, Ordering::AcqRel);
        drop(run);
        let mut returned: Vec<Job> = mine.into_iter().map(|submitted| submitted.job).collect();
        returned.extend(self.software.cancel());
        self.release(returned.len());
        returned
    }

    fn completion_event(&self) -> &EventFd {
        &self.ring.event
    }
}
