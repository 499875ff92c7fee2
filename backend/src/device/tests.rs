// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests of the device model that reach inside it: a request that runs
//! alone (§11.3), rings not started (§11.2), a stop past its time limit
//! (§11.2), and the count of completions asked of the engine (§6.4).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io;
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

/// An engine whose queues remember the last count of completions they
/// were asked to coalesce ([`HwQueue::coalesce`]).
struct CoalesceRecorder {
    inner: SoftwareEngine,
    counts: Mutex<Vec<Arc<std::sync::atomic::AtomicUsize>>>,
}

struct RecordingQueue {
    inner: Box<dyn HwQueue>,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

impl HwQueue for RecordingQueue {
    fn submit(&self, jobs: &mut Vec<Job>) -> Result<(), EngineError> {
        self.inner.submit(jobs)
    }
    fn reap(&self, out: &mut Vec<HwCompletion>) {
        self.inner.reap(out);
    }
    fn coalesce(&self, count: usize) {
        self.count
            .store(count, std::sync::atomic::Ordering::Relaxed);
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
    let engine = CoalesceRecorder {
        inner: SoftwareEngine::new(1).unwrap(),
        counts: Mutex::default(),
    };
    let tenant = TenantState::new(0, &config);
    let mut device = DeviceModel::new(config, &engine, tenant).unwrap();
    let counts = || {
        let queues = engine.counts.lock().unwrap();
        queues
            .iter()
            .map(|count| count.load(std::sync::atomic::Ordering::Relaxed))
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
