// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The device model of one connection: chains in, jobs out, completions back.
//!
//! A request taken from a request queue is walked ([`crate::chain`]), decoded
//! ([`crate::command`]), given a fence, resolved to host buffers (direct data
//! or objects) and turned into a [`Job`]. Jobs whose dependencies have all
//! signalled go to the queue's hardware queue; the others wait on their fences.
//! Completions come back through the hardware queue's eventfd, become responses
//! and used-ring entries, and signal fences, which may release waiting requests
//! and FENCE_WAIT commands. Used entries are batched and the guest notified
//! once per batch, subject to `VIRTIO_RING_F_EVENT_IDX`.
//!
//! Every chain taken, started, completed and published is written in the
//! tenant's [`DeviceRecord`] as it happens ([`crate::ring_record`]), so that
//! the next process of the tenant resumes the device where this one left it
//! should this one be killed (§11.3: [`DeviceModel::resume`]).
//!
//! Guest memory is the table the device last validated ([`crate::memory`]),
//! never the table the connection shares with the vrings: every access to a
//! ring or a buffer goes through that snapshot, so a table the device
//! refused is never touched, not even in the moment between the connection
//! installing it and the device refusing it.
//!
//! The request path, one stage a file:
//!
//! - `take.rs`: chains taken from the available rings, on a kick or a poll,
//!   each recorded as taken and, on a request queue, given its fence (§4,
//!   §6.2, §6.5, §11.2).
//! - `accept.rs`: a request chain made a job: decoded, checked, its buffers
//!   resolved and its quotas applied (§6.1 to §6.3, §10.3).
//! - `schedule.rs`: jobs waiting for their fences (and for other drivers'
//!   fences on objects' dma-bufs), ready, and handed to the engine,
//!   recorded as started (§6.2, §7.1.3, §11.3).
//! - `complete.rs`: completions reaped from the engine made responses and
//!   used entries, and fences signalled (§6.2, §6.4).
//! - `publish.rs`: used entries added to the used rings, recorded as
//!   published, and the driver notified (§6.4, §11.3).
//! - `control.rs`: the control queue's commands (§7).
//! - `resume.rs`: the device's record and the resume from it after a
//!   restart of the tenant's process (§11.3, §11.3.3).
//!
//! This file holds what the stages share: the device's state and errors,
//! and its lifecycle: features, memory table, reset, stop and ring stop
//! (§3.2, §11, §11.2).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::{error, Level};
use thiserror::Error;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_accel_spec::{Resp, VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::QueueT;
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::command::FenceId;
use crate::config::TenantConfig;
use crate::device_record::{DeviceRecord, DeviceRecordError};
use crate::dmabuf::{DmaBufMaker, SyncError, SyncWaits};
use crate::engine::{Engine, EngineError, HwCompletion, HwQueue, Job, Share};
use crate::fence::Fences;
use crate::log_limit::TenantLog;
use crate::memory::{check_table, MemoryError};
use crate::objects::{HostObject, ObjectError, ObjectTable};
use crate::quota::Admission;
use crate::ring_history::{Restart, RingHistory};
use crate::ring_record::Binding;
use crate::sg::SgList;
use crate::slab::Slab;
use crate::stats::TenantStats;

use self::resume::{resuming, Replay};

mod accept;
mod complete;
mod control;
mod publish;
mod resume;
mod schedule;
mod take;
#[cfg(test)]
mod tests;

/// Errors that stop processing of a queue (as opposed to a bad request, which
/// only fails that request).
#[derive(Debug, Error)]
pub enum DeviceError {
    /// A hardware queue could not be opened.
    #[error("cannot open hardware queue")]
    Engine(#[from] EngineError),
    /// The set of implicit-sync waits could not be made.
    #[error("cannot wait for dma-buf fences")]
    Sync(#[from] SyncError),
    /// The used ring could not be updated or the guest notified.
    #[error("cannot update virtqueue {index}")]
    Vring {
        /// Virtqueue index.
        index: u16,
        /// Cause.
        #[source]
        source: virtio_queue::Error,
    },
    /// The guest could not be notified.
    #[error("cannot notify virtqueue {index}")]
    Notify {
        /// Virtqueue index.
        index: u16,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The record an earlier process left cannot be trusted (§11.3).
    #[error("the device's record cannot be trusted")]
    Record(#[from] DeviceRecordError),
    /// The objects of the record cannot be restored (§11.3).
    #[error("the device's objects cannot be restored")]
    Objects(#[from] ObjectError),
    /// A ring holds fewer available entries than the record says the
    /// device took from it: not the ring the record is of (§11.3).
    #[error("virtqueue {vq}: the device took up to index {taken}, the driver made available up to {avail}")]
    NotTaken {
        /// The virtqueue.
        vq: u16,
        /// The record's next available index.
        taken: u16,
        /// The guest's available index.
        avail: u16,
    },
    /// The record has a control command stopped part-way, which no device
    /// writes (§11.3).
    #[error("the record holds a control command that cannot run again")]
    InterruptedCommand,
    /// A ring the record names was not started again in time (§11.3).
    #[error("virtqueue {0} was not started again within {RESUME_WAIT:?}")]
    NotStarted(u16),
}

/// A memory table the device validated.
type Snapshot = Arc<GuestMemoryMmap>;

/// Bookkeeping of a request between submission and response.
struct InFlight {
    vq: u16,
    head: u16,
    fence: FenceId,
    resp: SgList,
    direct_output: bool,
    /// Whether its output overlaps its input or its response: once started
    /// it cannot run again ([`NO_RERUN`](crate::ring_record::NO_RERUN)).
    no_rerun: bool,
    /// Whether it runs alone on the engine: it was running when a process
    /// of the tenant failed by itself (§11.3).
    alone: bool,
    /// When the chain was taken.
    accepted: Instant,
    /// Sum of the lengths of its buffer references (§6.3).
    bytes: u64,
    /// Fence attachments: the objects stay alive until this request completes.
    /// A boxed slice, not a vector, keeps the record within 128 bytes, which
    /// the compiler moves inline instead of calling `memcpy`.
    _objects: Box<[Arc<HostObject>]>,
    /// How many of `_objects` it reads (the first ones); it writes the
    /// others (§7.1.3).
    objects_read: u8,
}

// A move of a larger record is a call to `memcpy` (see `InFlight::_objects`).
const _: () = assert!(std::mem::size_of::<InFlight>() <= 128);

/// Something waiting for fences to signal.
enum Waiter {
    /// A request whose job starts when its dependencies have signalled
    /// (and then other drivers' fences on its objects, §7.1.3).
    Request { queue: u16, job: Box<Job> },
    /// A request whose job starts when other drivers' fences on its
    /// objects' dma-bufs have signalled (§7.1.3).
    HostFences { queue: u16, job: Box<Job> },
    /// A FENCE_WAIT command.
    Control { head: u16, resp: SgList },
}

struct Waiting {
    remaining: usize,
    waiter: Waiter,
}

/// What a poll of the request rings came to ([`DeviceModel::poll_requests`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// Requests were taken.
    Took,
    /// No ring held a request.
    Nothing,
    /// A ring's available entries could not be taken (§6.5, §11): it is
    /// left alone until its available index moves, and the poll ends.
    Stuck,
    /// The device has work on the engine or ready for it, and does not poll.
    EngineBusy,
    /// No poll: polling is off, out of budget, or the front-end waits for
    /// the device.
    Off,
}

/// A used-ring entry to publish.
struct Used {
    vq: u16,
    head: u16,
    len: u32,
}

/// The state of the accelerator device for one connection.
pub struct DeviceModel {
    config: TenantConfig,
    ops: u32,
    features: u64,
    /// Capabilities the driver enabled with CAPABILITIES (§7.5), beside
    /// those it negotiated as feature bits (§3).
    capabilities: u64,
    /// Whether the last SET_FEATURES lacked VIRTIO_F_VERSION_1 (§3.2).
    legacy_driver: bool,
    hw_queues: Vec<Box<dyn HwQueue>>,
    objects: ObjectTable,
    fences: Fences<u64>,
    /// Requests between decoding and response, under their jobs' cookies.
    inflight: Slab<InFlight>,
    /// What waits for fences (requests and FENCE_WAIT commands), by wait id.
    waiting: HashMap<u64, Waiting>,
    /// Requests waiting for other drivers' fences on objects' dma-bufs
    /// (§7.1.3), by wait id in `waiting`.
    sync_waits: SyncWaits,
    next_wait_id: u64,
    /// The memory table, once one is valid; `None` before the first table
    /// and after a refused one (nothing touches guest memory then).
    mem: Option<Snapshot>,
    ready: Vec<Vec<Job>>,
    used: Vec<Used>,
    /// One virtqueue's share of `used`, while it is published.
    batch: Vec<(u16, u32)>,
    /// The heads of the chains one pass over a ring takes, kept between
    /// passes so that a pass allocates nothing.
    heads: Vec<u16>,
    /// The completions of one reap, kept between reaps likewise.
    completions: Vec<HwCompletion>,
    /// What the device took, ran, completed and published, per virtqueue,
    /// kept where the next process of the tenant finds it (§11.3).
    record: Arc<DeviceRecord>,
    /// Since when the device waits to resume from the record of an earlier
    /// process of the tenant ([`DeviceModel::resume`]); it takes nothing until
    /// then.
    resuming: Option<Instant>,
    /// Whether the tenant's previous process failed by itself, as the
    /// supervisor marked its record: the requests it was running count a
    /// lost run when the device resumes (§11.3). Read before anything can
    /// clear the mark, and kept here, since the device may resume from
    /// another record (the front-end's inflight region, §11.3.3).
    after_failure: bool,
    /// Whether the device is taking again the requests of the record, and
    /// how they run ([`DeviceModel::resume`]).
    replaying: Replay,
    /// Jobs handed to the engine whose completions are not reaped yet.
    on_engine: usize,
    /// A request ring and its available index whose entries could not be
    /// taken: polls pass it by until the index moves.
    stuck: Option<(u16, u16)>,
    /// Per request queue: its ring's kicks stay off while the hardware
    /// queue has a backlog, and the queue's next event takes its chains
    /// (`take.rs`, [`DeviceModel::release_kicks`]).
    kicks_held: Vec<bool>,
    /// Chains taken from the request rings (wrapping).
    requests_taken: u64,
    /// Requests in flight that run alone on the engine (§11.3).
    alone: usize,
    /// Whether the engine runs one of them, and nothing else.
    alone_on_engine: bool,
    /// When the current pass over a ring or over the engine's completions
    /// began: the time of every request it takes or finishes (one clock
    /// read per pass, not several per request).
    clock: Instant,
    /// Whether the rings' histories began with this instance (§11).
    history: RingHistory,
    /// The tenant's log of what its guest and VMM do, rate-limited.
    log: Arc<TenantLog>,
    /// [`QUIESCE_TIMEOUT`], shorter in tests of what happens past it.
    quiesce_timeout: Duration,
    vrings: Vec<VringRwLock>,
    /// The tenant's quotas; they outlive device resets and connections, so
    /// that neither refills the rate buckets (§10.3.2).
    admission: Arc<Mutex<Admission>>,
    stats: Arc<TenantStats>,
}

/// What the devices of one tenant share, one connection after the other.
#[derive(Debug, Clone)]
pub struct TenantState {
    /// Index of the tenant in the daemon, its share of the engine.
    pub index: u32,
    /// Its counters.
    pub stats: Arc<TenantStats>,
    /// Its quotas and their rate buckets.
    pub admission: Arc<Mutex<Admission>>,
    /// Its log of what its guest and VMM do, limited across connections.
    pub log: Arc<TenantLog>,
    /// The record of its device, which outlives its processes where the
    /// supervisor holds it.
    pub record: Arc<DeviceRecord>,
    /// What makes its objects host dma-bufs (§7.1.3), opened before the
    /// process is sandboxed.
    pub dma_bufs: Arc<DmaBufMaker>,
}

impl TenantState {
    /// Fresh counters and full buckets for tenant number `index`.
    pub fn new(index: u32, config: &TenantConfig) -> Self {
        TenantState {
            index,
            stats: Arc::new(TenantStats::new(config.name.clone())),
            admission: Arc::new(Mutex::new(Admission::new(config.quota, Instant::now()))),
            log: Arc::new(TenantLog::new(&config.name)),
            record: Arc::new(DeviceRecord::private(config)),
            dma_bufs: Arc::new(DmaBufMaker::open()),
        }
    }
}

/// The request queue that virtqueue `vq` is, if it is one (§4).
fn request_queue(vq: u16) -> Option<u16> {
    vq.checked_sub(virtio_accel_spec::FIRST_REQUEST_QUEUE)
}

/// Where `queue`'s ring is in the guest's memory, and its size: what its
/// record is bound to.
fn binding_of(queue: &impl QueueT) -> Binding {
    Binding {
        desc: queue.desc_table(),
        avail: queue.avail_ring(),
        used: queue.used_ring(),
        size: queue.size(),
    }
}

/// Locks a mutex, recovering the data if a thread panicked while holding it
/// (the admission state stays consistent across a panic).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long a reset, a ring stop or a memory table change waits for one of
/// the requests in flight to complete before it ends the process
/// ([`DeviceModel::stop`]): the engine made no progress in that time. A reset
/// cancels the running jobs first, which stop within a chunk's time
/// (milliseconds); a stop lets every accepted request finish, up to
/// `max_inflight` jobs of up to `max_buffer_size` bytes per queue, one after
/// the other where they run alone (§11.3).
pub const QUIESCE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a device with a record to resume waits for the front-end to
/// start again every ring the record names before it gives up and resets
/// (§11.3). VMMs start every ring within milliseconds of reconnecting.
pub const RESUME_WAIT: Duration = Duration::from_secs(10);

const RESP_SIZE: usize = std::mem::size_of::<Resp>();

/// The capabilities of §3 the device has: every one defined.
pub const CAPABILITIES: u64 = (1 << VIRTIO_ACCEL_F_OBJECTS) | (1 << VIRTIO_ACCEL_F_FENCES);

impl DeviceModel {
    /// The device of tenant `config`, with one hardware queue of `engine`
    /// per request queue in the tenant's share of the engine; it counts what
    /// it does in the tenant's counters and answers to its quotas.
    pub fn new(
        config: TenantConfig,
        engine: &dyn Engine,
        tenant: TenantState,
    ) -> Result<Self, DeviceError> {
        let share = Share {
            tenant: tenant.index,
            weight: config.weight,
        };
        let hw_queues = (0..config.request_queues)
            .map(|_| engine.create_queue(usize::from(config.queue_size), share))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DeviceModel {
            ops: engine.capabilities(),
            features: 0,
            capabilities: 0,
            legacy_driver: false,
            hw_queues,
            objects: ObjectTable::new(
                config.limits,
                Arc::clone(&tenant.stats),
                Arc::clone(&tenant.record),
                tenant.dma_bufs,
                Arc::clone(&tenant.log),
            ),
            sync_waits: SyncWaits::new()?,
            fences: Fences::new(config.request_queues),
            inflight: Slab::default(),
            waiting: HashMap::new(),
            next_wait_id: 1,
            mem: None,
            ready: (0..config.request_queues).map(|_| Vec::new()).collect(),
            used: Vec::new(),
            batch: Vec::new(),
            heads: Vec::new(),
            completions: Vec::new(),
            after_failure: tenant.record.failed(),
            resuming: resuming(&tenant.record),
            replaying: Replay::No,
            on_engine: 0,
            stuck: None,
            kicks_held: vec![false; usize::from(config.request_queues)],
            requests_taken: 0,
            alone: 0,
            alone_on_engine: false,
            clock: Instant::now(),
            record: tenant.record,
            history: RingHistory::default(),
            log: tenant.log,
            quiesce_timeout: QUIESCE_TIMEOUT,
            vrings: Vec::new(),
            admission: tenant.admission,
            stats: tenant.stats,
            config,
        })
    }

    /// Readable when a request's wait for other drivers' fences may have
    /// ended ([`DeviceModel::handle_sync_waits`]).
    pub fn sync_waits_fd(&self) -> std::os::fd::RawFd {
        self.sync_waits.as_raw_fd()
    }

    /// The hardware queues, to register their completion eventfds.
    pub fn hw_queues(&self) -> &[Box<dyn HwQueue>] {
        &self.hw_queues
    }

    /// The configuration space bytes (§5).
    pub fn config_space(&self) -> Vec<u8> {
        self.config.device_config(self.ops).as_slice().to_vec()
    }

    /// Records the features the driver accepted (`SET_FEATURES`). Without
    /// VIRTIO_F_VERSION_1 the front-end let through a driver the device
    /// cannot serve (it has no legacy interface): the device takes no chain
    /// until features with it arrive or the device is reset (§3.2).
    pub fn set_features(&mut self, features: u64) {
        self.features = features;
        self.legacy_driver = features & (1 << VIRTIO_F_VERSION_1) == 0;
        if self.legacy_driver {
            self.vmm_log(
                Level::Error,
                format_args!(
                    "SET_FEATURES {features:#x} without VIRTIO_F_VERSION_1: the device has no \
                     legacy interface and takes no request until the features include it (§3.2)"
                ),
            );
        }
    }

    /// Installs the memory table that `shared` now holds (SET_MEM_TABLE).
    /// Work accepted under the old table is run to completion and published
    /// in its rings first, so that once the VMM has its reply nothing
    /// touches the old mappings any more (§11).
    ///
    /// A table with a region that its file does not cover is refused: the
    /// VMM gets an error reply, and until a valid table arrives the device
    /// touches no guest memory (it takes nothing from its rings and holds
    /// back used entries). The connection ends after any error reply
    /// ([`crate::vhost_user::connection`]), so in practice the next valid table comes
    /// with the VMM's next connection.
    pub fn set_memory(
        &mut self,
        shared: &GuestMemoryAtomic<GuestMemoryMmap>,
    ) -> Result<(), MemoryError> {
        self.stop();
        let table = shared.memory().into_inner();
        match check_table(&table) {
            Ok(check) => {
                if !check.unsealed.is_empty() && self.log.first_unsealed_table() {
                    for region in check.unsealed {
                        self.vmm_log(
                            Level::Warn,
                            format_args!(
                                "{region}: its file is not sealed against shrinking \
                                 (F_SEAL_SHRINK); if the VMM truncates it, this tenant's \
                                 process dies of SIGBUS (said once per process)"
                            ),
                        );
                    }
                }
                self.mem = Some(table);
                // The wait to resume runs from the VMM's setting up.
                if let Some(since) = &mut self.resuming {
                    *since = Instant::now();
                }
                Ok(())
            }
            Err(e) => {
                self.vmm_log(
                    Level::Error,
                    format_args!(
                        "memory table refused, no guest memory is accessed until a valid \
                         one arrives: {e}"
                    ),
                );
                self.mem = None;
                Err(e)
            }
        }
    }

    /// Device reset and disconnection (§11): requests that have not started
    /// (waiting on fences, ready, or queued on the hardware) are dropped, the
    /// running ones are cancelled and waited for (they stop between two
    /// chunks, [`HwQueue::cancel`]), then objects, fences and all pending
    /// state are forgotten. The driver sees none of these requests again
    /// (§11). Nothing touches guest memory after this returns: it does not
    /// return otherwise (see [`DeviceModel::stop`] on the time limit).
    pub fn reset(&mut self) {
        for (_, waiting) in self.waiting.drain() {
            if let Waiter::Request { job, .. } | Waiter::HostFences { job, .. } = waiting.waiter {
                self.inflight.remove(job.cookie);
            }
        }
        let not_started = self.hw_queues.iter().flat_map(|queue| queue.cancel());
        for job in self
            .ready
            .iter_mut()
            .flat_map(std::mem::take)
            .chain(not_started)
        {
            self.inflight.remove(job.cookie);
        }
        self.run_until_idle(|device, queue| {
            for completion in device.reap(queue) {
                device.inflight.remove(completion.cookie);
            }
        });
        self.objects.clear();
        self.fences = Fences::new(self.config.request_queues);
        self.inflight.clear();
        self.waiting.clear();
        self.sync_waits.clear();
        self.ready.iter_mut().for_each(Vec::clear);
        self.on_engine = 0;
        self.stuck = None;
        self.kicks_held.fill(false);
        self.alone = 0;
        self.alone_on_engine = false;
        self.used.clear();
        self.record.clear();
        self.resuming = None;
        self.history.clear();
        self.features = 0;
        self.capabilities = 0;
        self.legacy_driver = false;
        self.stats.set_inflight(0);
    }

    /// Quiesces the device for a ring stop (`GET_VRING_BASE`) or a memory
    /// table change: every accepted request runs to completion and is
    /// published in its used ring before this returns, so the ring state
    /// handed back to the VMM is final (§11).
    ///
    /// Neither this nor [`DeviceModel::reset`] returns while a job may still touch
    /// guest memory: if no request completes for [`QUIESCE_TIMEOUT`] (an
    /// engine that ignores cancellation, or hangs), the tenant's process
    /// ends with an error naming the tenant and what was still in flight,
    /// and its supervisor starts a new one.
    pub fn stop(&mut self) {
        let vrings = self.vrings.clone();
        self.run_until_idle(|device, queue| {
            device.clock = Instant::now();
            device.finish_reaped(queue);
            device.release_synced();
            device.submit_ready();
        });
        self.publish_used(&vrings);
    }

    /// Calls `step` on each hardware queue until no request is in flight;
    /// ends the process once [`QUIESCE_TIMEOUT`] passes without a request
    /// completing ([`DeviceModel::give_up`]).
    fn run_until_idle(&mut self, mut step: impl FnMut(&mut Self, u16)) {
        let started = Instant::now();
        let (mut progress, mut left) = (started, self.inflight.len());
        let queues = self.config.request_queues;
        while !self.inflight.is_empty() {
            if self.inflight.len() < left {
                (progress, left) = (Instant::now(), self.inflight.len());
            } else if progress.elapsed() > self.quiesce_timeout {
                self.give_up(started);
            }
            for queue in 0..queues {
                step(self, queue);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Ends the process: requests are still in flight, and the engine may
    /// still be writing guest memory that the VMM is about to reuse or
    /// unmap once it has its reply, so neither returning nor carrying on
    /// is safe (§11.2). In a tenant's process this costs only that tenant:
    /// the supervisor logs the abort and starts a new process behind the
    /// same socket, to which the VMM reconnects (§12.1). (Where tenants are
    /// served in-process, as in tests, the whole process ends.)
    fn give_up(&self, started: Instant) -> ! {
        let waiting = self
            .waiting
            .values()
            .filter(|waiting| {
                matches!(
                    waiting.waiter,
                    Waiter::Request { .. } | Waiter::HostFences { .. }
                )
            })
            .count();
        let ready: usize = self.ready.iter().map(Vec::len).sum();
        error!(
            "tenant {}: {} requests still in flight {:.1?} after the device began to stop, \
             none completed in the last {:.1?} ({} on the engine, {ready} ready to submit, \
             {waiting} waiting for fences); ending the tenant's process so that none of \
             them can touch guest memory after the stop (§11)",
            self.config.name,
            self.inflight.len(),
            started.elapsed(),
            self.quiesce_timeout,
            self.on_engine,
        );
        std::process::abort();
    }

    /// The connection is over (§11): the device drains and forgets its
    /// state, unless it still waits to resume (§11.3): then it holds nothing
    /// yet, and the record stays for the VMM's next connection.
    pub fn disconnect(&mut self) {
        if self.resuming.is_none() {
            self.reset();
        }
    }

    /// A ring stop (`GET_VRING_BASE`): quiesces the device (see
    /// [`DeviceModel::stop`]) and records where the ring stopped, so that its
    /// restart can show a reset (§11.2); a ring whose history began before
    /// this instance is judged again when it restarts (§11).
    pub fn stop_ring(&mut self, vq: u16) {
        self.stop();
        // Without vrings (no event on this connection yet) the device has
        // taken nothing, and a stop at 0 is no evidence of anything.
        let next_avail = self
            .vrings
            .get(usize::from(vq))
            .map_or(0, |vring| vring.get_ref().get_queue().next_avail());
        self.history.stopped(vq, next_avail);
    }

    /// The first look at a ring that stopped and started again: a driver's
    /// reset that the front-end did not pass on as `RESET_DEVICE` shows as
    /// every ring stopped and started again at index 0 (§11.2). The device
    /// then resets as for `RESET_DEVICE`, keeping the features and memory
    /// table the front-end has just sent for the new driver.
    fn judge_restart(&mut self) {
        let started: Vec<Option<u16>> = self
            .vrings
            .iter()
            .map(|vring| {
                let state = vring.get_ref();
                let queue = state.get_queue();
                queue.ready().then(|| queue.next_avail())
            })
            .collect();
        let at = |vq: u16| started.get(usize::from(vq)).copied().flatten();
        match self.history.judge_restart(at) {
            Restart::Resumed => {}
            Restart::Reset => {
                self.vmm_log(
                    Level::Info,
                    format_args!(
                        "every ring stopped and started again at index 0: the driver reset \
                         the device (§11.2)"
                    ),
                );
                let features = self.features;
                self.reset();
                self.features = features;
            }
            Restart::Unclear { vq, stopped_at } => self.vmm_log(
                Level::Warn,
                format_args!(
                    "virtqueue {vq} started again at index 0 after it stopped at \
                     {stopped_at} while other rings ran on or resumed: not taken as a device reset \
                     (§11.2)"
                ),
            ),
        }
    }

    /// Remembers the vrings of the connection, for [`DeviceModel::stop`].
    pub fn attach_vrings(&mut self, vrings: &[VringRwLock]) {
        if self.vrings.len() != vrings.len() {
            self.vrings = vrings.to_vec();
        }
    }

    /// Whether capability `bit` is enabled: negotiated as a feature bit or
    /// enabled with CAPABILITIES (§3).
    fn has_capability(&self, bit: u32) -> bool {
        (self.features | self.capabilities) & (1 << bit) != 0
    }

    fn guest_error(&self, args: fmt::Arguments<'_>) {
        self.log
            .guest(Level::Warn, format_args!("guest error: {args}"));
    }

    /// Logs a message about something the VMM did.
    fn vmm_log(&self, level: Level, args: fmt::Arguments<'_>) {
        self.log.vmm(level, args);
    }

    fn next_wait_id(&mut self) -> u64 {
        let id = self.next_wait_id;
        self.next_wait_id += 1;
        id
    }
}
