// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The software engine: worker threads that run the operations on the host CPU.
//!
//! Every hardware queue feeds the flow of its tenant in one shared run queue,
//! which serves tenants by weighted fair queueing of engine time
//! ([`super::scheduler`]); idle workers sleep on a condition variable. A
//! worker that finishes a job posts the completion to the job's queue. The
//! queue's eventfd (its interrupt) is moderated like a NIC's: it is raised
//! once per batch of completions, when the queue runs idle, when
//! [`MODERATION_BATCH`] completions are pending, or when the oldest pending
//! completion has waited [`MODERATION_DELAY`]. A consumer that will not act
//! on fewer than some count of completions says so ([`HwQueue::coalesce`]);
//! the queue then raises its interrupt once that many are pending, when it
//! runs idle, or when the oldest has waited [`COALESCE_DELAY`], a bound for a
//! consumer whose count is out of date. A consumer that stops looking for
//! new work while the queue has a backlog asks to hear when that backlog
//! ends ([`HwQueue::watch_backlog`]): the worker that starts the queue's last
//! waiting job raises the interrupt, pending completions or not.
//!
//! The workers keep the deadlines (`Deadlines`) when no other completion
//! comes along (a short job finishing next to a long one): after each job,
//! between two chunks of one ([`crate::ops`]), and one idle worker, the
//! *keeper*, by sleeping no longer than the earliest. There is no timer
//! thread, whose two wake-ups per batch took 8 to 20 % of the engine's CPU
//! (`docs/benchmarks.md`, "2026-12-05 (6)"). So while every worker is busy a
//! deadline passes unseen until one of them ends a chunk or a job: a chunk
//! takes up to a few milliseconds (a step of deflate at level 9), and an
//! AES-GCM job, which its library runs in one call, is one chunk. The
//! keeper's timed wait adds its timer slack (50 µs by default) and its
//! wake-up.
//!
//! Cancelling a queue ([`HwQueue::cancel`]) takes its waiting jobs out of the
//! run queue and moves the queue to a new *epoch*: a running job submitted in
//! an earlier epoch sees that between two chunks of its operation
//! ([`crate::ops`]), stops, and completes with [`crate::ops::CANCELLED`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, warn};
use virtio_accel_spec::{Op, Status};
use vmm_sys_util::eventfd::EventFd;

use super::scheduler::{Charge, FlowId, Scheduler, ACTIVE_WINDOW};
use super::{Engine, EngineError, HwCompletion, HwQueue, Job, Share};
use crate::log_limit::RateLimit;
use crate::ops::{execute, Outcome, Scratch};

/// Locks a mutex, recovering the data if a thread panicked while holding it:
/// the queues hold plain data that stays consistent across a panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Pending completions that raise the interrupt at once.
pub const MODERATION_BATCH: usize = 16;
/// How long a completion waits for its interrupt while the queue stays
/// busy, give or take the rest of a chunk or a worker's wake-up (see the
/// module's documentation).
pub const MODERATION_DELAY: Duration = Duration::from_micros(30);
/// How long a completion waits for its interrupt at most while the consumer
/// asks for more ([`HwQueue::coalesce`]), with the same give or take: a
/// guest's driver may have asked for an interrupt sooner since the count was
/// read (§6.4.2).
pub const COALESCE_DELAY: Duration = Duration::from_millis(1);

#[derive(Default)]
struct Pending {
    /// At most the queue's depth (see [`CompletionRing::reserve`]).
    done: Vec<HwCompletion>,
    /// The interrupt was raised and not yet acknowledged by a reap.
    raised: bool,
    /// When the oldest unreaped completion was posted.
    oldest: Option<Instant>,
    /// The earliest deadline of this queue in the engine's [`Deadlines`]
    /// that has not passed: a later one is not armed meanwhile, an earlier
    /// one is (the delay shrank), so they hold a few per queue at most.
    armed: Option<Instant>,
    /// Completions the consumer waits for ([`HwQueue::coalesce`]); 0: the
    /// engine's own moderation.
    coalesce: usize,
}

impl Pending {
    /// Whether the pending completions are due to raise the interrupt at
    /// `now`, the queue `idle` or not (see the module's documentation).
    fn due(&self, idle: bool, now: Instant) -> bool {
        if idle {
            return true;
        }
        let count = if self.coalesce > 1 {
            self.coalesce
        } else {
            MODERATION_BATCH
        };
        self.done.len() >= count
            || self
                .oldest
                .is_some_and(|oldest| now.duration_since(oldest) >= self.delay())
    }

    /// How long the oldest completion may wait for the interrupt.
    fn delay(&self) -> Duration {
        if self.coalesce > 1 {
            COALESCE_DELAY
        } else {
            MODERATION_DELAY
        }
    }

