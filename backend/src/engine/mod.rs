// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The hardware behind the device: engines and their hardware queues.
//!
//! An [`Engine`] models an accelerator with shared virtual addressing: its
//! [`HwQueue`]s take [`Job`]s whose buffers are plain host addresses
//! ([`SgList`]), a submission rings the doorbell, and completions are reported
//! through a ring plus an eventfd, like an MSI; cancelling a queue aborts its
//! jobs, running ones included, between two chunks of their work
//! ([`HwQueue::cancel`]). Each queue serves one tenant
//! ([`Share`]): the engine arbitrates between tenants by weight, as
//! accelerators do between their queue groups. The default engine,
//! [`software::SoftwareEngine`], runs the operations on host CPU threads, in
//! the order of [`scheduler`]; [`vulkan::VulkanEngine`] runs COPY, FILL,
//! COMPARE, CRC32C and SHA-256 on a Vulkan device and the rest on a
//! software engine.

pub mod scheduler;
pub mod software;
pub mod vulkan;

use std::sync::Arc;

use smallvec::SmallVec;
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::command::Operation;
use crate::dmabuf::DmaBuf;
use crate::ops::Outcome;
use crate::sg::SgList;

/// Errors of engines and hardware queues.
#[derive(Debug, Error)]
pub enum EngineError {
    /// More jobs than the queue's depth.
    #[error("hardware queue is full")]
    QueueFull,
    /// A blocking call found other jobs in flight on its queue.
    #[error("the queue has other jobs in flight")]
    Busy,
    /// The engine is shutting down.
    #[error("engine is shut down")]
    ShutDown,
    /// An OS resource could not be made.
    #[error("cannot create {what}")]
    Resource {
        /// What was being made.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The buffers of a job, inline: no operation has more than three (§8).
type Buffers = SmallVec<[SgList; 3]>;

/// Which of a job's buffers: the `index`th input or output, in the
/// operation's order (§8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferIndex {
    /// An input buffer.
    Input(usize),
    /// An output buffer.
    Output(usize),
}

/// The buffers of a job that are ranges of dma-bufs.
type DmaBufRanges = SmallVec<[(BufferIndex, DmaBufRange); 3]>;

/// A buffer of a job that is a range of an object shared as a host dma-buf
/// (spec §7.1.3): the same bytes as the buffer's [`SgList`], as an engine
/// that imports dma-bufs (a GPU's) takes them.
#[derive(Debug, Clone)]
pub struct DmaBufRange {
    /// The object's dma-buf.
    pub buffer: Arc<DmaBuf>,
    /// Where the range begins in it.
    pub offset: u64,
    /// Its length, the buffer's.
    pub len: u64,
}

/// One unit of work, as a hardware descriptor would carry it. Its lists keep
/// the memory of their segments mapped (see [`crate::sg`]); the engine drops
/// the job only after it has finished with the buffers.
///
/// A job is moved from the request that makes it to the engine's queue: it
/// is kept within 256 bytes, which a move copies with a few vector loads and
/// stores.
#[derive(Debug)]
pub struct Job {
    /// What to do.
    pub operation: Operation,
    /// Its input buffers, then its output buffers, each in the operation's
    /// order (§8).
    buffers: Buffers,
    /// How many of `buffers` are inputs.
    inputs: usize,
    /// The buffers that are ranges of dma-bufs, if any (boxed: most jobs
    /// have none, and a job stays small).
    dma_bufs: Option<Box<DmaBufRanges>>,
    /// Opaque value returned with the completion.
    pub cookie: u64,
}

const _: () = assert!(std::mem::size_of::<Job>() <= 256);

impl Job {
    /// A job of `operation`, without buffers yet.
    pub fn new(operation: Operation, cookie: u64) -> Self {
        Job {
            operation,
            buffers: Buffers::new(),
            inputs: 0,
            dma_bufs: None,
            cookie,
        }
    }

    /// Adds an input buffer, after the other inputs.
    pub fn push_input(&mut self, list: SgList) {
        if self.inputs == self.buffers.len() {
            self.buffers.push(list);
        } else {
            self.buffers.insert(self.inputs, list);
        }
        self.inputs += 1;
    }

