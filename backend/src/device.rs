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
//! should this one be killed (§11.3: [`Device::resume`]).
//!
//! Guest memory is the table the device last validated ([`crate::memory`]),
//! never the table the connection shares with the vrings: every access to a
//! ring or a buffer goes through that snapshot, so a table the device
//! refused is never touched, not even in the moment between the connection
//! installing it and the device refusing it.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::{debug, error, Level};
use thiserror::Error;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_accel_spec::{
    CtrlResp, Fence, Resp, Status, VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::chain::{walk, ChainStart, Walk};
use crate::command::{decode_control, decode_request, BufSpec, Control, Deps, FenceId, Request};
use crate::config::TenantConfig;
use crate::device_record::{DeviceRecord, DeviceRecordError};
use crate::engine::{Completion, Engine, EngineError, HwQueue, Job, Share};
use crate::fence::Fences;
use crate::memory::{check_table, MemoryError};
use crate::objects::{Object, ObjectError, ObjectTable};
use crate::ops::Outcome;
use crate::quota::{Admission, QuotaKind};
use crate::ratelimit::TenantLog;
use crate::ring_record::{Binding, Recovered, Take, MAX_LOST_RUNS, NO_RERUN};
use crate::sg::{SgList, Spans};
use crate::stats::TenantStats;
use crate::tracking::{Restart, RingHistory, Slab};
use crate::used;

/// Errors that stop processing of a queue (as opposed to a bad request, which
/// only fails that request).
#[derive(Debug, Error)]
pub enum DeviceError {
    /// A hardware queue could not be opened.
    #[error("cannot open hardware queue")]
    Engine(#[from] EngineError),
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
    /// it cannot run again ([`NO_RERUN`]).
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
    _objects: Box<[Arc<Object>]>,
}

// A move of a larger record is a call to `memcpy` (see `InFlight::_objects`).
const _: () = assert!(std::mem::size_of::<InFlight>() <= 128);

/// Something waiting for fences to signal.
enum Waiter {
    /// A request whose job starts when its dependencies have signalled.
    Request { queue: u16, job: Box<Job> },
    /// A FENCE_WAIT command.
    Control { head: u16, resp: SgList },
}

struct Waiting {
    remaining: usize,
    waiter: Waiter,
}

/// What a control command came to.
enum ControlOutcome {
    /// Answer now with this value.
    Done(u64),
    /// OBJECT_DESTROY: answer Ok, then drop the object (its record says
    /// which command destroyed it until the answer is recorded, §11.3).
    Destroyed(Arc<Object>),
    /// A FENCE_WAIT on these unsignalled fences.
    Wait(Vec<FenceId>),
}

/// How the device takes a request (§11.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// For the first time.
    No,
    /// Again, after a restart of the tenant's process.
    Again,
    /// Again, after a failure of the process while it ran: alone on the
    /// engine, so that if it fails the process again, the failure counts
    /// against no other request.
    Alone,
}

/// What a poll of the request rings came to ([`Device::poll_requests`]).
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
pub struct Device {
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
    completions: Vec<Completion>,
    /// What the device took, ran, completed and published, per virtqueue,
    /// kept where the next process of the tenant finds it (§11.3).
    record: Arc<DeviceRecord>,
    /// Since when the device waits to resume from the record of an earlier
    /// process of the tenant ([`Device::resume`]); it takes nothing until
    /// then.
    resuming: Option<Instant>,
    /// Whether the tenant's previous process failed by itself, as the
    /// supervisor marked its record: the requests it was running count a
    /// lost run when the device resumes (§11.3). Read before anything can
    /// clear the mark, and kept here, since the device may resume from
    /// another record (the front-end's inflight region, §11.3.3).
    after_failure: bool,
    /// Whether the device is taking again the requests of the record, and
    /// how they run ([`Device::resume`]).
    replaying: Replay,
    /// Jobs handed to the engine whose completions are not reaped yet.
    on_engine: usize,
    /// A request ring and its available index whose entries could not be
    /// taken: polls pass it by until the index moves.
    stuck: Option<(u16, u16)>,
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
        }
    }
}