    /// The deadline to arm for these completions, if some wait, none was
    /// raised, and no deadline as early is armed already.
    fn deadline_wanted(&self) -> Option<Instant> {
        if self.done.is_empty() || self.raised {
            return None;
        }
        let wanted = self.oldest? + self.delay();
        self.armed
            .is_none_or(|armed| wanted < armed)
            .then_some(wanted)
    }
}

/// Completion side of one hardware queue.
struct CompletionRing {
    pending: Mutex<Pending>,
    /// Jobs submitted and not yet posted.
    outstanding: AtomicUsize,
    /// Jobs submitted and not yet started (or cancelled).
    queued: AtomicUsize,
    /// Whether the consumer waits for `queued` to reach 0
    /// ([`HwQueue::watch_backlog`]).
    watching: AtomicBool,
    /// How many times the queue was cancelled: jobs submitted before the
    /// last cancel stop at their next chunk. Changed under the run lock.
    epoch: AtomicU64,
    event: EventFd,
}

impl CompletionRing {
    /// Whether the queue was cancelled since epoch `epoch`.
    fn cancelled_since(&self, epoch: u64) -> bool {
        self.epoch.load(Ordering::Acquire) != epoch
    }

    /// Adds a completion; raises the interrupt if it is due, else makes sure
    /// a deadline will.
    fn post(self: &Arc<Self>, completion: HwCompletion, deadlines: &Deadlines) {
        let now = Instant::now();
        let mut pending = lock(&self.pending);
        pending.done.push(completion);
        pending.oldest.get_or_insert(now);
        let idle = self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1;
        self.moderate(pending, idle, now, deadlines);
    }

    /// Asks for `count` completions before the interrupt (see
    /// [`HwQueue::coalesce`]); those pending are judged again at once.
    /// Returns whether that armed a deadline.
    fn coalesce(self: &Arc<Self>, count: usize, deadlines: &Deadlines) -> bool {
        let mut pending = lock(&self.pending);
        if pending.coalesce == count {
            return false;
        }
        pending.coalesce = count;
        self.judge(pending, deadlines)
    }

    /// [`CompletionRing::moderate`]s what is pending now, whether the queue
    /// is idle read afresh.
    fn judge(self: &Arc<Self>, pending: MutexGuard<'_, Pending>, deadlines: &Deadlines) -> bool {
        let idle = self.outstanding.load(Ordering::Acquire) == 0;
        self.moderate(pending, idle, Instant::now(), deadlines)
    }

    /// Raises the interrupt if the pending completions are due, else arms a
    /// deadline for them; lets go of the lock before either. Returns whether
    /// it armed one.
    fn moderate(
        self: &Arc<Self>,
        mut pending: MutexGuard<'_, Pending>,
        idle: bool,
        now: Instant,
        deadlines: &Deadlines,
    ) -> bool {
        let raise = !pending.done.is_empty() && !pending.raised && pending.due(idle, now);
        pending.raised |= raise;
        // A deadline armed for an earlier batch is due before this one's,
        // which it arms when it passes.
        let deadline = pending.deadline_wanted();
        pending.armed = deadline.or(pending.armed);
        drop(pending);
        if raise {
            self.raise();
        }
        match deadline {
            Some(deadline) => {
                deadlines.arm(deadline, Arc::downgrade(self));
                true
            }
            None => false,
        }
    }

    /// A deadline this queue armed, `at`, has passed: the pending
    /// completions are judged again, and raise the interrupt or get the
    /// deadline they are due (the count or the delay may have changed since
    /// it was armed).
    fn deadline_passed(self: &Arc<Self>, at: Instant, deadlines: &Deadlines) {
        let mut pending = lock(&self.pending);
        if pending.armed.is_some_and(|armed| armed <= at) {
            pending.armed = None;
        }
        self.judge(pending, deadlines);
    }

    /// Arms the raise of [`HwQueue::watch_backlog`] if at least `at_least`
    /// jobs wait to start. A short backlog is seen with one load and no
    /// write (the common case of a device that takes a few requests at a
    /// time, on every pass over its ring). Otherwise the flag is set before
    /// the count is read again, and a worker lowers the count before it
    /// takes the flag (both sequentially consistent): a backlog seen here
    /// is seen ending there.
    fn watch_backlog(&self, at_least: usize) -> bool {
        let at_least = at_least.max(1);
        if self.queued.load(Ordering::SeqCst) < at_least {
            return false;
        }
        self.watching.store(true, Ordering::SeqCst);
        let backlog = self.queued.load(Ordering::SeqCst) >= at_least;
        if !backlog {
            // A worker that took the flag meanwhile raised once for nothing.
            self.watching.store(false, Ordering::SeqCst);
        }
        backlog
    }

    /// `count` jobs of the queue left its backlog (started or cancelled):
    /// raises the interrupt if that ended a watched backlog.
    fn left_backlog(&self, count: usize) {
        if count > 0
            && self.queued.fetch_sub(count, Ordering::SeqCst) == count
            && self.watching.swap(false, Ordering::SeqCst)
        {
            self.raise();
        }
    }

