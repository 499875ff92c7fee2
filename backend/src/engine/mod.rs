//! The hardware behind the device: engines and their hardware queues.
//!
//! An [`Engine`] models an accelerator with shared virtual addressing: its
//! [`HwQueue`]s take [`Job`]s whose buffers are plain host addresses
//! ([`SgList`]), a submission rings the doorbell, and completions are reported
//! through a ring plus an eventfd, like an MSI. Each queue serves one tenant
//! ([`Share`]): the engine arbitrates between tenants by weight, as
//! accelerators do between their queue groups. The default engine,
//! [`software::SoftwareEngine`], runs the operations on host CPU threads, in
//! the order of [`scheduler`].

pub mod scheduler;
pub mod software;

use smallvec::SmallVec;
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::ops::{Operation, Outcome};
use crate::sg::{Keepalive, SgList};

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

/// The buffers of one side of a job (no operation has more than two, §8).
pub type Buffers = SmallVec<[SgList; 2]>;

/// One unit of work, as a hardware descriptor would carry it.
#[derive(Debug)]
pub struct Job {
    /// What to do.
    pub operation: Operation,
    /// Input buffers, in the operation's order (§8).
    pub inputs: Buffers,
    /// Output buffers, in the operation's order (§8).
    pub outputs: Buffers,
    /// Opaque value returned with the completion.
    pub cookie: u64,
    /// Keeps the memory of every segment mapped until the job is dropped, which
    /// the engine does only after it has finished with the buffers.
    pub keepalive: Keepalive,
}

/// The completion of a [`Job`].
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// The job's cookie.
    pub cookie: u64,
    /// What the operation produced.
    pub outcome: Outcome,
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
    /// Queues `jobs` (draining the vector) and rings the doorbell once.
    fn submit(&self, jobs: &mut Vec<Job>) -> Result<(), EngineError>;

    /// Moves every pending completion into `out`.
    fn reap(&self, out: &mut Vec<Completion>);

    /// Takes back the jobs that no worker has started; they will not complete.
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
}

/// Runs one job through `queue` and waits for its completion: the "direct"
/// path of tests, without any virtio in between. The queue must have no other
/// job in flight: a completion of another job is reported as an error.
pub fn run_blocking(queue: &dyn HwQueue, job: Job) -> Result<Completion, EngineError> {
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