/// Whether a device starts by waiting to resume from `record` (§11.3): only
/// if it took anything; a record with nothing taken is cleared, whatever a
/// process killed while it cleared it or took its first entry left there.
fn resuming(record: &DeviceRecord) -> Option<Instant> {
    if record.in_use() {
        Some(Instant::now())
    } else {
        record.clear();
        None
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
/// ([`Device::stop`]): the engine made no progress in that time. A reset
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
const CTRL_RESP_SIZE: usize = std::mem::size_of::<CtrlResp>();
/// The capabilities of §3 the device has: every one defined.
pub const CAPABILITIES: u64 = (1 << VIRTIO_ACCEL_F_OBJECTS) | (1 << VIRTIO_ACCEL_F_FENCES);
/// Used length of an answered control command (§7).
const CTRL_USED_LEN: u32 = 16;
const _: () = assert!(CTRL_USED_LEN as usize == CTRL_RESP_SIZE);

impl Device {
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
        Ok(Device {
            ops: engine.capabilities(),
            features: 0,
            capabilities: 0,
            legacy_driver: false,
            hw_queues,
            objects: ObjectTable::new(
                config.limits,
                Arc::clone(&tenant.stats),
                Arc::clone(&tenant.record),
            ),
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
    /// ([`crate::connection`]), so in practice the next valid table comes
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
    /// return otherwise (see [`Device::stop`] on the time limit).
    pub fn reset(&mut self) {
        for (_, waiting) in self.waiting.drain() {
            if let Waiter::Request { job, .. } = waiting.waiter {
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
        self.ready.iter_mut().for_each(Vec::clear);
        self.on_engine = 0;
        self.stuck = None;
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
    /// Neither this nor [`Device::reset`] returns while a job may still touch
    /// guest memory: if no request completes for [`QUIESCE_TIMEOUT`] (an
    /// engine that ignores cancellation, or hangs), the tenant's process
    /// ends with an error naming the tenant and what was still in flight,
    /// and its supervisor starts a new one.
    pub fn stop(&mut self) {
        let vrings = self.vrings.clone();
        self.run_until_idle(|device, queue| {
            device.clock = Instant::now();
            device.finish_reaped(queue);
            device.submit_ready();
        });
        self.publish_used(&vrings);
    }

    /// Calls `step` on each hardware queue until no request is in flight;
    /// ends the process once [`QUIESCE_TIMEOUT`] passes without a request
    /// completing ([`Device::give_up`]).
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
            .filter(|waiting| matches!(waiting.waiter, Waiter::Request { .. }))
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
    /// [`Device::stop`]) and records where the ring stopped, so that its
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

    /// Whether the device waits to resume from the record of an earlier
    /// process of the tenant: the backend then calls [`Device::resume`]
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

    /// The record in the region of [`Device::offer_record`]: `None` if it
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

    /// Puts the device back where the record says (see [`Device::resume`]).
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
        };
        self.finish(inflight, Outcome::failed(Status::Interrupted));
    }

    /// Remembers the vrings of the connection, for [`Device::stop`].
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

    /// Processes the available chains of virtqueue `vq` (a kick), then
    /// flushes. A ring the device cannot update (the guest placed it outside
    /// its memory) is logged, rate-limited; the other queues carry on.
    pub fn handle_queue(&mut self, vq: u16, vrings: &[VringRwLock]) {
        self.clock = Instant::now();
        let polled = self.poll_ring(vq, vrings);
        // Publish what was taken even if the ring then failed.
        self.flush(vrings);
        if let Err(e) = polled {
            self.guest_error(format_args!("{}", crate::error_chain(&e)));
        }
    }

    /// Takes the chains of a request ring that holds some, as a kick of it
    /// would, if the device may poll for them now; says what came of it.
    /// The device polls only while nothing of its own is on the engine or
    /// ready for it: the engine may share its CPU, and a poll would take
    /// that CPU from the engine's work.
    pub fn poll_requests(&mut self, vrings: &[VringRwLock]) -> Polled {
        if self.on_engine > 0 || self.ready.iter().any(|jobs| !jobs.is_empty()) {
            return Polled::EngineBusy;
        }
        let Some((vq, avail)) = self.ring_with_requests(vrings) else {
            return Polled::Nothing;
        };
        let before = self.requests_taken;
        self.handle_queue(vq, vrings);
        if self.requests_taken == before {
            self.stuck = Some((vq, avail));
            Polled::Stuck
        } else {
            self.stats.polled();
            Polled::Took
        }
    }

    /// Chains taken from the request rings since the device was made, by
    /// kicks and polls alike (wrapping).
    pub fn requests_taken(&self) -> u64 {
        self.requests_taken
    }

    /// A started and enabled request ring (a kick of a disabled one is
    /// ignored too) whose available index is ahead of the device's, with
    /// that index, if the device takes requests at all.
    fn ring_with_requests(&self, vrings: &[VringRwLock]) -> Option<(u16, u16)> {
        if self.legacy_driver || self.resuming.is_some() || self.history.has_foreign() {
            return None;
        }
        let mem = self.mem.as_deref()?;
        let first = virtio_accel_spec::FIRST_REQUEST_QUEUE;
        (first..)
            .zip(vrings.iter().skip(usize::from(first)))
            .find_map(|(vq, vring)| {
                let state = vring.get_ref();
                let queue = state.get_queue();
                // As a kick would find it: started (a kick descriptor, kept
                // only while the ring is served) and enabled.
                if state.get_kick().is_none() || !state.is_enabled() || !queue.ready() {
                    return None;
                }
                let avail = queue.avail_idx(mem, Ordering::Acquire).ok()?.0;
                let ahead = avail != queue.next_avail() && self.stuck != Some((vq, avail));
                ahead.then_some((vq, avail))
            })
    }

    /// Takes every available chain of virtqueue `vq`, with kicks disabled
    /// meanwhile; then re-enables them and checks once more for chains added
    /// in between (the usual race-free pattern, 2.7.10 of the virtio spec).
    /// A ring the device cannot read (a bad `idx`, a queue not ready) is left
    /// alone until the next kick instead of being polled in a loop.
    fn poll_ring(&mut self, vq: u16, vrings: &[VringRwLock]) -> Result<(), DeviceError> {
        let Some(vring) = vrings.get(usize::from(vq)) else {
            return Ok(());
        };
        let Some(mem) = self.mem.clone() else {
            return Ok(());
        };
        let vring_error = |source| DeviceError::Vring { index: vq, source };
        loop {
            // A ring the front-end has not started (again), or has stopped
            // meanwhile, holds nothing to take, its index tells nothing yet,
            // and it is not the device's to write, not even its notification
            // fields: the driver may have freed it (§11.2).
            if !vring.get_ref().get_queue().ready() {
                return Ok(());
            }
            vring
                .get_mut()
                .get_queue_mut()
                .disable_notification(&*mem)
                .map_err(vring_error)?;
            let taken = self.drain_queue(vq, vring, &mem);
            let more = vring
                .get_mut()
                .get_queue_mut()
                .enable_notification(&*mem)
                .map_err(vring_error)?;
            // Go round again only if this pass made progress: an entry the
            // device cannot read must not turn into a busy loop.
            if taken == 0 || !more {
                return Ok(());
            }
        }
    }

    /// Takes the available chains of virtqueue `vq` from `mem`; returns how
    /// many (0 if the ring cannot be read). [`Device::poll_ring`] calls it
    /// on a started ring only.
    fn drain_queue(&mut self, vq: u16, vring: &VringRwLock, mem: &Snapshot) -> usize {
        if self.legacy_driver || self.resuming.is_some() {
            return 0;
        }
        if self.history.restarting(vq) {
            self.judge_restart();
        }
        let (table, size, binding) = {
            let mut state = vring.get_mut();
            let size = state.get_queue().size();
            let table = state.get_queue().desc_table();
            let binding = binding_of(state.get_queue());
            if !self.ring_began_here(vq, state.get_queue().next_avail()) {
                return 0;
            }
            self.heads.clear();
            // Chains made of a plain reference to the memory: no reference
            // count to change for each.
            match state.get_queue_mut().iter(&**mem) {
                Ok(iter) => self.heads.extend(iter.map(|chain| chain.head_index())),
                Err(e) => {
                    drop(state);
                    self.guest_error(format_args!("virtqueue {vq}: {e}"));
                    return 0;
                }
            }
            (table, size, binding)
        };
        let taken = self.heads.len();
        if request_queue(vq).is_some() {
            let count = u64::try_from(taken).unwrap_or(u64::MAX);
            self.requests_taken = self.requests_taken.wrapping_add(count);
        }
        let record = Arc::clone(&self.record);
        let Some(ring) = record.ring(vq) else {
            return 0;
        };
        ring.bind(binding);
        let heads = std::mem::take(&mut self.heads);
        for &head in &heads {
            // A head past the ring's own size (which may be below the
            // queue's) names no chain (§6.5).
            let take = if head < size {
                ring.take(head)
            } else {
                Take::Skipped(ring.skip())
            };
            match take {
                Take::Held(seqno) => {
                    // Fences are issued in step with the record: both count
                    // the entries taken since the reset (§6.2).
                    if let Some(queue) = request_queue(vq) {
                        self.fences.issue(queue, seqno);
                    }
                    self.accept_chain(vq, ChainStart { table, size, head }, mem, seqno);
                }
                Take::Skipped(seqno) => {
                    // §6.5: no chain, or one already in flight: it cannot be
                    // answered without corrupting the request that owns it.
                    self.guest_error(format_args!(
                        "virtqueue {vq}: head {head} is out of range or in flight"
                    ));
                    self.consume_unanswerable(vq, seqno);
                }
            }
        }
        self.heads = heads;
        taken
    }

    /// Walks the chain at `start` and takes it as a control command, or as
    /// request `seqno` of its queue, whose fence is issued.
    fn accept_chain(&mut self, vq: u16, start: ChainStart, mem: &Snapshot, seqno: u64) {
        // The lists hold `mem`: whatever is made of them keeps it mapped.
        let mut walked = Walk::default();
        walk(start, mem, self.config.limits.max_segments, &mut walked);
        match request_queue(vq) {
            None => self.accept_control(start.head, &mut walked, mem, seqno),
            Some(queue) => {
                let fence = FenceId { queue, seqno };
                self.accept_request(vq, start.head, &mut walked, mem, fence);
            }
        }
    }

    /// Whether the device may take chains from `vq`, whose next index is
    /// `next_avail`: not while any ring's history began with an earlier
    /// device instance, whose requests this one can neither answer safely
    /// (some were completed already) nor run (their objects and fences are
    /// gone). They stay in the ring, unanswered, until the driver resets the
    /// device (§11).
    fn ring_began_here(&mut self, vq: u16, next_avail: u16) -> bool {
        if self.history.observe(vq, next_avail) == Some(false) {
            self.vmm_log(
                Level::Error,
                format_args!(
                    "virtqueue {vq} resumes at index {next_avail}, used by an earlier device \
                     instance (back-end restart or migration without device state): no \
                     request is taken until the driver resets the device"
                ),
            );
        }
        !self.history.has_foreign()
    }

    /// An available entry that names no chain the device may answer, taken
    /// as number `seqno`: on a request queue it still gets a fence, which
    /// signals at once (§6.5).
    fn consume_unanswerable(&mut self, vq: u16, seqno: u64) {
        if let Some(fence) = request_queue(vq).and_then(|queue| self.fences.issue(queue, seqno)) {
            self.signal(fence);
        }
    }

    /// `head` is complete, its output and response written, with used
    /// length `len`: recorded so, and its used entry queued; the head stays
    /// in flight until the entry is published.
    fn push_used(&mut self, vq: u16, head: u16, len: u32) {
        if let Some(ring) = self.record.ring(vq) {
            ring.complete(head, len);
        }
        self.used.push(Used { vq, head, len });
    }

    /// Takes one request (§6), under its fence `fence`: every request gets
    /// one, even a failing one.
    fn accept_request(
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
        job.cookie = self.inflight.insert(inflight);
        if self.dependencies_signalled(&request.deps) {
            self.make_ready(queue, job);
        } else {
            self.park(queue, &request.deps, job);
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
    fn over_quota(&mut self, kind: QuotaKind) -> Status {
        self.stats.quota_refused(kind);
        self.guest_error(format_args!("over the {} quota: Busy", kind.name()));
        Status::Busy
    }

    /// Decodes the request of a walked chain (§6.1).
    fn decode(&mut self, walked: &mut Walk) -> Result<Request, Status> {
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
    fn check(&mut self, request: &Request, fence: FenceId) -> Result<(), Status> {
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
    /// `read_again` the runs of memory a second run reads.
    fn prepare(
        &mut self,
        request: &Request,
        mut read_again: Spans,
        walked: &mut Walk,
        inflight: &mut InFlight,
        job: &mut Job,
        mem: &Snapshot,
    ) -> Result<(), Status> {
        let mut objects = Vec::new();
        for spec in &request.inputs {
            let input = self.resolve(*spec, &mut walked.readable, mem, &mut objects)?;
            if matches!(spec, BufSpec::Object { .. }) {
                read_again.add(&input);
            }
            job.push_input(input);
        }
        for spec in &request.outputs {
            let output = self.resolve(*spec, &mut walked.writable, mem, &mut objects)?;
            job.push_output(output);
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
        objects: &mut Vec<Arc<Object>>,
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

    /// Parks `job`, of hardware queue `queue`, until those of `deps` that
    /// have not signalled do (§6.2).
    fn park(&mut self, queue: u16, deps: &Deps, job: Job) {
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
            return self.make_ready(queue, job);
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

    /// Queues a job whose dependencies have signalled for its hardware queue.
    /// (`queue` always names one; a job that somehow does not is failed.)
    /// Inlined, so that the job is moved into the list once, not through a
    /// call.
    #[inline(always)]
    fn make_ready(&mut self, queue: u16, job: Job) {
        match self.ready.get_mut(usize::from(queue)) {
            Some(ready) => ready.push(job),
            None => {
                if let Some(inflight) = self.inflight.remove(job.cookie) {
                    self.finish(inflight, Outcome::failed(Status::DeviceError));
                }
            }
        }
    }

    /// Completes a request: response, used entry, fence signal.
    fn finish(&mut self, inflight: InFlight, outcome: Outcome) {
        self.alone = self.alone.saturating_sub(usize::from(inflight.alone));
        if inflight.no_rerun {
            // Its response may overwrite what a second run would read.
            if let Some(ring) = self.record.ring(inflight.vq) {
                ring.start(inflight.head, NO_RERUN);
            }
        }
        let resp = Resp {
            status: u32::from(outcome.status).into(),
            reserved: 0.into(),
            fence: Fence::new(inflight.fence.queue, inflight.fence.seqno),
            bytes_written: outcome.bytes_written.into(),
            result: outcome.result,
        };
        inflight.resp.write_obj(resp);
        let output = if inflight.direct_output && outcome.status.is_ok() {
            outcome.bytes_written
        } else {
            0
        };
        let len = u32::try_from(output.saturating_add(RESP_SIZE as u64)).unwrap_or(u32::MAX);
        self.stats.request_done(
            outcome.status,
            inflight.bytes,
            self.clock.saturating_duration_since(inflight.accepted),
        );
        self.push_used(inflight.vq, inflight.head, len);
        self.signal(inflight.fence);
    }

    /// Completes a request that has no room for a response.
    fn finish_unanswered(&mut self, vq: u16, head: u16, fence: FenceId) {
        self.stats.request_done(Status::Invalid, 0, Duration::ZERO);
        self.push_used(vq, head, 0);
        self.signal(fence);
    }

    /// Signals a fence and releases what waited on it.
    fn signal(&mut self, fence: FenceId) {
        for id in self.fences.signal(fence) {
            let Some(waiting) = self.waiting.get_mut(&id) else {
                continue;
            };
            waiting.remaining -= 1;
            if waiting.remaining > 0 {
                continue;
            }
            let Some(done) = self.waiting.remove(&id) else {
                continue;
            };
            match done.waiter {
                Waiter::Request { queue, job } => self.make_ready(queue, *job),
                Waiter::Control { head, resp } => self.answer_control(head, &resp, Status::Ok, 0),
            }
        }
    }

    /// Takes the completions of hardware queue `queue`, then flushes.
    pub fn handle_completions(&mut self, queue: u16, vrings: &[VringRwLock]) {
        let Some(hw_queue) = self.hw_queues.get(usize::from(queue)) else {
            return;
        };
        self.clock = Instant::now();
        // Acknowledge the interrupt first, so a completion posted after the
        // reap below raises it again.
        if let Err(e) = hw_queue.completion_event().read() {
            debug!("hardware queue {queue}: completion event: {e}");
        }
        self.finish_reaped(queue);
        self.flush(vrings);
    }

    /// Reaps the pending completions of hardware queue `queue` into the
    /// device's own buffer (no allocation once it has grown) and completes
    /// their requests.
    fn finish_reaped(&mut self, queue: u16) {
        let mut completions = std::mem::take(&mut self.completions);
        if let Some(hw_queue) = self.hw_queues.get(usize::from(queue)) {
            hw_queue.reap(&mut completions);
        }
        self.finish_all(&mut completions);
        self.completions = completions;
    }

    /// The pending completions of hardware queue `queue`.
    fn reap(&self, queue: u16) -> Vec<Completion> {
        let mut completions = Vec::new();
        if let Some(hw_queue) = self.hw_queues.get(usize::from(queue)) {
            hw_queue.reap(&mut completions);
        }
        completions
    }

    /// Completes the requests of `completions`, reaped from the engine,
    /// leaving it empty.
    // A stage of the instruction budget (`accel-budget`): kept out of line
    // so that callgrind counts it.
    #[inline(never)]
    fn finish_all(&mut self, completions: &mut Vec<Completion>) {
        debug_assert!(
            completions.len() <= self.on_engine,
            "more completions than jobs"
        );
        self.on_engine = self.on_engine.saturating_sub(completions.len());
        self.alone_on_engine &= self.on_engine > 0;
        for Completion { cookie, outcome } in completions.drain(..) {
            if let Some(inflight) = self.inflight.remove(cookie) {
                self.finish(inflight, outcome);
            }
        }
    }

    /// Submits ready jobs and publishes used entries, notifying the guest once
    /// per touched queue.
    fn flush(&mut self, vrings: &[VringRwLock]) {
        self.submit_ready();
        self.publish_used(vrings);
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
    fn submit_ready(&mut self) {
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

    /// Adds the queued used entries to their rings (§6.4) and notifies each
    /// touched ring once, if the driver asked for it. A ring the guest broke
    /// (used ring outside its memory) costs only its own entries. Without a
    /// valid memory table the entries wait for one.
    // A stage of the instruction budget (`accel-budget`): kept out of line
    // so that callgrind counts it.
    #[inline(never)]
    fn publish_used(&mut self, vrings: &[VringRwLock]) {
        let Some(mem) = self.mem.clone() else {
            return;
        };
        if self.used.is_empty() {
            return;
        }
        // Both lists keep their allocations from one flush to the next.
        let mut used = std::mem::take(&mut self.used);
        let mut batch = std::mem::take(&mut self.batch);
        for (index, vring) in (0u16..).zip(vrings) {
            batch.clear();
            batch.extend(
                used.iter()
                    .filter(|entry| entry.vq == index)
                    .map(|entry| (entry.head, entry.len)),
            );
            if batch.is_empty() {
                continue;
            }
            if self.publish_batch(index, vring, &mem, &batch) {
                self.notify(index, vring);
            }
        }
        used.clear();
        self.used = used;
        self.batch = batch;
    }

    /// Sends the driver a used-buffer notification for virtqueue `vq`.
    // A stage of the instruction budget (`accel-budget`): kept out of line
    // so that callgrind counts it.
    #[inline(never)]
    fn notify(&self, vq: u16, vring: &VringRwLock) {
        if let Err(e) = vring.signal_used_queue() {
            self.vmm_log(
                Level::Warn,
                format_args!("virtqueue {vq}: cannot notify the driver: {e}"),
            );
        }
    }

    /// Publishes the used entries `batch` of virtqueue `vq` in its ring,
    /// recorded as they go (§11.3); returns whether the driver asked to be
    /// notified. An entry the ring cannot take (the guest moved its used ring
    /// out of its memory) is logged, and leaves the record at odds with the
    /// ring: it is marked so, and a process that would resume from it starts
    /// afresh instead.
    fn publish_batch(
        &self,
        vq: u16,
        vring: &VringRwLock,
        mem: &Snapshot,
        batch: &[(u16, u32)],
    ) -> bool {
        let record = self.record.ring(vq);
        if let Some(Err(e)) = record.as_ref().map(|ring| ring.begin_publish(batch)) {
            // Cannot happen: the heads are the record's own, each once. The
            // record no longer says what the ring holds.
            error!("virtqueue {vq}: {e}");
            self.record.poison();
        }
        let mut state = vring.get_mut();
        let notify = used::publish(state.get_queue_mut(), mem, batch, |head, e| {
            self.guest_error(format_args!(
                "virtqueue {vq}: cannot return head {head}: {e}"
            ));
            self.record.poison();
        });
        if let Some(ring) = record {
            ring.end_publish(batch);
        }
        notify
    }

    /// Takes one control command (§7), number `seqno` of the control queue.
    fn accept_control(&mut self, head: u16, walked: &mut Walk, mem: &Snapshot, seqno: u64) {
        let Some(resp) = walked.writable.take_front(CTRL_RESP_SIZE) else {
            self.guest_error(format_args!("control queue: no room for a response"));
            self.push_used(virtio_accel_spec::CONTROL_QUEUE, head, 0);
            return;
        };
        if let Some(error) = walked.error {
            self.guest_error(format_args!("control chain: {error}"));
            self.answer_control(head, &resp, error.status(), 0);
            return;
        }
        let command = match decode_control(&mut walked.readable, &self.config.limits) {
            Ok(command) => command,
            Err(e) => {
                self.guest_error(format_args!("control command: {e}"));
                self.answer_control(head, &resp, e.status(), 0);
                return;
            }
        };
        match self.run_control(command, mem, seqno) {
            Ok(ControlOutcome::Done(value)) => self.answer_control(head, &resp, Status::Ok, value),
            Ok(ControlOutcome::Destroyed(object)) => {
                self.answer_control(head, &resp, Status::Ok, 0);
                drop(object);
            }
            Ok(ControlOutcome::Wait(pending)) => self.park_fence_wait(head, resp, &pending),
            Err(status) => self.answer_control(head, &resp, status, 0),
        }
    }

    /// Runs a command.
    fn run_control(
        &mut self,
        command: Control,
        mem: &Snapshot,
        seqno: u64,
    ) -> Result<ControlOutcome, Status> {
        if let Some(needed) = command.capability() {
            if !self.has_capability(needed) {
                return Err(Status::Unsupported);
            }
        }
        let result = match command {
            Control::Capabilities(asked) => Ok(self.enable_capabilities(asked)),
            Control::ObjectCreate(segments) => {
                let admission = lock(&self.admission);
                self.objects
                    .create(segments, mem, &admission, seqno)
                    .map(u64::from)
            }
            Control::ObjectDestroy(handle) => {
                return match self.objects.destroy(handle, seqno) {
                    Ok(object) => Ok(ControlOutcome::Destroyed(object)),
                    Err(e) => Err(self.object_error(e)),
                };
            }
            Control::FenceQuery(fence) => {
                return self
                    .fences
                    .is_signalled(fence)
                    .map(|s| ControlOutcome::Done(u64::from(s)))
                    .map_err(|e| {
                        self.guest_error(format_args!("FENCE_QUERY: {e}"));
                        Status::NoFence
                    });
            }
            Control::FenceWait(fences) => return self.prepare_fence_wait(&fences),
        };
        result
            .map(ControlOutcome::Done)
            .map_err(|e| self.object_error(e))
    }

    /// The status of a failed object command, counted and logged.
    fn object_error(&mut self, error: ObjectError) -> Status {
        match error {
            ObjectError::Quota(kind) => self.over_quota(kind),
            e => {
                self.guest_error(format_args!("object command: {e}"));
                e.status()
            }
        }
    }

    /// CAPABILITIES (§7.5): enables those of `asked` the device has (it
    /// ignores the others) and returns every capability enabled, those
    /// negotiated as feature bits included. Enabled capabilities stay so
    /// until the device is reset.
    fn enable_capabilities(&mut self, asked: u64) -> u64 {
        self.capabilities |= asked & CAPABILITIES;
        self.record.set_capabilities(self.capabilities);
        (self.features | self.capabilities) & CAPABILITIES
    }

    /// Checks a FENCE_WAIT (§7.4): done at once, or the fences still to signal.
    fn prepare_fence_wait(&mut self, fences: &[FenceId]) -> Result<ControlOutcome, Status> {
        let mut pending = Vec::new();
        for fence in fences {
            match self.fences.is_signalled(*fence) {
                Ok(true) => {}
                Ok(false) => pending.push(*fence),
                Err(e) => {
                    self.guest_error(format_args!("FENCE_WAIT: {e}"));
                    return Err(Status::NoFence);
                }
            }
        }
        Ok(if pending.is_empty() {
            ControlOutcome::Done(0)
        } else {
            ControlOutcome::Wait(pending)
        })
    }

    fn park_fence_wait(&mut self, head: u16, resp: SgList, pending: &[FenceId]) {
        let id = self.next_wait_id();
        for fence in pending {
            self.fences.wait(*fence, id);
        }
        let waiter = Waiter::Control { head, resp };
        self.waiting.insert(
            id,
            Waiting {
                remaining: pending.len(),
                waiter,
            },
        );
    }

    fn answer_control(&mut self, head: u16, resp: &SgList, status: Status, value: u64) {
        resp.write_obj(CtrlResp::new(status, value));
        self.stats.command_done(status);
        self.push_used(virtio_accel_spec::CONTROL_QUEUE, head, CTRL_USED_LEN);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    use vm_memory::{Bytes, FileOffset, GuestAddress};

    use super::*;
    use crate::config::SocketSource;
    use crate::engine::software::SoftwareEngine;

    /// Set in the child process that runs [`stop_a_stuck_device`].
    const CHILD: &str = "VHOST_USER_ACCEL_TEST_STUCK_STOP";
    const TEST: &str = "device::tests::a_stop_past_the_time_limit_ends_the_process";

    /// Stops a device, with a short time limit, while a request is in
    /// flight that nothing will complete.
    fn stop_a_stuck_device() {
        let _ = env_logger::builder()
            .filter_level(log::LevelFilter::Error)
            .try_init();
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit reads the structure it is given; the abort
        // below is expected and leaves no core file behind.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        let config = TenantConfig::new("stuck", SocketSource::Fd(-1));
        let engine = SoftwareEngine::new(1).unwrap();
        let tenant = TenantState::new(0, &config);
        let mut device = Device::new(config, &engine, tenant).unwrap();
        device
            .inflight
            .insert(bare_request(FenceId { queue: 0, seqno: 1 }, false));
        device.quiesce_timeout = Duration::from_millis(100);
        device.stop();
    }

    /// The bookkeeping of request `fence` with no buffers, at head 0 of its
    /// virtqueue; `alone` if it runs alone (§11.3).
    fn bare_request(fence: FenceId, alone: bool) -> InFlight {
        InFlight {
            vq: fence.queue + 1,
            head: 0,
            fence,
            resp: SgList::new(),
            direct_output: false,
            no_rerun: false,
            alone,
            accepted: Instant::now(),
            bytes: 0,
            _objects: Box::default(),
        }
    }

    /// Issues fence `seqno` of request queue `queue` to a request with no
    /// buffers (a CRC-32C of nothing) ready for the engine; `alone` if it
    /// runs alone (§11.3).
    fn ready_request(device: &mut Device, queue: u16, seqno: u64, alone: bool) {
        let fence = device.fences.issue(queue, seqno).unwrap();
        device.alone += usize::from(alone);
        let cookie = device.inflight.insert(bare_request(fence, alone));
        device.ready[usize::from(queue)]
            .push(Job::new(crate::ops::Operation::Crc32c { seed: 0 }, cookie));
    }

    /// Waits for `count` completions of hardware queue `queue`, then
    /// finishes their requests.
    fn complete(device: &mut Device, queue: u16, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut completions = Vec::new();
        while completions.len() < count {
            assert!(Instant::now() < deadline, "{count} completions on {queue}");
            completions.extend(device.reap(queue));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(completions.len(), count, "completions on {queue}");
        device.finish_all(&mut completions);
    }

    /// A request that runs alone after a failure (§11.3) goes to the engine
    /// once the engine has nothing else, and nothing else goes while it
    /// runs; the other requests, on every queue, go as usual otherwise.
    #[test]
    fn a_request_that_runs_alone_never_shares_the_engine() {
        let mut config = TenantConfig::new("alone", SocketSource::Fd(-1));
        config.request_queues = 2;
        let engine = SoftwareEngine::new(2).unwrap();
        let tenant = TenantState::new(0, &config);
        let mut device = Device::new(config, &engine, tenant).unwrap();
        let left = |device: &Device| device.ready.iter().map(Vec::len).collect::<Vec<_>>();
        let engine_holds = |device: &Device| (device.on_engine, device.alone_on_engine);
        ready_request(&mut device, 0, 1, false);
        ready_request(&mut device, 0, 2, true);
        ready_request(&mut device, 0, 3, false);
        ready_request(&mut device, 1, 1, false);
        ready_request(&mut device, 1, 2, true);
        for _ in 0..2 {
            device.submit_ready();
            assert_eq!(engine_holds(&device), (1, true));
            assert_eq!(left(&device), [2, 2]);
        }
        complete(&mut device, 0, 1);
        assert_eq!(engine_holds(&device), (0, false));
        device.submit_ready();
        assert_eq!(engine_holds(&device), (1, true));
        assert_eq!(left(&device), [2, 1]);
        complete(&mut device, 1, 1);
        device.submit_ready();
        assert_eq!(engine_holds(&device), (3, false));
        assert_eq!((left(&device), device.alone), (vec![0, 0], 0));

        // One that is ready while others run waits for the engine to
        // empty, and holds back what is ready after it.
        ready_request(&mut device, 1, 3, true);
        ready_request(&mut device, 0, 4, false);
        device.submit_ready();
        assert_eq!(
            (engine_holds(&device), left(&device)),
            ((3, false), vec![1, 1])
        );
        complete(&mut device, 0, 2);
        device.submit_ready();
        assert_eq!(
            (engine_holds(&device), left(&device)),
            ((1, false), vec![1, 1])
        );
        complete(&mut device, 1, 1);
        device.submit_ready();
        assert_eq!(
            (engine_holds(&device), left(&device)),
            ((1, true), vec![1, 0])
        );
        complete(&mut device, 1, 1);
        device.submit_ready();
        assert_eq!(
            (engine_holds(&device), left(&device)),
            ((1, false), vec![0, 0])
        );
        complete(&mut device, 0, 1);
        assert!(device.inflight.is_empty());
        assert_eq!((device.on_engine, device.alone), (0, 0));
    }

    /// `size` bytes of guest memory at address 0, in a memfd as a VMM's.
    fn guest_memory(size: usize) -> GuestMemoryAtomic<GuestMemoryMmap> {
        // SAFETY: a valid NUL-terminated name and no flags; checked below.
        let fd = unsafe { libc::memfd_create(c"device-test".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
        let file = File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        file.set_len(size as u64).unwrap();
        let region = (GuestAddress(0), size, Some(FileOffset::new(file, 0)));
        GuestMemoryAtomic::new(GuestMemoryMmap::from_ranges_with_files([region]).unwrap())
    }

    /// A ring the front-end has not started, or has stopped
    /// (`GET_VRING_BASE`), is never written, not even the notification
    /// fields of its used ring: a driver that reset the device may have
    /// freed it (§11.2). A resume polls every ring, started or not.
    #[test]
    fn a_ring_not_started_is_never_written() {
        const USED: u64 = 0x2000;
        const CANARY: u16 = 0xa5a5;
        let config = TenantConfig::new("idle", SocketSource::Fd(-1));
        let engine = SoftwareEngine::new(1).unwrap();
        let tenant = TenantState::new(0, &config);
        let mut device = Device::new(config, &engine, tenant).unwrap();
        let mem = guest_memory(1 << 20);
        device.set_memory(&mem).unwrap();
        let size = 256u16;
        // The used ring's flags, and its avail_event after the last element.
        let fields = [USED, USED + 4 + 8 * u64::from(size)].map(GuestAddress);
        for event_idx in [false, true] {
            let vrings: Vec<VringRwLock> = (0..3)
                .map(|_| VringRwLock::new(mem.clone(), size).unwrap())
                .collect();
            for vring in &vrings {
                vring.set_queue_size(size);
                vring.set_queue_info(0, 0x1000, USED).unwrap();
                vring.set_queue_event_idx(event_idx);
            }
            for field in fields {
                mem.memory().write_obj(CANARY, field).unwrap();
            }
            for vq in 0..3 {
                device.handle_queue(vq, &vrings);
            }
            for field in fields {
                let value: u16 = mem.memory().read_obj(field).unwrap();
                assert_eq!(value, CANARY, "EVENT_IDX {event_idx}: {field:?} written");
            }
        }
    }

    /// The process ends instead of returning while work may still touch
    /// guest memory (§11.2): run in a child process of this test binary.
    #[test]
    fn a_stop_past_the_time_limit_ends_the_process() {
        if std::env::var_os(CHILD).is_some() {
            stop_a_stuck_device();
            // Reached only if the stop returned with the request in flight.
            std::process::exit(3);
        }
        let child = Command::new(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&child.stderr);
        assert_eq!(
            child.status.signal(),
            Some(libc::SIGABRT),
            "{:?}: {stderr}",
            child.status
        );
        assert!(
            stderr.contains("tenant stuck: 1 requests still in flight"),
            "{stderr}"
        );
    }
}