    fn raise(&self) {
        if let Err(e) = self.event.write(1) {
            error!("software engine: cannot signal completion: {e}");
        }
    }

    /// Counts `count` more jobs as outstanding, unless that would put more
    /// than `depth` in flight: submitted and not completed, plus completed and
    /// not reaped. Posting moves a job from one count to the other under the
    /// `pending` lock; cancelling only lowers `outstanding`, so the sum read
    /// here is never too low (at worst a refusal is spurious).
    fn reserve(&self, count: usize, depth: usize) -> Result<(), EngineError> {
        let pending = lock(&self.pending);
        let in_flight = self.outstanding.load(Ordering::Acquire) + pending.done.len();
        if in_flight + count > depth {
            return Err(EngineError::QueueFull);
        }
        self.outstanding.fetch_add(count, Ordering::AcqRel);
        Ok(())
    }

    fn reap(&self, out: &mut Vec<HwCompletion>) {
        let mut pending = lock(&self.pending);
        // Into an empty `out` with room for them, the buffers trade places:
        // nothing is copied, and the queue keeps `out`'s room for its next
        // completions. A new `out` (no room) is appended to instead, so that
        // the queue keeps its own buffer and its workers allocate nothing.
        if out.is_empty() && out.capacity() >= pending.done.len() {
            std::mem::swap(out, &mut pending.done);
        } else {
            out.append(&mut pending.done);
        }
        pending.raised = false;
        pending.oldest = None;
    }
}

/// The moderation deadlines of the engine's queues, kept by its workers
/// (see the module's documentation): a queue whose completions wait under
/// the engine's own moderation arms one, due [`MODERATION_DELAY`] after the
/// oldest, and the first worker to see it passed raises the queue's
/// interrupt if they still wait.
struct Deadlines {
    /// Deadlines are kept as nanoseconds since this instant.
    epoch: Instant,
    /// The earliest deadline armed, [`Deadlines::NONE`] if none: read
    /// without the lock. Changed under it.
    earliest: AtomicU64,
    armed: Mutex<Vec<(Instant, Weak<CompletionRing>)>>,
}

impl Deadlines {
    const NONE: u64 = u64::MAX;

    fn new() -> Self {
        Deadlines {
            epoch: Instant::now(),
            earliest: AtomicU64::new(Self::NONE),
            armed: Mutex::default(),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(since).unwrap_or(Self::NONE - 1)
    }

    fn arm(&self, deadline: Instant, ring: Weak<CompletionRing>) {
        let mut armed = lock(&self.armed);
        armed.push((deadline, ring));
        self.earliest
            .fetch_min(self.nanos(deadline), Ordering::AcqRel);
    }

    /// How long until the earliest deadline, if one is armed.
    fn next_in(&self, now: Instant) -> Option<Duration> {
        let earliest = self.earliest.load(Ordering::Acquire);
        (earliest != Self::NONE)
            .then(|| Duration::from_nanos(earliest.saturating_sub(self.nanos(now))))
    }

    /// Raises the interrupts of the queues whose deadlines have passed. Costs
    /// one atomic load while none is armed.
    fn keep(&self) {
        let earliest = self.earliest.load(Ordering::Acquire);
        if earliest == Self::NONE || earliest > self.nanos(Instant::now()) {
            return;
        }
        let now = Instant::now();
        let due: Vec<_> = {
            let mut armed = lock(&self.armed);
            let (due, later) = std::mem::take(&mut *armed)
                .into_iter()
                .partition::<Vec<_>, _>(|(deadline, _)| *deadline <= now);
            *armed = later;
            let next = armed
                .iter()
                .map(|(deadline, _)| self.nanos(*deadline))
                .min();
            self.earliest
                .store(next.unwrap_or(Self::NONE), Ordering::Release);
            due
        };
        for (at, ring) in due {
            if let Some(ring) = ring.upgrade() {
                ring.deadline_passed(at, self);
            }
        }
    }
}

/// A job in the run queue or on a worker.
struct Submitted {
    job: Job,
    /// Where it completes.
    ring: Arc<CompletionRing>,
    /// The ring's epoch when it was submitted.
    epoch: u64,
}

struct RunQueue {
    jobs: Scheduler<Submitted>,
    /// Workers asleep on [`Shared::wake`]: a submission wakes at most this
    /// many, and none (no futex call) while every worker is busy.
    sleeping: usize,
    /// Until when a sleeping worker keeps the moderation deadlines (see the
    /// module's documentation): the others need not wake for those due
    /// later.
    keeper_until: Option<Instant>,
    shutdown: bool,
}

struct Shared {
    run: Mutex<RunQueue>,
    wake: Condvar,
    deadlines: Deadlines,
    /// Limits the lines about operations that panicked: a guest's input
    /// reaches them.
    panic_log: Mutex<RateLimit>,
}

/// An engine that executes jobs on `threads` host threads.
pub struct SoftwareEngine {
    shared: Arc<Shared>,
    /// The workers.
    workers: Vec<JoinHandle<()>>,
}

impl SoftwareEngine {
    /// Starts `threads` workers (at least one), [`DEFAULT_WORKER_NICE`]
    /// steps below this thread's priority.
    pub fn new(threads: usize) -> Result<Self, EngineError> {
        SoftwareEngine::with_priority(threads, DEFAULT_WORKER_NICE)
    }