    /// Adds an output buffer, after the other outputs.
    pub fn push_output(&mut self, list: SgList) {
        self.buffers.push(list);
    }

    /// Says that the last input (`output` false) or output buffer pushed is
    /// `range` of a dma-buf.
    pub fn set_dma_buf(&mut self, output: bool, range: DmaBufRange) {
        let index = if output {
            BufferIndex::Output(self.buffers.len().saturating_sub(self.inputs + 1))
        } else {
            BufferIndex::Input(self.inputs.saturating_sub(1))
        };
        self.dma_bufs
            .get_or_insert_with(Box::default)
            .push((index, range));
    }

    /// The dma-buf range that buffer `index` is, if it is one.
    pub fn dma_buf(&self, index: BufferIndex) -> Option<&DmaBufRange> {
        self.dma_bufs
            .as_ref()?
            .iter()
            .find_map(|(at, range)| (*at == index).then_some(range))
    }

    /// The input buffers, in the operation's order (§8).
    pub fn inputs(&self) -> &[SgList] {
        self.buffers.get(..self.inputs).unwrap_or_default()
    }

    /// The output buffers, in the operation's order (§8).
    pub fn outputs(&self) -> &[SgList] {
        self.buffers.get(self.inputs..).unwrap_or_default()
    }
}

/// The completion of a [`Job`].
#[derive(Debug, Clone, Copy)]
pub struct HwCompletion {
    /// The job's cookie.
    pub cookie: u64,
    /// What the operation produced.
    pub outcome: Outcome,
    /// How many of the job's buffers the engine took through their
    /// objects' dma-bufs ([`Job::dma_buf`]), imported into its device.
    pub dma_buf_imports: u8,
}

/// The tenant a hardware queue works for: queues of one tenant share its
/// part of the engine, and busy tenants get engine time in proportion to
/// their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Tenant index, unique within the daemon.
    pub tenant: u32,
    /// Weight (at least 1); the first queue of a tenant sets it.
    pub weight: u32,
}

impl Default for Share {
    /// Tenant 0 with weight 1.
    fn default() -> Self {
        Share {
            tenant: 0,
            weight: 1,
        }
    }
}

/// A submission/completion queue pair of an engine.
pub trait HwQueue: Send + Sync {
    /// Queues `jobs` (draining the vector) and rings the doorbell once. On
    /// an error, the jobs it did not queue stay in `jobs`.
    fn submit(&self, jobs: &mut Vec<Job>) -> Result<(), EngineError>;

    /// Moves every pending completion into `out`.
    fn reap(&self, out: &mut Vec<HwCompletion>);

    /// The consumer will not act on fewer than `count` completions (the
    /// driver asked to hear of no fewer, §6.4): the queue may hold its
    /// interrupt until `count` are pending or it has nothing left to run,
    /// as an interrupt coalescing threshold does. 0 or 1 restore the
    /// engine's own moderation. It holds until the next call, and applies
    /// to completions already pending. The default ignores it.
    fn coalesce(&self, count: usize) {
        let _ = count;
    }

    /// If at least `at_least` (and at least one) of the jobs submitted to
    /// the queue wait to start, arms a single raise of the completion event
    /// for when none waits any more (the last one starts, or is cancelled),
    /// even with no completion pending, and returns `true`: a consumer that
    /// stops looking for new work while the queue has a backlog hears when
    /// to feed it again, as from a submission queue's low-water interrupt.
    /// Otherwise it arms nothing and returns `false`, as the default does
    /// for an engine that cannot tell.
    fn watch_backlog(&self, at_least: usize) -> bool {
        let _ = at_least;
        false
    }

    /// Cancels every job submitted before the call: returns those that have
    /// not started (they will not complete), and makes those that have stop
    /// as soon as they can, between two chunks of their operation (§11).
    /// A stopped job completes, through [`HwQueue::reap`] like any other,
    /// with [`crate::ops::CANCELLED`] and its outputs partly written; one
    /// that finished first completes as usual. Jobs submitted after the call
    /// are not affected.
    ///
    /// The contract an engine keeps (a hardware one by aborting its queue
    /// and waiting for the abort's acknowledgement): a job touches its
    /// buffers only until its completion is posted. So once `cancel` has
    /// returned and the completion of every other job submitted before it
    /// has been reaped, no job of this queue touches guest memory any more,
    /// and a job's completion follows its cancellation within the time of
    /// one chunk.
    fn cancel(&self) -> Vec<Job>;

