// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests of the device model that reach inside it: a request that runs
//! alone (§11.3), rings not started (§11.2), a stop past its time limit
//! (§11.2), the count of completions asked of the engine (§6.4), a
//! request ring's kicks held off while the engine has a backlog (§4.2), and
//! requests waiting for other drivers' fences on objects' dma-bufs (§7.1.3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use virtio_accel_spec::{BufRef, Fence, Op, Req, Resp, Status};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
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
    let mut device = DeviceModel::new(config, &engine, tenant).unwrap();
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
        objects_read: 0,
    }
}

/// Issues fence `seqno` of request queue `queue` to a request with no
/// buffers (a CRC-32C of nothing) ready for the engine; `alone` if it
/// runs alone (§11.3).
fn ready_request(device: &mut DeviceModel, queue: u16, seqno: u64, alone: bool) {
    let fence = device.fences.issue(queue, seqno).unwrap();
    device.alone += usize::from(alone);
    let cookie = device.inflight.insert(bare_request(fence, alone));
    device.ready[usize::from(queue)].push(Job::new(
        crate::command::Operation::Crc32c { seed: 0 },
        cookie,
    ));
}

/// Waits for `count` completions of hardware queue `queue`, then
/// finishes their requests.
fn complete(device: &mut DeviceModel, queue: u16, count: usize) {
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
    let mut device = DeviceModel::new(config, &engine, tenant).unwrap();
    let left = |device: &DeviceModel| device.ready.iter().map(Vec::len).collect::<Vec<_>>();
    let engine_holds = |device: &DeviceModel| (device.on_engine, device.alone_on_engine);
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
    let mut device = DeviceModel::new(config, &engine, tenant).unwrap();
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

/// Something a test runs once, the next time the device asks a queue to
/// watch its backlog: what a driver does at that moment.
type WatchHook = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

/// An engine whose queues remember the last count of completions they
/// were asked to coalesce ([`HwQueue::coalesce`]), and answer
/// [`HwQueue::watch_backlog`] as the test sets `backlog`, counting the
/// calls in `watched` and running `on_watch` first.
struct CoalesceRecorder {
    inner: SoftwareEngine,
    counts: Mutex<Vec<Arc<AtomicUsize>>>,
    backlog: Arc<AtomicBool>,
    watched: Arc<AtomicUsize>,
    on_watch: WatchHook,
}

impl CoalesceRecorder {
    /// A software engine of one worker, with no backlog to report.
    fn new() -> Self {
        CoalesceRecorder {
            inner: SoftwareEngine::new(1).unwrap(),
            counts: Mutex::default(),
            backlog: Arc::default(),
            watched: Arc::default(),
            on_watch: Arc::default(),
        }
    }

    /// How many times the device asked a queue to watch its backlog.
    fn watched(&self) -> usize {
        self.watched.load(Ordering::Relaxed)
    }
}

struct RecordingQueue {
    inner: Box<dyn HwQueue>,
    count: Arc<AtomicUsize>,
    backlog: Arc<AtomicBool>,
    watched: Arc<AtomicUsize>,
    on_watch: WatchHook,
}

impl HwQueue for RecordingQueue {
    fn submit(&self, jobs: &mut Vec<Job>) -> Result<(), EngineError> {
        self.inner.submit(jobs)
    }
    fn reap(&self, out: &mut Vec<HwCompletion>) {
        self.inner.reap(out);
    }
    fn coalesce(&self, count: usize) {
        self.count.store(count, Ordering::Relaxed);
    }
    fn watch_backlog(&self, at_least: usize) -> bool {
        assert!(at_least > 0, "a backlog of nothing");
        let hook = self.on_watch.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        self.watched.fetch_add(1, Ordering::Relaxed);
        self.backlog.load(Ordering::Relaxed)
    }
    fn cancel(&self) -> Vec<Job> {
        self.inner.cancel()
    }
    fn completion_event(&self) -> &vmm_sys_util::eventfd::EventFd {
        self.inner.completion_event()
    }
}

impl Engine for CoalesceRecorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn capabilities(&self) -> u32 {
        self.inner.capabilities()
    }
    fn create_queue(&self, depth: usize, share: Share) -> Result<Box<dyn HwQueue>, EngineError> {
        let count = Arc::default();
        self.counts.lock().unwrap().push(Arc::clone(&count));
        Ok(Box::new(RecordingQueue {
            inner: self.inner.create_queue(depth, share)?,
            count,
            backlog: Arc::clone(&self.backlog),
            watched: Arc::clone(&self.watched),
            on_watch: Arc::clone(&self.on_watch),
        }))
    }
}