    /// Starts `threads` workers (at least one), `nice` steps (0 to 19) below
    /// this thread's priority.
    pub fn with_priority(threads: usize, nice: i32) -> Result<Self, EngineError> {
        let shared = Arc::new(Shared {
            run: Mutex::new(RunQueue {
                jobs: Scheduler::new(threads.max(1)),
                sleeping: 0,
                keeper_until: None,
                shutdown: false,
            }),
            wake: Condvar::new(),
            deadlines: Deadlines::new(),
            panic_log: Mutex::new(RateLimit::new(10, Duration::from_secs(1))),
        });
        let mut engine = SoftwareEngine {
            shared,
            workers: Vec::new(),
        };
        // Each worker reports once it runs at its priority: a sandbox put in
        // force after this returns may forbid changing it.
        let (ready, started) = std::sync::mpsc::channel();
        for index in 0..threads.max(1) {
            let shared = Arc::clone(&engine.shared);
            let ready = ready.clone();
            let worker = std::thread::Builder::new()
                .name(format!("accel-engine-{index}"))
                .spawn(move || {
                    lower_priority(nice);
                    let _ = ready.send(());
                    worker_loop(&shared);
                })
                .map_err(|source| EngineError::Resource {
                    what: "engine worker thread",
                    source,
                })?;
            engine.workers.push(worker);
        }
        drop(ready);
        // Ends early only if a worker died before reporting.
        for _ in started.iter().take(engine.workers.len()) {}
        Ok(engine)
    }
}

/// How much lower than the daemon's own priority the workers run by default,
/// in nice steps. They stand in for an accelerator, which takes no CPU time
/// from the threads that serve the virtqueues: running below those threads,
/// a worker busy with a long job of one tenant does not delay the request
/// handling of another (measured by `accel-fairness`: with the workers at
/// the daemon's priority, a victim's p99 latency next to a tenant flooding
/// 1 MiB jobs was 6.9 times its solo p99 on two CPUs; ten steps lower, 1.05
/// to 1.10). On a host whose busy guests would starve the engine, 0 keeps
/// the workers at the daemon's priority (`--engine-nice`).
pub const DEFAULT_WORKER_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority by `increment` nice steps (the
/// kernel stops at 19).
fn lower_priority(increment: i32) {
    if increment > 0 {
        // SAFETY: nice only changes the scheduling priority of the calling
        // thread (nice values are per thread on Linux); it touches no memory
        // of ours, and an error leaves the priority as it was.
        unsafe { libc::nice(increment) };
    }
}

fn worker_loop(shared: &Shared) {
    let mut scratch = Scratch::default();
    // The engine time of the last job, charged to its flow under the next lock.
    let mut done: Option<(Charge, Duration)> = None;
    loop {
        shared.deadlines.keep();
        let (Submitted { job, ring, epoch }, charge) = {
            let mut run = lock(&shared.run);
            if let Some((charge, elapsed)) = done.take() {
                run.jobs.complete(charge, elapsed);
            }
            match next_job(shared, run) {
                Some(next) => next,
                None => return,
            }
        };
        ring.left_backlog(1);
        let started = Instant::now();
        let between_chunks = || {
            shared.deadlines.keep();
            ring.cancelled_since(epoch)
        };
        let outcome = run_job(&job, &mut scratch, &between_chunks)
            .unwrap_or_else(|op| {
                let (allowed, suppressed) = lock(&shared.panic_log).allow();
                if allowed {
                    warn!("software engine: {op:?} panicked; job failed ({suppressed} such lines suppressed)");
                }
                scratch = Scratch::default();
                Outcome::failed(Status::DeviceError)
            });
        done = Some((charge, started.elapsed()));
        let cookie = job.cookie;
        // The buffers are done with: release their mappings before completing.
        drop(job);
        let completion = HwCompletion {
            cookie,
            outcome,
            dma_buf_imports: 0,
        };
        ring.post(completion, &shared.deadlines);
    }
}

/// The next job the run queue gives this worker, which sleeps while it gives
/// none; `None` once the engine shuts down. One sleeping worker, the keeper,
/// sleeps no longer than the earliest moderation deadline and keeps it; the
/// others sleep until a submission or, while jobs wait for their flows'
/// share of the workers, until those flows may have gone quiet
/// ([`ACTIVE_WINDOW`]).
fn next_job<'a>(
    shared: &'a Shared,
    mut run: MutexGuard<'a, RunQueue>,
) -> Option<(Submitted, Charge)> {
    let mut kept = false;
    loop {
        let now = Instant::now();
        if let Some(next) = run.jobs.pop(now) {
            if kept && run.sleeping > 0 && shared.deadlines.next_in(now).is_some() {
                // Another sleeper takes over the deadlines.
                shared.wake.notify_one();
            }
            return Some(next);
        }
        if run.shutdown {
            return None;
        }
        let share_wait = (!run.jobs.is_empty()).then_some(ACTIVE_WINDOW);
        // The keeper's, unless it wakes later than the earliest deadline.
        let keeps = shared
            .deadlines
            .next_in(now)
            .map(|wait| now + wait)
            .filter(|deadline| run.keeper_until.is_none_or(|until| *deadline < until));
        if keeps.is_some() {
            run.keeper_until = keeps;
        }
        kept = keeps.is_some();
        let deadline_wait = keeps.map(|deadline| deadline.saturating_duration_since(now));
        run.sleeping += 1;
        run = match share_wait.into_iter().chain(deadline_wait).min() {
            None => shared
                .wake
                .wait(run)
                .unwrap_or_else(PoisonError::into_inner),
            Some(wait) => {
                shared
                    .wake
                    .wait_timeout(run, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
        run.sleeping -= 1;
        if kept {
            if run.keeper_until == keeps {
                run.keeper_until = None;
            }
            drop(run);
            shared.deadlines.keep();
            run = lock(&shared.run);
        }
    }
}

/// Executes a job, which stops early once `cancelled` says so; a panic
/// inside an operation's library comes back as the operation that panicked,
/// and the worker fails that job and lives on, where panics unwind (the
/// engine in a test's process). A tenant's process aborts on a panic before
/// it unwinds (`tenant_process`), and its supervisor starts another.
fn run_job(job: &Job, scratch: &mut Scratch, cancelled: &dyn Fn() -> bool) -> Result<Outcome, Op> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        execute(
            &job.operation,
            job.inputs(),
            job.outputs(),
            scratch,
            cancelled,
        )
    }));
    result.map_err(|_| job.operation.op())
}