    /// Readable while completions may be pending; reading it acknowledges the
    /// interrupt. Consume it before calling [`HwQueue::reap`].
    fn completion_event(&self) -> &EventFd;
}

/// An accelerator.
pub trait Engine: Send + Sync {
    /// Short name for logs.
    fn name(&self) -> &'static str;

    /// Capability mask of the operations it runs (§5 `ops`).
    fn capabilities(&self) -> u32;

    /// Opens a hardware queue of `share`'s tenant able to hold `depth` jobs in flight.
    fn create_queue(&self, depth: usize, share: Share) -> Result<Box<dyn HwQueue>, EngineError>;

    /// What its driver calls once started that the tenant's sandbox must
    /// then allow ([`crate::sandbox::SandboxConfig::driver_calls`]). The
    /// default, for engines on host threads, is nothing.
    fn driver_calls(&self) -> DriverCalls {
        DriverCalls::default()
    }
}

/// The calls an engine's driver makes while it runs that a tenant's sandbox
/// allows only for it ([`Engine::driver_calls`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverCalls {
    /// Every `ioctl`: a hardware GPU's driver makes them on its render node.
    pub device_ioctls: bool,
    /// `lseek`: drivers that import dma-bufs (Mesa's, libdrm's) seek to a
    /// buffer's end to learn its size.
    pub lseek: bool,
}

/// Runs one job through `queue` and waits for its completion: the "direct"
/// path of tests, without any virtio in between. The queue must have no other
/// job in flight: a completion of another job is reported as an error.
pub fn run_blocking(queue: &dyn HwQueue, job: Job) -> Result<HwCompletion, EngineError> {
    let cookie = job.cookie;
    let mut batch = vec![job];
    queue.submit(&mut batch)?;
    let mut done = Vec::with_capacity(1);
    while done.is_empty() {
        queue
            .completion_event()
            .read()
            .map_err(|source| EngineError::Resource {
                what: "completion read",
                source,
            })?;
        queue.reap(&mut done);
    }
    match done.as_slice() {
        [completion] if completion.cookie == cookie => Ok(*completion),
        _ => Err(EngineError::Busy),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sg::OwnedBuffers;

    /// Inputs and outputs keep their own order, whichever comes first.
    #[test]
    fn inputs_and_outputs_keep_their_order() {
        let owned = OwnedBuffers::new(vec![vec![0; 1], vec![0; 2], vec![0; 3]]);
        let list = |index| owned.sg(index, 16).unwrap();
        let mut job = Job::new(Operation::Compare, 7);
        job.push_output(list(2));
        job.push_input(list(0));
        job.push_input(list(1));
        let lens = |lists: &[SgList]| lists.iter().map(SgList::len).collect::<Vec<_>>();
        assert_eq!(lens(job.inputs()), [1, 2]);
        assert_eq!(lens(job.outputs()), [3]);
    }

    /// A dma-buf range names the buffer last pushed, wherever inputs pushed
    /// later move it in the list.
    #[test]
    fn dma_buf_ranges_name_their_buffers() {
        let owned = OwnedBuffers::new(vec![vec![0; 1], vec![0; 2], vec![0; 3]]);
        let list = |index| owned.sg(index, 16).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let buffer = Arc::new(DmaBuf::stand_in(file.into()));
        let range = |offset| DmaBufRange {
            buffer: Arc::clone(&buffer),
            offset,
            len: 1,
        };
        let mut job = Job::new(Operation::Compare, 7);
        assert!(job.dma_buf(BufferIndex::Input(0)).is_none());
        job.push_output(list(2));
        job.set_dma_buf(true, range(30));
        job.push_input(list(0));
        job.push_input(list(1));
        job.set_dma_buf(false, range(10));
        let offset = |index| job.dma_buf(index).map(|range| range.offset);
        assert_eq!(offset(BufferIndex::Output(0)), Some(30));
        assert_eq!(offset(BufferIndex::Input(1)), Some(10));
        assert_eq!(offset(BufferIndex::Input(0)), None);
    }
}