/// Each hardware queue is told how many completions the driver of its
/// ring waits for (`used_event`, with EVENT_IDX), and nothing (0) when the
/// driver wants the next one or has interrupts off, when the count is past
/// the jobs on the engine, or while a job waits on a fence.
#[test]
fn the_engine_hears_how_many_completions_the_driver_waits_for() {
    const AVAIL: u64 = 0x1000;
    const START: u16 = 65525;
    let size = 256u16;
    let used_event = GuestAddress(AVAIL + 4 + 2 * u64::from(size));
    let mut config = TenantConfig::new("coalesce", SocketSource::Fd(-1));
    config.request_queues = 2;
    let engine = CoalesceRecorder::new();
    let tenant = TenantState::new(0, &config);
    let mut device = DeviceModel::new(config, &engine, tenant).unwrap();
    let counts = || {
        let queues = engine.counts.lock().unwrap();
        queues
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    };
    let mem = guest_memory(1 << 20);
    device.set_memory(&mem).unwrap();
    // The control queue, then two request queues; the second has no
    // EVENT_IDX, its driver hears of every entry.
    let vrings: Vec<VringRwLock> = (0..3)
        .map(|_| VringRwLock::new(mem.clone(), size).unwrap())
        .collect();
    for (vq, vring) in vrings.iter().enumerate() {
        vring.set_queue_size(size);
        vring.set_queue_info(0, AVAIL, 0x2000).unwrap();
        vring.set_queue_event_idx(vq != 2);
        vring.set_queue_ready(true);
    }
    vrings[1].get_mut().get_queue_mut().set_next_used(START);
    device.on_engine = 20;
    let told = |event: u16| {
        mem.memory().write_obj(event.to_le(), used_event).unwrap();
        device.coalesce_completions(&vrings);
        counts()
    };
    assert_eq!(
        told(START + 7),
        [8, 0],
        "the eighth entry crosses the event"
    );
    assert_eq!(told(START.wrapping_add(19)), [20, 0], "across the wrap");
    assert_eq!(
        told(START.wrapping_add(20)),
        [0, 0],
        "more than on the engine"
    );
    assert_eq!(told(START), [0, 0], "the next entry");
    assert_eq!(told(START - 1), [0, 0], "interrupts off");
    vrings[1].get_mut().get_queue_mut().set_next_used(1000);
    assert_eq!(told(0), [0, 0], "Linux's interrupts off");
    assert_eq!(told(1003), [4, 0]);
    device.alone = 1;
    device.coalesce_completions(&vrings);
    assert_eq!(counts(), [0, 0], "a request runs alone");
    device.alone = 0;
    device.coalesce_completions(&vrings);
    assert_eq!(counts(), [4, 0]);
    device.waiting.insert(
        0,
        Waiting {
            remaining: 1,
            waiter: Waiter::Request {
                queue: 0,
                job: Box::new(Job::new(crate::command::Operation::Copy, 0)),
            },
        },
    );
    device.coalesce_completions(&vrings);
    assert_eq!(counts(), [0, 0], "a job waits on a fence");
    device.on_engine = 0;
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

/// Where the request ring of [`KickTest`] lies in guest memory: its
/// descriptor table, available ring and used ring; the control ring's are
/// at [`CONTROL`] less. Then the requests' buffers.
const DESC: u64 = 0x4000;
const AVAIL: u64 = DESC + 0x1000;
const USED: u64 = DESC + 0x2000;
const CONTROL: u64 = 0x4000;
const BUFFERS: u64 = 0x1_0000;
/// The entries of each ring.
const RING_SIZE: u16 = 256;
/// The direct input of each request of [`KickTest`]: a CRC-32C of it.
const DATA: [u8; 4] = *b"kick";

/// A device with one request queue, its rings in guest memory, and a
/// driver that makes CRC-32C requests available on the request ring
/// (virtqueue 1) without kicking it: the test calls the device as its kick
/// and completion events would.
struct KickTest {
    device: DeviceModel,
    vrings: Vec<VringRwLock>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// Requests made available on virtqueue 1.
    offered: u16,
    /// Declared last: dropped after the device's hardware queues.
    engine: CoalesceRecorder,
}

impl KickTest {
    /// Started and enabled rings, with or without EVENT_IDX; the request
    /// queue's hardware queue answers `watch_backlog` with `backlog`.
    fn new(event_idx: bool, backlog: bool) -> Self {
        let mut config = TenantConfig::new("kicks", SocketSource::Fd(-1));
        config.request_queues = 1;
        let engine = CoalesceRecorder::new();
        engine.backlog.store(backlog, Ordering::Relaxed);
        let tenant = TenantState::new(0, &config);
        let mut device = DeviceModel::new(config, &engine, tenant).unwrap();
        let mem = guest_memory(1 << 20);
        device.set_memory(&mem).unwrap();
        let vrings: Vec<VringRwLock> = (0..2)
            .map(|_| VringRwLock::new(mem.clone(), RING_SIZE).unwrap())
            .collect();
        // SAFETY: no pointer is passed; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
        let kick = File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        for (vq, vring) in (0..).zip(&vrings) {
            let base = if vq == 0 { CONTROL } else { 0 };
            vring.set_queue_size(RING_SIZE);
            vring
                .set_queue_info(DESC - base, AVAIL - base, USED - base)
                .unwrap();
            vring.set_queue_event_idx(event_idx);
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            vring.set_kick(Some(kick.try_clone().unwrap()));
        }
        device.attach_vrings(&vrings);
        KickTest {
            device,
            vrings,
            mem,
            offered: 0,
            engine,
        }
    }

    /// Makes request `self.offered` available on virtqueue 1, with no kick
    /// ([`offer_request`]).
    fn offer(&mut self) {
        offer_request(&self.mem, self.offered);
        self.offered += 1;
    }

    /// A kick of the request ring.
    fn kick_device(&mut self) {
        self.device.handle_queue(1, &self.vrings);
    }

    /// An event of the request queue's hardware queue, as the engine
    /// raises it for a completion or the end of a backlog.
    fn engine_event(&mut self) {
        let event = self.device.hw_queues()[0].completion_event();
        event.write(1).unwrap();
        self.device.handle_completions(0, &self.vrings);
    }

    fn taken(&self) -> u64 {
        self.device.requests_taken()
    }

    /// The request ring's `next_avail`.
    fn next_avail(&self) -> u16 {
        self.vrings[1].get_ref().get_queue().next_avail()
    }

    /// A 16-bit field of the request ring at `addr`.
    fn field(&self, addr: u64) -> u16 {
        u16::from_le(self.mem.memory().read_obj(GuestAddress(addr)).unwrap())
    }

    /// The used ring's flags (VRING_USED_F_NO_NOTIFY, without EVENT_IDX).
    fn used_flags(&self) -> u16 {
        self.field(USED)
    }

    /// The used ring's `avail_event` (with EVENT_IDX), after its elements.
    fn avail_event(&self) -> u16 {
        self.field(USED + 4 + 8 * u64::from(RING_SIZE))
    }

    fn set_avail_event(&self, value: u16) {
        let at = GuestAddress(USED + 4 + 8 * u64::from(RING_SIZE));
        self.mem.memory().write_obj(value.to_le(), at).unwrap();
    }

    /// Runs the device until every request taken has completed, then
    /// checks that each request offered was answered, in order, as a valid
    /// CRC-32C request: the chains the test writes are real requests.
    fn finish(&mut self) {
        assert_eq!(
            self.taken(),
            u64::from(self.offered),
            "requests left untaken"
        );
        self.device.stop();
        assert_eq!(self.field(USED + 2), self.offered, "used idx");
        let mem = self.mem.memory();
        for n in 0..self.offered {
            let response = BUFFERS + u64::from(n) * 0x200 + 0x100;
            let resp: Resp = mem.read_obj(GuestAddress(response)).unwrap();
            assert_eq!(u32::from(resp.status), u32::from(Status::Ok), "request {n}");
            assert_eq!(resp.fence, Fence::new(0, u64::from(n) + 1), "request {n}");
            let crc = crc32c::crc32c(&DATA).to_le_bytes();
            assert_eq!(resp.result[..4], crc, "request {n}");
        }
    }
}

/// Makes request `n` available on the request ring of [`KickTest`], with
/// no kick: a header, a direct reference and [`DATA`] in one readable
/// descriptor, the response in a writable one.
fn offer_request(mem: &GuestMemoryAtomic<GuestMemoryMmap>, n: u16) {
    let mem = mem.memory();
    let head = n % (RING_SIZE / 2) * 2;
    let request = BUFFERS + u64::from(n) * 0x200;
    let response = request + 0x100;
    let header = std::mem::size_of::<Req>() as u64;
    let reference = std::mem::size_of::<BufRef>() as u64;
    mem.write_obj(Req::new(Op::Crc32c), GuestAddress(request))
        .unwrap();
    mem.write_obj(
        BufRef::direct(DATA.len() as u64),
        GuestAddress(request + header),
    )
    .unwrap();
    mem.write_slice(&DATA, GuestAddress(request + header + reference))
        .unwrap();
    let readable = u32::try_from(header + reference + DATA.len() as u64).unwrap();
    let flag = |flag: u32| u16::try_from(flag).unwrap();
    let descriptors = [
        Descriptor::new(request, readable, flag(VRING_DESC_F_NEXT), head + 1),
        Descriptor::new(
            response,
            u32::try_from(RESP_SIZE).unwrap(),
            flag(VRING_DESC_F_WRITE),
            0,
        ),
    ];
    for (index, descriptor) in (head..).zip(descriptors) {
        let at = GuestAddress(DESC + 16 * u64::from(index));
        mem.write_obj(descriptor, at).unwrap();
    }
    let slot = AVAIL + 4 + 2 * u64::from(n % RING_SIZE);
    mem.write_obj(head.to_le(), GuestAddress(slot)).unwrap();
    mem.store((n + 1).to_le(), GuestAddress(AVAIL + 2), Ordering::Release)
        .unwrap();
}

/// Without EVENT_IDX, a pass over a request ring whose hardware queue has
/// a backlog leaves VRING_USED_F_NO_NOTIFY set in the used ring, so that
/// the driver does not kick, and the queue's next engine event takes the
/// chains added meanwhile; the pass that finds the backlog gone turns kicks
/// back on (flags 0) and stops taking chains on engine events. Without a
/// backlog the flags are 0 after each pass and engine events take nothing.
#[test]
fn kicks_stay_off_while_the_engine_has_a_backlog() {
    // No backlog: kicks on after the pass; a chain added later waits for
    // its kick.
    let mut test = KickTest::new(false, false);
    test.offer();
    test.kick_device();
    assert_eq!((test.taken(), test.engine.watched()), (1, 1));
    assert_eq!(test.used_flags(), 0, "kicks on after the pass");
    test.offer();
    test.engine_event();
    assert_eq!(test.taken(), 1, "an engine event took a chain");
    assert_eq!(test.used_flags(), 0);
    test.kick_device();
    assert_eq!(test.taken(), 2);
    test.finish();

    // A backlog: kicks stay off, and engine events take the chains.
    let mut test = KickTest::new(false, true);
    test.offer();
    test.offer();
    test.kick_device();
    assert_eq!((test.taken(), test.engine.watched()), (2, 1));
    assert_eq!(test.used_flags(), 1, "VRING_USED_F_NO_NOTIFY while held");
    test.offer();
    test.engine_event();
    assert_eq!(test.taken(), 3, "the engine event took the new chain");
    assert_eq!(test.engine.watched(), 2);
    assert_eq!(test.used_flags(), 1, "still held: the backlog remains");
    // An event with nothing new keeps them off too.
    test.engine_event();
    assert_eq!((test.taken(), test.used_flags()), (3, 1));
    // The backlog ends: the next event takes what came and turns kicks on.
    test.engine.backlog.store(false, Ordering::Relaxed);
    test.offer();
    test.engine_event();
    assert_eq!(test.taken(), 4);
    assert_eq!(test.used_flags(), 0, "kicks on once the backlog is gone");
    test.offer();
    test.engine_event();
    assert_eq!(test.taken(), 4, "an engine event took a chain, kicks on");
    test.kick_device();
    assert_eq!(test.taken(), 5);
    test.finish();
}

/// With EVENT_IDX, a pass over a ring whose kicks are held leaves
/// `avail_event` where it was (the driver's next chains do not kick), and
/// so does each engine event that takes chains while held. Releasing the
/// kicks (a ring stop or disable) writes `avail_event` = `next_avail` and
/// ends the hold: engine events take nothing more, and chains that wait
/// beyond `next_avail` stay for the pass that starts the ring again
/// (§4.2); no kick is written. A second release, or a release of a ring
/// not held, does nothing.
#[test]
fn released_kicks_are_on_again_where_the_device_stopped_taking() {
    const STALE: u16 = 0xa5a5;
    let mut test = KickTest::new(true, true);
    test.set_avail_event(STALE);
    test.offer();
    test.kick_device();
    assert_eq!(test.taken(), 1);
    assert_eq!(test.avail_event(), STALE, "avail_event moved while held");
    test.offer();
    test.engine_event();
    assert_eq!(test.taken(), 2, "the engine event took the new chain");
    assert_eq!(test.avail_event(), STALE, "avail_event moved while held");

    // Nothing waits: kicks on at next_avail.
    test.device.release_kicks(1);
    assert_eq!(test.avail_event(), test.next_avail());
    assert_eq!(test.next_avail(), 2);
    test.offer();
    test.engine_event();
    assert_eq!(
        test.taken(),
        2,
        "an engine event took a chain after the release"
    );

    // Held again by a kick's pass; a chain waits at the release.
    test.kick_device();
    assert_eq!(test.taken(), 3);
    assert_eq!(test.avail_event(), 2, "avail_event moved while held");
    test.offer();
    test.device.release_kicks(1);
    assert_eq!(test.avail_event(), 3);
    test.set_avail_event(STALE);
    test.device.release_kicks(1);
    assert_eq!(test.avail_event(), STALE, "a second release wrote the ring");
    test.engine_event();
    assert_eq!(
        test.taken(),
        3,
        "an engine event took a chain after the release"
    );
    // The pass that starts the ring again takes it.
    test.kick_device();
    assert_eq!(test.taken(), 4);
    test.finish();

    // The control queue, and a request ring never held, are left alone.
    let mut test = KickTest::new(true, false);
    test.set_avail_event(STALE);
    test.offer();
    test.device.release_kicks(0);
    test.device.release_kicks(1);
    assert_eq!(test.avail_event(), STALE);
    test.kick_device();
    test.finish();
}

/// With EVENT_IDX, a chain the driver adds while the pass that ends a hold
/// runs, after the pass read the available index and before it turned the
/// kicks on, sends no kick (the held `avail_event` lies behind): the pass
/// looks once more after turning them on and takes it (§4.2, 2.7.10).
#[test]
fn a_chain_added_as_a_hold_ends_is_taken() {
    let mut test = KickTest::new(true, true);
    test.offer();
    test.kick_device();
    assert_eq!((test.taken(), test.avail_event()), (1, 0), "held");
    test.engine.backlog.store(false, Ordering::Relaxed);
    let (mem, next) = (test.mem.clone(), test.offered);
    *test.engine.on_watch.lock().unwrap() = Some(Box::new(move || offer_request(&mem, next)));
    test.engine_event();
    test.offered += 1;
    assert_eq!(
        test.taken(),
        2,
        "the chain added as the hold ended stayed in the ring"
    );
    assert_eq!(test.avail_event(), 2, "kicks on past it");
    test.finish();
}

/// A held ring that the front-end disables (were the kicks not released
/// first) is not taken from on the engine's events either.
#[test]
fn a_held_ring_disabled_is_not_taken_from_on_engine_events() {
    let mut test = KickTest::new(false, true);
    test.offer();
    test.kick_device();
    assert_eq!((test.taken(), test.used_flags()), (1, 1), "held");
    test.vrings[1].set_enabled(false);
    test.offer();
    test.engine_event();
    assert_eq!(test.taken(), 1, "taken from a disabled ring");
    test.vrings[1].set_enabled(true);
    test.engine_event();
    assert_eq!(test.taken(), 2);
    test.engine.backlog.store(false, Ordering::Relaxed);
    test.kick_device();
    test.finish();
}

/// A ring the front-end disabled is not taken from (§4), neither on a
/// kick nor on an engine event, and its notification fields are not
/// written; enabled again, it is served at once. The control queue's
/// kicks (virtqueue 0) are never held: its commands never wait on the
/// engine.
#[test]
fn a_disabled_ring_is_not_taken_from_and_the_control_queue_never_holds_kicks() {
    for event_idx in [false, true] {
        let mut test = KickTest::new(event_idx, true);
        test.vrings[1].set_enabled(false);
        test.set_avail_event(0xa5a5);
        test.offer();
        test.kick_device();
        test.engine_event();
        assert_eq!(
            test.taken(),
            0,
            "EVENT_IDX {event_idx}: taken while disabled"
        );
        assert_eq!(test.engine.watched(), 0, "EVENT_IDX {event_idx}: asked");
        assert_eq!(
            (test.avail_event(), test.used_flags()),
            (0xa5a5, 0),
            "EVENT_IDX {event_idx}: a disabled ring written"
        );
        test.vrings[1].set_enabled(true);
        test.kick_device();
        assert_eq!(test.taken(), 1, "EVENT_IDX {event_idx}: enabled");
        test.device.release_kicks(1);
        test.finish();

        // The control queue, with no chain: the pass ends with kicks on.
        let mut test = KickTest::new(event_idx, true);
        let avail_event = USED - CONTROL + 4 + 8 * u64::from(RING_SIZE);
        for field in [USED - CONTROL, avail_event] {
            let canary = 0xa5a5u16.to_le();
            test.mem
                .memory()
                .write_obj(canary, GuestAddress(field))
                .unwrap();
        }
        test.device.handle_queue(0, &test.vrings);
        assert_eq!(test.engine.watched(), 0, "EVENT_IDX {event_idx}: asked");
        let flags = test.field(USED - CONTROL);
        let avail_event = test.field(avail_event);
        if event_idx {
            assert_eq!(avail_event, 0, "control kicks held");
        } else {
            assert_eq!(flags, 0, "control kicks held");
        }
    }
}

/// A pipe standing in for a dma-buf (the unit tests' host kernel has no
/// udmabuf): its read end is readable, as a dma-buf is when no write fence
/// is pending, once the write end has been written to, and never writable,
/// as a dma-buf whose read fences never signal.
fn busy_buffer() -> (crate::dmabuf::DmaBuf, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both were just made and are owned by nobody else.
    let (read, write) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            File::from_raw_fd(fds[1]),
        )
    };
    (crate::dmabuf::DmaBuf::stand_in(read), write)
}