impl Drop for SoftwareEngine {
    fn drop(&mut self) {
        lock(&self.shared.run).shutdown = true;
        self.shared.wake.notify_all();
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                error!("software engine: a worker thread panicked");
            }
        }
    }
}

impl Engine for SoftwareEngine {
    fn name(&self) -> &'static str {
        "software"
    }

    fn capabilities(&self) -> u32 {
        Op::all_capabilities()
    }

    fn create_queue(&self, depth: usize, share: Share) -> Result<Box<dyn HwQueue>, EngineError> {
        let event = EventFd::new(0).map_err(|source| EngineError::Resource {
            what: "completion eventfd",
            source,
        })?;
        Ok(self.create_queue_signalling(depth, share, event))
    }
}

impl SoftwareEngine {
    /// Opens a hardware queue as [`Engine::create_queue`] does, whose
    /// completion event is `event` instead of an eventfd of its own: an
    /// engine that forwards some of its jobs here (the Vulkan engine, for
    /// the operations it does not run) passes a clone of its own queue's
    /// eventfd, so that its consumer hears of both through one event. The
    /// queue only ever adds to `event`; whoever shares it reads it, and
    /// reaps this queue after each read like its own.
    pub fn create_queue_signalling(
        &self,
        depth: usize,
        share: Share,
        event: EventFd,
    ) -> Box<dyn HwQueue> {
        let flow = lock(&self.shared.run).jobs.flow(share.tenant, share.weight);
        Box::new(SoftwareQueue {
            shared: Arc::clone(&self.shared),
            ring: Arc::new(CompletionRing {
                pending: Mutex::new(Pending::default()),
                outstanding: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                watching: AtomicBool::new(false),
                epoch: AtomicU64::new(0),
                event,
            }),
            depth,
            flow,
        })
    }
}

/// A hardware queue of the software engine.
struct SoftwareQueue {
    shared: Arc<Shared>,
    ring: Arc<CompletionRing>,
    depth: usize,
    /// The run queue's flow of this queue's tenant.
    flow: FlowId,
}

impl HwQueue for SoftwareQueue {
    fn submit(&self, jobs: &mut Vec<Job>) -> Result<(), EngineError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let count = jobs.len();
        self.ring.reserve(count, self.depth)?;
        let wake = {
            let mut run = lock(&self.shared.run);
            if run.shutdown {
                self.ring.outstanding.fetch_sub(count, Ordering::AcqRel);
                return Err(EngineError::ShutDown);
            }
            let now = Instant::now();
            let epoch = self.ring.epoch.load(Ordering::Acquire);
            // Before any of them can start.
            self.ring.queued.fetch_add(count, Ordering::SeqCst);
            let ring = &self.ring;
            let submitted = jobs.drain(..).map(|job| Submitted {
                job,
                ring: Arc::clone(ring),
                epoch,
            });
            run.jobs.push_all(self.flow, submitted, now);
            count.min(run.sleeping)
        };
        for _ in 0..wake {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    fn reap(&self, out: &mut Vec<HwCompletion>) {
        self.ring.reap(out);
    }

    fn coalesce(&self, count: usize) {
        if self.ring.coalesce(count, &self.shared.deadlines) && lock(&self.shared.run).sleeping > 0
        {
            // The keeper sleeps no longer than the deadlines it saw, and
            // the other sleepers not for deadlines at all.
            self.shared.wake.notify_all();
        }
    }

    fn watch_backlog(&self, at_least: usize) -> bool {
        self.ring.watch_backlog(at_least)
    }

    fn cancel(&self) -> Vec<Job> {
        let mut run = lock(&self.shared.run);
        let mine = run
            .jobs
            .remove_where(|submitted| Arc::ptr_eq(&submitted.ring, &self.ring));
        // Under the run lock no worker can start one of them meanwhile, and
        // no job of this queue is submitted in the old epoch.
        self.ring
            .outstanding
            .fetch_sub(mine.len(), Ordering::AcqRel);
        self.ring.epoch.fetch_add(1, Ordering::AcqRel);
        drop(run);
        self.ring.left_backlog(mine.len());
        // The queue may have nothing left to run now: what is pending is due.
        self.ring
            .judge(lock(&self.ring.pending), &self.shared.deadlines);
        mine.into_iter().map(|submitted| submitted.job).collect()
    }

    fn completion_event(&self) -> &EventFd {
        &self.ring.event
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::command::Operation;
    use crate::ops::CANCELLED;
    use crate::sg::OwnedBuffers;
    use std::os::fd::AsRawFd;
    use virtio_accel_spec::DeflateFormat;

    fn fill_job(cookie: u64) -> Job {
        OwnedBuffers::new(vec![vec![0; 4096]])
            .job(Operation::Fill { pattern: 1 }, &[], &[0], |_| 4096, cookie)
            .unwrap()
    }

    /// The nice value in a `/proc/.../stat` file (field 19; the fields are
    /// counted again after "(comm)", which may hold spaces).
    fn nice_in(stat: &std::path::Path) -> Option<i64> {
        let stat = std::fs::read_to_string(stat).ok()?;
        let (_, after_comm) = stat.rsplit_once(')')?;
        after_comm.split_whitespace().nth(16)?.parse().ok()
    }

    /// Whether one of this process's threads named `name` (other tests run
    /// engines of their own meanwhile) reaches nice value `wanted` within a
    /// second.
    fn reaches(name: &str, wanted: i64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
            let found = tasks.flatten().any(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == name)
                    && nice_in(&task.path().join("stat")) == Some(wanted)
            });
            if found {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn workers_run_below_the_thread_that_started_them() {
        let own = nice_in(std::path::Path::new("/proc/thread-self/stat")).unwrap();
        let _engine = SoftwareEngine::with_priority(1, 7).unwrap();
        assert!(reaches("accel-engine-0", (own + 7).min(19)));
    }

    #[test]
    fn depth_counts_unreaped_completions() {
        let engine = SoftwareEngine::new(1).unwrap();
        let queue = engine.create_queue(2, Share::default()).unwrap();
        queue.submit(&mut vec![fill_job(1), fill_job(2)]).unwrap();
        let mut third = vec![fill_job(3)];
        assert!(matches!(
            queue.submit(&mut third),
            Err(EngineError::QueueFull)
        ));
        assert_eq!(third.len(), 1, "a refused batch stays with the caller");
        let mut done = Vec::new();
        while done.len() < 2 {
            queue.completion_event().read().unwrap();
            queue.reap(&mut done);
        }
        assert!(done.iter().all(|c| c.outcome.status == Status::Ok));
        queue.submit(&mut third).unwrap();
    }

    #[test]
    fn a_short_job_next_to_a_long_one_is_not_held_back() {
        let engine = SoftwareEngine::new(2).unwrap();
        let queue = engine.create_queue(4, Share::default()).unwrap();
        let long = OwnedBuffers::new(vec![vec![7; 64 << 20], vec![0; 64 << 20]])
            .job(Operation::Copy, &[0], &[1], |_| 4096, 1)
            .unwrap();
        queue.submit(&mut vec![long, fill_job(2)]).unwrap();
        let start = Instant::now();
        let mut done = Vec::new();
        while done.is_empty() {
            queue.completion_event().read().unwrap();
            queue.reap(&mut done);
        }
        // The copy of 64 MiB in 4 KiB segments takes milliseconds; the fill
        // is reported on its own, within the moderation delay.
        let cookies: Vec<u64> = done.iter().map(|c| c.cookie).collect();
        assert_eq!(cookies, [2], "after {:?}", start.elapsed());
        while done.len() < 2 {
            queue.completion_event().read().unwrap();
            queue.reap(&mut done);
        }
    }

    #[test]
    fn last_completion_always_raises_the_interrupt() {
        let engine = SoftwareEngine::new(2).unwrap();
        let queue = engine.create_queue(64, Share::default()).unwrap();
        let mut jobs: Vec<Job> = (0..40).map(fill_job).collect();
        queue.submit(&mut jobs).unwrap();
        let mut done = Vec::new();
        // Moderation may batch completions, but never strands one: every
        // wait below returns, and all 40 arrive.
        while done.len() < 40 {
            queue.completion_event().read().unwrap();
            queue.reap(&mut done);
        }
        let mut cookies: Vec<u64> = done.iter().map(|c| c.cookie).collect();
        cookies.sort_unstable();
        assert_eq!(cookies, (0..40).collect::<Vec<_>>());
    }

    /// Completions pending under `coalesce`, the oldest posted `age` ago.
    fn pending(count: usize, coalesce: usize, age: Duration, now: Instant) -> Pending {
        let completion = HwCompletion {
            cookie: 0,
            outcome: Outcome::failed(Status::Ok),
            dma_buf_imports: 0,
        };
        Pending {
            done: vec![completion; count],
            oldest: Some(now - age),
            coalesce,
            ..Pending::default()
        }
    }

    #[test]
    fn completions_are_due_at_the_count_asked_or_when_they_waited_too_long() {
        let now = Instant::now();
        let fresh = Duration::from_micros(1);
        let due = |count, coalesce, age, idle| pending(count, coalesce, age, now).due(idle, now);
        // The engine's own moderation: its batch or its delay.
        assert!(!due(15, 0, fresh, false));
        assert!(due(16, 0, fresh, false));
        assert!(due(1, 0, MODERATION_DELAY, false));
        // A consumer's count: that many, or the longer bound.
        assert!(!due(16, 20, MODERATION_DELAY * 10, false));
        assert!(due(20, 20, fresh, false));
        assert!(due(3, 20, COALESCE_DELAY, false));
        assert!(due(2, 1, MODERATION_DELAY, false), "1 asks for nothing");
        // A queue with nothing left to run raises whatever waits.
        assert!(due(1, 20, fresh, true));
        assert!(due(1, 0, fresh, true));
    }

    #[test]
    fn a_shorter_delay_arms_an_earlier_deadline() {
        let now = Instant::now();
        let mut waiting = pending(1, 20, Duration::ZERO, now);
        assert_eq!(waiting.deadline_wanted(), Some(now + COALESCE_DELAY));
        waiting.armed = Some(now + COALESCE_DELAY);
        assert_eq!(waiting.deadline_wanted(), None, "armed already");
        // The consumer lowers its count: the engine's own delay applies.
        waiting.coalesce = 0;
        assert_eq!(waiting.deadline_wanted(), Some(now + MODERATION_DELAY));
        waiting.raised = true;
        assert_eq!(waiting.deadline_wanted(), None, "raised");
    }

    /// A deflate of 64 MiB at level 9: seconds of work, which keeps its
    /// queue busy until it is cancelled.
    fn long_deflate(cookie: u64) -> Job {
        const SIZE: usize = 64 << 20;
        let buffers = OwnedBuffers::new(vec![noise(SIZE), vec![0; SIZE + (1 << 20)]]);
        let deflate = Operation::DeflateCompress {
            format: DeflateFormat::Raw,
            level: 9,
        };
        buffers
            .job(deflate, &[0], &[1], |_| 1 << 20, cookie)
            .unwrap()
    }

    /// A count the queue will not reach while it stays busy holds the
    /// interrupt only for [`COALESCE_DELAY`] (a driver may have asked for one
    /// sooner since); a cancel that leaves the queue with nothing to run
    /// raises the interrupt for what completes.
    #[test]
    fn a_count_out_of_reach_holds_the_interrupt_for_a_bounded_time() {
        let engine = SoftwareEngine::with_priority(1, 0).unwrap();
        let queue = engine.create_queue(16, Share::default()).unwrap();
        queue.coalesce(50);
        let deflate = long_deflate(2);
        let start = Instant::now();
        queue
            .submit(&mut vec![fill_job(0), fill_job(1), deflate])
            .unwrap();
        let done = next_completions(&*queue);
        let cookies: Vec<u64> = done.iter().map(|c| c.cookie).collect();
        assert_eq!(cookies, [0, 1]);
        // The worker keeps the deadline between two chunks of the deflate,
        // each milliseconds at most; the deflate itself takes seconds.
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "raised after {:?}",
            start.elapsed()
        );
        assert!(queue.cancel().is_empty(), "the deflate had started");
        let done = next_completions(&*queue);
        assert_eq!((done[0].cookie, done[0].outcome.status), (2, CANCELLED));
    }

    /// Whether `queue`'s completion event is raised within `wait`.
    fn raised_within(queue: &dyn HwQueue, wait: Duration) -> bool {
        let mut poll = libc::pollfd {
            fd: queue.completion_event().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = i32::try_from(wait.as_millis()).unwrap();
        // SAFETY: one valid pollfd, which poll only writes `revents` of.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout) };
        assert!(ready >= 0, "poll: {}", std::io::Error::last_os_error());
        ready == 1
    }

    /// A watched backlog raises the completion event when its last job
    /// starts, with no completion pending, or when a cancel empties it; a
    /// backlog shorter than asked arms nothing.
    #[test]
    fn the_end_of_a_watched_backlog_raises_the_interrupt() {
        let engine = SoftwareEngine::with_priority(1, 0).unwrap();
        let [busy, watched, cancelled] =
            [(); 3].map(|()| engine.create_queue(16, Share::default()).unwrap());
        busy.submit(&mut vec![long_deflate(0)]).unwrap();
        // Its deflate waits to start until the worker takes it.
        while busy.watch_backlog(1) {
            std::thread::yield_now();
        }
        watched.submit(&mut vec![long_deflate(1)]).unwrap();
        cancelled.submit(&mut vec![fill_job(2)]).unwrap();
        assert!(!watched.watch_backlog(2), "a backlog of one is not two");
        assert!(watched.watch_backlog(1));
        assert!(cancelled.watch_backlog(1));
        assert!(!raised_within(&*watched, Duration::from_millis(50)));
        let not_started = cancelled.cancel();
        assert_eq!(not_started.len(), 1);
        assert!(raised_within(&*cancelled, Duration::ZERO), "cancelled");
        assert!(!raised_within(&*watched, Duration::ZERO));
        // The worker moves on to the watched deflate, which runs for
        // seconds: the raise is the backlog's, not a completion's.
        assert!(busy.cancel().is_empty());
        assert!(raised_within(&*watched, Duration::from_secs(5)));
        watched.completion_event().read().unwrap();
        let mut done = Vec::new();
        watched.reap(&mut done);
        assert!(done.is_empty(), "{done:?}");
        assert!(!watched.watch_backlog(1), "nothing waits to start");
        assert!(watched.cancel().is_empty());
        let done = next_completions(&*watched);
        assert_eq!((done[0].cookie, done[0].outcome.status), (1, CANCELLED));
        let done = next_completions(&*busy);
        assert_eq!((done[0].cookie, done[0].outcome.status), (0, CANCELLED));
    }

    /// Waits for the next completions of `queue`.
    fn next_completions(queue: &dyn HwQueue) -> Vec<HwCompletion> {
        let mut done = Vec::new();
        while done.is_empty() {
            queue.completion_event().read().unwrap();
            queue.reap(&mut done);
        }
        done
    }

    /// `len` bytes that deflate cannot shrink (xorshift64), slow to compress.
    fn noise(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut bytes = Vec::with_capacity(len + 8);
        while bytes.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        bytes.truncate(len);
        bytes
    }

    #[test]
    fn cancel_stops_a_running_job_between_chunks() {
        const SIZE: usize = 64 << 20;
        // At the default priority, so that busy neighbours on the test
        // machine cannot starve the job and make it look slow to stop.
        let engine = SoftwareEngine::with_priority(1, 0).unwrap();
        let queue = engine.create_queue(4, Share::default()).unwrap();
        let buffers = OwnedBuffers::new(vec![noise(SIZE), vec![0; SIZE + (1 << 20)]]);
        let deflate = Operation::DeflateCompress {
            format: DeflateFormat::Raw,
            level: 9,
        };
        let job = buffers.job(deflate, &[0], &[1], |_| 1 << 20, 1).unwrap();
        let output = buffers.sg(1, usize::MAX).unwrap();
        queue.submit(&mut vec![job]).unwrap();
        // Compressing 64 MiB at level 9 takes seconds; let it start.
        std::thread::sleep(Duration::from_millis(200));

        let cancelled = Instant::now();
        assert!(queue.cancel().is_empty(), "the job had not started");
        let done = next_completions(&*queue);
        let stopped_after = cancelled.elapsed();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcome.status, CANCELLED, "the job ran to its end");
        assert!(
            stopped_after < Duration::from_secs(2),
            "the job stopped {stopped_after:?} after the cancel"
        );
        // Nothing writes the output once the completion is reaped.
        let mut before = vec![0; output.len()];
        output.read_into(&mut before);
        assert!(
            before.iter().any(|&b| b != 0),
            "the job had written nothing"
        );
        std::thread::sleep(Duration::from_millis(100));
        let mut after = vec![0; output.len()];
        output.read_into(&mut after);
        assert!(before == after, "the output changed after the completion");

        // Jobs submitted after the cancel run as usual.
        queue.submit(&mut vec![fill_job(2)]).unwrap();
        let done = next_completions(&*queue);
        assert_eq!((done[0].cookie, done[0].outcome.status), (2, Status::Ok));
    }
}