/// A request reading an object whose dma-buf has another driver's write
/// fence waits until it signals, then goes to the engine; one writing an
/// object waits for every fence; one with a dependency looks at the fences
/// once the dependency has signalled; a reset drops the waits (§7.1.3).
#[test]
fn requests_wait_for_other_drivers_fences_on_their_objects() {
    let config = TenantConfig::new("sync", SocketSource::Fd(-1));
    let engine = SoftwareEngine::new(1).unwrap();
    let tenant = TenantState::new(0, &config);
    let mut device = DeviceModel::new(config, &engine, tenant).unwrap();
    let (buffer, mut fence) = busy_buffer();
    let object = Arc::new(HostObject::with_dma_buf(
        buffer,
        Arc::clone(&device.stats),
        Arc::clone(&device.record),
    ));
    // Request `seqno` reads the object (`read`) or writes it; whether it
    // waits.
    let submit = |device: &mut DeviceModel, seqno: u64, read: bool| {
        let fence = device.fences.issue(0, seqno).unwrap();
        let inflight = InFlight {
            _objects: Box::new([Arc::clone(&object)]),
            objects_read: u8::from(read),
            ..bare_request(fence, false)
        };
        let cookie = device.inflight.insert(inflight);
        let waits = device.waiting.len();
        let job = Job::new(crate::command::Operation::Crc32c { seed: 0 }, cookie);
        device.wait_for_host_fences(0, job);
        device.waiting.len() > waits
    };

    assert!(
        submit(&mut device, 1, true),
        "a read waits for the write fence"
    );
    device.release_synced();
    assert!(
        device.ready[0].is_empty(),
        "released before its fence signalled"
    );
    io::Write::write_all(&mut fence, b"signalled").unwrap();
    device.release_synced();
    assert_eq!(
        device.ready[0].len(),
        1,
        "not released when its fence signalled"
    );
    assert_eq!(device.stats.implicit_sync_waits(), 1);

    assert!(!submit(&mut device, 2, true), "an idle buffer is no wait");
    assert_eq!(device.ready[0].len(), 2);
    assert!(
        submit(&mut device, 3, false),
        "a write waits for every fence"
    );
    device.release_synced();
    assert_eq!(device.ready[0].len(), 2);
    assert_eq!(device.stats.implicit_sync_waits(), 2);
    // A request with a dependency looks at the fences once it has
    // signalled, not before.
    let dependency = device.fences.issue(0, 4).unwrap();
    let fence = device.fences.issue(0, 5).unwrap();
    let inflight = InFlight {
        _objects: Box::new([Arc::clone(&object)]),
        ..bare_request(fence, false)
    };
    let cookie = device.inflight.insert(inflight);
    let job = Job::new(crate::command::Operation::Crc32c { seed: 0 }, cookie);
    device.park(0, &crate::command::Deps::from_slice(&[dependency]), job);
    assert_eq!(
        device.stats.implicit_sync_waits(),
        2,
        "looked before the dependency"
    );
    device.signal(dependency);
    assert_eq!(
        device.stats.implicit_sync_waits(),
        3,
        "did not look after it"
    );
    assert_eq!(device.ready[0].len(), 2);
    device.reset();
    assert!(device.sync_waits.is_empty() && device.waiting.is_empty());
    assert_eq!(
        device.stats.dmabuf_objects(),
        1,
        "the object outlives the reset"
    );
    drop(object);
    assert_eq!(device.stats.dmabuf_objects(), 0);
}
